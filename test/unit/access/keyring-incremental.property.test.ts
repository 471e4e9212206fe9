import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { digestOfOps, type Keyring } from '../../../src/access/keyring.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  makeUidCredential,
  NOW_S,
  newKeyring,
  revokeBy,
} from '../../helpers/keyring-fixtures.js';

/**
 * A keyring folds each change into its digest and effective credentials in constant time (issue
 * 19). Properties: after any sequence of adds, merges, applied and abandoned prepares, in any
 * order, the keyring equals one recomputed in full from the same ops, and its digest equals the
 * documented formula computed here independently (BigInt sum of the ops' SHA-256).
 */
const root = makeRoot();
const owner2 = makeKey('signer', 'owner');
const service = makeKey('signer', 'service');
const phoneA = makeKey('phone', 'driver');
const phoneB = makeKey('phone', 'guest', { notAfter: Date.UTC(2031, 0, 1) });
const phoneC = makeKey('phone', 'driver');
const cardA = makeUidCredential('ntag424', 'a'.repeat(32), 'driver');
const cardBDriver = makeUidCredential('uid', 'a'.repeat(32), 'driver');
const cardB = { ...cardBDriver, role: 'guest' as const, notAfter: Date.UTC(2031, 0, 1) };
const cardC = makeUidCredential('ntag424', 'c'.repeat(32), 'driver');
const uids = ['a'.repeat(32), 'c'.repeat(32)];
const ids = [owner2.id, service.id, phoneA.id, phoneB.id, phoneC.id, cardA.id, cardB.id, cardC.id];

/**
 * Ops covering every path: plain grants, regrants (newer, older, another role), revokes of
 * plain credentials, of a live owner (its grants die), by a service key, and grants that wait
 * for their signer's own grant.
 */
const pool: readonly string[] = [
  grantBy(root, phoneA.credential),
  grantBy(root, { ...phoneA.credential, role: 'guest', notAfter: Date.UTC(2031, 0, 1) }, NOW_S + 4),
  grantBy(root, phoneB.credential, NOW_S + 1),
  grantBy(root, cardA),
  grantBy(root, cardB),
  grantBy(root, cardBDriver, NOW_S - 5),
  grantBy(root, owner2.credential),
  grantBy(owner2, phoneC.credential),
  grantBy(owner2, cardC),
  grantBy(root, service.credential),
  revokeBy(root, phoneB.id, NOW_S + 2),
  revokeBy(service, cardA.id, NOW_S + 3),
  revokeBy(root, owner2.id, NOW_S + 6),
  grantBy(root, cardC, NOW_S + 7),
];

function stateOf(ring: Keyring): string {
  const statuses = ring
    .list()
    .map((s) => [s.credential.id, s.credential.role, s.revoked, s.suspect ?? '', s.credential.notAfter ?? 0])
    .sort();
  const byUid = uids.map((uid) =>
    ring
      .byUidHash(uid)
      .map((s) => `${s.credential.id}/${s.revoked}`)
      .sort(),
  );
  const keys = ids.map((id) => ring.keyOf(id) !== undefined);
  const roles = ids.map((id) => ring.activeRole(id) ?? '-');
  return JSON.stringify({ statuses, byUid, keys, roles, size: ring.size });
}

/** The digest as docs/keyring.md defines it, with BigInt arithmetic. */
function referenceDigest(jwsList: readonly string[]): string {
  let sum = 0n;
  for (const jws of jwsList) sum += BigInt(`0x${createHash('sha256').update(jws, 'utf8').digest('hex')}`);
  sum %= 1n << 256n;
  const text = `vehicle-agent keyring digest v2\n${jwsList.length}\n${sum.toString(16).padStart(64, '0')}`;
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

/** The same ops loaded in one go: one full recompute. */
function recomputed(ring: Keyring): Keyring {
  const fresh = newKeyring(root);
  fresh.loadTrusted([...ring.storedOps()]);
  return fresh;
}

type Step =
  | { readonly kind: 'add'; readonly ops: readonly string[] }
  | { readonly kind: 'merge'; readonly ops: readonly string[] }
  | { readonly kind: 'abandon'; readonly ops: readonly string[] };

const step: fc.Arbitrary<Step> = fc.record({
  kind: fc.constantFrom<Step['kind']>('add', 'merge', 'abandon'),
  ops: fc
    .subarray([...pool], { minLength: 1, maxLength: 5 })
    .chain((ops) => fc.shuffledSubarray(ops, { minLength: ops.length })),
});

describe('keyring: incremental changes equal a full recompute', () => {
  it('after any sequence of adds, merges and abandoned prepares', () => {
    fc.assert(
      fc.property(fc.array(step, { minLength: 1, maxLength: 12 }), (steps) => {
        const ring = newKeyring(root);
        for (const s of steps) {
          const before = { state: stateOf(ring), digest: ring.digest() };
          if (s.kind === 'add') {
            for (const jws of s.ops) {
              try {
                ring.add(jws);
              } catch {
                // a signer not granted yet: refused, and the keyring unchanged (checked below)
              }
            }
          } else if (s.kind === 'merge') {
            ring.merge(s.ops);
          } else {
            ring.prepare(s.ops);
            expect(stateOf(ring)).toBe(before.state);
            expect(ring.digest()).toBe(before.digest);
          }
          const jwsList = [...ring.storedOps()].map((o) => o.jws);
          const full = recomputed(ring);
          expect(stateOf(ring)).toBe(stateOf(full));
          expect(ring.digest()).toBe(full.digest());
          expect(ring.digest()).toBe(referenceDigest(jwsList));
          expect(digestOfOps([...ring.storedOps()].map((o) => ({ id: o.op.id, jws: o.jws })))).toBe(
            ring.digest(),
          );
        }
      }),
      { numRuns: 150 },
    );
  });

  it('the digest does not depend on the order the ops came in, and tells sets apart', () => {
    fc.assert(
      fc.property(fc.shuffledSubarray([...pool], { minLength: pool.length }), (order) => {
        const ring = newKeyring(root);
        expect(ring.merge(order).rejected).toEqual([]);
        expect(ring.size).toBe(pool.length);
        expect(ring.digest()).toBe(referenceDigest(pool));
        const fewer = newKeyring(root);
        fewer.merge(order.slice(1));
        expect(fewer.digest()).not.toBe(ring.digest());
      }),
      { numRuns: 40 },
    );
  });
});
