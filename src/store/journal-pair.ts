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

  /** Resolves when the record is durable in both files. */
  append(record: T): Promise<void> {
    let line: Buffer;
    try {
      line = this.main.encode(record);
    } catch (err) {
      return Promise.reject(err);
    }
    return Promise.all([this.main.appendEncoded(line), this.mirror.appendEncoded(line)]).then(() => {});
  }

  /** Replaces both files' content (compaction). */
  rewrite(records: readonly T[]): Promise<void> {
    return Promise.all([this.main.rewrite(records), this.mirror.rewrite(records)]).then(() => {});
  }

  get recordCount(): number {
    return Math.max(this.main.recordCount, this.mirror.recordCount);
  }

  get failed(): Journal<T>['failed'] {
    return this.main.failed ?? this.mirror.failed;
  }

  close(): Promise<void> {
    return Promise.all([this.main.close(), this.mirror.close()]).then(() => {});
  }
}
