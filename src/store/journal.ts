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
 *
 * Writes never block the event loop: every write, fdatasync and truncate goes through libuv's
 * thread pool, one at a time (group-commit.ts), so a frozen filesystem stalls this journal's
 * appends, not the agent. After a failed append or rewrite the journal restores its last durable
 * state by itself (restoreDurableState) and appends resume once the disk takes them again.
 */
import type { FileHandle } from 'node:fs/promises';
import { open, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { crc32 } from 'node:zlib';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { silentLogger } from '../core/logger.js';
import { readFileIfExists, writeFileAtomic } from './atomic.js';
import { errnoOf, ioError, syncDirectory, uniqueStamp, writeAll } from './fs-util.js';
import {
  type GroupCommitOptions,
  GroupCommitQueue,
  type StagedItem,
  type WriteHealth,
} from './group-commit.js';
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
  /** Backlog bound and restore backoff of the write queue (see group-commit.ts). */
  readonly writeQueue?: Omit<GroupCommitOptions, 'restore'>;
  /** Opens the journal file for appending (tests inject file handles that fail). */
  readonly openFile?: OpenFile;
}

/** fs/promises `open`, or a stand-in that returns handles with injected faults. */
export type OpenFile = (path: string, flags: string, mode?: number) => Promise<FileHandle>;

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
  private readonly openFile: OpenFile;
  /**
   * The last durable line is a damaged record kept in place under 'report' (the store repairs it
   * from its other copy): a restore after a failed write must not take it for lost data.
   */
  private lastLineDamaged: boolean;

  private constructor(
    path: string,
    handle: FileHandle,
    bytes: number,
    records: number,
    maxRecordBytes: number,
    mode: number,
    parse: ((value: unknown) => T) | undefined,
    lock: OwnerLock,
    options: JournalOptions<T>,
    lastLineDamaged: boolean,
  ) {
    this.path = path;
    this.lastLineDamaged = lastLineDamaged;
    this.openFile = options.openFile ?? open;
    this.lock = lock;
    this.parse = parse;
    this.handle = handle;
    this.bytes = bytes;
    this.records = records;
    this.maxRecordBytes = maxRecordBytes;
    this.mode = mode;
    this.queue = new GroupCommitQueue(path, (lines, written) => this.writeBatch(lines, written), {
      ...options.writeQueue,
      restore: () => this.restoreDurableState(),
    });
  }

  static async open<T = unknown>(path: string, options: JournalOptions<T> = {}): Promise<OpenedJournal<T>> {
    const mode = options.mode ?? 0o600;
    const lock = await acquireOwnerLock(path);
    let handle: FileHandle | undefined;
    try {
      const opened = await openOrCreate(path, mode, options.openFile ?? open);
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
        options,
        recovered.lastLineDamaged,
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
      try {
        await writeFileAtomic(this.path, content, { mode: this.mode });
      } catch (err) {
        // The rename may have happened with only the directory's fsync failing: then the path
        // names the new content, and the restore that follows must keep it, not the old length.
        if (await this.replacedOnDisk()) {
          this.bytes = content.length;
          this.records = records.length;
          this.lastLineDamaged = false;
        }
        throw err;
      }
      const old = this.handle;
      this.handle = await openExisting(this.path, this.openFile);
      this.bytes = content.length;
      this.records = records.length;
      this.lastLineDamaged = false;
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

  /** Set while a failed write is not yet restored (appends are refused meanwhile). */
  get failed(): AgentError | undefined {
    return this.queue.failed;
  }

  /** Write failures, refusals and stalls of this journal (health, /metrics). */
  get writeHealth(): WriteHealth {
    return this.queue.health();
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
      // Through the thread pool even for a small batch: a write(2) on this thread froze the whole
      // agent, relay watchdog included, when the filesystem was frozen.
      await writeAll(this.handle, data, this.bytes);
      written();
      await this.handle.datasync();
    } catch (err) {
      throw ioError(err, this.path, 'append to');
    }
    this.bytes += data.length;
    this.records += lines.length;
    this.lastLineDamaged = false;
  }

  /**
   * After a failed append or rewrite: puts the file back to its last durable content, so the
   * next append lands right after the last acknowledged record. The failed batch is never
   * retried: its callers were told it failed.
   *
   * Why reopen and re-read rather than retry the fdatasync: after a failed fsync the page cache
   * cannot be trusted. Linux may already have dropped the dirty pages (or marked them clean) and
   * reported the error once, so a second fsync can "succeed" with the batch half on disk
   * (PostgreSQL's "fsyncgate", 2018). So the file is cut back to the length that was durable
   * before the batch, through a fresh descriptor (the old one may still carry the error), the cut
   * is fsynced, and the last durable record is read back and checked before appends resume.
   * A file shorter than its durable length, or whose last record no longer reads back, lost
   * acknowledged data: that is state_corrupt, and the journal stays failed until reopened.
   */
  private async restoreDurableState(): Promise<void> {
    await this.handle.close().catch(() => {});
    const handle = await openExisting(this.path, this.openFile);
    try {
      const { size } = await handle.stat();
      if (size < this.bytes) {
        throw new AgentError(
          'state_corrupt',
          `${this.path} is ${size} bytes, shorter than the ${this.bytes} bytes already durable`,
          { file: this.path, size, durableBytes: this.bytes },
        );
      }
      if (size > this.bytes) await handle.truncate(this.bytes);
      await handle.sync();
      await this.checkLastRecord(handle);
    } catch (err) {
      await handle.close().catch(() => {});
      throw ioError(err, this.path, 'restore');
    }
    this.handle = handle;
  }

  /** Reads the last durable record back through `handle`; state_corrupt when it does not decode. */
  private async checkLastRecord(handle: FileHandle): Promise<void> {
    if (this.bytes === 0) return;
    // A record is at most maxRecordBytes long: one more byte reaches the newline before it.
    const length = Math.min(this.bytes, this.maxRecordBytes + 1);
    const tail = Buffer.alloc(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await handle.read(tail, got, length - got, this.bytes - length + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    const end = got - 1;
    const start = tail.lastIndexOf(0x0a, end - 1) + 1;
    let problem: string | undefined;
    if (got < length || tail[end] !== 0x0a) problem = 'the last durable record is incomplete';
    else if (this.lastLineDamaged) {
      // A damaged record left in place under 'report': only its end is checked (it never decoded).
    } else if (start === 0 && length < this.bytes) problem = 'the last durable record has no start';
    else {
      try {
        decodeLine(tail.subarray(start, end), this.parse);
      } catch (err) {
        problem = `the last durable record does not read back: ${err instanceof Error ? err.message : String(err)}`;
      }
    }
    if (problem !== undefined) {
      throw new AgentError('state_corrupt', `${this.path}: ${problem}`, { file: this.path, problem });
    }
  }

  /** True when the path now names another file than the one this journal has open. */
  private async replacedOnDisk(): Promise<boolean> {
    try {
      const [current, named] = await Promise.all([this.handle.stat(), stat(this.path)]);
      return current.ino !== named.ino || current.dev !== named.dev;
    } catch {
      return false;
    }
  }
}

/** Reads the journal through `handle` and applies the recovery policy (see the file comment). */
async function recover<T>(
  path: string,
  handle: FileHandle,
  created: boolean,
  options: JournalOptions<T>,
  mode: number,
): Promise<{
  handle: FileHandle;
  bytes: number;
  records: T[];
  recovery: JournalRecovery;
  lastLineDamaged: boolean;
}> {
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
      handle: await openExisting(path, options.openFile ?? open),
      bytes: kept.length,
      records,
      recovery: { created, truncatedBytes: plan.tornBytes, corrupt, quarantinedTo },
      lastLineDamaged: false,
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
    lastLineDamaged: plan.validEnd < plan.completeEnd,
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
  if (line.length < 10 || line[8] !== SPACE) throw new AgentError('state_corrupt', 'not a journal line');
  const expected = line.toString('latin1', 0, 8);
  if (!HEX8.test(expected)) throw new AgentError('state_corrupt', 'not a journal line');
  const body = line.subarray(9);
  if (crcHex(body) !== expected) throw new AgentError('state_corrupt', 'checksum mismatch');
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch {
    throw new AgentError('state_corrupt', 'checksum matches but JSON is invalid');
  }
  if (parse === undefined) return value as T;
  try {
    return parse(value);
  } catch (err) {
    throw new AgentError(
      'state_corrupt',
      `record rejected by its parser: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
}

function crcHex(bytes: Uint8Array): string {
  return crc32(bytes).toString(16).padStart(8, '0');
}

async function openExisting(path: string, openFile: OpenFile = open): Promise<FileHandle> {
  try {
    return await openFile(path, 'r+');
  } catch (err) {
    throw ioError(err, path, 'open');
  }
}

async function openOrCreate(
  path: string,
  mode: number,
  openFile: OpenFile,
): Promise<{ handle: FileHandle; created: boolean }> {
  try {
    return { handle: await openFile(path, 'r+'), created: false };
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw ioError(err, path, 'open');
  }
  try {
    const handle = await openFile(path, 'wx+', mode);
    await syncDirectory(dirname(path));
    return { handle, created: true };
  } catch (err) {
    throw ioError(err, path, 'create');
  }
}
