/**
 * Group commit: appends submitted while a flush (write + fsync) is running are collected and
 * made durable together by the next flush, so N concurrent appends cost about one fsync, not N.
 * Every operation (flushes and exclusive operations such as rewrite or close) runs one at a
 * time in submission order, so a store never has more than one file operation outstanding in
 * libuv's thread pool: a frozen or stalled disk holds one pool thread per store, not one per
 * append.
 *
 * A failed flush or exclusive operation rejects its own waiters, then the store's `restore`
 * brings the file back to its last durable state (journal.ts: truncate to the last durable
 * length, reopen, re-read the tail). Until that succeeds, submissions are refused at once with
 * the failure (a caller on the unlock path learns it now, not after a timeout); restore is
 * retried with backoff, so the store resumes by itself when space returns or the disk answers
 * again. A restore that finds the file damaged (state_corrupt) latches: reopening the store runs
 * recovery. Without a `restore`, a failure latches too.
 *
 * Items waiting behind a write that does not finish (a frozen filesystem) are bounded by
 * `maxPendingItems`; beyond it submissions are refused with state_io.
 */
import { AgentError, toAgentError } from '../core/errors.js';
import { errnoOf } from './fs-util.js';

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

/** Timers for the restore backoff (a manual clock in tests). */
export interface RetryTimers {
  /** Monotonic ms. */
  now(): number;
  schedule(delayMs: number, callback: () => void): () => void;
}

const unrefTimers: RetryTimers = {
  now: () => performance.now(),
  schedule(delayMs, callback) {
    const handle = setTimeout(callback, Math.max(0, delayMs));
    handle.unref();
    return () => clearTimeout(handle);
  },
};

export interface GroupCommitOptions {
  /**
   * Brings the file back to its last durable state after a failed flush or exclusive operation.
   * Throw state_corrupt when that state is gone (the queue then stays failed); any other throw
   * is retried with backoff.
   */
  readonly restore?: () => Promise<void>;
  /** Items waiting for a flush beyond which submissions are refused; default 10 000. */
  readonly maxPendingItems?: number;
  /** First restore retry delay; doubles up to maxRetryMs. Defaults 100 ms and 5 s. */
  readonly firstRetryMs?: number;
  readonly maxRetryMs?: number;
  readonly timers?: RetryTimers;
  /** Wall clock for the health figures (ms since the epoch); default Date.now. */
  readonly wallNow?: () => number;
}

/** How a store's writes are going, for health and /metrics. */
export interface WriteHealth {
  /** The file or directory written. */
  readonly store: string;
  /** ok; failing: the last write failed (refusing until restored); latched: needs a restart. */
  readonly state: 'ok' | 'failing' | 'latched' | 'closed';
  /** Failed flushes and exclusive operations since the store was opened. */
  readonly failures: number;
  /** Submissions refused without being tried (failing, or the backlog was full). */
  readonly refused: number;
  /** Items waiting for a flush (the one running included). */
  readonly pending: number;
  /** Wall ms of the first failure since the last successful write; absent when writes succeed. */
  readonly failingSince?: number;
  /** The last failure: errno (ENOSPC, EIO, ...) or, without one, the agent code. */
  readonly lastError?: { readonly code: string; readonly message: string; readonly at: number };
  /** Monotonic ms the operation in progress has been running (absent when idle). */
  readonly busyMs?: number;
}

export class GroupCommitQueue<Item> {
  private readonly flush: FlushBatch<Item>;
  private readonly describe: string;
  private readonly restore: (() => Promise<void>) | undefined;
  private readonly maxPendingItems: number;
  private readonly firstRetryMs: number;
  private readonly maxRetryMs: number;
  private readonly timers: RetryTimers;
  private readonly wallNow: () => number;
  /** The batch that new submissions join; null once its flush has started or it was sealed. */
  private open: Waiter<Item>[] | null = null;
  private chain: Promise<void> = Promise.resolve();
  /** Set while the file is not in a known durable state (until restore succeeds). */
  private failure: AgentError | undefined;
  private latched = false;
  private closing = false;
  private pendingItems = 0;
  private failures = 0;
  private refused = 0;
  private failingSince: number | undefined;
  private lastError: { code: string; message: string; at: number } | undefined;
  private busySince: number | undefined;
  private retryDelayMs: number;
  private cancelRetry: (() => void) | undefined;

  constructor(describe: string, flush: FlushBatch<Item>, options: GroupCommitOptions = {}) {
    this.describe = describe;
    this.flush = flush;
    this.restore = options.restore;
    this.maxPendingItems = options.maxPendingItems ?? 10_000;
    this.firstRetryMs = options.firstRetryMs ?? 100;
    this.maxRetryMs = options.maxRetryMs ?? 5000;
    this.timers = options.timers ?? unrefTimers;
    this.wallNow = options.wallNow ?? Date.now;
    this.retryDelayMs = this.firstRetryMs;
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
   * item submitted after it. If it throws, the store is restored as after a failed flush.
   */
  exclusive<R>(operation: () => Promise<R>): Promise<R> {
    const refusal = this.refusal();
    if (refusal !== undefined) return Promise.reject(refusal);
    this.open = null;
    return this.enqueue(async () => {
      if (this.failure !== undefined) throw this.failure;
      this.busySince = this.timers.now();
      try {
        const result = await operation();
        this.succeeded();
        return result;
      } catch (err) {
        const failure = this.recordFailure(err);
        await this.tryRestore();
        throw failure;
      } finally {
        this.busySince = undefined;
      }
    });
  }

  /** Flushes what was submitted, then runs `finish` (closing files); later submissions are refused. */
  close(finish: () => Promise<void>): Promise<void> {
    this.open = null;
    this.cancelRetry?.();
    this.cancelRetry = undefined;
    if (this.closing) return this.enqueue(async () => {});
    this.closing = true;
    return this.enqueue(finish);
  }

  /** Set while the store refuses writes (a failure not yet restored, or latched). */
  get failed(): AgentError | undefined {
    return this.failure;
  }

  health(): WriteHealth {
    const state = this.closing ? 'closed' : this.latched ? 'latched' : this.failure ? 'failing' : 'ok';
    return {
      store: this.describe,
      state,
      failures: this.failures,
      refused: this.refused,
      pending: this.pendingItems,
      ...(this.failingSince !== undefined ? { failingSince: this.failingSince } : {}),
      ...(this.lastError !== undefined ? { lastError: { ...this.lastError } } : {}),
      ...(this.busySince !== undefined ? { busyMs: this.timers.now() - this.busySince } : {}),
    };
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
    this.pendingItems += 1;
  }

  private refusal(): AgentError | undefined {
    if (this.closing)
      return new AgentError('state_io', `${this.describe} is closed`, { file: this.describe });
    if (this.failure !== undefined) {
      this.refused += 1;
      return this.failure;
    }
    if (this.pendingItems >= this.maxPendingItems) {
      this.refused += 1;
      return new AgentError(
        'state_io',
        `${this.describe}: ${this.pendingItems} writes are waiting for the disk; refusing more`,
        { file: this.describe, pending: this.pendingItems },
      );
    }
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
    const settle = (each: (waiter: Waiter<Item>) => void): void => {
      this.pendingItems -= batch.length;
      for (const waiter of batch) each(waiter);
    };
    if (this.failure !== undefined) {
      const failure = this.failure;
      settle((waiter) => waiter.reject(failure));
      return;
    }
    this.busySince = this.timers.now();
    try {
      await this.flush(
        batch.map((waiter) => waiter.item),
        () => {
          for (const waiter of batch) waiter.written?.();
        },
      );
    } catch (err) {
      this.busySince = undefined;
      const failure = this.recordFailure(err);
      // Restored before the callers hear of it: a caller told "failed" (a keyring change, say)
      // can rely on the batch being gone from the file, not waiting to reappear after a crash.
      await this.tryRestore();
      settle((waiter) => waiter.reject(failure));
      return;
    }
    this.busySince = undefined;
    this.succeeded();
    settle((waiter) => waiter.resolve());
  }

  private succeeded(): void {
    this.failingSince = undefined;
    this.retryDelayMs = this.firstRetryMs;
  }

  private recordFailure(err: unknown): AgentError {
    const failure = toAgentError(err, 'state_io');
    const at = this.wallNow();
    this.failures += 1;
    this.failingSince ??= at;
    this.lastError = { code: errorCode(failure), message: failure.message, at };
    this.failure = failure;
    return failure;
  }

  /** Runs restore now; on failure schedules the next attempt. Call from inside the chain. */
  private async tryRestore(): Promise<void> {
    if (this.closing || this.latched) return;
    if (this.restore === undefined) {
      this.latched = true;
      return;
    }
    this.busySince = this.timers.now();
    try {
      await this.restore();
      this.failure = undefined;
      this.retryDelayMs = this.firstRetryMs;
    } catch (err) {
      const e = toAgentError(err, 'state_io');
      if (e.code === 'state_corrupt') {
        this.latched = true;
        this.failure = e;
        return;
      }
      this.failure ??= e;
      this.lastError = { code: errorCode(e), message: e.message, at: this.wallNow() };
      const delay = this.retryDelayMs;
      this.retryDelayMs = Math.min(this.maxRetryMs, this.retryDelayMs * 2);
      this.cancelRetry = this.timers.schedule(delay, () => {
        this.cancelRetry = undefined;
        void this.enqueue(() => this.tryRestore());
      });
    } finally {
      this.busySince = undefined;
    }
  }
}

/** The errno of a coded fs error (ENOSPC, EIO, ...), else its code. */
function errorCode(err: AgentError): string {
  const errno = err.details.errno;
  return typeof errno === 'string' ? errno : (errnoOf(err.cause) ?? err.code);
}
