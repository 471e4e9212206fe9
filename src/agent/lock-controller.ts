import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { LockState } from '../core/types.js';
import { type CancelTimer, systemTimers, type Timers } from '../relay/timers.js';
import type { RelayChannel, RelayDriver } from '../relay/types.js';
import { WatchdogRelay, type WatchdogRelease } from '../relay/watchdog.js';
import {
  initialLockMachine,
  type LockCommand,
  type LockConfig,
  type LockEffect,
  type LockEvent,
  type LockMachineState,
  type LockTimer,
  lockTransition,
  onTimeMs,
  type WaiterId,
} from './lock-machine.js';

export type { LockAction, LockConfig } from './lock-machine.js';

export type LockListener = (state: LockState, cause: string) => void;

export interface LockControllerOptions {
  /** An init()ed driver. The controller wraps it in a max-on watchdog of config.maxOnMs. */
  readonly relay: RelayDriver;
  readonly config: LockConfig;
  readonly logger: Logger;
  readonly timers?: Timers;
}

interface Waiter {
  readonly resolve: (state: LockState) => void;
  readonly reject: (err: AgentError) => void;
}

/**
 * Drives the lock from grants. The decisions are the pure state machine of lock-machine.ts; this
 * shell feeds it requests, relay results, timers and watchdog releases, and performs what it
 * answers: relay commands (through a max-on watchdog), timers, state announcements, the callers'
 * answers, log lines.
 *
 * Overlapping requests neither stack pulses nor cut them short: a request for the action already
 * being pulsed joins that pulse; a request for the other action waits for the running pulse to
 * end, then runs (the latest request wins over an earlier waiting one). Relay failures reject the
 * request with `relay_failed` and leave every channel de-energised.
 */
export class LockController {
  private readonly relay: WatchdogRelay;
  private readonly config: LockConfig;
  private readonly log: Logger;
  private readonly timers: Timers;
  private readonly listeners = new Set<LockListener>();
  private readonly watchdogListeners = new Set<(release: WatchdogRelease) => void>();
  private machine: LockMachineState = initialLockMachine();
  private readonly waiters = new Map<WaiterId, Waiter>();
  private nextWaiter = 1;
  private readonly armed = new Map<LockTimer, CancelTimer>();
  /** Events that came while effects were being performed (a listener that calls back in). */
  private readonly queue: LockEvent[] = [];
  private stepping = false;
  private stopping: Promise<void> | undefined;

  constructor(options: LockControllerOptions) {
    const { config, relay, logger } = options;
    this.config = config;
    this.log = logger;
    this.timers = options.timers ?? systemTimers;
    const needed: readonly RelayChannel[] = config.wiring === 'pulse' ? ['unlock', 'lock'] : ['unlock'];
    const missing = needed.filter((c) => !relay.channels.includes(c));
    if (missing.length > 0) {
      throw new AgentError(
        'config_invalid',
        `${config.wiring} wiring needs relay channel(s) ${missing.join(', ')}`,
        {
          field: 'lock.wiring',
          missing,
        },
      );
    }
    const longest = onTimeMs(config);
    if (config.maxOnMs <= longest) {
      logger.warn(
        { code: 'config_invalid', maxOnMs: config.maxOnMs, longest },
        'lock.maxOnMs does not exceed the pulse or hold time: the watchdog will cut every one short',
      );
    }
    this.relay = new WatchdogRelay(relay, { maxOnMs: config.maxOnMs, logger, timers: this.timers });
    this.relay.onRelease((release) => this.onWatchdogRelease(release));
  }

  state(): LockState {
    return this.machine.lock;
  }

  /** Listens to every state change with its cause. Returns an unsubscribe function. */
  onChange(listener: LockListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Listens to watchdog releases (a channel held past maxOnMs). Returns an unsubscribe function. */
  onWatchdog(listener: (release: WatchdogRelease) => void): () => void {
    this.watchdogListeners.add(listener);
    return () => this.watchdogListeners.delete(listener);
  }

  /** De-energises every channel; the lock is then taken as locked. Never rejects. */
  async start(): Promise<void> {
    if (this.machine.life === 'running') return;
    if (this.stopping) await this.stopping;
    this.stopping = undefined;
    await this.ask((waiter, at) => ({ type: 'start', waiter, at }));
  }

  /**
   * Resolves once the unlock relay is energised (or the request joined an unlock under way), with
   * the state at that moment. Rejects with an AgentError: relay_failed, or busy when not running.
   */
  unlock(cause: string): Promise<LockState> {
    return this.request('unlock', cause);
  }

  /** Pulse wiring: like unlock() on the lock channel. Hold wiring: resolves once the strike is released. */
  lock(cause: string): Promise<LockState> {
    return this.request('lock', cause);
  }

  /**
   * Withdraws an unlock whose grant did not stand after all (its signature counter could not be
   * made durable): cuts an unlock pulse that is switching on or running, at once, then pulses
   * lock. Hold wiring: the same as lock(), which already releases the strike at once. A relay
   * closes in 5–10 ms, so a cut that comes within that time keeps the lock from moving at all.
   */
  retract(cause: string): Promise<LockState> {
    return this.request('retract', cause);
  }

  /** Cancels every timer, refuses waiting requests, waits for the relay command in flight, then all off. */
  stop(): Promise<void> {
    this.stopping ??= this.ask((waiter, at) => ({ type: 'stop', waiter, at })).then(() => {});
    return this.stopping;
  }

  private request(command: LockCommand, cause: string): Promise<LockState> {
    return this.ask((waiter, at) => ({ type: 'request', command, cause, waiter, at }));
  }

  /** Feeds an event that a caller waits on; the machine answers it with resolve or reject. */
  private ask(event: (waiter: WaiterId, at: number) => LockEvent): Promise<LockState> {
    return new Promise<LockState>((resolve, reject) => {
      const waiter = this.nextWaiter++;
      this.waiters.set(waiter, { resolve, reject });
      this.feed(event(waiter, this.timers.now()));
    });
  }

  private feed(event: LockEvent): void {
    this.queue.push(event);
    if (this.stepping) return;
    this.stepping = true;
    try {
      for (let next = this.queue.shift(); next !== undefined; next = this.queue.shift()) {
        const { state, effects } = lockTransition(this.config, this.machine, next);
        this.machine = state;
        for (const effect of effects) this.perform(effect);
      }
    } finally {
      this.stepping = false;
    }
  }

  private perform(effect: LockEffect): void {
    switch (effect.kind) {
      case 'energise': {
        const { op, channel, interlock, releaseAfterMs } = effect;
        const command = (async () => {
          if (this.relay.energisedChannels().includes(interlock)) await this.relay.set(interlock, false);
          await this.relay.set(channel, true, { releaseAfterMs });
        })();
        this.reportDone(command, op, channel);
        return;
      }
      case 'release':
        this.reportDone(this.relay.set(effect.channel, false), effect.op, effect.channel);
        return;
      case 'all-off': {
        const { op } = effect;
        // allOff never rejects (RelayDriver); should a driver break that, everything goes on.
        this.relay.allOff().then(
          () => this.feed({ type: 'relay-ok', op, at: this.timers.now() }),
          (err: unknown) => {
            this.log.error({ code: 'relay_failed', err: String(err) }, 'relay all off failed');
            this.feed({ type: 'relay-ok', op, at: this.timers.now() });
          },
        );
        return;
      }
      case 'extend': {
        const { channel } = effect;
        this.relay.set(channel, true, { releaseAfterMs: effect.releaseAfterMs }).catch((err: unknown) => {
          this.feed({ type: 'extend-failed', error: relayError(err, channel), at: this.timers.now() });
        });
        return;
      }
      case 'start-timer': {
        const { timer, token } = effect;
        this.armed.get(timer)?.();
        const cancel = this.timers.schedule(effect.ms, () => {
          if (this.armed.get(timer) === cancel) this.armed.delete(timer);
          this.feed({ type: 'timer', timer, token, at: this.timers.now() });
        });
        this.armed.set(timer, cancel);
        return;
      }
      case 'cancel-timer':
        this.armed.get(effect.timer)?.();
        this.armed.delete(effect.timer);
        return;
      case 'state':
        this.announce(effect.state, effect.cause);
        return;
      case 'resolve':
        for (const id of effect.waiters) this.takeWaiter(id)?.resolve(effect.state);
        return;
      case 'reject':
        for (const id of effect.waiters) this.takeWaiter(id)?.reject(effect.error);
        return;
      case 'log':
        this.log[effect.level]({ ...effect.fields }, effect.message);
        return;
    }
  }

  private reportDone(command: Promise<void>, op: number, channel: RelayChannel): void {
    command.then(
      () => this.feed({ type: 'relay-ok', op, at: this.timers.now() }),
      (err: unknown) =>
        this.feed({ type: 'relay-failed', op, error: relayError(err, channel), at: this.timers.now() }),
    );
  }

  private takeWaiter(id: WaiterId): Waiter | undefined {
    const waiter = this.waiters.get(id);
    this.waiters.delete(id);
    return waiter;
  }

  private onWatchdogRelease(release: WatchdogRelease): void {
    this.feed({ type: 'forced-release', release, at: this.timers.now() });
    for (const listener of this.watchdogListeners) {
      try {
        listener(release);
      } catch (err) {
        this.log.error({ code: 'internal', err: String(err) }, 'watchdog listener threw');
      }
    }
  }

  private announce(state: LockState, cause: string): void {
    this.log.info({ lock: state, cause }, 'lock state');
    for (const listener of this.listeners) {
      try {
        listener(state, cause);
      } catch (err) {
        this.log.error({ code: 'internal', err: String(err) }, 'lock state listener threw');
      }
    }
  }
}

function relayError(err: unknown, channel: RelayChannel): AgentError {
  const e = toAgentError(err, 'relay_failed');
  return e.code === 'relay_failed'
    ? e
    : new AgentError('relay_failed', e.message, { channel }, { cause: err });
}
