import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/core/logger.js';
import { SimRelay } from '../../../src/relay/sim.js';
import type { SelfRelease } from '../../../src/relay/types.js';
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

describe('WatchdogRelay over a relay that releases by itself (the relay guard)', () => {
  class SelfReleasing extends SimRelay {
    readonly releaseListeners = new Set<(release: SelfRelease) => void>();
    onSelfRelease(listener: (release: SelfRelease) => void): () => void {
      this.releaseListeners.add(listener);
      return () => this.releaseListeners.delete(listener);
    }
    emit(current: boolean): void {
      for (const l of this.releaseListeners)
        l({ channel: 'unlock', heldMs: 500, code: 'relay_guard_released', cause: 'limit', current });
    }
  }

  function guardRig() {
    const timers = new ManualTimers();
    const sim = new SelfReleasing({ logger: silentLogger, timers, wallNow: () => timers.now() });
    const watchdog = new WatchdogRelay(sim, { maxOnMs: 1000, logger: silentLogger, timers });
    const releases: WatchdogRelease[] = [];
    watchdog.onRelease((r) => releases.push(r));
    return { timers, sim, watchdog, releases };
  }

  it('passes the release on, and stands down for a channel that is off now', async () => {
    const r = guardRig();
    await r.watchdog.init();
    await r.watchdog.set('unlock', true, { releaseAfterMs: 350 });
    r.sim.emit(true);
    expect(r.releases).toEqual([
      {
        channel: 'unlock',
        heldMs: 500,
        code: 'relay_guard_released',
        cause: 'limit',
        current: true,
        by: 'guard',
      },
    ]);
    expect(r.watchdog.energisedChannels()).toEqual([]);
    await r.timers.advance(5000);
    expect(r.releases).toHaveLength(1); // its own timer no longer runs
  });

  it('keeps timing a channel when the report names an earlier energising', async () => {
    const r = guardRig();
    await r.watchdog.init();
    await r.watchdog.set('unlock', true);
    r.sim.emit(false);
    expect(r.watchdog.energisedChannels()).toEqual(['unlock']);
    await r.timers.advance(1000);
    expect(r.releases.map((x) => x.by)).toEqual(['guard', 'agent']);
    expect(r.sim.energised('unlock')).toBe(false);
  });
});
