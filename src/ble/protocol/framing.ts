import { AgentError } from '../../core/errors.js';
import {
  DEFAULT_CHUNK_BYTES,
  MAX_CHUNK_BYTES,
  MAX_FRAME_BYTES,
  MIN_CHUNK_BYTES,
  REASSEMBLY_TIMEOUT_MS,
} from './constants.js';

/**
 * Framing of the vehicle-key protocol: one message = one frame; a frame travels as one or more
 * chunks, each one ATT write or notification. Identical in both directions and for either side
 * being GATT central, so the same code runs with the vehicle as central or as server.
 *
 * Chunk = header (1 byte) ‖ data
 *   header bit 7    FIRST: set on the first chunk of a frame only
 *   header bits 6-0 SEQ:   chunk index within the frame modulo 128 (first chunk 0)
 * First chunk data = frame length (u16 big-endian, 1..max) ‖ the first frame bytes.
 * Continuation data = the next frame bytes. A chunk never carries bytes of two frames.
 */

export const CHUNK_FIRST = 0x80;
export const CHUNK_SEQ_MASK = 0x7f;
/** Header byte plus the two length bytes of a first chunk. */
export const FIRST_CHUNK_OVERHEAD = 3;

function checkChunkBytes(chunkBytes: number): void {
  if (!Number.isInteger(chunkBytes) || chunkBytes < MIN_CHUNK_BYTES || chunkBytes > MAX_CHUNK_BYTES) {
    throw new AgentError('internal', `chunk size must be an integer ${MIN_CHUNK_BYTES}..${MAX_CHUNK_BYTES}`, {
      chunkBytes,
    });
  }
}

function checkMaxFrame(maxFrameBytes: number): void {
  if (!Number.isInteger(maxFrameBytes) || maxFrameBytes < 1 || maxFrameBytes > 0xffff) {
    throw new AgentError('internal', 'maximum frame size must be an integer 1..65535', { maxFrameBytes });
  }
}

/** Bytes per chunk for a negotiated ATT MTU: MTU less the 3-byte ATT header, at most 512. */
export function chunkBytesForMtu(attMtu: number): number {
  if (!Number.isInteger(attMtu) || attMtu < 23) return DEFAULT_CHUNK_BYTES;
  return Math.min(attMtu - 3, MAX_CHUNK_BYTES);
}

/** Splits one message into chunks of at most `chunkBytes` bytes each. */
export function chunkFrame(
  frame: Uint8Array,
  chunkBytes: number = DEFAULT_CHUNK_BYTES,
  maxFrameBytes: number = MAX_FRAME_BYTES,
): Uint8Array[] {
  checkChunkBytes(chunkBytes);
  checkMaxFrame(maxFrameBytes);
  if (frame.length === 0) throw new AgentError('malformed', 'a frame carries at least one byte');
  if (frame.length > maxFrameBytes) {
    throw new AgentError('frame_too_large', `frame of ${frame.length} bytes exceeds ${maxFrameBytes}`, {
      length: frame.length,
      max: maxFrameBytes,
    });
  }
  const chunks: Uint8Array[] = [];
  const firstData = Math.min(frame.length, chunkBytes - FIRST_CHUNK_OVERHEAD);
  const first = new Uint8Array(FIRST_CHUNK_OVERHEAD + firstData);
  first[0] = CHUNK_FIRST;
  first[1] = frame.length >> 8;
  first[2] = frame.length & 0xff;
  first.set(frame.subarray(0, firstData), FIRST_CHUNK_OVERHEAD);
  chunks.push(first);
  let offset = firstData;
  let seq = 1;
  while (offset < frame.length) {
    const take = Math.min(frame.length - offset, chunkBytes - 1);
    const chunk = new Uint8Array(1 + take);
    chunk[0] = seq & CHUNK_SEQ_MASK;
    chunk.set(frame.subarray(offset, offset + take), 1);
    chunks.push(chunk);
    offset += take;
    seq++;
  }
  return chunks;
}

export interface ReassemblerOptions {
  readonly maxFrameBytes?: number;
  readonly timeoutMs?: number;
}

type ReassemblyState =
  | { readonly kind: 'idle' }
  | {
      readonly kind: 'collecting';
      readonly buffer: Uint8Array;
      filled: number;
      nextSeq: number;
      readonly startedAt: number;
    }
  /** After an error inside a frame: swallow its remaining chunks until a first chunk or timeout. */
  | { readonly kind: 'discarding'; readonly startedAt: number };

const IDLE: ReassemblyState = { kind: 'idle' };

/**
 * Rebuilds frames from chunks. Holds at most one partial frame of at most `maxFrameBytes`.
 * `push` returns a complete frame, or undefined while one is incomplete, and throws AgentError
 * 'malformed' or 'frame_too_large' for bad chunks. After an error the rest of that frame is
 * ignored, so one bad frame costs one error, not one per chunk.
 */
export class FrameReassembler {
  readonly maxFrameBytes: number;
  readonly timeoutMs: number;
  private state: ReassemblyState = IDLE;
  /** Partial frames given up (timeout, or a new first chunk arrived before the last was complete). */
  abandoned = 0;

  constructor(options: ReassemblerOptions = {}) {
    this.maxFrameBytes = options.maxFrameBytes ?? MAX_FRAME_BYTES;
    this.timeoutMs = options.timeoutMs ?? REASSEMBLY_TIMEOUT_MS;
    checkMaxFrame(this.maxFrameBytes);
    if (!(this.timeoutMs > 0)) throw new AgentError('internal', 'reassembly timeout must be positive');
  }

  /** True while a frame is partly received. */
  get pending(): boolean {
    return this.state.kind === 'collecting';
  }

  reset(): void {
    this.state = IDLE;
  }

  /** Drops a partial frame older than the timeout. Returns true when one was dropped. */
  expire(nowMs: number): boolean {
    if (this.state.kind === 'idle' || nowMs - this.state.startedAt <= this.timeoutMs) return false;
    const wasCollecting = this.state.kind === 'collecting';
    if (wasCollecting) this.abandoned++;
    this.state = IDLE;
    return wasCollecting;
  }

  push(chunk: Uint8Array, nowMs: number): Uint8Array | undefined {
    this.expire(nowMs);
    const header = chunk[0];
    if (header === undefined) throw this.fail('empty chunk', nowMs);
    if ((header & CHUNK_FIRST) !== 0) return this.first(chunk, header, nowMs);
    return this.continuation(chunk, header, nowMs);
  }

  private first(chunk: Uint8Array, header: number, nowMs: number): Uint8Array | undefined {
    if (this.state.kind === 'collecting') this.abandoned++;
    this.state = IDLE;
    if ((header & CHUNK_SEQ_MASK) !== 0)
      throw this.fail('first chunk with a non-zero sequence number', nowMs);
    if (chunk.length < FIRST_CHUNK_OVERHEAD) throw this.fail('first chunk shorter than its header', nowMs);
    const length = ((chunk[1] ?? 0) << 8) | (chunk[2] ?? 0);
    if (length === 0) throw this.fail('frame length 0', nowMs);
    if (length > this.maxFrameBytes) {
      this.state = { kind: 'discarding', startedAt: nowMs };
      throw new AgentError('frame_too_large', `frame of ${length} bytes exceeds ${this.maxFrameBytes}`, {
        length,
        max: this.maxFrameBytes,
      });
    }
    const data = chunk.subarray(FIRST_CHUNK_OVERHEAD);
    if (data.length > length) throw this.fail('first chunk carries more bytes than the frame length', nowMs);
    if (data.length === length) return data.slice();
    const buffer = new Uint8Array(length);
    buffer.set(data, 0);
    this.state = { kind: 'collecting', buffer, filled: data.length, nextSeq: 1, startedAt: nowMs };
    return undefined;
  }

  private continuation(chunk: Uint8Array, header: number, nowMs: number): Uint8Array | undefined {
    const state = this.state;
    if (state.kind === 'discarding') return undefined;
    if (state.kind === 'idle') throw this.fail('continuation chunk without a first chunk', nowMs);
    if (header !== state.nextSeq) throw this.fail('chunk out of sequence (one was lost or repeated)', nowMs);
    const data = chunk.subarray(1);
    if (data.length === 0) throw this.fail('empty continuation chunk', nowMs);
    if (state.filled + data.length > state.buffer.length) {
      throw this.fail('chunks carry more bytes than the frame length', nowMs);
    }
    state.buffer.set(data, state.filled);
    state.filled += data.length;
    state.nextSeq = (state.nextSeq + 1) & CHUNK_SEQ_MASK;
    if (state.filled < state.buffer.length) return undefined;
    this.state = IDLE;
    return state.buffer;
  }

  private fail(message: string, nowMs: number): AgentError {
    this.state = { kind: 'discarding', startedAt: nowMs };
    return new AgentError('malformed', `bad chunk: ${message}`);
  }
}
