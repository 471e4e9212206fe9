import { sign } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { decide } from '../../../src/access/decision.js';
import { EMPTY_LIMITS } from '../../../src/access/rate-limit.js';
import type { ReaderContext } from '../../../src/agent/reader.js';
import type { BleChannel, BleCloseReason } from '../../../src/ble/channel.js';
import { type BleOutcome, KeyExchange } from '../../../src/ble/exchange.js';
import { chunkFrame, FrameReassembler } from '../../../src/ble/protocol/framing.js';
import { encodeAbort } from '../../../src/ble/protocol/messages.js';
import { silentLogger } from '../../../src/core/logger.js';
import type { Decision, Presentation } from '../../../src/core/types.js';
import { fromB64url } from '../../../src/crypto/encoding.js';
import { PhoneKey } from '../../../src/sim/ble/phone.js';
import { grantBy, makeKey, makeRoot, newKeyring, type TestKey, VID } from '../../helpers/keyring-fixtures.js';
import { countingRandom } from './fixtures.js';

/**
 * The answer deadline over one exchange, on a manual clock: it runs from the moment the hello's
 * last chunk is handed to the link (not earlier, not when the peer acknowledges it), misses carry
 * their measured lateness, and an unsigned abort ends nothing.
 */

interface Script {
  /** Modelled time of each hello write but the last (write with response over a slow link). */
  readonly writeMs: number;
  /** When the peer acknowledges the hello's last chunk, after that write started. */
  readonly lastAckMs: number;
  /** When the answer is complete at the vehicle, after the last write started. */
  readonly answerAfterMs: number;
  /** Frames the peer sends before its answer (at the same moment). */
  readonly before?: readonly Uint8Array[];
  /** The peer sends only `before`, never its answer. */
  readonly noAnswer?: boolean;
  /** The manual clock also moves with real time (for waits that only a timer ends). */
  readonly realTime?: boolean;
}

/** A channel to a message-level PhoneKey whose timing is scripted on a manual clock. */
class ScriptedChannel implements BleChannel {
  readonly address = 'AA:00:00:00:00:42';
  readonly mtu = undefined; // 20-byte chunks: the 114-byte hello takes 7 writes
  closed = false;
  private readonly listeners = new Set<(chunk: Uint8Array) => void>();
  private readonly reassembler = new FrameReassembler();
  private frames = 0;

  constructor(
    private readonly clock: { t: number },
    private readonly phone: PhoneKey,
    private readonly script: Script,
  ) {}

  async write(bytes: Uint8Array): Promise<void> {
    const start = this.clock.t;
    // The reassembler's own timeout is not what is tested here: one instant for every chunk.
    const frame = this.reassembler.push(bytes, 0);
    if (frame === undefined) {
      this.clock.t = start + this.script.writeMs;
      return;
    }
    this.frames += 1;
    const reply = this.phone.receive(frame);
    if (this.frames > 1 || reply === undefined) return; // the result: nothing comes back
    const ackAt = start + this.script.lastAckMs;
    const answerAt = start + this.script.answerAfterMs;
    const deliver = (): void => {
      this.clock.t = Math.max(this.clock.t, answerAt);
      for (const f of this.script.before ?? []) this.push(f);
      if (this.script.noAnswer !== true) this.push(reply.message);
    };
    if (answerAt <= ackAt) {
      deliver();
      this.clock.t = ackAt;
    } else {
      this.clock.t = ackAt;
      setImmediate(deliver);
    }
  }

  private push(message: Uint8Array): void {
    for (const chunk of chunkFrame(message, 20)) for (const l of this.listeners) l(chunk);
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
  markProven(): void {}
  extendTurn(): boolean {
    return true;
  }
}

function secretOf(key: TestKey): Uint8Array {
  return fromB64url(String(key.privateKey.export({ format: 'jwk' }).d));
}

async function exchange(
  script: Script,
  window = 1500,
): Promise<{ outcome: BleOutcome | undefined; presented: Presentation[]; phone: PhoneKey }> {
  const root = makeRoot();
  const vehicle = makeKey('signer', 'owner');
  const driver = makeKey('phone', 'driver');
  const keyring = newKeyring(root);
  expect(keyring.merge([grantBy(root, driver.credential)]).rejected).toEqual([]);
  const clock = { t: 0 };
  const base = performance.now();
  const monotonic = script.realTime === true ? () => clock.t + (performance.now() - base) : () => clock.t;
  const presented: Presentation[] = [];
  const ctx: ReaderContext = {
    vehicleId: VID,
    clock: { now: () => 1_800_000_000_000 + monotonic(), monotonic },
    log: silentLogger,
    keyring,
    signAsVehicle: (m) =>
      new Uint8Array(sign('sha256', m, { key: vehicle.privateKey, dsaEncoding: 'ieee-p1363' })),
    present: async (p): Promise<Decision> => {
      presented.push(p);
      return decide({
        presentation: p,
        keyring,
        now: 1_800_000_000_000,
        limits: EMPTY_LIMITS,
        lastCounter: undefined,
        policy: {
          rateLimit: { maxDenials: 100, windowMs: 1000, cooldownMs: 1000 },
          answerDeadlineMs: { phone: window },
        },
      });
    },
  };
  const publicKey = vehicle.credential.publicKey;
  if (publicKey === undefined) throw new Error('vehicle key');
  const phone = new PhoneKey({ secretKey: secretOf(driver), vehicles: [{ vehicleId: VID, publicKey }] });
  const keyExchange = new KeyExchange({
    id: 'ble0',
    answerWindowMs: window,
    lateGraceMs: 500,
    randomBytes: countingRandom(),
  });
  const outcome = await keyExchange.run(ctx, new ScriptedChannel(clock, phone, script));
  return { outcome, presented, phone };
}

describe('answer deadline', () => {
  it("runs from the last hello chunk: slow writes before it are not the key's time", async () => {
    // 6 writes of 200 ms before the last chunk; the key answers 1400 ms after it (window 1500).
    const { outcome, presented } = await exchange({ writeMs: 200, lastAckMs: 200, answerAfterMs: 1400 });
    expect(presented[0]).toMatchObject({ proof: 'valid', answerMs: 1400 });
    expect(presented[0]).not.toHaveProperty('lateMs');
    expect(outcome).toMatchObject({ kind: 'decision', decision: { granted: true } });
  });

  it('does not wait for the peer to acknowledge the last chunk (a relay could hold it back)', async () => {
    // The peer acknowledges the last chunk 1000 ms late and answers 600 ms after that.
    const { presented } = await exchange({ writeMs: 0, lastAckMs: 1000, answerAfterMs: 1600 });
    expect(presented[0]).toMatchObject({ proof: 'timeout', answerMs: 1600, deadlineMs: 1500, lateMs: 100 });
  });

  it('a late answer is denied timeout with its lateness; no answer, with how long we waited past the deadline', async () => {
    const late = await exchange({ writeMs: 5, lastAckMs: 5, answerAfterMs: 1730 });
    expect(late.presented[0]).toMatchObject({
      proof: 'timeout',
      answerMs: 1730,
      deadlineMs: 1500,
      lateMs: 230,
    });
    expect(late.outcome).toMatchObject({ decision: { granted: false, code: 'timeout' } });
    const silent = await exchange(
      { writeMs: 5, lastAckMs: 5, answerAfterMs: 10, noAnswer: true, realTime: true },
      40,
    );
    expect(silent.presented[0]).toMatchObject({ proof: 'timeout', credentialId: undefined, deadlineMs: 40 });
    expect(silent.presented[0]).not.toHaveProperty('answerMs');
    // It waited the grace (500 ms) past the deadline before giving up.
    expect(silent.presented[0]?.lateMs).toBeGreaterThanOrEqual(450);
    expect(silent.phone.events).toContainEqual({ type: 'aborted', code: 'timeout' });
  });
});

describe('unsigned aborts', () => {
  it.each(['unsupported', 'wrong_vehicle', 'timeout'])(
    'an injected abort %s before the answer ends nothing: the signed answer decides',
    async (code) => {
      const { outcome, presented } = await exchange({
        writeMs: 5,
        lastAckMs: 5,
        answerAfterMs: 50,
        before: [encodeAbort(code), encodeAbort(code)],
      });
      expect(presented[0]).toMatchObject({ proof: 'valid' });
      expect(outcome).toMatchObject({ kind: 'decision', decision: { granted: true } });
    },
  );

  it('a key that only aborts is refused once the deadline passed, with no presentation', async () => {
    const { outcome, presented } = await exchange(
      { writeMs: 5, lastAckMs: 5, answerAfterMs: 10, before: [encodeAbort('wrong_vehicle')], noAnswer: true },
      40,
    );
    expect(outcome).toMatchObject({ kind: 'refused', code: 'wrong_vehicle' });
    expect(presented).toHaveLength(0);
  });
});
