/**
 * The append-only, hash-chained audit log.
 *
 * Files: `<dir>/audit-<first seq, 12 digits>.jsonl`, one JSON record per line, so the file that
 * holds seq N is the last one whose name is <= N, and sorting names sorts records. A record:
 *
 *     {"seq":42,"ts":"2025-…Z","type":"decision",…event fields…,"prev":"<64 hex>","hash":"<64 hex>"}
 *
 * hash = hex(SHA-256(prev ‖ canonicalJson(record without prev and hash))), prev = the previous
 * record's hash (64 zeros before seq 1). `seq` continues across restarts and files.
 *
 * `append` resolves when the record is durable; concurrent appends are group-committed. A
 * record's time is taken at `append`, its seq and hash when it is written, so a write that fails
 * (a full disk) leaves no gap in the chain: the log restores its last durable state and the
 * next records continue from there (see group-commit.ts and `restoreDurableState`). Files
 * rotate at `maxFileBytes` and the oldest are deleted beyond `keepFiles`; the chain continues
 * across files. On open, a torn last record (crash mid-write) is cut off (complete bad lines
 * are first copied to `<file>.corrupt-<stamp>`); broken records further back are left as they
 * are (evidence) and logged, appending continues after the last valid record, and
 * `verifyAuditLog` reports the first broken link.
 *
 * One process appends at a time (`<dir>/audit.lock`, see owner-lock.ts); readers need no lock.
 *
 * Defence in depth: an event may not carry a field named like a raw card UID or a secret
 * (see `forbiddenFieldName`), nor the reserved `seq`, `ts`, `prev`, `hash`.
 */
import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { mkdir, open, readdir, readFile, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { silentLogger } from '../core/logger.js';
import { canonicalJson } from '../crypto/canonical.js';
import { writeFileAtomic } from './atomic.js';
import { errnoOf, ioError, syncDirectory, uniqueStamp, writeAll } from './fs-util.js';
import { GroupCommitQueue, type WriteHealth } from './group-commit.js';
import { planRecovery, scanLines } from './line-scan.js';
import { acquireOwnerLock, type OwnerLock } from './owner-lock.js';

export interface AuditEvent {
  readonly type: string;
  readonly [field: string]: unknown;
}

export interface AuditRecord {
  readonly seq: number;
  readonly ts: string;
  readonly type: string;
  readonly prev: string;
  readonly hash: string;
  readonly [field: string]: unknown;
}

export interface AuditLogOptions {
  /** A file is rotated before it would grow past this; default 4 MiB, at least 4 KiB. */
  readonly maxFileBytes?: number;
  /** Files kept, the current one included; default 10. */
  readonly keepFiles?: number;
  /** Largest record line; default 64 KiB. */
  readonly maxRecordBytes?: number;
  /** Durable records kept in memory for `recent`; default 100. */
  readonly recentCapacity?: number;
  /** Wall time in ms for `ts` (pass the agent's trusted clock); default Date.now. */
  readonly now?: () => number;
  readonly logger?: Logger;
}

export const GENESIS_PREV = '0'.repeat(64);
const FILE_PATTERN = /^audit-(\d{12,})\.jsonl$/;
const HASH_PATTERN = /^[0-9a-f]{64}$/;
const RESERVED = new Set(['seq', 'ts', 'prev', 'hash']);

export function auditFileName(firstSeq: number): string {
  return `audit-${String(firstSeq).padStart(12, '0')}.jsonl`;
}

/** hex(SHA-256(prev ‖ canonicalJson(body))); body is the record without prev and hash. */
export function hashAuditRecord(prev: string, body: Readonly<Record<string, unknown>>): string {
  return createHash('sha256')
    .update(prev + canonicalJson(body), 'utf8')
    .digest('hex');
}

/**
 * True for field names that must never reach the audit log: a raw card UID or a secret.
 * Compared case-insensitively without '_' and '-': `uid` and names ending in `uid` (cardUid,
 * raw_uid; but not `uuid`), and names ending in `secret`, `secretkey`, `privatekey`, `password`.
 * `uidHash` is fine.
 */
export function forbiddenFieldName(name: string): boolean {
  const n = name.toLowerCase().replace(/[_-]/g, '');
  if (n.endsWith('uid') && !n.endsWith('uuid')) return true;
  return ['secret', 'secretkey', 'privatekey', 'password'].some((suffix) => n.endsWith(suffix));
}

/** An event accepted by `append`: checked, normalised and timed; chained when written. */
interface Pending {
  readonly ts: string;
  readonly type: string;
  readonly fields: Readonly<Record<string, unknown>>;
  /** Set once written. */
  record?: AuditRecord;
}

/** A record as written: the chain state it leaves behind. */
interface Chained {
  readonly pending: Pending;
  readonly record: AuditRecord;
  readonly line: Buffer;
}

/** The longest a seq can print (Number.MAX_SAFE_INTEGER): for the size check at `append`. */
const WIDEST_SEQ = Number.MAX_SAFE_INTEGER;

interface AuditFile {
  readonly name: string;
  readonly firstSeq: number;
}

export class AuditLog {
  readonly dir: string;
  private handle: FileHandle;
  private fileName: string;
  private fileBytes: number;
  private nextSeq: number;
  private prevHash: string;
  private durableSeq: number;
  private readonly tail: AuditRecord[];
  private readonly maxFileBytes: number;
  private readonly keepFiles: number;
  private readonly maxRecordBytes: number;
  private readonly recentCapacity: number;
  private readonly now: () => number;
  private readonly logger: Logger;
  private readonly queue: GroupCommitQueue<Pending>;
  private readonly lock: OwnerLock;

  private constructor(
    dir: string,
    handle: FileHandle,
    fileName: string,
    fileBytes: number,
    last: AuditRecord | undefined,
    tail: AuditRecord[],
    settings: Required<Omit<AuditLogOptions, 'logger'>> & { logger: Logger },
    lock: OwnerLock,
  ) {
    this.dir = dir;
    this.lock = lock;
    this.handle = handle;
    this.fileName = fileName;
    this.fileBytes = fileBytes;
    this.nextSeq = (last?.seq ?? 0) + 1;
    this.prevHash = last?.hash ?? GENESIS_PREV;
    this.durableSeq = last?.seq ?? 0;
    this.tail = tail;
    this.maxFileBytes = settings.maxFileBytes;
    this.keepFiles = settings.keepFiles;
    this.maxRecordBytes = settings.maxRecordBytes;
    this.recentCapacity = settings.recentCapacity;
    this.now = settings.now;
    this.logger = settings.logger;
    this.queue = new GroupCommitQueue(join(dir, 'audit'), (items) => this.writeBatch(items), {
      restore: () => this.restoreDurableState(),
    });
  }

  static async open(dir: string, options: AuditLogOptions = {}): Promise<AuditLog> {
    const settings = {
      maxFileBytes: options.maxFileBytes ?? 4 * 1024 * 1024,
      keepFiles: options.keepFiles ?? 10,
      maxRecordBytes: options.maxRecordBytes ?? 64 * 1024,
      recentCapacity: options.recentCapacity ?? 100,
      now: options.now ?? Date.now,
      logger: options.logger ?? silentLogger,
    };
    checkSetting('maxFileBytes', settings.maxFileBytes, 4096);
    checkSetting('keepFiles', settings.keepFiles, 1);
    checkSetting('maxRecordBytes', settings.maxRecordBytes, 256);
    checkSetting('recentCapacity', settings.recentCapacity, 0);
    try {
      const created = await mkdir(dir, { recursive: true, mode: 0o700 });
      if (created !== undefined) await syncDirectory(dirname(dir));
    } catch (err) {
      throw ioError(err, dir, 'create');
    }
    const lock = await acquireOwnerLock(join(dir, 'audit'));
    try {
      return await AuditLog.recover(dir, settings, lock);
    } catch (err) {
      await lock.release();
      throw err;
    }
  }

  private static async recover(
    dir: string,
    settings: Required<Omit<AuditLogOptions, 'logger'>> & { logger: Logger },
    lock: OwnerLock,
  ): Promise<AuditLog> {
    const logger = settings.logger;
    const files = await listAuditFiles(dir);

    let last: AuditRecord | undefined;
    let tail: AuditRecord[] = [];
    let newestBytes = 0;
    for (let i = files.length - 1; i >= 0 && last === undefined; i -= 1) {
      const file = files[i];
      if (file === undefined) continue;
      const path = join(dir, file.name);
      const content = await readAuditFile(path);
      const plan = planRecovery(scanLines(content, decodeAuditLine), content.length);
      if (i === files.length - 1) {
        if (plan.tailBytes > 0) await cutTail(path, content, plan.validEnd, plan.tailHasCompleteLine, logger);
        newestBytes = plan.validEnd;
      }
      const first = plan.corrupt[0];
      if (first !== undefined) {
        logger.error(
          {
            code: 'audit_chain_broken',
            file: path,
            line: first.line,
            problem: first.problem,
            badRecords: plan.corrupt.length,
          },
          'audit file holds broken records (run `vehicle-agent audit verify`); appending continues',
        );
      }
      const valid = plan.valid.flatMap((scanned) => (scanned.value === undefined ? [] : [scanned.value]));
      last = valid.at(-1);
      tail = valid.slice(Math.max(0, valid.length - settings.recentCapacity));
    }

    const nextSeq = (last?.seq ?? 0) + 1;
    const newest = files.at(-1);
    let fileName: string;
    let handle: FileHandle;
    // An empty newest file left by a crash right after rotation is named for a record that
    // never became durable: replace it by one named for the next record, if that name sorts
    // last (it does unless older files were tampered with; then keep the file and let verify
    // report it, rather than refuse to log).
    const rename =
      newest !== undefined &&
      newestBytes === 0 &&
      newest.firstSeq !== nextSeq &&
      files.slice(0, -1).every((file) => file.firstSeq < nextSeq);
    if (newest !== undefined && !rename) {
      fileName = newest.name;
      handle = await openFile(join(dir, fileName), 'r+');
    } else {
      if (newest !== undefined) await unlink(join(dir, newest.name)).catch(() => {});
      fileName = auditFileName(nextSeq);
      handle = await openFile(join(dir, fileName), 'wx', true);
    }
    return new AuditLog(dir, handle, fileName, newestBytes, last, tail, settings, lock);
  }

  /** Appends an event; resolves with the stored record once it is durable. */
  append(event: AuditEvent): Promise<AuditRecord> {
    let pending: Pending;
    try {
      pending = this.prepare(event);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.queue.submit(pending).then(() => {
      if (pending.record === undefined) throw new AgentError('internal', 'an audit record was not chained');
      return pending.record;
    });
  }

  /** Write failures, refusals and stalls of the log (health, /metrics). */
  get writeHealth(): WriteHealth {
    return this.queue.health();
  }

  /** Seq of the last durable record (0 when the log is empty). */
  get lastSeq(): number {
    return this.durableSeq;
  }

  /** Up to n most recent durable records, oldest first (for status). */
  recent(n: number): AuditRecord[] {
    return n <= 0 ? [] : this.tail.slice(-n);
  }

  /**
   * Durable records with seq >= fromSeq, in order, read from the files (for the MQTT outbox).
   * Stops at the last record durable when the iteration started. Records deleted by rotation
   * are simply absent: a caller that sees the first seq above fromSeq knows what it missed.
   */
  readFrom(fromSeq: number): AsyncGenerator<AuditRecord, void, undefined> {
    return readAuditLog(this.dir, fromSeq, { untilSeq: this.durableSeq, logger: this.logger });
  }

  /** Waits for pending appends, then closes; later appends are refused. */
  close(): Promise<void> {
    return this.queue.close(async () => {
      await this.handle.close().catch(() => {});
      await this.lock.release();
    });
  }

  private prepare(event: AuditEvent): Pending {
    if (typeof event !== 'object' || event === null || Array.isArray(event)) {
      throw new AgentError('audit_event_rejected', 'an audit event must be an object', {});
    }
    if (typeof event.type !== 'string' || event.type === '') {
      throw new AgentError('audit_event_rejected', 'an audit event needs a non-empty string type', {});
    }
    for (const name of Object.keys(event)) {
      if (RESERVED.has(name)) {
        throw new AgentError('audit_event_rejected', `the audit log sets "${name}" itself`, {
          field: name,
          type: event.type,
        });
      }
    }
    let normalized: Record<string, unknown>;
    try {
      // Through JSON once, so what is hashed is exactly what a reader parses back.
      normalized = JSON.parse(JSON.stringify(event)) as Record<string, unknown>;
    } catch (err) {
      throw new AgentError(
        'audit_event_rejected',
        'an audit event is not JSON-safe',
        { type: event.type },
        { cause: err },
      );
    }
    const forbidden = findForbiddenField(normalized);
    if (forbidden !== undefined) {
      throw new AgentError(
        'audit_event_rejected',
        `audit event "${event.type}" carries a field "${forbidden}" that must never be logged (raw UID or secret; hash it or leave it out)`,
        { field: forbidden, type: event.type },
      );
    }
    const { type: _type, ...fields } = normalized;
    const pending: Pending = { ts: new Date(this.now()).toISOString(), type: event.type, fields };
    // Checked now against the widest seq, so a record refused for its size is refused here and
    // not in the middle of a batch.
    const widest = chain(pending, WIDEST_SEQ, GENESIS_PREV).line.length;
    if (widest > this.maxRecordBytes) {
      throw new AgentError(
        'record_too_large',
        `audit event "${event.type}" is ${widest} bytes; the limit is ${this.maxRecordBytes}`,
        {
          type: event.type,
          bytes: widest,
          maxBytes: this.maxRecordBytes,
        },
      );
    }
    return pending;
  }

  /**
   * Chains and writes a batch. The chain state (next seq, previous hash) moves only past records
   * that were written and fsynced, chunk by chunk (a batch can span a rotation), so a failed write
   * leaves it where the file ends.
   */
  private async writeBatch(items: readonly Pending[]): Promise<void> {
    let chunk: Chained[] = [];
    let chunkBytes = 0;
    let seq = this.nextSeq;
    let prev = this.prevHash;
    for (const pending of items) {
      const chained = chain(pending, seq, prev);
      const filled = this.fileBytes + chunkBytes;
      if (filled > 0 && filled + chained.line.length > this.maxFileBytes) {
        await this.writeChunk(chunk, chunkBytes);
        chunk = [];
        chunkBytes = 0;
        await this.rotate(seq);
      }
      chunk.push(chained);
      chunkBytes += chained.line.length;
      seq += 1;
      prev = chained.record.hash;
    }
    await this.writeChunk(chunk, chunkBytes);
  }

  private async writeChunk(chunk: readonly Chained[], bytes: number): Promise<void> {
    const last = chunk.at(-1);
    if (bytes === 0 || last === undefined) return;
    const path = join(this.dir, this.fileName);
    const first = chunk[0];
    try {
      await writeAll(
        this.handle,
        chunk.length === 1 && first !== undefined ? first.line : Buffer.concat(chunk.map((c) => c.line)),
        this.fileBytes,
      );
      await this.handle.datasync();
    } catch (err) {
      throw ioError(err, path, 'append to');
    }
    this.fileBytes += bytes;
    this.nextSeq = last.record.seq + 1;
    this.prevHash = last.record.hash;
    this.durableSeq = last.record.seq;
    for (const { pending, record } of chunk) {
      pending.record = record;
      if (this.recentCapacity > 0) {
        this.tail.push(record);
        if (this.tail.length > this.recentCapacity) this.tail.shift();
      }
    }
  }

  /**
   * After a failed write: cuts the current file back to its durable length through a fresh
   * handle, fsyncs the cut and checks that its last record is the one the chain continues from
   * (why not simply retry the fsync: see Journal's restoreDurableState). A file shorter than that,
   * or ending in another record, lost durable records: state_corrupt, and appending stops.
   */
  private async restoreDurableState(): Promise<void> {
    const path = join(this.dir, this.fileName);
    await this.handle.close().catch(() => {});
    const handle = await openFile(path, 'r+');
    try {
      const { size } = await handle.stat();
      if (size < this.fileBytes) {
        throw new AgentError('state_corrupt', `${path} is shorter than its ${this.fileBytes} durable bytes`, {
          file: path,
        });
      }
      if (size > this.fileBytes) await handle.truncate(this.fileBytes);
      await handle.sync();
      if (this.fileBytes > 0) {
        const length = Math.min(this.fileBytes, this.maxRecordBytes + 1);
        const tail = Buffer.alloc(length);
        const { bytesRead } = await handle.read(tail, 0, length, this.fileBytes - length);
        const start = tail.lastIndexOf(0x0a, length - 2) + 1;
        let lastHash: string | undefined;
        try {
          lastHash =
            bytesRead === length ? decodeAuditLine(tail.subarray(start, length - 1)).hash : undefined;
        } catch {
          lastHash = undefined;
        }
        if (lastHash !== this.prevHash) {
          throw new AgentError('state_corrupt', `${path} no longer ends in the last durable audit record`, {
            file: path,
          });
        }
      }
    } catch (err) {
      await handle.close().catch(() => {});
      throw ioError(err, path, 'restore');
    }
    this.handle = handle;
  }

  private async rotate(firstSeq: number): Promise<void> {
    // The new file first: if it cannot be made, the current one stays open and named.
    const fileName = auditFileName(firstSeq);
    const handle = await openFile(join(this.dir, fileName), 'wx', true);
    await this.handle.close().catch(() => {});
    this.handle = handle;
    this.fileName = fileName;
    this.fileBytes = 0;
    const files = await listAuditFiles(this.dir);
    const expired = files.slice(0, Math.max(0, files.length - this.keepFiles));
    if (expired.length === 0) return;
    for (const file of expired) {
      await unlink(join(this.dir, file.name)).catch((err: unknown) => {
        this.logger.warn(
          { code: 'state_io', file: file.name, err: String(err) },
          'could not delete an old audit file',
        );
      });
    }
    await syncDirectory(this.dir).catch(() => {});
    this.logger.info(
      { deleted: expired.map((file) => file.name) },
      'audit log rotated; deleted the oldest files',
    );
  }
}

/**
 * Reads records with seq >= fromSeq from an audit directory (no open log needed). Lines that
 * are not valid records are skipped with a warning (verifyAuditLog reports them); a partial
 * last line (a write in progress) is skipped silently.
 */
export async function* readAuditLog(
  dir: string,
  fromSeq: number,
  options: { untilSeq?: number; logger?: Logger } = {},
): AsyncGenerator<AuditRecord, void, undefined> {
  const until = options.untilSeq ?? Number.POSITIVE_INFINITY;
  const logger = options.logger ?? silentLogger;
  if (fromSeq > until) return;
  const files = await listAuditFiles(dir);
  let start = 0;
  files.forEach((file, index) => {
    if (file.firstSeq <= fromSeq) start = index;
  });
  for (const file of files.slice(start)) {
    if (file.firstSeq > until) return;
    let content: Buffer;
    try {
      content = await readFile(join(dir, file.name));
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') continue; // deleted by rotation meanwhile
      throw ioError(err, join(dir, file.name), 'read');
    }
    for (const scanned of scanLines(content, decodeAuditLine)) {
      if (scanned.value === undefined) {
        if (scanned.complete) {
          logger.warn(
            { code: 'audit_chain_broken', file: file.name, line: scanned.line, problem: scanned.problem },
            'skipped a bad audit record',
          );
        }
        continue;
      }
      if (scanned.value.seq < fromSeq) continue;
      if (scanned.value.seq > until) return;
      yield scanned.value;
    }
  }
}

export type AuditBreakReason =
  | 'bad_json'
  | 'bad_record'
  | 'bad_hash'
  | 'prev_mismatch'
  | 'seq_gap'
  | 'file_name_mismatch'
  | 'truncated_record';

export interface AuditBreak {
  readonly file: string;
  /** 1-based line in that file. */
  readonly line: number;
  /** The seq the broken line claims, when it could be read. */
  readonly seq?: number;
  readonly reason: AuditBreakReason;
  readonly message: string;
}

interface AuditVerifyCommon {
  /** Records verified (before the break, when there is one). */
  readonly records: number;
  readonly files: number;
  /** Files holding bytes cut off at recovery (`*.corrupt-*`), for a human to inspect. */
  readonly quarantined: readonly string[];
  /** Facts that are not errors (earlier files rotated away, a write in progress). */
  readonly notes: readonly string[];
}

export type AuditVerifyResult =
  | (AuditVerifyCommon & {
      readonly ok: true;
      readonly firstSeq?: number;
      readonly lastSeq?: number;
      /** False when the oldest remaining record follows rotated-away ones: its prev cannot be checked. */
      readonly oldestPrevChecked: boolean;
    })
  | (AuditVerifyCommon & { readonly ok: false; readonly broken: AuditBreak });

/** Walks every audit file in order and reports ok, or the first broken link. Reads only. */
export async function verifyAuditLog(dir: string): Promise<AuditVerifyResult> {
  const files = await listAuditFiles(dir);
  const quarantined = (await readdir(dir)).filter(
    (name) => name.startsWith('audit-') && name.includes('.corrupt-'),
  );
  const notes: string[] = [];
  let records = 0;
  let firstSeq: number | undefined;
  let lastSeq: number | undefined;
  let lastHash: string | undefined;
  let oldestPrevChecked = true;
  const fail = (broken: AuditBreak): AuditVerifyResult => ({
    ok: false,
    records,
    files: files.length,
    quarantined,
    notes,
    broken,
  });

  for (const [fileIndex, file] of files.entries()) {
    const content = await readAuditFile(join(dir, file.name));
    const isLastFile = fileIndex === files.length - 1;
    if (content.length === 0) {
      notes.push(`${file.name} is empty`);
      continue;
    }
    let lineNo = 0;
    let offset = 0;
    let firstInFile = true;
    while (offset < content.length) {
      lineNo += 1;
      const newline = content.indexOf(0x0a, offset);
      const at = { file: file.name, line: lineNo };
      if (newline === -1) {
        if (isLastFile) {
          notes.push(
            `${file.name} ends in a partial record (a write in progress or a crash); the agent cuts it off when it opens the log`,
          );
          break;
        }
        return fail({
          ...at,
          reason: 'truncated_record',
          message: 'the line has no end (the file was cut short)',
        });
      }
      const text = content.toString('utf8', offset, newline);
      offset = newline + 1;
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        return fail({ ...at, reason: 'bad_json', message: 'the line is not valid JSON' });
      }
      const shape = checkShape(parsed);
      if (typeof shape === 'string') {
        const seq = seqOf(parsed);
        return fail({ ...at, ...(seq === undefined ? {} : { seq }), reason: 'bad_record', message: shape });
      }
      const { prev, hash, ...body } = shape;
      const seq = shape.seq;
      if (hashAuditRecord(prev, body) !== hash) {
        return fail({
          ...at,
          seq,
          reason: 'bad_hash',
          message: 'the record does not match its hash (it was altered)',
        });
      }
      if (lastSeq !== undefined && seq !== lastSeq + 1) {
        return fail({
          ...at,
          seq,
          reason: 'seq_gap',
          message: `expected seq ${lastSeq + 1} after ${lastSeq}, found ${seq} (records removed or reordered)`,
        });
      }
      if (lastHash !== undefined && prev !== lastHash) {
        return fail({
          ...at,
          seq,
          reason: 'prev_mismatch',
          message: `prev does not match the hash of seq ${lastSeq}`,
        });
      }
      if (lastHash === undefined) {
        if (seq === 1 && prev !== GENESIS_PREV) {
          return fail({ ...at, seq, reason: 'prev_mismatch', message: 'seq 1 must have the all-zero prev' });
        }
        if (seq !== 1) {
          oldestPrevChecked = false;
          notes.push(
            `the oldest remaining record is seq ${seq}; records before it were rotated away, so its prev cannot be checked`,
          );
        }
        firstSeq = seq;
      }
      if (firstInFile && seq !== file.firstSeq) {
        return fail({
          ...at,
          seq,
          reason: 'file_name_mismatch',
          message: `the file is named for seq ${file.firstSeq} but starts at seq ${seq}`,
        });
      }
      firstInFile = false;
      records += 1;
      lastSeq = seq;
      lastHash = hash;
    }
  }
  return {
    ok: true,
    records,
    files: files.length,
    quarantined,
    notes,
    ...(firstSeq === undefined ? {} : { firstSeq }),
    ...(lastSeq === undefined ? {} : { lastSeq }),
    oldestPrevChecked,
  };
}

/** Decodes and self-checks one line; throws with the problem. Links are not checked here. */
function decodeAuditLine(line: Buffer): AuditRecord {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line.toString('utf8'));
  } catch {
    throw new Error('not valid JSON');
  }
  const shape = checkShape(parsed);
  if (typeof shape === 'string') throw new Error(shape);
  const { prev, hash, ...body } = shape;
  if (hashAuditRecord(prev, body) !== hash) throw new Error('hash mismatch');
  return shape;
}

/** The record typed, or what is wrong with its shape. */
function checkShape(value: unknown): AuditRecord | string {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    return 'the record is not an object';
  const record = value as Record<string, unknown>;
  if (typeof record.seq !== 'number' || !Number.isSafeInteger(record.seq) || record.seq < 1)
    return 'seq is not a positive integer';
  if (typeof record.ts !== 'string') return 'ts is not a string';
  if (typeof record.type !== 'string') return 'type is not a string';
  if (typeof record.prev !== 'string' || !HASH_PATTERN.test(record.prev))
    return 'prev is not a SHA-256 hex digest';
  if (typeof record.hash !== 'string' || !HASH_PATTERN.test(record.hash))
    return 'hash is not a SHA-256 hex digest';
  return record as AuditRecord;
}

/** The record `pending` becomes as seq `seq` after the record hashed `prev`. */
function chain(pending: Pending, seq: number, prev: string): Chained {
  const body = { seq, ts: pending.ts, type: pending.type, ...pending.fields };
  const hash = hashAuditRecord(prev, body);
  const record: AuditRecord = { ...body, type: pending.type, prev, hash };
  return { pending, record, line: Buffer.from(`${JSON.stringify(record)}\n`, 'utf8') };
}

function seqOf(value: unknown): number | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const seq = (value as { seq?: unknown }).seq;
  return typeof seq === 'number' ? seq : undefined;
}

function findForbiddenField(value: unknown): string | undefined {
  if (Array.isArray(value)) {
    for (const item of value) {
      const found = findForbiddenField(item);
      if (found !== undefined) return found;
    }
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  for (const [name, inner] of Object.entries(value)) {
    if (forbiddenFieldName(name)) return name;
    const found = findForbiddenField(inner);
    if (found !== undefined) return found;
  }
  return undefined;
}

async function listAuditFiles(dir: string): Promise<AuditFile[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    throw ioError(err, dir, 'list');
  }
  const files: AuditFile[] = [];
  for (const name of names) {
    const match = FILE_PATTERN.exec(name);
    if (match?.[1] !== undefined) files.push({ name, firstSeq: Number(match[1]) });
  }
  return files.sort((a, b) => a.firstSeq - b.firstSeq);
}

async function readAuditFile(path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    throw ioError(err, path, 'read');
  }
}

async function openFile(path: string, flags: 'r+' | 'wx', created = false): Promise<FileHandle> {
  try {
    const handle = await open(path, flags, 0o600);
    if (created) await syncDirectory(dirname(path));
    return handle;
  } catch (err) {
    throw ioError(err, path, created ? 'create' : 'open');
  }
}

async function cutTail(
  path: string,
  content: Buffer,
  validEnd: number,
  keepAside: boolean,
  logger: Logger,
): Promise<void> {
  let quarantinedTo: string | undefined;
  if (keepAside) {
    quarantinedTo = `${path}.corrupt-${uniqueStamp()}`;
    await writeFileAtomic(quarantinedTo, content.subarray(validEnd));
  }
  const handle = await openFile(path, 'r+');
  try {
    await handle.truncate(validEnd);
    await handle.sync();
  } catch (err) {
    throw ioError(err, path, 'truncate');
  } finally {
    await handle.close();
  }
  const fields = { file: path, truncatedBytes: content.length - validEnd };
  if (quarantinedTo === undefined) logger.info(fields, 'audit log: cut off a torn last record');
  else
    logger.warn({ ...fields, quarantinedTo }, 'audit log: cut off invalid tail records; copied them aside');
}

function checkSetting(name: string, value: number, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new AgentError(
      'config_invalid',
      `audit log option ${name} must be an integer >= ${min}, got ${value}`,
      {
        field: name,
        value,
        allowed: `integer >= ${min}`,
      },
    );
  }
}
