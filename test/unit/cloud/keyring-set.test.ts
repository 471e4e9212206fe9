import { describe, expect, it } from 'vitest';
import {
  checkKeyringSet,
  opsDigest,
  parseKeyringSet,
  signKeyringSet,
} from '../../../src/cloud/keyring-set.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  NOW_S,
  newKeyring,
  revokeBy,
  VID,
} from '../../helpers/keyring-fixtures.js';

function rig() {
  const root = makeRoot();
  const ring = newKeyring(root);
  const service = makeKey('signer', 'service');
  const driver = makeKey('signer', 'driver', {}, 'Ed25519');
  ring.add(grantBy(root, service.credential));
  ring.add(grantBy(root, driver.credential));
  const phone = makeKey('phone', 'driver');
  const ops = [grantBy(root, phone.credential), revokeBy(root, phone.id)];
  return { root, ring, service, driver, phone, ops };
}

const ctx = (r: ReturnType<typeof rig>) => ({ vehicleId: VID, keys: r.ring, nowMs: NOW_S * 1000 });

describe('keyring sets', () => {
  it('accepts a set signed by the owner or a service key, with the ops in their order', () => {
    const r = rig();
    for (const signer of [r.root, r.service]) {
      const msg = signKeyringSet(VID, r.ops, signer.privateKey, signer.id, NOW_S);
      expect(checkKeyringSet(msg, ctx(r))).toEqual({ ok: true, ops: r.ops, kid: signer.id, iat: NOW_S });
    }
  });

  it('binds the list: an op added, removed or reordered breaks the manifest', () => {
    const r = rig();
    const msg = JSON.parse(signKeyringSet(VID, r.ops, r.root.privateKey, r.root.id, NOW_S)) as {
      set: string;
      ops: string[];
    };
    for (const ops of [
      [...r.ops].reverse(),
      r.ops.slice(1),
      [...r.ops, grantBy(r.root, makeKey('phone', 'owner').credential)],
    ]) {
      const check = checkKeyringSet(JSON.stringify({ set: msg.set, ops }), ctx(r));
      expect(check).toMatchObject({ ok: false, code: 'jws_malformed' });
    }
    expect(opsDigest(['a', 'b'])).not.toBe(opsDigest(['b', 'a']));
  });

  it.each<[string, () => string, string]>([
    ['not JSON', () => 'nope', 'jws_malformed'],
    ['no set', () => JSON.stringify({ ops: [] }), 'jws_malformed'],
  ])('refuses %s', (_n, build, code) => {
    expect(checkKeyringSet(build(), ctx(rig()))).toMatchObject({ ok: false, code });
  });

  it('refuses another vehicle, an unknown signer, a driver, and a forged signature', () => {
    const r = rig();
    expect(
      checkKeyringSet(signKeyringSet('OTHER-1', r.ops, r.root.privateKey, r.root.id, NOW_S), ctx(r)),
    ).toMatchObject({ code: 'wrong_vehicle' });
    const stranger = makeKey('signer', 'owner');
    expect(
      checkKeyringSet(signKeyringSet(VID, r.ops, stranger.privateKey, stranger.id, NOW_S), ctx(r)),
    ).toMatchObject({
      code: 'unknown_kid',
    });
    expect(
      checkKeyringSet(signKeyringSet(VID, r.ops, r.driver.privateKey, r.driver.id, NOW_S), ctx(r)),
    ).toMatchObject({
      code: 'role_not_allowed',
    });
    expect(
      checkKeyringSet(signKeyringSet(VID, r.ops, stranger.privateKey, r.root.id, NOW_S), ctx(r)),
    ).toMatchObject({
      code: 'bad_signature',
    });
  });

  it('parses a set without knowing the signer (what the cloud CLI does with the vehicle set)', () => {
    const r = rig();
    const parsed = parseKeyringSet(signKeyringSet(VID, r.ops, r.driver.privateKey, r.driver.id, NOW_S));
    expect(parsed.manifest).toMatchObject({ vid: VID, count: 2 });
    expect(parsed.message.ops).toEqual(r.ops);
  });
});
