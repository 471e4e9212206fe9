import { describe, expect, it } from 'vitest';
import { simClockControl } from '../../../src/app/sim.js';
import { loadConfig } from '../../../src/config/load.js';
import { MonotonicFloorClock, type TimeSource } from '../../../src/core/clock.js';

/** A clock jump (a scenario's `clock:` step) is a simulator's tool, and only ever forward. */
describe('sim.clock.advance', () => {
  const source: TimeSource = { wall: () => 1_000_000, monotonic: () => 0 };

  it.each([
    ['sim', ['sim.clock.advance']],
    ['gpio', []],
    ['lcus', []],
  ])('relay.driver %s offers %j', (driver, commands) => {
    const { config } = loadConfig({ env: { VEHICLE_AGENT_RELAY__DRIVER: driver } });
    expect([...simClockControl(config, new MonotonicFloorClock(0, source)).keys()]).toEqual(commands);
  });

  it('moves the trusted clock forward by the amount asked, and refuses anything else', async () => {
    const { config } = loadConfig({ env: {} });
    const clock = new MonotonicFloorClock(0, source);
    const advance = simClockControl(config, clock).get('sim.clock.advance');
    expect(await advance?.({ ms: 86_400_000 })).toEqual({
      before: new Date(1_000_000).toISOString(),
      now: new Date(1_000_000 + 86_400_000).toISOString(),
    });
    expect(clock.now()).toBe(1_000_000 + 86_400_000);
    for (const ms of [-1000, 0, 1.5, '1d', 400 * 86_400_000, undefined]) {
      await expect(async () => await advance?.({ ms })).rejects.toMatchObject({ code: 'bad_arguments' });
    }
    expect(clock.now()).toBe(1_000_000 + 86_400_000);
  });
});
