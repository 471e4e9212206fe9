import {
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { decide } from '../../../src/access/decision.js';
import { digestOfOps, type Keyring } from '../../../src/access/keyring.js';
import { EMPTY_LIMITS } from '../../../src/access/rate-limit.js';
import { silentLogger } from '../../../src/core/logger.js';
import { KeyringStore } from '../../../src/store/keyring-store.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  newKeyring,
  revokeBy,
  type TestKey,
} from '../../helpers/keyring-fixtures.js';

/**
 * The keyring's files under damage (issue 13 finding 5): whatever happens to ONE file, a revoked
 * credential stays denied, and the damage is reported.
 */

let dir: string;
let root: TestKey;
let driver: TestKey;
let thief: TestKey;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'va-keyring-integrity-'));
  root = makeRoot();
  driver = makeKey('phone', 'driver');
  thief = makeKey('phone', 'driver');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

async function open(): Promise<{ ring: Keyring; store: KeyringStore }> {
  const ring = newKeyring(root);
  const store = await KeyringStore.open(dir, ring, silentLogger);
  return { ring, store };
}

/** A keyring folded into its snapshot files: driver granted, thief granted then revoked. */
async function compacted(): Promise<void> {
  const ring = newKeyring(root);
  ring.merge([grantBy(root, driver.credential), grantBy(root, thief.credential), revokeBy(root, thief.id)]);
  await KeyringStore.writeSnapshot(dir, ring);
}

/** The thief's revoke as the last journal record (as a kill -9 right after `keys revoke` leaves it). */
async function revokedInJournal(): Promise<void> {
  const ring = newKeyring(root);
  ring.merge([grantBy(root, driver.credential), grantBy(root, thief.credential)]);
  await KeyringStore.writeSnapshot(dir, ring);
  const { ring: live, store } = await open();
  const prepared = live.prepare([revokeBy(root, thief.id)]);
  await store.persist(prepared.added);
  live.apply(prepared);
  // No close: the journal is not folded in, as after a kill -9.
  await (store as unknown as { journal: { close(): Promise<void> } }).journal.close();
}

function lastLineStart(path: string): number {
  const text = readFileSync(path, 'latin1');
  return text.lastIndexOf('\n', text.length - 2) + 1;
}

function flip(path: string, at: number, bits = 0x04): void {
  const bytes = readFileSync(path);
  bytes[at] = (bytes[at] ?? 0) ^ bits;
  writeFileSync(path, bytes);
}

/** Opens, materialises and returns how the thief and the driver fare. */
async function verdict(): Promise<{
  thief: string;
  driver: string;
  findings: string[];
  store: KeyringStore;
  ring: Keyring;
}> {
  const { ring, store } = await open();
  await ring.materializeInBackground();
  const fate = (id: string) => {
    const s = ring.byId(id);
    if (s === undefined) return 'unknown';
    if (s.suspect !== undefined) return 'suspect';
    return s.revoked ? 'revoked' : 'valid';
  };
  return {
    thief: fate(thief.id),
    driver: fate(driver.id),
    findings: store.findings.map((f) => f.code),
    store,
    ring,
  };
}

describe('keyring journal damage', () => {
  it.each([['keyring.journal'], ['keyring.mirror.journal']])(
    'a revoke whose last record is damaged anywhere in %s stays in force',
    async (file) => {
      await revokedInJournal();
      const pristine = new Map(readdirSync(dir).map((n) => [n, readFileSync(join(dir, n))]));
      const path = join(dir, file);
      const start = lastLineStart(path);
      const end = readFileSync(path).length;
      for (let at = start; at < end; at += 7) {
        for (const [n, bytes] of pristine) writeFileSync(join(dir, n), bytes);
        flip(path, at);
        const v = await verdict();
        expect(v.thief, `byte ${at}`).toBe('revoked');
        expect(v.driver).toBe('valid');
        // Damage is reported; only a flipped final newline reads as a torn write (and the other
        // copy, intact, holds the revoke).
        if (at < end - 1) expect(v.findings, `byte ${at}`).toContain('state_repaired');
        await v.store.close();
      }
    },
  );

  it('a revoke cut off or deleted with one journal file stays in force', async () => {
    for (const damage of [
      () => truncateSync(join(dir, 'keyring.journal'), lastLineStart(join(dir, 'keyring.journal'))),
      () => unlinkSync(join(dir, 'keyring.mirror.journal')),
      () => truncateSync(join(dir, 'keyring.journal'), 0),
    ]) {
      rmSync(dir, { recursive: true, force: true });
      dir = mkdtempSync(join(tmpdir(), 'va-keyring-integrity-'));
      await revokedInJournal();
      damage();
      const v = await verdict();
      expect(v.thief).toBe('revoked');
      expect(v.driver).toBe('valid');
      await v.store.close();
    }
  });

  it('a record damaged in both journals at the same byte denies the credential it names, and that persists', async () => {
    await revokedInJournal();
    // A byte of the signature part (^0x01 keeps it a JSON string): the record still names the thief.
    const path = join(dir, 'keyring.journal');
    const at = readFileSync(path, 'latin1').lastIndexOf('","signer"') - 10;
    flip(path, at, 0x01);
    flip(join(dir, 'keyring.mirror.journal'), at, 0x01);
    const v = await verdict();
    expect(v.thief).toBe('suspect');
    expect(v.driver).toBe('valid');
    expect(v.ring.byId(thief.id)?.suspect).toContain('lost in every copy');
    // The decision says why: credential_suspect, checked before anything else about the key.
    const presentation = (id: string) => ({
      reader: 'ble0',
      kind: 'phone' as const,
      credentialId: id,
      subject: id,
      intent: 'unlock' as const,
      explicitIntent: true,
      proof: 'valid' as const,
    });
    const policy = {
      rateLimit: {
        maxDenials: 5,
        windowMs: 60_000,
        cooldownMs: 60_000,
        maxUnknownCards: 10,
        uidThrottleMs: 60_000,
      },
      answerDeadlineMs: {},
    };
    const decision = (id: string) =>
      decide({
        presentation: presentation(id),
        keyring: v.ring,
        now: Date.UTC(2027, 0, 1),
        limits: EMPTY_LIMITS,
        lastCounter: undefined,
        policy,
      });
    expect(decision(thief.id)).toMatchObject({ granted: false, code: 'credential_suspect' });
    expect(decision(driver.id)).toMatchObject({ granted: true });
    expect(v.findings).toContain('credential_suspect');
    await v.store.close();
    // The damaged lines were rewritten; the suspicion was written first and outlives them.
    expect(existsSync(join(dir, 'keyring.suspects'))).toBe(true);
    const again = await verdict();
    expect(again.thief).toBe('suspect');
    expect(await again.store.acceptLoss()).toEqual([thief.id]);
    expect(again.ring.byId(thief.id)?.suspect).toBeUndefined();
    await again.store.close();
    expect(existsSync(join(dir, 'keyring.suspects'))).toBe(false);
  });

  it('a record lost in both journals that names nothing trustworthy denies every credential', async () => {
    await revokedInJournal();
    for (const file of ['keyring.journal', 'keyring.mirror.journal']) {
      const path = join(dir, file);
      const bytes = readFileSync(path);
      const start = lastLineStart(path);
      bytes.fill(0x78, start + 12, start + 40); // the JSON no longer parses
      writeFileSync(path, bytes);
    }
    const v = await verdict();
    expect(v.thief).toBe('suspect');
    expect(v.driver).toBe('suspect');
    expect(v.ring.activeRole(root.id)).toBe('owner'); // the pinned root can still sign repairs
    await v.store.close();
  });

  it('rebuilds a record damaged in both journals at different bytes', async () => {
    await revokedInJournal();
    const path = join(dir, 'keyring.journal');
    const start = lastLineStart(path);
    flip(path, start + 30);
    flip(join(dir, 'keyring.mirror.journal'), start + 90);
    const v = await verdict();
    expect(v.thief).toBe('revoked');
    expect(v.driver).toBe('valid');
    expect(v.findings.every((c) => c === 'state_repaired')).toBe(true);
    await v.store.close();
  });

  it('drops a grant found in one journal only (never acknowledged) but keeps a revoke', async () => {
    const ring = newKeyring(root);
    ring.merge([grantBy(root, driver.credential), grantBy(root, thief.credential)]);
    await KeyringStore.writeSnapshot(dir, ring);
    const late = makeKey('phone', 'guest', { notAfter: Date.UTC(2031, 0, 1) });
    const { store } = await open();
    await store.close();
    // The agent died after writing the main journal and before the mirror.
    const { ring: writer, store: s2 } = await open();
    const prepared = writer.prepare([grantBy(root, late.credential), revokeBy(root, thief.id)]);
    expect(prepared.added).toHaveLength(2);
    const j = s2 as unknown as {
      journal: { main: { append(r: unknown): Promise<void> }; close(): Promise<void> };
    };
    for (const op of prepared.added) await j.journal.main.append({ jws: op.jws, signer: op.signer });
    await j.journal.close();
    const v = await verdict();
    expect(v.ring.byId(late.id)).toBeUndefined();
    expect(v.thief).toBe('revoked');
    expect(v.store.findings.map((f) => f.problem).join(' ')).toContain('in one journal only');
    await v.store.close();
  });
});

describe('keyring snapshot damage', () => {
  it.each([['keyring.ops'], ['keyring.mirror.ops']])(
    'a byte flipped anywhere in %s leaves the revoke in force and is repaired',
    async (file) => {
      await compacted();
      const pristine = new Map(readdirSync(dir).map((n) => [n, readFileSync(join(dir, n))]));
      const path = join(dir, file);
      const size = readFileSync(path).length;
      for (let at = 0; at < size; at += 13) {
        for (const [n, bytes] of pristine) writeFileSync(join(dir, n), bytes);
        flip(path, at);
        const v = await verdict();
        expect(v.thief, `byte ${at}`).toBe('revoked');
        expect(v.driver).toBe('valid');
        expect(v.findings, `byte ${at}`).toEqual(['state_repaired']);
        await v.store.close();
        expect(readFileSync(path)).toEqual(pristine.get(file));
      }
    },
  );

  it('a revoke line damaged in both ops copies is denied from the summary, before the keyring recomputes', async () => {
    await compacted();
    const ops = readFileSync(join(dir, 'keyring.ops'), 'utf8').split('\n');
    const revokeLine = ops.findIndex((l) => {
      const jws = l.split(' ')[2] ?? '';
      return Buffer.from(jws.split('.')[1] ?? '', 'base64url')
        .toString()
        .includes('"revoke"');
    });
    const at = ops.slice(0, revokeLine).join('\n').length + 1 + 30;
    flip(join(dir, 'keyring.ops'), at);
    flip(join(dir, 'keyring.mirror.ops'), at);
    const v = await verdict();
    expect(v.thief).toBe('suspect');
    expect(v.driver).toBe('valid');
    await v.store.close();
    const again = await verdict();
    expect(again.thief).toBe('suspect');
    await again.store.close();
  });

  it('rebuilds a deleted keyring.json from the ops, and a deleted ops file from its mirror', async () => {
    for (const file of ['keyring.json', 'keyring.ops', 'keyring.mirror.ops']) {
      await compacted();
      unlinkSync(join(dir, file));
      const v = await verdict();
      expect(v.thief, file).toBe('revoked');
      expect(v.driver, file).toBe('valid');
      expect(v.findings, file).toEqual(['state_repaired']);
      await v.store.close();
      expect(existsSync(join(dir, file)), file).toBe(true);
    }
  });

  it('the digest covers what the ops say, not only their ids', () => {
    const a = grantBy(root, driver.credential);
    const b = a.slice(0, -3) + (a.endsWith('AAA') ? 'BBB' : 'AAA');
    const id = 'same-id-for-both-0001';
    expect(digestOfOps([{ id, jws: a }])).not.toBe(digestOfOps([{ id, jws: b }]));
    const ring = newKeyring(root);
    ring.merge([a]);
    const [op] = [...ring.storedOps()];
    expect(ring.digest()).toBe(digestOfOps([{ id: op?.op.id ?? '', jws: a }]));
  });
});
