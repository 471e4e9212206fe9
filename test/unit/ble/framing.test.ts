import { describe, expect, it } from 'vitest';
import { MAX_FRAME_BYTES, REASSEMBLY_TIMEOUT_MS } from '../../../src/ble/protocol/constants.js';
import { chunkBytesForMtu, chunkFrame, FrameReassembler } from '../../../src/ble/protocol/framing.js';
import { AgentError } from '../../../src/core/errors.js';
import { seededRandom } from './fixtures.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    expect(err).toBeInstanceOf(AgentError);
    return (err as AgentError).code;
  }
}

function reassembleAll(r: FrameReassembler, chunks: readonly Uint8Array[], now = 0): Uint8Array[] {
  const frames: Uint8Array[] = [];
  for (const c of chunks) {
    const f = r.push(c, now);
    if (f) frames.push(f);
  }
  return frames;
}

describe('chunkFrame', () => {
  const rnd = seededRandom(7);

  it.each([4, 5, 20, 23, 64, 182, 244, 509, 512])(
    'splits and rebuilds frames at %i bytes per chunk',
    (size) => {
      for (const length of [1, 2, size - 3, size - 2, size, size + 1, 3 * size, MAX_FRAME_BYTES]) {
        if (length < 1 || length > MAX_FRAME_BYTES) continue;
        const frame = rnd.bytes(length);
        const chunks = chunkFrame(frame, size);
        for (const c of chunks) expect(c.length).toBeLessThanOrEqual(size);
        expect(chunks[0]?.[0]).toBe(0x80);
        expect(((chunks[0]?.[1] ?? 0) << 8) | (chunks[0]?.[2] ?? 0)).toBe(length);
        chunks.slice(1).forEach((c, i) => {
          expect(c[0]).toBe((i + 1) & 0x7f);
        });
        const frames = reassembleAll(new FrameReassembler(), chunks);
        expect(frames).toEqual([frame]);
      }
    },
  );

  it('fills every chunk but the last', () => {
    const chunks = chunkFrame(new Uint8Array(100), 20);
    // 17 bytes in the first chunk, 19 in each continuation: 17 + 19*4 = 93, then 7.
    expect(chunks.map((c) => c.length)).toEqual([20, 20, 20, 20, 20, 8]);
  });

  it('numbers chunks modulo 128 for frames of more than 128 chunks', () => {
    const frame = rnd.bytes(600);
    const chunks = chunkFrame(frame, 4, 1000);
    expect(chunks.length).toBeGreaterThan(128);
    expect(chunks[128]?.[0]).toBe(0);
    expect(reassembleAll(new FrameReassembler({ maxFrameBytes: 1000 }), chunks)).toEqual([frame]);
  });

  it('refuses empty and oversized frames and impossible chunk sizes', () => {
    expect(codeOf(() => chunkFrame(new Uint8Array(0), 20))).toBe('malformed');
    expect(codeOf(() => chunkFrame(new Uint8Array(MAX_FRAME_BYTES + 1), 20))).toBe('frame_too_large');
    expect(codeOf(() => chunkFrame(new Uint8Array(10), 3))).toBe('internal');
    expect(codeOf(() => chunkFrame(new Uint8Array(10), 513))).toBe('internal');
  });

  it('derives chunk sizes from the ATT MTU', () => {
    expect(chunkBytesForMtu(23)).toBe(20);
    expect(chunkBytesForMtu(185)).toBe(182);
    expect(chunkBytesForMtu(517)).toBe(512);
    expect(chunkBytesForMtu(1000)).toBe(512);
    expect(chunkBytesForMtu(0)).toBe(20);
  });
});

describe('FrameReassembler', () => {
  const frame = Uint8Array.from({ length: 60 }, (_, i) => i);
  const chunks = chunkFrame(frame, 20); // 4 chunks

  it('returns frames one after another on the same link', () => {
    const r = new FrameReassembler();
    const other = Uint8Array.of(9, 8, 7);
    expect(reassembleAll(r, [...chunks, ...chunkFrame(other, 20), ...chunks])).toEqual([frame, other, frame]);
    expect(r.pending).toBe(false);
  });

  it('drops a partial frame after the timeout; its late continuation is malformed', () => {
    const r = new FrameReassembler();
    expect(r.push(chunks[0] as Uint8Array, 0)).toBeUndefined();
    expect(r.push(chunks[1] as Uint8Array, 10)).toBeUndefined();
    expect(r.expire(REASSEMBLY_TIMEOUT_MS)).toBe(false);
    expect(codeOf(() => r.push(chunks[2] as Uint8Array, REASSEMBLY_TIMEOUT_MS + 1))).toBe('malformed');
    expect(r.abandoned).toBe(1);
    // A fresh frame after that is fine.
    expect(reassembleAll(r, chunks, REASSEMBLY_TIMEOUT_MS + 2)).toEqual([frame]);
  });

  it('expire() reports a dropped partial frame', () => {
    const r = new FrameReassembler({ timeoutMs: 50 });
    r.push(chunks[0] as Uint8Array, 100);
    expect(r.pending).toBe(true);
    expect(r.expire(151)).toBe(true);
    expect(r.pending).toBe(false);
  });

  it('rejects an oversized frame once and swallows the rest of it', () => {
    const r = new FrameReassembler();
    const big = chunkFrame(new Uint8Array(MAX_FRAME_BYTES + 1), 20, 0xffff);
    expect(codeOf(() => r.push(big[0] as Uint8Array, 0))).toBe('frame_too_large');
    for (const c of big.slice(1)) expect(r.push(c, 1)).toBeUndefined();
    expect(reassembleAll(r, chunks, 2)).toEqual([frame]);
  });

  it('honours a smaller maximum', () => {
    const r = new FrameReassembler({ maxFrameBytes: 59 });
    expect(codeOf(() => r.push(chunks[0] as Uint8Array, 0))).toBe('frame_too_large');
  });

  it('rejects a lost chunk (sequence gap) and recovers on the next frame', () => {
    const r = new FrameReassembler();
    r.push(chunks[0] as Uint8Array, 0);
    expect(codeOf(() => r.push(chunks[2] as Uint8Array, 0))).toBe('malformed');
    expect(r.push(chunks[3] as Uint8Array, 0)).toBeUndefined();
    expect(reassembleAll(r, chunks)).toEqual([frame]);
  });

  it('rejects a repeated chunk', () => {
    const r = new FrameReassembler();
    r.push(chunks[0] as Uint8Array, 0);
    r.push(chunks[1] as Uint8Array, 0);
    expect(codeOf(() => r.push(chunks[1] as Uint8Array, 0))).toBe('malformed');
  });

  it('abandons a truncated frame when a new one starts', () => {
    const r = new FrameReassembler();
    r.push(chunks[0] as Uint8Array, 0);
    r.push(chunks[1] as Uint8Array, 0);
    expect(reassembleAll(r, chunks)).toEqual([frame]);
    expect(r.abandoned).toBe(1);
  });

  it('rejects malformed chunks with coded errors', () => {
    const bad: [string, Uint8Array][] = [
      ['empty chunk', new Uint8Array(0)],
      ['continuation with no first chunk', Uint8Array.of(0x01, 1, 2)],
      ['first chunk with a sequence number', Uint8Array.of(0x81, 0, 1, 7)],
      ['first chunk without its length', Uint8Array.of(0x80, 0)],
      ['zero length', Uint8Array.of(0x80, 0, 0)],
      ['more data than the length', Uint8Array.of(0x80, 0, 1, 7, 7)],
    ];
    for (const [what, chunk] of bad) {
      expect(
        codeOf(() => new FrameReassembler().push(chunk, 0)),
        what,
      ).toBe('malformed');
    }
    const r = new FrameReassembler();
    r.push(Uint8Array.of(0x80, 0, 3, 1), 0);
    expect(codeOf(() => r.push(Uint8Array.of(0x01), 0))).toBe('malformed');
    const s = new FrameReassembler();
    s.push(Uint8Array.of(0x80, 0, 3, 1), 0);
    expect(codeOf(() => s.push(Uint8Array.of(0x01, 2, 3, 4), 0))).toBe('malformed');
  });

  it('holds at most one frame of at most the maximum size, whatever it is fed', () => {
    const rnd = seededRandom(11);
    const r = new FrameReassembler();
    for (let i = 0; i < 20_000; i++) {
      const chunk = rnd.bytes(1 + rnd.int(40));
      try {
        const f = r.push(chunk, i);
        if (f) expect(f.length).toBeLessThanOrEqual(MAX_FRAME_BYTES);
      } catch (err) {
        expect(err).toBeInstanceOf(AgentError);
        expect(['malformed', 'frame_too_large']).toContain((err as AgentError).code);
      }
    }
  });
});
