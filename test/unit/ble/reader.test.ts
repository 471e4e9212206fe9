import { sign } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { decide } from '../../../src/access/decision.js';
import { EMPTY_LIMITS } from '../../../src/access/rate-limit.js';
import type { ReaderContext } from '../../../src/agent/reader.js';
import type { BleCandidate, BleChannel, BleCloseReason, BleLinkStats } from '../../../src/ble/link.js';
import { type BleLinkPort, type BleOutcome, BleReader } from '../../../src/ble/reader.js';
import { MonotonicFloorClock } from '../../../src/core/clock.js';
import { AgentError } from '../../../src/core/errors.js';
import { silentLogger } from '../../../src/core/logger.js';
import type { Decision, Health, Presentation } from '../../../src/core/types.js';
import { fromB64url } from '../../../src/crypto/encoding.js';
import { PhoneKey } from '../../../src/sim/ble/phone.js';
import { PhonePeer } from '../../../src/sim/ble/phone-peer.js';
import { grantBy, makeKey, makeRoot, newKeyring, type TestKey, VID } from '../../helpers/keyring-fixtures.js';
import { waitFor } from '../../helpers/wait.js';

/**
 * The reader's own logic over an in-memory link (the real node-ble path is covered by
 * test/integration/ble-agent.test.ts): what it presents, what it tells the key, the cooldowns it
 * asks for, and what it refuses to do.
 */

const STATS: BleLinkStats = {
  candidates: 0,
  sessionsOpened: 0,
  sessionsFailed: 0,
  gattRetries: 0,
  initialisations: 0,
  busConnections: 0,
  activeSessions: 0,
  unprovenSessions: 0,
  sightingsDeferred: 0,
  sessionsEvicted: 0,
  unprovenTimeouts: 0,
  waitingDevices: 0,
  waitingDropped: 0,
  connects: 0,
  connectsDeferred: 0,
  trackedDevices: 0,
  trackedDevicesEvicted: 0,
  devicesLookedUp: 0,
  tables: { gattObjects: 0, holds: 0, pathWaiters: 0, notifyPaths: 0, lookups: 0 },
};

class FakeChannel implements BleChannel {
  closed = false;
  proven = false;
  cooldownMs: number | undefined;
  readonly writes: Uint8Array[] = [];
  private readonly data = new Set<(chunk: Uint8Array) => void>();
  private readonly closers = new Set<(reason: BleCloseReason) => void>();

  constructor(
    readonly address: string,
    readonly mtu: number | undefined,
    private readonly peer: PhonePeer,
  ) {
    peer.notify = (bytes) => {
      const copy = bytes.slice();
      queueMicrotask(() => {
        if (!this.closed) for (const l of this.data) l(copy);
      });
    };
    peer.onSubscribe(true);
    if (mtu !== undefined) peer.setMtu(mtu);
  }

  async write(bytes: Uint8Array): Promise<void> {
    if (this.closed) throw new AgentError('reader_error', 'closed');
    this.writes.push(bytes.slice());
    this.peer.onWrite(bytes);
  }

  onData(listener: (chunk: Uint8Array) => void): () => void {
    this.data.add(listener);
    return () => this.data.delete(listener);
  }

  onClose(listener: (reason: BleCloseReason) => void): () => void {
    this.closers.add(listener);
    return () => this.closers.delete(listener);
  }

  async close(options: { readonly cooldownMs?: number } = {}): Promise<void> {
    this.cooldownMs = options.cooldownMs;
    this.end('closed');
  }

  markProven(): void {
    this.proven = true;
  }

  extendTurn(): boolean {
    return true;
  }

  /** The key (or the radio) ends the link. */
  end(reason: BleCloseReason): void {
    if (this.closed) return;
    this.closed = true;
    this.peer.onDisconnect();
    for (const l of this.closers) l(reason);
  }
}

class FakeLink implements BleLinkPort {
  readonly phones = new Map<string, PhonePeer>();
  readonly channels: FakeChannel[] = [];
  opened = 0;
  mtu: number | undefined = 247;
  private listener: ((c: BleCandidate) => void) | undefined;

  async start(): Promise<void> {}
  async stop(): Promise<void> {
    for (const c of this.channels) c.end('stopped');
  }
  health(): Health {
    return { state: 'ok', since: 0 };
  }
  stats(): BleLinkStats {
    return STATS;
  }
  onCandidate(listener: (candidate: BleCandidate) => void): () => void {
    this.listener = listener;
    return () => {
      this.listener = undefined;
    };
  }
  async openSession(address: string): Promise<BleChannel> {
    this.opened += 1;
    const peer = this.phones.get(address);
    if (peer === undefined) throw new AgentError('reader_error', 'no such device');
    const channel = new FakeChannel(address, this.mtu, peer);
    this.channels.push(channel);
    return channel;
  }
  sight(address: string): void {
    this.listener?.({ address, name: 'Phone', rssi: -50 });
  }
}

const running: BleReader[] = [];
afterEach(async () => {
  for (const r of running.splice(0)) await r.stop();
});

function secretOf(key: TestKey): Uint8Array {
  const { d } = key.privateKey.export({ format: 'jwk' });
  return fromB64url(String(d));
}

async function setup(options: { window?: number } = {}) {
  const root = makeRoot();
  const vehicle = makeKey('signer', 'owner');
  const driver = makeKey('phone', 'driver');
  const keyring = newKeyring(root);
  expect(keyring.merge([grantBy(root, driver.credential)]).rejected).toEqual([]);
  const presented: Presentation[] = [];
  const clock = new MonotonicFloorClock(0);
  const context: ReaderContext = {
    vehicleId: VID,
    clock,
    log: silentLogger,
    keyring,
    signAsVehicle: (m) =>
      new Uint8Array(sign('sha256', m, { key: vehicle.privateKey, dsaEncoding: 'ieee-p1363' })),
    present: async (p): Promise<Decision> => {
      presented.push(p);
      return decide({
        presentation: p,
        keyring,
        now: clock.now(),
        limits: EMPTY_LIMITS,
        lastCounter: undefined,
        policy: {
          rateLimit: { maxDenials: 100, windowMs: 1000, cooldownMs: 1000 },
          answerDeadlineMs: { phone: 1500 },
        },
      });
    },
  };
  const link = new FakeLink();
  const reader = new BleReader({
    link,
    answerWindowMs: options.window ?? 1500,
    lateGraceMs: 20,
    grantCooldownMs: 5000,
    denialCooldownMs: 2000,
  });
  const outcomes: BleOutcome[] = [];
  reader.onOutcome((o) => outcomes.push(o));
  await reader.start(context);
  running.push(reader);
  const pin = {
    vehicleId: VID,
    publicKey: vehicle.credential.publicKey ?? { kty: 'EC' as const, crv: 'P-256' as const, x: '' },
  };
  const addPhone = (
    address: string,
    key: TestKey | undefined,
    behaviour: ConstructorParameters<typeof PhoneKey>[0]['behaviour'] = {},
  ) => {
    const phone = new PhoneKey({ ...(key ? { secretKey: secretOf(key) } : {}), vehicles: [pin], behaviour });
    link.phones.set(address, new PhonePeer(phone));
    return phone;
  };
  const next = (count = 1) =>
    new Promise<void>((resolve) => {
      const check = setInterval(() => {
        if (outcomes.length >= count) {
          clearInterval(check);
          resolve();
        }
      }, 2);
    });
  return { reader, link, presented, outcomes, driver, addPhone, next };
}

describe('BLE reader', () => {
  it('grants an enrolled phone, tells it, and asks for the grant cooldown', async () => {
    const s = await setup();
    const phone = s.addPhone('AA:00:00:00:00:01', s.driver);
    s.link.sight('AA:00:00:00:00:01');
    await s.next();
    expect(s.presented).toHaveLength(1);
    expect(s.presented[0]).toMatchObject({
      reader: 'ble0',
      kind: 'phone',
      credentialId: s.driver.id,
      subject: s.driver.id,
      intent: 'unlock',
      explicitIntent: true,
      proof: 'valid',
    });
    expect(s.presented[0]?.answerMs).toBeGreaterThanOrEqual(0);
    expect(s.outcomes[0]).toMatchObject({ kind: 'decision', decision: { granted: true } });
    expect(phone.events).toContainEqual({ type: 'result', granted: true });
    const channel = s.link.channels[0];
    expect(channel?.cooldownMs).toBe(5000);
    // MTU 247: the 114-byte hello and the result each went in one write.
    expect(channel?.writes).toHaveLength(2);
  });

  it('writes 20-byte chunks when the link does not know the MTU', async () => {
    const s = await setup();
    s.link.mtu = undefined;
    s.addPhone('AA:00:00:00:00:01', s.driver);
    s.link.sight('AA:00:00:00:00:01');
    await s.next();
    const writes = s.link.channels[0]?.writes ?? [];
    expect(writes.every((w) => w.length <= 20)).toBe(true);
    expect(writes.length).toBeGreaterThan(2);
    expect(s.outcomes[0]).toMatchObject({ decision: { granted: true } });
  });

  it('presents an unknown key without a credential id, and asks for the denial cooldown', async () => {
    const s = await setup();
    const phone = s.addPhone('AA:00:00:00:00:02', undefined);
    s.link.sight('AA:00:00:00:00:02');
    await s.next();
    expect(s.presented[0]).toMatchObject({
      credentialId: undefined,
      subject: phone.credentialId,
      proof: 'invalid',
    });
    expect(s.outcomes[0]).toMatchObject({ decision: { granted: false, code: 'unknown_credential' } });
    expect(phone.events).toContainEqual({ type: 'result', granted: false, code: 'unknown_credential' });
    expect(s.link.channels[0]?.cooldownMs).toBe(2000);
  });

  it('marks a session proven only on a signature-checked answer of an enrolled key', async () => {
    const s = await setup();
    s.addPhone('AA:00:00:00:00:03', s.driver);
    s.addPhone('AA:00:00:00:00:13', s.driver, { fault: 'bad_signature' });
    s.addPhone('AA:00:00:00:00:23', undefined);
    s.addPhone('AA:00:00:00:00:33', s.driver, { fault: 'garbage' });
    for (const a of ['AA:00:00:00:00:03', 'AA:00:00:00:00:13', 'AA:00:00:00:00:23', 'AA:00:00:00:00:33'])
      s.link.sight(a);
    await s.next(4);
    expect(s.link.channels.map((c) => [c.address, c.proven])).toEqual([
      ['AA:00:00:00:00:03', true],
      ['AA:00:00:00:00:13', false],
      ['AA:00:00:00:00:23', false],
      ['AA:00:00:00:00:33', false],
    ]);
    expect(s.reader.stats().proven).toBe(1);
  });

  it.each([['evicted'], ['unproven-timeout']] as const)(
    'presents a session the link ended as %s like a key that never answered',
    async (reason) => {
      const s = await setup();
      s.addPhone('AA:00:00:00:00:07', s.driver, { fault: 'silent' });
      s.link.sight('AA:00:00:00:00:07');
      await waitFor(() => (s.link.channels[0]?.writes.length ?? 0) > 0, 'the exchange to begin');
      s.link.channels[0]?.end(reason);
      await s.next();
      expect(s.presented[0]).toMatchObject({ proof: 'timeout', credentialId: undefined });
      expect(s.outcomes[0]).toMatchObject({ decision: { code: 'timeout' } });
    },
  );

  it('runs one exchange per device at a time', async () => {
    const s = await setup();
    s.addPhone('AA:00:00:00:00:04', s.driver, { answerDelayMs: 30 });
    s.link.sight('AA:00:00:00:00:04');
    s.link.sight('AA:00:00:00:00:04');
    s.link.sight('AA:00:00:00:00:04');
    await s.next();
    expect(s.link.opened).toBe(1);
    expect(s.presented).toHaveLength(1);
  });

  it('denies a key that drops the link mid-protocol, and writes nothing after', async () => {
    const s = await setup();
    s.addPhone('AA:00:00:00:00:05', s.driver, { fault: 'silent' });
    s.link.sight('AA:00:00:00:00:05');
    await waitFor(() => (s.link.channels[0]?.writes.length ?? 0) > 0, 'the exchange to begin');
    const channel = s.link.channels[0];
    const writesBefore = channel?.writes.length ?? 0;
    channel?.end('disconnected');
    await s.next();
    expect(s.presented[0]).toMatchObject({ proof: 'removed', credentialId: undefined });
    expect(s.outcomes[0]).toMatchObject({ decision: { code: 'card_removed' } });
    expect(channel?.writes.length).toBe(writesBefore);
  });

  it('ends a silent exchange at the deadline with a timeout denial and an abort', async () => {
    const s = await setup({ window: 30 });
    const phone = s.addPhone('AA:00:00:00:00:06', s.driver, { fault: 'silent' });
    s.link.sight('AA:00:00:00:00:06');
    await s.next();
    expect(s.presented[0]).toMatchObject({ proof: 'timeout' });
    expect(s.outcomes[0]).toMatchObject({ decision: { code: 'timeout' } });
    expect(phone.events).toContainEqual({ type: 'aborted', code: 'timeout' });
  });

  it('presents nothing when the phone refuses the vehicle, or when the reader stops mid-exchange', async () => {
    const s = await setup();
    const other = makeKey('signer', 'owner').credential.publicKey;
    if (other === undefined) throw new Error('key');
    const stranger = new PhoneKey({ vehicles: [{ vehicleId: 'OTHER-CAR', publicKey: other }] });
    s.link.phones.set('AA:00:00:00:00:07', new PhonePeer(stranger));
    s.link.sight('AA:00:00:00:00:07');
    await s.next();
    expect(s.outcomes[0]).toEqual({ kind: 'refused', address: 'AA:00:00:00:00:07', code: 'wrong_vehicle' });
    s.addPhone('AA:00:00:00:00:08', s.driver, { fault: 'silent' });
    s.link.sight('AA:00:00:00:00:08');
    await waitFor(() => (s.link.channels[1]?.writes.length ?? 0) > 0, 'the second exchange to begin');
    await s.reader.stop();
    expect(s.presented).toHaveLength(0);
  });

  it('answers an enrollment request with enrollment_closed when no desk is configured', async () => {
    const s = await setup();
    const phone = s.addPhone('AA:00:00:00:00:09', s.driver, { approveEnrollment: true });
    s.link.sight('AA:00:00:00:00:09');
    await s.next();
    expect(s.outcomes[0]).toMatchObject({
      kind: 'enrollment',
      outcome: { approved: false, code: 'enrollment_closed' },
    });
    expect(phone.events).toContainEqual({ type: 'result', granted: false, code: 'enrollment_closed' });
    expect(s.presented).toHaveLength(0);
  });
});
