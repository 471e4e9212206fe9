/**
 * An append-only journal of JSON records, one line per record:
 *
 *     <crc32 of the JSON bytes, 8 lowercase hex> <JSON>\n
 *
 * `append` resolves once the record is durable (written and fdatasynced); concurrent appends are
 * group-committed (one write and one fdatasync per batch).
 *
 * Recovery when opening (see line-scan.ts for the rule and why it is safe):
 * - A torn tail (an incomplete last line) is cut off silently (logged at info): those bytes never
 *   belonged to an acknowledged record.
 * - A complete line with a bad checksum, the last one included, is corruption of data that was
 *   durable. Policy `onCorrupt: 'fail'` (default) refuses to open with 'state_corrupt' naming the
 *   file, the line and the byte offset, and leaves the file untouched: a store such as the
 *   keyring must not silently drop, say, a revoke. Policy `'report'` opens with the valid records,
 *   leaves the damaged lines in place and returns them (with their bytes) in `recovery.corrupt`,
 *   for a store that keeps a second copy and repairs from it. Policy `'quarantine'` copies the
 *   whole file to `<path>.corrupt-<stamp>`, rewrites the journal with the valid records only,
 *   logs an error and reports every dropped line in `recovery.corrupt`.
 * `inspectJournal` reads a journal the same way without changing anything (`state check`).
 *
 * One process owns a journal at a time: `<path>.lock` (owner-lock.ts) makes a second open,
 * in this or another process, fail with 'busy' until the owner closes it or dies.
 */
import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import { dirname } from 'node:path';
import { crc32 } from 'node:zlib';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { silentLogger } from '../core/logger.js';
import { readFileIfExists, writeFileAtomic } from './atomic.js';
import { errnoOf, ioError, syncDirectory, uniqueStamp, writeAll, writeAllSync } from './fs-util.js';
import { GroupCommitQueue, type StagedItem } from './group-commit.js';
import { planRecovery, type RecoveryPlan, scanLines } from './line-scan.js';
import { acquireOwnerLock, type OwnerLock } from './owner-lock.js';

export type CorruptPolicy = 'fail' | 'quarantine' | 'report';

export interface JournalOptions<T> {
  /** Validates each record read back; a throw makes that record invalid (torn or corrupt). */
  readonly parse?: (value: unknown) => T;
  /** Largest encoded line (checksum, JSON and newline) accepted by `append`; default 1 MiB. */
  readonly maxRecordBytes?: number;
  /** What to do with damaged (complete but invalid) records; default 'fail'. */
  readonly onCorrupt?: CorruptPolicy;
  /** Mode of a newly created journal file; default 0o600. */
  readonly mode?: number;
  readonly logger?: Logger;
}

export interface CorruptLine {
  readonly line: number;
  readonly offset: number;
  readonly problem: string;
  /** The damaged line's bytes (without its '\n'), for a caller that can salvage what it names. */
  readonly raw: Buffer;
}

export interface JournalRecovery {
  /** The file did not exist and was created. */
  readonly created: boolean;
  /** Bytes of a torn tail that were cut off (0 when the file was clean). */
  readonly truncatedBytes: number;
  /** Damaged records: dropped under 'quarantine', left in place under 'report'. */
  readonly corrupt: readonly CorruptLine[];
  /** Where removed bytes were copied, when any complete line was removed. */
  readonly quarantinedTo?: string;
}

export interface OpenedJournal<T> {
  readonly journal: Journal<T>;
  readonly records: T[];
  readonly recovery: JournalRecovery;
}

export const DEFAULT_MAX_RECORD_BYTES = 1024 * 1024;

/** Batches up to this size are written with a synchronous write(2) (see writeAllSync). */
const SYNC_WRITE_MAX_BYTES = 16 * 1024;

export class Journal<T = unknown> {
  readonly path: string;
  private handle: FileHandle;
  private bytes: number;
  private records: number;
  private readonly maxRecordBytes: number;
  private readonly mode: number;
  private readonly parse: ((value: unknown) => T) | undefined;
  private readonly lock: OwnerLock;
  private readonly queue: GroupCommitQueue<Buffer>;

  private constructor(
    path: string,
    handle: FileHandle,
    bytes: number,
    records: number,
    maxRecordBytes: number,
    mode: number,
    parse: ((value: unknown) => T) | undefined,
    lock: OwnerLock,
  ) {
    this.path = path;
    this.lock = lock;
    this.parse = parse;
    this.handle = handle;
    this.bytes = bytes;
    this.records = records;
    this.maxRecordBytes = maxRecordBytes;
    this.mode = mode;
    this.queue = new GroupCommitQueue(path, (lines, written) => this.writeBatch(lines, written));
  }

  static async open<T = unknown>(path: string, options: JournalOptions<T> = {}): Promise<OpenedJournal<T>> {
    const mode = options.mode ?? 0o600;
    const lock = await acquireOwnerLock(path);
    let handle: FileHandle | undefined;
    try {
      const opened = await openOrCreate(path, mode);
      handle = opened.handle;
      const recovered = await recover(path, opened.handle, opened.created, options, mode);
      handle = recovered.handle;
      const journal = new Journal<T>(
        path,
        recovered.handle,
        recovered.bytes,
        recovered.records.length,
        options.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES,
        mode,
        options.parse,
        lock,
      );
      return { journal, records: recovered.records, recovery: recovered.recovery };
    } catch (err) {
      await handle?.close().catch(() => {});
      await lock.release();
      throw ioError(err, path, 'open');
    }
  }

  /** Resolves when the record is durable. Rejects with 'record_too_large' or 'state_io'. */
  append(record: T): Promise<void> {
    let line: Buffer;
    try {
      line = this.encode(record);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.queue.submit(line);
  }

  /**
   * Encodes a record as its journal line, throwing synchronously 'record_too_large', or
   * 'internal' for a value that is not JSON or that the journal's `parse` would not accept when
   * reading it back (such a record would make the journal unreadable later). With
   * `appendEncoded`, for callers that must know a record is acceptable before they change
   * their in-memory state.
   */
  encode(record: T): Buffer {
    const line = encodeLine(record, this.path, this.maxRecordBytes);
    if (this.parse !== undefined) {
      try {
        decodeLine(line.subarray(0, line.length - 1), this.parse);
      } catch (err) {
        const reason = err instanceof Error ? err.message : String(err);
        throw new AgentError('internal', `a record for ${this.path} would not read back: ${reason}`, {
          file: this.path,
        });
      }
    }
    return line;
  }

  /** Appends a line made by `encode`; resolves when durable. */
  appendEncoded(line: Buffer): Promise<void> {
    return this.queue.submit(line);
  }

  /**
   * Appends a line made by `encode` in two steps: resolves once it is written (it survives the
   * process being killed) with `durable`, which settles once it is fdatasynced (it survives a
   * power cut). For a caller that overlaps the fdatasync with work of its own.
   */
  appendEncodedStaged(line: Buffer): Promise<StagedItem> {
    return this.queue.submitStaged(line);
  }

  /**
   * Atomically replaces the journal's content with `records` (compaction). Appends made before
   * this call are durable first and then superseded; appends made after it land after the new
   * content. `beforeReplace` runs in between, when everything appended before this call is
   * durable and nothing later is written yet: a snapshot that supersedes the journal is written
   * there, so a crash leaves either the old journal or the snapshot plus the new journal.
   */
  rewrite(records: readonly T[], beforeReplace?: () => Promise<void>): Promise<void> {
    let content: Buffer;
    try {
      content = Buffer.concat(records.map((record) => this.encode(record)));
    } catch (err) {
      return Promise.reject(err);
    }
    return this.queue.exclusive(async () => {
      if (beforeReplace !== undefined) await beforeReplace();
      await writeFileAtomic(this.path, content, { mode: this.mode });
      const old = this.handle;
      this.handle = await openExisting(this.path);
      this.bytes = content.length;
      this.records = records.length;
      await old.close().catch(() => {});
    });
  }

  /** Waits for pending appends, then closes the file. Later appends are refused. */
  close(): Promise<void> {
    return this.queue.close(async () => {
      await this.handle.close().catch(() => {});
      await this.lock.release();
    });
  }

  /** Set once a write failed; the journal refuses everything but close until reopened. */
  get failed(): AgentError | undefined {
    return this.queue.failed;
  }

  /** Durable size of the file in bytes. */
  get sizeBytes(): number {
    return this.bytes;
  }

  /** Durable records in the file. */
  get recordCount(): number {
    return this.records;
  }

  private async writeBatch(lines: readonly Buffer[], written: () => void): Promise<void> {
    const data = lines.length === 1 && lines[0] !== undefined ? lines[0] : Buffer.concat(lines);
    try {
      // A small batch (a signature counter on the unlock path) is written on this thread.
      if (data.length <= SYNC_WRITE_MAX_BYTES) writeAllSync(this.handle, data, this.bytes);
      else await writeAll(this.handle, data, this.bytes);
      written();
      await this.handle.datasync();
    } catch (err) {
      throw ioError(err, this.path, 'append to');
    }
    this.bytes += data.length;
    this.records += lines.length;
  }
}

/** Reads the journal through `handle` and applies the recovery policy (see the file comment). */
async function recover<T>(
  path: string,
  handle: FileHandle,
  created: boolean,
  options: JournalOptions<T>,
  mode: number,
): Promise<{ handle: FileHandle; bytes: number; records: T[]; recovery: JournalRecovery }> {
  const logger = options.logger ?? silentLogger;
  let content: Buffer;
  try {
    content = await handle.readFile();
  } catch (err) {
    throw ioError(err, path, 'read');
  }
  const scanned = scanJournal(content, options.parse);
  const { plan, records, corrupt } = scanned;
  const policy = options.onCorrupt ?? 'fail';
  const first = corrupt[0];
  if (first !== undefined && policy === 'fail') {
    throw new AgentError(
      'state_corrupt',
      `${path} is corrupt at line ${first.line} (byte ${first.offset}): ${first.problem}; ` +
        `${corrupt.length} damaged record(s); the file was left untouched`,
      {
        file: path,
        line: first.line,
        offset: first.offset,
        problem: first.problem,
        badRecords: corrupt.length,
      },
    );
  }
  if (first !== undefined && policy === 'quarantine') {
    const quarantinedTo = `${path}.corrupt-${uniqueStamp()}`;
    await writeFileAtomic(quarantinedTo, content, { mode });
    const kept = Buffer.concat(plan.valid.map((line) => content.subarray(line.offset, line.end)));
    await writeFileAtomic(path, kept, { mode });
    await handle.close();
    logger.error(
      {
        code: 'state_corrupt',
        file: path,
        badRecords: corrupt.length,
        firstBadLine: first.line,
        quarantinedTo,
      },
      'journal had corrupt records; kept the valid ones and copied the original aside',
    );
    return {
      handle: await openExisting(path),
      bytes: kept.length,
      records,
      recovery: { created, truncatedBytes: plan.tornBytes, corrupt, quarantinedTo },
    };
  }
  // 'report' keeps damaged lines where they are (the caller repairs them from another copy).
  if (plan.tornBytes > 0) {
    try {
      await handle.truncate(plan.completeEnd);
      await handle.sync();
    } catch (err) {
      throw ioError(err, path, 'truncate');
    }
    logger.info(
      { file: path, truncatedBytes: plan.tornBytes, validRecords: records.length },
      'journal: cut off a torn last record',
    );
  }
  return {
    handle,
    bytes: plan.completeEnd,
    records,
    recovery: { created, truncatedBytes: plan.tornBytes, corrupt },
  };
}

interface ScannedJournal<T> {
  readonly plan: RecoveryPlan<T>;
  readonly records: T[];
  readonly corrupt: CorruptLine[];
}

function scanJournal<T>(content: Buffer, parse: ((value: unknown) => T) | undefined): ScannedJournal<T> {
  const plan = planRecovery(
    scanLines(content, (line) => decodeLine(line, parse)),
    content.length,
  );
  return {
    plan,
    records: plan.valid.map((scanned) => scanned.value as T),
    corrupt: plan.corrupt.map(({ line, offset, end, problem }) => ({
      line,
      offset,
      problem: problem ?? '',
      raw: content.subarray(offset, end - 1),
    })),
  };
}

export interface JournalInspection<T> {
  readonly path: string;
  readonly exists: boolean;
  readonly bytes: number;
  /** Valid records in file order. */
  readonly records: T[];
  /** Damaged complete lines (see line-scan.ts). */
  readonly corrupt: readonly CorruptLine[];
  /** Bytes of a torn tail that opening would cut off. */
  readonly tornBytes: number;
}

/** Reads a journal without opening it for writing: no lock, no truncation, nothing created. */
export async function inspectJournal<T = unknown>(
  path: string,
  parse?: (value: unknown) => T,
): Promise<JournalInspection<T>> {
  const content = await readFileIfExists(path);
  if (content === undefined) return { path, exists: false, bytes: 0, records: [], corrupt: [], tornBytes: 0 };
  const { plan, records, corrupt } = scanJournal(content, parse);
  return { path, exists: true, bytes: content.length, records, corrupt, tornBytes: plan.tornBytes };
}

const SPACE = 0x20;
const HEX8 = /^[0-9a-f]{8}$/;

export function encodeLine(record: unknown, path: string, maxRecordBytes: number): Buffer {
  let json: string | undefined;
  try {
    json = JSON.stringify(record);
  } catch (err) {
    throw new AgentError(
      'internal',
      `a record for ${path} is not JSON-serialisable`,
      { file: path },
      { cause: err },
    );
  }
  if (json === undefined) {
    throw new AgentError('internal', `a record for ${path} is not JSON-serialisable`, { file: path });
  }
  const body = Buffer.from(json, 'utf8');
  const size = body.length + 10;
  if (size > maxRecordBytes) {
    throw new AgentError(
      'record_too_large',
      `a record of ${size} bytes exceeds the ${maxRecordBytes}-byte limit of ${path}`,
      {
        file: path,
        bytes: size,
        maxBytes: maxRecordBytes,
      },
    );
  }
  const line = Buffer.allocUnsafe(size);
  line.write(crcHex(body), 0, 'latin1');
  line[8] = SPACE;
  body.copy(line, 9);
  line[size - 1] = 0x0a;
  return line;
}

export function decodeLine<T>(line: Buffer, parse?: (value: unknown) => T): T {
  if (line.length < 10 || line[8] !== SPACE) throw new Error('not a journal line');
  const expected = line.toString('latin1', 0, 8);
  if (!HEX8.test(expected)) throw new Error('not a journal line');
  const body = line.subarray(9);
  if (crcHex(body) !== expected) throw new Error('checksum mismatch');
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch {
    throw new Error('checksum matches but JSON is invalid');
  }
  if (parse === undefined) return value as T;
  try {
    return parse(value);
  } catch (err) {
    throw new Error(`record rejected by its parser: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function crcHex(bytes: Uint8Array): string {
  return crc32(bytes).toString(16).padStart(8, '0');
}

async function openExisting(path: string): Promise<FileHandle> {
  try {
    return await open(path, 'r+');
  } catch (err) {
    throw ioError(err, path, 'open');
  }
}

async function openOrCreate(path: string, mode: number): Promise<{ handle: FileHandle; created: boolean }> {
  try {
    return { handle: await open(path, 'r+'), created: false };
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw ioError(err, path, 'open');
  }
  try {
    const handle = await open(path, 'wx+', mode);
    await syncDirectory(dirname(path));
    return { handle, created: true };
  } catch (err) {
    throw ioError(err, path, 'create');
  }
}
