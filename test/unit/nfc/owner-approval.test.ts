import { createHash, generateKeyPairSync, sign } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  type AuthProof,
  authRequestHash,
  type GrantOp,
  KEYRING_OP_TYP,
  Keyring,
} from '../../../src/access/keyring.js';
import { Agent, type AuditSink, type LockControl } from '../../../src/agent/agent.js';
import { EnrollmentDesk } from '../../../src/ble/enrollment.js';
import { BLE_AUTH_VERIFIERS } from '../../../src/ble/protocol/enroll.js';
import { MonotonicFloorClock } from '../../../src/core/clock.js';
import { silentLogger } from '../../../src/core/logger.js';
import type { Credential, LockState } from '../../../src/core/types.js';
import { b64url, fromB64url } from '../../../src/crypto/encoding.js';
import { parseJws, signJws } from '../../../src/crypto/jws.js';
import {
  FIDO_APPROVAL_AUTH_METHOD,
  fidoApprovalAuthProof,
  fidoApprovalChallenge,
  verifyFidoApprovalAuth,
} from '../../../src/nfc/approve-auth.js';
import {
  CARD_ENROLL_TYP,
  fidoAuthorisationChallenge,
  NFC_AUTH_VERIFIERS,
} from '../../../src/nfc/enroll-auth.js';
import { OwnerFidoApproval } from '../../../src/nfc/owner-approval.js';
import type { Pn532Target } from '../../../src/nfc/pn532/driver.js';
import { type NfcDriver, NfcReader, type TapOutcome } from '../../../src/nfc/reader.js';
import { fidoAssert } from '../../../src/nfc/tap.js';
import { authenticationSignedBytes, enrollmentChallenge, vehicleAppParam } from '../../../src/nfc/u2f.js';
import { SimulatedFidoU2fKey } from '../../../src/sim/cards/fido-u2f.js';
import { grantBy, makeKey, makeRoot, revokeBy, VID } from '../../helpers/keyring-fixtures.js';
import { enrolFido, sessionOver } from './nfc-fixtures.js';

/**
 * Approval of a pending phone enrollment by an owner FIDO key tapped at the reader: the pure
 * proof and its keyring verifier, then the whole flow through the NFC reader (simulated keys in
 * the field), the enrollment desk and the agent's decision path.
 */

const T0 = Date.UTC(2027, 0, 1);
const VERIFIERS = new Map([...BLE_AUTH_VERIFIERS, ...NFC_AUTH_VERIFIERS]);

/** A FIDO credential whose private key the test holds, to sign assertions it could not get a key to sign. */
function handMadeFido(role: Credential['role'] = 'owner') {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = publicKey.export({ format: 'jwk' });
  const credential: Credential = {
    id: `fido:test-${b64url(createHash('sha256').update(JSON.stringify(jwk)).digest().subarray(0, 9))}`,
    kind: 'fido',
    role,
    publicKey: { kty: 'EC', crv: 'P-256', x: String(jwk.x), y: String(jwk.y) },
    keyHandle: b64url(new Uint8Array(32)),
    options: {},
  };
  const assert = (challenge: Uint8Array, flags = 0x01, counter = 7, vehicleId = VID) => ({
    flags,
    counter,
    signature: new Uint8Array(
      sign(
        'sha256',
        authenticationSignedBytes(vehicleAppParam(vehicleId), flags, counter, challenge),
        privateKey,
      ),
    ),
  });
  return { credential, assert };
}

function grantOp(credential: Credential): GrantOp {
  return {
    v: 1,
    op: 'grant',
    id: 'op-approval-test-0001',
    vid: VID,
    iat: Math.floor(T0 / 1000),
    cred: {
      id: credential.id,
      kind: credential.kind,
      role: credential.role,
      publicKey: credential.publicKey,
    },
  } as GrantOp;
}

describe('owner FIDO approval proof (pure)', () => {
  const owner = handMadeFido('owner');
  const phone = makeKey('phone', 'driver');
  const op = grantOp(phone.credential);
  const hash = authRequestHash(op);

  it('verifies an owner key that signed the approval challenge of exactly this grant', () => {
    const auth = fidoApprovalAuthProof(owner.credential.id, VID, owner.assert(fidoApprovalChallenge(hash)));
    expect(auth.method).toBe(FIDO_APPROVAL_AUTH_METHOD);
    expect(verifyFidoApprovalAuth(owner.credential, hash, auth.proof)).toBe(true);
  });

  it('has the documented challenge derivation (the vector in docs/keyring.md)', () => {
    const requestHash = new Uint8Array(32).map((_, i) => i);
    expect(Buffer.from(fidoApprovalChallenge(requestHash)).toString('hex')).toBe(
      'f9c585d5c484c7ce105786cfac188648a9b294ac846c430adbfe70ffd8c7dc67',
    );
  });

  it('refuses a signature over another domain, a card-enrollment challenge or an unlock challenge', () => {
    const otherDomain = createHash('sha256').update('vehicle-agent/u2f-other/v1\0').update(hash).digest();
    const cardRequest = {
      v: 1 as const,
      typ: CARD_ENROLL_TYP as typeof CARD_ENROLL_TYP,
      vid: VID,
      nonce: b64url(new Uint8Array(16)),
      iat: 1,
      exp: 2,
      kind: 'fido' as const,
      role: 'driver' as const,
    };
    for (const challenge of [
      new Uint8Array(otherDomain),
      fidoAuthorisationChallenge(cardRequest),
      enrollmentChallenge(hash),
      hash,
    ]) {
      const auth = fidoApprovalAuthProof(owner.credential.id, VID, owner.assert(challenge));
      expect(verifyFidoApprovalAuth(owner.credential, hash, auth.proof)).toBe(false);
    }
  });

  it('refuses an assertion without user presence, or made for another vehicle', () => {
    const challenge = fidoApprovalChallenge(hash);
    const noPresence = fidoApprovalAuthProof(owner.credential.id, VID, owner.assert(challenge, 0x00));
    expect(verifyFidoApprovalAuth(owner.credential, hash, noPresence.proof)).toBe(false);
    const elsewhere = owner.assert(challenge, 0x01, 7, 'VIN-OTHER');
    expect(
      verifyFidoApprovalAuth(owner.credential, hash, fidoApprovalAuthProof('x', VID, elsewhere).proof),
    ).toBe(false);
  });

  it('refuses an authoriser that is not a FIDO key, and a proof with a tampered field', () => {
    const auth = fidoApprovalAuthProof(owner.credential.id, VID, owner.assert(fidoApprovalChallenge(hash)));
    expect(verifyFidoApprovalAuth(phone.credential, hash, auth.proof)).toBe(false);
    const proof = auth.proof as Record<string, unknown>;
    for (const tampered of [
      { ...proof, counter: 8 },
      { ...proof, flags: 0x05 },
      { ...proof, vid: 'VIN-OTHER' },
      { ...proof, v: 2 },
      { ...proof, sig: 'not base64url!' },
      { ...proof, counter: -1 },
    ])
      expect(verifyFidoApprovalAuth(owner.credential, hash, tampered)).toBe(false);
  });

  it('refuses the proof on a grant with any field changed (its hash is what was signed)', () => {
    const auth = fidoApprovalAuthProof(owner.credential.id, VID, owner.assert(fidoApprovalChallenge(hash)));
    for (const changed of [
      { ...op, cred: { ...op.cred, role: 'owner' as const } },
      { ...op, iat: op.iat + 1 },
      { ...op, id: 'op-approval-test-0002' },
    ])
      expect(verifyFidoApprovalAuth(owner.credential, authRequestHash(changed), auth.proof)).toBe(false);
  });
});

class RecordingLock implements LockControl {
  current: LockState = 'locked';
  readonly actions: string[] = [];
  state(): LockState {
    return this.current;
  }
  async unlock(cause: string): Promise<LockState> {
    this.actions.push(`unlock ${cause}`);
    this.current = 'unlocked';
    return this.current;
  }
  async lock(cause: string): Promise<LockState> {
    this.actions.push(`lock ${cause}`);
    this.current = 'locked';
    return this.current;
  }
  async retract(cause: string): Promise<LockState> {
    this.actions.push(`retract ${cause}`);
    this.current = 'locked';
    return this.current;
  }
}

/** A PN532 stand-in: each tap puts one simulated card in the field. */
class FieldDriver extends EventEmitter<{ target: [Pn532Target] }> implements NfcDriver {
  private next = 1;
  async start(): Promise<void> {}
  async stop(): Promise<void> {}
  health() {
    return { state: 'ok' as const, since: T0 };
  }
  present(card: SimulatedFidoU2fKey): void {
    card.reset();
    this.emit('target', {
      id: this.next++,
      uid: card.uid,
      atqa: new Uint8Array([0x00, 0x44]),
      sak: 0x20,
      kind: 'iso14443-4',
      active: true,
      exchangeApdu: async (apdu: Uint8Array) => card.transceive(apdu).response,
      release: async () => {},
    });
  }
}

describe('owner FIDO approval at the reader (flow)', () => {
  const root = makeRoot();
  const vehicle = makeKey('signer', 'owner');
  const ownerKey = new SimulatedFidoU2fKey({ label: 'owner' });
  const driverKey = new SimulatedFidoU2fKey({ label: 'driver' });
  const revokedKey = new SimulatedFidoU2fKey({ label: 'revoked-owner' });
  const strangerKey = new SimulatedFidoU2fKey({ label: 'stranger' });
  const WINDOW_MS = 30_000;
  let time: { wall: number; mono: number };
  let keyring: Keyring;
  let agent: Agent;
  let desk: EnrollmentDesk;
  let approval: OwnerFidoApproval;
  let reader: NfcReader;
  let driver: FieldDriver;
  let lock: RecordingLock;
  let events: Record<string, unknown>[];
  let counters: Map<string, number>;
  let ids: { owner: string; driver: string; revoked: string };
  let newPhone: ReturnType<typeof makeKey>;

  const advance = (ms: number): void => {
    time.wall += ms;
    time.mono += ms;
  };

  beforeEach(async () => {
    time = { wall: T0, mono: 1000 };
    const clock = new MonotonicFloorClock(0, { wall: () => time.wall, monotonic: () => time.mono });
    const rootKey = root.credential.publicKey;
    const vehicleKey = vehicle.credential.publicKey;
    if (!rootKey || !vehicleKey) throw new Error('keys');
    keyring = new Keyring({ vehicleId: VID, rootKey, vehicleKey, authVerifiers: VERIFIERS });
    const owner = await enrolFido(ownerKey, VID, 'owner');
    const driverFido = await enrolFido(driverKey, VID, 'driver');
    const revoked = await enrolFido(revokedKey, VID, 'owner');
    ids = { owner: owner.id, driver: driverFido.id, revoked: revoked.id };
    const merged = keyring.merge([
      ...[owner, driverFido, revoked].map((c) => grantBy(root, c)),
      revokeBy(root, revoked.id),
    ]);
    expect(merged.rejected).toEqual([]);
    events = [];
    const audit: AuditSink = {
      append: async (e) => {
        events.push({ ...e });
        return e;
      },
    };
    counters = new Map();
    lock = new RecordingLock();
    agent = new Agent({
      vehicleId: VID,
      keyring,
      keyringStore: { persist: async () => {} },
      counters: {
        get: (id) => counters.get(id),
        stage: async (id, v) => {
          counters.set(id, v);
          return { durable: Promise.resolve() };
        },
      },
      clock,
      audit,
      lock,
      readers: [],
      policy: { rateLimit: { maxDenials: 50, windowMs: 60_000, cooldownMs: 60_000 }, answerDeadlineMs: {} },
      log: silentLogger,
      signAsVehicle: () => new Uint8Array(64),
    });
    desk = new EnrollmentDesk({
      vehicleId: VID,
      clock,
      keyring,
      signOp: (op) => signJws(op, vehicle.privateKey, vehicle.id, KEYRING_OP_TYP),
      addOps: (jws) => agent.addKeyringOps(jws, 'enroll.ble'),
      audit: (event) => agent.audit(event),
      log: silentLogger,
      windowMs: 120_000,
      maxWindowMs: 600_000,
    });
    approval = new OwnerFidoApproval({
      vehicleId: VID,
      clock,
      keyring,
      counters: {
        get: (id) => counters.get(id),
        set: async (id, v) => {
          counters.set(id, v);
        },
      },
      desk,
      audit: (event) => agent.audit(event),
      log: silentLogger,
      windowMs: WINDOW_MS,
    });
    driver = new FieldDriver();
    const fidoCredentials = () => keyring.list().filter((s) => s.credential.kind === 'fido');
    reader = new NfcReader({
      id: 'nfc0',
      driver,
      fidoCredentials,
      siteKey: async () => undefined,
      maxProbes: 8,
      answerTimeoutMs: 1000,
      apduTimeoutMs: 1000,
      approval,
    });
    await reader.start(agent.readerContext(silentLogger));
    newPhone = makeKey('phone', 'driver');
  });

  afterEach(async () => {
    approval.close();
    desk.close();
    await reader.stop();
  });

  const tap = (card: SimulatedFidoU2fKey): Promise<TapOutcome> => {
    const outcome = new Promise<TapOutcome>((resolve) => reader.once('tap', resolve));
    driver.present(card);
    return outcome;
  };
  const present = () =>
    agent.present({
      reader: 'ble-p',
      kind: 'phone',
      credentialId: keyring.byId(newPhone.id) === undefined ? undefined : newPhone.id,
      subject: newPhone.id,
      intent: 'unlock',
      explicitIntent: true,
      proof: 'valid',
    });
  const audited = async (type: string) => {
    await agent.flush();
    return events.filter((e) => e.type === type);
  };

  it('armed: the owner key tapped approves; the grant carries its proof, verifies anywhere, and the new key unlocks', async () => {
    desk.open(newPhone.credential);
    expect(approval.arm()).toMatchObject({ state: 'armed', credentialId: newPhone.id });
    const outcome = await tap(ownerKey);
    expect(outcome).toMatchObject({
      type: 'approval',
      ok: true,
      view: { state: 'approved', approvedBy: ids.owner },
    });
    expect(lock.actions).toEqual([]);
    expect(desk.status()).toMatchObject({
      state: 'completed',
      approvedBy: ids.owner,
      approvedWith: 'owner-fido',
    });
    expect(counters.get(ids.owner)).toBe(ownerKey.counter);
    expect(await audited('enroll.approved')).toEqual([
      expect.objectContaining({ by: ids.owner, method: 'owner-fido', credentialId: newPhone.id }),
    ]);
    expect(await present()).toMatchObject({ granted: true });
    // The grant as stored: vehicle-signed, with the owner's U2F assertion; a fresh keyring takes it.
    const ops = await keyring.opTexts();
    const stored = ops.find((jws) => (parseJws(jws).payload as unknown as GrantOp).cred?.id === newPhone.id);
    expect(stored).toBeDefined();
    const payload = parseJws(stored ?? '').payload as unknown as GrantOp & { auth: AuthProof };
    expect(payload.auth).toMatchObject({ by: ids.owner, method: FIDO_APPROVAL_AUTH_METHOD });
    const rootKey = root.credential.publicKey;
    const vehicleKey = vehicle.credential.publicKey;
    if (!rootKey || !vehicleKey) throw new Error('keys');
    const fresh = new Keyring({ vehicleId: VID, rootKey, vehicleKey, authVerifiers: VERIFIERS });
    expect(fresh.merge(ops).rejected).toEqual([]);
    expect(fresh.activeRole(newPhone.id)).toBe('driver');
    const blind = new Keyring({ vehicleId: VID, rootKey, vehicleKey, authVerifiers: BLE_AUTH_VERIFIERS });
    expect(blind.merge(ops).rejected.map((r) => r.code)).toEqual(['op_malformed']);
  });

  it('not armed: an owner tap while a request is pending unlocks and approves nothing', async () => {
    desk.open(newPhone.credential);
    const outcome = await tap(ownerKey);
    expect(outcome).toMatchObject({ type: 'decision', decision: { granted: true } });
    expect(lock.actions).toHaveLength(1);
    expect(desk.status()).toMatchObject({ state: 'pending' });
    expect(keyring.byId(newPhone.id)).toBeUndefined();
    expect(await audited('enroll.approved')).toEqual([]);
  });

  it.each([
    ['a driver key', () => driverKey, 'role_not_allowed'],
    ['a revoked owner key', () => revokedKey, 'revoked'],
    ['an unknown key', () => strangerKey, 'unknown_credential'],
  ])(
    '%s is refused with its code and audited; nothing granted, nothing opens, the reader stays armed',
    async (_, card, code) => {
      desk.open(newPhone.credential);
      approval.arm();
      const outcome = await tap(card());
      expect(outcome).toMatchObject({ type: 'approval', ok: false, code, view: { state: 'armed' } });
      expect(lock.actions).toEqual([]);
      expect(keyring.byId(newPhone.id)).toBeUndefined();
      expect(desk.status()).toMatchObject({ state: 'pending' });
      expect(await audited('enroll.refused')).toEqual([
        expect.objectContaining({ method: 'owner-fido', code, credentialId: newPhone.id }),
      ]);
      expect(approval.status()).toMatchObject({ state: 'armed', lastRefusal: { code } });
      // The right key after a wrong one still approves.
      expect(await tap(ownerKey)).toMatchObject({ type: 'approval', ok: true });
      expect(keyring.activeRole(newPhone.id)).toBe('driver');
    },
  );

  it('refuses an owner key whose counter went backwards (a copy) with clone_suspected', async () => {
    desk.open(newPhone.credential);
    approval.arm();
    counters.set(ids.owner, ownerKey.counter + 100);
    expect(await tap(ownerKey)).toMatchObject({ type: 'approval', ok: false, code: 'clone_suspected' });
    expect(keyring.byId(newPhone.id)).toBeUndefined();
  });

  it('the arming ends with its window: the next owner tap unlocks and the request stays pending', async () => {
    desk.open(newPhone.credential);
    expect(approval.arm().expiresAt).toBe(new Date(T0 + WINDOW_MS).toISOString());
    advance(WINDOW_MS);
    expect(approval.status()).toMatchObject({ state: 'expired' });
    expect(await tap(ownerKey)).toMatchObject({ type: 'decision', decision: { granted: true } });
    expect(desk.status()).toMatchObject({ state: 'pending' });
    expect(await audited('enroll.approval.ended')).toEqual([expect.objectContaining({ state: 'expired' })]);
  });

  it('arms no longer than the request has left, and ends when the request is cancelled', async () => {
    desk.open(newPhone.credential, 10_000);
    expect(approval.arm().expiresAt).toBe(new Date(T0 + 10_000).toISOString());
    desk.cancel();
    expect(approval.status()).toMatchObject({ state: 'closed' });
    expect(await tap(ownerKey)).toMatchObject({ type: 'decision' });
  });

  it('refuses to arm with nothing pending (enrollment_closed), and disarms on cancel', async () => {
    expect(() => approval.arm()).toThrow(expect.objectContaining({ code: 'enrollment_closed' }));
    desk.open(newPhone.credential);
    approval.arm();
    expect(approval.cancel()).toMatchObject({ state: 'cancelled' });
    expect(await tap(ownerKey)).toMatchObject({ type: 'decision', decision: { granted: true } });
    expect(keyring.byId(newPhone.id)).toBeUndefined();
  });

  it('a signature taken for another request does not approve this one (bad_proof)', async () => {
    desk.open(newPhone.credential);
    approval.arm();
    const first = approval.challenge();
    const handle = keyring.byId(ids.owner)?.credential.keyHandle;
    if (!first || !handle) throw new Error('armed');
    const answer = await fidoAssert(
      sessionOver(ownerKey),
      { answerTimeoutMs: 1000, apduTimeoutMs: 1000, now: () => performance.now() },
      { appParam: vehicleAppParam(VID), challenge: first, keyHandle: fromB64url(handle), select: true },
    );
    desk.cancel();
    const other = makeKey('phone', 'driver');
    desk.open(other.credential);
    approval.arm();
    expect(await approval.approve(ids.owner, answer.assertion)).toMatchObject({
      ok: false,
      code: 'bad_proof',
    });
    expect(keyring.byId(other.id)).toBeUndefined();
  });
});
