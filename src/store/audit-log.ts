/**
 * The append-only, hash-chained audit log.
 *
 * Files: `<dir>/audit-<first seq, 12 digits>.jsonl`, one JSON record per line, so the file that
 * holds seq N is the last one whose name is <= N, and sorting names sorts records. A record:
 *
 *     {"seq":42,"ts":"2025-…Z","type":"decision",…event fields…,"prev":"<64 hex>","hash":"<64 hex>"}
 *
 * hash = hex(SHA-256(prev ‖ canonicalJson(record without prev and hash))), prev = the previous
 * record's hash (64 zeros before seq 1). `seq` continues across restarts and files. The chain's
 * head is anchored in `<dir>.head` and `<dir>.mirror.head` (see audit-chain.ts), so removing the
 * last records, truncating, or removing files shows in `verifyAuditLog`.
 *
 * `append` resolves when the record is durable; concurrent appends are group-committed. A
 * record's time is taken at `append`, its seq and hash when it is written, so a write that fails
 * (a full disk) leaves no gap in the chain: the log restores its last durable state and the
 * next records continue from there (see group-commit.ts and `restoreDurableState`). Files
 * rotate at `maxFileBytes`; beyond `keepFiles` the oldest are deleted, except files holding
 * records a reader still needs (`retainFrom`, the cloud outbox's lowest unsent seq), which are
 * kept up to the hard cap `maxFiles`, past which the oldest go anyway and are counted
 * (`rotationStats().unsentRecords`). What rotation deleted is written into the anchors first.
 *
 * On open: a torn last record (an incomplete line: a crash mid-write) is cut off silently. A
 * damaged record (a complete line that fails its hash), a head that does not match the anchor,
 * files missing at the start, or a missing or damaged anchor is DAMAGE: the damaged bytes stay
 * where they are (evidence), appending continues after them with an `audit.damage` record that
 * says what was found (code audit_chain_broken; also in `findings`), and `verifyAuditLog` fails
 * until `vehicle-agent state repair` acknowledges it. Damage further back is not looked for at
 * open (that would read the whole log); `verifyAuditLog` finds it.
 *
 * One process appends at a time (`<dir>/audit.lock`, see owner-lock.ts); readers need no lock.
 *
 * Defence in depth: an event may not carry a field named like a raw card UID or a secret
 * (see `forbiddenFieldName`), nor the reserved `seq`, `ts`, `prev`, `hash`.
 */
import type { FileHandle } from 'node:fs/promises';
import { mkdir, open, readFile, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { silentLogger } from '../core/logger.js';
import { writeFileAtomic } from './atomic.js';
import {
  type Anchor,
  type AnchorRotated,
  AUDIT_ANCHORED_TYPE,
  AUDIT_DAMAGE_TYPE,
  type AuditFile,
  type AuditRecord,
  anchorPaths,
  auditFileName,
  decodeAuditLine,
  encodeAnchor,
  GENESIS_PREV,
  hashAuditRecord,
  listAuditFiles,
  readAnchors,
  readAuditFile,
  salvageSeq,
} from './audit-chain.js';
import { errnoOf, ioError, syncDirectory, writeAll } from './fs-util.js';
import { GroupCommitQueue, type WriteHealth } from './group-commit.js';
import type { IntegrityFinding } from './integrity.js';
import { planRecovery, scanLines } from './line-scan.js';
import { acquireOwnerLock, type OwnerLock } from './owner-lock.js';

export {
  AUDIT_DAMAGE_TYPE,
  AUDIT_REPAIR_TYPE,
  type AuditBreak,
  type AuditBreakReason,
  type AuditRecord,
  type AuditVerifyResult,
  anchorPaths,
  auditFileName,
  GENESIS_PREV,
  hashAuditRecord,
  verifyAuditLog,
} from './audit-chain.js';

export interface AuditEvent {
  readonly type: string;
  readonly [field: string]: unknown;
}

export interface AuditLogOptions {
  /** A file is rotated before it would grow past this; default 4 MiB, at least 4 KiB. */
  readonly maxFileBytes?: number;
  /** Files kept, the current one included; default 10. */
  readonly keepFiles?: number;
  /**
   * The lowest seq a reader still needs (the cloud outbox: its first unsent record), or
   * undefined when it needs nothing. Rotation keeps files holding it or later records beyond
   * `keepFiles`, up to `maxFiles`.
   */
  readonly retainFrom?: () => number | undefined;
  /** Hard cap on files kept, whatever `retainFrom` says; default 4 × keepFiles. */
  readonly maxFiles?: number;
  /** Largest record line; default 64 KiB. */
  readonly maxRecordBytes?: number;
  /** Durable records kept in memory for `recent`; default 100. */
  readonly recentCapacity?: number;
  /** Wall time in ms for `ts` (pass the agent's trusted clock); default Date.now. */
  readonly now?: () => number;
  /** The head anchor is rewritten at most this often while records arrive; default 200 ms. */
  readonly anchorIntervalMs?: number;
  /**
   * The agent has run on this state directory before, so the log cannot be empty: an empty log
   * without anchors means it was removed, and that is recorded (audit.damage) instead of
   * starting a fresh chain that would hide it.
   */
  readonly expectHistory?: boolean;
  readonly logger?: Logger;
}

export interface AuditRotationStats {
  /** Files and records rotation deleted (since the log began, from the anchor). */
  readonly deletedFiles: number;
  readonly deletedRecords: number;
  /** Of those, records `retainFrom` still needed (deleted because of `maxFiles`). */
  readonly unsentRecords: number;
  /** Files kept beyond `keepFiles` because `retainFrom` needs them. */
  readonly retainedFiles: number;
  /** The file caps in force: `keepFiles`, and `maxFiles` (the disk budget for retained files). */
  readonly keepFiles: number;
  readonly maxFiles: number;
  /**
   * Records `retainFrom` needs now that rotation has already deleted (0 once the reader has
   * stepped over them): while above 0 the cloud is missing part of the log.
   */
  readonly unsentMissing: number;
}

/** The audit record rotation writes when it deleted records `retainFrom` still needed. */
export const AUDIT_RETENTION_TYPE = 'audit.retention';

const RESERVED = new Set(['seq', 'ts', 'prev', 'hash']);

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

type Settings = Required<Omit<AuditLogOptions, 'logger' | 'retainFrom' | 'expectHistory'>> & {
  expectHistory: boolean;
  logger: Logger;
  retainFrom: (() => number | undefined) | undefined;
};

/** What open found wrong with the log, in the words of an `audit.damage` record. */
interface DamageProblem {
  readonly reason: string;
  readonly message: string;
  readonly file?: string;
  readonly line?: number;
  readonly lost?: { readonly fromSeq: number; readonly toSeq: number };
}

export class AuditLog {
  readonly dir: string;
  private handle: FileHandle;
  private fileName: string;
  private fileBytes: number;
  private nextSeq: number;
  private prevHash: string;
  private durableSeq: number;
  private durableHash: string | undefined;
  private rotated: AnchorRotated | null;
  private retainedFiles = 0;
  private readonly tail: AuditRecord[];
  private readonly settings: Settings;
  private readonly logger: Logger;
  private readonly queue: GroupCommitQueue<Pending>;
  private readonly lock: OwnerLock;
  private readonly damageFindings: IntegrityFinding[] = [];
  private anchorTimer: NodeJS.Timeout | undefined;
  private anchorWrite: Promise<void> | undefined;
  private anchorDirty = false;
  private lastAnchorAt = 0;
  private closed = false;

  private constructor(
    dir: string,
    handle: FileHandle,
    fileName: string,
    fileBytes: number,
    chain: {
      nextSeq: number;
      prevHash: string;
      last: AuditRecord | undefined;
      rotated: AnchorRotated | null;
    },
    tail: AuditRecord[],
    settings: Settings,
    lock: OwnerLock,
  ) {
    this.dir = dir;
    this.lock = lock;
    this.handle = handle;
    this.fileName = fileName;
    this.fileBytes = fileBytes;
    this.nextSeq = chain.nextSeq;
    this.prevHash = chain.prevHash;
    this.durableSeq = chain.last?.seq ?? 0;
    this.durableHash = chain.last?.hash;
    this.rotated = chain.rotated;
    this.tail = tail;
    this.settings = settings;
    this.logger = settings.logger;
    this.queue = new GroupCommitQueue(join(dir, 'audit'), (items) => this.writeBatch(items), {
      restore: () => this.restoreDurableState(),
    });
  }

  static async open(dir: string, options: AuditLogOptions = {}): Promise<AuditLog> {
    const keepFiles = options.keepFiles ?? 10;
    const settings: Settings = {
      maxFileBytes: options.maxFileBytes ?? 4 * 1024 * 1024,
      keepFiles,
      maxFiles: options.maxFiles ?? keepFiles * 4,
      maxRecordBytes: options.maxRecordBytes ?? 64 * 1024,
      recentCapacity: options.recentCapacity ?? 100,
      now: options.now ?? Date.now,
      anchorIntervalMs: options.anchorIntervalMs ?? 200,
      logger: options.logger ?? silentLogger,
      retainFrom: options.retainFrom,
      expectHistory: options.expectHistory ?? false,
    };
    checkSetting('maxFileBytes', settings.maxFileBytes, 4096);
    checkSetting('keepFiles', settings.keepFiles, 1);
    checkSetting('maxFiles', settings.maxFiles, settings.keepFiles);
    checkSetting('maxRecordBytes', settings.maxRecordBytes, 256);
    checkSetting('recentCapacity', settings.recentCapacity, 0);
    checkSetting('anchorIntervalMs', settings.anchorIntervalMs, 0);
    try {
      const created = await mkdir(dir, { recursive: true, mode: 0o700 });
      if (created !== undefined) await syncDirectory(dirname(dir));
    } catch (err) {
      throw ioError(err, dir, 'create');
    }
    const lock = await acquireOwnerLock(join(dir, 'audit'));
    let log: AuditLog | undefined;
    try {
      const recovered = await AuditLog.recover(dir, settings, lock);
      log = recovered.log;
      if (recovered.problems.length > 0) await log.recordDamage(recovered.problems, recovered.anchorSeq);
      else if (recovered.marker) await log.append({ type: AUDIT_ANCHORED_TYPE, headSeq: log.lastSeq });
      await log.writeAnchors();
      return log;
    } catch (err) {
      if (log !== undefined) await log.close().catch(() => {});
      else await lock.release();
      throw err;
    }
  }

  private static async recover(
    dir: string,
    settings: Settings,
    lock: OwnerLock,
  ): Promise<{ log: AuditLog; problems: DamageProblem[]; anchorSeq: number | undefined; marker: boolean }> {
    const logger = settings.logger;
    const anchors = await readAnchors(dir);
    const anchor = anchors.anchor;
    const files = await listAuditFiles(dir);
    const problems: DamageProblem[] = [];
    /** Hashes of the records read here, by seq (to check the anchored head). */
    const hashes = new Map<number, string>();

    let last: AuditRecord | undefined;
    let tail: AuditRecord[] = [];
    let newestBytes = 0;
    let highestClaimed = 0;
    for (let i = files.length - 1; i >= 0 && last === undefined; i -= 1) {
      const file = files[i];
      if (file === undefined) continue;
      const path = join(dir, file.name);
      const content = await readAuditFile(path);
      const plan = planRecovery(scanLines(content, decodeAuditLine), content.length);
      if (i === files.length - 1) {
        if (plan.tornBytes > 0) await cutTornTail(path, plan.completeEnd, plan.tornBytes, logger);
        newestBytes = plan.completeEnd;
      }
      // Damage an earlier open already recorded (an audit.damage record after it) is not new.
      const recorded = new Set<string>();
      for (const scanned of plan.valid) {
        const r = scanned.value;
        if (r?.type !== AUDIT_DAMAGE_TYPE || !Array.isArray(r.problems)) continue;
        for (const p of r.problems as { file?: unknown; line?: unknown }[])
          recorded.add(`${p.file}:${p.line}`);
      }
      for (const bad of plan.corrupt) {
        if (recorded.has(`${file.name}:${bad.line}`)) continue;
        const raw = content.subarray(bad.offset, bad.end - 1);
        const seq = salvageSeq(raw);
        if (seq !== undefined) highestClaimed = Math.max(highestClaimed, seq);
        problems.push({
          reason: 'record_damaged',
          file: file.name,
          line: bad.line,
          message: `${file.name} line ${bad.line}${seq === undefined ? '' : ` (seq ${seq})`}: ${bad.problem}`,
        });
      }
      const valid = plan.valid.flatMap((scanned) => (scanned.value === undefined ? [] : [scanned.value]));
      for (const r of valid) hashes.set(r.seq, r.hash);
      last = valid.at(-1);
      tail = valid.slice(Math.max(0, valid.length - settings.recentCapacity));
    }
    const lastSeq = last?.seq ?? 0;

    // The anchored head must still be there, unchanged.
    for (const p of anchors.problems) {
      problems.push({
        reason: 'anchor_damaged',
        file: p.file,
        message: `head anchor ${p.file}: ${p.problem}`,
      });
    }
    const head = anchor?.head ?? null;
    if (head !== null) {
      if (lastSeq < head.seq) {
        problems.push({
          reason: 'head_missing',
          message: `the log ends at seq ${lastSeq}, but seq ${head.seq} was written: the records after it (or whole files) are missing`,
          lost: { fromSeq: lastSeq + 1, toSeq: head.seq },
        });
      } else {
        const hash = hashes.get(head.seq) ?? (await findRecordHash(dir, files, head.seq));
        if (hash !== head.hash) {
          problems.push({
            reason: 'head_mismatch',
            message: `record seq ${head.seq} is not the one that was written (replaced or damaged)`,
          });
        }
      }
    }
    // The oldest record must follow what rotation deleted (or be seq 1).
    let rotated = anchor?.rotated ?? null;
    const oldest = files[0] === undefined ? undefined : await firstRecord(join(dir, files[0].name));
    if (anchor !== undefined && oldest !== undefined && files[0] !== undefined) {
      const expected = (rotated?.throughSeq ?? 0) + 1;
      if (oldest.seq > expected) {
        problems.push({
          reason: 'records_missing_at_start',
          file: files[0].name,
          message: `the oldest record is seq ${oldest.seq}; rotation removed only up to seq ${expected - 1}`,
          lost: { fromSeq: expected, toSeq: oldest.seq - 1 },
        });
        // Recorded in the log now (audit.damage): from here on the log starts where it starts.
        rotated = {
          throughSeq: oldest.seq - 1,
          hash: oldest.prev,
          files: rotated?.files ?? 0,
          records: rotated?.records ?? 0,
          unsentRecords: rotated?.unsentRecords ?? 0,
        };
      }
    }
    if (anchors.none && files.length === 0 && settings.expectHistory) {
      problems.push({
        reason: 'log_missing',
        message: 'the agent has run here before, but the audit log and both its head anchors are gone',
      });
    }
    // A log from before anchors: what rotation removed so far is taken as it is.
    const marker = anchors.none && last !== undefined;
    if (anchors.none && oldest !== undefined && oldest.seq > 1) {
      rotated = {
        throughSeq: oldest.seq - 1,
        hash: oldest.prev,
        files: 0,
        records: oldest.seq - 1,
        unsentRecords: 0,
      };
    }

    const nextSeq = Math.max(lastSeq, head?.seq ?? 0, highestClaimed) + 1;
    const prevHash = last?.hash ?? head?.hash ?? GENESIS_PREV;
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
    const log = new AuditLog(
      dir,
      handle,
      fileName,
      newestBytes,
      { nextSeq, prevHash, last, rotated },
      tail,
      settings,
      lock,
    );
    return { log, problems, anchorSeq: head?.seq, marker };
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

  /** What open found wrong with the log (each also recorded in the chain as `audit.damage`). */
  get findings(): readonly IntegrityFinding[] {
    return this.damageFindings;
  }

  /** What rotation deleted so far, and what it keeps for `retainFrom`. */
  rotationStats(): AuditRotationStats {
    return {
      deletedFiles: this.rotated?.files ?? 0,
      deletedRecords: this.rotated?.records ?? 0,
      unsentRecords: this.rotated?.unsentRecords ?? 0,
      retainedFiles: this.retainedFiles,
      keepFiles: this.settings.keepFiles,
      maxFiles: this.settings.maxFiles,
      unsentMissing: this.unsentMissing(),
    };
  }

  private unsentMissing(): number {
    const through = this.rotated?.throughSeq ?? 0;
    const retain = this.settings.retainFrom?.();
    return retain === undefined || retain > through ? 0 : through - retain + 1;
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

  /** Waits for pending appends, writes the head anchor, then closes; later appends are refused. */
  close(): Promise<void> {
    return this.queue.close(async () => {
      this.closed = true;
      clearTimeout(this.anchorTimer);
      this.anchorTimer = undefined;
      await this.anchorWrite?.catch(() => {});
      await this.writeAnchors().catch((err: unknown) =>
        this.logger.warn({ code: 'state_io', err: String(err) }, 'could not write the audit head anchor'),
      );
      await this.handle.close().catch(() => {});
      await this.lock.release();
    });
  }

  private async recordDamage(
    problems: readonly DamageProblem[],
    anchorSeq: number | undefined,
  ): Promise<void> {
    const lost = problems.flatMap((p) => (p.lost === undefined ? [] : [p.lost]));
    const record = await this.append({
      type: AUDIT_DAMAGE_TYPE,
      code: 'audit_chain_broken',
      problems: problems.map((p) => ({ ...p })),
      ...(anchorSeq === undefined ? {} : { anchoredSeq: anchorSeq }),
    });
    for (const p of problems) {
      this.damageFindings.push({
        file: p.file === undefined ? this.dir : join(this.dir, p.file),
        code: 'audit_chain_broken',
        problem: p.message,
        action: `recorded in the log as ${AUDIT_DAMAGE_TYPE} seq ${record.seq}; \`vehicle-agent audit verify\` fails until \`vehicle-agent state repair\` acknowledges it`,
      });
    }
    this.logger.error(
      {
        code: 'audit_chain_broken',
        dir: this.dir,
        seq: record.seq,
        problems: problems.map((p) => p.message),
        lost,
      },
      'audit log damaged: recorded in the log; run `vehicle-agent audit verify` and `vehicle-agent state repair`',
    );
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
    const pending: Pending = { ts: new Date(this.settings.now()).toISOString(), type: event.type, fields };
    // Checked now against the widest seq, so a record refused for its size is refused here and
    // not in the middle of a batch.
    const widest = chain(pending, WIDEST_SEQ, GENESIS_PREV).line.length;
    if (widest > this.settings.maxRecordBytes) {
      throw new AgentError(
        'record_too_large',
        `audit event "${event.type}" is ${widest} bytes; the limit is ${this.settings.maxRecordBytes}`,
        {
          type: event.type,
          bytes: widest,
          maxBytes: this.settings.maxRecordBytes,
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
      if (filled > 0 && filled + chained.line.length > this.settings.maxFileBytes) {
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
    this.scheduleAnchor();
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
    this.durableHash = last.record.hash;
    for (const { pending, record } of chunk) {
      pending.record = record;
      if (this.settings.recentCapacity > 0) {
        this.tail.push(record);
        if (this.tail.length > this.settings.recentCapacity) this.tail.shift();
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
      // Open ends a damaged file with an audit.damage record (or fails), so the file always ends
      // in the record the chain continues from.
      if (this.fileBytes > 0) {
        const length = Math.min(this.fileBytes, this.settings.maxRecordBytes + 1);
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
    const { keepFiles, maxFiles } = this.settings;
    const retain = this.settings.retainFrom?.();
    const expired: { file: AuditFile; lastSeq: number; unsent: number }[] = [];
    for (let i = 0; i < files.length - 1; i += 1) {
      const file = files[i] as AuditFile;
      const kept = files.length - expired.length;
      if (kept <= keepFiles) break;
      const lastSeq = (files[i + 1] as AuditFile).firstSeq - 1;
      const needed = retain !== undefined && lastSeq >= retain;
      if (needed && kept <= maxFiles) break;
      expired.push({ file, lastSeq, unsent: needed ? lastSeq - Math.max(file.firstSeq, retain) + 1 : 0 });
    }
    this.retainedFiles = Math.max(0, files.length - expired.length - keepFiles);
    const lastExpired = expired.at(-1);
    if (lastExpired === undefined) return;
    // The anchors say what goes, before it goes: a crash in between leaves more than they say.
    const oldestKept = files[expired.length];
    const first = oldestKept === undefined ? undefined : await firstRecord(join(this.dir, oldestKept.name));
    const previous = this.rotated;
    const records = expired.reduce((sum, e) => sum + (e.lastSeq - e.file.firstSeq + 1), 0);
    const unsent = expired.reduce((sum, e) => sum + e.unsent, 0);
    this.rotated = {
      throughSeq: lastExpired.lastSeq,
      hash: first !== undefined && first.seq === lastExpired.lastSeq + 1 ? first.prev : null,
      files: (previous?.files ?? 0) + expired.length,
      records: (previous?.records ?? 0) + records,
      unsentRecords: (previous?.unsentRecords ?? 0) + unsent,
    };
    await this.writeAnchors();
    for (const { file } of expired) {
      await unlink(join(this.dir, file.name)).catch((err: unknown) => {
        this.logger.warn(
          { code: 'state_io', file: file.name, err: String(err) },
          'could not delete an old audit file',
        );
      });
    }
    await syncDirectory(this.dir).catch(() => {});
    const fields = {
      deleted: expired.map((e) => e.file.name),
      throughSeq: lastExpired.lastSeq,
      records,
      ...(unsent > 0 ? { unsentRecords: unsent, maxFiles } : {}),
    };
    if (unsent > 0) {
      this.logger.warn(
        { code: 'audit_retention_exceeded', ...fields },
        'audit log at its file cap (audit.maxFiles): deleted records the outbox had not sent yet',
      );
      // Said in the log itself too, so the cloud learns what it will never receive. Not awaited:
      // this runs inside a write, and the record joins the next one.
      const firstNeeded = expired.find((e) => e.unsent > 0)?.file.firstSeq ?? 1;
      const firstUnsent = Math.max(firstNeeded, retain ?? 1);
      this.append({
        type: AUDIT_RETENTION_TYPE,
        code: 'audit_retention_exceeded',
        unsentRecords: unsent,
        fromSeq: firstUnsent,
        throughSeq: lastExpired.lastSeq,
        maxFiles,
      }).catch((err: unknown) =>
        this.logger.warn({ code: 'state_io', err: String(err) }, 'could not record an audit retention loss'),
      );
    } else {
      this.logger.info(fields, 'audit log rotated; deleted the oldest files');
    }
  }

  private anchor(): Anchor {
    return {
      head: this.durableHash === undefined ? null : { seq: this.durableSeq, hash: this.durableHash },
      rotated: this.rotated,
    };
  }

  /** Writes both anchors now (main copy first). Never ahead of what is durable. */
  private async writeAnchors(): Promise<void> {
    const bytes = encodeAnchor(this.anchor());
    for (const path of anchorPaths(this.dir)) await writeFileAtomic(path, bytes);
    this.lastAnchorAt = performance.now();
  }

  /** Rewrites the anchors soon, at most every anchorIntervalMs, one write at a time. */
  private scheduleAnchor(): void {
    this.anchorDirty = true;
    if (this.closed || this.anchorTimer !== undefined || this.anchorWrite !== undefined) return;
    const wait = Math.max(0, this.lastAnchorAt + this.settings.anchorIntervalMs - performance.now());
    this.anchorTimer = setTimeout(() => {
      this.anchorTimer = undefined;
      this.anchorDirty = false;
      this.anchorWrite = this.writeAnchors()
        .catch((err: unknown) => {
          this.logger.warn({ code: 'state_io', err: String(err) }, 'could not write the audit head anchor');
        })
        .finally(() => {
          this.anchorWrite = undefined;
          if (this.anchorDirty) this.scheduleAnchor();
        });
    }, wait);
    this.anchorTimer.unref();
  }
}

/** The first valid record of a file, if its first line is one. */
async function firstRecord(path: string): Promise<AuditRecord | undefined> {
  let content: Buffer;
  try {
    content = await readFile(path);
  } catch {
    return undefined;
  }
  const newline = content.indexOf(0x0a);
  if (newline < 0) return undefined;
  try {
    return decodeAuditLine(content.subarray(0, newline));
  } catch {
    return undefined;
  }
}

/** The hash of record `seq`, read from the file that holds it. */
async function findRecordHash(
  dir: string,
  files: readonly AuditFile[],
  seq: number,
): Promise<string | undefined> {
  const file = [...files].reverse().find((f) => f.firstSeq <= seq);
  if (file === undefined) return undefined;
  let content: Buffer;
  try {
    content = await readFile(join(dir, file.name));
  } catch {
    return undefined;
  }
  for (const scanned of scanLines(content, decodeAuditLine)) {
    if (scanned.value?.seq === seq) return scanned.value.hash;
  }
  return undefined;
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

async function openFile(path: string, flags: 'r+' | 'wx', created = false): Promise<FileHandle> {
  try {
    const handle = await open(path, flags, 0o600);
    if (created) await syncDirectory(dirname(path));
    return handle;
  } catch (err) {
    throw ioError(err, path, created ? 'create' : 'open');
  }
}

async function cutTornTail(
  path: string,
  completeEnd: number,
  tornBytes: number,
  logger: Logger,
): Promise<void> {
  const handle = await openFile(path, 'r+');
  try {
    await handle.truncate(completeEnd);
    await handle.sync();
  } catch (err) {
    throw ioError(err, path, 'truncate');
  } finally {
    await handle.close();
  }
  logger.info({ file: path, truncatedBytes: tornBytes }, 'audit log: cut off a torn last record');
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

/** The record `pending` becomes as seq `seq` after the record hashed `prev`. */
function chain(pending: Pending, seq: number, prev: string): Chained {
  const body = { seq, ts: pending.ts, type: pending.type, ...pending.fields };
  const hash = hashAuditRecord(prev, body);
  const record: AuditRecord = { ...body, type: pending.type, prev, hash };
  return { pending, record, line: Buffer.from(`${JSON.stringify(record)}\n`, 'utf8') };
}
