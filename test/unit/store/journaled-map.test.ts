import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import { JournaledMap } from '../../../src/store/journaled-map.js';
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

  it('reports a corrupt snapshot as state_corrupt naming the file', async () => {
    const base = join(tempDir(), 'c');
    writeFileSync(`${base}.snapshot.json`, '{"format":"journaled-map/1","entries":[["a"');
    const err = await rejection(JournaledMap.open(base));
    expect(err.code).toBe('state_corrupt');
    expect(err.details.file).toBe(`${base}.snapshot.json`);
    expect(readFileSync(`${base}.snapshot.json`, 'utf8')).toContain('entries');
  });

  it('reports a snapshot value its parser refuses as state_corrupt', async () => {
    const base = join(tempDir(), 'c');
    writeFileSync(
      `${base}.snapshot.json`,
      JSON.stringify({ format: 'journaled-map/1', entries: [['a', 'three']] }),
    );
    expect((await rejection(JournaledMap.open(base, { parseValue: isCounter }))).code).toBe('state_corrupt');
  });
});
