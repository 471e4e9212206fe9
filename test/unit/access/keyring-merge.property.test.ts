import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Keyring } from '../../../src/access/keyring.js';
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
 * The keyring is a set of signed operations, merged in any order from any source (the cloud's
 * signed set, enrollment, the CLI): properties over generated orders and batches of a pool of
 * real signed operations (keys made once; fast-check prints the seed of any failure).
 */
const root = makeRoot();
const owner2 = makeKey('signer', 'owner');
const phones: TestKey[] = Array.from({ length: 6 }, (_, i) =>
  makeKey('phone', i % 2 === 0 ? 'driver' : 'guest', i % 2 === 0 ? {} : { notAfter: Date.UTC(2031, 0, 1) }),
);
function phone(i: number): TestKey {
  const key = phones[i];
  if (!key) throw new Error(`no phone ${i}`);
  return key;
}
const revoked = new Set([phone(1).id, phone(4).id]);

/** Ops the root signs: independent of each other, so any split into batches is valid. */
const rootOps: readonly string[] = [
  ...phones.slice(0, 4).map((p) => grantBy(root, p.credential)),
  revokeBy(root, phone(1).id, NOW_S + 5),
  // A grant signed after the revoke: a revocation is final, it must not bring the key back.
  grantBy(root, phone(1).credential, NOW_S + 9),
  revokeBy(root, phone(4).id, NOW_S + 3),
];
/** A chain: owner2's grant and what owner2 signs, which depends on it within one merge. */
const chainOps: readonly string[] = [
  grantBy(root, owner2.credential),
  grantBy(owner2, phone(4).credential),
  grantBy(owner2, phone(5).credential),
];
const allOps = [...rootOps, ...chainOps];

function stateOf(ring: Keyring): string {
  return JSON.stringify(
    ring
      .list()
      .map((s) => [s.credential.id, s.credential.role, s.revoked])
      .sort(),
  );
}

function reference(ops: readonly string[]): { digest: string; state: string } {
  const ring = newKeyring(root);
  const result = ring.merge(ops);
  expect(result.rejected).toEqual([]);
  return { digest: ring.digest(), state: stateOf(ring) };
}

const permutation = <T>(items: readonly T[]) => fc.shuffledSubarray([...items], { minLength: items.length });

/** A permutation cut into consecutive batches at the given points. */
const batches = <T>(items: readonly T[]) =>
  fc
    .tuple(permutation(items), fc.array(fc.nat({ max: items.length }), { maxLength: items.length }))
    .map(([order, cuts]) => {
      const points = [...new Set([0, ...cuts, order.length])].sort((a, b) => a - b);
      return points.slice(1).map((end, i) => order.slice(points[i], end));
    });

describe('keyring merge: properties over orders and batches', () => {
  const expected = reference(allOps);
  const expectedRoot = reference(rootOps);

  it('is order independent: any permutation of one set gives the same keyring and digest', () => {
    fc.assert(
      fc.property(permutation(allOps), (order) => {
        const ring = newKeyring(root);
        expect(ring.merge(order).rejected).toEqual([]);
        expect(ring.digest()).toBe(expected.digest);
        expect(stateOf(ring)).toBe(expected.state);
      }),
      { numRuns: 60 },
    );
  });

  it('is a union: the same ops in any batches and order give the same keyring, every op kept', () => {
    fc.assert(
      fc.property(batches(rootOps), (parts) => {
        const ring = newKeyring(root);
        for (const part of parts) expect(ring.merge(part).rejected).toEqual([]);
        expect(ring.digest()).toBe(expectedRoot.digest);
        expect(stateOf(ring)).toBe(expectedRoot.state);
        expect([...ring.storedOps()]).toHaveLength(rootOps.length);
      }),
      { numRuns: 60 },
    );
  });

  it('revoke wins: a revoked credential stays revoked whatever the order, a later grant included', () => {
    fc.assert(
      fc.property(permutation(allOps), (order) => {
        const ring = newKeyring(root);
        ring.merge(order);
        for (const p of phones) {
          const status = ring.byId(p.id);
          expect(status?.revoked ?? false, p.id).toBe(revoked.has(p.id));
          if (revoked.has(p.id)) expect(ring.activeRole(p.id)).toBeUndefined();
          else expect(ring.activeRole(p.id)).toBe(p.credential.role);
        }
      }),
      { numRuns: 60 },
    );
  });

  it('is idempotent: merging any part again adds nothing and changes nothing', () => {
    fc.assert(
      fc.property(permutation(allOps), fc.subarray(allOps), (order, again) => {
        const ring = newKeyring(root);
        ring.merge(order);
        const result = ring.merge(again);
        expect(result.added).toEqual([]);
        expect(result.rejected).toEqual([]);
        expect(result.duplicates).toBe(again.length);
        expect(ring.digest()).toBe(expected.digest);
      }),
      { numRuns: 40 },
    );
  });

  it('refuses forged ops with a code and changes nothing, wherever they sit in the set', () => {
    const stranger = makeKey('signer', 'owner');
    const victim = makeKey('phone', 'owner');
    const forged = [
      // signed by a key the keyring does not know
      grantBy(stranger, victim.credential),
      // a revoke of a real key by the stranger: must not deny the owner
      revokeBy(stranger, phone(0).id),
    ];
    // one bit of a real grant's signature flipped
    const real = grantBy(root, victim.credential);
    const dot = real.lastIndexOf('.');
    const flip = real[dot + 5] === 'A' ? 'B' : 'A';
    forged.push(`${real.slice(0, dot + 5)}${flip}${real.slice(dot + 6)}`);
    fc.assert(
      fc.property(permutation([...allOps, ...forged]), (order) => {
        const ring = newKeyring(root);
        const result = ring.merge(order);
        expect(result.rejected).toHaveLength(forged.length);
        for (const r of result.rejected) expect(r.code).toMatch(/^[a-z_]+$/);
        expect(ring.digest()).toBe(expected.digest);
        expect(ring.byId(victim.id)).toBeUndefined();
        expect(ring.activeRole(phone(0).id)).toBe('driver');
      }),
      { numRuns: 40 },
    );
  });
});
