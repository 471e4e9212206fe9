import { describe, expect, it } from 'vitest';
import {
  authRequestHash,
  decodeStoredOp,
  KEYRING_OP_TYP,
  Keyring,
  newOpId,
} from '../../../src/access/keyring.js';
import { AgentError } from '../../../src/core/errors.js';
import { b64url } from '../../../src/crypto/encoding.js';
import { signJws } from '../../../src/crypto/jws.js';
import { sha256 } from '../../../src/crypto/keys.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  makeUidCredential,
  NOW_S,
  newKeyring,
  revokeBy,
  VID,
} from '../../helpers/keyring-fixtures.js';
import { seededRandom } from '../../helpers/seeded-random.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof AgentError) return err.code;
    throw err;
  }
  return undefined;
}

describe('keyring', () => {
  it('accepts a grant signed by the pinned root and exposes the credential', () => {
    const root = makeRoot();
    const ring = newKeyring(root);
    const phone = makeKey('phone', 'driver');
    expect(ring.add(grantBy(root, phone.credential)).status).toBe('added');
    expect(ring.byId(phone.id)).toMatchObject({
      revoked: false,
      credential: { role: 'driver', kind: 'phone' },
    });
    expect(ring.activeRole(phone.id)).toBe('driver');
  });

  it('refuses grants from keys without the owner role, with a code', () => {
    const root = makeRoot();
    const ring = newKeyring(root);
    const driver = makeKey('signer', 'driver');
    const service = makeKey('signer', 'service');
    ring.add(grantBy(root, driver.credential));
    ring.add(grantBy(root, service.credential));
    const victim = makeKey('phone', 'owner');
    expect(codeOf(() => ring.add(grantBy(driver, victim.credential)))).toBe('op_signer_not_allowed');
    expect(codeOf(() => ring.add(grantBy(service, victim.credential)))).toBe('op_signer_not_allowed');
    expect(ring.byId(victim.id)).toBeUndefined();
    // a service key may revoke, a driver may not
    const phone = makeKey('phone', 'guest', { notAfter: Date.now() + 60_000 });
    ring.add(grantBy(root, phone.credential));
    expect(codeOf(() => ring.add(revokeBy(driver, phone.id)))).toBe('op_signer_not_allowed');
    expect(ring.add(revokeBy(service, phone.id)).status).toBe('added');
    expect(ring.byId(phone.id)?.revoked).toBe(true);
  });

  it('keeps a revocation against any later or replayed grant', () => {
    const root = makeRoot();
    const ring = newKeyring(root);
    const phone = makeKey('phone', 'driver');
    const oldGrant = grantBy(root, phone.credential, NOW_S);
    ring.add(oldGrant);
    ring.add(revokeBy(root, phone.id, NOW_S + 10));
    expect(ring.add(grantBy(root, phone.credential, NOW_S + 20)).status).toBe('added');
    expect(ring.add(oldGrant).status).toBe('duplicate');
    expect(ring.byId(phone.id)?.revoked).toBe(true);
    expect(ring.activeRole(phone.id)).toBeUndefined();
  });

  it('reaches the same state whatever order a set of operations arrives in', () => {
    const root = makeRoot();
    const owner2 = makeKey('signer', 'owner');
    const a = makeKey('phone', 'driver');
    const b = makeKey('phone', 'guest', { notAfter: Date.UTC(2030, 0, 1) });
    const ops = [
      grantBy(root, owner2.credential),
      grantBy(owner2, a.credential),
      grantBy(owner2, b.credential),
      revokeBy(root, b.id, NOW_S + 5),
      grantBy(root, a.credential, NOW_S + 9),
    ];
    const digests = new Set<string>();
    const states = new Set<string>();
    const random = seededRandom();
    for (let i = 0; i < 20; i++) {
      const shuffled = random.shuffle(ops);
      const ring = newKeyring(root);
      const result = ring.merge(shuffled);
      expect(result.rejected).toEqual([]);
      expect(result.added).toHaveLength(ops.length);
      digests.add(ring.digest());
      states.add(
        JSON.stringify(
          ring
            .list()
            .map((s) => [s.credential.id, s.revoked])
            .sort(),
        ),
      );
    }
    expect(digests.size).toBe(1);
    expect(states.size).toBe(1);
  });

  it('retires what a revoked owner granted (cascade) but not what the root granted', () => {
    const root = makeRoot();
    const ring = newKeyring(root);
    const owner2 = makeKey('signer', 'owner');
    const viaOwner2 = makeKey('phone', 'driver');
    const viaRoot = makeKey('phone', 'driver');
    ring.merge([
      grantBy(root, owner2.credential),
      grantBy(owner2, viaOwner2.credential),
      grantBy(root, viaRoot.credential),
    ]);
    expect(ring.activeRole(viaOwner2.id)).toBe('driver');
    ring.add(revokeBy(root, owner2.id));
    expect(ring.byId(viaOwner2.id)?.revoked).toBe(true);
    expect(ring.activeRole(viaRoot.id)).toBe('driver');
    // a revoked owner's new grants change nothing
    const late = makeKey('phone', 'owner');
    ring.add(grantBy(owner2, late.credential));
    expect(ring.activeRole(late.id)).toBeUndefined();
  });

  it('rejects forged, foreign and malformed operations and leaves state intact', () => {
    const root = makeRoot();
    const ring = newKeyring(root);
    const phone = makeKey('phone', 'driver');
    ring.add(grantBy(root, phone.credential));
    const before = ring.digest();
    const stranger = makeKey('signer', 'owner');
    const target = makeKey('phone', 'owner');
    expect(codeOf(() => ring.add(grantBy(stranger, target.credential)))).toBe('op_unknown_signer');
    expect(codeOf(() => ring.add(grantBy(root, target.credential, NOW_S, 'OTHER-VEHICLE')))).toBe(
      'op_wrong_vehicle',
    );
    // payload swapped under a valid signature
    const [h, , s] = grantBy(root, target.credential).split('.');
    const evil = b64url(
      Buffer.from(
        JSON.stringify({
          v: 1,
          op: 'grant',
          id: newOpId(),
          vid: VID,
          iat: NOW_S,
          cred: { ...target.credential, role: 'owner', options: undefined },
        }),
      ),
    );
    expect(codeOf(() => ring.add(`${h}.${evil}.${s}`))).toBe('op_bad_signature');
    // an id that does not match the key
    const mismatched = { ...target.credential, id: phone.id };
    expect(codeOf(() => ring.add(grantBy(root, mismatched)))).toBe('op_malformed');
    expect(codeOf(() => ring.add(revokeBy(root, ring.rootId)))).toBe('op_root_irrevocable');
    expect(codeOf(() => ring.add('not a jws'))).toBe('op_malformed');
    expect(codeOf(() => ring.add(signJws({ v: 1, op: 'grant' }, root.privateKey, root.id)))).toBe(
      'op_malformed',
    );
    // guests must be bounded in time
    const guest = makeKey('phone', 'guest');
    expect(codeOf(() => ring.add(grantBy(root, guest.credential)))).toBe('op_malformed');
    expect(ring.digest()).toBe(before);
  });

  it('merges a set whose grants arrive before their signer’s own grant', () => {
    const root = makeRoot();
    const owner2 = makeKey('signer', 'owner', {}, 'Ed25519');
    const phone = makeKey('phone', 'driver');
    const ring = newKeyring(root);
    const result = ring.merge([grantBy(owner2, phone.credential), grantBy(root, owner2.credential)]);
    expect(result.rejected).toEqual([]);
    expect(ring.activeRole(phone.id)).toBe('driver');
  });

  it('indexes NFC credentials by UID hash', () => {
    const root = makeRoot();
    const ring = newKeyring(root);
    const tag = makeUidCredential('uid', 'a'.repeat(32), 'driver', { options: { insecureUid: true } });
    ring.add(grantBy(root, tag));
    expect(ring.byUidHash('a'.repeat(32)).map((s) => s.credential.id)).toEqual([tag.id]);
    expect(ring.byUidHash('b'.repeat(32))).toEqual([]);
  });

  it('loads trusted stored operations to the same state without re-verifying', () => {
    const root = makeRoot();
    const ring = newKeyring(root);
    const phone = makeKey('phone', 'driver');
    ring.add(grantBy(root, phone.credential));
    ring.add(revokeBy(root, phone.id));
    const again = newKeyring(root);
    again.loadTrusted([...ring.storedOps()].map((s) => decodeStoredOp(s.jws, s.signer)));
    expect(again.digest()).toBe(ring.digest());
    expect(again.byId(phone.id)?.revoked).toBe(true);
  });

  it('accepts a vehicle-signed enrollment only with a valid owner proof over its hash', () => {
    const root = makeRoot();
    const vehicle = makeKey('signer', 'owner');
    const ownerFido = makeKey('phone', 'owner');
    const rootKey = root.credential.publicKey;
    const vehicleKey = vehicle.credential.publicKey;
    if (!rootKey || !vehicleKey) throw new Error('keys');
    const seen: Uint8Array[] = [];
    const ring = new Keyring({
      vehicleId: VID,
      rootKey,
      vehicleKey,
      authVerifiers: new Map([
        [
          'test',
          (by, hash, proof) => {
            seen.push(hash);
            return by.id === ownerFido.id && proof.hash === b64url(hash);
          },
        ],
      ]),
    });
    ring.add(grantBy(root, ownerFido.credential));
    const card = makeUidCredential('ntag424', 'c'.repeat(32), 'driver');
    const op = {
      v: 1 as const,
      op: 'grant' as const,
      id: newOpId(),
      vid: VID,
      iat: NOW_S,
      cred: { ...card, options: undefined },
    };
    const hash = authRequestHash(op);
    const good = signJws(
      { ...op, auth: { by: ownerFido.id, method: 'test', proof: { hash: b64url(hash) } } },
      vehicle.privateKey,
      vehicle.id,
      KEYRING_OP_TYP,
    );
    const forged = signJws(
      {
        ...op,
        id: newOpId(),
        auth: { by: ownerFido.id, method: 'test', proof: { hash: b64url(sha256('other request')) } },
      },
      vehicle.privateKey,
      vehicle.id,
      KEYRING_OP_TYP,
    );
    expect(codeOf(() => ring.add(forged))).toBe('op_bad_signature');
    expect(ring.add(good).status).toBe('added');
    expect(ring.activeRole(card.id)).toBe('driver');
    expect(seen.length).toBe(2);
  });
});
