/**
 * A small durable key → value map (FIDO signature counters, command counters per kid, the
 * trusted-time floor, ...): a snapshot file plus a journal of changes since the snapshot.
 *
 * Files for base path P: `P.snapshot.json` (atomic replace) and `P.journal` (see journal.ts).
 * `set`/`delete` change memory at once (so a check-then-set on a counter cannot race with a
 * second caller) and resolve when the change is durable; the caller acts only after that.
 * When the journal outgrows max(compactAfterBytes, size of the last snapshot), the map is
 * compacted: the snapshot is rewritten and the journal emptied, inside one journal operation so
 * no change is lost in between. A crash between the two leaves a journal whose changes the
 * snapshot already holds; replaying them again gives the same map (last write per key wins).
 *
 * A change whose write fails stays in memory (the caller was told it is not durable): for a
 * signature counter that is the safe side, a value at least as high as the one on disk. After a
 * failed write the journal restores itself and later changes are written again (journal.ts).
 */

import type { Logger } from '../core/logger.js';
import { silentLogger } from '../core/logger.js';
import { parseJsonBytes, readFileIfExists, writeFileAtomic } from './atomic.js';
import type { GroupCommitOptions, StagedItem, WriteHealth } from './group-commit.js';
import type { CorruptPolicy, JournalRecovery, OpenFile } from './journal.js';
import { Journal } from './journal.js';

export interface JournaledMapOptions<V> {
  /** Validates a value read back (from the snapshot or the journal); a throw means corrupt. */
  readonly parseValue?: (value: unknown) => V;
  /** Journal size that triggers compaction (at least the snapshot's size); default 64 KiB. */
  readonly compactAfterBytes?: number;
  /** Largest encoded change; default 64 KiB. */
  readonly maxRecordBytes?: number;
  /** What the journal does with corrupt records before valid ones; default 'fail'. */
  readonly onCorrupt?: CorruptPolicy;
  readonly logger?: Logger;
  /** Backlog bound and restore backoff of the journal's writes (see group-commit.ts). */
  readonly writeQueue?: Omit<GroupCommitOptions, 'restore'>;
  /** Opens the journal file (tests inject faults). */
  readonly openFile?: OpenFile;
}

type Change<V> = { readonly k: string; readonly v: V } | { readonly k: string; readonly d: 1 };

const SNAPSHOT_FORMAT = 'journaled-map/1';

export class JournaledMap<V> {
  readonly path: string;
  readonly recovery: JournalRecovery;
  private readonly values: Map<string, V>;
  private readonly journal: Journal<Change<V>>;
  private readonly snapshotPath: string;
  private readonly compactAfterBytes: number;
  private readonly logger: Logger;
  private snapshotBytes: number;
  /** Journal bytes written or queued since the last compaction started. */
  private journalBytes: number;
  private compacting: Promise<void> | undefined;
  private closing = false;

  private constructor(
    path: string,
    values: Map<string, V>,
    journal: Journal<Change<V>>,
    recovery: JournalRecovery,
    snapshotBytes: number,
    compactAfterBytes: number,
    logger: Logger,
  ) {
    this.path = path;
    this.values = values;
    this.journal = journal;
    this.recovery = recovery;
    this.snapshotPath = `${path}.snapshot.json`;
    this.snapshotBytes = snapshotBytes;
    this.journalBytes = journal.sizeBytes;
    this.compactAfterBytes = compactAfterBytes;
    this.logger = logger;
  }

  static async open<V = unknown>(
    path: string,
    options: JournaledMapOptions<V> = {},
  ): Promise<JournaledMap<V>> {
    const parseValue = options.parseValue ?? ((value: unknown) => value as V);
    const logger = options.logger ?? silentLogger;
    const snapshotPath = `${path}.snapshot.json`;
    const snapshotBytes = await readFileIfExists(snapshotPath);
    const values =
      snapshotBytes === undefined
        ? new Map<string, V>()
        : parseJsonBytes(snapshotPath, snapshotBytes, { parse: (raw) => parseSnapshot(raw, parseValue) });
    const { journal, records, recovery } = await Journal.open<Change<V>>(`${path}.journal`, {
      parse: (raw) => parseChange(raw, parseValue),
      maxRecordBytes: options.maxRecordBytes ?? 64 * 1024,
      onCorrupt: options.onCorrupt ?? 'fail',
      logger,
      ...(options.writeQueue ? { writeQueue: options.writeQueue } : {}),
      ...(options.openFile ? { openFile: options.openFile } : {}),
    });
    for (const change of records) {
      if ('d' in change) values.delete(change.k);
      else values.set(change.k, change.v);
    }
    return new JournaledMap(
      path,
      values,
      journal,
      recovery,
      snapshotBytes?.length ?? 0,
      options.compactAfterBytes ?? 64 * 1024,
      logger,
    );
  }

  get(key: string): V | undefined {
    return this.values.get(key);
  }

  has(key: string): boolean {
    return this.values.has(key);
  }

  get size(): number {
    return this.values.size;
  }

  entries(): IterableIterator<[string, V]> {
    return this.values.entries();
  }

  /** Write failures, refusals and stalls of the journal (health, /metrics). */
  get writeHealth(): WriteHealth {
    return this.journal.writeHealth;
  }

  /** Sets the value now; resolves when durable. Rejects 'record_too_large' before changing anything. */
  set(key: string, value: V): Promise<void> {
    return this.change(
      { k: key, v: value },
      () => this.values.set(key, value),
      (line) => this.journal.appendEncoded(line),
    );
  }

  /**
   * Sets the value now, in two steps: resolves once the change is written to the journal (it
   * survives the process being killed) with `durable`, which settles once it is fdatasynced (it
   * survives a power cut). Rejects, without `durable`, when the write fails.
   */
  stage(key: string, value: V): Promise<StagedItem> {
    return this.change(
      { k: key, v: value },
      () => this.values.set(key, value),
      (line) => this.journal.appendEncodedStaged(line),
    );
  }

  /** Deletes the key now; resolves (true if it existed) when durable. */
  async delete(key: string): Promise<boolean> {
    if (!this.values.has(key)) return false;
    await this.change(
      { k: key, d: 1 },
      () => this.values.delete(key),
      (line) => this.journal.appendEncoded(line),
    );
    return true;
  }

  /** Rewrites the snapshot and empties the journal. */
  compact(): Promise<void> {
    const entries = [...this.values.entries()];
    this.journalBytes = 0;
    const snapshot = `${JSON.stringify({ format: SNAPSHOT_FORMAT, entries })}\n`;
    return this.journal.rewrite([], async () => {
      await writeFileAtomic(this.snapshotPath, snapshot);
      this.snapshotBytes = Buffer.byteLength(snapshot);
    });
  }

  /** Waits for pending changes and any compaction, then closes. */
  async close(): Promise<void> {
    this.closing = true;
    while (this.compacting !== undefined) await this.compacting;
    await this.journal.close();
  }

  private change<R>(change: Change<V>, apply: () => void, append: (line: Buffer) => Promise<R>): Promise<R> {
    let line: Buffer;
    try {
      line = this.journal.encode(change);
    } catch (err) {
      return Promise.reject(err);
    }
    apply();
    const appended = append(line);
    this.journalBytes += line.length;
    this.compactIfDue();
    return appended;
  }

  private compactIfDue(): void {
    if (this.compacting !== undefined || this.closing) return;
    if (this.journalBytes < Math.max(this.compactAfterBytes, this.snapshotBytes)) return;
    this.compacting = this.compact()
      .catch((err: unknown) => {
        // The journal restores itself (or stays failed, saying why); the map goes on.
        this.logger.error({ code: 'state_io', file: this.path, err: String(err) }, 'map compaction failed');
      })
      .finally(() => {
        this.compacting = undefined;
        if (this.journal.failed === undefined) this.compactIfDue(); // changes made meanwhile
      });
  }
}

function parseSnapshot<V>(raw: unknown, parseValue: (value: unknown) => V): Map<string, V> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error('not an object');
  const { format, entries } = raw as { format?: unknown; entries?: unknown };
  if (format !== SNAPSHOT_FORMAT) throw new Error(`format is not ${SNAPSHOT_FORMAT}`);
  if (!Array.isArray(entries)) throw new Error('entries is not an array');
  const values = new Map<string, V>();
  for (const entry of entries) {
    if (!Array.isArray(entry) || entry.length !== 2 || typeof entry[0] !== 'string') {
      throw new Error('an entry is not a [key, value] pair');
    }
    values.set(entry[0], parseValue(entry[1]));
  }
  return values;
}

function parseChange<V>(raw: unknown, parseValue: (value: unknown) => V): Change<V> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error('not an object');
  const record = raw as { k?: unknown; v?: unknown; d?: unknown };
  if (typeof record.k !== 'string') throw new Error('no key');
  if (record.d === 1) return { k: record.k, d: 1 };
  if (!('v' in record)) throw new Error('neither a value nor a delete');
  return { k: record.k, v: parseValue(record.v) };
}
