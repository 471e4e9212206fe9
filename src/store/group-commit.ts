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
}

export class GroupCommitQueue<Item> {
  private readonly flush: (items: readonly Item[]) => Promise<void>;
  private readonly describe: string;
  /** The batch that new submissions join; null once its flush has started or it was sealed. */
  private open: Waiter<Item>[] | null = null;
  private chain: Promise<void> = Promise.resolve();
  private failure: AgentError | undefined;
  private closing = false;

  constructor(describe: string, flush: (items: readonly Item[]) => Promise<void>) {
    this.describe = describe;
    this.flush = flush;
  }

  /** Resolves when the item is durable. */
  submit(item: Item): Promise<void> {
    const refusal = this.refusal();
    if (refusal !== undefined) return Promise.reject(refusal);
    return new Promise<void>((resolve, reject) => {
      let batch = this.open;
      if (batch === null) {
        const created: Waiter<Item>[] = [];
        void this.enqueue(() => this.flushBatch(created));
        this.open = created;
        batch = created;
      }
      batch.push({ item, resolve, reject });
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
      await this.flush(batch.map((waiter) => waiter.item));
    } catch (err) {
      this.failure = toAgentError(err, 'state_io');
      for (const waiter of batch) waiter.reject(this.failure);
      return;
    }
    for (const waiter of batch) waiter.resolve();
  }
}
