import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { digestOfOps } from '../../../src/access/keyring.js';
import { requestedVehicleParts } from '../../../src/cloud/cloud-link.js';
import { MAX_SET_PARTS } from '../../../src/cloud/keyring-set.js';
import {
  addSums,
  digestOfSum,
  opHash,
  PartSums,
  parseVehicleManifest,
  parseVehiclePart,
  partOfHash,
  planParts,
  signVehicleManifest,
  signVehiclePart,
  VehicleSetReader,
} from '../../../src/cloud/vehicle-set.js';
import { type VehicleSetKeyring, VehicleSetPublisher } from '../../../src/cloud/vehicle-set-publisher.js';
import { silentLogger } from '../../../src/core/logger.js';
import { parseJws, verifyJws } from '../../../src/crypto/jws.js';
import { generateKeyPair } from '../../../src/crypto/keys.js';

const VID = 'VA-PARTS';
const vehicleKey = generateKeyPair('Ed25519');
const KID = 'signer:vehicle';
const verify = (jws: string) => verifyJws(parseJws(jws), vehicleKey.publicKey);

/** Stand-ins for op texts: the part codecs never decode an op (the keyring does). */
const fakeOp = (i: number | string, len = 700): string => `op${i}.${'x'.repeat(len)}`;

/** Parts of `ops` at `parts`: each part's ops, sum and count. */
function partition(ops: readonly string[], parts: number): { ops: string[][]; sums: PartSums } {
  const sums = new PartSums(parts);
  const members: string[][] = Array.from({ length: parts }, () => []);
  for (const op of ops) {
    const h = opHash(op);
    const p = partOfHash(h, parts);
    sums.add(p, h);
    members[p]?.push(op);
  }
  return { ops: members, sums };
}

describe('stable parts', () => {
  it('an added op changes exactly its own part: every other part signs to the same bytes', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.string({ minLength: 1, maxLength: 40 }), { minLength: 1, maxLength: 80 }),
        fc.string({ minLength: 1, maxLength: 40 }),
        fc.constantFrom(2, 4, 16, 64),
        (base, extra, parts) => {
          fc.pre(!base.includes(extra));
          const before = partition(base, parts);
          const after = partition([...base, extra], parts);
          const own = partOfHash(opHash(extra), parts);
          for (let p = 0; p < parts; p++) {
            // Ed25519 is deterministic: an unchanged part with the same iat is the same message.
            const a = signVehiclePart(VID, 100, p, parts, before.ops[p] ?? [], vehicleKey.privateKey, KID);
            const b = signVehiclePart(VID, 100, p, parts, after.ops[p] ?? [], vehicleKey.privateKey, KID);
            if (p === own) {
              expect(after.sums.count(p)).toBe(before.sums.count(p) + 1);
              expect(after.sums.sum(p)).not.toBe(before.sums.sum(p));
              expect(b).not.toBe(a);
            } else {
              expect(after.sums.sum(p)).toBe(before.sums.sum(p));
              expect(b).toBe(a);
            }
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  it('doubling P splits part i into i and i + P, whose sums add up to the old one', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.string({ minLength: 1, maxLength: 30 }), { maxLength: 200 }),
        fc.constantFrom(1, 2, 8, 256, 2048),
        (ops, parts) => {
          const small = partition(ops, parts);
          const big = partition(ops, parts * 2);
          for (const op of ops) {
            const p = partOfHash(opHash(op), parts);
            expect([p, p + parts]).toContain(partOfHash(opHash(op), parts * 2));
          }
          for (let p = 0; p < parts; p++) {
            expect(addSums([big.sums.sum(p), big.sums.sum(p + parts)])).toBe(small.sums.sum(p));
            expect(big.sums.count(p) + big.sums.count(p + parts)).toBe(small.sums.count(p));
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  it("the manifest's part sums add up to the keyring digest of the whole set", () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.string({ minLength: 1, maxLength: 60 }), { maxLength: 300 }),
        fc.constantFrom(2, 4, 32, 512),
        (ops, parts) => {
          const { sums } = partition(ops, parts);
          const m = parseVehicleManifest(
            signVehicleManifest(VID, 1, sums.sums(), Array.from(sums.counts), vehicleKey.privateKey, KID),
          );
          expect(m.setDigest).toBe(digestOfOps(ops.map((jws) => ({ id: '', jws }))));
          expect(m.setCount).toBe(ops.length);
          expect(digestOfSum(addSums(m.sums), m.setCount)).toBe(m.setDigest);
        },
      ),
      { numRuns: 40 },
    );
  });

  it('plans the fewest parts (a power of two, never fewer than before) that leave each a quarter free', () => {
    const ops = Array.from({ length: 2000 }, (_, i) => fakeOp(i));
    const entries = ops.map((t) => ({ hash: opHash(t), bytes: Buffer.byteLength(t) }));
    const parts = planParts(entries, 2, 256 * 1024);
    expect(parts & (parts - 1)).toBe(0);
    const { ops: members } = partition(ops, parts);
    const size = (list: string[]) => list.reduce((n, op) => n + op.length + 3, 2048);
    expect(Math.max(...members.map(size))).toBeLessThanOrEqual(0.75 * 256 * 1024);
    // One fewer doubling would overfill a part.
    const half = partition(ops, parts / 2).ops;
    expect(Math.max(...half.map(size))).toBeGreaterThan(0.75 * 256 * 1024 - 2048);
    expect(planParts(entries, 64, 256 * 1024)).toBe(64);
  });
});

describe('VehicleSetReader', () => {
  const ops = Array.from({ length: 120 }, (_, i) => fakeOp(i, 50));
  const parts = 8;
  const signedParts = (list: readonly string[], iat: number) => {
    const { ops: members, sums } = partition(list, parts);
    return {
      parts: members.map((m, p) => signVehiclePart(VID, iat, p, parts, m, vehicleKey.privateKey, KID)),
      manifest: signVehicleManifest(
        VID,
        iat,
        sums.sums(),
        Array.from(sums.counts),
        vehicleKey.privateKey,
        KID,
      ),
    };
  };

  it('has the set once every part the newest manifest names came, in any order', () => {
    const v1 = signedParts(ops, 10);
    const reader = new VehicleSetReader({ vid: VID, verify });
    v1.parts.forEach((p, n) => {
      if (n !== 3) reader.notePart(p, n);
    });
    expect(reader.status()).toBeUndefined();
    expect(reader.noteManifest(v1.manifest)).toBe('newer');
    expect(reader.status()).toMatchObject({ complete: false, lacking: [3] });
    reader.notePart(v1.parts[3] as string, 3);
    expect(reader.status()).toMatchObject({ complete: true, lacking: [], setCount: ops.length });
  });

  it('tells a stale part from the current one, and ignores a replayed older manifest', () => {
    const added = fakeOp('new', 50);
    const v1 = signedParts(ops, 10);
    const v2 = signedParts([...ops, added], 11);
    const changed = partOfHash(opHash(added), parts);
    const reader = new VehicleSetReader({ vid: VID, verify });
    // The broker kept every part of v1 (retained); only the changed part of v2 is missing.
    v1.parts.forEach((p, n) => {
      reader.notePart(p, n);
    });
    expect(reader.noteManifest(v2.manifest)).toBe('newer');
    expect(reader.status()).toMatchObject({ complete: false, lacking: [changed] });
    // A replayed v1 manifest does not make the stale part current.
    expect(reader.noteManifest(v1.manifest)).toBe('older');
    expect(reader.status()).toMatchObject({ complete: false, lacking: [changed], iat: 11 });
    reader.notePart(v2.parts[changed] as string, changed);
    expect(reader.status()?.complete).toBe(true);
  });

  it('refuses forged parts and manifests', () => {
    const v1 = signedParts(ops, 10);
    const reader = new VehicleSetReader({ vid: VID, verify });
    reader.noteManifest(v1.manifest);
    // An op swapped for another: the signed sum no longer matches.
    const msg = JSON.parse(v1.parts[0] as string) as { part: string; ops: string[] };
    const forged = JSON.stringify({ ...msg, ops: [...msg.ops.slice(1), fakeOp('evil', 50)] });
    expect(() => reader.notePart(forged, 0)).toThrow(expect.objectContaining({ code: 'jws_malformed' }));
    // A part on another part's topic.
    expect(() => reader.notePart(v1.parts[1] as string, 2)).toThrow(
      expect.objectContaining({ code: 'keyring_chunk_mismatch' }),
    );
    // Signed by someone else: consistent, but not the vehicle's.
    const other = generateKeyPair('Ed25519');
    const { ops: members, sums } = partition(ops.slice(0, 60), parts);
    const alien = signVehicleManifest(VID, 99, sums.sums(), Array.from(sums.counts), other.privateKey, KID);
    expect(() => reader.noteManifest(alien)).toThrow(expect.objectContaining({ code: 'bad_signature' }));
    const alienPart = signVehiclePart(VID, 99, 0, parts, members[0] ?? [], other.privateKey, KID);
    expect(() => reader.notePart(alienPart, 0)).toThrow(expect.objectContaining({ code: 'bad_signature' }));
    // A table that does not add up to the signed digest, or not the signed table.
    const m = JSON.parse(v1.manifest) as { manifest: string; sums: string[]; counts: number[] };
    const tampered = JSON.stringify({ ...m, counts: m.counts.map((c, i) => (i === 0 ? c + 1 : c)) });
    expect(() => reader.noteManifest(tampered)).toThrow(expect.objectContaining({ code: 'jws_malformed' }));
    expect(() => parseVehiclePart(v1.parts[0] as string, undefined)).toThrow();
    expect(reader.status()).toMatchObject({ iat: 10, complete: false });
  });
});

describe('requests for vehicle parts', () => {
  it.each([
    ['{"keyring":{"vehicleParts":[]}}', []],
    ['{"keyring":{"vehicleParts":[0,17,4095]}}', [0, 17, 4095]],
    ['{"keyring":{"vehicleParts":[4096]}}', undefined],
    ['{"keyring":{"vehicleParts":[-1]}}', undefined],
    ['{"keyring":{"vehicleParts":"1"}}', undefined],
    ['{"keyring":', undefined],
    ['keyring', undefined],
  ])('%s names %j', (text, parts) => {
    expect(MAX_SET_PARTS).toBe(4096);
    expect(requestedVehicleParts(text)).toEqual(parts);
  });
});

/** A keyring stand-in: op texts by id, hashes as the keyring holds them. */
class FakeKeyring implements VehicleSetKeyring {
  readonly texts = new Map<string, string>();
  textReads = 0;

  add(...ops: string[]): void {
    for (const op of ops) this.texts.set(op.slice(0, op.indexOf('.')), op);
  }

  digest(): string {
    return digestOfOps([...this.texts.values()].map((jws) => ({ id: '', jws })));
  }

  *heldOps(): Iterable<{ id: string; hash: string }> {
    for (const [id, jws] of this.texts)
      yield { id, hash: createHash('sha256').update(jws, 'utf8').digest('base64url') };
  }

  async opTexts(): Promise<string[]> {
    this.textReads += this.texts.size;
    return [...this.texts.values()];
  }

  async opTextsOf(ids: ReadonlySet<string>): Promise<string[]> {
    const out = [...ids].flatMap((id) => {
      const t = this.texts.get(id);
      return t === undefined ? [] : [t];
    });
    this.textReads += out.length;
    return out;
  }
}

describe('VehicleSetPublisher', () => {
  let dir: string;
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const setUp = async (keyring: FakeKeyring, maxBytes = 32 * 1024) => {
    const sent: { topic: string; payload: string }[] = [];
    const open = () =>
      VehicleSetPublisher.open({
        vehicleId: VID,
        signer: { key: vehicleKey.privateKey, kid: KID },
        keyring,
        topics: { set: 'v/set', parts: 'v/part', manifest: 'v/manifest' },
        publish: async (topic, payload) => {
          sent.push({ topic, payload });
        },
        nowS: () => 1000,
        maxBytes,
        stateFile: join(dir, 'vehicle-set.json'),
        legacyPartsFile: join(dir, 'legacy-parts'),
        log: silentLogger,
      });
    return { sent, publisher: await open(), open };
  };
  const partTopics = (sent: readonly { topic: string; payload: string }[]) =>
    sent.filter((m) => m.topic.startsWith('v/part/') && m.payload !== '').map((m) => m.topic);
  const none = { all: false, parts: [], manifest: false };

  /** Reads what was published the way a cloud does: the newest manifest, and its parts. */
  const read = (sent: readonly { topic: string; payload: string }[]) => {
    const reader = new VehicleSetReader({ vid: VID, verify });
    const latest = new Map<string, string>();
    for (const m of sent) latest.set(m.topic, m.payload);
    const ops: string[] = [];
    for (const [topic, payload] of latest) {
      if (payload === '') continue;
      if (topic === 'v/manifest') reader.noteManifest(payload);
      if (topic.startsWith('v/part/')) ops.push(...reader.notePart(payload, Number(topic.slice(7))).ops);
    }
    return { status: reader.status(), ops };
  };

  it('publishes a change as the one part it touches and the manifest; a reconnect or restart with no change, the manifest alone', async () => {
    dir = mkdtempSync(join(tmpdir(), 'va-vehicle-set-'));
    const keyring = new FakeKeyring();
    keyring.add(...Array.from({ length: 300 }, (_, i) => fakeOp(i)));
    const { sent, publisher, open } = await setUp(keyring);

    expect(await publisher.round({ ...none, manifest: true })).toBe('parts');
    const parts = publisher.published?.parts ?? 0;
    expect(parts).toBeGreaterThanOrEqual(8);
    expect(partTopics(sent)).toHaveLength(parts);
    expect(sent.at(-1)?.topic).not.toBe('v/manifest'); // then the set topic cleared
    expect(sent.find((m) => m.topic === 'v/set')?.payload).toBe('');
    const first = read(sent);
    expect(first.status).toMatchObject({ complete: true, setDigest: keyring.digest(), setCount: 300 });

    // One grant: one part and the manifest, and only that part's texts read.
    sent.length = 0;
    keyring.textReads = 0;
    const added = fakeOp('granted');
    keyring.add(added);
    expect(await publisher.round(none)).toBe('parts');
    expect(partTopics(sent)).toEqual([`v/part/${partOfHash(opHash(added), parts)}`]);
    expect(sent.map((m) => m.topic).filter((t) => t === 'v/manifest')).toHaveLength(1);
    expect(keyring.textReads).toBeLessThan(300 / 4);
    expect(publisher.published?.digest).toBe(keyring.digest());

    // Nothing changed: nothing, or the manifest alone on a connect; the same after a restart.
    sent.length = 0;
    expect(await publisher.round(none)).toBe('unchanged');
    expect(await publisher.round({ ...none, manifest: true })).toBe('manifest');
    const restarted = await open();
    expect(await restarted.round({ ...none, manifest: true })).toBe('manifest');
    expect(sent.map((m) => m.topic)).toEqual(['v/manifest', 'v/manifest']);

    // A cloud that lacks parts 1 and 5 gets those and the manifest.
    sent.length = 0;
    expect(await restarted.round({ ...none, parts: [5, 1] })).toBe('parts');
    expect(partTopics(sent)).toEqual(['v/part/1', 'v/part/5']);
  });

  it('doubles P when a part outgrows a message (every part once), and keeps one set message while it fits', async () => {
    dir = mkdtempSync(join(tmpdir(), 'va-vehicle-set-'));
    writeFileSync(join(dir, 'legacy-parts'), '40\n');
    const keyring = new FakeKeyring();
    keyring.add(...Array.from({ length: 20 }, (_, i) => fakeOp(i)));
    const { sent, publisher, open } = await setUp(keyring);
    expect(await publisher.round({ ...none, manifest: true })).toBe('set');
    expect(sent[0]?.topic).toBe('v/set');
    // The older format's 40 parts cleared, and any manifest.
    expect(sent.filter((m) => m.payload === '').map((m) => m.topic)).toEqual([
      'v/manifest',
      ...Array.from({ length: 40 }, (_, n) => `v/part/${n}`),
    ]);

    // Cleared once: the next connect clears nothing, after a restart too.
    sent.length = 0;
    expect(await publisher.round({ ...none, manifest: true })).toBe('set');
    expect(await (await open()).round({ ...none, manifest: true })).toBe('set');
    expect(sent.map((m) => m.topic)).toEqual(['v/set', 'v/set']);

    keyring.add(...Array.from({ length: 280 }, (_, i) => fakeOp(`b${i}`)));
    expect(await publisher.round(none)).toBe('parts');
    const parts = publisher.published?.parts ?? 0;
    expect(read(sent).status).toMatchObject({ complete: true, setCount: 300 });

    // Grow one part past the limit: P doubles, every part goes once, all still add up.
    const target = 0;
    let i = 0;
    sent.length = 0;
    while (publisher.published?.parts === parts) {
      for (let n = 0; n < 40; ) {
        const op = fakeOp(`g${i++}`);
        if (partOfHash(opHash(op), parts) === target) {
          keyring.add(op);
          n++;
        }
      }
      await publisher.round(none);
    }
    expect(publisher.published?.parts).toBe(parts * 2);
    const after = read(sent);
    expect(after.status).toMatchObject({ complete: true, setDigest: keyring.digest(), parts: parts * 2 });
    expect(new Set(after.ops)).toEqual(new Set(keyring.texts.values()));
  });
});
