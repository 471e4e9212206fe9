import { describe, expect, it } from 'vitest';
import { MAX_FRAME_BYTES } from '../../../src/ble/protocol/constants.js';
import { chunkBytesForMtu, chunkFrame, FrameReassembler } from '../../../src/ble/protocol/framing.js';
import { decodeMessage, encodeResult } from '../../../src/ble/protocol/messages.js';
import { AgentSession, RecentChallenges, type SessionVerdict } from '../../../src/ble/protocol/session.js';
import { AgentError } from '../../../src/core/errors.js';
import { type PhoneEvent, PhoneKey } from '../../../src/sim/ble/phone.js';
import { PhonePeer, type ScheduleFn } from '../../../src/sim/ble/phone-peer.js';
import { countingRandom, makeVehicle } from './fixtures.js';

/** Virtual time: timers run only when the test advances the clock. */
class VirtualTime {
  now = 0;
  private timers: { at: number; seq: number; run: () => void }[] = [];
  private seq = 0;

  readonly schedule: ScheduleFn = (run, ms) => {
    const timer = { at: this.now + ms, seq: this.seq++, run };
    this.timers.push(timer);
    return () => {
      this.timers = this.timers.filter((t) => t !== timer);
    };
  };

  advance(ms: number): void {
    const end = this.now + ms;
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = this.timers[0];
      if (next === undefined || next.at > end) break;
      this.timers.shift();
      this.now = next.at;
      next.run();
    }
    this.now = end;
  }

  get pending(): number {
    return this.timers.length;
  }
}

const vehicle = makeVehicle('VIN-PEER');

interface Exchange {
  verdict?: SessionVerdict;
  abort?: string;
  linkError?: string;
  notifications: number;
  events: PhoneEvent[];
}

/** Plays the vehicle (central) against a PhonePeer, as the node-ble link will. */
function setup(mtu = 23) {
  const time = new VirtualTime();
  const events: PhoneEvent[] = [];
  const phone = new PhoneKey({
    vehicles: [{ vehicleId: vehicle.vehicleId, publicKey: vehicle.publicJwk }],
    onEvent: (e) => events.push(e),
  });
  const peer = new PhonePeer(phone, { now: () => time.now, schedule: time.schedule });
  peer.setMtu(mtu);
  const recent = new RecentChallenges();
  const random = countingRandom();

  function run(answerWindowMs = 1500, subscribe = true): Exchange {
    const result: Exchange = { notifications: 0, events };
    const reassembler = new FrameReassembler();
    const session = AgentSession.open({
      vehicleId: vehicle.vehicleId,
      answerWindowMs,
      now: time.now,
      randomBytes: random,
      signAsVehicle: vehicle.sign,
      recentChallenges: recent,
    });
    peer.notify = (chunk) => {
      result.notifications++;
      expect(chunk.length).toBeLessThanOrEqual(chunkBytesForMtu(mtu));
      try {
        const frame = reassembler.push(chunk, time.now);
        if (frame === undefined) return;
        const receipt = session.receive(frame, time.now);
        if (receipt.kind === 'abort') {
          result.abort = receipt.code;
          return;
        }
        result.verdict = session.verify(phone.publicKey);
        const granted = result.verdict.proof === 'valid';
        const message = encodeResult(granted ? { granted } : { granted: false, code: 'bad_proof' });
        for (const c of chunkFrame(message, chunkBytesForMtu(mtu))) peer.onWrite(c);
      } catch (err) {
        if (!(err instanceof AgentError)) throw err;
        result.linkError ??= err.code;
      }
    };
    if (subscribe) peer.onSubscribe(true);
    for (const chunk of chunkFrame(session.hello, chunkBytesForMtu(mtu))) peer.onWrite(chunk);
    expect(result.notifications).toBe(0); // never answers inside the write
    time.advance(answerWindowMs + 5000);
    return result;
  }
  return { time, phone, peer, run };
}

describe('PhonePeer over GATT', () => {
  it.each([23, 24, 50, 185, 247, 517])('a full exchange at ATT MTU %i', (mtu) => {
    const { run } = setup(mtu);
    const r = run();
    expect(r.verdict).toMatchObject({ proof: 'valid', intent: 'unlock', explicitIntent: true, answerMs: 0 });
    expect(r.events.at(-1)).toEqual({ type: 'result', granted: true });
    expect(r.linkError).toBeUndefined();
  });

  it('a slow answer arrives after its delay and is late for a short window', () => {
    const { run, phone } = setup();
    phone.setBehaviour({ answerDelayMs: 2000 });
    const r = run(1500);
    expect(r.verdict).toMatchObject({ proof: 'timeout', answerMs: 2000 });
    phone.setBehaviour({ answerDelayMs: 300 });
    expect(run(1500).verdict).toMatchObject({ proof: 'valid', answerMs: 300 });
  });

  it('a lost notification leaves the frame incomplete: no verdict', () => {
    const { run, phone, peer } = setup();
    phone.setBehaviour({ fault: 'drop_notification' });
    const r = run();
    expect(r.verdict).toBeUndefined();
    expect(r.notifications).toBeGreaterThan(0);
    expect(peer.stats.dropped).toBe(1);
  });

  it('garbage chunks are malformed framing', () => {
    const { run, phone } = setup();
    phone.setBehaviour({ fault: 'garbage_chunks' });
    const r = run();
    expect(r.linkError).toBe('malformed');
    expect(r.verdict).toBeUndefined();
  });

  it('a garbage message is malformed', () => {
    const { run, phone } = setup();
    phone.setBehaviour({ fault: 'garbage' });
    expect(run().linkError).toBe('malformed');
  });

  it('an oversized frame is rejected once', () => {
    const { run, phone } = setup();
    phone.setBehaviour({ fault: 'oversized' });
    const r = run();
    expect(r.linkError).toBe('frame_too_large');
    expect(r.notifications).toBe(chunkFrame(new Uint8Array(MAX_FRAME_BYTES + 1), 20, 0xffff).length);
  });

  it('a silent phone sends nothing', () => {
    const { run, phone } = setup();
    phone.setBehaviour({ fault: 'silent' });
    expect(run().notifications).toBe(0);
  });

  it('an answer replayed from an earlier connection is replayed', () => {
    const { run, phone } = setup();
    expect(run().verdict?.proof).toBe('valid');
    phone.setBehaviour({ fault: 'replay' });
    expect(run().verdict?.proof).toBe('replayed');
  });

  it('a passive answer reaches the vehicle flagged passive', () => {
    const { run, phone } = setup();
    phone.setBehaviour({ explicitIntent: false });
    expect(run().verdict).toMatchObject({ proof: 'valid', explicitIntent: false });
  });

  it('sends nothing to a central that did not subscribe', () => {
    const { run, peer } = setup();
    const r = run(1500, false);
    expect(r.notifications).toBe(0);
    expect(peer.stats.dropped).toBeGreaterThan(0);
  });

  it('a disconnect cancels a pending answer', () => {
    const { time, phone, peer } = setup();
    phone.setBehaviour({ answerDelayMs: 100 });
    const sent: Uint8Array[] = [];
    peer.notify = (c) => sent.push(c);
    peer.onSubscribe(true);
    const session = AgentSession.open({
      vehicleId: vehicle.vehicleId,
      answerWindowMs: 1000,
      now: 0,
      randomBytes: countingRandom(),
      signAsVehicle: vehicle.sign,
    });
    for (const c of chunkFrame(session.hello, 20)) peer.onWrite(c);
    expect(time.pending).toBe(1);
    peer.onDisconnect();
    time.advance(1000);
    expect(sent).toEqual([]);
    expect(peer.isSubscribed).toBe(false);
  });

  it('answers bad chunks from the vehicle with an abort', () => {
    const { time, peer } = setup();
    const sent: Uint8Array[] = [];
    peer.notify = (c) => sent.push(c);
    peer.onSubscribe(true);
    peer.onWrite(Uint8Array.of(0x03, 1, 2));
    peer.onWrite(Uint8Array.of(0x80, 0x10, 0x00, 1));
    time.advance(1);
    const reassembler = new FrameReassembler();
    const frames = sent.map((c) => reassembler.push(c, 0)).filter((f) => f !== undefined);
    expect(frames.map((f) => decodeMessage(f))).toEqual([
      { type: 'abort', version: 1, code: 'malformed' },
      { type: 'abort', version: 1, code: 'frame_too_large' },
    ]);
    expect(peer.stats.rejected).toBe(2);
  });
});
