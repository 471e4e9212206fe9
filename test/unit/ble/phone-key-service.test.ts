import { createPublicKey, sign, verify } from 'node:crypto';
import { p256 } from '@noble/curves/nist.js';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { KEYRING_OP_TYP, Keyring } from '../../../src/access/keyring.js';
import { Agent, type AuditSink, type LockControl } from '../../../src/agent/agent.js';
import { EnrollmentDesk } from '../../../src/ble/enrollment.js';
import type { CentralRef } from '../../../src/ble/peripheral/service-port.js';
import {
  createPhoneKeyService,
  type PhoneKeyService,
  phoneAppOrigins,
} from '../../../src/ble/phone-key-service.js';
import {
  BLE_AUTH_VERIFIERS,
  decodeEnrollMessage,
  encodeEnrollApproval,
  enrollApprovalSignedMessage,
} from '../../../src/ble/protocol/enroll.js';
import {
  decodeChallenge,
  decodeResult,
  encodeAnswer,
  encodeChallenge,
  resultSignedBytes,
} from '../../../src/ble/protocol/mode-p.js';
import { MonotonicFloorClock } from '../../../src/core/clock.js';
import { AgentError } from '../../../src/core/errors.js';
import { silentLogger } from '../../../src/core/logger.js';
import type { Credential, LockState } from '../../../src/core/types.js';
import { b64url, fromB64url, fromHex } from '../../../src/crypto/encoding.js';
import { signJws } from '../../../src/crypto/jws.js';
import { grantBy, makeKey, makeRoot, revokeBy, type TestKey, VID } from '../../helpers/keyring-fixtures.js';
import {
  makePasskey,
  makeWebKey,
  type Passkey,
  passkeyAnswer,
  passkeyEnroll,
  signP1363,
  type WebKey,
  webKeyAnswer,
  webKeyEnroll,
} from './mode-p-client.js';

/**
 * The phone-key service of mode P against the agent's real decision path (Agent.present with a
 * keyring, rate limits, counters and a lock that records what it is told), without D-Bus: the test
 * plays the GATT application, calling read/write/disconnected as bluetoothd's requests would.
 */

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

const ORIGIN = 'http://127.0.0.1:8080';
const WINDOW = 1000;
const T0 = Date.UTC(2027, 0, 1);

function webCredential(key: WebKey, extra: Partial<Credential> = {}): Credential {
  return { id: key.keyId, kind: 'phone', role: 'driver', publicKey: key.jwk, options: {}, ...extra };
}

function passkeyCredential(passkey: Passkey, extra: Partial<Credential> = {}): Credential {
  return {
    id: passkey.id,
    kind: 'passkey',
    role: 'driver',
    publicKey: passkey.jwk,
    keyHandle: b64url(passkey.credentialId),
    rpId: passkey.rpId,
    options: {},
    ...extra,
  };
}

let desks: EnrollmentDesk[] = [];
afterEach(() => {
  for (const d of desks) d.close();
  desks = [];
});

function setup(origins: readonly string[] | (() => readonly string[]) = [ORIGIN]) {
  const time = { wall: T0, mono: 1000 };
  const clock = new MonotonicFloorClock(0, { wall: () => time.wall, monotonic: () => time.mono });
  const advance = (ms: number): void => {
    time.wall += ms;
    time.mono += ms;
  };
  const root = makeRoot();
  const vehicle = makeKey('signer', 'owner');
  const rootKey = root.credential.publicKey;
  const vehicleKey = vehicle.credential.publicKey;
  if (!rootKey || !vehicleKey) throw new Error('keys');
  const keyring = new Keyring({ vehicleId: VID, rootKey, vehicleKey, authVerifiers: BLE_AUTH_VERIFIERS });
  const owner = makeKey('phone', 'owner');
  const driver = makeWebKey();
  const revoked = makeWebKey();
  const expired = makeWebKey();
  const passkey = makePasskey('127.0.0.1');
  const merged = keyring.merge([
    grantBy(root, owner.credential),
    grantBy(root, webCredential(driver)),
    grantBy(root, webCredential(revoked)),
    revokeBy(root, revoked.keyId),
    grantBy(root, webCredential(expired, { notAfter: T0 - 1000 })),
    grantBy(root, passkeyCredential(passkey)),
  ]);
  expect(merged.rejected).toEqual([]);
  const events: Record<string, unknown>[] = [];
  const audit: AuditSink = {
    append: async (e) => {
      events.push({ ...e });
      return e;
    },
  };
  const counters = new Map<string, number>();
  const lock = new RecordingLock();
  const signAsVehicle = (message: Uint8Array) => signP1363(vehicle.privateKey, message);
  const agent = new Agent({
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
    policy: {
      rateLimit: { maxDenials: 3, windowMs: 60_000, cooldownMs: 60_000 },
      answerDeadlineMs: { phone: WINDOW },
    },
    log: silentLogger,
    signAsVehicle,
  });
  const desk = new EnrollmentDesk({
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
  desks.push(desk);
  const vehicleSpki = new Uint8Array(
    createPublicKey(vehicle.privateKey).export({ format: 'der', type: 'spki' }),
  );
  const service = createPhoneKeyService({
    context: agent.readerContext(silentLogger),
    vehicleSpki,
    answerWindowMs: WINDOW,
    slowAnswerWindowMs: 30_000,
    allowedOrigins: origins,
    enrollment: desk,
    audit: (event) => agent.audit(event),
  });
  return {
    agent,
    keyring,
    desk,
    lock,
    events,
    counters,
    advance,
    owner,
    driver,
    revoked,
    expired,
    passkey,
    service,
    vehicle,
    vehicleSpki,
  };
}

let devices = 0;
function central(): CentralRef {
  devices += 1;
  return {
    device: `/org/bluez/hci0/dev_00_00_00_00_00_${devices.toString(16).padStart(2, '0')}`,
    address: 'x',
  };
}

/** Reads a challenge, writes what `build` makes of it, waits for the decision, reads the result. */
async function exchange(
  service: PhoneKeyService,
  peer: CentralRef,
  build: (challenge: Uint8Array) => Uint8Array,
  beforeWrite: () => void = () => {},
) {
  const challenge = await service.read(peer, 'challenge');
  const answer = build(challenge);
  beforeWrite();
  await service.write(peer, 'answer', answer);
  await service.idle();
  const bytes = await service.read(peer, 'result');
  return { challenge, answer, result: decodeResult(bytes) };
}

function vehicleSigned(
  ctx: ReturnType<typeof setup>,
  result: ReturnType<typeof decodeResult>,
  nonce: Uint8Array,
  subject: string | Uint8Array,
): boolean {
  if (result.signature.length === 0) return false;
  expect(result.vehicleSpki).toEqual(ctx.vehicleSpki);
  return verify(
    'sha256',
    resultSignedBytes(nonce, result.outcome, result.code, subject),
    { key: createPublicKey(ctx.vehicle.privateKey), dsaEncoding: 'ieee-p1363' },
    result.signature,
  );
}

function ownerApproves(ctx: ReturnType<typeof setup>, owner: TestKey) {
  const view = ctx.desk.status();
  if (view === undefined) throw new Error('no request');
  const challenge = Uint8Array.from({ length: 32 }, (_, i) => i);
  const fields = { vehicleId: VID, challenge, requestHash: fromHex(view.requestHash), keyId: owner.id };
  const secret = fromB64url(String(owner.privateKey.export({ format: 'jwk' }).d));
  const approval = decodeEnrollMessage(
    encodeEnrollApproval(fields, p256.sign(enrollApprovalSignedMessage(fields), secret)),
  );
  if (approval.type !== 'enroll_approval') throw new Error('not an approval');
  return ctx.desk.approve(approval, challenge);
}

describe('mode P unlock', () => {
  it('an enrolled web key unlocks: the relay is driven and the result is signed by the vehicle key', async () => {
    const ctx = setup();
    const { challenge, result } = await exchange(ctx.service, central(), (c) => webKeyAnswer(ctx.driver, c));
    expect(result).toMatchObject({ outcome: 'granted', code: '' });
    expect(vehicleSigned(ctx, result, decodeChallenge(challenge).nonce, ctx.driver.keyId)).toBe(true);
    expect(ctx.lock.actions).toEqual([expect.stringContaining('unlock')]);
    await ctx.agent.flush();
    expect(ctx.events).toContainEqual(
      expect.objectContaining({
        type: 'access',
        result: 'granted',
        reader: 'ble-p',
        credentialId: ctx.driver.keyId,
      }),
    );
  });

  it('lock intent locks; identify proves the key without touching the relay', async () => {
    const ctx = setup();
    const locked = await exchange(ctx.service, central(), (c) => webKeyAnswer(ctx.driver, c, 'lock'));
    expect(locked.result.outcome).toBe('granted');
    expect(ctx.lock.actions).toEqual([expect.stringContaining('lock')]);
    const { challenge, result } = await exchange(ctx.service, central(), (c) =>
      webKeyAnswer(ctx.driver, c, 'identify'),
    );
    expect(result.outcome).toBe('granted');
    expect(vehicleSigned(ctx, result, decodeChallenge(challenge).nonce, ctx.driver.keyId)).toBe(true);
    expect(ctx.lock.actions).toHaveLength(1);
  });

  it('a replayed answer is refused, on the same connection and on another', async () => {
    const ctx = setup();
    const peer = central();
    const first = await exchange(ctx.service, peer, (c) => webKeyAnswer(ctx.driver, c));
    expect(first.result.outcome).toBe('granted');
    const again = await exchange(ctx.service, peer, () => first.answer);
    expect(again.result).toMatchObject({ outcome: 'denied', code: 'replay', signature: new Uint8Array(0) });
    const elsewhere = await exchange(ctx.service, central(), () => first.answer);
    expect(elsewhere.result).toMatchObject({ outcome: 'denied', code: 'replay' });
    expect(ctx.lock.actions).toHaveLength(1);
  });

  it('an answer after the deadline counted from the challenge read is challenge_expired, and audited', async () => {
    const ctx = setup();
    const { result } = await exchange(
      ctx.service,
      central(),
      (c) => webKeyAnswer(ctx.driver, c),
      () => ctx.advance(WINDOW + 1),
    );
    expect(result).toMatchObject({
      outcome: 'denied',
      code: 'challenge_expired',
      signature: new Uint8Array(0),
    });
    expect(ctx.lock.actions).toEqual([]);
    await ctx.agent.flush();
    expect(ctx.events).toContainEqual(
      expect.objectContaining({
        type: 'access',
        result: 'denied',
        code: 'timeout',
        credentialId: ctx.driver.keyId,
        // The miss is measured: from the read, against the deadline the key was held to.
        answerMs: WINDOW + 1,
        deadlineMs: WINDOW,
        lateMs: 1,
      }),
    );
    // Exactly at the deadline is still on time.
    const onTime = await exchange(
      ctx.service,
      central(),
      (c) => webKeyAnswer(ctx.driver, c),
      () => ctx.advance(WINDOW),
    );
    expect(onTime.result.outcome).toBe('granted');
  });

  it('a signature over a challenge naming another vehicle is refused', async () => {
    const ctx = setup();
    const { result } = await exchange(ctx.service, central(), (c) => {
      const real = decodeChallenge(c);
      const forged = encodeChallenge({ ...real, vehicleId: 'OTHER-VEHICLE' });
      const signedForOther = webKeyAnswer(ctx.driver, forged);
      return signedForOther;
    });
    expect(result).toMatchObject({ outcome: 'denied', code: 'bad_proof', signature: new Uint8Array(0) });
    expect(ctx.lock.actions).toEqual([]);
  });

  it.each([
    ['revoked', 'revoked'],
    ['expired', 'expired'],
  ] as const)('a %s key is refused with its code and gets no signature', async (which, code) => {
    const ctx = setup();
    const { result } = await exchange(ctx.service, central(), (c) => webKeyAnswer(ctx[which], c));
    expect(result).toMatchObject({ outcome: 'denied', code, signature: new Uint8Array(0) });
    expect(result.vehicleSpki).toHaveLength(0);
    expect(ctx.lock.actions).toEqual([]);
  });

  it('an unknown key gets no signed data, whatever it asks (unlock or identify)', async () => {
    const ctx = setup();
    const stranger = makeWebKey();
    for (const intent of ['unlock', 'identify'] as const) {
      const { result } = await exchange(ctx.service, central(), (c) => webKeyAnswer(stranger, c, intent));
      expect(result).toMatchObject({ outcome: 'denied', code: 'unknown_credential' });
      expect(result.signature).toHaveLength(0);
      expect(result.vehicleSpki).toHaveLength(0);
    }
  });

  it('a bad signature naming a real key is bad_proof and unsigned', async () => {
    const ctx = setup();
    const { result } = await exchange(ctx.service, central(), (c) => {
      const good = webKeyAnswer(ctx.driver, c);
      good[good.length - 1] = (good[good.length - 1] ?? 0) ^ 1;
      return good;
    });
    expect(result).toMatchObject({ outcome: 'denied', code: 'bad_proof', signature: new Uint8Array(0) });
  });

  it('answers naming no challenge are no_challenge and never lock the key they name out', async () => {
    const ctx = setup();
    const peer = central();
    for (let i = 0; i < 10; i++) {
      const forged = encodeAnswer({
        intent: 'unlock',
        explicitIntent: true,
        keyId: ctx.driver.keyId,
        nonce: new Uint8Array(32).fill(i),
        signature: new Uint8Array(64),
      });
      await ctx.service.write(peer, 'answer', forged);
      await ctx.service.idle();
      expect(decodeResult(await ctx.service.read(peer, 'result'))).toMatchObject({ code: 'no_challenge' });
    }
    const { result } = await exchange(ctx.service, central(), (c) => webKeyAnswer(ctx.driver, c));
    expect(result.outcome).toBe('granted');
  });

  it('a flood of challenge reads from one central does not stop another central unlocking', async () => {
    const ctx = setup();
    const flooder = central();
    const peer = central();
    const challenge = await ctx.service.read(peer, 'challenge');
    const reads: Promise<Uint8Array>[] = [];
    for (let i = 0; i < 2000; i++) reads.push(ctx.service.read(flooder, 'challenge'));
    await Promise.all(reads);
    await ctx.service.write(peer, 'answer', webKeyAnswer(ctx.driver, challenge));
    for (let i = 0; i < 2000; i++) reads.push(ctx.service.read(flooder, 'challenge'));
    await ctx.service.idle();
    expect(decodeResult(await ctx.service.read(peer, 'result')).outcome).toBe('granted');
    expect(ctx.lock.actions).toHaveLength(1);
  });

  it('malformed writes are coded ATT errors that also set the result; a write while deciding is busy', async () => {
    const ctx = setup();
    const peer = central();
    await expect(ctx.service.write(peer, 'answer', Uint8Array.of(2, 0x22, 1))).rejects.toMatchObject({
      code: 'malformed',
    });
    expect(decodeResult(await ctx.service.read(peer, 'result'))).toMatchObject({
      outcome: 'denied',
      code: 'malformed',
    });
    await expect(ctx.service.write(peer, 'answer', new Uint8Array(513))).rejects.toMatchObject({
      code: 'frame_too_large',
    });
    await expect(ctx.service.write(peer, 'answer', Uint8Array.of(1, 2, 3))).rejects.toBeInstanceOf(
      AgentError,
    );
    const challenge = await ctx.service.read(peer, 'challenge');
    await ctx.service.write(peer, 'answer', webKeyAnswer(ctx.driver, challenge));
    expect(decodeResult(await ctx.service.read(peer, 'result')).outcome).toBe('pending');
    await expect(
      ctx.service.write(peer, 'answer', webKeyAnswer(ctx.driver, challenge)),
    ).rejects.toMatchObject({
      code: 'busy',
    });
    await ctx.service.idle();
    expect(decodeResult(await ctx.service.read(peer, 'result')).outcome).toBe('granted');
  });

  it('notifies the result and forgets a central that disconnected', async () => {
    const ctx = setup();
    const peer = central();
    const notified: string[] = [];
    const off = ctx.service.onNotify((who, _, bytes) =>
      notified.push(`${who.device} ${decodeResult(bytes).outcome}`),
    );
    const challenge = await ctx.service.read(peer, 'challenge');
    await ctx.service.write(peer, 'answer', webKeyAnswer(ctx.driver, challenge));
    await ctx.service.idle();
    await new Promise((resolve) => setImmediate(resolve));
    // Decided within the turn: the result replaced `pending` before its notification was due.
    expect(notified).toEqual([`${peer.device} granted`]);
    ctx.service.disconnected(peer);
    expect(decodeResult(await ctx.service.read(peer, 'result'))).toMatchObject({ code: 'no_challenge' });
    off();
  });

  it('tells the relay before any notification goes out, and notifies `pending` to a central whose decision takes longer', async () => {
    const ctx = setup();
    const peer = central();
    const notified: string[] = [];
    ctx.service.onNotify((_, __, bytes) => notified.push(decodeResult(bytes).outcome));
    let release = (): void => {};
    const relayFree = new Promise<void>((resolve) => {
      release = resolve;
    });
    let notifiedAtUnlock: string[] | undefined;
    const unlock = ctx.lock.unlock.bind(ctx.lock);
    ctx.lock.unlock = async (cause) => {
      notifiedAtUnlock = [...notified];
      await relayFree;
      return unlock(cause);
    };
    const challenge = await ctx.service.read(peer, 'challenge');
    await ctx.service.write(peer, 'answer', webKeyAnswer(ctx.driver, challenge));
    expect(decodeResult(await ctx.service.read(peer, 'result')).outcome).toBe('pending');
    await new Promise((resolve) => setImmediate(resolve));
    // The D-Bus signal of a notification must not go out ahead of the relay (the unlock path).
    expect(notifiedAtUnlock).toEqual([]);
    expect(notified).toEqual(['pending']);
    release();
    await ctx.service.idle();
    expect(notified).toEqual(['pending', 'granted']);
    expect(ctx.lock.actions).toHaveLength(1);
  });

  it('a central that leaves while its answer is decided gets nothing kept', async () => {
    const ctx = setup();
    const peer = central();
    const challenge = await ctx.service.read(peer, 'challenge');
    await ctx.service.write(peer, 'answer', webKeyAnswer(ctx.driver, challenge));
    ctx.service.disconnected(peer);
    await ctx.service.idle();
    expect(decodeResult(await ctx.service.read(peer, 'result'))).toMatchObject({ code: 'no_challenge' });
  });
});

describe('mode P passkeys', () => {
  it('an enrolled passkey with user verification unlocks; its counter is kept', async () => {
    const ctx = setup();
    ctx.passkey.counter = 3;
    const { challenge, result } = await exchange(ctx.service, central(), (c) =>
      passkeyAnswer(ctx.passkey, c),
    );
    expect(result.outcome).toBe('granted');
    expect(vehicleSigned(ctx, result, decodeChallenge(challenge).nonce, ctx.passkey.credentialId)).toBe(true);
    expect(ctx.counters.get(ctx.passkey.id)).toBe(3);
    const back = await exchange(ctx.service, central(), (c) =>
      passkeyAnswer(ctx.passkey, c, 'unlock', { counter: 2 }),
    );
    expect(back.result).toMatchObject({ outcome: 'denied', code: 'clone_suspected' });
    expect(ctx.lock.actions).toHaveLength(1);
  });

  it('a synced passkey (counter 0) unlocks again and again', async () => {
    const ctx = setup();
    for (let i = 0; i < 2; i++) {
      const { result } = await exchange(ctx.service, central(), (c) => passkeyAnswer(ctx.passkey, c));
      expect(result.outcome).toBe('granted');
    }
  });

  it.each([
    ['UV missing', { flags: 0x01 }, 'user_verification_required'],
    ['another origin', { origin: 'https://evil.example' }, 'origin_not_allowed'],
    ['another rpId', { rpId: 'evil.example' }, 'bad_proof'],
  ] as const)('a passkey with %s is refused, unsigned', async (_, options, code) => {
    const ctx = setup();
    const { result } = await exchange(ctx.service, central(), (c) =>
      passkeyAnswer(ctx.passkey, c, 'unlock', options),
    );
    expect(result).toMatchObject({ outcome: 'denied', code, signature: new Uint8Array(0) });
    expect(ctx.lock.actions).toEqual([]);
    // The audit keeps the reason the page was told, not only bad_proof.
    await ctx.agent.flush();
    const access = ctx.events.filter((e) => e.type === 'access' && e.credentialId === ctx.passkey.id);
    expect(access).toEqual([expect.objectContaining({ result: 'denied', code })]);
  });

  it('origins given as a function are asked at each answer (the status page listens after the service starts)', async () => {
    let listening: string[] = [];
    const ctx = setup(() => listening);
    const before = await exchange(ctx.service, central(), (c) => passkeyAnswer(ctx.passkey, c));
    expect(before.result).toMatchObject({ outcome: 'denied', code: 'origin_not_allowed' });
    listening = [ORIGIN];
    const after = await exchange(ctx.service, central(), (c) => passkeyAnswer(ctx.passkey, c));
    expect(after.result.outcome).toBe('granted');
    expect(ctx.lock.actions).toHaveLength(1);
  });

  it('a passkey gets the slow window (user verification takes a human), and no more', async () => {
    const ctx = setup();
    const slow = await exchange(
      ctx.service,
      central(),
      (c) => passkeyAnswer(ctx.passkey, c),
      () => ctx.advance(20_000),
    );
    expect(slow.result.outcome).toBe('granted');
    const late = await exchange(
      ctx.service,
      central(),
      (c) => passkeyAnswer(ctx.passkey, c),
      () => ctx.advance(30_001),
    );
    expect(late.result).toMatchObject({ outcome: 'denied', code: 'challenge_expired' });
    await ctx.agent.flush();
    expect(ctx.events).toContainEqual(
      expect.objectContaining({
        type: 'access',
        result: 'denied',
        code: 'timeout',
        credentialId: ctx.passkey.id,
        deadlineMs: 30_000,
        lateMs: 1,
      }),
    );
  });
});

describe('mode P enrollment', () => {
  it('a web key: pending, approved by an owner key, then identify returns a result signed by the vehicle key', async () => {
    const ctx = setup();
    const fresh = makeWebKey();
    const first = await exchange(ctx.service, central(), (c) => webKeyEnroll(fresh, c));
    expect(first.result).toMatchObject({
      outcome: 'pending',
      code: 'enrollment_pending',
      signature: new Uint8Array(0),
    });
    expect(ctx.desk.status()).toMatchObject({
      state: 'pending',
      credentialId: fresh.keyId,
      kind: 'phone',
      role: 'driver',
    });
    // Asking again on a new connection finds the same request.
    const again = await exchange(ctx.service, central(), (c) => webKeyEnroll(fresh, c));
    expect(again.result.code).toBe('enrollment_pending');
    expect(ctx.desk.status()?.opId).toBeDefined();
    expect(await ownerApproves(ctx, ctx.owner)).toMatchObject({ approved: true, credentialId: fresh.keyId });
    const done = await exchange(ctx.service, central(), (c) => webKeyEnroll(fresh, c));
    expect(done.result.outcome).toBe('granted');
    const identify = await exchange(ctx.service, central(), (c) => webKeyAnswer(fresh, c, 'identify'));
    expect(identify.result.outcome).toBe('granted');
    expect(vehicleSigned(ctx, identify.result, decodeChallenge(identify.challenge).nonce, fresh.keyId)).toBe(
      true,
    );
    expect(ctx.lock.actions).toEqual([]);
    const unlock = await exchange(ctx.service, central(), (c) => webKeyAnswer(fresh, c));
    expect(unlock.result.outcome).toBe('granted');
    expect(ctx.lock.actions).toHaveLength(1);
  });

  it('a web key enrollment without proof of possession opens nothing', async () => {
    const ctx = setup();
    const fresh = makeWebKey();
    const thief = makeWebKey();
    const { result } = await exchange(ctx.service, central(), (c) => {
      const forged = webKeyEnroll(fresh, c);
      const proof = webKeyEnroll(thief, c);
      forged.set(proof.subarray(proof.length - 64), forged.length - 64);
      return forged;
    });
    expect(result).toMatchObject({ outcome: 'denied', code: 'bad_proof' });
    expect(ctx.desk.status()).toBeUndefined();
  });

  it('a passkey: pending, approved, then unlocks; its grant result is never signed', async () => {
    const ctx = setup();
    const fresh = makePasskey('127.0.0.1');
    const first = await exchange(ctx.service, central(), (c) => passkeyEnroll(fresh, c));
    expect(first.result).toMatchObject({ outcome: 'pending', code: 'enrollment_pending' });
    expect(ctx.desk.status()).toMatchObject({ kind: 'passkey', credentialId: fresh.id });
    expect((await ownerApproves(ctx, ctx.owner)).approved).toBe(true);
    expect(ctx.keyring.byId(fresh.id)?.credential).toMatchObject({ kind: 'passkey', rpId: '127.0.0.1' });
    const done = await exchange(ctx.service, central(), (c) => passkeyEnroll(fresh, c));
    expect(done.result).toMatchObject({ outcome: 'granted', signature: new Uint8Array(0) });
    const unlock = await exchange(ctx.service, central(), (c) => passkeyAnswer(fresh, c));
    expect(unlock.result.outcome).toBe('granted');
  });

  it('a second key is refused busy while another request is pending; a cancelled request is refused', async () => {
    const ctx = setup();
    const a = makeWebKey();
    const b = makeWebKey();
    expect((await exchange(ctx.service, central(), (c) => webKeyEnroll(a, c))).result.code).toBe(
      'enrollment_pending',
    );
    expect((await exchange(ctx.service, central(), (c) => webKeyEnroll(b, c))).result).toMatchObject({
      outcome: 'denied',
      code: 'busy',
    });
    ctx.desk.cancel();
    expect((await exchange(ctx.service, central(), (c) => webKeyEnroll(a, c))).result).toMatchObject({
      outcome: 'denied',
      code: 'enrollment_closed',
    });
  });

  it('the enrollment is answered from the signed bytes only: the page cannot pick its role', async () => {
    const ctx = setup();
    const fresh = makeWebKey();
    await exchange(ctx.service, central(), (c) => webKeyEnroll(fresh, c));
    expect(ctx.desk.status()?.role).toBe('driver');
    // A proof over another challenge is not this connection's.
    const stale = await ctx.service.read(central(), 'challenge');
    const { result } = await exchange(ctx.service, central(), () => webKeyEnroll(fresh, stale));
    expect(result).toMatchObject({ outcome: 'denied', code: 'no_challenge' });
    expect(sign).toBeDefined();
  });
});

describe('phone app origins', () => {
  it('are the configured ones plus the status page of this agent, at 127.0.0.1 and at localhost (passkeys)', () => {
    expect(phoneAppOrigins(['https://keys.example.org'], 8080)).toEqual([
      'https://keys.example.org',
      'http://127.0.0.1:8080',
      'http://localhost:8080',
    ]);
    expect(phoneAppOrigins(['http://127.0.0.1:8080'], 8080)).toEqual([
      'http://127.0.0.1:8080',
      'http://localhost:8080',
    ]);
    expect(phoneAppOrigins([], undefined)).toEqual([]);
  });
});

describe('mode P garbage', () => {
  it('any bytes written are a coded refusal or a decision; never a signed result, never the relay', async () => {
    const ctx = setup();
    const peer = central();
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 600 }), fc.boolean(), async (bytes, withHeader) => {
        const input =
          withHeader && bytes.length >= 2
            ? Uint8Array.from([2, 0x22 + ((bytes[1] ?? 0) % 4), ...bytes.subarray(2)])
            : bytes;
        await ctx.service.read(peer, 'challenge');
        try {
          await ctx.service.write(peer, 'answer', input);
        } catch (err) {
          expect(err).toBeInstanceOf(AgentError);
        }
        await ctx.service.idle();
        const result = decodeResult(await ctx.service.read(peer, 'result'));
        expect(result.outcome).not.toBe('granted');
        expect(result.signature).toHaveLength(0);
      }),
      { seed: Number(process.env.TEST_SEED ?? 0x5eed), numRuns: 300 },
    );
    expect(ctx.lock.actions).toEqual([]);
    // And the real key still opens afterwards.
    const { result } = await exchange(ctx.service, central(), (c) => webKeyAnswer(ctx.driver, c));
    expect(result.outcome).toBe('granted');
  });
});
