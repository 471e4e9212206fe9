import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import { Journal } from '../../../src/store/journal.js';
import { faultyFiles } from '../../helpers/faulty-file.js';
import { ManualTimers, settle } from '../../helpers/manual-timers.js';
import { fillUp, freeUp, mountTmpfs, type ScratchFs } from '../../helpers/scratch-fs.js';
import { useTempDir } from './temp-dir.js';

/**
 * The journal's write path when the disk fails: a failed fdatasync, a write cut short, a restore
 * that itself fails for a while, durable data that vanished; and a real tmpfs that fills up and
 * frees again. After every failure the file must hold exactly the acknowledged records and the
 * journal must take appends again by itself once the disk does.
 */

const tempDir = useTempDir('journal-faults');

interface Rec {
  readonly id: number;
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

async function reopenIds(path: string): Promise<number[]> {
  const { journal, records } = await Journal.open<Rec>(path);
  await journal.close();
  return records.map((r) => r.id);
}

describe('Journal write failures (injected)', () => {
  it('after a failed fdatasync, cuts the written batch off through a fresh handle and appends again', async () => {
    const path = join(tempDir(), 'j');
    const files = faultyFiles();
    const { journal } = await Journal.open<Rec>(path, { openFile: files.open });
    await journal.append({ id: 1 });
    const durableBytes = readFileSync(path).length;
    const opensBefore = files.calls.filter((c) => c === 'open').length;
    files.faults.push({ on: 'datasync', errno: 'EIO' });
    const err = await rejection(journal.append({ id: 2 }));
    expect(err.code).toBe('state_io');
    expect(err.details).toMatchObject({ errno: 'EIO', file: path });
    // The write itself went through; the restore cut it back to the durable length.
    expect(readFileSync(path).length).toBe(durableBytes);
    expect(files.calls.filter((c) => c === 'open')).toHaveLength(opensBefore + 1);
    expect(journal.failed).toBeUndefined();
    await journal.append({ id: 3 });
    expect(journal.writeHealth).toMatchObject({ state: 'ok', failures: 1, lastError: { code: 'EIO' } });
    await journal.close();
    expect(await reopenIds(path)).toEqual([1, 3]);
  });

  it('a staged append whose fdatasync fails was written, then is cut off; `durable` says so', async () => {
    const path = join(tempDir(), 'j');
    const files = faultyFiles();
    const { journal } = await Journal.open<Rec>(path, { openFile: files.open });
    files.faults.push({ on: 'datasync', errno: 'EIO' });
    const { durable } = await journal.appendEncodedStaged(journal.encode({ id: 1 }));
    await expect(durable).rejects.toMatchObject({ code: 'state_io' });
    expect(readFileSync(path).length).toBe(0);
    await journal.close();
  });

  it('after a write cut short by ENOSPC, removes the partial record and appends after the last good one', async () => {
    const path = join(tempDir(), 'j');
    const files = faultyFiles();
    const { journal } = await Journal.open<Rec>(path, { openFile: files.open });
    await journal.append({ id: 1 });
    files.faults.push({ on: 'write', errno: 'ENOSPC', bytes: 7 });
    expect((await rejection(journal.append({ id: 2 }))).details).toMatchObject({ errno: 'ENOSPC' });
    await journal.append({ id: 3 });
    await journal.close();
    expect(await reopenIds(path)).toEqual([1, 3]);
    expect(readFileSync(path, 'utf8').split('\n').filter(Boolean)).toHaveLength(2);
  });

  it('refuses at once while it cannot restore, retries with backoff, and resumes by itself', async () => {
    const path = join(tempDir(), 'j');
    const files = faultyFiles();
    const timers = new ManualTimers();
    const { journal } = await Journal.open<Rec>(path, {
      openFile: files.open,
      writeQueue: { timers, wallNow: () => 5_000 + timers.now() },
    });
    await journal.append({ id: 1 });
    files.faults.push(
      { on: 'datasync', errno: 'EIO' },
      { on: 'open', errno: 'EIO' },
      { on: 'open', errno: 'EIO' },
    );
    await rejection(journal.append({ id: 2 }));
    await settle();
    expect(journal.writeHealth).toMatchObject({ state: 'failing', failingSince: 5_000 });
    expect((await rejection(journal.append({ id: 3 }))).code).toBe('state_io');
    await timers.advance(100); // second attempt: open fails again
    await vi.waitFor(() => expect(files.faults).toEqual([]));
    expect(journal.writeHealth.state).toBe('failing');
    await timers.advance(200); // third: works (through the thread pool: wait for it)
    await vi.waitFor(() => expect(journal.writeHealth.state).toBe('ok'));
    await journal.append({ id: 4 });
    expect(journal.writeHealth.failingSince).toBeUndefined();
    await journal.close();
    expect(await reopenIds(path)).toEqual([1, 4]);
  });

  it('latches with state_corrupt when durable records vanished from the file', async () => {
    const path = join(tempDir(), 'j');
    const files = faultyFiles();
    const { journal } = await Journal.open<Rec>(path, { openFile: files.open });
    await journal.append({ id: 1 });
    await journal.append({ id: 2 });
    writeFileSync(path, readFileSync(path).subarray(0, 5)); // someone cut the file
    files.faults.push({ on: 'datasync', errno: 'EIO' });
    await rejection(journal.append({ id: 3 }));
    await settle();
    expect(journal.writeHealth.state).toBe('latched');
    expect((await rejection(journal.append({ id: 4 }))).code).toBe('state_corrupt');
    await journal.close();
  });

  it('latches with state_corrupt when the last durable record no longer reads back', async () => {
    const path = join(tempDir(), 'j');
    const files = faultyFiles();
    const { journal } = await Journal.open<Rec>(path, { openFile: files.open });
    await journal.append({ id: 1 });
    const bytes = readFileSync(path);
    bytes.writeUInt8((bytes.at(-3) ?? 0) ^ 0x01, bytes.length - 3); // a flipped bit in the last record
    writeFileSync(path, bytes);
    files.faults.push({ on: 'datasync', errno: 'EIO' });
    await rejection(journal.append({ id: 2 }));
    await settle();
    expect(journal.writeHealth.state).toBe('latched');
    expect((await rejection(journal.append({ id: 3 }))).message).toMatch(/does not read back/);
    await journal.close();
  });

  it('a failed rewrite (its snapshot could not be written) leaves the journal as it was and usable', async () => {
    const path = join(tempDir(), 'j');
    const { journal } = await Journal.open<Rec>(path);
    await journal.append({ id: 1 });
    const err = await rejection(
      journal.rewrite([], async () => {
        throw new AgentError('state_io', 'cannot write the snapshot: ENOSPC', { errno: 'ENOSPC' });
      }),
    );
    expect(err.code).toBe('state_io');
    await journal.append({ id: 2 });
    await journal.close();
    expect(await reopenIds(path)).toEqual([1, 2]);
  });
});

describe('Journal on a real filesystem that fills up (tmpfs)', () => {
  let fs: ScratchFs | undefined;
  afterEach(() => {
    fs?.dispose();
    fs = undefined;
  });

  it('fails appends with ENOSPC while full, keeps only acknowledged records, and resumes when space returns', async () => {
    fs = mountTmpfs(256 * 1024);
    const path = join(fs.dir, 'j');
    const { journal } = await Journal.open<Rec>(path);
    const filler = fillUp(fs.dir);
    // A new page for the file is needed: the empty journal has none.
    const refused = await rejection(journal.append({ id: 1 }));
    expect(refused.details).toMatchObject({ errno: 'ENOSPC' });
    expect(readFileSync(path).length).toBe(0);
    // Still full: every attempt fails the same way, none leaves a byte behind.
    for (let i = 0; i < 5; i++) await rejection(journal.append({ id: 100 + i }));
    expect(readFileSync(path).length).toBe(0);
    expect(journal.writeHealth).toMatchObject({ failures: 6, lastError: { code: 'ENOSPC' } });
    expect(journal.writeHealth.failingSince).toBeGreaterThan(0);
    freeUp(filler);
    await journal.append({ id: 2 });
    await journal.append({ id: 3 });
    expect(journal.writeHealth.state).toBe('ok');
    expect(journal.writeHealth.failingSince).toBeUndefined();
    await journal.close();
    expect(await reopenIds(path)).toEqual([2, 3]);
  });
});
