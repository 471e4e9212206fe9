/**
 * An LCUS-type USB relay board on the far end of a serial line (tests and `--sim` rigs). It reads
 * the board's 4-byte commands (A0, channel, state, sum) from the bytes it is fed, written
 * independently of the driver's encoder so that both sides are checked against the wire format.
 * Like the board's firmware it hunts for A0 through garbage, and it ignores frames with a wrong
 * sum, a channel it does not have, or a state other than 0 and 1.
 */

export interface LcusBoardEvent {
  /** 1-based board channel. */
  readonly channel: number;
  readonly on: boolean;
  /** Wall time, ms since the epoch. */
  readonly atMs: number;
}

export interface LcusBoardStats {
  /** Frames accepted. */
  readonly frames: number;
  /** Bytes dropped while hunting for a frame start. */
  readonly skippedBytes: number;
  readonly badChecksum: number;
  readonly badChannel: number;
  readonly badState: number;
}

/** What the emulator reads from: a serial link (or anything with the same onData). */
export interface ByteSource {
  onData(listener: (bytes: Uint8Array) => void): () => void;
}

const START = 0xa0;
const FRAME_LENGTH = 4;

export class LcusBoardEmulator {
  private readonly relays: boolean[];
  private readonly wallNow: () => number;
  private readonly events: LcusBoardEvent[] = [];
  private readonly listeners = new Set<(event: LcusBoardEvent) => void>();
  private pending: number[] = [];
  private counts = { frames: 0, skippedBytes: 0, badChecksum: 0, badChannel: 0, badState: 0 };

  constructor(options: { channels?: number; wallNow?: () => number } = {}) {
    this.relays = new Array<boolean>(options.channels ?? 8).fill(false);
    this.wallNow = options.wallNow ?? Date.now;
  }

  /** Feeds the emulator from a link until the returned function is called. */
  attach(source: ByteSource): () => void {
    return source.onData((bytes) => this.feed(bytes));
  }

  /** Feeds received bytes; frames may arrive split across calls. */
  feed(bytes: Uint8Array): void {
    for (const byte of bytes) this.pending.push(byte);
    for (;;) {
      const start = this.pending.indexOf(START);
      if (start < 0) {
        this.counts.skippedBytes += this.pending.length;
        this.pending = [];
        return;
      }
      if (start > 0) {
        this.counts.skippedBytes += start;
        this.pending = this.pending.slice(start);
      }
      if (this.pending.length < FRAME_LENGTH) return;
      const [, channel = 0, state = 0, sum = 0] = this.pending;
      if (((START + channel + state) & 0xff) !== sum) {
        // Not a frame after all: resume the hunt from the next byte, which may start a real one.
        this.counts.badChecksum += 1;
        this.counts.skippedBytes += 1;
        this.pending = this.pending.slice(1);
        continue;
      }
      this.pending = this.pending.slice(FRAME_LENGTH);
      if (channel < 1 || channel > this.relays.length) {
        this.counts.badChannel += 1;
      } else if (state > 1) {
        this.counts.badState += 1;
      } else {
        this.counts.frames += 1;
        this.apply(channel, state === 1);
      }
    }
  }

  isOn(channel: number): boolean {
    return this.relays[channel - 1] ?? false;
  }

  /** States of channels 1..n. */
  states(): boolean[] {
    return [...this.relays];
  }

  /** Every accepted command, oldest first (repeats included: the board obeys each one). */
  timeline(): readonly LcusBoardEvent[] {
    return [...this.events];
  }

  stats(): LcusBoardStats {
    return { ...this.counts };
  }

  onCommand(listener: (event: LcusBoardEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private apply(channel: number, on: boolean): void {
    this.relays[channel - 1] = on;
    const event: LcusBoardEvent = { channel, on, atMs: this.wallNow() };
    this.events.push(event);
    if (this.events.length > 10_000) this.events.splice(0, this.events.length - 10_000);
    for (const listener of this.listeners) listener(event);
  }
}
