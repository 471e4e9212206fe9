import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/core/logger.js';
import { SimRelay } from '../../../src/relay/sim.js';
import { WatchdogRelay, type WatchdogRelease } from '../../../src/relay/watchdog.js';
import { ManualTimers } from '../../helpers/manual-timers.js';

function rig(maxOnMs = 1000) {
  const timers = new ManualTimers();
  const sim = new SimRelay({ logger: silentLogger, timers, wallNow: () => timers.now() });
  const watchdog = new WatchdogRelay(sim, { maxOnMs, logger: silentLogger, timers });
  const releases: WatchdogRelease[] = [];
  watchdog.onRelease((r) => releases.push(r));
  return { timers, sim, watchdog, releases };
}

describe('WatchdogRelay', () => {
  it('forces a channel off after maxOnMs and reports it', async () => {
    const r = rig();
    await r.watchdog.init();
    await r.watchdog.set('unlock', true);
    await r.timers.advance(999);
    expect(r.sim.energised('unlock')).toBe(true);
    await r.timers.advance(1);
    expect(r.sim.energised('unlock')).toBe(false);
    expect(r.releases).toEqual([
      {
        channel: 'unlock',
        heldMs: 1000,
        code: 'relay_watchdog',
        cause: 'max-on',
        current: true,
        by: 'agent',
      },
    ]);
  });

  it('asking again to energise does not extend the limit', async () => {
    const r = rig();
    await r.watchdog.init();
    await r.watchdog.set('lock', true);
    await r.timers.advance(600);
    await r.watchdog.set('lock', true);
    await r.timers.advance(400);
    expect(r.sim.energised('lock')).toBe(false);
    expect(r.releases).toEqual([
      { channel: 'lock', heldMs: 1000, code: 'relay_watchdog', cause: 'max-on', current: true, by: 'agent' },
    ]);
  });

  it('switching off disarms it; switching on again starts a new limit', async () => {
    const r = rig();
    await r.watchdog.init();
    await r.watchdog.set('unlock', true);
    await r.timers.advance(900);
    await r.watchdog.set('unlock', false);
    await r.watchdog.set('unlock', true);
    await r.timers.advance(999);
    expect(r.releases).toEqual([]);
    await r.timers.advance(1);
    expect(r.releases).toHaveLength(1);
  });

  it('falls back to all off when the channel cannot be released', async () => {
    const r = rig();
    await r.watchdog.init();
    await r.watchdog.set('unlock', true);
    r.sim.failNext({ channel: 'unlock', energised: false });
    await r.timers.advance(1000);
    expect(r.sim.energised('unlock')).toBe(false);
    expect(r.releases).toHaveLength(1);
  });
});
