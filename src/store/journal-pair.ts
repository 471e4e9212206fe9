import { combineWriteHealth, type WriteHealth } from './group-commit.js';
import type { Journal } from './journal.js';

/**
 * A journal kept in two files (the main one and its mirror), for records that must survive one
 * damaged or deleted file (keyring operations): every record goes to both and is durable once
 * both are. Opening and reconciling the two is the owner's job (see keyring-store.ts).
 */
export class JournalPair<T> {
  constructor(
    readonly main: Journal<T>,
    readonly mirror: Journal<T>,
  ) {}

  get path(): string {
    return this.main.path;
  }

  /**
   * Resolves when the record is durable in both files. Settles only once both writes have
   * settled, so a caller that goes on after a failure never races the other file's write.
   */
  async append(record: T): Promise<void> {
    const line = this.main.encode(record);
    const [a, b] = await Promise.allSettled([this.main.appendEncoded(line), this.mirror.appendEncoded(line)]);
    if (a.status === 'rejected') throw a.reason;
    if (b.status === 'rejected') throw b.reason;
  }

  /**
   * Replaces both files' content (compaction). `beforeReplace` (writing the snapshot) runs once,
   * inside the main file's rewrite, after its earlier appends are durable; the mirror is replaced
   * after the main file. A crash in between leaves the mirror holding records the snapshot
   * already has, which opening recognises (keyring-store.ts); a failure before the main file is
   * replaced leaves both as they were.
   */
  async rewrite(records: readonly T[], beforeReplace?: () => Promise<void>): Promise<void> {
    await this.main.rewrite(records, beforeReplace);
    await this.mirror.rewrite(records);
  }

  get recordCount(): number {
    return Math.max(this.main.recordCount, this.mirror.recordCount);
  }

  get failed(): Journal<T>['failed'] {
    return this.main.failed ?? this.mirror.failed;
  }

  /** Write failures, refusals and stalls of both files, the worst first (health, /metrics). */
  get writeHealth(): WriteHealth {
    return combineWriteHealth([this.main.writeHealth, this.mirror.writeHealth]);
  }

  close(): Promise<void> {
    return Promise.all([this.main.close(), this.mirror.close()]).then(() => {});
  }
}
