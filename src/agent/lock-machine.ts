import { AgentError } from '../core/errors.js';
import type { LockState } from '../core/types.js';

/**
 * The lock's state machine as a pure transition function: (config, state, event) -> (state,
 * effects). No timers, no clock, no I/O: time comes in on the events, and the effects say what the
 * shell (LockController, src/agent/lock-controller.ts) must do — switch a relay channel, start or
 * cancel a named timer, announce a state, answer a caller, log. The shell feeds back what
 * happened: a relay command done or failed, a timer fired, a channel forced off by the watchdog.
 *
 * The rules it keeps:
 * - One relay command in flight at a time, so the channels never overlap, and every energising
 *   carries its on-time (the relay guard ends it by itself if the shell cannot).
 * - A channel switched on while running has, in the same step, its pulse or hold timer armed
 *   (never longer than the configured on-time) or its release under way.
 * - A relay that fails to switch is answered with all off, and the callers with relay_failed.
 * - Overlapping requests neither stack pulses nor cut them short: a request for the action being
 *   pulsed joins it; one for the other action waits for the pulse to end, the latest one winning
 *   over an earlier waiting one.
 */

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
/** The relay channel of an action has the action's name (hold wiring uses `unlock` only). */
export type LockChannel = LockAction;
/** retract: withdraw an unlock whose grant did not stand (see LockController.retract). */
export type LockCommand = LockAction | 'retract';
/** Names a caller waiting for an answer; the shell maps it to its promise. */
export type WaiterId = number;

/**
 * idle: every channel de-energised. energising: an energise is in flight. on: the active channel
 * is energised (a pulse or a hold is running). releasing: a release is in flight.
 */
export type LockPhase = 'idle' | 'energising' | 'on' | 'releasing';
/** stopped until start() has switched everything off; stopping from stop() until all is off. */
export type LockLife = 'stopped' | 'starting' | 'running' | 'stopping';
export type LockTimer = 'pulse' | 'hold' | 'relock';

export interface PendingRequest {
  readonly action: LockAction;
  readonly cause: string;
  readonly waiters: readonly WaiterId[];
}

/** What the release in flight was for: what happens once the channel is off. */
export type AfterRelease =
  | { readonly kind: 'pulse-end'; readonly action: LockAction; readonly cause: string; readonly cut: boolean }
  | { readonly kind: 'hold-release'; readonly cause: string };

/** What the relay command in flight is for. */
export type RelayPurpose =
  | {
      readonly kind: 'energise';
      readonly action: LockAction;
      readonly cause: string;
      readonly onState: LockState;
    }
  | { readonly kind: 'off-after-failed-energise'; readonly error: AgentError }
  | { readonly kind: 'release'; readonly channel: LockChannel; readonly after: AfterRelease }
  | { readonly kind: 'off-after-failed-release'; readonly after: AfterRelease; readonly error: AgentError }
  | { readonly kind: 'off-at-start' }
  | { readonly kind: 'off-at-stop' };

export interface RelayInFlight {
  /** Matches the `op` of the effect that started it and of the event that reports it. */
  readonly op: number;
  readonly purpose: RelayPurpose;
}

export interface LockMachineState {
  readonly life: LockLife;
  /** The lock state as announced. */
  readonly lock: LockState;
  readonly phase: LockPhase;
  /** The action whose pulse or hold is running (phase ≠ idle). */
  readonly active: LockAction | undefined;
  readonly activeCause: string;
  /** The settled state before the running action began: restored when the relay fails to energise. */
  readonly settledBefore: LockState;
  readonly energiseWaiters: readonly WaiterId[];
  readonly releaseWaiters: readonly WaiterId[];
  /** The request waiting for the running action to end. */
  readonly pending: PendingRequest | undefined;
  readonly startWaiters: readonly WaiterId[];
  readonly stopWaiters: readonly WaiterId[];
  /** The token of each armed timer: a fired timer whose token is not here any more is ignored. */
  readonly timers: Readonly<Record<LockTimer, number | undefined>>;
  /** When the latest unlock was asked for: a grant that joins a pulse late moves the relock back. */
  readonly lastUnlockAt: number;
  /** A retracted unlock pulse still switching on: end it as soon as it is on. */
  readonly cutWhenOn: boolean;
  readonly inFlight: RelayInFlight | undefined;
  /** Source of relay op numbers and timer tokens. */
  readonly nextId: number;
}

/** A channel forced off without being asked (the shell's watchdog, or the relay guard). */
export interface ForcedRelease {
  readonly channel: LockChannel;
  /** true: it ended the energising last asked for; false: an earlier one, already ended here. */
  readonly current: boolean;
  readonly code: string;
  readonly heldMs: number;
  readonly by: string;
}

/** Every event carries the monotonic time (ms) at which the shell fed it. */
export type LockEvent =
  | { readonly type: 'start'; readonly waiter: WaiterId; readonly at: number }
  | { readonly type: 'stop'; readonly waiter: WaiterId; readonly at: number }
  | {
      readonly type: 'request';
      readonly command: LockCommand;
      readonly cause: string;
      readonly waiter: WaiterId;
      readonly at: number;
    }
  | { readonly type: 'relay-ok'; readonly op: number; readonly at: number }
  | { readonly type: 'relay-failed'; readonly op: number; readonly error: AgentError; readonly at: number }
  /** The relay refused a hold extension (the hold itself runs on). */
  | { readonly type: 'extend-failed'; readonly error: AgentError; readonly at: number }
  | { readonly type: 'timer'; readonly timer: LockTimer; readonly token: number; readonly at: number }
  | { readonly type: 'forced-release'; readonly release: ForcedRelease; readonly at: number };

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export type LockEffect =
  /** Switch `interlock` off if the relay says it is on, then energise `channel` for releaseAfterMs. */
  | {
      readonly kind: 'energise';
      readonly op: number;
      readonly channel: LockChannel;
      readonly interlock: LockChannel;
      readonly releaseAfterMs: number;
    }
  | { readonly kind: 'release'; readonly op: number; readonly channel: LockChannel }
  /** De-energise every channel; reported done (relay-ok) whatever happens. */
  | { readonly kind: 'all-off'; readonly op: number }
  /** Ask again to energise a channel that is on, with a new on-time; no answer unless it fails. */
  | { readonly kind: 'extend'; readonly channel: LockChannel; readonly releaseAfterMs: number }
  /** Starts the named timer, replacing one of that name still armed. */
  | { readonly kind: 'start-timer'; readonly timer: LockTimer; readonly token: number; readonly ms: number }
  | { readonly kind: 'cancel-timer'; readonly timer: LockTimer }
  /** The lock state changed: log it and tell the listeners. */
  | { readonly kind: 'state'; readonly state: LockState; readonly cause: string }
  | { readonly kind: 'resolve'; readonly waiters: readonly WaiterId[]; readonly state: LockState }
  | { readonly kind: 'reject'; readonly waiters: readonly WaiterId[]; readonly error: AgentError }
  | {
      readonly kind: 'log';
      readonly level: LogLevel;
      readonly fields: Readonly<Record<string, unknown>>;
      readonly message: string;
    };

export interface LockTransition {
  readonly state: LockMachineState;
  readonly effects: readonly LockEffect[];
}

const SETTLED: Readonly<Record<LockState, LockState>> = {
  locked: 'locked',
  unlocked: 'unlocked',
  unlocking: 'unlocked',
  locking: 'locked',
};

export function initialLockMachine(): LockMachineState {
  return {
    life: 'stopped',
    lock: 'locked',
    phase: 'idle',
    active: undefined,
    activeCause: '',
    settledBefore: 'locked',
    energiseWaiters: [],
    releaseWaiters: [],
    pending: undefined,
    startWaiters: [],
    stopWaiters: [],
    timers: { pulse: undefined, hold: undefined, relock: undefined },
    lastUnlockAt: 0,
    cutWhenOn: false,
    inFlight: undefined,
    nextId: 1,
  };
}

/** How long a pulse or a hold keeps its channel energised. */
export function onTimeMs(config: LockConfig): number {
  return config.wiring === 'pulse' ? config.pulseMs : config.holdMs;
}

/** The next state and the effects to perform, in order. Does not touch `state`. */
export function lockTransition(
  config: LockConfig,
  state: LockMachineState,
  event: LockEvent,
): LockTransition {
  const step = new Step(config, state);
  step.apply(event);
  return { state: step.s, effects: step.effects };
}

interface Draft {
  life: LockLife;
  lock: LockState;
  phase: LockPhase;
  active: LockAction | undefined;
  activeCause: string;
  settledBefore: LockState;
  energiseWaiters: WaiterId[];
  releaseWaiters: WaiterId[];
  pending: { action: LockAction; cause: string; waiters: WaiterId[] } | undefined;
  startWaiters: WaiterId[];
  stopWaiters: WaiterId[];
  timers: Record<LockTimer, number | undefined>;
  lastUnlockAt: number;
  cutWhenOn: boolean;
  inFlight: RelayInFlight | undefined;
  nextId: number;
}

/** One transition, worked on a private copy of the state. */
class Step {
  readonly s: Draft;
  readonly effects: LockEffect[] = [];
  private readonly config: LockConfig;

  constructor(config: LockConfig, state: LockMachineState) {
    this.config = config;
    this.s = {
      ...state,
      energiseWaiters: [...state.energiseWaiters],
      releaseWaiters: [...state.releaseWaiters],
      pending: state.pending && { ...state.pending, waiters: [...state.pending.waiters] },
      startWaiters: [...state.startWaiters],
      stopWaiters: [...state.stopWaiters],
      timers: { ...state.timers },
    };
  }

  apply(event: LockEvent): void {
    switch (event.type) {
      case 'start':
        this.onStart(event.waiter);
        break;
      case 'stop':
        this.onStop(event.waiter);
        break;
      case 'request':
        this.onRequest(event.command, event.cause, event.waiter, event.at);
        break;
      case 'relay-ok':
        if (this.s.inFlight?.op === event.op) this.onRelayDone(undefined, event.at);
        break;
      case 'relay-failed':
        if (this.s.inFlight?.op === event.op) this.onRelayDone(event.error, event.at);
        break;
      case 'extend-failed':
        this.log(
          'warn',
          { code: 'relay_failed', err: event.error.message },
          'could not extend the hold in the relay guard',
        );
        break;
      case 'timer':
        if (this.s.timers[event.timer] === event.token) {
          this.s.timers[event.timer] = undefined;
          this.onTimer(event.timer, event.at);
        }
        break;
      case 'forced-release':
        this.onForcedRelease(event.release);
        break;
    }
    // stop() switches everything off once the relay command in flight, if any, is done.
    if (this.s.life === 'stopping' && this.s.inFlight === undefined) this.allOff({ kind: 'off-at-stop' });
  }

  // ── life ───────────────────────────────────────────────────────────────────

  private onStart(waiter: WaiterId): void {
    switch (this.s.life) {
      case 'running':
        this.resolve([waiter]);
        return;
      case 'starting':
        this.s.startWaiters.push(waiter);
        return;
      case 'stopping':
        this.reject([waiter], new AgentError('busy', 'the lock controller is stopping'));
        return;
      case 'stopped':
        this.s.life = 'starting';
        this.s.startWaiters.push(waiter);
        this.allOff({ kind: 'off-at-start' });
        return;
    }
  }

  private onStop(waiter: WaiterId): void {
    this.s.stopWaiters.push(waiter);
    if (this.s.life === 'stopping') return;
    this.s.life = 'stopping';
    this.s.cutWhenOn = false;
    this.cancelTimer('pulse');
    this.cancelTimer('hold');
    this.cancelTimer('relock');
    const pending = this.s.pending;
    if (pending) {
      this.s.pending = undefined;
      this.reject(pending.waiters, new AgentError('busy', 'the lock controller stopped'));
    }
  }

  private started(): void {
    // A stop() that came while starting wins: it switches off next (see apply).
    if (this.s.life === 'starting') {
      this.s.life = 'running';
      this.s.phase = 'idle';
      this.setState('locked', 'start');
    }
    this.resolve(this.s.startWaiters.splice(0));
  }

  private stopped(): void {
    const wasActive = this.s.phase !== 'idle';
    this.s.phase = 'idle';
    this.s.active = undefined;
    this.s.cutWhenOn = false;
    this.resolve(this.s.releaseWaiters.splice(0), 'locked');
    if (this.config.wiring === 'hold') this.setState('locked', 'stop');
    else if (wasActive) this.setState(SETTLED[this.s.lock], 'stop');
    this.s.life = 'stopped';
    this.resolve(this.s.stopWaiters.splice(0));
  }

  // ── requests ───────────────────────────────────────────────────────────────

  private onRequest(command: LockCommand, cause: string, waiter: WaiterId, at: number): void {
    if (this.s.life !== 'running') {
      this.reject([waiter], new AgentError('busy', 'the lock controller is not running'));
      return;
    }
    if (this.config.wiring === 'hold') {
      // Hold wiring: a retraction is a lock, which already releases the strike at once.
      this.dispatchHold(command === 'unlock' ? 'unlock' : 'lock', cause, waiter);
      return;
    }
    if (command !== 'retract') {
      this.dispatchPulse(command, cause, [waiter], at);
      return;
    }
    // A relay closes in 5–10 ms, so a cut that comes within that time keeps the lock from moving.
    const cut = this.s.active === 'unlock' ? this.s.phase : undefined;
    this.dispatchPulse('lock', cause, [waiter], at);
    if (cut === 'energising') {
      this.s.cutWhenOn = true;
    } else if (cut === 'on') {
      this.cancelTimer('pulse');
      this.endPulse(true);
    }
  }

  // ── pulse wiring ───────────────────────────────────────────────────────────

  private dispatchPulse(action: LockAction, cause: string, waiters: WaiterId[], at: number): void {
    this.cancelTimer('relock');
    if (action === 'unlock') this.s.lastUnlockAt = at;
    if (this.s.phase === 'idle') {
      this.energise(action, cause, waiters, action === 'unlock' ? 'unlocking' : 'locking');
    } else if (this.s.active === action && this.s.phase === 'energising') {
      this.supersedePending();
      // A new grant for the pulse under way outranks an earlier retraction of it.
      this.s.cutWhenOn = false;
      this.s.energiseWaiters.push(...waiters);
    } else if (this.s.active === action && this.s.phase === 'on') {
      // Joins the pulse under way: no second pulse, and this one is not cut short.
      this.supersedePending();
      this.resolve(waiters);
    } else {
      this.enqueue(action, cause, waiters);
    }
  }

  /** Ends the running pulse. `cut`: it was retracted, and the request waiting next says the state. */
  private endPulse(cut: boolean): void {
    const action = this.s.active;
    if (this.s.phase !== 'on' || action === undefined) return;
    this.release(action, { kind: 'pulse-end', action, cause: this.s.activeCause, cut });
  }

  private armRelock(at: number): void {
    if (this.config.autoRelockMs <= 0 || this.s.life !== 'running') return;
    // A grant that joined the pulse late pushes the relock back as if its own pulse had just ended.
    const from = Math.max(at, this.s.lastUnlockAt + this.config.pulseMs);
    this.startTimer('relock', from - at + this.config.autoRelockMs);
  }

  // ── hold wiring ────────────────────────────────────────────────────────────

  private dispatchHold(action: LockAction, cause: string, waiter: WaiterId): void {
    if (action === 'unlock') {
      switch (this.s.phase) {
        case 'idle':
          this.energise('unlock', cause, [waiter], 'unlocked');
          return;
        case 'energising':
          this.supersedePending();
          this.s.energiseWaiters.push(waiter);
          return;
        case 'on':
          // Extends the hold from now, here and in the relay guard; the max-on limit still bounds
          // the total on-time.
          this.startTimer('hold', this.config.holdMs);
          this.effects.push({ kind: 'extend', channel: 'unlock', releaseAfterMs: onTimeMs(this.config) });
          this.resolve([waiter]);
          return;
        case 'releasing':
          this.enqueue(action, cause, [waiter]);
          return;
      }
    }
    switch (this.s.phase) {
      case 'idle':
        this.resolve([waiter]);
        return;
      case 'energising':
        this.enqueue(action, cause, [waiter]);
        return;
      case 'on':
        this.releaseHold(cause, [waiter]);
        return;
      case 'releasing':
        this.supersedePending();
        this.s.releaseWaiters.push(waiter);
        return;
    }
  }

  private releaseHold(cause: string, waiters: WaiterId[]): void {
    if (this.s.phase !== 'on') {
      this.resolve(waiters);
      return;
    }
    this.cancelTimer('hold');
    this.s.releaseWaiters.push(...waiters);
    this.setState('locking', cause);
    this.release('unlock', { kind: 'hold-release', cause });
  }

  // ── relay commands ─────────────────────────────────────────────────────────

  /** Energises the channel of `action` from idle; the state becomes `onState` once it is on. */
  private energise(action: LockAction, cause: string, waiters: WaiterId[], onState: LockState): void {
    this.s.phase = 'energising';
    this.s.active = action;
    this.s.activeCause = cause;
    this.s.energiseWaiters = [...waiters];
    this.s.settledBefore = SETTLED[this.s.lock];
    this.setState(action === 'unlock' ? 'unlocking' : 'locking', cause);
    const op = this.begin({ kind: 'energise', action, cause, onState });
    // Interlock: the other channel must be off before this one comes on. The on-time goes with
    // the command: the relay guard ends it by itself if the shell cannot.
    this.effects.push({
      kind: 'energise',
      op,
      channel: action,
      interlock: action === 'unlock' ? 'lock' : 'unlock',
      releaseAfterMs: onTimeMs(this.config),
    });
  }

  private release(channel: LockChannel, after: AfterRelease): void {
    this.s.phase = 'releasing';
    const op = this.begin({ kind: 'release', channel, after });
    this.effects.push({ kind: 'release', op, channel });
  }

  private allOff(purpose: RelayPurpose): void {
    const op = this.begin(purpose);
    this.effects.push({ kind: 'all-off', op });
  }

  private begin(purpose: RelayPurpose): number {
    const op = this.s.nextId++;
    this.s.inFlight = { op, purpose };
    return op;
  }

  private onRelayDone(error: AgentError | undefined, at: number): void {
    const flight = this.s.inFlight;
    if (flight === undefined) return;
    this.s.inFlight = undefined;
    const purpose = flight.purpose;
    switch (purpose.kind) {
      case 'energise':
        if (error) this.energiseFailed(purpose.action, purpose.cause, error);
        else this.energised(purpose.cause, purpose.onState, at);
        return;
      case 'off-after-failed-energise':
        this.offAfterFailedEnergise(purpose.error, at);
        return;
      case 'release':
        if (error) {
          this.log(
            'error',
            { code: 'relay_failed', channel: purpose.channel, err: error.message },
            'relay failed to release: all off',
          );
          this.allOff({ kind: 'off-after-failed-release', after: purpose.after, error });
        } else {
          this.released(purpose.after, undefined, at);
        }
        return;
      case 'off-after-failed-release':
        this.released(purpose.after, purpose.error, at);
        return;
      case 'off-at-start':
        this.started();
        return;
      case 'off-at-stop':
        this.stopped();
        return;
    }
  }

  /** The channel is on: the state, the waiters and what comes next all in this one step. */
  private energised(cause: string, onState: LockState, at: number): void {
    this.s.phase = 'on';
    this.setState(onState, cause);
    this.resolve(this.s.energiseWaiters.splice(0));
    // When stop() came while the relay was switching, it switches off next (see apply).
    if (this.s.life !== 'running') return;
    if (this.config.wiring === 'hold') {
      if (!this.runPending(at)) this.startTimer('hold', this.config.holdMs);
    } else if (this.s.cutWhenOn) {
      this.s.cutWhenOn = false;
      this.endPulse(true);
    } else {
      this.startTimer('pulse', this.config.pulseMs);
    }
  }

  private energiseFailed(action: LockAction, cause: string, error: AgentError): void {
    this.log(
      'error',
      { code: 'relay_failed', channel: action, action, cause, err: error.message },
      'relay failed to energise: de-energising everything',
    );
    this.allOff({ kind: 'off-after-failed-energise', error });
  }

  private offAfterFailedEnergise(error: AgentError, at: number): void {
    this.s.phase = 'idle';
    this.s.active = undefined;
    this.s.cutWhenOn = false;
    this.setState(this.s.settledBefore, 'relay_failed');
    this.reject(this.s.energiseWaiters.splice(0), error);
    if (
      this.s.life === 'running' &&
      !this.runPending(at) &&
      this.s.lock === 'unlocked' &&
      this.config.wiring === 'pulse'
    ) {
      this.armRelock(at);
    }
  }

  /** The channel is off (after a failed release, through all off, and `error` says why). */
  private released(after: AfterRelease, error: AgentError | undefined, at: number): void {
    this.s.phase = 'idle';
    this.s.active = undefined;
    const running = this.s.life === 'running';
    if (after.kind === 'pulse-end') {
      if (!after.cut || !running || this.s.pending === undefined)
        this.setState(after.action === 'unlock' ? 'unlocked' : 'locked', after.cause);
      if (!running || this.runPending(at)) return;
      if (after.action === 'unlock') this.armRelock(at);
      return;
    }
    this.setState('locked', after.cause);
    const waiters = this.s.releaseWaiters.splice(0);
    if (error) this.reject(waiters, error);
    else this.resolve(waiters);
    if (running) this.runPending(at);
  }

  // ── timers and forced releases ─────────────────────────────────────────────

  private onTimer(timer: LockTimer, at: number): void {
    switch (timer) {
      case 'pulse':
        this.endPulse(false);
        return;
      case 'hold':
        this.releaseHold('hold-expired', []);
        return;
      case 'relock':
        if (this.s.life === 'running') this.dispatchPulse('lock', 'auto-relock', [], at);
        return;
    }
  }

  private onForcedRelease(release: ForcedRelease): void {
    if (release.current) {
      this.log(
        'warn',
        { code: release.code, channel: release.channel, heldMs: release.heldMs, by: release.by },
        'lock controller resyncs after a watchdog release',
      );
    }
    // A report of an earlier energising, already ended here, must not cut the one running now.
    // While stopping, the all-off in flight settles the state instead.
    if (
      !release.current ||
      this.s.phase !== 'on' ||
      this.s.active !== release.channel ||
      this.s.inFlight !== undefined
    )
      return;
    if (this.config.wiring === 'pulse') {
      this.cancelTimer('pulse');
      this.endPulse(false);
    } else {
      this.releaseHold('watchdog', []);
    }
  }

  // ── the waiting request ────────────────────────────────────────────────────

  /** Starts the request that waited for the running action to end. True when one was started. */
  private runPending(at: number): boolean {
    const pending = this.s.pending;
    if (pending === undefined) return false;
    this.s.pending = undefined;
    if (this.config.wiring === 'pulse') {
      if (pending.action === 'unlock') this.s.lastUnlockAt = Math.max(this.s.lastUnlockAt, at);
      this.energise(
        pending.action,
        pending.cause,
        pending.waiters,
        pending.action === 'unlock' ? 'unlocking' : 'locking',
      );
    } else if (pending.action === 'unlock') {
      this.energise('unlock', pending.cause, pending.waiters, 'unlocked');
    } else if (this.s.phase === 'on') {
      this.releaseHold(pending.cause, pending.waiters);
    } else {
      this.resolve(pending.waiters);
    }
    return true;
  }

  private enqueue(action: LockAction, cause: string, waiters: WaiterId[]): void {
    if (this.s.pending?.action === action) {
      this.s.pending.waiters.push(...waiters);
      return;
    }
    this.supersedePending();
    this.s.pending = { action, cause, waiters: [...waiters] };
  }

  /** A newer request for the other action replaces a waiting one, whose callers get the state as it is. */
  private supersedePending(): void {
    const pending = this.s.pending;
    if (pending === undefined) return;
    this.s.pending = undefined;
    this.log(
      'debug',
      { action: pending.action, cause: pending.cause },
      'waiting lock request superseded by a newer one',
    );
    this.resolve(pending.waiters);
  }

  // ── effects ────────────────────────────────────────────────────────────────

  private setState(state: LockState, cause: string): void {
    if (state === this.s.lock) return;
    this.s.lock = state;
    this.effects.push({ kind: 'state', state, cause });
  }

  private startTimer(timer: LockTimer, ms: number): void {
    const token = this.s.nextId++;
    this.s.timers[timer] = token;
    this.effects.push({ kind: 'start-timer', timer, token, ms });
  }

  private cancelTimer(timer: LockTimer): void {
    if (this.s.timers[timer] === undefined) return;
    this.s.timers[timer] = undefined;
    this.effects.push({ kind: 'cancel-timer', timer });
  }

  /** Answers callers with the state as it is now (or `state`). */
  private resolve(waiters: readonly WaiterId[], state: LockState = this.s.lock): void {
    if (waiters.length > 0) this.effects.push({ kind: 'resolve', waiters: [...waiters], state });
  }

  private reject(waiters: readonly WaiterId[], error: AgentError): void {
    if (waiters.length > 0) this.effects.push({ kind: 'reject', waiters: [...waiters], error });
  }

  private log(level: LogLevel, fields: Record<string, unknown>, message: string): void {
    this.effects.push({ kind: 'log', level, fields, message });
  }
}
