import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import { Journal } from '../../../src/store/journal.js';
import { useTempDir } from './temp-dir.js';

const tempDir = useTempDir('journal');

interface Rec {
  id: number;
  text: string;
}

const isRec = (value: unknown): Rec => {
  const rec = value as Partial<Rec>;
  if (typeof rec?.id !== 'number' || typeof rec.text !== 'string') throw new Error('not a Rec');
  return rec as Rec;
};

/** The line format, built independently of the implementation. */
function line(record: unknown): string {
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

describe('Journal', () => {
  it('creates the file 0600 and round-trips records in order in the documented line format', async () => {
    const path = join(tempDir(), 'j');
    const first = await Journal.open<Rec>(path, { parse: isRec });
    expect(first.records).toEqual([]);
    expect(first.recovery).toEqual({ created: true, truncatedBytes: 0, corrupt: [] });
    const records = [
      { id: 1, text: 'a' },
      { id: 2, text: 'line\nbreak and ünïcødé' },
      { id: 3, text: '' },
    ];
    for (const record of records) await first.journal.append(record);
    await first.journal.close();
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(readFileSync(path, 'utf8')).toBe(records.map(line).join(''));

    const second = await Journal.open<Rec>(path, { parse: isRec });
    expect(second.records).toEqual(records);
    expect(second.recovery).toEqual({ created: false, truncatedBytes: 0, corrupt: [] });
    expect(second.journal.recordCount).toBe(3);
    await second.journal.close();
  });

  it('group-commits concurrent appends and keeps submission order', async () => {
    const path = join(tempDir(), 'j');
    const { journal } = await Journal.open<Rec>(path);
    const records = Array.from({ length: 1000 }, (_, id) => ({ id, text: `r${id}` }));
    await Promise.all(records.map((record) => journal.append(record)));
    expect(journal.recordCount).toBe(1000);
    await journal.close();
    const reopened = await Journal.open<Rec>(path);
    expect(reopened.records).toEqual(records);
    await reopened.journal.close();
  });

  it('recovers from a torn last record cut at every byte offset, and appends after it', async () => {
    const dir = tempDir();
    const good = [line({ id: 1, text: 'one' }), line({ id: 2, text: 'two' })].join('');
    const last = line({ id: 3, text: 'three, the torn one' });
    for (let cut = 1; cut < last.length; cut += 1) {
      const path = join(dir, `j${cut}`);
      writeFileSync(path, good + last.slice(0, cut));
      const { journal, records, recovery } = await Journal.open<Rec>(path, { parse: isRec });
      expect(records.map((r) => r.id)).toEqual([1, 2]);
      expect(recovery.truncatedBytes).toBe(cut);
      expect(recovery.quarantinedTo).toBeUndefined();
      expect(statSync(path).size).toBe(good.length);
      await journal.append({ id: 4, text: 'after' });
      await journal.close();
      const again = await Journal.open<Rec>(path, { parse: isRec });
      expect(again.records.map((r) => r.id)).toEqual([1, 2, 4]);
      expect(again.recovery.truncatedBytes).toBe(0);
      await again.journal.close();
    }
    expect(readdirSync(dir).some((name) => name.includes('.corrupt-'))).toBe(false);
  });

  it('treats a complete but damaged last record as corruption, not as a torn tail', async () => {
    const dir = tempDir();
    const good = line({ id: 1, text: 'one' });
    const last = Buffer.from(line({ id: 2, text: 'two: the revoke that matters' }));
    let refused = 0;
    let torn = 0;
    for (let at = 0; at < last.length; at += 1) {
      for (const bit of [0x01, 0x20, 0x80]) {
        const path = join(dir, `j${at}-${bit}`);
        const flipped = Buffer.from(last);
        flipped[at] = (flipped[at] ?? 0) ^ bit;
        writeFileSync(path, Buffer.concat([Buffer.from(good), flipped]));
        const opened = await Journal.open<Rec>(path, { parse: isRec }).catch((err: unknown) => err);
        if (opened instanceof AgentError) {
          expect(opened.code).toBe('state_corrupt');
          expect(opened.details).toMatchObject({ file: path, line: 2 });
          refused += 1;
          continue;
        }
        // Only a flip of the final newline leaves an incomplete line, which is a torn write.
        expect(at).toBe(last.length - 1);
        const { journal, records, recovery } = opened as Awaited<ReturnType<typeof Journal.open<Rec>>>;
        expect(records.map((r) => r.id)).toEqual([1]);
        expect(recovery.truncatedBytes).toBe(last.length);
        await journal.close();
        torn += 1;
      }
    }
    expect(refused).toBe(last.length * 3 - torn);
    expect(torn).toBeLessThanOrEqual(3);
  });

  it("under the 'report' policy opens with the valid records and returns the damaged ones, bytes included", async () => {
    const path = join(tempDir(), 'j');
    const damaged = line({ id: 2, text: 'two' }).replace('two', 'tw0');
    const torn = line({ id: 3, text: 'three' }).slice(0, 10);
    writeFileSync(path, line({ id: 1, text: 'one' }) + damaged + torn);
    const { journal, records, recovery } = await Journal.open<Rec>(path, {
      parse: isRec,
      onCorrupt: 'report',
    });
    expect(records.map((r) => r.id)).toEqual([1]);
    expect(recovery.truncatedBytes).toBe(torn.length);
    expect(recovery.corrupt).toMatchObject([{ line: 2, problem: 'checksum mismatch' }]);
    expect(recovery.corrupt[0]?.raw.toString('utf8')).toBe(damaged.slice(0, -1));
    // The damaged line stays (the caller repairs it from its other copy); appends go after it.
    await journal.append({ id: 4, text: 'four' });
    await journal.close();
    expect(readFileSync(path, 'utf8')).toBe(
      line({ id: 1, text: 'one' }) + damaged + line({ id: 4, text: 'four' }),
    );
  });

  it('refuses to open past a bad checksum in the middle and leaves the file untouched', async () => {
    const path = join(tempDir(), 'j');
    const tampered = line({ id: 2, text: 'two' }).replace('two', 'tw0');
    const content = line({ id: 1, text: 'one' }) + tampered + line({ id: 3, text: 'three' });
    writeFileSync(path, content);
    const err = await rejection(Journal.open<Rec>(path, { parse: isRec }));
    expect(err.code).toBe('state_corrupt');
    expect(err.details).toMatchObject({ file: path, line: 2, offset: line({ id: 1, text: 'one' }).length });
    expect(String(err.details.problem)).toContain('checksum');
    expect(readFileSync(path, 'utf8')).toBe(content);
  });

  it('with the quarantine policy keeps valid records, reports the bad one and copies the original aside', async () => {
    const path = join(tempDir(), 'j');
    const content =
      line({ id: 1, text: 'one' }) +
      line({ id: 2, text: 'two' }).replace('two', 'tw0') +
      line({ id: 3, text: 'three' });
    writeFileSync(path, content);
    const opened = await Journal.open<Rec>(path, { parse: isRec, onCorrupt: 'quarantine' });
    expect(opened.records.map((r) => r.id)).toEqual([1, 3]);
    expect(opened.recovery.corrupt).toMatchObject([
      { line: 2, offset: line({ id: 1, text: 'one' }).length, problem: 'checksum mismatch' },
    ]);
    expect(readFileSync(opened.recovery.quarantinedTo ?? '', 'utf8')).toBe(content);
    await opened.journal.append({ id: 4, text: 'four' });
    await opened.journal.close();
    const again = await Journal.open<Rec>(path, { parse: isRec });
    expect(again.records.map((r) => r.id)).toEqual([1, 3, 4]);
    expect(again.recovery.corrupt).toEqual([]);
    await again.journal.close();
  });

  it('treats a record its parser refuses like a corrupt one', async () => {
    const path = join(tempDir(), 'j');
    writeFileSync(path, line({ id: 1, text: 'one' }) + line({ nope: true }) + line({ id: 3, text: 'three' }));
    const err = await rejection(Journal.open<Rec>(path, { parse: isRec }));
    expect(err.code).toBe('state_corrupt');
    expect(String(err.details.problem)).toContain('not a Rec');
  });

  it('rejects a record over the size limit with record_too_large and stays usable', async () => {
    const path = join(tempDir(), 'j');
    const { journal } = await Journal.open<Rec>(path, { maxRecordBytes: 100 });
    const err = await rejection(journal.append({ id: 1, text: 'x'.repeat(100) }));
    expect(err.code).toBe('record_too_large');
    expect(err.details).toMatchObject({ file: path, maxBytes: 100 });
    await journal.append({ id: 2, text: 'fits' });
    await journal.close();
    const reopened = await Journal.open<Rec>(path);
    expect(reopened.records).toEqual([{ id: 2, text: 'fits' }]);
    await reopened.journal.close();
  });

  it('refuses up front a record that its parser would not read back', async () => {
    const { journal } = await Journal.open<Rec>(join(tempDir(), 'j'), { parse: isRec });
    const err = await rejection(journal.append({ id: 1 } as Rec));
    expect(err.code).toBe('internal');
    await journal.close();
  });

  it('rewrite replaces what came before and keeps appends made after the call', async () => {
    const path = join(tempDir(), 'j');
    const { journal } = await Journal.open<Rec>(path);
    await journal.append({ id: 1, text: 'old' });
    const before = journal.append({ id: 2, text: 'old, pending' });
    const rewritten = journal.rewrite([{ id: 10, text: 'compacted' }]);
    const after = journal.append({ id: 11, text: 'new' });
    await Promise.all([before, rewritten, after]);
    expect(journal.recordCount).toBe(2);
    await journal.close();
    const reopened = await Journal.open<Rec>(path);
    expect(reopened.records.map((r) => r.id)).toEqual([10, 11]);
    await reopened.journal.close();
    expect(statSync(path).mode & 0o777).toBe(0o600);
  });

  it('has one owner at a time: a second open is busy until the first closes', async () => {
    const path = join(tempDir(), 'j');
    const first = await Journal.open<Rec>(path);
    const err = await rejection(Journal.open<Rec>(path));
    expect(err.code).toBe('busy');
    expect(err.details).toMatchObject({ file: path, pid: process.pid });
    await first.journal.close();
    const second = await Journal.open<Rec>(path);
    await second.journal.close();
    expect(readdirSync(tempDir())).toEqual(['j']);
  });

  it('takes over the lock of a dead owner or of an owner from before a reboot', async () => {
    const path = join(tempDir(), 'j');
    const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    for (const owner of [
      { pid: 999_999_999, boot: bootId, start: '1' },
      { pid: process.pid, boot: 'an earlier boot', start: '1' },
      'half-written {',
    ]) {
      writeFileSync(`${path}.lock`, typeof owner === 'string' ? owner : JSON.stringify(owner));
      const { journal } = await Journal.open<Rec>(path);
      await journal.close();
    }
  });

  it('refuses appends after close with state_io', async () => {
    const { journal } = await Journal.open<Rec>(join(tempDir(), 'j'));
    await journal.close();
    expect((await rejection(journal.append({ id: 1, text: 'late' }))).code).toBe('state_io');
  });
});
