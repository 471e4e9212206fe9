import { join } from 'node:path';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { readJsonFileIfExists, writeFileAtomic } from '../store/atomic.js';
import type { AuditRecord } from '../store/audit-log.js';
import type { WriteHealth } from '../store/group-commit.js';
import { openStores, WriteHealthTracker } from '../store/store-registry.js';

/**
 * The durable outbox of audit events for `<base>/events`.
 *
 * The audit log is already durable, append-only and numbered (seq), so the outbox is not a second
 * copy of it: it is a persisted cursor, "every record up to ackedSeq was PUBACKed", over the log.
 *   - At least once: a record counts as delivered only when the broker acknowledged it (QoS 1);
 *     the cursor moves over the longest acknowledged prefix. After a reconnect, a restart or
 *     `kill -9` the flush starts again after the cursor, so the cloud may see a record twice and
 *     de-duplicates by seq. The cursor is written at most every `persistMs` (a crash repeats at
 *     most that much).
 *   - Bounded: when more than `maxEvents` records wait, the oldest are skipped down to 90 % of the
 *     bound and an `outbox.dropped` audit event (itself sent like any other) says how many and
 *     which seqs. Records the log itself rotated away before they were sent are reported the
 *     same way (reason "missing"). The records stay in the local audit log either way.
 *   - Flushed after each (re)connect with at most `window` publishes awaiting a PUBACK.
 */

export interface AuditSource {
  /** Seq of the last durable record (0 when empty). */
  readonly lastSeq: number;
  /** Up to n most recent durable records, oldest first. */
  recent(n: number): readonly AuditRecord[];
  /** Durable records with seq >= fromSeq, in order. */
  readFrom(fromSeq: number): AsyncGenerator<AuditRecord, void, undefined>;
}

export interface OutboxOptions {
  readonly source: AuditSource;
  /** Directory for the cursor file (outbox.json). */
  readonly dir: string;
  readonly maxEvents: number;
  readonly pollMs: number;
  /** Cursor writes at most this often; default 200 ms. */
  readonly persistMs?: number;
  /** Appends an audit event (the drop marker); the agent's own audit(). */
  readonly emit: (event: { readonly type: string; readonly [key: string]: unknown }) => void;
  readonly log: Logger;
}

export interface OutboxStats {
  readonly ackedSeq: number;
  readonly lastSeq: number;
  readonly pending: number;
  readonly inFlight: number;
  readonly dropped: number;
  readonly sent: number;
}

export type PublishRecord = (record: AuditRecord) => Promise<void>;

const CURSOR_FILE = 'outbox.json';
const CURSOR_FORMAT = 'outbox/1';
/** Records read from the log per step. */
const BATCH = 500;

interface Reader {
  readonly iterator: AsyncGenerator<AuditRecord, void, undefined>;
  next: number;
}

export class Outbox {
  private readonly options: OutboxOptions;
  private readonly cursorPath: string;
  private ackedSeq: number;
  /** Acknowledged records above the cursor (acks can arrive out of order). */
  private readonly ackedAbove = new Set<number>();
  private readonly inFlight = new Set<number>();
  private nextSeq: number;
  private publish: PublishRecord | undefined;
  private window = 1;
  private attachment = 0;
  private reader: Reader | undefined;
  private wake: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private persistTimer: NodeJS.Timeout | undefined;
  private persistedSeq: number;
  private persisting: Promise<void> = Promise.resolve();
  private closed = false;
  private dropped = 0;
  private sent = 0;
  /** Writes of the cursor file: in the health report with the other stores (store-registry.ts). */
  private readonly cursorWrites: WriteHealthTracker;
  private readonly unregister: () => void;

  private constructor(options: OutboxOptions, ackedSeq: number) {
    this.options = options;
    this.cursorPath = join(options.dir, CURSOR_FILE);
    this.cursorWrites = new WriteHealthTracker(this.cursorPath);
    this.unregister = openStores.register(join(options.dir, 'outbox'), () => this.cursorWrites.health());
    this.ackedSeq = ackedSeq;
    this.persistedSeq = ackedSeq;
    this.nextSeq = ackedSeq + 1;
  }

  static async open(options: OutboxOptions): Promise<Outbox> {
    if (options.maxEvents < 10)
      throw new AgentError('config_invalid', 'outbox maxEvents must be at least 10');
    let acked = (await readOutboxCursor(options.dir)) ?? 0;
    if (acked > options.source.lastSeq) {
      // The audit log was replaced (a new chain restarts at seq 1): send the new one from its start.
      options.log.warn(
        { ackedSeq: acked, lastSeq: options.source.lastSeq },
        'outbox cursor is past the end of the audit log; starting from the first record',
      );
      acked = 0;
    }
    const outbox = new Outbox(options, acked);
    outbox.timer = setInterval(() => {
      outbox.enforceBound();
      outbox.signal();
    }, options.pollMs);
    outbox.timer.unref();
    outbox.enforceBound();
    return outbox;
  }

  stats(): OutboxStats {
    const lastSeq = this.options.source.lastSeq;
    return {
      ackedSeq: this.ackedSeq,
      lastSeq,
      pending: Math.max(0, lastSeq - this.ackedSeq - this.ackedAbove.size),
      inFlight: this.inFlight.size,
      dropped: this.dropped,
      sent: this.sent,
    };
  }

  /** Starts flushing through `publish` with at most `window` records awaiting acknowledgement. */
  attach(publish: PublishRecord, window: number): void {
    if (this.closed) return;
    this.detach();
    this.publish = publish;
    this.window = Math.max(1, window);
    const attachment = this.attachment;
    void this.pump(attachment).catch((err: unknown) => {
      const e = err instanceof AgentError ? err : new AgentError('state_io', String(err));
      this.options.log.error(
        { code: e.code, err: e.message },
        'outbox flush failed; retrying on the next connection',
      );
    });
  }

  /** Stops flushing (the connection dropped): unacknowledged records go again on the next attach. */
  detach(): void {
    this.attachment += 1;
    this.publish = undefined;
    this.inFlight.clear();
    this.nextSeq = this.ackedSeq + 1;
    this.closeReader();
    this.signal();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.detach();
    clearInterval(this.timer);
    clearTimeout(this.persistTimer);
    this.persistTimer = undefined;
    try {
      await this.persistNow();
    } finally {
      this.cursorWrites.close();
      this.unregister();
    }
  }

  /** Writes of the cursor file: failures, the last error, a write under way (health, /metrics). */
  get writeHealth(): WriteHealth {
    return this.cursorWrites.health();
  }

  private signal(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        if (this.wake === done) this.wake = undefined;
        resolve();
      }, ms);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      this.wake = done;
    });
  }

  private async pump(attachment: number): Promise<void> {
    const live = () => this.attachment === attachment && !this.closed;
    while (live()) {
      this.enforceBound();
      const publish = this.publish;
      if (publish === undefined) return;
      if (this.inFlight.size >= this.window) {
        await this.sleep(this.options.pollMs);
        continue;
      }
      const lastSeq = this.options.source.lastSeq;
      if (this.nextSeq > lastSeq) {
        await this.sleep(this.options.pollMs);
        continue;
      }
      const records = await this.fetch(attachment, this.nextSeq, Math.min(BATCH, lastSeq - this.nextSeq + 1));
      if (!live()) return;
      if (records.length === 0) {
        // Nothing readable from nextSeq to lastSeq: rotated away or unreadable.
        this.skipMissing(this.nextSeq, lastSeq);
        continue;
      }
      for (const record of records) {
        if (!live()) return;
        if (record.seq < this.nextSeq) continue;
        if (record.seq > this.nextSeq) this.skipMissing(this.nextSeq, record.seq - 1);
        this.nextSeq = record.seq + 1;
        if (record.seq <= this.ackedSeq || this.ackedAbove.has(record.seq)) continue;
        while (this.inFlight.size >= this.window && live()) await this.sleep(this.options.pollMs);
        if (!live()) return;
        this.send(publish, record);
      }
    }
  }

  private send(publish: PublishRecord, record: AuditRecord): void {
    const { seq } = record;
    this.inFlight.add(seq);
    this.sent += 1;
    publish(record).then(
      () => {
        this.inFlight.delete(seq);
        // A PUBACK is a delivery whichever connection it came on.
        this.acknowledge(seq);
        this.signal();
      },
      () => {
        // Not delivered; the connection is gone and detach() will rewind to the cursor.
        this.inFlight.delete(seq);
        this.signal();
      },
    );
  }

  private acknowledge(seq: number): void {
    if (seq <= this.ackedSeq) return;
    this.ackedAbove.add(seq);
    let moved = false;
    while (this.ackedAbove.delete(this.ackedSeq + 1)) {
      this.ackedSeq += 1;
      moved = true;
    }
    if (moved) this.schedulePersist();
  }

  /** Records that cannot be read any more: counted in a marker and stepped over. */
  private skipMissing(from: number, to: number): void {
    if (to < from) return;
    let count = 0;
    for (let seq = from; seq <= to; seq++) {
      if (seq > this.ackedSeq && !this.ackedAbove.has(seq)) {
        count += 1;
        this.acknowledge(seq);
      }
    }
    this.nextSeq = Math.max(this.nextSeq, to + 1);
    if (count > 0) this.markDropped('missing', count, from, to);
  }

  /** Keeps at most maxEvents waiting: beyond, skips the oldest down to 90 % and says so. */
  private enforceBound(): void {
    if (this.closed) return;
    const { maxEvents } = this.options;
    const lastSeq = this.options.source.lastSeq;
    if (lastSeq - this.ackedSeq <= maxEvents) return;
    const keep = Math.max(1, Math.floor(maxEvents * 0.9));
    const from = this.ackedSeq + 1;
    const to = lastSeq - keep;
    let count = 0;
    for (let seq = from; seq <= to; seq++) if (!this.ackedAbove.delete(seq)) count += 1;
    this.ackedSeq = to;
    this.nextSeq = Math.max(this.nextSeq, to + 1);
    this.closeReader();
    this.schedulePersist(true);
    if (count > 0) this.markDropped('full', count, from, to);
  }

  private markDropped(reason: 'full' | 'missing', count: number, fromSeq: number, toSeq: number): void {
    this.dropped += count;
    this.options.log.warn(
      { reason, count, fromSeq, toSeq },
      reason === 'full'
        ? 'outbox full: the oldest events will not reach the cloud'
        : 'audit records gone before they were sent',
    );
    this.options.emit({ type: 'outbox.dropped', reason, count, fromSeq, toSeq });
  }

  /** Up to `max` records from `from` on: from the log's in-memory tail when it covers them. */
  private async fetch(attachment: number, from: number, max: number): Promise<AuditRecord[]> {
    const tail = this.options.source.recent(1000);
    const first = tail[0];
    if (first !== undefined && first.seq <= from) {
      const start = tail.findIndex((r) => r.seq >= from);
      return start < 0 ? [] : tail.slice(start, start + max);
    }
    const reused = this.reader !== undefined && this.reader.next === from;
    const out = await this.readBatch(attachment, from, max);
    // A reader opened earlier stops at the log's end as it was then: look again with a fresh one.
    return out.length === 0 && reused ? await this.readBatch(attachment, from, max) : out;
  }

  private async readBatch(attachment: number, from: number, max: number): Promise<AuditRecord[]> {
    // A flush of an earlier connection, back from a slow read, must not touch the reader: it
    // would take records from the current flush, which would then step over them as missing.
    if (attachment !== this.attachment) return [];
    if (this.reader === undefined || this.reader.next !== from) {
      this.closeReader();
      this.reader = { iterator: this.options.source.readFrom(from), next: from };
    }
    const reader = this.reader;
    const out: AuditRecord[] = [];
    while (out.length < max) {
      const step = await reader.iterator.next();
      if (step.done) {
        if (this.reader === reader) this.reader = undefined;
        break;
      }
      out.push(step.value);
      reader.next = step.value.seq + 1;
    }
    return out;
  }

  private closeReader(): void {
    const reader = this.reader;
    this.reader = undefined;
    if (reader) void reader.iterator.return(undefined).catch(() => {});
  }

  private schedulePersist(now = false): void {
    if (this.closed && !now) return;
    if (now) {
      clearTimeout(this.persistTimer);
      this.persistTimer = undefined;
      void this.persistNow();
      return;
    }
    if (this.persistTimer !== undefined) return;
    this.persistTimer = setTimeout(() => {
      this.persistTimer = undefined;
      void this.persistNow();
    }, this.options.persistMs ?? 200);
    this.persistTimer.unref();
  }

  private persistNow(): Promise<void> {
    this.persisting = this.persisting.then(async () => {
      const seq = this.ackedSeq;
      if (seq === this.persistedSeq) return;
      this.cursorWrites.begin();
      try {
        await writeFileAtomic(
          this.cursorPath,
          `${JSON.stringify({ format: CURSOR_FORMAT, ackedSeq: seq })}\n`,
        );
        this.persistedSeq = seq;
        this.cursorWrites.succeeded();
      } catch (err) {
        this.cursorWrites.failed(err);
        this.options.log.error({ code: 'state_io', err: String(err) }, 'cannot persist the outbox cursor');
      }
    });
    return this.persisting;
  }
}

/**
 * The persisted cursor in `dir` (every record up to it was acknowledged), or undefined when there
 * is none yet. The agent reads it before the link starts, so audit rotation keeps what the
 * outbox has not sent from the first write on (AuditLogOptions.retainFrom).
 */
export async function readOutboxCursor(dir: string): Promise<number | undefined> {
  return await readJsonFileIfExists(join(dir, CURSOR_FILE), {
    parse: (v) => {
      const { format, ackedSeq } = (v ?? {}) as { format?: unknown; ackedSeq?: unknown };
      if (
        format !== CURSOR_FORMAT ||
        typeof ackedSeq !== 'number' ||
        !Number.isSafeInteger(ackedSeq) ||
        ackedSeq < 0
      )
        throw new Error(`expected {"format":"${CURSOR_FORMAT}","ackedSeq":N}`);
      return ackedSeq;
    },
  });
}
