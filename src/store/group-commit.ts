/**
 * Group commit: appends submitted while a flush (write + fsync) is running are collected and
 * made durable together by the next flush, so N concurrent appends cost about one fsync, not N.
 * Every operation (flushes and exclusive operations such as rewrite or close) runs one at a
 * time in submission order.
 *
 * After a flush fails the queue is failed for good: the file's tail is unknown (and after a
 * failed fsync the page cache cannot be trusted), so further appends are refused with the same
 * error. Reopening the store runs recovery.
 */
import { AgentError, toAgentError } from '../core/errors.js';

interface Waiter<Item> {
  readonly item: Item;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
  /** Called once the item's bytes are written, before the fsync. */
  readonly written?: () => void;
}

/** An item written but maybe not yet fsynced: `durable` settles when it is (or cannot be). */
export interface StagedItem {
  readonly durable: Promise<void>;
}

/** Writes a batch; calls `written` once the bytes are written and before it fsyncs them. */
export type FlushBatch<Item> = (items: readonly Item[], written: () => void) => Promise<void>;

export class GroupCommitQueue<Item> {
  private readonly flush: FlushBatch<Item>;
  private readonly describe: string;
  /** The batch that new submissions join; null once its flush has started or it was sealed. */
  private open: Waiter<Item>[] | null = null;
  private chain: Promise<void> = Promise.resolve();
  private failure: AgentError | undefined;
  private closing = false;

  constructor(describe: string, flush: FlushBatch<Item>) {
    this.describe = describe;
    this.flush = flush;
  }

  /** Resolves when the item is durable. */
  submit(item: Item): Promise<void> {
    const refusal = this.refusal();
    if (refusal !== undefined) return Promise.reject(refusal);
    return new Promise<void>((resolve, reject) => this.join({ item, resolve, reject }));
  }

  /**
   * Like submit, in two steps: resolves once the item is written (in the kernel's page cache: it
   * survives the process being killed, not yet a power cut) with `durable`, which settles once
   * the item is fsynced. Rejects, without `durable`, when the write itself fails.
   */
  submitStaged(item: Item): Promise<StagedItem> {
    const refusal = this.refusal();
    if (refusal !== undefined) return Promise.reject(refusal);
    return new Promise<StagedItem>((resolveWritten, rejectWritten) => {
      let settleDurable: { resolve: () => void; reject: (err: unknown) => void } | undefined;
      const durable = new Promise<void>((resolve, reject) => {
        settleDurable = { resolve, reject };
      });
      // The caller may look at `durable` only later; a failed fsync must not count as unhandled.
      durable.catch(() => {});
      let isWritten = false;
      const written = (): void => {
        if (isWritten) return;
        isWritten = true;
        resolveWritten({ durable });
      };
      this.join({
        item,
        written,
        resolve: () => {
          written();
          settleDurable?.resolve();
        },
        reject: (err) => (isWritten ? settleDurable?.reject(err) : rejectWritten(err)),
      });
    });
  }

  /**
   * Runs `operation` after every item submitted before this call is durable, and before any
   * item submitted after it. If it throws, the queue is failed like after a failed flush (the
   * file may be in an unknown state until reopened).
   */
  exclusive<R>(operation: () => Promise<R>): Promise<R> {
    const refusal = this.refusal();
    if (refusal !== undefined) return Promise.reject(refusal);
    this.open = null;
    return this.enqueue(async () => {
      if (this.failure !== undefined) throw this.failure;
      try {
        return await operation();
      } catch (err) {
        this.failure = toAgentError(err, 'state_io');
        throw this.failure;
      }
    });
  }

  /** Flushes what was submitted, then runs `finish` (closing files); later submissions are refused. */
  close(finish: () => Promise<void>): Promise<void> {
    this.open = null;
    if (this.closing) return this.enqueue(async () => {});
    this.closing = true;
    return this.enqueue(finish);
  }

  get failed(): AgentError | undefined {
    return this.failure;
  }

  /** Adds a waiter to the open batch, opening (and queueing the flush of) a new one if needed. */
  private join(waiter: Waiter<Item>): void {
    let batch = this.open;
    if (batch === null) {
      const created: Waiter<Item>[] = [];
      void this.enqueue(() => this.flushBatch(created));
      this.open = created;
      batch = created;
    }
    batch.push(waiter);
  }

  private refusal(): AgentError | undefined {
    if (this.failure !== undefined) return this.failure;
    if (this.closing)
      return new AgentError('state_io', `${this.describe} is closed`, { file: this.describe });
    return undefined;
  }

  private enqueue<R>(operation: () => Promise<R>): Promise<R> {
    const result = this.chain.then(operation);
    this.chain = result.then(
      () => {},
      () => {},
    );
    return result;
  }

  private async flushBatch(batch: Waiter<Item>[]): Promise<void> {
    if (this.open === batch) this.open = null;
    if (this.failure !== undefined) {
      for (const waiter of batch) waiter.reject(this.failure);
      return;
    }
    try {
      await this.flush(
        batch.map((waiter) => waiter.item),
        () => {
          for (const waiter of batch) waiter.written?.();
        },
      );
    } catch (err) {
      this.failure = toAgentError(err, 'state_io');
      for (const waiter of batch) waiter.reject(this.failure);
      return;
    }
    for (const waiter of batch) waiter.resolve();
  }
}
