import { p256 } from '@noble/curves/nist.js';
import { afterEach, describe, expect, it } from 'vitest';
import { KEYRING_OP_TYP, Keyring } from '../../../src/access/keyring.js';
import { EnrollmentDesk } from '../../../src/ble/enrollment.js';
import {
  BLE_AUTH_VERIFIERS,
  decodeEnrollMessage,
  type EnrollApproval,
  type EnrollRequest,
  encodeEnrollApproval,
  encodeEnrollRequest,
  enrollApprovalSignedMessage,
  enrollRequestSignedMessage,
} from '../../../src/ble/protocol/enroll.js';
import type { Clock } from '../../../src/core/clock.js';
import { silentLogger } from '../../../src/core/logger.js';
import type { Credential } from '../../../src/core/types.js';
import { fromB64url, fromHex } from '../../../src/crypto/encoding.js';
import { signJws } from '../../../src/crypto/jws.js';
import { grantBy, makeKey, makeRoot, revokeBy, type TestKey, VID } from '../../helpers/keyring-fixtures.js';

/** The enrollment desk: a bounded request that only an owner phone key's signature over its hash closes. */

class FakeClock implements Clock {
  wall = Date.UTC(2027, 0, 1);
  mono = 1000;
  now(): number {
    return this.wall;
  }
  monotonic(): number {
    return this.mono;
  }
  advance(ms: number): void {
    this.wall += ms;
    this.mono += ms;
  }
}

const CHALLENGE = Uint8Array.from({ length: 32 }, (_, i) => 100 + i);
const WINDOW = 60_000;

/** A key's 32-byte secret, so the approval is signed with noble as a phone would. */
function secretOf(key: TestKey): Uint8Array {
  const { d } = key.privateKey.export({ format: 'jwk' });
  return fromB64url(String(d));
}

function approvalBy(
  key: TestKey,
  requestHash: Uint8Array,
  challenge = CHALLENGE,
  vehicleId = VID,
): EnrollApproval {
  const fields = { vehicleId, challenge, requestHash, keyId: key.id };
  const signature = p256.sign(enrollApprovalSignedMessage(fields), secretOf(key));
  const decoded = decodeEnrollMessage(encodeEnrollApproval(fields, signature));
  if (decoded.type !== 'enroll_approval') throw new Error('not an approval');
  return decoded;
}

function requestBy(key: TestKey, challenge = CHALLENGE, vehicleId = VID): EnrollRequest {
  const fields = { vehicleId, challenge, keyId: key.id };
  const signature = p256.sign(enrollRequestSignedMessage(fields), secretOf(key));
  const decoded = decodeEnrollMessage(encodeEnrollRequest(fields, signature));
  if (decoded.type !== 'enroll_request') throw new Error('not a request');
  return decoded;
}

let desks: EnrollmentDesk[] = [];
afterEach(() => {
  for (const d of desks) d.close();
  desks = [];
});

function setup() {
  const root = makeRoot();
  const vehicle = makeKey('signer', 'owner');
  const rootKey = root.credential.publicKey;
  const vehicleKey = vehicle.credential.publicKey;
  if (!rootKey || !vehicleKey) throw new Error('keys');
  const keyring = new Keyring({ vehicleId: VID, rootKey, vehicleKey, authVerifiers: BLE_AUTH_VERIFIERS });
  const owner = makeKey('phone', 'owner');
  const driver = makeKey('phone', 'driver');
  const revokedOwner = makeKey('phone', 'owner');
  const lapsedOwner = makeKey('phone', 'owner', { notAfter: Date.UTC(2026, 0, 1) });
  const fresh = makeKey('phone', 'driver');
  const result = keyring.merge([
    grantBy(root, owner.credential),
    grantBy(root, driver.credential),
    grantBy(root, revokedOwner.credential),
    revokeBy(root, revokedOwner.id),
    grantBy(root, lapsedOwner.credential),
  ]);
  expect(result.rejected).toEqual([]);
  const clock = new FakeClock();
  const audit: { type: string; [key: string]: unknown }[] = [];
  const desk = new EnrollmentDesk({
    vehicleId: VID,
    clock,
    keyring,
    signOp: (op) => signJws(op, vehicle.privateKey, vehicle.id, KEYRING_OP_TYP),
    addOps: async (jws) => keyring.merge(jws),
    audit: (event) => audit.push({ ...event }),
    log: silentLogger,
    windowMs: WINDOW,
    maxWindowMs: 600_000,
  });
  desks.push(desk);
  return { keyring, desk, clock, audit, owner, driver, revokedOwner, lapsedOwner, fresh };
}

function hashOf(desk: EnrollmentDesk): Uint8Array {
  const view = desk.status();
  if (view === undefined) throw new Error('no request');
  return fromHex(view.requestHash);
}

describe('enrollment at the vehicle', () => {
  it('writes a vehicle-signed grant once an owner phone approves the open request', async () => {
    const { keyring, desk, audit, owner, fresh } = setup();
    const view = desk.open(fresh.credential);
    expect(view).toMatchObject({ state: 'pending', credentialId: fresh.id, role: 'driver', kind: 'phone' });
    const offer = desk.offer(CHALLENGE);
    expect(offer).toMatchObject({ vehicleId: VID, credentialId: fresh.id, role: 'driver', passive: false });
    expect(keyring.byId(fresh.id)).toBeUndefined();

    const outcome = await desk.approve(approvalBy(owner, hashOf(desk)), CHALLENGE);
    expect(outcome).toEqual({ approved: true, credentialId: fresh.id, by: owner.id });
    expect(keyring.activeRole(fresh.id)).toBe('driver');
    const stored = [...keyring.storedOps()].find((s) => s.op.op === 'grant' && s.op.cred.id === fresh.id);
    expect(stored?.op.auth).toMatchObject({ by: owner.id, method: 'ble-enroll-v1' });
    expect(stored?.signer).toBe(owner.id);
    expect(desk.status()).toMatchObject({ state: 'completed', approvedBy: owner.id });
    expect(audit.map((e) => e.type)).toEqual(['enroll.open', 'enroll.approved']);
    // The request is spent: the same approval again finds nothing open.
    expect(await desk.approve(approvalBy(owner, hashOf(desk)), CHALLENGE)).toMatchObject({
      approved: false,
      code: 'enrollment_closed',
    });
  });

  it('is not closed by anyone but an enrolled, valid owner phone signing this request in this exchange', async () => {
    const { keyring, desk, owner, driver, revokedOwner, lapsedOwner, fresh } = setup();
    desk.open(fresh.credential);
    const hash = hashOf(desk);
    const stranger = makeKey('phone', 'owner');
    const before = keyring.size;
    const cases: [EnrollApproval, Uint8Array, string][] = [
      [approvalBy(driver, hash), CHALLENGE, 'role_not_allowed'],
      [approvalBy(stranger, hash), CHALLENGE, 'unknown_credential'],
      [approvalBy(revokedOwner, hash), CHALLENGE, 'revoked'],
      [approvalBy(lapsedOwner, hash), CHALLENGE, 'expired'],
      [approvalBy(owner, new Uint8Array(32)), CHALLENGE, 'bad_proof'],
      [approvalBy(owner, hash), new Uint8Array(32), 'bad_proof'],
      [approvalBy(owner, hash, CHALLENGE, 'OTHER-VEHICLE'), CHALLENGE, 'wrong_vehicle'],
      [{ ...approvalBy(owner, hash), signature: approvalBy(driver, hash).signature }, CHALLENGE, 'bad_proof'],
    ];
    for (const [approval, challenge, code] of cases) {
      expect(await desk.approve(approval, challenge)).toMatchObject({ approved: false, code });
    }
    expect(keyring.size).toBe(before);
    expect(desk.status()?.state).toBe('pending');
    expect(await desk.approve(approvalBy(owner, hash), CHALLENGE)).toMatchObject({ approved: true });
  });

  it('shows its offer only to a key that proved an enrolled, valid owner key in this exchange', async () => {
    const { desk, audit, owner, driver, revokedOwner, lapsedOwner, fresh } = setup();
    desk.open(fresh.credential);
    const stranger = makeKey('phone', 'owner');
    const forged = { ...requestBy(owner), signature: requestBy(driver).signature };
    const cases: [EnrollRequest, Uint8Array, string, boolean][] = [
      // request, session challenge, code, audited (only once the signature verified)
      [requestBy(stranger), CHALLENGE, 'unknown_credential', false],
      [forged, CHALLENGE, 'bad_proof', false],
      [requestBy(owner), new Uint8Array(32), 'bad_proof', false],
      [requestBy(owner, CHALLENGE, 'OTHER-VEHICLE'), CHALLENGE, 'wrong_vehicle', false],
      [requestBy(revokedOwner), CHALLENGE, 'revoked', true],
      [requestBy(lapsedOwner), CHALLENGE, 'expired', true],
      [requestBy(driver), CHALLENGE, 'role_not_allowed', true],
    ];
    for (const [request, challenge, code, audited] of cases) {
      const before = audit.length;
      expect(desk.authorise(request, challenge)).toMatchObject({ allowed: false, code });
      expect(audit.length - before).toBe(audited ? 1 : 0);
    }
    expect(audit.filter((e) => e.type === 'enroll.refused').map((e) => e.step)).toEqual([
      'request',
      'request',
      'request',
    ]);
    expect(desk.authorise(requestBy(owner), CHALLENGE)).toEqual({ allowed: true, by: owner.id });
    expect(desk.windowLeftMs()).toBe(WINDOW);
    // The approval must come from the key that asked.
    const hash = hashOf(desk);
    const other = makeKey('phone', 'owner');
    expect(await desk.approve(approvalBy(owner, hash), CHALLENGE, other.id)).toMatchObject({
      approved: false,
      code: 'bad_proof',
    });
    expect(await desk.approve(approvalBy(owner, hash), CHALLENGE, owner.id)).toMatchObject({
      approved: true,
    });
    expect(desk.windowLeftMs()).toBe(0);
  });

  it('expires: after its window no approval closes it, and nothing is written', async () => {
    const { keyring, desk, clock, audit, owner, fresh } = setup();
    desk.open(fresh.credential, 5000);
    const hash = hashOf(desk);
    clock.advance(4999);
    expect(desk.offer(CHALLENGE)).toBeDefined();
    clock.advance(2);
    expect(desk.offer(CHALLENGE)).toBeUndefined();
    expect(desk.status()?.state).toBe('expired');
    expect(await desk.approve(approvalBy(owner, hash), CHALLENGE)).toMatchObject({
      code: 'enrollment_closed',
    });
    expect(keyring.byId(fresh.id)).toBeUndefined();
    expect(audit.some((e) => e.type === 'enroll.expired')).toBe(true);
  });

  it('holds one request at a time, can be cancelled, and validates what it is asked to enroll', () => {
    const { desk, driver, fresh } = setup();
    desk.open(fresh.credential);
    expect(() => desk.open(makeKey('phone', 'driver').credential)).toThrow(
      expect.objectContaining({ code: 'busy' }),
    );
    expect(desk.cancel()?.state).toBe('cancelled');
    expect(desk.offer(CHALLENGE)).toBeUndefined();
    const guest: Credential = { ...makeKey('phone', 'guest').credential };
    expect(() => desk.open(guest)).toThrow(expect.objectContaining({ code: 'bad_arguments' }));
    expect(() => desk.open(driver.credential)).toThrow(expect.objectContaining({ code: 'bad_arguments' }));
    expect(() => desk.open(fresh.credential, 600_001)).toThrow(
      expect.objectContaining({ code: 'bad_arguments' }),
    );
    const tampered: Credential = { ...fresh.credential, id: 'phone:not-its-id' };
    expect(() => desk.open(tampered)).toThrow(expect.objectContaining({ code: 'bad_arguments' }));
    expect(desk.open(fresh.credential).state).toBe('pending');
  });
});
