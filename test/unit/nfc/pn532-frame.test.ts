import { describe, expect, it } from 'vitest';
import { isAgentError } from '../../../src/core/errors.js';
import {
  ACK_FRAME,
  checksum,
  ERROR_FRAME,
  encodeFrame,
  FrameDecoder,
  type FrameEvent,
  MAX_EXTENDED_LEN,
  NACK_FRAME,
  TFI_CHIP,
  TFI_HOST,
} from '../../../src/nfc/pn532/frame.js';

function hex(s: string): Uint8Array {
  const clean = s.replace(/\s+/g, '');
  return Uint8Array.from(clean.match(/../g) ?? [], (b) => Number.parseInt(b, 16));
}

function frames(events: FrameEvent[]): { tfi: number; data: Uint8Array; extended: boolean }[] {
  return events.flatMap((e) =>
    e.type === 'frame' ? [{ tfi: e.tfi, data: e.data, extended: e.extended }] : [],
  );
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function kinds(events: FrameEvent[]): string[] {
  return events.map((e) => e.type);
}

/** Deterministic PRNG (xorshift32) so a failing fuzz case can be replayed. */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n: number) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

describe('PN532 frame encoding (vectors from the PN532 user manual and a libnfc trace)', () => {
  it('encodes normal command frames', () => {
    expect(encodeFrame(TFI_HOST, hex('02'))).toEqual(hex('00 00 FF 02 FE D4 02 2A 00'));
    expect(encodeFrame(TFI_HOST, hex('14 01'))).toEqual(hex('00 00 FF 03 FD D4 14 01 17 00'));
    expect(encodeFrame(TFI_HOST, hex('4A 01 00'))).toEqual(hex('00 00 FF 04 FC D4 4A 01 00 E1 00'));
    expect(encodeFrame(TFI_HOST, hex('00 00 6C 69 62 6E 66 63'))).toEqual(
      hex('00 00 FF 09 F7 D4 00 00 6C 69 62 6E 66 63 BE 00'),
    );
  });

  it('encodes the firmware answer of a PN532 v1.6', () => {
    expect(encodeFrame(TFI_CHIP, hex('03 32 01 06 07'))).toEqual(
      hex('00 00 FF 06 FA D5 03 32 01 06 07 E8 00'),
    );
  });

  it('has the fixed ACK, NACK and error frames', () => {
    expect(ACK_FRAME).toEqual(hex('00 00 FF 00 FF 00'));
    expect(NACK_FRAME).toEqual(hex('00 00 FF FF 00 00'));
    expect(ERROR_FRAME).toEqual(hex('00 00 FF 01 FF 7F 81 00'));
  });

  it('switches to an extended frame above 254 data bytes, with LENm LENl LCS', () => {
    const data = new Uint8Array(264).map((_, i) => i & 0xff);
    const frame = encodeFrame(TFI_HOST, data);
    // LEN = 265 = 0x0109; LCS = -(0x01 + 0x09) = 0xF6
    expect(Array.from(frame.subarray(0, 8))).toEqual([0x00, 0x00, 0xff, 0xff, 0xff, 0x01, 0x09, 0xf6]);
    expect(frame.length).toBe(8 + 265 + 2);
    expect(frame[frame.length - 2]).toBe(checksum([TFI_HOST, ...data]));
    expect(encodeFrame(TFI_HOST, new Uint8Array(254))[3]).toBe(255); // still normal
    expect(encodeFrame(TFI_HOST, new Uint8Array(255))[3]).toBe(0xff); // extended marker
    expect(encodeFrame(TFI_HOST, hex('02'), { extended: true })).toEqual(
      hex('00 00 FF FF FF 00 02 FE D4 02 2A 00'),
    );
  });

  it('refuses a frame larger than the PN532 takes, with frame_too_large', () => {
    let caught: unknown;
    try {
      encodeFrame(TFI_HOST, new Uint8Array(MAX_EXTENDED_LEN));
    } catch (err) {
      caught = err;
    }
    expect(isAgentError(caught) && caught.code).toBe('frame_too_large');
  });
});

describe('PN532 frame decoding', () => {
  const fwAnswer = hex('00 00 FF 06 FA D5 03 32 01 06 07 E8 00');

  it('decodes ACK, NACK, the error frame and information frames', () => {
    const d = new FrameDecoder();
    const events = d.push(new Uint8Array([...ACK_FRAME, ...NACK_FRAME, ...ERROR_FRAME, ...fwAnswer]));
    expect(kinds(events)).toEqual(['ack', 'nack', 'error-frame', 'frame']);
    expect(frames(events)).toEqual([{ tfi: TFI_CHIP, data: hex('03 32 01 06 07'), extended: false }]);
    expect(d.buffered).toBeLessThanOrEqual(1);
  });

  it('decodes a frame split at every possible point', () => {
    const stream = new Uint8Array([...ACK_FRAME, ...fwAnswer]);
    for (let cut = 1; cut < stream.length; cut++) {
      const d = new FrameDecoder();
      const events = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
      expect(kinds(events)).toEqual(['ack', 'frame']);
    }
  });

  it('decodes a stream fed one byte at a time', () => {
    const extended = encodeFrame(TFI_CHIP, new Uint8Array(263).fill(0x5a));
    const stream = new Uint8Array([...fwAnswer, ...extended, ...ACK_FRAME]);
    const d = new FrameDecoder();
    const events = Array.from(stream).flatMap((b) => d.push(Uint8Array.of(b)));
    expect(kinds(events)).toEqual(['frame', 'frame', 'ack']);
    expect(frames(events)[1]?.extended).toBe(true);
    expect(frames(events)[1]?.data).toEqual(new Uint8Array(263).fill(0x5a));
  });

  it('skips garbage between frames and reports it, ignoring zero filler', () => {
    const d = new FrameDecoder();
    const wake = hex('55 55 00 00 00 00 00 00');
    const events = d.push(new Uint8Array([...wake, ...ACK_FRAME, 0x12, 0x34, 0xff, ...fwAnswer, 0x00, 0x00]));
    expect(kinds(events)).toEqual(['garbage', 'ack', 'garbage', 'frame']);
    expect(events[0]).toEqual({ type: 'garbage', bytes: 2 });
    expect(events[2]).toEqual({ type: 'garbage', bytes: 3 });
  });

  it('reports a bad data checksum and still decodes the next frame', () => {
    const bad = fwAnswer.slice();
    bad[10] = 0x08; // one data byte changed: DCS no longer matches
    const d = new FrameDecoder();
    const events = d.push(new Uint8Array([...bad, ...ACK_FRAME]));
    expect(kinds(events).filter((k) => k !== 'garbage' && k !== 'bad-length')).toEqual([
      'bad-checksum',
      'ack',
    ]);
    expect(events.find((e) => e.type === 'bad-checksum')).toEqual({
      type: 'bad-checksum',
      tfi: TFI_CHIP,
      length: 6,
    });
  });

  it('reports a bad length checksum and resynchronises', () => {
    const d = new FrameDecoder();
    const events = d.push(new Uint8Array([...hex('00 00 FF 06 FB D5 03'), ...fwAnswer]));
    expect(kinds(events).filter((k) => k !== 'garbage')).toEqual(['bad-length', 'frame']);
  });

  it('rejects an extended frame longer than the limit', () => {
    const d = new FrameDecoder();
    const events = d.push(new Uint8Array([...hex('00 00 FF FF FF 10 00 F0'), ...ACK_FRAME]));
    expect(events.find((e) => e.type === 'oversize')).toEqual({ type: 'oversize', length: 0x1000 });
    expect(kinds(events)).toContain('ack');
    expect(d.buffered).toBeLessThanOrEqual(1);
  });

  it('finds a real frame inside noise that looked like a frame header, once the line goes quiet', () => {
    // 00 FF 10 F0 is a valid normal header announcing 16 bytes: the ACK that follows sits inside it.
    const d = new FrameDecoder();
    const first = d.push(new Uint8Array([...hex('00 FF 10 F0 42'), ...ACK_FRAME]));
    expect(kinds(first)).not.toContain('ack');
    expect(d.hasPartial()).toBe(true);
    expect(kinds(d.flush())).toContain('ack');
    expect(d.buffered).toBe(0);
  });

  it('finds a real frame inside a false header once enough bytes arrive to fail its checksum', () => {
    const d = new FrameDecoder();
    const events = d.push(new Uint8Array([...hex('00 FF 05 FB 42'), ...ACK_FRAME, ...fwAnswer]));
    expect(kinds(events)).toContain('ack');
    expect(frames(events).map((f) => f.data)).toContainEqual(hex('03 32 01 06 07'));
  });

  it('never holds more than its capacity, whatever it is fed', () => {
    const d = new FrameDecoder();
    const big = new Uint8Array(100_000).map((_, i) => (i % 7 === 0 ? 0x00 : i % 11 === 0 ? 0xff : i & 0xff));
    d.push(big);
    expect(d.buffered).toBeLessThanOrEqual(d.capacity);
    // A header announcing the largest accepted frame, then nothing: held, bounded, flushed.
    d.push(hex('00 00 FF FF FF 01 09 F6 D5'));
    expect(d.buffered).toBeLessThanOrEqual(d.capacity);
    d.flush();
    expect(d.buffered).toBe(0);
  });
});

describe('PN532 frame decoder fuzz', () => {
  it('survives 100 000 mutated frames: no throw, bounded buffer, and the next valid frame is decoded', () => {
    const rand = rng(0x5eed_1234);
    const d = new FrameDecoder();
    const randomBytes = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => rand(256));
    const pick = (): Uint8Array => {
      const r = rand(10);
      if (r === 0) return ACK_FRAME.slice();
      if (r === 1) return NACK_FRAME.slice();
      if (r === 2) return ERROR_FRAME.slice();
      const length = rand(4) === 0 ? 250 + rand(MAX_EXTENDED_LEN - 250) : rand(40);
      return encodeFrame(rand(2) ? TFI_CHIP : TFI_HOST, randomBytes(length));
    };
    const mutate = (frame: Uint8Array): Uint8Array => {
      let out = frame;
      const rounds = 1 + rand(3);
      for (let k = 0; k < rounds; k++) {
        const op = rand(5);
        if (op === 0 && out.length > 0) {
          out = out.slice();
          const at = rand(out.length);
          out[at] = (out[at] ?? 0) ^ (1 << rand(8)); // bit flip
        } else if (op === 1 && out.length > 0) {
          out = out.subarray(0, rand(out.length)); // truncation
        } else if (op === 2) {
          const at = rand(out.length + 1);
          out = new Uint8Array([...out.subarray(0, at), ...randomBytes(1 + rand(8)), ...out.subarray(at)]); // insertion
        } else if (op === 3) {
          // a stray start code, the worst kind of noise
          const at = rand(out.length + 1);
          out = new Uint8Array([
            ...out.subarray(0, at),
            0x00,
            0xff,
            rand(256),
            rand(256),
            ...out.subarray(at),
          ]);
        } else {
          out = new Uint8Array([...randomBytes(rand(6)), ...out]); // leading garbage
        }
      }
      return out;
    };
    const feed = (bytes: Uint8Array): FrameEvent[] => {
      const events: FrameEvent[] = [];
      let offset = 0;
      while (offset < bytes.length) {
        const size = 1 + rand(rand(4) === 0 ? 300 : 24);
        events.push(...d.push(bytes.subarray(offset, offset + size)));
        offset += size;
        if (d.buffered > d.capacity) throw new Error(`buffer grew to ${d.buffered}`);
      }
      return events;
    };

    let mutatedFramesFed = 0;
    let quietRounds = 0;
    let busyRounds = 0;
    let busyLosses = 0;
    for (let i = 0; i < 100_000; i++) {
      feed(mutate(pick()));
      mutatedFramesFed++;
      const quiet = rand(2) === 0;
      const sentinelData = randomBytes(1 + rand(30));
      let events: FrameEvent[];
      if (quiet) {
        // The line goes quiet between the noise and the next frame (the driver's inter-byte gap).
        d.flush();
        if (d.buffered !== 0) throw new Error(`flush left ${d.buffered} bytes after mutated frame ${i}`);
        events = feed(encodeFrame(TFI_CHIP, sentinelData));
        quietRounds++;
      } else {
        // The sentinel follows the noise at once: a false header may claim its bytes, and the
        // decoder must give them back when that false frame fails its checksum.
        events = [...feed(encodeFrame(TFI_CHIP, sentinelData)), ...d.flush()];
        busyRounds++;
      }
      const found = frames(events).some((f) => f.tfi === TFI_CHIP && sameBytes(f.data, sentinelData));
      if (!found) {
        if (quiet) throw new Error(`sentinel lost after mutated frame ${i}`);
        busyLosses++;
      }
      d.flush();
    }
    expect(mutatedFramesFed).toBe(100_000);
    expect(quietRounds + busyRounds).toBe(100_000);
    // Only a false frame whose checksums both happen to match can swallow the sentinel (~1/65536
    // per false header, more for truncated real frames whose header is genuine).
    expect(busyLosses).toBeLessThan(busyRounds * 0.005);
  });

  it('without a quiet gap, noise never makes the decoder lose frames for good', () => {
    const rand = rng(0xc0ffee);
    const d = new FrameDecoder();
    for (let i = 0; i < 20_000; i++) {
      const noise = Uint8Array.from({ length: rand(40) }, () =>
        rand(3) === 0 ? ([0x00, 0xff][rand(2)] ?? 0) : rand(256),
      );
      d.push(noise);
      if (d.buffered > d.capacity) throw new Error(`buffer grew to ${d.buffered}`);
      // Noise may swallow the first copy into a false frame; after a flush the second gets through.
      d.push(ACK_FRAME);
      d.flush();
      if (!kinds(d.push(ACK_FRAME)).includes('ack')) throw new Error(`ACK lost after noise round ${i}`);
    }
  });
});
