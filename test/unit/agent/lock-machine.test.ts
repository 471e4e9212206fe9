import { describe, expect, it } from 'vitest';
import {
  type ForcedRelease,
  initialLockMachine,
  type LockCommand,
  type LockConfig,
  type LockEffect,
  type LockEvent,
  type LockMachineState,
  type LockTimer,
  lockTransition,
  type RelayPurpose,
} from '../../../src/agent/lock-machine.js';
import { AgentError } from '../../../src/core/errors.js';

/**
 * The lock's transition function as a table: state + event -> expected state (the fields that
 * matter) + exactly the effects, in order. Op numbers and timer tokens come from nextId (10 in
 * every row), so `op: 10` is the relay command a row starts and `token: 10` the timer it arms.
 */
const PULSE: LockConfig = {
  wiring: 'pulse',
  pulseMs: 350,
  holdMs: 5000,
  autoRelockMs: 30_000,
  maxOnMs: 10_000,
};
const HOLD: LockConfig = { wiring: 'hold', pulseMs: 350, holdMs: 5000, autoRelockMs: 0, maxOnMs: 10_000 };
const AT = 1000;
const BOARD_GONE = new AgentError('relay_failed', 'board gone');
const BUSY = expect.objectContaining({ code: 'busy' });

function timers(armed: Partial<Record<LockTimer, number>> = {}): Record<LockTimer, number | undefined> {
  return { pulse: undefined, hold: undefined, relock: undefined, ...armed };
}

/** A running machine with `over` applied. */
function running(over: Partial<LockMachineState> = {}): LockMachineState {
  return { ...initialLockMachine(), life: 'running', nextId: 10, ...over };
}

function flight(op: number, purpose: RelayPurpose): LockMachineState['inFlight'] {
  return { op, purpose };
}

const req = (command: LockCommand, cause: string, waiter: number): LockEvent => ({
  type: 'request',
  command,
  cause,
  waiter,
  at: AT,
});
const ok = (op: number): LockEvent => ({ type: 'relay-ok', op, at: AT });
const failed = (op: number): LockEvent => ({ type: 'relay-failed', op, error: BOARD_GONE, at: AT });
const fired = (timer: LockTimer, token: number): LockEvent => ({ type: 'timer', timer, token, at: AT });
const forced = (release: Partial<ForcedRelease>): LockEvent => ({
  type: 'forced-release',
  release: { channel: 'unlock', current: true, code: 'relay_watchdog', heldMs: 200, by: 'agent', ...release },
  at: AT,
});
const WATCHDOG_LOG: LockEffect = {
  kind: 'log',
  level: 'warn',
  fields: { code: 'relay_watchdog', channel: 'unlock', heldMs: 200, by: 'agent' },
  message: 'lock controller resyncs after a watchdog release',
};
const superseded = (action: string, cause: string): LockEffect => ({
  kind: 'log',
  level: 'debug',
  fields: { action, cause },
  message: 'waiting lock request superseded by a newer one',
});

/** States of a pulse or hold under way. */
const unlockPulseOn = {
  phase: 'on',
  active: 'unlock',
  activeCause: 'a',
  lock: 'unlocking',
  timers: timers({ pulse: 5 }),
} as const;
const unlockSwitchingOn = {
  phase: 'energising',
  active: 'unlock',
  activeCause: 'a',
  lock: 'unlocking',
  energiseWaiters: [1],
  inFlight: flight(3, { kind: 'energise', action: 'unlock', cause: 'a', onState: 'unlocking' }),
} as const;
const holdOn = {
  phase: 'on',
  active: 'unlock',
  activeCause: 'a',
  lock: 'unlocked',
  timers: timers({ hold: 5 }),
} as const;
const holdReleasing = {
  phase: 'releasing',
  active: 'unlock',
  activeCause: 'a',
  lock: 'locking',
  inFlight: flight(3, { kind: 'release', channel: 'unlock', after: { kind: 'hold-release', cause: 'b' } }),
} as const;

interface Row {
  readonly name: string;
  readonly config?: LockConfig;
  readonly state: LockMachineState;
  readonly event: LockEvent;
  /** The fields of the next state that the row is about. */
  readonly next?: Partial<LockMachineState>;
  readonly effects: readonly unknown[];
}

const LIFE: Row[] = [
  {
    name: 'start when stopped switches everything off first',
    state: { ...initialLockMachine(), nextId: 10 },
    event: { type: 'start', waiter: 1, at: AT },
    next: { life: 'starting', startWaiters: [1], inFlight: flight(10, { kind: 'off-at-start' }) },
    effects: [{ kind: 'all-off', op: 10 }],
  },
  {
    name: 'all off done at start: running, locked, every start answered',
    state: running({
      life: 'starting',
      lock: 'unlocked',
      startWaiters: [1, 2],
      inFlight: flight(3, { kind: 'off-at-start' }),
    }),
    event: ok(3),
    next: { life: 'running', lock: 'locked', phase: 'idle', startWaiters: [], inFlight: undefined },
    effects: [
      { kind: 'state', state: 'locked', cause: 'start' },
      { kind: 'resolve', waiters: [1, 2], state: 'locked' },
    ],
  },
  {
    name: 'start when running is answered at once',
    state: running(),
    event: { type: 'start', waiter: 1, at: AT },
    effects: [{ kind: 'resolve', waiters: [1], state: 'locked' }],
  },
  {
    name: 'start while starting joins it',
    state: running({ life: 'starting', startWaiters: [4], inFlight: flight(3, { kind: 'off-at-start' }) }),
    event: { type: 'start', waiter: 1, at: AT },
    next: { startWaiters: [4, 1] },
    effects: [],
  },
  {
    name: 'start while stopping is refused busy (the shell waits for the stop)',
    state: running({ life: 'stopping', inFlight: flight(3, { kind: 'off-at-stop' }) }),
    event: { type: 'start', waiter: 1, at: AT },
    effects: [{ kind: 'reject', waiters: [1], error: BUSY }],
  },
  {
    name: 'stop when idle switches all off now',
    state: running(),
    event: { type: 'stop', waiter: 1, at: AT },
    next: { life: 'stopping', stopWaiters: [1], inFlight: flight(10, { kind: 'off-at-stop' }) },
    effects: [{ kind: 'all-off', op: 10 }],
  },
  {
    name: 'stop mid-pulse: timers cancelled, the waiting request refused busy, all off',
    state: running({
      ...unlockPulseOn,
      timers: timers({ pulse: 5, relock: 6 }),
      pending: { action: 'lock', cause: 'b', waiters: [2] },
    }),
    event: { type: 'stop', waiter: 1, at: AT },
    next: { life: 'stopping', pending: undefined, timers: timers() },
    effects: [
      { kind: 'cancel-timer', timer: 'pulse' },
      { kind: 'cancel-timer', timer: 'relock' },
      { kind: 'reject', waiters: [2], error: BUSY },
      { kind: 'all-off', op: 10 },
    ],
  },
  {
    name: 'stop while the relay switches on waits for it (and forgets a pending cut)',
    state: running({ ...unlockSwitchingOn, cutWhenOn: true }),
    event: { type: 'stop', waiter: 9, at: AT },
    next: { life: 'stopping', cutWhenOn: false, inFlight: unlockSwitchingOn.inFlight },
    effects: [],
  },
  {
    name: 'switched on while stopping: callers answered, no pulse timer, then all off',
    state: running({ ...unlockSwitchingOn, life: 'stopping', stopWaiters: [9] }),
    event: ok(3),
    next: { phase: 'on', timers: timers(), inFlight: flight(10, { kind: 'off-at-stop' }) },
    effects: [
      { kind: 'resolve', waiters: [1], state: 'unlocking' },
      { kind: 'all-off', op: 10 },
    ],
  },
  {
    name: 'stopped, pulse wiring: a pulse cut short settles where it was going',
    state: running({
      ...unlockPulseOn,
      timers: timers(),
      life: 'stopping',
      stopWaiters: [9],
      inFlight: flight(3, { kind: 'off-at-stop' }),
    }),
    event: ok(3),
    next: { life: 'stopped', phase: 'idle', active: undefined, lock: 'unlocked', stopWaiters: [] },
    effects: [
      { kind: 'state', state: 'unlocked', cause: 'stop' },
      { kind: 'resolve', waiters: [9], state: 'unlocked' },
    ],
  },
  {
    name: 'stopped, pulse wiring, idle: the state stays',
    state: running({
      lock: 'unlocked',
      life: 'stopping',
      stopWaiters: [9],
      inFlight: flight(3, { kind: 'off-at-stop' }),
    }),
    event: ok(3),
    next: { life: 'stopped', lock: 'unlocked' },
    effects: [{ kind: 'resolve', waiters: [9], state: 'unlocked' }],
  },
  {
    name: 'stopped, hold wiring: locked',
    config: HOLD,
    state: running({
      ...holdOn,
      timers: timers(),
      life: 'stopping',
      stopWaiters: [9],
      inFlight: flight(3, { kind: 'off-at-stop' }),
    }),
    event: ok(3),
    next: { life: 'stopped', lock: 'locked' },
    effects: [
      { kind: 'state', state: 'locked', cause: 'stop' },
      { kind: 'resolve', waiters: [9], state: 'locked' },
    ],
  },
  {
    name: 'stop while starting: no all off of its own yet',
    state: running({ life: 'starting', startWaiters: [1], inFlight: flight(3, { kind: 'off-at-start' }) }),
    event: { type: 'stop', waiter: 2, at: AT },
    next: { life: 'stopping', stopWaiters: [2], inFlight: flight(3, { kind: 'off-at-start' }) },
    effects: [],
  },
  {
    name: 'start all off done after a stop came: start answered, not running, all off for the stop',
    state: running({
      life: 'stopping',
      startWaiters: [1],
      stopWaiters: [2],
      inFlight: flight(3, { kind: 'off-at-start' }),
    }),
    event: ok(3),
    next: { life: 'stopping', inFlight: flight(10, { kind: 'off-at-stop' }) },
    effects: [
      { kind: 'resolve', waiters: [1], state: 'locked' },
      { kind: 'all-off', op: 10 },
    ],
  },
  {
    name: 'stop while stopping joins it',
    state: running({ life: 'stopping', stopWaiters: [1], inFlight: flight(3, { kind: 'off-at-stop' }) }),
    event: { type: 'stop', waiter: 2, at: AT },
    next: { stopWaiters: [1, 2] },
    effects: [],
  },
  ...(['stopped', 'starting', 'stopping'] as const).map(
    (life): Row => ({
      name: `a request while ${life} is refused busy`,
      state: running({
        life,
        inFlight:
          life === 'stopped'
            ? undefined
            : flight(3, { kind: life === 'starting' ? 'off-at-start' : 'off-at-stop' }),
      }),
      event: req('unlock', 'a', 1),
      effects: [{ kind: 'reject', waiters: [1], error: BUSY }],
    }),
  ),
];

const PULSE_ROWS: Row[] = [
  {
    name: 'unlock when idle: unlocking, the unlock channel energised for pulseMs, the relock cancelled',
    state: running({ timers: timers({ relock: 4 }) }),
    event: req('unlock', 'nfc0:alice', 1),
    next: {
      phase: 'energising',
      active: 'unlock',
      activeCause: 'nfc0:alice',
      energiseWaiters: [1],
      settledBefore: 'locked',
      lastUnlockAt: AT,
      timers: timers(),
      inFlight: flight(10, { kind: 'energise', action: 'unlock', cause: 'nfc0:alice', onState: 'unlocking' }),
    },
    effects: [
      { kind: 'cancel-timer', timer: 'relock' },
      { kind: 'state', state: 'unlocking', cause: 'nfc0:alice' },
      { kind: 'energise', op: 10, channel: 'unlock', interlock: 'lock', releaseAfterMs: 350 },
    ],
  },
  {
    name: 'lock when idle and unlocked: locking, the lock channel energised',
    state: running({ lock: 'unlocked' }),
    event: req('lock', 'b', 1),
    next: { settledBefore: 'unlocked', active: 'lock' },
    effects: [
      { kind: 'state', state: 'locking', cause: 'b' },
      { kind: 'energise', op: 10, channel: 'lock', interlock: 'unlock', releaseAfterMs: 350 },
    ],
  },
  {
    name: 'switched on: callers answered, then the pulse timer of pulseMs',
    state: running({ ...unlockSwitchingOn, energiseWaiters: [1, 2] }),
    event: ok(3),
    next: { phase: 'on', energiseWaiters: [], inFlight: undefined, timers: timers({ pulse: 10 }) },
    effects: [
      { kind: 'resolve', waiters: [1, 2], state: 'unlocking' },
      { kind: 'start-timer', timer: 'pulse', token: 10, ms: 350 },
    ],
  },
  {
    name: 'unlock while the unlock switches on joins it and outranks an earlier retraction',
    state: running({
      ...unlockSwitchingOn,
      cutWhenOn: true,
      pending: { action: 'lock', cause: 'a:retracted', waiters: [2] },
    }),
    event: req('unlock', 'b', 3),
    next: { energiseWaiters: [1, 3], cutWhenOn: false, pending: undefined, lastUnlockAt: AT },
    effects: [superseded('lock', 'a:retracted'), { kind: 'resolve', waiters: [2], state: 'unlocking' }],
  },
  {
    name: 'unlock during the unlock pulse joins it: answered now, no second pulse, relock moves back',
    state: running(unlockPulseOn),
    event: req('unlock', 'b', 1),
    next: { lastUnlockAt: AT, timers: timers({ pulse: 5 }) },
    effects: [{ kind: 'resolve', waiters: [1], state: 'unlocking' }],
  },
  {
    name: 'lock during the unlock pulse waits for it',
    state: running(unlockPulseOn),
    event: req('lock', 'b', 1),
    next: { pending: { action: 'lock', cause: 'b', waiters: [1] } },
    effects: [],
  },
  {
    name: 'a second request for the waiting action joins it',
    state: running({ ...unlockPulseOn, pending: { action: 'lock', cause: 'b', waiters: [1] } }),
    event: req('lock', 'c', 2),
    next: { pending: { action: 'lock', cause: 'b', waiters: [1, 2] } },
    effects: [],
  },
  {
    name: 'the latest request wins: a lock joining the lock pulse answers a waiting unlock as it is',
    state: running({
      phase: 'on',
      active: 'lock',
      lock: 'locking',
      timers: timers({ pulse: 5 }),
      pending: { action: 'unlock', cause: 'a', waiters: [1] },
    }),
    event: req('lock', 'b', 2),
    next: { pending: undefined },
    effects: [
      superseded('unlock', 'a'),
      { kind: 'resolve', waiters: [1], state: 'locking' },
      { kind: 'resolve', waiters: [2], state: 'locking' },
    ],
  },
  {
    name: 'a request for the other action while one waits replaces it',
    state: running({
      phase: 'releasing',
      active: 'unlock',
      lock: 'unlocking',
      pending: { action: 'unlock', cause: 'a', waiters: [1] },
      inFlight: flight(3, {
        kind: 'release',
        channel: 'unlock',
        after: { kind: 'pulse-end', action: 'unlock', cause: 'x', cut: false },
      }),
    }),
    event: req('lock', 'b', 2),
    next: { pending: { action: 'lock', cause: 'b', waiters: [2] } },
    effects: [superseded('unlock', 'a'), { kind: 'resolve', waiters: [1], state: 'unlocking' }],
  },
  {
    name: 'pulse timer fired: the channel is released',
    state: running(unlockPulseOn),
    event: fired('pulse', 5),
    next: {
      phase: 'releasing',
      timers: timers(),
      inFlight: flight(10, {
        kind: 'release',
        channel: 'unlock',
        after: { kind: 'pulse-end', action: 'unlock', cause: 'a', cut: false },
      }),
    },
    effects: [{ kind: 'release', op: 10, channel: 'unlock' }],
  },
  {
    name: 'a timer fired with a stale token changes nothing',
    state: running({ ...unlockPulseOn, timers: timers({ pulse: 6 }) }),
    event: fired('pulse', 5),
    next: running({ ...unlockPulseOn, timers: timers({ pulse: 6 }) }),
    effects: [],
  },
  {
    name: 'a relay result for a command not in flight changes nothing',
    state: running(unlockSwitchingOn),
    event: ok(2),
    next: running(unlockSwitchingOn),
    effects: [],
  },
  {
    name: 'unlock pulse ended: unlocked, relock armed from the end of the latest grant’s pulse',
    state: running({
      phase: 'releasing',
      active: 'unlock',
      lock: 'unlocking',
      lastUnlockAt: 800,
      inFlight: flight(3, {
        kind: 'release',
        channel: 'unlock',
        after: { kind: 'pulse-end', action: 'unlock', cause: 'a', cut: false },
      }),
    }),
    event: ok(3),
    next: { phase: 'idle', active: undefined, lock: 'unlocked', timers: timers({ relock: 10 }) },
    effects: [
      { kind: 'state', state: 'unlocked', cause: 'a' },
      // 800 + 350 is 150 ms after now: the relock counts from there.
      { kind: 'start-timer', timer: 'relock', token: 10, ms: 150 + 30_000 },
    ],
  },
  {
    name: 'unlock pulse ended, autoRelockMs 0: no relock',
    config: { ...PULSE, autoRelockMs: 0 },
    state: running({
      phase: 'releasing',
      active: 'unlock',
      lock: 'unlocking',
      inFlight: flight(3, {
        kind: 'release',
        channel: 'unlock',
        after: { kind: 'pulse-end', action: 'unlock', cause: 'a', cut: false },
      }),
    }),
    event: ok(3),
    next: { lock: 'unlocked', timers: timers() },
    effects: [{ kind: 'state', state: 'unlocked', cause: 'a' }],
  },
  {
    name: 'pulse ended with a request waiting: it runs next, no relock',
    state: running({
      phase: 'releasing',
      active: 'unlock',
      lock: 'unlocking',
      pending: { action: 'lock', cause: 'b', waiters: [2] },
      inFlight: flight(3, {
        kind: 'release',
        channel: 'unlock',
        after: { kind: 'pulse-end', action: 'unlock', cause: 'a', cut: false },
      }),
    }),
    event: ok(3),
    next: {
      phase: 'energising',
      active: 'lock',
      energiseWaiters: [2],
      settledBefore: 'unlocked',
      pending: undefined,
    },
    effects: [
      { kind: 'state', state: 'unlocked', cause: 'a' },
      { kind: 'state', state: 'locking', cause: 'b' },
      { kind: 'energise', op: 10, channel: 'lock', interlock: 'unlock', releaseAfterMs: 350 },
    ],
  },
  {
    name: 'a retracted pulse ended: never reported unlocked, the lock pulse follows',
    state: running({
      phase: 'releasing',
      active: 'unlock',
      lock: 'unlocking',
      pending: { action: 'lock', cause: 'a:retracted', waiters: [2] },
      inFlight: flight(3, {
        kind: 'release',
        channel: 'unlock',
        after: { kind: 'pulse-end', action: 'unlock', cause: 'a', cut: true },
      }),
    }),
    event: ok(3),
    effects: [
      { kind: 'state', state: 'locking', cause: 'a:retracted' },
      { kind: 'energise', op: 10, channel: 'lock', interlock: 'unlock', releaseAfterMs: 350 },
    ],
  },
  {
    name: 'lock pulse ended: locked, no relock',
    state: running({
      phase: 'releasing',
      active: 'lock',
      lock: 'locking',
      inFlight: flight(3, {
        kind: 'release',
        channel: 'lock',
        after: { kind: 'pulse-end', action: 'lock', cause: 'b', cut: false },
      }),
    }),
    event: ok(3),
    next: { lock: 'locked', timers: timers() },
    effects: [{ kind: 'state', state: 'locked', cause: 'b' }],
  },
  {
    name: 'relock timer fired: a lock pulse that nobody waits for',
    state: running({ lock: 'unlocked', timers: timers({ relock: 5 }) }),
    event: fired('relock', 5),
    next: { energiseWaiters: [], active: 'lock', timers: timers() },
    effects: [
      { kind: 'state', state: 'locking', cause: 'auto-relock' },
      { kind: 'energise', op: 10, channel: 'lock', interlock: 'unlock', releaseAfterMs: 350 },
    ],
  },
  {
    name: 'retract during the unlock pulse: cut now, the lock waits for the release',
    state: running(unlockPulseOn),
    event: req('retract', 'a:retracted', 1),
    next: {
      pending: { action: 'lock', cause: 'a:retracted', waiters: [1] },
      timers: timers(),
      inFlight: flight(10, {
        kind: 'release',
        channel: 'unlock',
        after: { kind: 'pulse-end', action: 'unlock', cause: 'a', cut: true },
      }),
    },
    effects: [
      { kind: 'cancel-timer', timer: 'pulse' },
      { kind: 'release', op: 10, channel: 'unlock' },
    ],
  },
  {
    name: 'retract while the unlock switches on: cut as soon as it is on',
    state: running(unlockSwitchingOn),
    event: req('retract', 'a:retracted', 2),
    next: { cutWhenOn: true, pending: { action: 'lock', cause: 'a:retracted', waiters: [2] } },
    effects: [],
  },
  {
    name: 'switched on with a cut due: released at once, no pulse timer',
    state: running({
      ...unlockSwitchingOn,
      cutWhenOn: true,
      pending: { action: 'lock', cause: 'a:retracted', waiters: [2] },
    }),
    event: ok(3),
    next: { cutWhenOn: false, phase: 'releasing', timers: timers() },
    effects: [
      { kind: 'resolve', waiters: [1], state: 'unlocking' },
      { kind: 'release', op: 10, channel: 'unlock' },
    ],
  },
  {
    name: 'retract with nothing under way is a lock',
    state: running({ lock: 'unlocked' }),
    event: req('retract', 'a:retracted', 1),
    effects: [
      { kind: 'state', state: 'locking', cause: 'a:retracted' },
      { kind: 'energise', op: 10, channel: 'lock', interlock: 'unlock', releaseAfterMs: 350 },
    ],
  },
  {
    name: 'the relay fails to switch on: logged, all off, callers wait for it',
    state: running(unlockSwitchingOn),
    event: failed(3),
    next: {
      phase: 'energising',
      inFlight: flight(10, { kind: 'off-after-failed-energise', error: BOARD_GONE }),
    },
    effects: [
      {
        kind: 'log',
        level: 'error',
        fields: { code: 'relay_failed', channel: 'unlock', action: 'unlock', cause: 'a', err: 'board gone' },
        message: 'relay failed to energise: de-energising everything',
      },
      { kind: 'all-off', op: 10 },
    ],
  },
  {
    name: 'all off after a failed switch-on: the state before is back, callers refused relay_failed',
    state: running({
      ...unlockSwitchingOn,
      inFlight: flight(3, { kind: 'off-after-failed-energise', error: BOARD_GONE }),
    }),
    event: ok(3),
    next: { phase: 'idle', active: undefined, lock: 'locked', energiseWaiters: [], timers: timers() },
    effects: [
      { kind: 'state', state: 'locked', cause: 'relay_failed' },
      { kind: 'reject', waiters: [1], error: BOARD_GONE },
    ],
  },
  {
    name: 'all off after a failed switch-on from unlocked: the relock is armed again',
    state: running({
      ...unlockSwitchingOn,
      settledBefore: 'unlocked',
      inFlight: flight(3, { kind: 'off-after-failed-energise', error: BOARD_GONE }),
    }),
    event: ok(3),
    next: { lock: 'unlocked', timers: timers({ relock: 10 }) },
    effects: [
      { kind: 'state', state: 'unlocked', cause: 'relay_failed' },
      { kind: 'reject', waiters: [1], error: BOARD_GONE },
      { kind: 'start-timer', timer: 'relock', token: 10, ms: 30_000 },
    ],
  },
  {
    name: 'all off after a failed switch-on with a request waiting: it runs',
    state: running({
      phase: 'energising',
      active: 'lock',
      lock: 'locking',
      energiseWaiters: [1],
      pending: { action: 'unlock', cause: 'b', waiters: [2] },
      inFlight: flight(3, { kind: 'off-after-failed-energise', error: BOARD_GONE }),
    }),
    event: ok(3),
    next: { active: 'unlock', energiseWaiters: [2], lastUnlockAt: AT },
    effects: [
      { kind: 'state', state: 'locked', cause: 'relay_failed' },
      { kind: 'reject', waiters: [1], error: BOARD_GONE },
      { kind: 'state', state: 'unlocking', cause: 'b' },
      { kind: 'energise', op: 10, channel: 'unlock', interlock: 'lock', releaseAfterMs: 350 },
    ],
  },
  {
    name: 'a request while the failed switch-on is being switched off joins it (and its failure)',
    state: running({
      ...unlockSwitchingOn,
      inFlight: flight(3, { kind: 'off-after-failed-energise', error: BOARD_GONE }),
    }),
    event: req('unlock', 'b', 2),
    next: { energiseWaiters: [1, 2] },
    effects: [],
  },
  {
    name: 'the relay fails to release: logged, all off',
    state: running({
      phase: 'releasing',
      active: 'unlock',
      lock: 'unlocking',
      inFlight: flight(3, {
        kind: 'release',
        channel: 'unlock',
        after: { kind: 'pulse-end', action: 'unlock', cause: 'a', cut: false },
      }),
    }),
    event: failed(3),
    next: {
      phase: 'releasing',
      inFlight: flight(10, {
        kind: 'off-after-failed-release',
        after: { kind: 'pulse-end', action: 'unlock', cause: 'a', cut: false },
        error: BOARD_GONE,
      }),
    },
    effects: [
      {
        kind: 'log',
        level: 'error',
        fields: { code: 'relay_failed', channel: 'unlock', err: 'board gone' },
        message: 'relay failed to release: all off',
      },
      { kind: 'all-off', op: 10 },
    ],
  },
  {
    name: 'all off after a failed release ends the pulse as the release would have',
    state: running({
      phase: 'releasing',
      active: 'unlock',
      lock: 'unlocking',
      lastUnlockAt: AT - 350,
      inFlight: flight(3, {
        kind: 'off-after-failed-release',
        after: { kind: 'pulse-end', action: 'unlock', cause: 'a', cut: false },
        error: BOARD_GONE,
      }),
    }),
    event: ok(3),
    next: { phase: 'idle', lock: 'unlocked' },
    effects: [
      { kind: 'state', state: 'unlocked', cause: 'a' },
      { kind: 'start-timer', timer: 'relock', token: 10, ms: 30_000 },
    ],
  },
  {
    name: 'a forced release of the pulse under way ends it here too',
    state: running(unlockPulseOn),
    event: forced({}),
    next: { phase: 'releasing', timers: timers() },
    effects: [
      WATCHDOG_LOG,
      { kind: 'cancel-timer', timer: 'pulse' },
      { kind: 'release', op: 10, channel: 'unlock' },
    ],
  },
  {
    name: 'a report of an earlier energising, already ended here, cuts nothing',
    state: running(unlockPulseOn),
    event: forced({ current: false }),
    next: running(unlockPulseOn),
    effects: [],
  },
  {
    name: 'a forced release of the other channel is logged, nothing cut',
    state: running(unlockPulseOn),
    event: forced({ channel: 'lock' }),
    next: running(unlockPulseOn),
    effects: [{ ...WATCHDOG_LOG, fields: { ...WATCHDOG_LOG.fields, channel: 'lock' } }],
  },
  {
    name: 'a forced release while stopping is left to the all off in flight',
    state: running({ ...unlockPulseOn, life: 'stopping', inFlight: flight(3, { kind: 'off-at-stop' }) }),
    event: forced({}),
    next: { phase: 'on', inFlight: flight(3, { kind: 'off-at-stop' }) },
    effects: [WATCHDOG_LOG],
  },
];

const HOLD_ROWS: Row[] = [
  {
    name: 'unlock when idle: the strike energised with holdMs as on-time',
    state: running(),
    event: req('unlock', 'a', 1),
    next: { inFlight: flight(10, { kind: 'energise', action: 'unlock', cause: 'a', onState: 'unlocked' }) },
    effects: [
      { kind: 'state', state: 'unlocking', cause: 'a' },
      { kind: 'energise', op: 10, channel: 'unlock', interlock: 'lock', releaseAfterMs: 5000 },
    ],
  },
  {
    name: 'switched on: unlocked, callers answered, hold timer of holdMs',
    state: running({
      ...unlockSwitchingOn,
      inFlight: flight(3, { kind: 'energise', action: 'unlock', cause: 'a', onState: 'unlocked' }),
    }),
    event: ok(3),
    next: { phase: 'on', lock: 'unlocked', timers: timers({ hold: 10 }) },
    effects: [
      { kind: 'state', state: 'unlocked', cause: 'a' },
      { kind: 'resolve', waiters: [1], state: 'unlocked' },
      { kind: 'start-timer', timer: 'hold', token: 10, ms: 5000 },
    ],
  },
  {
    name: 'switched on with a lock waiting: released at once, no hold timer',
    state: running({
      ...unlockSwitchingOn,
      pending: { action: 'lock', cause: 'b', waiters: [2] },
      inFlight: flight(3, { kind: 'energise', action: 'unlock', cause: 'a', onState: 'unlocked' }),
    }),
    event: ok(3),
    next: { phase: 'releasing', releaseWaiters: [2], pending: undefined, timers: timers() },
    effects: [
      { kind: 'state', state: 'unlocked', cause: 'a' },
      { kind: 'resolve', waiters: [1], state: 'unlocked' },
      { kind: 'state', state: 'locking', cause: 'b' },
      { kind: 'release', op: 10, channel: 'unlock' },
    ],
  },
  {
    name: 'unlock while held extends the hold from now, here and in the relay',
    state: running(holdOn),
    event: req('unlock', 'b', 1),
    next: { timers: timers({ hold: 10 }), inFlight: undefined },
    effects: [
      { kind: 'start-timer', timer: 'hold', token: 10, ms: 5000 },
      { kind: 'extend', channel: 'unlock', releaseAfterMs: 5000 },
      { kind: 'resolve', waiters: [1], state: 'unlocked' },
    ],
  },
  {
    name: 'unlock while the strike switches on joins it, a waiting lock answered as it is',
    state: running({ ...unlockSwitchingOn, pending: { action: 'lock', cause: 'c', waiters: [2] } }),
    event: req('unlock', 'b', 3),
    next: { energiseWaiters: [1, 3], pending: undefined },
    effects: [superseded('lock', 'c'), { kind: 'resolve', waiters: [2], state: 'unlocking' }],
  },
  {
    name: 'unlock while the strike is released waits for it',
    state: running(holdReleasing),
    event: req('unlock', 'c', 2),
    next: { pending: { action: 'unlock', cause: 'c', waiters: [2] } },
    effects: [],
  },
  {
    name: 'lock when idle is answered at once',
    state: running(),
    event: req('lock', 'b', 1),
    effects: [{ kind: 'resolve', waiters: [1], state: 'locked' }],
  },
  {
    name: 'lock while the strike switches on waits for it',
    state: running(unlockSwitchingOn),
    event: req('lock', 'b', 2),
    next: { pending: { action: 'lock', cause: 'b', waiters: [2] } },
    effects: [],
  },
  {
    name: 'lock while held releases the strike at once',
    state: running(holdOn),
    event: req('lock', 'b', 1),
    next: {
      phase: 'releasing',
      releaseWaiters: [1],
      timers: timers(),
      inFlight: flight(10, {
        kind: 'release',
        channel: 'unlock',
        after: { kind: 'hold-release', cause: 'b' },
      }),
    },
    effects: [
      { kind: 'cancel-timer', timer: 'hold' },
      { kind: 'state', state: 'locking', cause: 'b' },
      { kind: 'release', op: 10, channel: 'unlock' },
    ],
  },
  {
    name: 'retract while held is a lock',
    state: running(holdOn),
    event: req('retract', 'a:retracted', 1),
    next: { phase: 'releasing', releaseWaiters: [1] },
    effects: [
      { kind: 'cancel-timer', timer: 'hold' },
      { kind: 'state', state: 'locking', cause: 'a:retracted' },
      { kind: 'release', op: 10, channel: 'unlock' },
    ],
  },
  {
    name: 'lock while the strike is released joins the release, a waiting unlock answered as it is',
    state: running({
      ...holdReleasing,
      releaseWaiters: [1],
      pending: { action: 'unlock', cause: 'c', waiters: [2] },
    }),
    event: req('lock', 'd', 3),
    next: { releaseWaiters: [1, 3], pending: undefined },
    effects: [superseded('unlock', 'c'), { kind: 'resolve', waiters: [2], state: 'locking' }],
  },
  {
    name: 'hold timer fired: the strike is released',
    state: running(holdOn),
    event: fired('hold', 5),
    next: { phase: 'releasing', timers: timers() },
    effects: [
      { kind: 'state', state: 'locking', cause: 'hold-expired' },
      { kind: 'release', op: 10, channel: 'unlock' },
    ],
  },
  {
    name: 'released: locked, callers answered, a waiting unlock runs',
    state: running({
      ...holdReleasing,
      releaseWaiters: [1],
      pending: { action: 'unlock', cause: 'c', waiters: [2] },
    }),
    event: ok(3),
    next: { phase: 'energising', releaseWaiters: [], energiseWaiters: [2], settledBefore: 'locked' },
    effects: [
      { kind: 'state', state: 'locked', cause: 'b' },
      { kind: 'resolve', waiters: [1], state: 'locked' },
      { kind: 'state', state: 'unlocking', cause: 'c' },
      { kind: 'energise', op: 10, channel: 'unlock', interlock: 'lock', releaseAfterMs: 5000 },
    ],
  },
  {
    name: 'all off after a failed release: locked, callers refused relay_failed',
    state: running({
      ...holdReleasing,
      releaseWaiters: [1],
      inFlight: flight(3, {
        kind: 'off-after-failed-release',
        after: { kind: 'hold-release', cause: 'b' },
        error: BOARD_GONE,
      }),
    }),
    event: ok(3),
    next: { phase: 'idle', lock: 'locked' },
    effects: [
      { kind: 'state', state: 'locked', cause: 'b' },
      { kind: 'reject', waiters: [1], error: BOARD_GONE },
    ],
  },
  {
    name: 'a forced release of the held strike releases it here, cause watchdog',
    state: running(holdOn),
    event: forced({}),
    next: { phase: 'releasing', timers: timers() },
    effects: [
      WATCHDOG_LOG,
      { kind: 'cancel-timer', timer: 'hold' },
      { kind: 'state', state: 'locking', cause: 'watchdog' },
      { kind: 'release', op: 10, channel: 'unlock' },
    ],
  },
  {
    name: 'a refused hold extension is logged; the hold runs on',
    state: running(holdOn),
    event: { type: 'extend-failed', error: BOARD_GONE, at: AT },
    next: running(holdOn),
    effects: [
      {
        kind: 'log',
        level: 'warn',
        fields: { code: 'relay_failed', err: 'board gone' },
        message: 'could not extend the hold in the relay guard',
      },
    ],
  },
];

function check(row: Row, config: LockConfig): void {
  const before = JSON.stringify(row.state);
  const { state, effects } = lockTransition(row.config ?? config, row.state, row.event);
  expect(effects).toEqual(row.effects);
  if (row.next) expect(state).toMatchObject(row.next);
  // Pure: the state it was given is untouched.
  expect(JSON.stringify(row.state)).toBe(before);
}

describe('lock machine: life (start, stop)', () => {
  it.each(LIFE)('$name', (row) => check(row, PULSE));
});

describe('lock machine: pulse wiring', () => {
  it.each(PULSE_ROWS)('$name', (row) => check(row, PULSE));
});

describe('lock machine: hold wiring', () => {
  it.each(HOLD_ROWS)('$name', (row) => check(row, HOLD));
});
