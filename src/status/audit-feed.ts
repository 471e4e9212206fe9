import type { Logger } from '../core/logger.js';
import type { AuditRecord } from '../store/audit-log.js';

/**
 * Follows the audit log for the status page: polls the durable sequence number (a property
 * read; no disk access), hands new records to the live streams and counts access decisions by
 * result and code for /metrics. Records come from the log's in-memory tail; a burst larger than
 * the tail between two polls is read back from the files.
 */

export interface AuditSource {
  readonly lastSeq: number;
  recent(n: number): AuditRecord[];
  readFrom?(fromSeq: number): AsyncIterable<AuditRecord>;
}

export type AuditListener = (records: readonly AuditRecord[]) => void;

/**
 * Counts of `access` records, and of the denials `access.summary` records stand for (reader
 * noise is audited as summaries): result → code ('' for grants) → n.
 */
export type DecisionCounts = Map<string, Map<string, number>>;

export function countDecisions(counts: DecisionCounts, records: readonly AuditRecord[]): void {
  for (const r of records) {
    const n =
      r.type === 'access' ? 1 : r.type === 'access.summary' && typeof r.count === 'number' ? r.count : 0;
    if (n <= 0) continue;
    const result = typeof r.result === 'string' ? r.result : 'unknown';
    const code = typeof r.code === 'string' ? r.code : '';
    const byCode = counts.get(result) ?? new Map<string, number>();
    byCode.set(code, (byCode.get(code) ?? 0) + n);
    counts.set(result, byCode);
  }
}

/** Records after `afterSeq` from the in-memory tail, and whether some were already out of it. */
export function recordsAfter(
  tail: readonly AuditRecord[],
  afterSeq: number,
): { records: AuditRecord[]; complete: boolean } {
  const records = tail.filter((r) => r.seq > afterSeq);
  const first = records[0];
  return { records, complete: first === undefined || first.seq === afterSeq + 1 };
}

const TAIL_WINDOW = 100;

export class AuditFeed {
  readonly decisions: DecisionCounts = new Map();
  private readonly listeners = new Set<AuditListener>();
  private seenSeq: number;
  private timer: NodeJS.Timeout | undefined;
  private polling = false;

  constructor(
    private readonly source: AuditSource,
    private readonly log: Logger,
    private readonly pollMs = 200,
  ) {
    this.seenSeq = source.lastSeq;
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      void this.poll();
    }, this.pollMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.listeners.clear();
  }

  get lastSeq(): number {
    return this.seenSeq;
  }

  subscribe(listener: AuditListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The newest n records (for a page that just connected). */
  recent(n: number): AuditRecord[] {
    return this.source.recent(n);
  }

  /** Records after `seq` that the tail still holds (a stream resuming with Last-Event-ID). */
  since(seq: number): AuditRecord[] {
    return recordsAfter(this.source.recent(TAIL_WINDOW), seq).records;
  }

  /** One poll step (exposed for tests). */
  async poll(): Promise<void> {
    if (this.polling) return;
    const target = this.source.lastSeq;
    if (target <= this.seenSeq) return;
    this.polling = true;
    try {
      let { records, complete } = recordsAfter(this.source.recent(TAIL_WINDOW), this.seenSeq);
      if (!complete && this.source.readFrom) {
        const read: AuditRecord[] = [];
        for await (const r of this.source.readFrom(this.seenSeq + 1)) {
          if (r.seq > target) break;
          read.push(r);
        }
        records = read;
      }
      records = records.filter((r) => r.seq <= target);
      this.seenSeq = target;
      if (records.length === 0) return;
      countDecisions(this.decisions, records);
      for (const listener of this.listeners) {
        try {
          listener(records);
        } catch (err) {
          this.log.warn({ code: 'internal', err: String(err) }, 'audit feed listener failed');
        }
      }
    } catch (err) {
      this.log.warn({ code: 'state_io', err: String(err) }, 'audit feed could not read the log');
    } finally {
      this.polling = false;
    }
  }
}
