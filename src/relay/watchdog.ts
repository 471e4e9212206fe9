import { toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Health } from '../core/types.js';
import { type CancelTimer, systemTimers, type Timers } from './timers.js';
import type { EnergiseOptions, RelayChannel, RelayDriver, SelfRelease } from './types.js';

/**
 * A channel forced off without being asked: by this watchdog's own timer (by `agent`), or by what
 * stands behind the driver, the relay guard (by `guard`), which reports it when it happens.
 */
export interface WatchdogRelease extends SelfRelease {
  readonly by: 'agent' | 'guard';
}

export interface WatchdogOptions {
  /** No channel stays energised longer than this. */
  readonly maxOnMs: number;
  readonly logger: Logger;
  readonly timers?: Timers;
}

/**
 * Enforces a maximum on-time per channel around any driver, whatever the caller does: a stuck
 * timer, a bug or a lost stop can never hold a lock motor or a strike energised for good. The
 * limit runs from the first request to energise; asking again to energise does not extend it.
 * This runs on the agent's event loop, so it is the second layer: the relay guard process times
 * the same limit on its own loop (src/relay/guard.ts) and its releases come through here too.
 */
export class WatchdogRelay implements RelayDriver {
  readonly kind: string;
  readonly channels: readonly RelayChannel[];
  readonly allOffSync?: () => void;
  private readonly inner: RelayDriver;
  private readonly maxOnMs: number;
  private readonly log: Logger;
  private readonly timers: Timers;
  private readonly armed = new Map<RelayChannel, { readonly since: number; readonly cancel: CancelTimer }>();
  private readonly listeners = new Set<(release: WatchdogRelease) => void>();

  constructor(inner: RelayDriver, options: WatchdogOptions) {
    this.inner = inner;
    this.kind = inner.kind;
    this.channels = inner.channels;
    this.maxOnMs = options.maxOnMs;
    this.log = options.logger;
    this.timers = options.timers ?? systemTimers;
    const innerSync = inner.allOffSync?.bind(inner);
    if (innerSync) {
      this.allOffSync = () => {
        this.disarmAll();
        innerSync();
      };
    }
    inner.onSelfRelease?.((release) => this.onInnerRelease(release));
  }

  /** Called after a channel was forced off. Returns an unsubscribe function. */
  onRelease(listener: (release: WatchdogRelease) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  init(): Promise<void> {
    this.disarmAll();
    return this.inner.init();
  }

  async set(channel: RelayChannel, energised: boolean, options?: EnergiseOptions): Promise<void> {
    if (!energised) {
      this.disarm(channel);
      return this.inner.set(channel, false);
    }
    // Armed before the driver is asked: if the request half-succeeds, the limit still applies.
    if (!this.armed.has(channel)) {
      const since = this.timers.now();
      const cancel = this.timers.schedule(this.maxOnMs, () => void this.release(channel));
      this.armed.set(channel, { since, cancel });
    }
    return this.inner.set(channel, true, options);
  }

  allOff(): Promise<void> {
    this.disarmAll();
    return this.inner.allOff();
  }

  close(): Promise<void> {
    this.disarmAll();
    return this.inner.close();
  }

  health(): Health {
    return this.inner.health();
  }

  /** Channels currently energised as far as the watchdog knows (armed). */
  energisedChannels(): RelayChannel[] {
    return [...this.armed.keys()];
  }

  private async release(channel: RelayChannel): Promise<void> {
    const entry = this.armed.get(channel);
    if (entry === undefined) return;
    this.armed.delete(channel);
    const heldMs = Math.round(this.timers.now() - entry.since);
    this.log.error(
      { code: 'relay_watchdog', channel, heldMs, maxOnMs: this.maxOnMs },
      'relay held past its maximum on-time: forcing it off',
    );
    try {
      await this.inner.set(channel, false);
    } catch (err) {
      const e = toAgentError(err, 'relay_failed');
      this.log.error(
        { code: e.code, channel, err: e.message },
        'watchdog could not release the channel: all off',
      );
      await this.inner.allOff();
    }
    this.notify({ channel, heldMs, code: 'relay_watchdog', cause: 'max-on', current: true, by: 'agent' });
  }

  /** The guard released a channel by itself: the channel is off, so this watchdog stands down. */
  private onInnerRelease(release: SelfRelease): void {
    if (release.current) this.disarm(release.channel);
    this.log[release.current ? 'error' : 'warn'](
      { code: release.code, channel: release.channel, heldMs: release.heldMs, cause: release.cause },
      release.current
        ? 'the relay guard released a relay the agent still held'
        : 'the relay guard had released a relay before the agent did',
    );
    this.notify({ ...release, by: 'guard' });
  }

  private notify(release: WatchdogRelease): void {
    for (const listener of this.listeners) {
      try {
        listener(release);
      } catch (err) {
        this.log.error({ code: 'internal', err: String(err) }, 'watchdog listener threw');
      }
    }
  }

  private disarm(channel: RelayChannel): void {
    this.armed.get(channel)?.cancel();
    this.armed.delete(channel);
  }

  private disarmAll(): void {
    for (const channel of [...this.armed.keys()]) this.disarm(channel);
  }
}
