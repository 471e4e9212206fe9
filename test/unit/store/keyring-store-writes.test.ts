import { mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Keyring } from '../../../src/access/keyring.js';
import { silentLogger } from '../../../src/core/logger.js';
import { KeyringStore } from '../../../src/store/keyring-store.js';
import { grantBy, makeKey, makeRoot, newKeyring, type TestKey } from '../../helpers/keyring-fixtures.js';

/**
 * The keyring store's write side: what a compaction keeps, and a change verified while the
 * snapshot's ops are still being read in the background.
 */

let dir: string;
let root: TestKey;
let owner2: TestKey;
let driver: TestKey;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'va-keyring-writes-'));
  root = makeRoot();
  owner2 = makeKey('signer', 'owner');
  driver = makeKey('phone', 'driver');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

async function snapshotWithSecondOwner(): Promise<void> {
  const ring = newKeyring(root);
  ring.merge([grantBy(root, owner2.credential), grantBy(owner2, driver.credential)]);
  await KeyringStore.writeSnapshot(dir, ring);
}

async function reopen(): Promise<{ ring: Keyring; store: KeyringStore }> {
  const ring = newKeyring(root);
  const store = await KeyringStore.open(dir, ring, silentLogger);
  return { ring, store };
}

describe('keyring store writes', () => {
  it('a compaction keeps an op that is durable but not applied yet (between persist and apply)', async () => {
    await snapshotWithSecondOwner();
    const { ring, store } = await reopen();
    await ring.whenMaterialized();
    const guest = makeKey('phone', 'guest', { notAfter: Date.UTC(2030, 0, 1) });
    const prepared = ring.prepare([grantBy(owner2, guest.credential)]);
    expect(prepared.added).toHaveLength(1);
    await store.persist(prepared.added);
    // Another change's compaction runs now, before this one is applied.
    await store.compact();
    expect(readFileSync(join(dir, 'keyring.journal'), 'utf8')).toContain(prepared.added[0]?.jws.slice(0, 40));
    ring.apply(prepared);
    await store.close();
    const { ring: reloaded, store: again } = await reopen();
    await reloaded.whenMaterialized();
    expect(reloaded.activeRole(guest.id)).toBe('guest');
    await again.close();
  });

  it('a change verified while the background read is under way sees the whole keyring', async () => {
    await snapshotWithSecondOwner();
    const { ring, store } = await reopen();
    const background = ring.materializeInBackground();
    // The read has started and not finished: owner2's authority is in the ops, not the summary.
    const phone = makeKey('phone', 'driver');
    const prepared = ring.prepare([grantBy(owner2, phone.credential)]);
    expect(prepared.rejected).toEqual([]);
    expect(prepared.added).toHaveLength(1);
    ring.apply(prepared);
    await background;
    expect(ring.activeRole(phone.id)).toBe('driver');
    expect(ring.activeRole(driver.id)).toBe('driver');
    expect(ring.activeRole(owner2.id)).toBe('owner');
    await store.close();
  });

  it('after the ops could not be read, whenMaterialized tries again instead of going on without them', async () => {
    await snapshotWithSecondOwner();
    // Both copies unreadable (an I/O error, not damage: a directory where each file was).
    const paths = [join(dir, 'keyring.ops'), join(dir, 'keyring.mirror.ops')];
    const contents = paths.map((path) => readFileSync(path));
    const { ring, store } = await reopen();
    for (const path of paths) {
      unlinkSync(path);
      mkdirSync(path);
    }
    await expect(ring.whenMaterialized()).rejects.toMatchObject({ code: 'state_io' });
    await expect(ring.whenMaterialized()).rejects.toMatchObject({ code: 'state_io' });
    paths.forEach((path, i) => {
      rmdirSync(path);
      writeFileSync(path, contents[i] as Buffer);
    });
    await ring.whenMaterialized();
    expect(ring.prepare([grantBy(owner2, makeKey('phone', 'driver').credential)]).rejected).toEqual([]);
    expect(ring.activeRole(driver.id)).toBe('driver');
    await store.close();
  });
});
