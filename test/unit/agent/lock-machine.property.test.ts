import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  initialLockMachine,
  type LockChannel,
  type LockCommand,
  type LockConfig,
  type LockEffect,
  type LockEvent,
  type LockMachineState,
  type LockTimer,
  lockTransition,
  onTimeMs,
  type WaiterId,
} from '../../../src/agent/lock-machine.js';
import { AgentError } from '../../../src/core/errors.js';
import type { LockState } from '../../../src/core/types.js';

/**
 * The lock machine driven by random sequences of requests, relay results (some failing), timers,
 * forced releases, starts and stops, against a model of the relay board: what the machine
 * promises must hold after every step, whatever the order (fast-check prints the seed and the
 * shrunk sequence of any failure).
 */

type Cmd =
  | { readonly k: 'request'; readonly command: LockCommand }
  | { readonly k: 'advance'; readonly ms: number }
  | { readonly k: 'relay-ok' }
  | { readonly k: 'relay-fail' }
  | { readonly k: 'forced'; readonly current: boolean }
  | { readonly k: 'start' }
  | { readonly k: 'stop' }
  | { readonly k: 'extend-failed' }
  | { readonly k: 'stale-timer'; readonly timer: LockTimer; readonly token: number }
  | { readonly k: 'stale-op'; readonly op: number };

const cmd: fc.Arbitrary<Cmd> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.constantFrom<LockCommand>('unlock', 'lock', 'retract').map((command) => ({
      k: 'request' as const,
      command,
    })),
  },
  {
    weight: 4,
    arbitrary: fc
      .oneof(fc.integer({ min: 0, max: 400 }), fc.integer({ min: 0, max: 40_000 }))
      .map((ms) => ({ k: 'advance' as const, ms })),
  },
  { weight: 5, arbitrary: fc.constant({ k: 'relay-ok' as const }) },
  { weight: 1, arbitrary: fc.constant({ k: 'relay-fail' as const }) },
  { weight: 1, arbitrary: fc.boolean().map((current) => ({ k: 'forced' as const, current })) },
  { weight: 1, arbitrary: fc.constant({ k: 'start' as const }) },
  { weight: 1, arbitrary: fc.constant({ k: 'stop' as const }) },
  { weight: 1, arbitrary: fc.constant({ k: 'extend-failed' as const }) },
  {
    weight: 1,
    arbitrary: fc
      .record({
        timer: fc.constantFrom<LockTimer>('pulse', 'hold', 'relock'),
        token: fc.integer({ min: -5, max: 0 }),
      })
      .map((t) => ({ k: 'stale-timer' as const, ...t })),
  },
  {
    weight: 1,
    arbitrary: fc.integer({ min: -5, max: 0 }).map((op) => ({ k: 'stale-op' as const, op })),
  },
);

const config: fc.Arbitrary<LockConfig> = fc.record({
  wiring: fc.constantFrom<'pulse' | 'hold'>('pulse', 'hold'),
  pulseMs: fc.integer({ min: 1, max: 1000 }),
  holdMs: fc.integer({ min: 1, max: 10_000 }),
  autoRelockMs: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 60_000 })),
  maxOnMs: fc.constant(20_000),
});

const BOARD_GONE = new AgentError('relay_failed', 'board gone');
const SETTLED: readonly LockState[] = ['locked', 'unlocked'];

interface Flight {
  readonly op: number;
  readonly effect: Extract<LockEffect, { kind: 'energise' | 'release' | 'all-off' }>;
}

/** The machine, a model of the relay board it drives, its timers and its callers. */
class World {
  state: LockMachineState = initialLockMachine();
  now = 0;
  /** Channels the board may have energised (a failed command may have switched it: counted on). */
  readonly on = new Set<LockChannel>();
  flight: Flight | undefined;
  readonly timers = new Map<LockTimer, { token: number; due: number }>();
  readonly asked = new Set<WaiterId>();
  readonly answered = new Map<WaiterId, number>();
  announced: LockState = 'locked';
  /** A retraction cut an unlock under way: it must not be reported unlocked. */
  retracting = false;
  private nextWaiter = 1;

  constructor(readonly config: LockConfig) {}

  run(c: Cmd): void {
    switch (c.k) {
      case 'request': {
        const { life, active, phase } = this.state;
        if (c.command === 'unlock') this.retracting = false;
        else if (
          c.command === 'retract' &&
          this.config.wiring === 'pulse' &&
          life === 'running' &&
          active === 'unlock' &&
          (phase === 'energising' || phase === 'on')
        )
          this.retracting = true;
        this.feed({
          type: 'request',
          command: c.command,
          cause: `r${this.nextWaiter}`,
          waiter: this.ask(),
          at: this.now,
        });
        return;
      }
      case 'start':
        this.feed({ type: 'start', waiter: this.ask(), at: this.now });
        return;
      case 'stop':
        this.retracting = false;
        this.feed({ type: 'stop', waiter: this.ask(), at: this.now });
        return;
      case 'advance':
        this.advance(c.ms);
        return;
      case 'relay-ok':
        this.complete(true);
        return;
      case 'relay-fail':
        this.complete(false);
        return;
      case 'forced': {
        // current: a channel the board has on was forced off; otherwise a report of an earlier one.
        const channel = [...this.on][0];
        if (c.current && channel !== undefined) this.on.delete(channel);
        const release = { channel: channel ?? 'unlock', current: c.current && channel !== undefined };
        this.feed({
          type: 'forced-release',
          release: { ...release, code: 'relay_watchdog', heldMs: 1, by: 'agent' },
          at: this.now,
        });
        return;
      }
      case 'extend-failed':
        this.feed({ type: 'extend-failed', error: BOARD_GONE, at: this.now });
        return;
      case 'stale-timer':
      case 'stale-op': {
        const before = this.state;
        const event: LockEvent =
          c.k === 'stale-timer'
            ? { type: 'timer', timer: c.timer, token: c.token, at: this.now }
            : { type: 'relay-ok', op: c.op, at: this.now };
        const effects = this.feed(event);
        expect(effects).toEqual([]);
        expect(this.state).toEqual(before);
        return;
      }
    }
  }

  /** Completes every relay command and fires every timer until nothing is left to happen. */
  drain(): void {
    for (let i = 0; i < 100; i++) {
      if (this.flight) this.complete(true);
      else {
        const next = Math.min(...[...this.timers.values()].map((t) => t.due));
        if (!Number.isFinite(next)) return;
        this.advance(next - this.now);
      }
    }
    throw new Error('the machine never came to rest');
  }

  private ask(): WaiterId {
    const waiter = this.nextWaiter++;
    this.asked.add(waiter);
    return waiter;
  }

  private advance(ms: number): void {
    const end = this.now + ms;
    for (;;) {
      const due = [...this.timers.entries()]
        .filter(([, t]) => t.due <= end)
        .sort((a, b) => a[1].due - b[1].due)[0];
      if (due === undefined) break;
      const [timer, { token, due: at }] = due;
      this.timers.delete(timer);
      this.now = at;
      this.feed({ type: 'timer', timer, token, at });
    }
    this.now = end;
  }

  private complete(success: boolean): void {
    const flight = this.flight;
    if (flight === undefined) return;
    this.flight = undefined;
    const { effect } = flight;
    if (effect.kind === 'all-off') {
      // all off never fails (RelayDriver): the shell reports it done whatever happened.
      this.on.clear();
      this.feed({ type: 'relay-ok', op: flight.op, at: this.now });
      return;
    }
    if (effect.kind === 'energise') {
      this.on.delete(effect.interlock);
      // A failed energise may still have switched the channel on.
      this.on.add(effect.channel);
    } else if (success) {
      this.on.delete(effect.channel);
    }
    const effects = this.feed(
      success
        ? { type: 'relay-ok', op: flight.op, at: this.now }
        : { type: 'relay-failed', op: flight.op, error: BOARD_GONE, at: this.now },
    );
    // After a relay failure the board is switched all off, in the same step.
    if (!success) expect(effects.map((e) => e.kind)).toContain('all-off');
  }

  private feed(event: LockEvent): readonly LockEffect[] {
    const before = this.state;
    const { state, effects } = lockTransition(this.config, before, event);
    this.state = state;
    expect(
      effects.filter((e) => e.kind === 'energise' || e.kind === 'release' || e.kind === 'all-off').length,
    ).toBeLessThanOrEqual(1);
    for (const effect of effects) this.perform(effect, before);
    this.checkInvariants();
    return effects;
  }

  private perform(effect: LockEffect, before: LockMachineState): void {
    const onTime = onTimeMs(this.config);
    switch (effect.kind) {
      case 'energise':
        // One relay command at a time, only while running, never while anything is on (so the
        // channels never overlap), with the on-time for the relay guard.
        expect(this.flight).toBeUndefined();
        expect(before.life).toBe('running');
        expect([...this.on]).toEqual([]);
        expect(effect.releaseAfterMs).toBe(onTime);
        expect(effect.interlock).not.toBe(effect.channel);
        if (this.config.wiring === 'hold') expect(effect.channel).toBe('unlock');
        // It is never asked while the machine says locked-and-idle.
        expect(this.state.phase).toBe('energising');
        expect(['unlocking', 'locking']).toContain(this.state.lock);
        this.flight = { op: effect.op, effect };
        return;
      case 'release':
      case 'all-off':
        expect(this.flight).toBeUndefined();
        this.flight = { op: effect.op, effect };
        return;
      case 'extend':
        expect(this.config.wiring).toBe('hold');
        expect(effect.releaseAfterMs).toBe(onTime);
        return;
      case 'start-timer': {
        if (effect.timer === 'relock') {
          expect(this.config.wiring).toBe('pulse');
          expect(effect.ms).toBeGreaterThanOrEqual(this.config.autoRelockMs);
          expect(effect.ms).toBeLessThanOrEqual(this.config.autoRelockMs + this.config.pulseMs);
        } else {
          // A pulse or a hold never runs longer than its configured time.
          expect(effect.timer).toBe(this.config.wiring);
          expect(effect.ms).toBe(onTime);
        }
        this.timers.set(effect.timer, { token: effect.token, due: this.now + effect.ms });
        return;
      }
      case 'cancel-timer':
        expect(this.timers.has(effect.timer)).toBe(true);
        this.timers.delete(effect.timer);
        return;
      case 'state':
        expect(effect.state).not.toBe(this.announced);
        this.announced = effect.state;
        // A retracted unlock goes straight to the lock pulse (unless the relay failed, which
        // restores the state before it).
        if (this.retracting && effect.cause !== 'relay_failed') expect(effect.state).not.toBe('unlocked');
        if (effect.state === 'locking') this.retracting = false;
        return;
      case 'resolve':
      case 'reject':
        for (const waiter of effect.waiters) {
          expect(this.asked.has(waiter)).toBe(true);
          this.answered.set(waiter, (this.answered.get(waiter) ?? 0) + 1);
          // Every caller is answered once.
          expect(this.answered.get(waiter)).toBe(1);
        }
        return;
      case 'log':
        return;
    }
  }

  private checkInvariants(): void {
    const s = this.state;
    expect(s.lock).toBe(this.announced);
    // The machine's timers are the ones the shell would hold.
    for (const timer of ['pulse', 'hold', 'relock'] as const)
      expect(s.timers[timer]).toBe(this.timers.get(timer)?.token);
    expect(s.inFlight?.op).toBe(this.flight?.op);
    // Whatever is on is bounded: a release or all off under way, or the pulse or hold timer
    // armed, due within the configured on-time.
    if (this.on.size > 0 && this.flight === undefined) {
      const bound = this.timers.get(this.config.wiring);
      expect(bound, `channel ${[...this.on]} on without a timer`).toBeDefined();
      expect((bound?.due ?? Number.POSITIVE_INFINITY) - this.now).toBeLessThanOrEqual(onTimeMs(this.config));
    }
    if (s.life === 'running' && s.phase === 'idle') expect(SETTLED).toContain(s.lock);
    if (this.config.wiring === 'hold' && s.life === 'running') {
      // A strike is never reported unlocked unless it may be energised.
      if (s.lock === 'unlocked') expect(this.on.has('unlock')).toBe(true);
      if (s.phase === 'idle') expect(s.lock).toBe('locked');
    }
    if (s.life === 'stopped') {
      expect(this.timers.size).toBe(0);
      expect(this.flight).toBeUndefined();
    }
  }
}

function play(cfg: LockConfig, cmds: readonly Cmd[], started: boolean): World {
  const world = new World(cfg);
  if (started) {
    world.run({ k: 'start' });
    world.run({ k: 'relay-ok' });
  }
  for (const c of cmds) world.run(c);
  return world;
}

describe('lock machine, over random sequences of events', () => {
  it('keeps its promises at every step', () => {
    fc.assert(
      fc.property(
        config,
        fc.array(cmd, { maxLength: 80, size: 'max' }),
        fc.boolean(),
        (cfg, cmds, started) => {
          play(cfg, cmds, started);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('comes to rest with every channel off and every caller answered once', () => {
    fc.assert(
      fc.property(config, fc.array(cmd, { maxLength: 80, size: 'max' }), (cfg, cmds) => {
        const world = play(cfg, cmds, true);
        world.drain();
        expect([...world.on]).toEqual([]);
        expect(world.flight).toBeUndefined();
        expect(world.state.phase).toBe('idle');
        expect(world.state.pending).toBeUndefined();
        expect([...world.asked].filter((w) => world.answered.get(w) !== 1)).toEqual([]);
      }),
      { numRuns: 300 },
    );
  });

  it('stop, from any state reached, switches everything off and leaves no timer', () => {
    fc.assert(
      fc.property(config, fc.array(cmd, { maxLength: 40, size: 'max' }), (cfg, cmds) => {
        for (let i = 0; i <= cmds.length; i++) {
          const world = play(cfg, cmds.slice(0, i), true);
          world.run({ k: 'stop' });
          world.drain();
          expect(world.state.life).toBe('stopped');
          expect([...world.on]).toEqual([]);
          expect(world.timers.size).toBe(0);
          if (cfg.wiring === 'hold') expect(world.state.lock).toBe('locked');
          else expect(SETTLED).toContain(world.state.lock);
        }
      }),
      { numRuns: 60 },
    );
  });
});
