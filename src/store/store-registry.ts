import { toAgentError } from '../core/errors.js';
import { errnoOf } from './fs-util.js';
import type { WriteHealth } from './group-commit.js';

/**
 * The write health of every state store open in this process, by path, so the health report and
 * /metrics show each of them (docs/storage.md "How it is reported") without the code that opens
 * a store having to pass it up: a journaled map registers itself when it opens and leaves when it
 * closes; so does the cloud outbox's cursor. The agent picks out the stores under its state
 * directory it does not name itself (the cloud link's, under `cloud/`).
 */
export class StoreRegistry {
  private readonly stores = new Map<string, () => WriteHealth>();

  /** Adds a store; the returned function removes it (only if it is still this entry). */
  register(path: string, health: () => WriteHealth): () => void {
    this.stores.set(path, health);
    return () => {
      if (this.stores.get(path) === health) this.stores.delete(path);
    };
  }

  /** The stores whose path starts with `dir` + '/', with their health now, sorted by path. */
  under(dir: string): { readonly path: string; readonly health: WriteHealth }[] {
    const prefix = dir.endsWith('/') ? dir : `${dir}/`;
    return [...this.stores.entries()]
      .filter(([path]) => path.startsWith(prefix))
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([path, health]) => ({ path, health: health() }));
  }
}

/** The registry of this process. */
export const openStores = new StoreRegistry();

/**
 * Write health of a store that writes one file at a time without a group-commit queue (the
 * outbox cursor, written whole with an atomic replace): call `begin`, then `succeeded` or
 * `failed`.
 */
export class WriteHealthTracker {
  private failures = 0;
  private failingSince: number | undefined;
  private lastError: { code: string; message: string; at: number } | undefined;
  private busySince: number | undefined;
  private closed = false;

  constructor(
    private readonly store: string,
    private readonly now: () => number = Date.now,
    private readonly monotonic: () => number = () => performance.now(),
  ) {}

  begin(): void {
    this.busySince = this.monotonic();
  }

  succeeded(): void {
    this.busySince = undefined;
    this.failingSince = undefined;
  }

  failed(err: unknown): void {
    this.busySince = undefined;
    const at = this.now();
    const e = toAgentError(err, 'state_io');
    const errno = e.details.errno;
    this.failures += 1;
    this.failingSince ??= at;
    this.lastError = {
      code: typeof errno === 'string' ? errno : (errnoOf(err) ?? errnoOf(e.cause) ?? e.code),
      message: e.message,
      at,
    };
  }

  close(): void {
    this.closed = true;
  }

  health(): WriteHealth {
    return {
      store: this.store,
      state: this.closed ? 'closed' : this.failingSince !== undefined ? 'failing' : 'ok',
      failures: this.failures,
      refused: 0,
      pending: this.busySince === undefined ? 0 : 1,
      ...(this.failingSince !== undefined ? { failingSince: this.failingSince } : {}),
      ...(this.lastError !== undefined ? { lastError: { ...this.lastError } } : {}),
      ...(this.busySince !== undefined ? { busyMs: this.monotonic() - this.busySince } : {}),
    };
  }
}
