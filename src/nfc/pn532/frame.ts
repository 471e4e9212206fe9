import { AgentError } from '../../core/errors.js';

/**
 * PN532 host-link frames (PN532 User Manual UM0701-02 §6.2.1). Pure: no I/O, no timers.
 *
 *   normal    00 00 FF LEN LCS TFI PD0..PDn DCS 00          LEN = bytes of TFI+PD (1..255)
 *   extended  00 00 FF FF FF LENm LENl LCS TFI PD.. DCS 00  LEN = LENm·256+LENl
 *   ACK       00 00 FF 00 FF 00
 *   NACK      00 00 FF FF 00 00
 *   error     00 00 FF 01 FF 7F 81 00                        (application-level error, TFI slot = 7F)
 *
 * LCS makes LEN+LCS ≡ 0 (mod 256); DCS makes TFI+PD0+..+PDn+DCS ≡ 0 (mod 256).
 * The decoder synchronises on the start code 00 FF; the preamble and postamble zeros are optional
 * filler (the HSU wake-up sends many of them).
 */

export const TFI_HOST = 0xd4;
export const TFI_CHIP = 0xd5;
/** The TFI slot of the application-level error frame. */
export const TFI_ERROR = 0x7f;

export const ACK_FRAME: Uint8Array = Uint8Array.of(0x00, 0x00, 0xff, 0x00, 0xff, 0x00);
export const NACK_FRAME: Uint8Array = Uint8Array.of(0x00, 0x00, 0xff, 0xff, 0x00, 0x00);
export const ERROR_FRAME: Uint8Array = Uint8Array.of(0x00, 0x00, 0xff, 0x01, 0xff, 0x7f, 0x81, 0x00);

/** Largest TFI+PD a normal frame holds. */
export const MAX_NORMAL_LEN = 255;
/**
 * Largest TFI+PD the PN532 handles in an extended frame: TFI, command, Tg/status and the 262 data
 * bytes of InDataExchange.
 */
export const MAX_EXTENDED_LEN = 265;

/** The two's-complement checksum: the byte that brings the sum of `bytes` to 0 mod 256. */
export function checksum(bytes: Iterable<number>): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return (0x100 - sum) & 0xff;
}

/**
 * Encodes an information frame carrying TFI ‖ data. A normal frame when it fits (TFI+data ≤ 255),
 * an extended frame otherwise or when `extended` is set.
 */
export function encodeFrame(tfi: number, data: Uint8Array, options: { extended?: boolean } = {}): Uint8Array {
  const len = data.length + 1;
  if (len > MAX_EXTENDED_LEN) {
    throw new AgentError(
      'frame_too_large',
      `a PN532 frame holds at most ${MAX_EXTENDED_LEN - 1} data bytes`,
      {
        length: data.length,
      },
    );
  }
  let dataSum = tfi & 0xff;
  for (const b of data) dataSum = (dataSum + b) & 0xff;
  const dcs = (0x100 - dataSum) & 0xff;
  const extended = options.extended === true || len > MAX_NORMAL_LEN;
  const header = extended
    ? [0x00, 0x00, 0xff, 0xff, 0xff, len >> 8, len & 0xff, checksum([len >> 8, len & 0xff])]
    : [0x00, 0x00, 0xff, len, checksum([len])];
  const out = new Uint8Array(header.length + len + 2);
  out.set(header, 0);
  out[header.length] = tfi & 0xff;
  out.set(data, header.length + 1);
  out[header.length + len] = dcs;
  out[header.length + len + 1] = 0x00;
  return out;
}

export type FrameEvent =
  | { readonly type: 'ack' }
  | { readonly type: 'nack' }
  | { readonly type: 'error-frame' }
  | { readonly type: 'frame'; readonly tfi: number; readonly data: Uint8Array; readonly extended: boolean }
  /** A start code was followed by a length whose checksum failed (usually line noise). */
  | { readonly type: 'bad-length' }
  /** A complete frame whose data checksum failed. */
  | { readonly type: 'bad-checksum'; readonly tfi: number; readonly length: number }
  /** A frame announcing more data than the decoder accepts. */
  | { readonly type: 'oversize'; readonly length: number }
  /** Non-zero bytes skipped while hunting for a start code (zeros are preamble/postamble filler). */
  | { readonly type: 'garbage'; readonly bytes: number };

export interface FrameDecoderOptions {
  /** Largest TFI+PD accepted (default MAX_EXTENDED_LEN). */
  readonly maxLength?: number;
}

type Parse =
  | { readonly kind: 'need-more' }
  | { readonly kind: 'reject'; readonly event: FrameEvent | undefined }
  | { readonly kind: 'accept'; readonly event: FrameEvent; readonly consumed: number };

/**
 * Incremental decoder. Feed it chunks of any size; it returns the events the chunk completed.
 * Only an incomplete candidate frame is ever kept, so the buffer never exceeds `capacity` bytes.
 * A candidate that fails a check is abandoned by one byte only, so a real frame hiding inside
 * noise that looked like a frame header is still found.
 */
export class FrameDecoder {
  readonly capacity: number;
  private readonly maxLength: number;
  private readonly buffer: Uint8Array;
  private length = 0;
  private skipped = 0;

  constructor(options: FrameDecoderOptions = {}) {
    this.maxLength = Math.min(options.maxLength ?? MAX_EXTENDED_LEN, 0xffff);
    // The largest extended frame: 00 00 FF FF FF LENm LENl LCS + LEN + DCS + 00.
    this.capacity = 8 + this.maxLength + 2;
    this.buffer = new Uint8Array(this.capacity);
  }

  /** Bytes held for a frame not yet complete. */
  get buffered(): number {
    return this.length;
  }

  /** True when the buffer holds the beginning of a frame that needs more bytes. */
  hasPartial(): boolean {
    return this.length > 0;
  }

  push(chunk: Uint8Array): FrameEvent[] {
    const events: FrameEvent[] = [];
    let offset = 0;
    while (offset < chunk.length) {
      const room = this.capacity - this.length;
      const take = Math.min(room, chunk.length - offset);
      this.buffer.set(chunk.subarray(offset, offset + take), this.length);
      this.length += take;
      offset += take;
      this.drain(events, false);
    }
    return events;
  }

  /**
   * The line went quiet: the partial candidate will never complete. Abandons it (rescanning what
   * follows it for complete frames) and empties the buffer.
   */
  flush(): FrameEvent[] {
    const events: FrameEvent[] = [];
    this.drain(events, true);
    this.length = 0;
    this.reportSkipped(events);
    return events;
  }

  /** Forgets everything buffered (a new session on the line). */
  reset(): void {
    this.length = 0;
    this.skipped = 0;
  }

  private drain(events: FrameEvent[], quiet: boolean): void {
    let pos = 0;
    for (;;) {
      const start = this.findStart(pos);
      if (start < 0) {
        // Keep a trailing 00 that may begin the next start code; everything before it is skipped.
        const keepFrom =
          this.length > 0 && this.buffer[this.length - 1] === 0x00 && !quiet ? this.length - 1 : this.length;
        this.countSkipped(pos, keepFrom);
        this.compact(keepFrom);
        this.reportSkipped(events);
        return;
      }
      this.countSkipped(pos, start);
      const parse = this.parseAt(start);
      if (parse.kind === 'need-more') {
        if (quiet) {
          // Abandon this candidate by one byte and look further.
          this.countSkipped(start, start + 1);
          pos = start + 1;
          continue;
        }
        this.compact(start);
        this.reportSkipped(events);
        return;
      }
      if (parse.kind === 'reject') {
        this.reportSkipped(events);
        if (parse.event) events.push(parse.event);
        pos = start + 1;
        continue;
      }
      this.reportSkipped(events);
      events.push(parse.event);
      pos = start + parse.consumed;
    }
  }

  /** Index of the next start code 00 FF at or after `from`, or -1. */
  private findStart(from: number): number {
    for (let i = from; i + 1 < this.length; i++) {
      if (this.buffer[i] === 0x00 && this.buffer[i + 1] === 0xff) return i;
    }
    return -1;
  }

  private at(i: number): number {
    return this.buffer[i] ?? 0;
  }

  /** Parses the frame whose start code 00 FF is at `start`. */
  private parseAt(start: number): Parse {
    const avail = this.length - start;
    if (avail < 4) return { kind: 'need-more' };
    const b2 = this.at(start + 2);
    const b3 = this.at(start + 3);
    if (b2 === 0x00 && b3 === 0xff) return { kind: 'accept', event: { type: 'ack' }, consumed: 4 };
    if (b2 === 0xff && b3 === 0x00) return { kind: 'accept', event: { type: 'nack' }, consumed: 4 };
    let len: number;
    let bodyAt: number;
    let extended = false;
    if (b2 === 0xff && b3 === 0xff) {
      if (avail < 7) return { kind: 'need-more' };
      const hi = this.at(start + 4);
      const lo = this.at(start + 5);
      if (((hi + lo + this.at(start + 6)) & 0xff) !== 0)
        return { kind: 'reject', event: { type: 'bad-length' } };
      len = (hi << 8) | lo;
      bodyAt = start + 7;
      extended = true;
    } else {
      if (((b2 + b3) & 0xff) !== 0) return { kind: 'reject', event: { type: 'bad-length' } };
      len = b2;
      bodyAt = start + 4;
    }
    if (len === 0) return { kind: 'reject', event: { type: 'bad-length' } };
    if (len > this.maxLength) return { kind: 'reject', event: { type: 'oversize', length: len } };
    // TFI+PD then DCS; the postamble is not required.
    if (this.length - bodyAt < len + 1) return { kind: 'need-more' };
    let sum = 0;
    for (let i = bodyAt; i <= bodyAt + len; i++) sum = (sum + this.at(i)) & 0xff;
    const tfi = this.at(bodyAt);
    if (sum !== 0) return { kind: 'reject', event: { type: 'bad-checksum', tfi, length: len } };
    const consumed = bodyAt + len + 1 - start;
    if (len === 1 && tfi === TFI_ERROR) return { kind: 'accept', event: { type: 'error-frame' }, consumed };
    const data = this.buffer.slice(bodyAt + 1, bodyAt + len);
    return { kind: 'accept', event: { type: 'frame', tfi, data, extended }, consumed };
  }

  private countSkipped(from: number, to: number): void {
    for (let i = from; i < to; i++) if (this.buffer[i] !== 0x00) this.skipped++;
  }

  private reportSkipped(events: FrameEvent[]): void {
    if (this.skipped > 0) {
      events.push({ type: 'garbage', bytes: this.skipped });
      this.skipped = 0;
    }
  }

  private compact(from: number): void {
    if (from <= 0) return;
    this.buffer.copyWithin(0, from, this.length);
    this.length -= from;
  }
}
