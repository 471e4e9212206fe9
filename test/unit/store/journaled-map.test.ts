import {
  existsSync,
  readdirSync,
  readFileSync,
  statSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import { COUNTER_MAP_OPTIONS, JournaledMap } from '../../../src/store/journaled-map.js';
import { openStores } from '../../../src/store/store-registry.js';
import { faultyFiles } from '../../helpers/faulty-file.js';
import { useTempDir } from './temp-dir.js';

const tempDir = useTempDir('map');

const isCounter = (value: unknown): number => {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw new Error('not a counter');
  return value;
};

function journalLine(record: unknown): string {
  const json = JSON.stringify(record);
  return `${crc32(Buffer.from(json)).toString(16).padStart(8, '0')} ${json}\n`;
}

async function rejection(promise: Promise<unknown>): Promise<AgentError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw new Error(`expected an AgentError, got ${String(err)}`);
  }
  throw new Error('expected a rejection');
}

describe('JournaledMap', () => {
  it('keeps sets and deletes across reopen', async () => {
    const base = join(tempDir(), 'counters');
    const map = await JournaledMap.open(base, { parseValue: isCounter });
    await map.set('kid-a', 5);
    await map.set('kid-b', 7);
    await map.set('kid-a', 6);
    expect(await map.delete('kid-b')).toBe(true);
    expect(await map.delete('kid-b')).toBe(false);
    await map.close();

    const reopened = await JournaledMap.open(base, { parseValue: isCounter });
    expect([...reopened.entries()]).toEqual([['kid-a', 6]]);
    expect(reopened.size).toBe(1);
    expect(statSync(`${base}.journal`).mode & 0o777).toBe(0o600);
    await reopened.close();
  });

  it('shows a set at once, so a second check-then-set in the same tick sees it', async () => {
    const map = await JournaledMap.open(join(tempDir(), 'c'), { parseValue: isCounter });
    await map.set('kid', 10);
    const accept = (ctr: number): Promise<void> | undefined => {
      if (ctr <= (map.get('kid') ?? 0)) return undefined;
      return map.set('kid', ctr);
    };
    const first = accept(11);
    const replayed = accept(11);
    expect(first).toBeDefined();
    expect(replayed).toBeUndefined();
    await first;
    await map.close();
  });

  it('compacts into a snapshot when the journal grows and reloads the same map', async () => {
    const base = join(tempDir(), 'c');
    const map = await JournaledMap.open(base, { parseValue: isCounter, compactAfterBytes: 1024 });
    const writes: Promise<void>[] = [];
    for (let i = 1; i <= 2000; i += 1) writes.push(map.set(`k${i % 10}`, i));
    await Promise.all(writes);
    await map.close();
    expect(existsSync(`${base}.snapshot.json`)).toBe(true);
    expect(statSync(`${base}.snapshot.json`).mode & 0o777).toBe(0o600);
    expect(statSync(`${base}.journal`).size).toBeLessThan(4096);

    const reopened = await JournaledMap.open(base, { parseValue: isCounter });
    expect(Object.fromEntries(reopened.entries())).toEqual(
      Object.fromEntries(Array.from({ length: 10 }, (_, k) => [`k${k}`, 1990 + (k === 0 ? 10 : k)])),
    );
    await reopened.close();
  });

  it('gives the same map when a crash left a journal the snapshot already holds', async () => {
    const base = join(tempDir(), 'c');
    writeFileSync(
      `${base}.snapshot.json`,
      JSON.stringify({
        format: 'journaled-map/1',
        entries: [
          ['a', 3],
          ['b', 2],
        ],
      }),
    );
    writeFileSync(
      `${base}.journal`,
      [
        { k: 'a', v: 1 },
        { k: 'c', d: 1 },
        { k: 'b', v: 2 },
        { k: 'a', v: 3 },
      ]
        .map(journalLine)
        .join(''),
    );
    const map = await JournaledMap.open(base, { parseValue: isCounter });
    expect(Object.fromEntries(map.entries())).toEqual({ a: 3, b: 2 });
    await map.close();
  });

  it('refuses a value that would not read back, without changing memory', async () => {
    const map = await JournaledMap.open<number>(join(tempDir(), 'c'), { parseValue: isCounter });
    await map.set('k', 1);
    expect((await rejection(map.set('k', 1.5))).code).toBe('internal');
    expect((await rejection(map.set('k', undefined as unknown as number))).code).toBe('internal');
    expect(map.get('k')).toBe(1);
    await map.set('k', 2);
    await map.close();
  });

  it('refuses a value over the size limit with record_too_large, without changing memory', async () => {
    const map = await JournaledMap.open<string>(join(tempDir(), 'c'), { maxRecordBytes: 64 });
    expect((await rejection(map.set('k', 'x'.repeat(100)))).code).toBe('record_too_large');
    expect(map.has('k')).toBe(false);
    await map.close();
  });

  it('opens a map from before mirrors whose only snapshot is damaged, failing secure for every key', async () => {
    const base = join(tempDir(), 'c');
    writeFileSync(`${base}.snapshot.json`, '{"format":"journaled-map/1","entries":[["a"');
    const map = await JournaledMap.open<number>(base, { parseValue: isCounter, ...COUNTER_MAP_OPTIONS });
    expect(map.findings.find((f) => f.file === `${base}.snapshot.json`)).toMatchObject({
      code: 'credential_suspect',
      denied: ['*'],
    });
    // Nothing it held can be trusted: no counter passes.
    expect(map.get('a')).toBe(Number.MAX_SAFE_INTEGER);
    expect(map.get('never-seen')).toBe(Number.MAX_SAFE_INTEGER);
    await map.close();
    // The damaged bytes were kept aside before the snapshot was rewritten.
    expect(readdirSync(dirname(base)).some((n) => n.startsWith('c.snapshot.json.corrupt-'))).toBe(true);
  });

  it('treats a snapshot value its parser refuses as damage', async () => {
    const base = join(tempDir(), 'c');
    writeFileSync(
      `${base}.snapshot.json`,
      JSON.stringify({ format: 'journaled-map/1', entries: [['a', 'three']] }),
    );
    const map = await JournaledMap.open(base, { parseValue: isCounter });
    expect(map.findings[0]?.problem).toContain('unexpected value for a');
    expect(map.suspect('a')).toBeDefined();
    await map.close();
  });
});

/** Flips bits of byte `at` in a file. */
function flip(path: string, at: number, bits = 0x04): void {
  const bytes = readFileSync(path);
  bytes[at] = (bytes[at] ?? 0) ^ bits;
  writeFileSync(path, bytes);
}

/** Byte offset of the start of the last line of a file. */
function lastLineStart(path: string): number {
  const text = readFileSync(path, 'latin1');
  return text.lastIndexOf('\n', text.length - 2) + 1;
}

const COUNTERS = { parseValue: isCounter, ...COUNTER_MAP_OPTIONS };

async function counterMap(base: string, values: [string, number][]): Promise<void> {
  const map = await JournaledMap.open<number>(base, COUNTERS);
  for (const [k, v] of values) await map.set(k, v);
  await map.close();
}

describe('JournaledMap mirror', () => {
  it('writes every change to both copies', async () => {
    const base = join(tempDir(), 'c');
    await counterMap(base, [
      ['fido:a', 10],
      ['fido:b', 20],
    ]);
    expect(readFileSync(`${base}.journal`)).toEqual(readFileSync(`${base}.mirror.journal`));
    const map = await JournaledMap.open<number>(base, COUNTERS);
    expect(map.findings).toEqual([]);
    await map.close();
  });

  it.each([
    ['main', ''],
    ['mirror', '.mirror'],
  ])('a bit flipped anywhere in the last record of the %s journal loses nothing', async (_which, infix) => {
    const dir = tempDir();
    const sample = join(dir, 'sample');
    await counterMap(sample, [
      ['fido:a', 10],
      ['fido:a', 50],
    ]);
    const journal = `${sample}${infix}.journal`;
    const start = lastLineStart(journal);
    const end = readFileSync(journal).length;
    for (let at = start; at < end; at += 1) {
      const base = join(dir, `m${at}`);
      await counterMap(base, [
        ['fido:a', 10],
        ['fido:a', 50],
      ]);
      flip(`${base}${infix}.journal`, at);
      const map = await JournaledMap.open<number>(base, COUNTERS);
      // The counter never goes back: an older signature counter cannot pass.
      expect(map.get('fido:a'), `byte ${at}`).toBe(50);
      expect(map.suspects().size).toBe(0);
      if (at < end - 1) expect(map.findings.map((f) => f.code)).toEqual(['state_repaired']);
      await map.close();
      const again = await JournaledMap.open<number>(base, COUNTERS);
      expect(again.findings).toEqual([]);
      expect(again.get('fido:a')).toBe(50);
      await again.close();
    }
  });

  it('a deleted, emptied or shortened file of one copy loses nothing', async () => {
    const dir = tempDir();
    const cases: [string, (base: string) => void][] = [
      ['main journal deleted', (b) => unlinkSync(`${b}.journal`)],
      ['mirror journal deleted', (b) => unlinkSync(`${b}.mirror.journal`)],
      ['main journal emptied', (b) => truncateSync(`${b}.journal`, 0)],
      [
        'last record cut off the mirror',
        (b) => truncateSync(`${b}.mirror.journal`, lastLineStart(`${b}.mirror.journal`)),
      ],
    ];
    for (const [what, damage] of cases) {
      const base = join(dir, what.replace(/ /g, '-'));
      await counterMap(base, [
        ['fido:a', 7],
        ['fido:b', 70],
      ]);
      damage(base);
      const map = await JournaledMap.open<number>(base, COUNTERS);
      expect([map.get('fido:a'), map.get('fido:b')], what).toEqual([7, 70]);
      expect(map.suspects().size, what).toBe(0);
      await map.close();
    }
  });

  it('a snapshot damaged or deleted in one copy loses nothing', async () => {
    const dir = tempDir();
    for (const [what, damage] of [
      ['flipped', (b: string) => flip(`${b}.snapshot.json`, 30)],
      ['deleted', (b: string) => unlinkSync(`${b}.mirror.snapshot.json`)],
    ] as const) {
      const base = join(dir, what);
      const map = await JournaledMap.open<number>(base, COUNTERS);
      await map.set('fido:a', 5);
      await map.compact();
      await map.set('fido:b', 6);
      await map.close();
      damage(base);
      const again = await JournaledMap.open<number>(base, COUNTERS);
      expect([again.get('fido:a'), again.get('fido:b')], what).toEqual([5, 6]);
      expect(
        again.findings.map((f) => f.code),
        what,
      ).toEqual(['state_repaired']);
      await again.close();
    }
  });

  it('a torn last write (a kill -9 between or during the two writes) is recovered silently', async () => {
    const base = join(tempDir(), 'c');
    await counterMap(base, [['fido:a', 3]]);
    // The write reached the main copy whole and the mirror only in part.
    const record = `${readFileSync(`${base}.journal`, 'utf8')}`;
    writeFileSync(`${base}.journal`, record + journalLine({ k: 'fido:a', v: 4 }));
    writeFileSync(`${base}.mirror.journal`, record + journalLine({ k: 'fido:a', v: 4 }).slice(0, 12));
    const map = await JournaledMap.open<number>(base, COUNTERS);
    expect(map.get('fido:a')).toBe(4);
    expect(map.findings).toEqual([]);
    await map.close();
  });

  it('rebuilds a record damaged in both copies at different bytes', async () => {
    const base = join(tempDir(), 'c');
    await counterMap(base, [
      ['fido:a', 10],
      ['fido:a', 987654],
    ]);
    const at = lastLineStart(`${base}.journal`);
    flip(`${base}.journal`, at + 20);
    flip(`${base}.mirror.journal`, at + 25);
    const map = await JournaledMap.open<number>(base, COUNTERS);
    expect(map.get('fido:a')).toBe(987654);
    expect(map.suspects().size).toBe(0);
    await map.close();
  });

  it('denies what a record lost in both copies named, persists that, and forgets it only when told', async () => {
    const base = join(tempDir(), 'c');
    await counterMap(base, [
      ['fido:a', 10],
      ['fido:b', 20],
      ['fido:a', 987654],
    ]);
    const at = lastLineStart(`${base}.journal`);
    // The same byte in both copies (the counter's digits): nothing can rebuild it.
    const digit = readFileSync(`${base}.journal`, 'latin1').indexOf('987654') + 1;
    expect(digit).toBeGreaterThan(at);
    flip(`${base}.journal`, digit, 0x01);
    flip(`${base}.mirror.journal`, digit, 0x01);
    const map = await JournaledMap.open<number>(base, COUNTERS);
    // The damaged line still names fido:a (a key the map holds): only that key is denied.
    expect([...map.suspects().keys()]).toEqual(['fido:a']);
    expect(map.get('fido:a')).toBe(Number.MAX_SAFE_INTEGER);
    expect(map.get('fido:b')).toBe(20);
    expect(map.findings.every((f) => f.code === 'credential_suspect')).toBe(true);
    await map.close();
    // The damaged lines are gone (rewritten), the suspicion is not.
    const again = await JournaledMap.open<number>(base, COUNTERS);
    expect(again.get('fido:a')).toBe(Number.MAX_SAFE_INTEGER);
    expect(again.findings.map((f) => f.code)).toEqual(['credential_suspect']);
    await again.clearSuspects();
    expect(again.get('fido:a')).toBe(10);
    await again.close();
  });

  it('creates the mirror of a map from before mirrors', async () => {
    const base = join(tempDir(), 'c');
    writeFileSync(`${base}.journal`, journalLine({ k: 'kid', v: 9 }));
    const map = await JournaledMap.open<number>(base, COUNTERS);
    expect(map.get('kid')).toBe(9);
    expect(map.findings).toMatchObject([{ code: 'state_repaired', file: `${base}.mirror.journal` }]);
    await map.close();
    expect(existsSync(`${base}.mirror.snapshot.json`)).toBe(true);
  });
});

describe('JournaledMap write health', () => {
  it('reports a write failure in either copy, named after the failing file', async () => {
    const path = join(tempDir(), 'counters');
    const mirrorFiles = faultyFiles();
    const { open } = await import('node:fs/promises');
    // Faults reach the mirror's journal only; the main copy writes for real.
    const openFile = (file: string, flags: string, mode?: number) =>
      file.includes('.mirror.') ? mirrorFiles.open(file, flags, mode) : open(file, flags, mode);
    const map = await JournaledMap.open<number>(path, {
      ...COUNTER_MAP_OPTIONS,
      parseValue: isCounter,
      openFile,
    });
    await map.set('k', 1);
    expect(map.writeHealth).toMatchObject({ state: 'ok', failures: 0 });
    mirrorFiles.faults.push({ on: 'datasync', errno: 'EIO' });
    await expect(map.set('k', 2)).rejects.toMatchObject({ code: 'state_io' });
    expect(map.writeHealth).toMatchObject({
      failures: 1,
      lastError: { code: 'EIO' },
      store: `${path}.mirror.journal`,
    });
    await map.set('k', 3);
    expect(map.writeHealth.state).toBe('ok');
    expect(map.writeHealth.failingSince).toBeUndefined();
    // Listed with the open stores (health figures) until closed.
    expect(openStores.under(tempDir()).map((s) => s.path)).toEqual([path]);
    expect(openStores.under(tempDir())[0]?.health.failures).toBe(1);
    await map.close();
    expect(openStores.under(tempDir())).toEqual([]);
  });
});
