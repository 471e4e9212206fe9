import { describe, expect, it } from 'vitest';
import { simLimitControl } from '../../../src/app/sim.js';
import { loadConfig } from '../../../src/config/load.js';

/** Lifting rate limits at will is a demo tool: a vehicle with real relays never offers it. */
describe('sim.limits.clear is offered by a simulated vehicle only', () => {
  const agent = { clearRateLimits: () => ({ credentials: 0, uidThrottle: false }) } as never;

  it.each([
    ['sim', ['sim.limits.clear']],
    ['gpio', []],
    ['lcus', []],
  ])('relay.driver %s', (driver, commands) => {
    const { config } = loadConfig({ env: { VEHICLE_AGENT_RELAY__DRIVER: driver } });
    expect([...simLimitControl(config, agent).keys()]).toEqual(commands);
  });

  it('not even with the simulated reader switched on beside real relays', () => {
    const { config } = loadConfig({
      env: { VEHICLE_AGENT_RELAY__DRIVER: 'gpio', VEHICLE_AGENT_SIM__READER: 'on' },
    });
    expect([...simLimitControl(config, agent).keys()]).toEqual([]);
  });
});
