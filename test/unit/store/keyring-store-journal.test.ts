import { mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { decide } from '../../../src/access/decision.js';
import type { Keyring } from '../../../src/access/keyring.js';
import { EMPTY_LIMITS } from '../../../src/access/rate-limit.js';
import { silentLogger } from '../../../src/core/logger.js';
import { KeyringStore } from '../../../src/store/keyring-store.js';
import { decodeSummaryV4, encodeSummary } from '../../../src/store/keyring-summary.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  NOW_S,
  newKeyring,
  revokeBy,
  type TestKey,
} from '../../helpers/keyring-fixtures.js';

/**
 * Issue 19: a start after a kill -9, with ops in the journal, decides from the summary at once
 * (the ops decoded afterwards) when both journal copies agree and the summary shows what their
 * ops change: a revoke denies at once, a grant counts once the ops are decoded. Anything else
 * (damage, a record in one copy only, an owner's revoke, an owner grant) takes the full load.
 */

let dir: string;
let root: TestKey;
let owner: TestKey;
let ownersPhone: TestKey;
let driver: TestKey;
let thief: TestKey;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'va-keyring-journal-'));
  root = makeRoot();
  owner = makeKey('signer', 'owner');
  ownersPhone = makeKey('phone', 'driver');
  driver = makeKey('phone', 'driver');
  thief = makeKey('phone', 'driver');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

async function open(): Promise<{ ring: Keyring; store: KeyringStore }> {
  const ring = newKeyring(root);
  const store = await KeyringStore.open(dir, ring, silentLogger);
  return { ring, store };
}

/** The snapshot: an owner (who granted a phone), a driver and the thief, all valid. */
async function snapshot(): Promise<Keyring> {
  const ring = newKeyring(root);
  ring.merge([
    grantBy(root, owner.credential),
    grantBy(owner, ownersPhone.credential, NOW_S + 1),
    grantBy(root, driver.credential),
    grantBy(root, thief.credential),
  ]);
  await KeyringStore.writeSnapshot(dir, ring);
  return ring;
}

/** Opens, stores `ops` in the journal and stops as a kill -9 does (no compaction); the full derivation. */
async function killedAfter(ops: readonly string[]): Promise<Keyring> {
  const { ring, store } = await open();
  const prepared = ring.prepare(ops);
  expect(prepared.rejected.map((r) => r.message)).toEqual([]);
  await store.persist(prepared.added);
  ring.apply(prepared);
  await (store as unknown as { journal: { close(): Promise<void> } }).journal.close();
  await ring.whenMaterialized();
  return ring;
}

/** The access decision for an unlock with the phone key `id` (a valid proof). */
const unlocks = (ring: Keyring, id: string): boolean =>
  decide({
    presentation: {
      reader: 'ble0',
      kind: 'phone',
      credentialId: id,
      subject: id,
      intent: 'unlock',
      explicitIntent: true,
      proof: 'valid',
    },
    keyring: ring,
    now: Date.UTC(2027, 0, 1),
    limits: EMPTY_LIMITS,
    lastCounter: undefined,
    policy: {
      rateLimit: {
        maxDenials: 5,
        windowMs: 60_000,
        cooldownMs: 60_000,
        maxUnknownCards: 10,
        uidThrottleMs: 60_000,
      },
      answerDeadlineMs: {},
    },
  }).granted;

const view = (k: Keyring) =>
  JSON.stringify({
    digest: k.digest(),
    size: k.size,
    list: k
      .list()
      .map((s) => [s.credential.id, s.credential.role, s.revoked])
      .sort(),
  });

describe('start after a kill -9 with ops in the journal', () => {
  it('opens on the summary: a journal revoke denies at once, a journal grant counts once decoded', async () => {
    await snapshot();
    const late = makeKey('phone', 'driver');
    const full = await killedAfter([
      revokeBy(root, thief.id, NOW_S + 5),
      grantBy(root, late.credential, NOW_S + 5),
    ]);
    const { ring, store } = await open();
    // The fast path: nothing decoded yet; the digest and count are those of every op already.
    expect(ring.onSnapshot).toBe(true);
    expect(store.findings).toEqual([]);
    expect(ring.digest()).toBe(full.digest());
    expect(ring.size).toBe(full.size);
    expect(ring.byId(thief.id)?.revoked).toBe(true);
    expect(unlocks(ring, thief.id)).toBe(false);
    expect(ring.activeRole(thief.id)).toBeUndefined();
    expect(unlocks(ring, driver.id)).toBe(true);
    expect(unlocks(ring, ownersPhone.id)).toBe(true);
    // Granted just before the kill: denied until the ops are decoded (fail secure).
    expect(ring.byId(late.id)).toBeUndefined();
    expect(ring.keyOf(late.id)).toBeUndefined();
    await ring.materializeInBackground();
    expect(ring.onSnapshot).toBe(false);
    expect(unlocks(ring, late.id)).toBe(true);
    expect(unlocks(ring, thief.id)).toBe(false);
    expect(view(ring)).toBe(view(full));
    await store.close();
  });

  it('compacts every journal op in at close, and a second kill before that loses nothing', async () => {
    await snapshot();
    const late = makeKey('phone', 'driver');
    await killedAfter([revokeBy(root, thief.id, NOW_S + 5), grantBy(root, late.credential, NOW_S + 5)]);
    // Second start on the summary, a revoke more, killed again before any compaction.
    const full = await killedAfter([revokeBy(root, driver.id, NOW_S + 6)]);
    const third = await open();
    expect(third.ring.onSnapshot).toBe(true);
    expect(unlocks(third.ring, thief.id)).toBe(false);
    expect(unlocks(third.ring, driver.id)).toBe(false);
    await third.store.close();
    // The stop folded the journal in: empty now, and every op is in the files.
    expect(readFileSync(join(dir, 'keyring.journal'), 'utf8')).toBe('');
    const fourth = await open();
    expect(fourth.ring.onSnapshot).toBe(true);
    expect(unlocks(fourth.ring, late.id)).toBe(true);
    await fourth.ring.materializeInBackground();
    expect(view(fourth.ring)).toBe(view(full));
    expect((await fourth.ring.opTexts()).sort()).toEqual((await full.opTexts()).sort());
    await fourth.store.close();
  });

  it('a grant of a credential the summary holds (a re-grant) denies it until decoded', async () => {
    await snapshot();
    const full = await killedAfter([
      grantBy(root, { ...driver.credential, role: 'guest', notAfter: Date.UTC(2030, 0, 1) }, NOW_S + 5),
    ]);
    const { ring, store } = await open();
    expect(ring.onSnapshot).toBe(true);
    expect(unlocks(ring, driver.id)).toBe(false);
    await ring.materializeInBackground();
    expect(ring.byId(driver.id)).toEqual(full.byId(driver.id));
    expect(ring.activeRole(driver.id)).toBe('guest');
    await store.close();
  });

  it('counts an op in the ops files and the journal once (a kill between the ops files and the summary)', async () => {
    await snapshot();
    const late = makeKey('phone', 'driver');
    const full = await killedAfter([
      revokeBy(root, thief.id, NOW_S + 5),
      grantBy(root, late.credential, NOW_S + 5),
    ]);
    const before = ['keyring.journal', 'keyring.mirror.journal', 'keyring.json'].map(
      (n) => [n, readFileSync(join(dir, n))] as const,
    );
    const { store } = await open();
    await store.close();
    // The ops files hold the journal's ops now; the summary and the journals are as before.
    for (const [n, bytes] of before) writeFileSync(join(dir, n), bytes);
    const { ring, store: again } = await open();
    expect(ring.onSnapshot).toBe(true);
    expect(unlocks(ring, thief.id)).toBe(false);
    expect(ring.digest()).toBe(full.digest());
    await ring.materializeInBackground();
    expect(view(ring)).toBe(view(full));
    await again.close();
  });

  it('takes the full load when the summary counts journal ops already (a kill before the journal rewrite)', async () => {
    await snapshot();
    const late = makeKey('phone', 'driver');
    const full = await killedAfter([
      revokeBy(root, thief.id, NOW_S + 5),
      grantBy(root, late.credential, NOW_S + 5),
    ]);
    const journals = ['keyring.journal', 'keyring.mirror.journal'].map(
      (n) => [n, readFileSync(join(dir, n))] as const,
    );
    const { store } = await open();
    await store.close();
    // The ops files and the summary hold the journal's ops now; the journals as before.
    for (const [n, bytes] of journals) writeFileSync(join(dir, n), bytes);
    const { ring, store: again } = await open();
    expect(ring.onSnapshot).toBe(false);
    expect(unlocks(ring, thief.id)).toBe(false);
    expect(unlocks(ring, late.id)).toBe(true);
    // Each op counted once (the full load counted those in both twice in the digest).
    expect(view(ring)).toBe(view(full));
    await again.close();
  });

  it('takes the full load when a journal op revokes a live owner (its grants end too)', async () => {
    await snapshot();
    await killedAfter([revokeBy(root, owner.id, NOW_S + 5)]);
    const { ring, store } = await open();
    expect(ring.onSnapshot).toBe(false);
    expect(unlocks(ring, owner.id)).toBe(false);
    expect(unlocks(ring, ownersPhone.id)).toBe(false);
    expect(unlocks(ring, driver.id)).toBe(true);
    await store.close();
  });

  it('takes the full load for an owner grant in the journal', async () => {
    await snapshot();
    const owner2 = makeKey('signer', 'owner');
    await killedAfter([grantBy(root, owner2.credential, NOW_S + 5)]);
    const { ring, store } = await open();
    expect(ring.onSnapshot).toBe(false);
    expect(ring.activeRole(owner2.id)).toBe('owner');
    await store.close();
  });

  it('takes the full load for a summary written before it kept the live owners and the sum', async () => {
    await snapshot();
    await killedAfter([revokeBy(root, thief.id, NOW_S + 5)]);
    const path = join(dir, 'keyring.json');
    const bytes = readFileSync(path);
    const old = decodeSummaryV4(bytes);
    expect(old.owners).toEqual(new Set([owner.id]));
    expect(old.sum).toMatch(/^[0-9a-f]{64}$/);
    // Re-encoded the way a summary was written before `owners` and `sum`.
    const lines = bytes
      .subarray(bytes.indexOf(0x0a) + 1)
      .toString('utf8')
      .split('\n')
      .slice(0, -1);
    const credentials = lines.map((l) => {
      const json = l.slice(l.indexOf('{'));
      return [JSON.parse(json), l[0] === 'r'] as const;
    });
    writeFileSync(path, encodeSummary(old.digest, old.opCount, credentials));
    expect(decodeSummaryV4(readFileSync(path))).toMatchObject({ owners: undefined, sum: undefined });
    const { ring, store } = await open();
    expect(ring.onSnapshot).toBe(false);
    expect(unlocks(ring, thief.id)).toBe(false);
    await store.close();
  });

  it('takes the full load, with findings as before, when a journal copy is damaged or short', async () => {
    await snapshot();
    await killedAfter([
      grantBy(root, makeKey('phone', 'driver').credential, NOW_S + 4),
      revokeBy(root, thief.id, NOW_S + 5),
    ]);
    // Every file as the kill left it (each open below repairs and compacts).
    const pristine = readdirSync(dir).map((n) => [n, readFileSync(join(dir, n))] as const);
    const restore = () => {
      rmSync(dir, { recursive: true, force: true });
      dir = mkdtempSync(join(tmpdir(), 'va-keyring-journal-'));
      for (const [n, bytes] of pristine) writeFileSync(join(dir, n), bytes);
    };
    // A flipped byte in the mirror's last record.
    const mirror = () => join(dir, 'keyring.mirror.journal');
    const bytes = readFileSync(mirror());
    const at = bytes.lastIndexOf(0x0a, bytes.length - 2) + 20;
    bytes[at] = (bytes[at] ?? 0) ^ 0x04;
    writeFileSync(mirror(), bytes);
    let opened = await open();
    expect(opened.ring.onSnapshot).toBe(false);
    expect(opened.store.findings.map((f) => f.code)).toContain('state_repaired');
    expect(unlocks(opened.ring, thief.id)).toBe(false);
    await opened.store.close();
    // The mirror without its last record: the revoke in one copy only still stands.
    restore();
    const text = readFileSync(mirror(), 'latin1');
    truncateSync(mirror(), text.lastIndexOf('\n', text.length - 2) + 1);
    opened = await open();
    expect(opened.ring.onSnapshot).toBe(false);
    expect(unlocks(opened.ring, thief.id)).toBe(false);
    await opened.store.close();
    // A journal copy deleted.
    restore();
    rmSync(mirror());
    opened = await open();
    expect(opened.ring.onSnapshot).toBe(false);
    expect(opened.store.findings.map((f) => f.code)).toContain('state_repaired');
    expect(unlocks(opened.ring, thief.id)).toBe(false);
    await opened.store.close();
  });
});
