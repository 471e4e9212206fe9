import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { LockState } from '../core/types.js';
import { type CancelTimer, systemTimers, type Timers } from '../relay/timers.js';
import type { RelayChannel, RelayDriver } from '../relay/types.js';
import { WatchdogRelay, type WatchdogRelease } from '../relay/watchdog.js';

/** The `lock` section of the configuration. */
export interface LockConfig {
  /** pulse: momentary pulses on separate lock/unlock channels; hold: one strike held for holdMs. */
  readonly wiring: 'pulse' | 'hold';
  readonly pulseMs: number;
  readonly holdMs: number;
  /** pulse wiring: pulse the lock channel this long after an unlock; 0 never relocks by itself. */
  readonly autoRelockMs: number;
  /** Watchdog: no channel stays energised longer than this. */
  readonly maxOnMs: number;
}

export type LockAction = 'unlock' | 'lock';
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

interface Pending {
  readonly action: LockAction;
  readonly cause: string;
  readonly waiters: Waiter[];
}

/**
 * idle: every channel de-energised. energising: a set(…, true) is in flight. on: the active
 * channel is energised (a pulse or a hold is running). releasing: a set(…, false) is in flight.
 * Exactly one relay command is in flight at a time, so the channels never overlap.
 */
type Phase = 'idle' | 'energising' | 'on' | 'releasing';

const SETTLED: Readonly<Record<LockState, LockState>> = {
  locked: 'locked',
  unlocked: 'unlocked',
  unlocking: 'unlocked',
  locking: 'locked',
};

/**
 * Drives the lock from grants. Overlapping requests neither stack pulses nor cut them short:
 * a request for the action already being pulsed joins that pulse; a request for the other action
 * waits for the running pulse to end, then runs (the latest request wins over an earlier waiting
 * one). Relay failures reject the request with `relay_failed` and leave every channel de-energised.
 */
export class LockController {
  private readonly relay: WatchdogRelay;
  private readonly config: LockConfig;
  private readonly log: Logger;
  private readonly timers: Timers;
  private readonly listeners = new Set<LockListener>();
  private readonly watchdogListeners = new Set<(release: WatchdogRelease) => void>();
  private current: LockState = 'locked';
  private phase: Phase = 'idle';
  /** The action whose pulse or hold is running (phase ≠ idle). */
  private active: LockAction | undefined;
  private activeCause = '';
  /** State before the running action began: restored when the relay fails to energise. */
  private settledBefore: LockState = 'locked';
  private energiseWaiters: Waiter[] = [];
  private releaseWaiters: Waiter[] = [];
  private pending: Pending | undefined;
  private pulseTimer: CancelTimer | undefined;
  private holdTimer: CancelTimer | undefined;
  private relockTimer: CancelTimer | undefined;
  private lastUnlockAt = 0;
  /** A retracted unlock pulse still switching on: end it as soon as it is on. */
  private cutWhenOn = false;
  private inflight: Promise<unknown> = Promise.resolve();
  private running = false;
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
    const longest = config.wiring === 'pulse' ? config.pulseMs : config.holdMs;
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
    return this.current;
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
    if (this.running) return;
    if (this.stopping) await this.stopping;
    this.stopping = undefined;
    await this.relay.allOff();
    this.running = true;
    this.phase = 'idle';
    this.setState('locked', 'start');
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
    const cut =
      this.config.wiring === 'pulse' && this.running && this.active === 'unlock' ? this.phase : undefined;
    const locked = this.request('lock', cause);
    if (cut === 'energising') {
      this.cutWhenOn = true;
    } else if (cut === 'on') {
      this.pulseTimer?.();
      this.pulseTimer = undefined;
      void this.endPulse(true);
    }
    return locked;
  }

  /** Cancels every timer, refuses waiting requests, waits for the relay command in flight, then all off. */
  stop(): Promise<void> {
    if (this.stopping) return this.stopping;
    this.running = false;
    this.cutWhenOn = false;
    this.stopping = (async () => {
      this.cancelTimers();
      if (this.pending) {
        const { waiters } = this.pending;
        this.pending = undefined;
        for (const w of waiters) w.reject(new AgentError('busy', 'the lock controller stopped'));
      }
      await this.inflight.catch(() => {});
      await this.relay.allOff();
      const wasActive = this.phase !== 'idle';
      this.phase = 'idle';
      this.active = undefined;
      for (const w of this.releaseWaiters.splice(0)) w.resolve('locked');
      if (this.config.wiring === 'hold') this.setState('locked', 'stop');
      else if (wasActive) this.setState(SETTLED[this.current], 'stop');
    })();
    return this.stopping;
  }

  private request(action: LockAction, cause: string): Promise<LockState> {
    if (!this.running) return Promise.reject(new AgentError('busy', 'the lock controller is not running'));
    return new Promise<LockState>((resolve, reject) => {
      const waiter: Waiter = { resolve, reject };
      if (this.config.wiring === 'pulse') this.dispatchPulse(action, cause, waiter);
      else this.dispatchHold(action, cause, waiter);
    });
  }

  // ── pulse wiring ───────────────────────────────────────────────────────────

  private dispatchPulse(action: LockAction, cause: string, waiter: Waiter): void {
    this.cancelRelock();
    if (action === 'unlock') this.lastUnlockAt = this.timers.now();
    if (this.phase === 'idle') {
      void this.startPulse(action, cause, [waiter]);
    } else if (this.active === action && this.phase === 'energising') {
      this.supersedePending();
      // A new grant for the pulse under way outranks an earlier retraction of it.
      this.cutWhenOn = false;
      this.energiseWaiters.push(waiter);
    } else if (this.active === action && this.phase === 'on') {
      // Joins the pulse under way: no second pulse, and this one is not cut short.
      this.supersedePending();
      waiter.resolve(this.current);
    } else {
      this.enqueue(action, cause, waiter);
    }
  }

  private startPulse(action: LockAction, cause: string, waiters: Waiter[]): Promise<void> {
    return this.energise(action, cause, waiters, action === 'unlock' ? 'unlocking' : 'locking', () => {
      if (this.cutWhenOn) {
        this.cutWhenOn = false;
        void this.endPulse(true);
        return;
      }
      this.pulseTimer = this.timers.schedule(this.config.pulseMs, () => {
        this.pulseTimer = undefined;
        void this.endPulse();
      });
    });
  }

  /** Ends the running pulse. `cut`: it was retracted, and the request waiting next says the state. */
  private endPulse(cut = false): Promise<void> {
    if (this.phase !== 'on' || this.active === undefined) return Promise.resolve();
    const action = this.active;
    const cause = this.activeCause;
    return this.deenergise(action, () => {
      if (!cut || !this.running || this.pending === undefined)
        this.setState(action === 'unlock' ? 'unlocked' : 'locked', cause);
      if (!this.running || this.runPending()) return;
      if (action === 'unlock') this.armRelock();
    });
  }

  private armRelock(): void {
    if (this.config.autoRelockMs <= 0 || !this.running) return;
    const now = this.timers.now();
    // A grant that joined the pulse late pushes the relock back as if its own pulse had just ended.
    const from = Math.max(now, this.lastUnlockAt + this.config.pulseMs);
    this.relockTimer = this.timers.schedule(from - now + this.config.autoRelockMs, () => {
      this.relockTimer = undefined;
      if (!this.running) return;
      this.dispatchPulse('lock', 'auto-relock', {
        resolve: () => {},
        reject: () => {}, // already logged by the failure path
      });
    });
  }

  private cancelRelock(): void {
    this.relockTimer?.();
    this.relockTimer = undefined;
  }

  // ── hold wiring ────────────────────────────────────────────────────────────

  private dispatchHold(action: LockAction, cause: string, waiter: Waiter): void {
    if (action === 'unlock') {
      switch (this.phase) {
        case 'idle':
          void this.startHold(cause, [waiter]);
          return;
        case 'energising':
          this.supersedePending();
          this.energiseWaiters.push(waiter);
          return;
        case 'on':
          // Extends the hold from now, here and in the relay guard; the max-on limit still bounds
          // the total on-time.
          this.armHold();
          this.relay.set('unlock', true, { releaseAfterMs: this.onTimeMs() }).catch((err: unknown) => {
            this.log.warn(
              { code: 'relay_failed', err: relayError(err, 'unlock').message },
              'could not extend the hold in the relay guard',
            );
          });
          waiter.resolve(this.current);
          return;
        case 'releasing':
          this.enqueue(action, cause, waiter);
          return;
      }
    }
    switch (this.phase) {
      case 'idle':
        waiter.resolve(this.current);
        return;
      case 'energising':
        this.enqueue(action, cause, waiter);
        return;
      case 'on':
        void this.releaseHold(cause, [waiter]);
        return;
      case 'releasing':
        this.supersedePending();
        this.releaseWaiters.push(waiter);
        return;
    }
  }

  private startHold(cause: string, waiters: Waiter[]): Promise<void> {
    return this.energise('unlock', cause, waiters, 'unlocked', () => {
      if (!this.runPending()) this.armHold();
    });
  }

  private armHold(): void {
    this.holdTimer?.();
    this.holdTimer = this.timers.schedule(this.config.holdMs, () => {
      this.holdTimer = undefined;
      void this.releaseHold('hold-expired', []);
    });
  }

  private releaseHold(cause: string, waiters: Waiter[]): Promise<void> {
    if (this.phase !== 'on') {
      for (const w of waiters) w.resolve(this.current);
      return Promise.resolve();
    }
    this.holdTimer?.();
    this.holdTimer = undefined;
    this.releaseWaiters.push(...waiters);
    this.setState('locking', cause);
    return this.deenergise('unlock', (error) => {
      this.setState('locked', cause);
      for (const w of this.releaseWaiters.splice(0)) {
        if (error) w.reject(error);
        else w.resolve(this.current);
      }
      if (this.running) this.runPending();
    });
  }

  // ── shared ─────────────────────────────────────────────────────────────────

  /**
   * Energises the channel of `action` from idle. Once it is on: the state becomes `onState`, the
   * waiters resolve and `whenOn` runs in the same turn (so no request can slip in between). When
   * the relay fails: waiters rejected, everything de-energised, the state before restored.
   */
  private async energise(
    action: LockAction,
    cause: string,
    waiters: Waiter[],
    onState: LockState,
    whenOn: () => void,
  ): Promise<void> {
    this.phase = 'energising';
    this.active = action;
    this.activeCause = cause;
    this.energiseWaiters = waiters;
    this.settledBefore = SETTLED[this.current];
    this.setState(action === 'unlock' ? 'unlocking' : 'locking', cause);
    const channel: RelayChannel = action;
    const command = (async () => {
      // Interlock: the other channel must be off before this one comes on.
      const other: RelayChannel = channel === 'unlock' ? 'lock' : 'unlock';
      if (this.relay.energisedChannels().includes(other)) await this.relay.set(other, false);
      // The on-time goes with the command: the relay guard ends it by itself if this loop cannot.
      await this.relay.set(channel, true, { releaseAfterMs: this.onTimeMs() });
    })();
    this.inflight = command;
    try {
      await command;
    } catch (err) {
      const error = relayError(err, channel);
      this.log.error(
        { code: 'relay_failed', channel, action, cause, err: error.message },
        'relay failed to energise: de-energising everything',
      );
      await this.relay.allOff();
      this.phase = 'idle';
      this.active = undefined;
      this.cutWhenOn = false;
      this.setState(this.settledBefore, 'relay_failed');
      for (const w of this.energiseWaiters.splice(0)) w.reject(error);
      if (
        this.running &&
        !this.runPending() &&
        this.current === 'unlocked' &&
        this.config.wiring === 'pulse'
      ) {
        this.armRelock();
      }
      return;
    }
    this.phase = 'on';
    this.setState(onState, cause);
    for (const w of this.energiseWaiters.splice(0)) w.resolve(this.current);
    // When stop() ran while the relay was switching, it de-energises once this command is done.
    if (this.running) whenOn();
  }

  /**
   * De-energises a channel (on failure: everything off), then runs `whenOff` with the error, if
   * any, in the same turn as the controller goes idle.
   */
  private async deenergise(
    channel: RelayChannel,
    whenOff: (error: AgentError | undefined) => void,
  ): Promise<void> {
    this.phase = 'releasing';
    let error: AgentError | undefined;
    const command = this.relay.set(channel, false).catch(async (err: unknown) => {
      error = relayError(err, channel);
      this.log.error(
        { code: 'relay_failed', channel, err: error.message },
        'relay failed to release: all off',
      );
      await this.relay.allOff();
    });
    this.inflight = command;
    await command;
    this.phase = 'idle';
    this.active = undefined;
    whenOff(error);
  }

  /** Starts the request that waited for the running action to end. True when one was started. */
  private runPending(): boolean {
    const pending = this.pending;
    if (pending === undefined) return false;
    this.pending = undefined;
    if (this.config.wiring === 'pulse') {
      if (pending.action === 'unlock') this.lastUnlockAt = Math.max(this.lastUnlockAt, this.timers.now());
      void this.startPulse(pending.action, pending.cause, pending.waiters);
    } else if (pending.action === 'unlock') {
      void this.startHold(pending.cause, pending.waiters);
    } else if (this.phase === 'on') {
      void this.releaseHold(pending.cause, pending.waiters);
    } else {
      for (const w of pending.waiters) w.resolve(this.current);
    }
    return true;
  }

  private enqueue(action: LockAction, cause: string, waiter: Waiter): void {
    if (this.pending?.action === action) {
      this.pending.waiters.push(waiter);
      return;
    }
    this.supersedePending();
    this.pending = { action, cause, waiters: [waiter] };
  }

  /** A newer request for the other action replaces a waiting one, whose callers get the state as it is. */
  private supersedePending(): void {
    const pending = this.pending;
    if (pending === undefined) return;
    this.pending = undefined;
    this.log.debug(
      { action: pending.action, cause: pending.cause },
      'waiting lock request superseded by a newer one',
    );
    for (const w of pending.waiters) w.resolve(this.current);
  }

  /** How long a pulse or a hold keeps its channel energised. */
  private onTimeMs(): number {
    return this.config.wiring === 'pulse' ? this.config.pulseMs : this.config.holdMs;
  }

  private onWatchdogRelease(release: WatchdogRelease): void {
    if (release.current) {
      this.log.warn(
        { code: release.code, channel: release.channel, heldMs: release.heldMs, by: release.by },
        'lock controller resyncs after a watchdog release',
      );
    }
    // A report of an earlier energising, already ended here, must not cut the one running now.
    if (release.current && this.phase === 'on' && this.active === release.channel) {
      if (this.config.wiring === 'pulse') {
        this.pulseTimer?.();
        this.pulseTimer = undefined;
        void this.endPulse();
      } else {
        void this.releaseHold('watchdog', []);
      }
    }
    for (const listener of this.watchdogListeners) {
      try {
        listener(release);
      } catch (err) {
        this.log.error({ code: 'internal', err: String(err) }, 'watchdog listener threw');
      }
    }
  }

  private cancelTimers(): void {
    this.pulseTimer?.();
    this.pulseTimer = undefined;
    this.holdTimer?.();
    this.holdTimer = undefined;
    this.cancelRelock();
  }

  private setState(state: LockState, cause: string): void {
    if (state === this.current) return;
    this.current = state;
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
