import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Health } from '../core/types.js';
import { HealthTracker } from './health.js';
import { systemTimers, type Timers } from './timers.js';
import { RELAY_CHANNELS, type RelayChannel, type RelayDriver } from './types.js';

export interface RelayTransition {
  readonly channel: RelayChannel;
  readonly energised: boolean;
  /** Wall time, ms since the epoch. */
  readonly atMs: number;
}

export interface SimRelayOptions {
  readonly logger: Logger;
  readonly channels?: readonly RelayChannel[];
  /** Wall clock for the timeline. */
  readonly wallNow?: () => number;
  /** Delay before each set() takes effect, to model a slow board (0: next microtask). */
  readonly latencyMs?: number;
  readonly timers?: Timers;
  /** Transitions kept; older ones are dropped so a long-running sim agent stays small. */
  readonly timelineLimit?: number;
}

interface InjectedFailure {
  remaining: number;
  readonly channel: RelayChannel | undefined;
  readonly energised: boolean | undefined;
}

/**
 * A relay board in memory: records every transition with its time, so `vehicle-agent status`
 * and tests can see the pulses. Failures can be injected to exercise the error paths.
 */
export class SimRelay implements RelayDriver {
  readonly kind = 'sim';
  readonly channels: readonly RelayChannel[];
  private readonly log: Logger;
  private readonly wallNow: () => number;
  private readonly latencyMs: number;
  private readonly timers: Timers;
  private readonly timelineLimit: number;
  private readonly state = new Map<RelayChannel, boolean>();
  private readonly transitions: RelayTransition[] = [];
  private readonly listeners = new Set<(t: RelayTransition) => void>();
  private readonly failures: InjectedFailure[] = [];
  private readonly healthTracker: HealthTracker;
  private closed = false;

  constructor(options: SimRelayOptions) {
    this.log = options.logger;
    this.channels = options.channels ?? RELAY_CHANNELS;
    this.wallNow = options.wallNow ?? Date.now;
    this.latencyMs = options.latencyMs ?? 0;
    this.timers = options.timers ?? systemTimers;
    this.timelineLimit = options.timelineLimit ?? 1000;
    this.healthTracker = new HealthTracker('disabled', this.wallNow, 'not initialised');
    for (const channel of this.channels) this.state.set(channel, false);
  }

  async init(): Promise<void> {
    this.closed = false;
    for (const channel of this.channels) this.apply(channel, false);
    this.healthTracker.set('ok');
  }

  async set(channel: RelayChannel, energised: boolean): Promise<void> {
    if (!this.state.has(channel)) {
      throw new AgentError('relay_failed', `relay channel ${channel} is not wired`, { channel });
    }
    if (this.closed) throw new AgentError('relay_failed', 'the simulated relay is closed', { channel });
    await this.delay();
    const failure = this.takeFailure(channel, energised);
    if (failure) {
      this.healthTracker.set('down', 'injected failure');
      throw new AgentError('relay_failed', `simulated failure switching ${channel}`, { channel, energised });
    }
    this.apply(channel, energised);
    this.healthTracker.set('ok');
  }

  async allOff(): Promise<void> {
    for (const channel of this.channels) this.apply(channel, false);
  }

  async close(): Promise<void> {
    await this.allOff();
    this.closed = true;
    this.healthTracker.set('disabled', 'closed');
  }

  allOffSync(): void {
    for (const channel of this.channels) this.apply(channel, false);
  }

  health(): Health {
    return this.healthTracker.get();
  }

  energised(channel: RelayChannel): boolean {
    return this.state.get(channel) ?? false;
  }

  /** Transitions (changes only), oldest first. */
  timeline(): readonly RelayTransition[] {
    return [...this.transitions];
  }

  /** Called on every transition, synchronously, in order. Returns an unsubscribe function. */
  onTransition(listener: (t: RelayTransition) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * The next `times` set() calls that match (any channel / any direction when omitted) reject with
   * relay_failed and leave the channel as it was. allOff() is never failed.
   */
  failNext(options: { times?: number; channel?: RelayChannel; energised?: boolean } = {}): void {
    this.failures.push({
      remaining: options.times ?? 1,
      channel: options.channel,
      energised: options.energised,
    });
  }

  /** Clears injected failures and marks the board healthy again. */
  recover(): void {
    this.failures.length = 0;
    if (!this.closed) this.healthTracker.set('ok');
  }

  private takeFailure(channel: RelayChannel, energised: boolean): boolean {
    const index = this.failures.findIndex(
      (f) =>
        f.remaining > 0 &&
        (f.channel === undefined || f.channel === channel) &&
        (f.energised === undefined || f.energised === energised),
    );
    const failure = this.failures[index];
    if (failure === undefined) return false;
    failure.remaining -= 1;
    if (failure.remaining === 0) this.failures.splice(index, 1);
    return true;
  }

  private delay(): Promise<void> {
    if (this.latencyMs <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.timers.schedule(this.latencyMs, resolve);
    });
  }

  private apply(channel: RelayChannel, energised: boolean): void {
    if (this.state.get(channel) === energised) return;
    this.state.set(channel, energised);
    const transition: RelayTransition = { channel, energised, atMs: this.wallNow() };
    this.transitions.push(transition);
    if (this.transitions.length > this.timelineLimit)
      this.transitions.splice(0, this.transitions.length - this.timelineLimit);
    this.log.debug({ channel, energised }, 'sim relay');
    for (const listener of this.listeners) listener(transition);
  }
}
