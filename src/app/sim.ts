import { join } from 'node:path';
import type { Agent, LockControl } from '../agent/agent.js';
import type { Config } from '../config/schema.js';
import type { MonotonicFloorClock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import { bindHandler } from '../host/control-api.js';
import { simLimitHandlers, simReaderHandlers } from '../host/control-handlers.js';
import type { ControlHandler } from '../host/control-server.js';
import { demoHints, seedDemo } from '../sim/demo.js';
import { SimReader } from '../sim/sim-reader.js';
import { type ProvisionResult, provision, STATE_FILES } from '../store/provision.js';

/**
 * Where simulators come in beside the real parts: the demo vehicle, the simulated reader the CLI
 * drives, and the hints `npm start` prints. The NFC and BLE simulators are picked in nfc.ts and
 * ble.ts, the simulated relay in relays.ts: src/app is the only part of src/ that imports src/sim.
 */

/** relay.driver sim: the whole vehicle is simulated. */
export function allSimulated(config: Config): boolean {
  return config.relay.driver === 'sim';
}

/** The simulated reader (`vehicle-agent sim present`): on, or auto with simulated relays. */
export function simReaderEnabled(config: Config): boolean {
  return config.sim.reader === 'on' || (config.sim.reader === 'auto' && allSimulated(config));
}

/**
 * Provisions a demo vehicle (`init --demo`, or `npm start` on an empty state folder): an owner key
 * of its own, and demo keys in <stateDir>/demo that show every outcome.
 */
export async function provisionDemo(options: {
  readonly stateDir: string;
  readonly vehicleId?: string;
}): Promise<ProvisionResult> {
  const result = await provision({
    stateDir: options.stateDir,
    ...(options.vehicleId !== undefined ? { vehicleId: options.vehicleId } : {}),
    demoOwner: true,
  });
  if (result.ownerKey) await seedDemo(options.stateDir, result.identity, result.ownerKey);
  return result;
}

/** Provisioning the agent may do by itself at start: only a fully simulated vehicle with the demo on. */
export function demoProvisioner(
  config: Config,
  stateDir: string,
  log: Logger,
): (() => Promise<void>) | undefined {
  if (!(allSimulated(config) && config.sim.demo)) return undefined;
  return async () => {
    const { identity } = await provisionDemo({ stateDir });
    log.info(
      { module: 'main', vehicleId: identity.vehicleId, demo: join(stateDir, STATE_FILES.demo) },
      'provisioned a demo vehicle',
    );
  };
}

/** The simulated reader and its sim.* control commands, when enabled. */
export function createSimReader(
  config: Config,
  lock: LockControl,
): { readonly reader: SimReader; readonly handlers: ReadonlyMap<string, ControlHandler> } | undefined {
  if (!simReaderEnabled(config)) return undefined;
  const reader = new SimReader('sim');
  return { reader, handlers: simReaderHandlers(reader, lock) };
}

/**
 * `sim.limits.clear`, on a fully simulated vehicle only: a demo lockout can be lifted at once. A
 * vehicle with real relays never offers it (a lockout there ends on time).
 */
export function simLimitControl(config: Config, agent: Agent): ReadonlyMap<string, ControlHandler> {
  return allSimulated(config) ? simLimitHandlers(agent) : new Map();
}

/**
 * `sim.clock.advance` (a scenario's clock jump, docs/scenarios.md), on a fully simulated vehicle
 * only: moves the trusted clock forward, as a signed command's time would. Forward only: the
 * trusted clock never goes back, so the jump stays in that state folder.
 */
export function simClockControl(
  config: Config,
  clock: Pick<MonotonicFloorClock, 'now' | 'advanceTo'>,
): ReadonlyMap<string, ControlHandler> {
  if (!allSimulated(config)) return new Map();
  return new Map<string, ControlHandler>([
    bindHandler('sim.clock.advance', ({ ms }) => {
      const before = clock.now();
      clock.advanceTo(before + ms);
      return { before: new Date(before).toISOString(), now: new Date(clock.now()).toISOString() };
    }),
  ]);
}

/** What to try first, printed once the demo runs, and how the rate limit shows itself. */
export function logDemoHints(log: Logger, readerHints: readonly string[], policy: Config['policy']): void {
  for (const hint of [...demoHints(), ...readerHints]) log.info({ module: 'main' }, `try: ${hint}`);
  const minutes = (ms: number) => (ms % 60_000 === 0 ? `${ms / 60_000} min` : `${ms / 1000} s`);
  log.info(
    { module: 'main' },
    `try: vehicle-agent sim present driver --tamper   (${policy.maxDenials} times within ` +
      `${minutes(policy.windowMs)}: failed proofs lock that one key out for ${minutes(policy.cooldownMs)}, ` +
      'and the next try says rate_limited, until when and why; then: vehicle-agent sim clear-limits)',
  );
  log.info(
    { module: 'main' },
    'then: vehicle-agent status   (npx vehicle-agent ... from the project directory)',
  );
}
