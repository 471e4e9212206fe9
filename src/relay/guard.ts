import { toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Health } from '../core/types.js';
import { type ExpiryCause, type GuardCommand, type GuardEvent, releaseDeadline } from './guard-protocol.js';
import { type CancelTimer, systemTimers, type Timers } from './timers.js';
import type { RelayChannel, RelayDriver } from './types.js';

export interface RelayGuardOptions {
  /** The driver that owns the outputs; init() is called by start(). */
  readonly driver: RelayDriver;
  /** No channel stays energised longer than this from its first `on`. */
  readonly maxOnMs: number;
  /** Where events go (the guard process writes them to its stdout). */
  readonly emit: (event: GuardEvent) => void;
  readonly logger: Logger;
  readonly timers?: Timers;
  readonly wallNow?: () => number;
  /** How often the driver's health is looked at (a holder can die between commands). */
  readonly healthPollMs?: number;
}

interface ChannelState {
  /** When the channel was first asked on since it was last off (the max-on limit runs from it). */
  since: number | undefined;
  /** The `on` whose release is pending. */
  onId: number;
  /** Bumped by every command on the channel, so a slow `on` learns that it was overtaken. */
  generation: number;
  cap: CancelTimer | undefined;
  limit: CancelTimer | undefined;
  /** The level last reported in a `level` event. */
  reported: boolean;
}

/**
 * The heart of the relay guard process: runs the agent's commands on the driver and times every
 * energised channel itself, with its own timers on its own event loop, so that the release happens
 * whatever the agent's main thread is doing (stuck on a frozen disk, in a busy loop, stopped,
 * killed). Each `on` carries the time after which to release; the max-on limit bounds it from the
 * channel's first `on`. Commands on one channel run in order; the driver serialises its own I/O.
 */
export class RelayGuard {
  private readonly driver: RelayDriver;
  private readonly maxOnMs: number;
  private readonly emit: (event: GuardEvent) => void;
  private readonly log: Logger;
  private readonly timers: Timers;
  private readonly wallNow: () => number;
  private readonly healthPollMs: number;
  private readonly states = new Map<RelayChannel, ChannelState>();
  private lastHealth: Health | undefined;
  private stopHealthPoll: CancelTimer | undefined;
  private closing: Promise<void> | undefined;

  constructor(options: RelayGuardOptions) {
    this.driver = options.driver;
    this.maxOnMs = options.maxOnMs;
    this.emit = options.emit;
    this.log = options.logger;
    this.timers = options.timers ?? systemTimers;
    this.wallNow = options.wallNow ?? (() => performance.timeOrigin + performance.now());
    this.healthPollMs = options.healthPollMs ?? 200;
    for (const channel of this.driver.channels) {
      this.states.set(channel, {
        since: undefined,
        onId: 0,
        generation: 0,
        cap: undefined,
        limit: undefined,
        reported: false,
      });
    }
  }

  /** Opens the driver (every channel off) and says `ready`. Rejects as the driver's init() does. */
  async start(pid: number, describe: () => string): Promise<void> {
    await this.driver.init();
    // Health first: the agent takes the guard as up from `ready`, with the health it has by then.
    this.reportHealth();
    this.emit({ type: 'ready', pid, detail: describe() });
    this.pollHealth();
  }

  /** Runs one command; its answer (ok or err) is emitted when it is done. */
  handle(command: GuardCommand): Promise<void> {
    if (this.closing && command.type !== 'close' && command.type !== 'ping') {
      this.emit({ type: 'err', id: command.id, message: 'the relay guard is closing' });
      return Promise.resolve();
    }
    switch (command.type) {
      case 'on':
        return this.on(command.id, command.channel, command.limitMs);
      case 'off':
        return this.off(command.id, command.channel);
      case 'alloff':
        return this.allOff(command.id);
      case 'ping':
        this.emit({ type: 'ok', id: command.id });
        return Promise.resolve();
      case 'close':
        return this.close().then(() => this.emit({ type: 'ok', id: command.id }));
    }
  }

  /**
   * Everything off now, as far as can be done from a signal handler: the driver's synchronous
   * release, then the ordinary one. The agent hears of each channel that was on as `expired`.
   */
  async releaseAll(cause: ExpiryCause): Promise<void> {
    const now = this.timers.now();
    const released: { channel: RelayChannel; onId: number; heldMs: number }[] = [];
    for (const [channel, state] of this.states) {
      if (state.since !== undefined)
        released.push({ channel, onId: state.onId, heldMs: Math.round(now - state.since) });
      this.clear(state);
    }
    try {
      this.driver.allOffSync?.();
    } catch {
      // best effort; allOff() below is the ordinary way
    }
    for (const r of released) this.emit({ type: 'expired', ...r, cause });
    await this.driver.allOff();
    this.reportLevels(false);
  }

  /** Every channel off, then the driver released. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.stopHealthPoll?.();
      for (const state of this.states.values()) this.clear(state);
      await this.driver.close();
      this.reportLevels(false);
    })();
    return this.closing;
  }

  private async on(id: number, channel: RelayChannel, limitMs: number): Promise<void> {
    const state = this.states.get(channel);
    if (state === undefined) {
      this.emit({ type: 'err', id, message: `relay channel ${channel} is not wired` });
      return;
    }
    const asked = this.timers.now();
    if (state.since === undefined) {
      // The hard limit runs from the request, not from the confirmation: a line may be on before
      // the driver says so.
      state.since = asked;
      state.cap = this.timers.schedule(this.maxOnMs, () => void this.expire(channel, 'max-on'));
    }
    const since = state.since;
    state.onId = id;
    const generation = ++state.generation;
    try {
      await this.driver.set(channel, true);
    } catch (err) {
      const e = toAgentError(err, 'relay_failed');
      if (state.generation === generation) this.clear(state);
      this.emit({ type: 'err', id, message: e.message });
      this.reportHealth();
      return;
    }
    if (state.generation === generation) {
      // The caller's time runs from when the line is on (as the agent's own timer does).
      const now = this.timers.now();
      const deadline = releaseDeadline({ now, since, limitMs, maxOnMs: this.maxOnMs });
      state.limit?.();
      state.limit =
        deadline.cause === 'limit'
          ? this.timers.schedule(deadline.at - now, () => void this.expire(channel, 'limit'))
          : undefined;
    }
    // Reported in the order the driver did things, even when a later command overtook this one.
    this.reportLevel(channel, true);
    this.emit({ type: 'ok', id });
    this.reportHealth();
  }

  private async off(id: number, channel: RelayChannel): Promise<void> {
    const state = this.states.get(channel);
    if (state === undefined) {
      this.emit({ type: 'err', id, message: `relay channel ${channel} is not wired` });
      return;
    }
    this.clear(state);
    try {
      await this.driver.set(channel, false);
    } catch (err) {
      const e = toAgentError(err, 'relay_failed');
      this.log.error({ code: e.code, channel, err: e.message }, 'cannot release a relay: all off');
      await this.driver.allOff();
      this.emit({ type: 'err', id, message: e.message });
      this.reportHealth();
      return;
    }
    this.reportLevel(channel, false);
    this.emit({ type: 'ok', id });
    this.reportHealth();
  }

  private async allOff(id: number): Promise<void> {
    for (const state of this.states.values()) this.clear(state);
    await this.driver.allOff(); // never rejects; failures show in health
    this.reportLevels(false);
    this.emit({ type: 'ok', id });
    this.reportHealth();
  }

  /** The guard's own release: the caller did not release the channel in time. */
  private async expire(channel: RelayChannel, cause: 'limit' | 'max-on'): Promise<void> {
    const state = this.states.get(channel);
    if (state?.since === undefined) return;
    const heldMs = Math.round(this.timers.now() - state.since);
    const onId = state.onId;
    this.clear(state);
    this.log.warn(
      { code: cause === 'max-on' ? 'relay_watchdog' : 'relay_deadline', channel, heldMs, cause },
      'relay guard released a channel the agent had not released in time',
    );
    this.emit({ type: 'expired', channel, onId, heldMs, cause });
    try {
      await this.driver.set(channel, false);
    } catch (err) {
      const e = toAgentError(err, 'relay_failed');
      this.log.error({ code: e.code, channel, err: e.message }, 'relay guard could not release: all off');
      await this.driver.allOff();
    }
    this.reportLevel(channel, false);
    this.reportHealth();
  }

  private clear(state: ChannelState): void {
    state.generation += 1;
    state.since = undefined;
    state.cap?.();
    state.cap = undefined;
    state.limit?.();
    state.limit = undefined;
  }

  private reportLevel(channel: RelayChannel, energised: boolean): void {
    const state = this.states.get(channel);
    if (state === undefined || state.reported === energised) return;
    state.reported = energised;
    this.emit({ type: 'level', channel, energised, atMs: Math.round(this.wallNow() * 1000) / 1000 });
  }

  private reportLevels(energised: boolean): void {
    for (const channel of this.states.keys()) this.reportLevel(channel, energised);
  }

  private reportHealth(): void {
    const health = this.driver.health();
    if (this.lastHealth?.state === health.state && this.lastHealth.detail === health.detail) return;
    this.lastHealth = health;
    this.emit(
      health.detail !== undefined
        ? { type: 'health', state: health.state, detail: health.detail }
        : { type: 'health', state: health.state },
    );
  }

  private pollHealth(): void {
    this.stopHealthPoll = this.timers.schedule(this.healthPollMs, () => {
      if (this.closing) return;
      this.reportHealth();
      this.pollHealth();
    });
  }
}
