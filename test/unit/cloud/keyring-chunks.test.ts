import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { digestOfOps } from '../../../src/access/keyring.js';
import {
  checkKeyringMessage,
  chunkRanges,
  fitsOneSet,
  type KeyringMessage,
  orderForMerge,
  parseKeyringMessage,
  SetAssembly,
  SetDigestSum,
  setDigestOf,
  signKeyringChunk,
  signKeyringMessages,
} from '../../../src/cloud/keyring-set.js';
import { partOfTopic } from '../../../src/cloud/topics.js';
import { signJws } from '../../../src/crypto/jws.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  NOW_S,
  newKeyring,
  revokeBy,
  VID,
} from '../../helpers/keyring-fixtures.js';

const root = makeRoot();
const ring = newKeyring(root);
const service = makeKey('signer', 'service');
const driver = makeKey('signer', 'driver');
ring.add(grantBy(root, service.credential));
ring.add(grantBy(root, driver.credential));
const ctx = (part?: number) => ({ vehicleId: VID, keys: ring, nowMs: NOW_S * 1000, part });

/** Stand-ins for op texts: the set and part codecs never decode an op (the keyring does). */
const fakeOps = (n: number, len = 700): string[] =>
  Array.from({ length: n }, (_, i) => `op${i}.${'x'.repeat(len)}`);

/** The smallest part size the codec allows (one largest op must fit). */
const SMALL_PART = 70_000;

function signedParts(ops: readonly string[], maxBytes = SMALL_PART, iat = NOW_S): string[] {
  const signed = signKeyringMessages(VID, ops, root.privateKey, root.id, iat, maxBytes);
  if (signed.kind !== 'chunks') throw new Error('expected parts');
  return signed.parts;
}

const checked = (message: string, part: number): KeyringMessage => {
  const c = checkKeyringMessage(message, ctx(part));
  if (!c.ok) throw new Error(`${c.code}: ${c.message}`);
  return c.message;
};

describe('the set digest from parts', () => {
  it('is the keyring digest, whatever the order and the cut (property)', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.string({ minLength: 1, maxLength: 40 }), { maxLength: 60 }),
        fc.array(fc.nat(), { maxLength: 6 }),
        (ops, cuts) => {
          const expected = digestOfOps(ops.map((jws) => ({ id: '', jws })));
          expect(setDigestOf(ops)).toBe(expected);
          // Added part by part, in reverse order of the parts.
          const bounds = [...new Set(cuts.map((c) => c % (ops.length + 1)))].sort((a, b) => a - b);
          const slices: string[][] = [];
          let start = 0;
          for (const b of [...bounds, ops.length]) {
            slices.push(ops.slice(start, b));
            start = b;
          }
          const sum = new SetDigestSum();
          for (const s of slices.reverse()) sum.add(s);
          expect(sum.count).toBe(ops.length);
          expect(sum.digest()).toBe(expected);
        },
      ),
    );
  });

  it('is what a keyring holding exactly these ops shows', () => {
    const k = newKeyring(root);
    const phone = makeKey('phone', 'driver');
    const ops = [
      grantBy(root, service.credential),
      grantBy(root, phone.credential),
      revokeBy(root, phone.id),
    ];
    k.merge(ops);
    expect(setDigestOf(ops)).toBe(k.digest());
  });
});

describe('cutting a set into parts', () => {
  it('keeps every op once, in order, and every signed part within the size (property)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 30_000 }), { minLength: 0, maxLength: 40 }),
        fc.integer({ min: SMALL_PART, max: 200_000 }),
        (lengths, maxBytes) => {
          const ops = lengths.map((len, i) => `${i}.${'y'.repeat(len)}`);
          const ranges = chunkRanges(ops, maxBytes);
          expect(ranges.flatMap(([a, b]) => ops.slice(a, b))).toEqual(ops);
          for (const [a, b] of ranges) expect(b > a || ops.length === 0).toBe(true);
          const snapshot = {
            setDigest: setDigestOf(ops),
            setCount: ops.length,
            parts: ranges.length,
            iat: NOW_S,
          };
          for (const [part, [a, b]] of ranges.entries()) {
            const message = signKeyringChunk(VID, snapshot, part, ops.slice(a, b), root.privateKey, root.id);
            expect(Buffer.byteLength(message)).toBeLessThanOrEqual(maxBytes);
          }
        },
      ),
      { numRuns: 40 },
    );
  });

  it('sends a small set as one set message (as before parts) and a large one in parts', () => {
    const small = fakeOps(10);
    expect(fitsOneSet(small, SMALL_PART)).toBe(true);
    const one = signKeyringMessages(VID, small, root.privateKey, root.id, NOW_S, SMALL_PART);
    expect(one.kind).toBe('set');
    if (one.kind === 'set')
      expect(parseKeyringMessage(one.message)).toMatchObject({ kind: 'set', ops: small });
    const large = fakeOps(300);
    expect(fitsOneSet(large, SMALL_PART)).toBe(false);
    expect(signedParts(large).length).toBeGreaterThan(2);
  });

  it('refuses a part size that cannot hold one largest op', () => {
    expect(() => chunkRanges(fakeOps(3), 10_000)).toThrow(/at least/);
  });
});

describe('checking a part', () => {
  const ops = fakeOps(300);
  const parts = signedParts(ops);

  it('accepts each part on its own topic, signed by the owner or a service key', () => {
    for (const [n, message] of parts.entries())
      expect(checked(message, n)).toMatchObject({
        kind: 'chunk',
        manifest: { part: n, parts: parts.length },
      });
    const bySvc = signKeyringMessages(VID, ops, service.privateKey, service.id, NOW_S, SMALL_PART);
    expect(bySvc.kind === 'chunks' && checkKeyringMessage(bySvc.parts[0] as string, ctx(0)).ok).toBe(true);
  });

  it.each<[string, () => { payload: string; part: number | undefined }, string]>([
    [
      'a part on the topic of another part',
      () => ({ payload: parts[1] as string, part: 0 }),
      'keyring_chunk_mismatch',
    ],
    [
      'a part on the set topic',
      () => ({ payload: parts[0] as string, part: undefined }),
      'keyring_chunk_mismatch',
    ],
    [
      'a whole set on a part topic',
      () => ({
        payload: (
          signKeyringMessages(VID, fakeOps(2), root.privateKey, root.id, NOW_S) as { message: string }
        ).message,
        part: 0,
      }),
      'keyring_chunk_mismatch',
    ],
    [
      'an op moved from one part to the next',
      () => {
        const a = JSON.parse(parts[0] as string) as { chunk: string; ops: string[] };
        const b = JSON.parse(parts[1] as string) as { chunk: string; ops: string[] };
        return { payload: JSON.stringify({ chunk: b.chunk, ops: [a.ops[0], ...b.ops] }), part: 1 };
      },
      'jws_malformed',
    ],
    [
      'a part index beyond the parts',
      () => {
        const manifest = {
          vid: VID,
          iat: NOW_S,
          setDigest: setDigestOf([]),
          setCount: 0,
          part: 2,
          parts: 2,
          count: 0,
          opsDigest: 'x',
        };
        const chunk = signJws(manifest, root.privateKey, root.id, 'vehicle-agent.keyring-chunk');
        return { payload: JSON.stringify({ chunk, ops: [] }), part: 2 };
      },
      'keyring_chunk_mismatch',
    ],
    [
      'a set digest that is not 64 hex digits',
      () => {
        const good = JSON.parse(parts[0] as string) as { chunk: string; ops: string[] };
        const payload = JSON.parse(
          Buffer.from(good.chunk.split('.')[1] as string, 'base64url').toString(),
        ) as object;
        const chunk = signJws(
          { ...payload, setDigest: 'ABC' },
          root.privateKey,
          root.id,
          'vehicle-agent.keyring-chunk',
        );
        return { payload: JSON.stringify({ chunk, ops: good.ops }), part: 0 };
      },
      'jws_malformed',
    ],
    ['another vehicle', () => ({ payload: signedPartFor('OTHER-1', root), part: 0 }), 'wrong_vehicle'],
    ['a driver key', () => ({ payload: signedPartFor(VID, driver), part: 0 }), 'role_not_allowed'],
    [
      'an unknown key',
      () => ({ payload: signedPartFor(VID, makeKey('signer', 'owner')), part: 0 }),
      'unknown_kid',
    ],
    [
      'a signature by another key under the root kid',
      () => {
        const forger = makeKey('signer', 'owner');
        const snapshot = { setDigest: setDigestOf(ops), setCount: 300, parts: 2, iat: NOW_S };
        return {
          payload: signKeyringChunk(VID, snapshot, 0, ops.slice(0, 5), forger.privateKey, root.id),
          part: 0,
        };
      },
      'bad_signature',
    ],
  ])('refuses %s', (_name, build, code) => {
    const { payload, part } = build();
    expect(checkKeyringMessage(payload, ctx(part))).toMatchObject({ ok: false, code });
  });

  function signedPartFor(
    vid: string,
    by: { privateKey: import('node:crypto').KeyObject; id: string },
  ): string {
    const snapshot = { setDigest: setDigestOf(ops), setCount: 300, parts: 2, iat: NOW_S };
    return signKeyringChunk(vid, snapshot, 0, ops.slice(0, 5), by.privateKey, by.id);
  }
});

describe('following the parts of a snapshot', () => {
  const opsA = fakeOps(200);
  const opsB = [...opsA, ...fakeOps(60, 900)];
  const partsA = signedParts(opsA, SMALL_PART, NOW_S).map((m, n) => checked(m, n));
  const partsB = signedParts(opsB, SMALL_PART, NOW_S + 60).map((m, n) => checked(m, n));

  it('is complete once every part of the newest snapshot came, in any order and with old parts mixed in (property)', () => {
    fc.assert(
      fc.property(
        fc.shuffledSubarray([...partsB.keys()], { minLength: partsB.length, maxLength: partsB.length }),
        fc.array(fc.nat({ max: partsA.length - 1 }), { maxLength: 8 }),
        fc.array(fc.nat(), { maxLength: 8 }),
        (order, oldOnes, where) => {
          const sequence: KeyringMessage[] = order.map((n) => partsB[n] as KeyringMessage);
          // Replayed parts of the older snapshot, anywhere (before or after the newer ones).
          for (const [i, n] of oldOnes.entries())
            sequence.splice((where[i] ?? 0) % (sequence.length + 1), 0, partsA[n] as KeyringMessage);
          const a = new SetAssembly();
          const notes = sequence.map((m) => a.note(m));
          expect(a.status()).toMatchObject({
            setDigest: setDigestOf(opsB),
            parts: partsB.length,
            received: partsB.length,
            complete: true,
            inconsistent: false,
          });
          // Complete exactly when the last part of the newer snapshot came.
          const lastB = sequence.findLastIndex((m) => partsB.includes(m));
          expect(notes[lastB]).toBe('complete');
          expect(notes.slice(lastB + 1).every((n) => n === 'stale')).toBe(true);
          expect(a.missing()).toEqual([]);
        },
      ),
      { numRuns: 60 },
    );
  });

  it('is never complete while a part of the newest snapshot is missing, whatever old parts come (property)', () => {
    fc.assert(
      fc.property(
        fc.nat({ max: partsB.length - 1 }),
        fc.array(fc.nat({ max: partsA.length - 1 }), { maxLength: 10 }),
        (left, oldOnes) => {
          const a = new SetAssembly();
          for (const [n, m] of partsB.entries()) if (n !== left) a.note(m);
          for (const n of oldOnes) expect(a.note(partsA[n] as KeyringMessage)).toBe('stale');
          // The same part twice counts once.
          if (partsB.length > 1) a.note(partsB[(left + 1) % partsB.length] as KeyringMessage);
          expect(a.status()).toMatchObject({ complete: false, received: partsB.length - 1 });
          expect(a.missing()).toEqual([left]);
        },
      ),
    );
  });

  it('says inconsistent when the signed parts do not add up to their set digest', () => {
    // A publisher that signs parts of two different lists under one snapshot.
    const snapshot = { setDigest: setDigestOf(opsA), setCount: opsA.length, parts: 2, iat: NOW_S };
    const p0 = signKeyringChunk(VID, snapshot, 0, opsA.slice(0, 100), root.privateKey, root.id);
    const p1 = signKeyringChunk(VID, snapshot, 1, fakeOps(100, 500), root.privateKey, root.id);
    const a = new SetAssembly();
    expect(a.note(checked(p0, 0))).toBe('part');
    expect(a.note(checked(p1, 1))).toBe('inconsistent');
    expect(a.status()).toMatchObject({ complete: false, inconsistent: true });
  });

  it('takes a whole set as a snapshot of one part', () => {
    const a = new SetAssembly();
    const set = signKeyringMessages(VID, fakeOps(3), root.privateKey, root.id, NOW_S + 120);
    expect(set.kind).toBe('set');
    if (set.kind === 'set') expect(a.note(parseKeyringMessage(set.message))).toBe('complete');
    expect(a.note(partsB[0] as KeyringMessage)).toBe('stale');
  });
});

describe('ordering ops for a merge part by part', () => {
  it('puts signers first and revokes last, so a keyring merging the parts in order refuses none', () => {
    const owner2 = makeKey('signer', 'owner');
    const phones = Array.from({ length: 6 }, () => makeKey('phone', 'driver'));
    const ops = [
      revokeBy(owner2, phones[0]?.id as string),
      ...phones.map((p) => grantBy(owner2, p.credential)),
      grantBy(root, owner2.credential),
    ];
    const ordered = orderForMerge(ops);
    expect(ordered[0]).toBe(ops.at(-1));
    expect(ordered.at(-1)).toBe(ops[0]);
    const k = newKeyring(root);
    for (const op of ordered) expect(k.merge([op]).rejected).toEqual([]);
    expect(k.byId(phones[0]?.id as string)?.revoked).toBe(true);
    // Unordered, the first merge part by part refuses what owner2 signed before its grant.
    const unordered = newKeyring(root);
    expect(ops.flatMap((op) => unordered.merge([op]).rejected).length).toBeGreaterThan(0);
  });
});

describe('part topics', () => {
  it.each<[string, number | undefined]>([
    ['v/VA/keyring/part/0', 0],
    ['v/VA/keyring/part/17', 17],
    ['v/VA/keyring/part/017', undefined],
    ['v/VA/keyring/part/-1', undefined],
    ['v/VA/keyring/part/1/x', undefined],
    ['v/VA/keyring/part/', undefined],
    ['v/VA/keyring', undefined],
    ['v/VA/keyring/partial/1', undefined],
  ])('%s names part %s', (topic, part) => {
    expect(partOfTopic(topic, 'v/VA/keyring/part')).toBe(part);
  });
});
