import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { CredentialStatus } from '../../../src/access/credential-lookup.js';
import { credentialToWire } from '../../../src/access/credential-wire.js';
import { decodeStoredOp, type GrantOp, type Keyring, type StoredOp } from '../../../src/access/keyring.js';
import type { Credential, CredentialKind, Role } from '../../../src/core/types.js';
import { b64url } from '../../../src/crypto/encoding.js';
import { credentialIdFor, generateKeyPair, publicJwkOf } from '../../../src/crypto/keys.js';
import { decodeSummaryV4, encodeSummary } from '../../../src/store/keyring-summary.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  makeUidCredential,
  NOW_S,
  newKeyring,
  revokeBy,
  type TestKey,
} from '../../helpers/keyring-fixtures.js';

/**
 * Issue 19: the keyring holds each grant in a compact form (the public key as raw bytes, options
 * as bits, times in ms) and builds the Credential a decision reads on lookup. Property: over random
 * op sets, orders and suspects, every lookup (byId, byUidHash, list, activeRole, keyOf) gives
 * exactly what the keyring gave when it held every op decoded, the model below: that derivation,
 * kept here as it was, over the ops decoded from their texts. Both ways in: ops merged, and a
 * snapshot of the effective credentials before its ops are decoded, then after.
 */
const root = makeRoot();
const owner2 = makeKey('signer', 'owner');
const owner3 = makeKey('signer', 'owner', {}, 'Ed25519');
const phoneOwner = makeKey('phone', 'owner', { name: 'owner phone' });
const service = makeKey('signer', 'service');
const UNTIL = Date.UTC(2031, 0, 1);
const phoneA = makeKey('phone', 'driver', { name: 'Alice' });
const phoneB = makeKey('phone', 'guest', {
  name: 'Bob',
  notBefore: Date.UTC(2026, 11, 24, 18, 30, 15, 250),
  notAfter: UNTIL,
});
const phoneC = makeKey('phone', 'driver', { options: { passive: true } });

function keyed(
  kind: Extract<CredentialKind, 'fido' | 'passkey'>,
  role: Role,
  extra: Partial<Credential>,
): Credential {
  const keyHandle = b64url(randomBytes(kind === 'fido' ? 64 : 32));
  return {
    id: credentialIdFor(kind, Buffer.from(keyHandle, 'base64url')),
    kind,
    role,
    keyHandle,
    publicKey: publicJwkOf(generateKeyPair('P-256').publicKey),
    options: {},
    ...extra,
  };
}

const fido = keyed('fido', 'driver', { name: 'fido key' });
const passkey = keyed('passkey', 'guest', { rpId: 'vehicle.example', notAfter: UNTIL });
const UID_A = 'a'.repeat(32);
const UID_C = '0123456789abcdef0123456789abcdef';
const cardA = makeUidCredential('ntag424', UID_A, 'driver', { name: 'card A' });
const tagA = makeUidCredential('uid', UID_A, 'guest', { notAfter: UNTIL, options: { insecureUid: true } });
const { notAfter: _guestWindow, ...tagDriver } = tagA;
const cardC = makeUidCredential('ntag424', UID_C, 'owner');
const uids = [UID_A, UID_C, 'f'.repeat(32)];

function grantsOf(signer: TestKey, c: Credential, iat = NOW_S): string {
  return grantBy(signer, c, iat);
}

/** Ops over every kind, field and path: regrants (role, window), revokes, chains, dead owners. */
const pool: readonly string[] = [
  grantsOf(root, owner2.credential),
  grantsOf(root, owner3.credential, NOW_S + 1),
  grantsOf(owner2, phoneOwner.credential, NOW_S + 2),
  grantsOf(root, service.credential),
  grantsOf(root, phoneA.credential),
  grantsOf(owner2, { ...phoneA.credential, role: 'guest', notAfter: UNTIL }, NOW_S + 4),
  grantsOf(owner3, phoneB.credential, NOW_S + 1),
  grantsOf(phoneOwner, phoneC.credential, NOW_S + 3),
  grantsOf(root, fido),
  grantsOf(owner3, passkey, NOW_S + 5),
  grantsOf(root, cardA),
  grantsOf(owner2, tagA),
  grantsOf(root, { ...tagDriver, role: 'driver' }, NOW_S - 5),
  grantsOf(owner3, cardC),
  grantsOf(root, { ...cardC, role: 'driver' }, NOW_S + 8),
  revokeBy(root, phoneB.id, NOW_S + 2),
  revokeBy(service, cardA.id, NOW_S + 3),
  revokeBy(root, owner2.id, NOW_S + 6),
  revokeBy(owner3, fido.id, NOW_S + 7),
  revokeBy(phoneOwner, tagA.id, NOW_S + 9),
];
const ids = [
  root.id,
  owner2.id,
  owner3.id,
  phoneOwner.id,
  service.id,
  phoneA.id,
  phoneB.id,
  phoneC.id,
  fido.id,
  passkey.id,
  cardA.id,
  tagA.id,
  cardC.id,
  'phone:unknownunknownunknow',
];

interface Model {
  readonly byId: Map<string, CredentialStatus>;
  readonly byUid: Map<string, CredentialStatus[]>;
  readonly keys: Map<string, unknown>;
}

/** The derivation as it was over decoded ops (recompute + credentialFromTrustedWire), verbatim. */
function model(stored: readonly StoredOp[], suspects: ReadonlyMap<string, string>): Model {
  const rootKey = root.credential.publicKey;
  const rootCredential: Credential = {
    id: root.id,
    kind: 'signer',
    role: 'owner',
    name: 'owner root',
    ...(rootKey ? { publicKey: rootKey } : {}),
    options: {},
  };
  const revoked = new Set<string>();
  const ownerGrants: { id: string; signer: string }[] = [];
  const keys = new Map<string, unknown>([[root.id, rootKey]]);
  for (const { op, signer } of stored) {
    if (op.op === 'revoke') revoked.add(op.credId);
    else {
      if (op.cred.role === 'owner') ownerGrants.push({ id: op.cred.id, signer });
      if (
        op.cred.publicKey &&
        (op.cred.kind === 'signer' || op.cred.kind === 'phone') &&
        !keys.has(op.cred.id)
      )
        keys.set(op.cred.id, op.cred.publicKey);
    }
  }
  for (const id of suspects.keys()) revoked.add(id);
  revoked.delete(root.id);
  const liveOwners = new Set<string>([root.id]);
  let changed = true;
  while (changed) {
    changed = false;
    for (const { id, signer } of ownerGrants) {
      if (!liveOwners.has(id) && liveOwners.has(signer) && !revoked.has(id)) {
        liveOwners.add(id);
        changed = true;
      }
    }
  }
  const latest = new Map<string, { op: GrantOp; live: boolean }>();
  for (const { op, signer } of stored) {
    if (op.op !== 'grant') continue;
    const live = liveOwners.has(signer);
    const prev = latest.get(op.cred.id);
    const decides =
      prev === undefined ||
      (live && !prev.live) ||
      (live === prev.live && (op.iat > prev.op.iat || (op.iat === prev.op.iat && op.id > prev.op.id)));
    if (decides) latest.set(op.cred.id, { op, live });
  }
  const byId = new Map<string, CredentialStatus>([[root.id, { credential: rootCredential, revoked: false }]]);
  const byUid = new Map<string, CredentialStatus[]>();
  for (const [id, { op, live }] of latest) {
    const w = op.cred;
    const credential: { -readonly [K in keyof Credential]: Credential[K] } = {
      id: w.id,
      kind: w.kind,
      role: w.role,
      options: w.options ?? {},
    };
    if (w.name !== undefined) credential.name = w.name;
    if (w.notBefore !== undefined) credential.notBefore = Date.parse(w.notBefore);
    if (w.notAfter !== undefined) credential.notAfter = Date.parse(w.notAfter);
    if (w.publicKey !== undefined) credential.publicKey = w.publicKey;
    if (w.uidHash !== undefined) credential.uidHash = w.uidHash;
    if (w.keyHandle !== undefined) credential.keyHandle = w.keyHandle;
    if (w.rpId !== undefined) credential.rpId = w.rpId;
    const suspect = suspects.get(id);
    const status: CredentialStatus = {
      credential,
      revoked: !live || revoked.has(id),
      ...(suspect === undefined ? {} : { suspect }),
    };
    byId.set(id, status);
    if (w.uidHash !== undefined) byUid.set(w.uidHash, [...(byUid.get(w.uidHash) ?? []), status]);
  }
  // byUidHash returns a UID's credentials in credential id order.
  for (const list of byUid.values()) list.sort((a, b) => (a.credential.id < b.credential.id ? -1 : 1));
  return { byId, byUid, keys };
}

function expectSame(ring: Keyring, m: Model): void {
  for (const id of ids) {
    expect(ring.byId(id), id).toEqual(m.byId.get(id));
    const s = m.byId.get(id);
    expect(ring.activeRole(id), id).toBe(s && !s.revoked ? s.credential.role : undefined);
    expect(ring.keyOf(id)?.export({ format: 'jwk' }), id).toEqual(m.keys.get(id));
  }
  for (const uid of uids) expect(ring.byUidHash(uid), uid).toEqual(m.byUid.get(uid) ?? []);
  expect(ring.list()).toEqual([...m.byId.values()]);
  expect(ring.credentialCount).toBe(m.byId.size);
}

const scenario = fc.record({
  ops: fc.shuffledSubarray([...pool], { minLength: 1 }),
  suspects: fc.subarray(ids.slice(1, -1), { maxLength: 3 }),
});

describe('keyring in compact form decides exactly as over decoded ops', () => {
  it('merged ops: every lookup equals the decoded-op derivation', () => {
    fc.assert(
      fc.property(scenario, ({ ops, suspects }) => {
        const ring = newKeyring(root);
        ring.merge(ops);
        const suspectMap = new Map(suspects.map((id) => [id, `lost ${id}`] as const));
        ring.markSuspects(suspectMap);
        // The model reads every op from its text, as the keyring held them before.
        const decoded = [...ring.storedOps()].map((s) => decodeStoredOp(s.jws, s.signer));
        expectSame(ring, model(decoded, suspectMap));
      }),
      { numRuns: 120 },
    );
  });

  it('from a snapshot, before and after its ops are decoded', () => {
    fc.assert(
      fc.property(scenario, ({ ops, suspects }) => {
        const ring = newKeyring(root);
        ring.merge(ops);
        const stored = [...ring.storedOps()];
        const decoded = stored.map((s) => decodeStoredOp(s.jws, s.signer));
        const plain = model(decoded, new Map());
        // What the store writes to keyring.json: the effective credentials as wire.
        const credentials = [...plain.byId.values()]
          .filter((s) => s.credential.id !== root.id)
          .map(
            (s) =>
              [credentialToWire(s.credential), s.revoked] as [ReturnType<typeof credentialToWire>, boolean],
          );
        const lines = stored.map((s) => ({ jws: s.jws, signer: s.signer }));
        const loaded = newKeyring(root);
        loaded.loadSnapshot({
          digest: ring.digest(),
          opCount: lines.length,
          credentials: decodeSummaryV4(encodeSummary(ring.digest(), lines.length, credentials)).credentials,
          ops: { read: () => Promise.resolve(lines), readSync: () => lines },
          liveOwners: new Set(ring.liveOwnerIds()),
        });
        const suspectMap = new Map(suspects.map((id) => [id, `lost ${id}`] as const));
        loaded.markSuspects(suspectMap);
        // A suspect live owner retires what it granted, which the snapshot cannot tell: the
        // keyring decodes its ops at once and decides as over them.
        const ownerSuspect = suspects.some((id) => (ring.liveOwnerIds() ?? []).includes(id));
        expect(loaded.onSnapshot).toBe(!ownerSuspect);
        // Else, the snapshot's statuses with the suspects denied (its keys: phone, signer).
        const early = ownerSuspect ? model(decoded, suspectMap) : model(decoded, new Map());
        for (const [id, s] of early.byId) {
          const suspect = suspectMap.get(id);
          if (suspect !== undefined && !ownerSuspect) early.byId.set(id, { ...s, revoked: true, suspect });
        }
        for (const [uid, list] of early.byUid)
          early.byUid.set(
            uid,
            list.map((s) => early.byId.get(s.credential.id) ?? s),
          );
        expectSame(loaded, early);
        // Any call that needs the ops decodes them (here synchronously).
        expect(loaded.has(decoded[0]?.op.id ?? '')).toBe(decoded.length > 0);
        expectSame(loaded, model(decoded, suspectMap));
        expect(loaded.digest()).toBe(ring.digest());
      }),
      { numRuns: 60 },
    );
  });
});
