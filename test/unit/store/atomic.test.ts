import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import {
  readFileIfExists,
  readJsonFile,
  readJsonFileIfExists,
  writeFileAtomic,
  writeFileAtomicSync,
} from '../../../src/store/atomic.js';
import { useTempDir } from './temp-dir.js';

const tempDir = useTempDir('atomic');

async function rejection(promise: Promise<unknown>): Promise<AgentError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw new Error(`expected an AgentError, got ${String(err)}`);
  }
  throw new Error('expected a rejection');
}

describe('writeFileAtomic', () => {
  it('writes the content with mode 0600 and leaves no temp file', async () => {
    const dir = tempDir();
    const file = join(dir, 'state.json');
    await writeFileAtomic(file, '{"a":1}');
    expect(readFileSync(file, 'utf8')).toBe('{"a":1}');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir)).toEqual(['state.json']);
  });

  it('replaces an existing file, honours a given mode and writes bytes as they are', async () => {
    const dir = tempDir();
    const file = join(dir, 'blob');
    writeFileSync(file, 'old content that is longer', { mode: 0o644 });
    await writeFileAtomic(file, new Uint8Array([0, 1, 2, 255]), { mode: 0o640 });
    expect([...readFileSync(file)]).toEqual([0, 1, 2, 255]);
    expect(statSync(file).mode & 0o777).toBe(0o640);
    expect(readdirSync(dir)).toEqual(['blob']);
  });

  it('lands concurrent writes to one path in call order', async () => {
    const file = join(tempDir(), 'counter');
    await Promise.all(Array.from({ length: 20 }, (_, i) => writeFileAtomic(file, String(i))));
    expect(readFileSync(file, 'utf8')).toBe('19');
  });

  it('removes temp files left by a dead writer but keeps those of a live one', async () => {
    const dir = tempDir();
    const file = join(dir, 'state.json');
    const deadTemp = '.state.json.tmp-999999999-aaaaaaaaaaaa'; // above any Linux pid_max
    const liveTemp = `.state.json.tmp-${process.ppid}-bbbbbbbbbbbb`;
    const otherFile = '.other.json.tmp-999999999-cccccccccccc';
    for (const name of [deadTemp, liveTemp, otherFile]) writeFileSync(join(dir, name), 'half');
    await writeFileAtomic(file, 'new');
    expect(readdirSync(dir).sort()).toEqual([otherFile, liveTemp, 'state.json'].sort());
  });

  it('fails with state_io naming the file when the directory does not exist', async () => {
    const file = join(tempDir(), 'missing', 'state.json');
    const err = await rejection(writeFileAtomic(file, 'x'));
    expect(err.code).toBe('state_io');
    expect(err.details.file).toBe(file);
  });
});

describe('writeFileAtomicSync', () => {
  it('writes, replaces with mode 0600 and cleans stale temps', () => {
    const dir = tempDir();
    const file = join(dir, 'floor.json');
    writeFileSync(join(dir, '.floor.json.tmp-999999999-dddddddddddd'), 'half');
    writeFileAtomicSync(file, 'one');
    writeFileAtomicSync(file, 'two');
    expect(readFileSync(file, 'utf8')).toBe('two');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir)).toEqual(['floor.json']);
  });

  it('throws state_io for a missing directory', () => {
    const file = join(tempDir(), 'nope', 'x');
    expect(() => writeFileAtomicSync(file, 'x')).toThrow(expect.objectContaining({ code: 'state_io' }));
  });
});

describe('reading state files', () => {
  it('readFileIfExists returns undefined for a missing file and bytes otherwise', async () => {
    const dir = tempDir();
    expect(await readFileIfExists(join(dir, 'none'))).toBeUndefined();
    writeFileSync(join(dir, 'some'), 'abc');
    expect((await readFileIfExists(join(dir, 'some')))?.toString()).toBe('abc');
  });

  it('reports a directory in place of a file as state_io', async () => {
    const dir = tempDir();
    mkdirSync(join(dir, 'sub'));
    expect((await rejection(readFileIfExists(join(dir, 'sub')))).code).toBe('state_io');
  });

  it('parses and validates JSON', async () => {
    const file = join(tempDir(), 'ok.json');
    writeFileSync(file, '{"version":3}');
    const parse = (value: unknown): { version: number } => {
      if (
        typeof value === 'object' &&
        value !== null &&
        typeof (value as { version?: unknown }).version === 'number'
      ) {
        return value as { version: number };
      }
      throw new Error('version missing');
    };
    expect(await readJsonFile(file, { parse })).toEqual({ version: 3 });
    expect(await readJsonFileIfExists(`${file}.none`, { parse })).toBeUndefined();
  });

  it('reports a missing file as state_io', async () => {
    const file = join(tempDir(), 'none.json');
    const err = await rejection(readJsonFile(file));
    expect(err.code).toBe('state_io');
    expect(err.details.file).toBe(file);
  });

  it.each([
    ['empty', Buffer.alloc(0), 'empty'],
    ['truncated JSON', Buffer.from('{"version":'), 'not valid JSON'],
    ['invalid UTF-8', Buffer.from([0x22, 0xff, 0xfe, 0x22]), 'UTF-8'],
  ])('reports %s content as state_corrupt naming the file and the problem', async (_name, bytes, problem) => {
    const file = join(tempDir(), 'bad.json');
    writeFileSync(file, bytes);
    const err = await rejection(readJsonFile(file));
    expect(err.code).toBe('state_corrupt');
    expect(err.details.file).toBe(file);
    expect(err.message).toContain(file);
    expect(String(err.details.problem)).toContain(problem);
  });

  it('reports content the parser refuses as state_corrupt with the parser reason', async () => {
    const file = join(tempDir(), 'wrong.json');
    writeFileSync(file, '{"versio":3}');
    const err = await rejection(
      readJsonFile(file, {
        parse: () => {
          throw new Error('version missing');
        },
      }),
    );
    expect(err.code).toBe('state_corrupt');
    expect(err.message).toContain('version missing');
  });
});
