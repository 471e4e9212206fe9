import { describe, expect, it } from 'vitest';
import { decide } from '../../../src/access/decision.js';
import { decodeTrustedOp, digestOfOps, type Keyring, signGrant } from '../../../src/access/keyring.js';
import { EMPTY_LIMITS } from '../../../src/access/rate-limit.js';
import { AgentError } from '../../../src/core/errors.js';
import type { Role } from '../../../src/core/types.js';
import { b64url } from '../../../src/crypto/encoding.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  makeUidCredential,
  NOW_S,
  newKeyring,
  revokeBy,
  type TestKey,
  VID,
} from '../../helpers/keyring-fixtures.js';

/** Table tests for what keyring.ts decides beyond the merge properties: authority, lookups, windows, suspects, digest. */

function codeOf(fn: () => unknown): string {
  try {
    fn();
    return 'added';
  } catch (err) {
    if (err instanceof AgentError) return err.code;
    throw err;
  }
}

/** A keyring where the root granted one signer of each role, and `owner` was later revoked. */
function authoritySetup() {
  const root = makeRoot();
  const ring = newKeyring(root);
  const signers: Record<'owner' | 'service' | 'driver' | 'guest' | 'revokedOwner', TestKey> = {
    owner: makeKey('signer', 'owner'),
    service: makeKey('signer', 'service'),
    driver: makeKey('signer', 'driver'),
    guest: makeKey('signer', 'guest', { notAfter: Date.UTC(2040, 0, 1) }),
    revokedOwner: makeKey('signer', 'owner'),
  };
  for (const s of Object.values(signers)) ring.add(grantBy(root, s.credential));
  ring.add(revokeBy(root, signers.revokedOwner.id, NOW_S + 1));
  return { root, ring, signers };
}

const T0 = NOW_S * 1000;
const policy = {
  rateLimit: {
    maxDenials: 3,
    windowMs: 60_000,
    cooldownMs: 300_000,
    maxUnknownCards: 4,
    uidThrottleMs: 120_000,
  },
  answerDeadlineMs: {},
};

function decisionAt(ring: Keyring, id: string, now: number): string {
  const d = decide({
    presentation: {
      reader: 'ble0',
      kind: 'phone',
      subject: id,
      credentialId: id,
      intent: 'unlock',
      explicitIntent: true,
      proof: 'valid',
    },
    keyring: ring,
    now,
    limits: EMPTY_LIMITS,
    lastCounter: undefined,
    policy,
  });
  return d.granted ? 'granted' : d.code;
}

describe('keyring authority: who may sign what', () => {
  it.each([
    // signer, op on a phone, the add's result, then the phone's decision
    ['owner', 'grant', 'added', 'granted'],
    ['owner', 'revoke', 'added', 'revoked'],
    ['service', 'grant', 'op_signer_not_allowed', 'unknown_credential'],
    ['service', 'revoke', 'added', 'revoked'],
    ['driver', 'grant', 'op_signer_not_allowed', 'unknown_credential'],
    ['driver', 'revoke', 'op_signer_not_allowed', 'granted'],
    ['guest', 'grant', 'op_signer_not_allowed', 'unknown_credential'],
    ['guest', 'revoke', 'op_signer_not_allowed', 'granted'],
    // A revoked owner's grant is stored (who may sign only grows) but never live; its revoke
    // counts (a revoke can only lock out).
    ['revokedOwner', 'grant', 'added', 'revoked'],
    ['revokedOwner', 'revoke', 'added', 'revoked'],
  ] as const)('a %s signer: %s -> %s, the phone %s', (signer, op, result, decision) => {
    const { root, ring, signers } = authoritySetup();
    const phone = makeKey('phone', 'driver');
    if (op === 'revoke') ring.add(grantBy(root, phone.credential));
    const before = ring.digest();
    const by = signers[signer];
    const jws = op === 'grant' ? grantBy(by, phone.credential) : revokeBy(by, phone.id, NOW_S + 5);
    expect(codeOf(() => ring.add(jws))).toBe(result);
    if (result !== 'added') expect(ring.digest()).toBe(before);
    expect(decisionAt(ring, phone.id, T0)).toBe(decision);
  });

  it('reports every refused op of a set by its index, also when a later pass accepted others', () => {
    const root = makeRoot();
    const owner = makeKey('signer', 'owner');
    const stranger = makeKey('signer', 'owner');
    const phone = makeKey('phone', 'driver');
    const ring = newKeyring(root);
    const set = [
      grantBy(owner, phone.credential), // waits for the owner's grant, then is accepted
      grantBy(root, phone.credential, NOW_S, 'VIN-OTHER'), // never: another vehicle
      grantBy(stranger, phone.credential), // never: unknown signer, retried each pass
      grantBy(root, owner.credential),
    ];
    const result = ring.merge(set);
    expect(result.added).toHaveLength(2);
    expect(result.rejected.map((r) => [r.index, r.code]).sort()).toEqual([
      [1, 'op_wrong_vehicle'],
      [2, 'op_unknown_signer'],
    ]);
    // The same set again: the same refusals, nothing new.
    const again = ring.merge(set);
    expect(again.added).toEqual([]);
    expect(again.duplicates).toBe(2);
    expect(again.rejected.map((r) => r.index).sort()).toEqual([1, 2]);
  });

  it('refuses a second op under an id already taken, and keeps the first', () => {
    const root = makeRoot();
    const ring = newKeyring(root);
    const a = makeKey('phone', 'driver');
    const b = makeKey('phone', 'driver');
    const id = b64url(Buffer.alloc(16, 7));
    ring.add(signGrant(a.credential, VID, root.privateKey, root.id, NOW_S, id));
    const before = ring.digest();
    expect(codeOf(() => ring.add(signGrant(b.credential, VID, root.privateKey, root.id, NOW_S, id)))).toBe(
      'op_malformed',
    );
    expect(ring.digest()).toBe(before);
    expect(ring.byId(b.id)).toBeUndefined();
  });
});

describe('keyring: which grant counts', () => {
  it.each([
    // [what, grants as (signer, role, iat), the role that counts (undefined: revoked)]
    [
      'the newest by iat',
      [
        ['root', 'driver', 10],
        ['root', 'guest', 20],
      ],
      'guest',
    ],
    [
      'the newest by iat, whatever the order',
      [
        ['root', 'guest', 20],
        ['root', 'driver', 10],
      ],
      'guest',
    ],
    [
      'a live grant over a newer dead one',
      [
        ['root', 'driver', 10],
        ['revokedOwner', 'owner', 50],
      ],
      'driver',
    ],
    ['a dead grant alone: revoked', [['revokedOwner', 'driver', 10]], undefined],
    [
      'an owner grant over an older root grant',
      [
        ['root', 'guest', 10],
        ['owner', 'owner', 30],
      ],
      'owner',
    ],
  ] as const)('%s', (_what, grants, role) => {
    const { root, ring, signers } = authoritySetup();
    const phone = makeKey('phone', 'driver');
    const by = { root, owner: signers.owner, revokedOwner: signers.revokedOwner };
    const window = { notBefore: T0 - 60_000, notAfter: T0 + 60_000 };
    ring.merge(
      grants.map(([signer, r, iat]) =>
        grantBy(by[signer], { ...phone.credential, role: r as Role, ...window }, NOW_S + iat),
      ),
    );
    expect(ring.activeRole(phone.id)).toBe(role);
    expect(ring.byId(phone.id)?.revoked).toBe(role === undefined);
  });

  it('breaks an iat tie by op id, the same way in any order', () => {
    const root = makeRoot();
    const phone = makeKey('phone', 'driver');
    const window = { notBefore: T0 - 60_000, notAfter: T0 + 60_000 };
    const low = signGrant(phone.credential, VID, root.privateKey, root.id, NOW_S, 'A'.repeat(22));
    const high = signGrant(
      { ...phone.credential, role: 'guest', ...window },
      VID,
      root.privateKey,
      root.id,
      NOW_S,
      'B'.repeat(22),
    );
    for (const order of [
      [low, high],
      [high, low],
    ]) {
      const ring = newKeyring(root);
      ring.merge(order);
      expect(ring.activeRole(phone.id)).toBe('guest');
    }
  });
});

describe('keyring: validity windows travel with the grant', () => {
  const notBefore = Date.UTC(2027, 2, 1, 8);
  const notAfter = Date.UTC(2027, 2, 1, 18);
  it.each([
    ['a minute before notBefore', notBefore - 60_000, 'not_yet_valid'],
    ['at notBefore', notBefore, 'granted'],
    ['inside the window', notBefore + 3_600_000, 'granted'],
    ['a millisecond before notAfter', notAfter - 1, 'granted'],
    ['at notAfter', notAfter, 'expired'],
    ['a day after', notAfter + 86_400_000, 'expired'],
  ])('%s: %s', (_when, now, want) => {
    const root = makeRoot();
    const ring = newKeyring(root);
    const guest = makeKey('phone', 'guest', { notBefore, notAfter });
    ring.add(grantBy(root, guest.credential));
    // The window comes back from the signed wire form (ISO strings) as the same instants.
    expect(ring.byId(guest.id)?.credential).toMatchObject({ notBefore, notAfter });
    expect(decisionAt(ring, guest.id, now)).toBe(want);
  });
});

describe('keyring lookups', () => {
  it('finds credentials by id, UID hash and signing key, and lists the root first', () => {
    const root = makeRoot();
    const ring = newKeyring(root);
    const phone = makeKey('phone', 'driver');
    const signer = makeKey('signer', 'service');
    const uidA = makeUidCredential('uid', 'a'.repeat(32), 'driver', { options: { insecureUid: true } });
    const ntagA = makeUidCredential('ntag424', 'a'.repeat(32), 'guest', { notAfter: Date.UTC(2040, 0, 1) });
    ring.merge([phone.credential, signer.credential, uidA, ntagA].map((c) => grantBy(root, c)));
    expect(ring.size).toBe(4);
    expect(ring.list()[0]?.credential).toMatchObject({ id: ring.rootId, role: 'owner', kind: 'signer' });
    expect(ring.list()).toHaveLength(5);
    // Two cards can share a UID hash (a plain UID tag and an NTAG 424 of the same chip).
    expect(
      ring
        .byUidHash('a'.repeat(32))
        .map((s) => s.credential.id)
        .sort(),
    ).toEqual([uidA.id, ntagA.id].sort());
    expect(ring.byUidHash('b'.repeat(32))).toEqual([]);
    expect(ring.byId('phone:nobody')).toBeUndefined();
    expect(ring.activeRole(signer.id)).toBe('service');
    // Keys only for what signs (phones and signers), and the root's own.
    expect(ring.keyOf(phone.id)?.asymmetricKeyType).toBe('ec');
    expect(ring.keyOf(signer.id)).toBeDefined();
    expect(ring.keyOf(ring.rootId)).toBeDefined();
    expect(ring.keyOf(uidA.id)).toBeUndefined();
    expect(ring.keyOf('signer:nobody')).toBeUndefined();
  });
});

describe('keyring suspects (state damaged in every copy)', () => {
  it('denies a suspect credential, ends its signing authority, leaves the digest, and repair clears it', () => {
    const root = makeRoot();
    const ring = newKeyring(root);
    const owner = makeKey('signer', 'owner');
    const phone = makeKey('phone', 'driver');
    ring.merge([grantBy(root, owner.credential), grantBy(owner, phone.credential)]);
    const digest = ring.digest();
    expect(decisionAt(ring, phone.id, T0)).toBe('granted');

    ring.markSuspect(owner.id, 'revoke journal damaged');
    expect(ring.byId(owner.id)).toMatchObject({ revoked: true, suspect: 'revoke journal damaged' });
    expect(ring.activeRole(owner.id)).toBeUndefined();
    // What the suspect owner granted is no longer live.
    expect(decisionAt(ring, phone.id, T0)).toBe('revoked');
    expect(ring.suspectCredentials()).toEqual(new Map([[owner.id, 'revoke journal damaged']]));
    expect(ring.digest()).toBe(digest); // suspects are local state, not keyring content

    ring.markSuspect(phone.id, 'counter lost');
    expect(decisionAt(ring, phone.id, T0)).toBe('credential_suspect');

    // The root cannot be made suspect (it is pinned, and would lock every owner out).
    ring.markSuspect(ring.rootId, 'nonsense');
    expect(ring.suspectCredentials().has(ring.rootId)).toBe(false);
    expect(ring.activeRole(ring.rootId)).toBe('owner');

    ring.clearSuspects();
    expect(ring.suspectCredentials().size).toBe(0);
    expect(decisionAt(ring, phone.id, T0)).toBe('granted');
    expect(ring.activeRole(owner.id)).toBe('owner');
  });
});

describe('keyring digest', () => {
  it('is digestOfOps over the ops in any order, moves with every new op and not with a duplicate', () => {
    const root = makeRoot();
    const ring = newKeyring(root);
    const empty = ring.digest();
    expect(empty).toBe(digestOfOps([]));
    const phone = makeKey('phone', 'driver');
    const grant = grantBy(root, phone.credential);
    ring.add(grant);
    const one = ring.digest();
    expect(one).not.toBe(empty);
    ring.add(grant);
    expect(ring.digest()).toBe(one);
    ring.add(revokeBy(root, phone.id));
    expect(ring.digest()).not.toBe(one);
    const ops = [...ring.storedOps()].map((s) => ({ id: s.op.id, jws: s.jws }));
    expect(digestOfOps(ops)).toBe(ring.digest());
    expect(digestOfOps([...ops].reverse())).toBe(ring.digest());
    // Each op counts by its content: a different JWS under the same id gives another digest.
    const first = ops[0];
    if (first === undefined) throw new Error('no op');
    expect(digestOfOps([{ id: first.id, jws: `${first.jws}x` }, ...ops.slice(1)])).not.toBe(ring.digest());
  });
});

describe('decodeTrustedOp (start-up decode of our own state files)', () => {
  const root = makeRoot();
  const phone = makeKey('phone', 'driver');
  const enc = (payload: unknown) => `h.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.s`;
  it.each([
    ['no dots', 'garbage'],
    ['a payload that is not JSON', 'h.bm90IGpzb24.s'],
    ['a payload that is null', enc(null)],
    ['no id', enc({ op: 'revoke', credId: 'x' })],
    ['a revoke without credId', enc({ id: 'x', op: 'revoke' })],
    ['a grant without cred', enc({ id: 'x', op: 'grant' })],
    ['a grant whose cred has no role', enc({ id: 'x', op: 'grant', cred: { id: 'c' } })],
    ['an unknown op', enc({ id: 'x', op: 'promote', cred: { id: 'c', role: 'owner' } })],
  ])('refuses %s with op_malformed', (_what, jws) => {
    expect(codeOf(() => decodeTrustedOp(jws, root.id))).toBe('op_malformed');
  });

  it('decodes a real op to what the keyring stored', () => {
    const ring = newKeyring(root);
    ring.add(grantBy(root, phone.credential));
    const [stored] = [...ring.storedOps()];
    if (stored === undefined) throw new Error('no op');
    expect(decodeTrustedOp(stored.jws, stored.signer)).toEqual(stored);
  });
});
