import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/core/logger.js';
import { RelayGuard } from '../../../src/relay/guard.js';
import type { GuardEvent } from '../../../src/relay/guard-protocol.js';
import { SimRelay } from '../../../src/relay/sim.js';
import { ManualTimers } from '../../helpers/manual-timers.js';

/** The guard's core on a simulated board and a manual clock: what it releases, when, and what it says. */
async function rig(options: { maxOnMs?: number; latencyMs?: number } = {}) {
  const timers = new ManualTimers();
  const sim = new SimRelay({
    logger: silentLogger,
    timers,
    wallNow: () => timers.now(),
    ...(options.latencyMs !== undefined ? { latencyMs: options.latencyMs } : {}),
  });
  const events: GuardEvent[] = [];
  const guard = new RelayGuard({
    driver: sim,
    maxOnMs: options.maxOnMs ?? 10_000,
    emit: (e) => events.push(e),
    logger: silentLogger,
    timers,
    wallNow: () => timers.now(),
    healthPollMs: 1_000_000,
  });
  await guard.start(42, () => 'sim');
  const transitions = () => sim.timeline().map((t) => [t.channel, t.energised, t.atMs] as const);
  const of = <T extends GuardEvent['type']>(type: T) =>
    events.filter((e): e is Extract<GuardEvent, { type: T }> => e.type === type);
  return { timers, sim, guard, events, transitions, of };
}

describe('RelayGuard', () => {
  it('says ready once the board is open with every channel off', async () => {
    const r = await rig();
    expect(r.events.slice(0, 2)).toEqual([
      { type: 'health', state: 'ok' },
      { type: 'ready', pid: 42, detail: 'sim' },
    ]);
    expect(r.sim.energised('unlock')).toBe(false);
  });

  it('releases a channel the caller does not release, at its limit, and says so', async () => {
    const r = await rig();
    void r.guard.handle({ type: 'on', id: 1, channel: 'unlock', limitMs: 600 });
    await r.timers.advance(599);
    expect(r.sim.energised('unlock')).toBe(true);
    await r.timers.advance(1);
    expect(r.transitions()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 600],
    ]);
    expect(r.of('expired')).toEqual([
      { type: 'expired', channel: 'unlock', onId: 1, heldMs: 600, cause: 'limit' },
    ]);
    expect(r.of('ok')).toEqual([{ type: 'ok', id: 1 }]);
    expect(r.of('level').map((e) => [e.channel, e.energised, e.atMs])).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 600],
    ]);
  });

  it('releases nothing by itself when the caller releases in time', async () => {
    const r = await rig();
    void r.guard.handle({ type: 'on', id: 1, channel: 'unlock', limitMs: 600 });
    await r.timers.advance(350);
    await r.guard.handle({ type: 'off', id: 2, channel: 'unlock' });
    await r.timers.advance(60_000);
    expect(r.transitions()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 350],
    ]);
    expect(r.of('expired')).toEqual([]);
    expect(r.timers.pending()).toBe(1); // the health poll only
  });

  it('caps a limit beyond max-on at max-on', async () => {
    const r = await rig({ maxOnMs: 1000 });
    void r.guard.handle({ type: 'on', id: 5, channel: 'lock', limitMs: 60_000 });
    await r.timers.advance(5000);
    expect(r.transitions()).toEqual([
      ['lock', true, 0],
      ['lock', false, 1000],
    ]);
    expect(r.of('expired')).toEqual([
      { type: 'expired', channel: 'lock', onId: 5, heldMs: 1000, cause: 'max-on' },
    ]);
  });

  it('lets a renewed on move the release, but never past max-on from the first', async () => {
    const r = await rig({ maxOnMs: 10_000 });
    void r.guard.handle({ type: 'on', id: 1, channel: 'unlock', limitMs: 5250 });
    await r.timers.advance(4000);
    void r.guard.handle({ type: 'on', id: 2, channel: 'unlock', limitMs: 5250 }); // hold extended: 9250
    await r.timers.advance(4000);
    void r.guard.handle({ type: 'on', id: 3, channel: 'unlock', limitMs: 5250 }); // would be 13250
    await r.timers.advance(10_000);
    expect(r.transitions()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 10_000],
    ]);
    expect(r.of('expired')).toEqual([
      { type: 'expired', channel: 'unlock', onId: 3, heldMs: 10_000, cause: 'max-on' },
    ]);
  });

  it('starts max-on afresh after the channel was off', async () => {
    const r = await rig({ maxOnMs: 1000 });
    void r.guard.handle({ type: 'on', id: 1, channel: 'unlock', limitMs: 600 });
    await r.timers.advance(700); // released by its limit at 600
    void r.guard.handle({ type: 'on', id: 2, channel: 'unlock', limitMs: 5000 });
    await r.timers.advance(5000);
    expect(r.transitions()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 600],
      ['unlock', true, 700],
      ['unlock', false, 1700],
    ]);
  });

  it('releases at max-on counted from the request even when the board is slow to confirm', async () => {
    const r = await rig({ maxOnMs: 1000, latencyMs: 300 });
    void r.guard.handle({ type: 'on', id: 1, channel: 'unlock', limitMs: 5000 });
    await r.timers.advance(5000);
    // on confirmed at 300; max-on ran from 0; the release itself takes the board's 300 ms.
    expect(r.transitions()).toEqual([
      ['unlock', true, 300],
      ['unlock', false, 1300],
    ]);
    expect(r.of('expired')).toEqual([
      { type: 'expired', channel: 'unlock', onId: 1, heldMs: 1000, cause: 'max-on' },
    ]);
  });

  it('an off that overtakes a slow on wins: the channel ends off and nothing expires', async () => {
    const r = await rig({ latencyMs: 100 });
    const on = r.guard.handle({ type: 'on', id: 1, channel: 'unlock', limitMs: 600 });
    await r.timers.advance(10);
    const off = r.guard.handle({ type: 'off', id: 2, channel: 'unlock' });
    await r.timers.advance(10_000);
    await Promise.all([on, off]);
    expect(r.sim.energised('unlock')).toBe(false);
    expect(r.of('expired')).toEqual([]);
    expect(r.of('ok').map((e) => e.id)).toEqual([1, 2]);
  });

  it('all off clears every deadline; releaseAll reports what was on', async () => {
    const r = await rig();
    void r.guard.handle({ type: 'on', id: 1, channel: 'unlock', limitMs: 600 });
    void r.guard.handle({ type: 'on', id: 2, channel: 'lock', limitMs: 600 });
    await r.timers.advance(100);
    await r.guard.handle({ type: 'alloff', id: 3 });
    await r.timers.advance(10_000);
    expect(r.of('expired')).toEqual([]);
    void r.guard.handle({ type: 'on', id: 4, channel: 'unlock', limitMs: 600 });
    await r.timers.advance(50);
    await r.guard.releaseAll('signal');
    expect(r.sim.energised('unlock')).toBe(false);
    expect(r.of('expired')).toEqual([
      { type: 'expired', channel: 'unlock', onId: 4, heldMs: 50, cause: 'signal' },
    ]);
    await r.timers.advance(10_000);
    expect(r.of('expired')).toHaveLength(1);
  });

  it('answers pings, refuses unwired channels and closes the board', async () => {
    const timers = new ManualTimers();
    const sim = new SimRelay({ logger: silentLogger, timers, channels: ['unlock'] });
    const events: GuardEvent[] = [];
    const guard = new RelayGuard({
      driver: sim,
      maxOnMs: 1000,
      emit: (e) => events.push(e),
      logger: silentLogger,
      timers,
      healthPollMs: 1_000_000,
    });
    await guard.start(1, () => 'sim');
    await guard.handle({ type: 'ping', id: 1 });
    await guard.handle({ type: 'on', id: 2, channel: 'lock', limitMs: 100 });
    await guard.handle({ type: 'close', id: 3 });
    await guard.handle({ type: 'on', id: 4, channel: 'unlock', limitMs: 100 });
    expect(events.filter((e) => e.type === 'ok' || e.type === 'err')).toEqual([
      { type: 'ok', id: 1 },
      { type: 'err', id: 2, message: 'relay channel lock is not wired' },
      { type: 'ok', id: 3 },
      { type: 'err', id: 4, message: 'the relay guard is closing' },
    ]);
    expect(sim.health().state).toBe('disabled');
  });

  it('answers a failed on with err, leaving the channel off and without a deadline', async () => {
    const r = await rig();
    r.sim.failNext({ channel: 'unlock', energised: true });
    await r.guard.handle({ type: 'on', id: 1, channel: 'unlock', limitMs: 600 });
    expect(r.of('err')).toEqual([{ type: 'err', id: 1, message: 'simulated failure switching unlock' }]);
    await r.timers.advance(20_000);
    expect(r.of('expired')).toEqual([]);
    expect(r.of('health').at(-1)).toEqual({ type: 'health', state: 'down', detail: 'injected failure' });
  });
});
