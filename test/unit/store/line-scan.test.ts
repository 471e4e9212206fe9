import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { planRecovery, scanLines, scanLinesAsync } from '../../../src/store/line-scan.js';
import { reconstructLine } from '../../../src/store/salvage.js';

/** A checksummed line: `<crc32> <text>`, decoded back to its text. */
function line(text: string): string {
  return `${crc32(Buffer.from(text)).toString(16).padStart(8, '0')} ${text}\n`;
}
const decode = (l: Buffer): string => {
  const text = l.subarray(9).toString();
  if (crc32(l.subarray(9)).toString(16).padStart(8, '0') !== l.subarray(0, 8).toString())
    throw new Error('checksum mismatch');
  return text;
};

function plan(content: string) {
  const bytes = Buffer.from(content, 'latin1');
  const p = planRecovery(scanLines(bytes, decode), bytes.length);
  return {
    valid: p.valid.map((l) => l.value),
    corrupt: p.corrupt.map((l) => l.line),
    corruptTail: p.corruptTail.map((l) => l.line),
    tornBytes: p.tornBytes,
  };
}

const a = line('a');
const b = line('b');
const damaged = line('c').replace(' c', ' C');

describe('torn write or damage (line-scan.ts)', () => {
  it.each([
    ['clean', a + b, { valid: ['a', 'b'], corrupt: [], corruptTail: [], tornBytes: 0 }],
    [
      'an incomplete last line is torn',
      a + b.slice(0, 5),
      { valid: ['a'], corrupt: [], corruptTail: [], tornBytes: 5 },
    ],
    [
      'zeros at the end are torn',
      `${a}${'\0'.repeat(4096)}`,
      { valid: ['a'], corrupt: [], corruptTail: [], tornBytes: 4096 },
    ],
    [
      'a complete damaged LAST line is damage',
      a + damaged,
      { valid: ['a'], corrupt: [2], corruptTail: [2], tornBytes: 0 },
    ],
    [
      'a damaged middle line is damage',
      damaged + a,
      { valid: ['a'], corrupt: [1], corruptTail: [], tornBytes: 0 },
    ],
    [
      'zeros then the end of a line (a multi-page write torn by a power cut) read as damage',
      `${a}${'\0'.repeat(100)}xyz\n`,
      { valid: ['a'], corrupt: [2], corruptTail: [2], tornBytes: 0 },
    ],
    [
      'damage, then a torn tail',
      a + damaged + b.slice(0, 3),
      { valid: ['a'], corrupt: [2], corruptTail: [2], tornBytes: 3 },
    ],
    [
      'an empty complete line is damage',
      `${a}\n`,
      { valid: ['a'], corrupt: [2], corruptTail: [2], tornBytes: 0 },
    ],
  ])('%s', (_what, content, expected) => {
    expect(plan(content)).toEqual(expected);
  });
});

describe('scanning in slices (scanLinesAsync)', () => {
  // Valid lines, a damaged one, a line that is not a record, a blank one and a torn tail.
  const content = Buffer.from(
    `${Array.from({ length: 500 }, (_, i) => line(`op ${i}`)).join('')}${damaged}garbage\n\n${line('z')}${line('torn').slice(0, 5)}`,
    'latin1',
  );

  it('finds the same lines as scanLines', async () => {
    expect(await scanLinesAsync(content, decode)).toEqual(scanLines(content, decode));
    expect(await scanLinesAsync(Buffer.alloc(0), decode)).toEqual([]);
  });

  it('lets the event loop turn between slices (the keyring ops of a running agent: ~450 ms at 100 000)', async () => {
    let turns = 0;
    let ticking = true;
    const tick = () => {
      turns += 1;
      if (ticking) setImmediate(tick);
    };
    setImmediate(tick);
    const scanning = scanLinesAsync(content, decode, 0);
    const turnsAtStart = turns;
    const lines = await scanning;
    ticking = false;
    expect(lines).toHaveLength(505);
    // Slices of 0 ms: one batch of lines each, so the loop turned several times meanwhile.
    expect(turns - turnsAtStart).toBeGreaterThanOrEqual(5);
  });
});

describe('rebuilding a line damaged in both copies (salvage.ts)', () => {
  const original = Buffer.from(line('{"k":"fido:abc","v":987654}').slice(0, -1));
  const verifies = (l: Buffer) => {
    try {
      decode(l);
      return true;
    } catch {
      return false;
    }
  };
  const flip = (bytes: Buffer, at: number) => {
    const copy = Buffer.from(bytes);
    copy[at] = (copy[at] ?? 0) ^ 0x10;
    return copy;
  };

  it.each([
    ['different bytes', 12, 25, true],
    ['the checksum in one, the body in the other', 3, 20, true],
    ['the same byte', 20, 20, false],
  ])('%s', (_what, atA, atB, rebuilt) => {
    const result = reconstructLine(flip(original, atA), flip(original, atB), verifies);
    if (rebuilt) expect(result).toEqual(original);
    else expect(result).toBeUndefined();
  });

  it('gives up on copies of different lengths', () => {
    expect(reconstructLine(original, Buffer.concat([original, Buffer.from('x')]), verifies)).toBeUndefined();
  });
});
