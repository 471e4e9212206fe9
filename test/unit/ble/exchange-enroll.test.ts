import { sign } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { KEYRING_OP_TYP, Keyring } from '../../../src/access/keyring.js';
import type { ReaderContext } from '../../../src/agent/reader.js';
import type { BleChannel, BleCloseReason } from '../../../src/ble/channel.js';
import { EnrollmentDesk } from '../../../src/ble/enrollment.js';
import { type BleOutcome, KeyExchange } from '../../../src/ble/exchange.js';
import { BLE_AUTH_VERIFIERS, ENROLL_TYPES } from '../../../src/ble/protocol/enroll.js';
import { chunkFrame, FrameReassembler } from '../../../src/ble/protocol/framing.js';
import { decodeMessage } from '../../../src/ble/protocol/messages.js';
import { silentLogger } from '../../../src/core/logger.js';
import { fromB64url } from '../../../src/crypto/encoding.js';
import { signJws } from '../../../src/crypto/jws.js';
import { type PhoneBehaviour, PhoneKey } from '../../../src/sim/ble/phone.js';
import { grantBy, makeKey, makeRoot, type TestKey, VID } from '../../helpers/keyring-fixtures.js';
import { countingRandom } from './fixtures.js';

/**
 * Extension E1 over one exchange, on fake timers, with the real enrollment desk: the vehicle signs
 * and sends an offer only to a key that proved an enrolled owner key, and an owner's approval given
 * while the request is open completes it, however long the owner took.
 */

const WINDOW_MS = 120_000;

/** A channel to a message-level PhoneKey; the phone's reply to the offer (the owner's decision) comes after `decideMs`. */
class OwnerChannel implements BleChannel {
  readonly address = 'AA:00:00:00:00:77';
  readonly mtu = 185;
  closed = false;
  proven = false;
  extendedMs: number | undefined;
  /** Every frame the vehicle wrote. */
  readonly frames: Uint8Array[] = [];
  private readonly listeners = new Set<(chunk: Uint8Array) => void>();
  private readonly reassembler = new FrameReassembler();

  constructor(
    private readonly phone: PhoneKey,
    private readonly decideMs: number,
    /** Sent instead of the phone's reply to the hello (its enroll_request). */
    private readonly request?: Uint8Array,
  ) {}

  async write(bytes: Uint8Array): Promise<void> {
    const frame = this.reassembler.push(bytes, 0);
    if (frame === undefined) return;
    this.frames.push(frame);
    const reply = this.phone.receive(frame);
    if (reply === undefined) return;
    const isOffer = frame[1] === ENROLL_TYPES.enroll_offer;
    const message = frame[1] === 0x01 && this.request !== undefined ? this.request : reply.message;
    setTimeout(
      () => {
        for (const chunk of chunkFrame(message, 182)) for (const l of this.listeners) l(chunk);
      },
      isOffer ? this.decideMs : 0,
    );
  }

  onData(listener: (chunk: Uint8Array) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  onClose(_listener: (reason: BleCloseReason) => void): () => void {
    return () => {};
  }
  async close(): Promise<void> {
    this.closed = true;
  }
  markProven(): void {
    this.proven = true;
  }
  extendTurn(ms: number): boolean {
    this.extendedMs = ms;
    return true;
  }
}

function secretOf(key: TestKey): Uint8Array {
  return fromB64url(String(key.privateKey.export({ format: 'jwk' }).d));
}

function setup() {
  const root = makeRoot();
  const vehicle = makeKey('signer', 'owner');
  const rootKey = root.credential.publicKey;
  const vehicleKey = vehicle.credential.publicKey;
  if (rootKey === undefined || vehicleKey === undefined) throw new Error('keys');
  const keyring = new Keyring({ vehicleId: VID, rootKey, vehicleKey, authVerifiers: BLE_AUTH_VERIFIERS });
  const owner = makeKey('phone', 'owner');
  const driver = makeKey('phone', 'driver');
  const fresh = makeKey('phone', 'driver');
  expect(keyring.merge([grantBy(root, owner.credential), grantBy(root, driver.credential)]).rejected).toEqual(
    [],
  );
  const clock = { now: () => Date.now(), monotonic: () => Date.now() };
  const audit: { type: string; [key: string]: unknown }[] = [];
  const desk = new EnrollmentDesk({
    vehicleId: VID,
    clock,
    keyring,
    signOp: (op) => signJws(op, vehicle.privateKey, vehicle.id, KEYRING_OP_TYP),
    addOps: async (jws) => keyring.merge(jws),
    audit: (event) => audit.push({ ...event }),
    log: silentLogger,
    windowMs: WINDOW_MS,
    maxWindowMs: 600_000,
  });
  const presented: unknown[] = [];
  const ctx: ReaderContext = {
    vehicleId: VID,
    clock,
    log: silentLogger,
    keyring,
    signAsVehicle: (m) =>
      new Uint8Array(sign('sha256', m, { key: vehicle.privateKey, dsaEncoding: 'ieee-p1363' })),
    present: async (p) => {
      presented.push(p);
      return { granted: false, code: 'bad_proof' };
    },
  };
  const exchange = new KeyExchange({
    id: 'ble0',
    answerWindowMs: 800,
    lateGraceMs: 500,
    enrollment: desk,
    randomBytes: countingRandom(),
  });
  const pin = [{ vehicleId: VID, publicKey: vehicleKey }];
  const approach = (
    key: TestKey,
    decideMs: number,
    behaviour: Partial<PhoneBehaviour> = {},
    request?: Uint8Array,
  ): { channel: OwnerChannel; phone: PhoneKey; run: Promise<BleOutcome | undefined> } => {
    const phone = new PhoneKey({
      secretKey: secretOf(key),
      vehicles: pin,
      behaviour: { approveEnrollment: true, ...behaviour },
    });
    const channel = new OwnerChannel(phone, decideMs, request);
    return { channel, phone, run: exchange.run(ctx, channel) };
  };
  return { desk, keyring, audit, presented, owner, driver, fresh, approach };
}

/** The types of the frames the vehicle wrote (0x06 = enroll_offer). */
const typesOf = (channel: OwnerChannel): number[] => channel.frames.map((f) => f[1] ?? 0);

describe('E1 over an exchange', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it.each([
    ['a stranger key', 'stranger', {}, 'unknown_credential'],
    ['an owner key with a bad signature', 'owner', { fault: 'bad_signature' }, 'bad_proof'],
    ['another key under the owner key id', 'owner', { fault: 'wrong_key' }, 'bad_proof'],
    ['a driver key', 'driver', {}, 'role_not_allowed'],
  ] as const)(
    '%s gets no offer, signed or not, and learns nothing of the pending request',
    async (_, who, behaviour, code) => {
      const s = setup();
      s.desk.open(s.fresh.credential);
      const key = who === 'stranger' ? makeKey('phone', 'owner') : who === 'owner' ? s.owner : s.driver;
      const a = s.approach(key, 0, behaviour);
      await vi.advanceTimersByTimeAsync(10);
      const outcome = await a.run;
      expect(outcome).toMatchObject({ kind: 'enrollment', outcome: { approved: false, code } });
      // The hello, then the result; never an enroll_offer.
      expect(typesOf(a.channel)).toEqual([0x01, 0x03]);
      expect(decodeMessage(a.channel.frames[1] ?? new Uint8Array())).toMatchObject({ granted: false, code });
      expect(a.channel.proven).toBe(false);
      expect(s.desk.status()?.state).toBe('pending');
      expect(a.phone.events.some((e) => e.type === 'enroll-offered')).toBe(false);
    },
  );

  it('refuses the unsigned enroll_request of E1 revision 1 as unsupported, with no offer', async () => {
    const s = setup();
    s.desk.open(s.fresh.credential);
    // The two bytes of revision 1 instead of the phone's signed request.
    const a = s.approach(s.owner, 0, {}, Uint8Array.of(1, 5));
    await vi.advanceTimersByTimeAsync(10);
    const outcome = await a.run;
    expect(outcome).toMatchObject({ outcome: { approved: false, code: 'unsupported' } });
    expect(typesOf(a.channel)).toEqual([0x01, 0x03]);
  });

  it('an owner with no request open learns only that none is open, after proving its key', async () => {
    const s = setup();
    const a = s.approach(s.owner, 0);
    await vi.advanceTimersByTimeAsync(10);
    expect(await a.run).toMatchObject({ outcome: { approved: false, code: 'enrollment_closed' } });
    expect(typesOf(a.channel)).toEqual([0x01, 0x03]);
  });

  it('an approval given 100 s after the offer, within the request window, completes the enrollment', async () => {
    const s = setup();
    s.desk.open(s.fresh.credential);
    const a = s.approach(s.owner, 100_000);
    await vi.advanceTimersByTimeAsync(100_000);
    const outcome = await a.run;
    expect(outcome).toMatchObject({
      kind: 'enrollment',
      outcome: { approved: true, credentialId: s.fresh.id },
    });
    expect(typesOf(a.channel)).toEqual([0x01, 0x06, 0x03]);
    expect(a.channel.proven).toBe(true);
    // The session was asked to last as long as the request (and a little for the last writes).
    expect(a.channel.extendedMs).toBeGreaterThanOrEqual(WINDOW_MS);
    expect(s.keyring.activeRole(s.fresh.id)).toBe('driver');
    expect(s.desk.status()).toMatchObject({ state: 'completed', approvedBy: s.owner.id });
  });

  it('an approval after the request expired is refused, and nothing is written', async () => {
    const s = setup();
    s.desk.open(s.fresh.credential);
    const a = s.approach(s.owner, WINDOW_MS + 1000);
    await vi.advanceTimersByTimeAsync(WINDOW_MS + 1000);
    expect(await a.run).toMatchObject({ outcome: { approved: false } });
    expect(s.keyring.byId(s.fresh.id)).toBeUndefined();
  });
});
