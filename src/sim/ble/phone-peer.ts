import { randomBytes } from 'node:crypto';
import { DEFAULT_CHUNK_BYTES, MAX_FRAME_BYTES, REASSEMBLY_TIMEOUT_MS } from '../../ble/protocol/constants.js';
import {
  CHUNK_SEQ_MASK,
  chunkBytesForMtu,
  chunkFrame,
  FrameReassembler,
} from '../../ble/protocol/framing.js';
import { encodeAbort } from '../../ble/protocol/messages.js';
import { isAgentError } from '../../core/errors.js';
import { type Logger, silentLogger } from '../../core/logger.js';
import type { GattPeer } from './gatt-peer.js';
import type { PhoneKey, PhoneReply } from './phone.js';

/**
 * The simulated phone behind a GATT server (the BlueZ stand-in's device): reassembles what the
 * vehicle writes, hands whole messages to the PhoneKey, and notifies its replies in chunks of
 * the ATT MTU. Transport faults of the phone's behaviour (garbage_chunks, oversized,
 * drop_notification) happen here. Replies are always sent from a timer, never inside the
 * write call, as a real phone answers after the write response.
 */

/** Schedules `callback` after `ms`; returns a function that cancels it. Injected by tests. */
export type ScheduleFn = (callback: () => void, ms: number) => () => void;

export const realSchedule: ScheduleFn = (callback, ms) => {
  // setTimeout(…, 0) waits at least 1 ms in Node: an immediate reply would look 1 ms slower.
  if (ms <= 0) {
    const immediate = setImmediate(callback);
    return () => clearImmediate(immediate);
  }
  const timer = setTimeout(callback, ms);
  return () => clearTimeout(timer);
};

export interface PhonePeerOptions {
  /** Bytes per notification: ATT_MTU - 3. Default 20 (MTU 23). */
  readonly chunkBytes?: number;
  readonly maxFrameBytes?: number;
  readonly reassemblyTimeoutMs?: number;
  /** Monotonic ms. */
  readonly now?: () => number;
  readonly schedule?: ScheduleFn;
  readonly randomBytes?: (length: number) => Uint8Array;
  /** Notify only after the central subscribed, as a real GATT server does. Default true. */
  readonly requireSubscription?: boolean;
  readonly log?: Logger;
}

export interface PhonePeerStats {
  /** ATT writes received. */
  writes: number;
  /** Notifications sent. */
  notifications: number;
  /** Notifications not sent: the drop_notification fault, or no subscriber. */
  dropped: number;
  /** Bad chunks or frames received from the vehicle. */
  rejected: number;
}

export class PhonePeer implements GattPeer {
  /** Installed by the stand-in before any write. */
  notify: (bytes: Uint8Array) => void = () => {};
  chunkBytes: number;
  readonly stats: PhonePeerStats = { writes: 0, notifications: 0, dropped: 0, rejected: 0 };
  private subscribed = false;
  private readonly reassembler: FrameReassembler;
  private readonly now: () => number;
  private readonly schedule: ScheduleFn;
  private readonly random: (length: number) => Uint8Array;
  private readonly requireSubscription: boolean;
  private readonly log: Logger;
  private readonly pending = new Set<() => void>();

  constructor(
    readonly phone: PhoneKey,
    options: PhonePeerOptions = {},
  ) {
    this.chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    this.reassembler = new FrameReassembler({
      maxFrameBytes: options.maxFrameBytes ?? MAX_FRAME_BYTES,
      timeoutMs: options.reassemblyTimeoutMs ?? REASSEMBLY_TIMEOUT_MS,
    });
    this.now = options.now ?? (() => performance.now());
    this.schedule = options.schedule ?? realSchedule;
    this.random = options.randomBytes ?? ((length) => new Uint8Array(randomBytes(length)));
    this.requireSubscription = options.requireSubscription ?? true;
    this.log = options.log ?? silentLogger;
  }

  /** The negotiated ATT MTU (the stand-in calls this when it models an MTU exchange). */
  setMtu(attMtu: number): void {
    this.chunkBytes = chunkBytesForMtu(attMtu);
  }

  get isSubscribed(): boolean {
    return this.subscribed;
  }

  onWrite(bytes: Uint8Array): void {
    this.stats.writes++;
    let frame: Uint8Array | undefined;
    try {
      frame = this.reassembler.push(bytes, this.now());
    } catch (err) {
      this.stats.rejected++;
      const code = isAgentError(err) && err.code === 'frame_too_large' ? 'frame_too_large' : 'malformed';
      this.log.debug({ code }, 'phone rejected a chunk from the vehicle');
      this.later({ kind: 'abort', message: encodeAbort(code), delayMs: 0 });
      return;
    }
    if (frame === undefined) return;
    const reply = this.phone.receive(frame);
    if (reply !== undefined) this.later(reply);
  }

  onSubscribe(subscribed: boolean): void {
    this.subscribed = subscribed;
  }

  /** The link dropped: cancel pending replies and forget partial frames. */
  onDisconnect(): void {
    for (const cancel of this.pending) cancel();
    this.pending.clear();
    this.reassembler.reset();
    this.subscribed = false;
  }

  /** Cancels pending replies (end of a test or of sim mode). */
  close(): void {
    this.onDisconnect();
  }

  private later(reply: PhoneReply): void {
    const cancel = this.schedule(() => {
      this.pending.delete(cancel);
      this.send(reply);
    }, reply.delayMs);
    this.pending.add(cancel);
  }

  private send(reply: PhoneReply): void {
    const fault = reply.kind === 'answer' ? this.phone.behaviour.fault : undefined;
    let chunks: Uint8Array[];
    if (fault === 'oversized') {
      // Valid framing announcing one byte more than the maximum frame.
      chunks = chunkFrame(this.random(MAX_FRAME_BYTES + 1), this.chunkBytes, 0xffff);
    } else if (fault === 'garbage_chunks') {
      // Continuation chunks (FIRST bit clear) with no first chunk: never valid framing.
      chunks = [0, 1, 2].map(() => {
        const chunk = this.random(this.chunkBytes);
        chunk[0] = (chunk[0] ?? 0) & CHUNK_SEQ_MASK;
        return chunk;
      });
    } else {
      chunks = chunkFrame(reply.message, this.chunkBytes);
    }
    if (fault === 'drop_notification') {
      chunks.pop();
      this.stats.dropped++;
    }
    for (const chunk of chunks) this.emit(chunk);
  }

  private emit(chunk: Uint8Array): void {
    if (this.requireSubscription && !this.subscribed) {
      this.stats.dropped++;
      this.log.debug('phone has no subscriber; notification not sent');
      return;
    }
    this.stats.notifications++;
    this.notify(chunk);
  }
}
