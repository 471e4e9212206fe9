import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { credentialToWire } from '../../../src/access/credential-wire.js';
import { digestOfOpsV1, type Keyring } from '../../../src/access/keyring.js';
import { AgentError } from '../../../src/core/errors.js';
import { silentLogger } from '../../../src/core/logger.js';
import { crcHex } from '../../../src/store/checksummed.js';
import { inspectKeyringFiles, KeyringStore } from '../../../src/store/keyring-store.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  makeUidCredential,
  newKeyring,
  revokeBy,
  type TestKey,
} from '../../helpers/keyring-fixtures.js';

let dir: string;
let root: TestKey;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'va-keyring-store-'));
  root = makeRoot();
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const view = (k: Keyring) =>
  JSON.stringify({
    digest: k.digest(),
    size: k.size,
    list: k
      .list()
      .map((s) => [s.credential.id, s.credential.role, s.credential.notAfter ?? null, s.revoked])
      .sort(),
  });

function populated(): { ring: Keyring; phone: TestKey; tagUid: string } {
  const ring = newKeyring(root);
  const owner2 = makeKey('signer', 'owner');
  const phone = makeKey('phone', 'guest', { notAfter: Date.UTC(2030, 0, 1) });
  const gone = makeKey('phone', 'driver');
  const tagUid = 'd'.repeat(32);
  ring.merge([
    grantBy(root, owner2.credential),
    grantBy(owner2, phone.credential),
    grantBy(root, gone.credential),
    grantBy(root, makeUidCredential('uid', tagUid, 'driver', { options: { insecureUid: true } })),
    revokeBy(root, gone.id),
  ]);
  return { ring, phone, tagUid };
}

async function reopen(): Promise<{ ring: Keyring; store: KeyringStore }> {
  const ring = newKeyring(root);
  const store = await KeyringStore.open(dir, ring, silentLogger);
  return { ring, store };
}

describe('keyring store', () => {
  it('starts from a snapshot without decoding, with the same effective state, then decodes lazily', async () => {
    const { ring, phone, tagUid } = populated();
    await KeyringStore.writeSnapshot(dir, ring);
    const { ring: loaded, store } = await reopen();
    expect(view(loaded)).toBe(view(ring));
    expect(loaded.byUidHash(tagUid)).toHaveLength(1);
    expect(loaded.keyOf(phone.id)).toBeDefined();
    // a new op forces the decode, and then behaves as an ordinary keyring
    const late = makeKey('phone', 'driver');
    expect(loaded.add(grantBy(root, late.credential)).status).toBe('added');
    expect(loaded.activeRole(late.id)).toBe('driver');
    expect(loaded.add(revokeBy(root, phone.id)).status).toBe('added');
    expect(loaded.byId(phone.id)?.revoked).toBe(true);
    await store.close();
  });

  it('decodes in the background to the same digest', async () => {
    const { ring } = populated();
    await KeyringStore.writeSnapshot(dir, ring);
    const { ring: loaded, store } = await reopen();
    await loaded.materializeInBackground(2);
    expect([...loaded.heldOps()].length).toBe(ring.size);
    expect(view(loaded)).toBe(view(ring));
    // The texts stay on disk: read back, they are the ops the keyring was written from.
    expect([...loaded.heldOps()].every((h) => h.jws === undefined)).toBe(true);
    expect((await loaded.opTexts()).sort()).toEqual([...ring.storedOps()].map((s) => s.jws).sort());
    await store.close();
  });

  it('compacts from the ops files and the journal, and refuses when the files lost an op since', async () => {
    const { ring } = populated();
    await KeyringStore.writeSnapshot(dir, ring);
    const { ring: live, store } = await reopen();
    await live.whenMaterialized();
    const late = makeKey('phone', 'driver');
    const prepared = live.prepare([grantBy(root, late.credential)]);
    await store.persist(prepared.added);
    live.apply(prepared);
    const ops = join(dir, 'keyring.ops');
    const mirror = join(dir, 'keyring.mirror.ops');
    const whole = readFileSync(ops, 'utf8');
    // One copy damaged since the keyring was read: the other copy gives every op.
    writeFileSync(ops, whole.replace(/^.*\n/, ''));
    await store.compact();
    expect(readFileSync(join(dir, 'keyring.journal'), 'utf8')).toBe('');
    const texts = [...ring.storedOps(), ...prepared.added].map((s) => s.jws);
    expect((await live.opTexts()).sort()).toEqual(texts.sort());
    expect(readFileSync(ops, 'utf8')).toBe(readFileSync(mirror, 'utf8'));
    // The same op gone from both copies: no compaction writes a keyring without it.
    const again = live.prepare([grantBy(root, makeKey('phone', 'driver').credential)]);
    expect(again.added).toHaveLength(1);
    await store.persist(again.added);
    live.apply(again);
    const compacted = readFileSync(ops, 'utf8');
    const cut = compacted.replace(/^.*\n/, '');
    writeFileSync(ops, cut);
    writeFileSync(mirror, cut);
    await expect(store.compact()).rejects.toMatchObject({ code: 'state_corrupt' });
    expect(readFileSync(join(dir, 'keyring.journal'), 'utf8')).not.toBe('');
    writeFileSync(ops, compacted);
    writeFileSync(mirror, compacted);
    await store.close();
    expect(readFileSync(join(dir, 'keyring.journal'), 'utf8')).toBe('');
    const second = await reopen();
    expect(view(second.ring)).toBe(view(live));
    await second.store.close();
  });

  it('keeps the texts of ops merged in memory only until a compaction writes them; they survive a reopen', async () => {
    // Merged before open: no file holds them.
    const { ring } = populated();
    const before = [...ring.storedOps()].map((s) => s.jws);
    const store = await KeyringStore.open(dir, ring, silentLogger);
    // Merged after open without the store (provisioning, tests): on no disk either.
    const late = makeKey('phone', 'driver');
    const lateGrant = grantBy(root, late.credential);
    expect(ring.merge([lateGrant]).added).toHaveLength(1);
    const texts = [...before, lateGrant].sort();
    expect((await ring.opTexts()).sort()).toEqual(texts);
    await store.compact();
    // Written to the ops files: the memory copies go, the texts are read back from disk.
    expect([...ring.heldOps()].every((h) => h.jws === undefined)).toBe(true);
    expect((await ring.opTexts()).sort()).toEqual(texts);
    await store.close();
    const second = await reopen();
    await second.ring.whenMaterialized();
    expect(view(second.ring)).toBe(view(ring));
    expect(second.ring.activeRole(late.id)).toBe('driver');
    expect((await second.ring.opTexts()).sort()).toEqual(texts);
    await second.store.close();
  });

  it('replays the journal over the snapshot, and folds it into the snapshot at close', async () => {
    const { ring } = populated();
    await KeyringStore.writeSnapshot(dir, ring);
    const first = await reopen();
    const late = makeKey('phone', 'driver');
    const prepared = first.ring.prepare([grantBy(root, late.credential)]);
    await first.store.persist(prepared.added);
    first.ring.apply(prepared);
    expect(readFileSync(join(dir, 'keyring.journal'), 'utf8')).not.toBe('');
    await first.store.close();
    expect(readFileSync(join(dir, 'keyring.journal'), 'utf8')).toBe('');
    const second = await reopen();
    expect(view(second.ring)).toBe(view(first.ring));
    expect(second.ring.activeRole(late.id)).toBe('driver');
    await second.store.close();
  });

  it('still reads a format 1 snapshot', async () => {
    const { ring } = populated();
    const ops = [...ring.storedOps()].map((s) => ({ jws: s.jws, signer: s.signer }));
    writeFileSync(join(dir, 'keyring.json'), JSON.stringify({ format: 1, ops }));
    const { ring: loaded, store } = await reopen();
    expect(view(loaded)).toBe(view(ring));
    await store.close();
  });

  it.each([
    ['truncated JSON', '{"format":3,"ops":['],
    ['wrong format', '{"format":9,"ops":[]}'],
    ['bad credential entry', '{"format":2,"digest":"x","opCount":0,"credentials":[["nope"]]}'],
  ])('rebuilds a %s keyring.json from the operations and reports it', async (_what, text) => {
    const { ring } = populated();
    await KeyringStore.writeSnapshot(dir, ring);
    writeFileSync(join(dir, 'keyring.json'), text);
    const { ring: loaded, store } = await reopen();
    expect(view(loaded)).toBe(view(ring));
    expect(store.findings).toMatchObject([{ file: join(dir, 'keyring.json'), code: 'state_repaired' }]);
    await store.close();
    const again = await reopen();
    expect(again.store.findings).toEqual([]);
    await again.store.close();
  });

  it('refuses a format 1 snapshot (no checksums, no copy) holding a damaged op', async () => {
    writeFileSync(join(dir, 'keyring.json'), '{"format":1,"ops":[{"jws":"a.b.c","signer":"s"}]}');
    const err = await reopen().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
    expect(err).toMatchObject({ code: 'state_corrupt' });
    expect((err as AgentError).message).toContain(join(dir, 'keyring.json'));
  });
});

describe('keyring summary format 4', () => {
  /** keyring.json as format 3 wrote it: one checksummed JSON line holding every credential. */
  function writeFormat3(ring: Keyring): void {
    const credentials = ring
      .list()
      .filter((s) => s.credential.id !== ring.rootId)
      .map((s) => [credentialToWire(s.credential), s.revoked]);
    const json = JSON.stringify({ format: 3, digest: ring.digest(), opCount: ring.size, credentials });
    writeFileSync(join(dir, 'keyring.json'), `${crcHex(json)} ${json}\n`);
  }

  it('decides from the snapshot before any op is decoded: a revoked key is refused from the first moment', async () => {
    const { ring, phone, tagUid } = populated();
    const gone = ring.list().find((s) => s.revoked);
    await KeyringStore.writeSnapshot(dir, ring);
    // Ops files unreadable until released: nothing but the summary can have decided.
    const opsText = readFileSync(join(dir, 'keyring.ops'));
    writeFileSync(join(dir, 'keyring.ops'), 'x\n');
    writeFileSync(join(dir, 'keyring.mirror.ops'), 'x\n');
    const { ring: loaded, store } = await reopen();
    expect(gone).toBeDefined();
    expect(loaded.byId(gone?.credential.id ?? '')?.revoked).toBe(true);
    expect(loaded.activeRole(gone?.credential.id ?? '')).toBeUndefined();
    expect(loaded.activeRole(phone.id)).toBe('guest');
    expect(loaded.byUidHash(tagUid).map((s) => s.credential.kind)).toEqual(['uid']);
    expect(loaded.insecureUidCredentials().map((s) => s.credential.uidHash)).toEqual([tagUid]);
    expect(loaded.digest()).toBe(ring.digest());
    writeFileSync(join(dir, 'keyring.ops'), opsText);
    writeFileSync(join(dir, 'keyring.mirror.ops'), opsText);
    await store.close();
  });

  it('opens a format 3 summary and rewrites it as format 4 at once, reporting nothing', async () => {
    const { ring } = populated();
    await KeyringStore.writeSnapshot(dir, ring);
    writeFormat3(ring);
    const { ring: loaded, store } = await reopen();
    expect(view(loaded)).toBe(view(ring));
    expect(store.findings).toEqual([]);
    expect(readFileSync(join(dir, 'keyring.json'), 'utf8')).toMatch(/^[0-9a-f]{8} \{"format":4,/);
    await store.close();
    const again = await reopen();
    expect(view(again.ring)).toBe(view(ring));
    expect(await inspectKeyringFiles(dir)).toMatchObject({ findings: [] });
    await again.store.close();
  });

  it('rebuilds a summary with a flipped byte in a credential line from the ops, a revoked key staying revoked', async () => {
    const { ring } = populated();
    const gone = ring.list().find((s) => s.revoked)?.credential.id ?? '';
    await KeyringStore.writeSnapshot(dir, ring);
    const path = join(dir, 'keyring.json');
    const bytes = readFileSync(path);
    // The revoked credential's flag, 'r' → '-' (the checksums no longer match).
    const at = bytes.indexOf(`r- ${gone} `);
    expect(at).toBeGreaterThan(0);
    bytes[at] = '-'.charCodeAt(0);
    writeFileSync(path, bytes);
    expect((await inspectKeyringFiles(dir)).findings).toMatchObject([{ file: path, code: 'state_repaired' }]);
    const { ring: loaded, store } = await reopen();
    expect(loaded.byId(gone)?.revoked).toBe(true);
    expect(view(loaded)).toBe(view(ring));
    expect(store.findings).toMatchObject([{ file: path, code: 'state_repaired' }]);
    await store.close();
    expect(readFileSync(path)).not.toEqual(bytes);
    expect((await inspectKeyringFiles(dir)).findings).toEqual([]);
  });
});

describe('keyring store ops file', () => {
  it('repairs a damaged ops file from its mirror when the ops are decoded', async () => {
    const { ring } = populated();
    await KeyringStore.writeSnapshot(dir, ring);
    const good = readFileSync(join(dir, 'keyring.ops'));
    writeFileSync(join(dir, 'keyring.ops'), 'no-space-here\n');
    const { ring: loaded, store } = await reopen();
    // decisions work from the summary at once...
    expect(loaded.list().length).toBe(ring.list().length);
    // ...and whatever needs the ops gets them from the good copy
    expect(loaded.merge([]).rejected).toEqual([]);
    expect(view(loaded)).toBe(view(ring));
    expect(store.findings).toMatchObject([{ file: join(dir, 'keyring.ops'), code: 'state_repaired' }]);
    await store.close();
    expect(readFileSync(join(dir, 'keyring.ops'))).toEqual(good);
  });

  it('lets the ops win when they hold more than the summary (a crash between the two writes)', async () => {
    const { ring, phone } = populated();
    await KeyringStore.writeSnapshot(dir, ring);
    const summary = readFileSync(join(dir, 'keyring.json'), 'utf8');
    // a revoke lands; the ops file is written, then the agent dies before keyring.json
    ring.add(revokeBy(root, phone.id));
    await KeyringStore.writeSnapshot(dir, ring);
    writeFileSync(join(dir, 'keyring.json'), summary);
    const { ring: loaded, store } = await reopen();
    await loaded.materializeInBackground();
    expect(loaded.byId(phone.id)?.revoked).toBe(true);
    expect(view(loaded)).toBe(view(ring));
    await store.close();
  });
});

describe('keyring store bulk import', () => {
  it('imports more ops than the journal takes at once, in chunks, and keeps them across a restart', async () => {
    const ring = newKeyring(root);
    const store = await KeyringStore.open(dir, ring, silentLogger);
    const cards = Array.from({ length: 4500 }, (_, i) =>
      makeUidCredential('ntag424', i.toString(16).padStart(32, '0'), 'driver'),
    );
    const ops = cards.map((c) => grantBy(root, c));
    const bad = grantBy(makeKey('signer', 'owner'), makeUidCredential('ntag424', 'f'.repeat(32), 'driver'));
    const chunks: number[] = [];
    const result = await store.importOps([...ops, ops[0] ?? '', bad], (added) => chunks.push(added.length));
    expect(result.added).toHaveLength(4500);
    expect(result.duplicates).toBe(1);
    expect(result.rejected.map((r) => [r.index, r.code])).toEqual([[4501, 'op_unknown_signer']]);
    expect(chunks).toEqual([4096, 404]);
    expect(ring.byUidHash(cards[4499]?.uidHash ?? '')[0]?.revoked).toBe(false);
    await store.close();
    const again = await reopen();
    await again.ring.whenMaterialized();
    expect(view(again.ring)).toBe(view(ring));
    await again.store.close();
  });
});

describe('keyring summary digest versions', () => {
  /** Rewrites keyring.json's header with another digest (and a checksum that matches it). */
  function withDigest(digest: string): void {
    const path = join(dir, 'keyring.json');
    const text = readFileSync(path, 'utf8');
    const headerEnd = text.indexOf('\n');
    const header = JSON.parse(text.slice(9, headerEnd)) as Record<string, unknown>;
    const json = JSON.stringify({ ...header, digest });
    writeFileSync(path, `${crcHex(json)} ${json}${text.slice(headerEnd)}`);
  }

  it('state check accepts a summary holding the digest before v2, and refuses one from other ops', async () => {
    const { ring } = populated();
    await KeyringStore.writeSnapshot(dir, ring);
    const ops = [...ring.storedOps()].map((s) => ({ id: s.op.id, jws: s.jws }));
    expect((await inspectKeyringFiles(dir)).findings).toEqual([]);
    withDigest(digestOfOpsV1(ops));
    expect((await inspectKeyringFiles(dir)).findings).toEqual([]);
    withDigest(digestOfOpsV1(ops.slice(1)));
    expect((await inspectKeyringFiles(dir)).findings.map((f) => f.code)).toEqual(['state_corrupt']);
  });
});
