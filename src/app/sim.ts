import { join } from 'node:path';
import type { LockControl } from '../agent/agent.js';
import type { Config } from '../config/schema.js';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { SimAnswer } from '../host/control-api.js';
import { decisionReply, parseIntent } from '../host/control-handlers.js';
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

/** What to try first, printed once the demo runs. */
export function logDemoHints(log: Logger, readerHints: readonly string[]): void {
  for (const hint of [...demoHints(), ...readerHints]) log.info({ module: 'main' }, `try: ${hint}`);
  log.info(
    { module: 'main' },
    'then: vehicle-agent status   (npx vehicle-agent ... from the project directory)',
  );
}

function parseSimAnswer(args: Readonly<Record<string, unknown>>): SimAnswer {
  const { challengeId, credentialId, explicitIntent, signature, delayMs } = args;
  if (typeof challengeId !== 'string' || typeof credentialId !== 'string' || typeof signature !== 'string') {
    throw new AgentError('bad_arguments', 'challengeId, credentialId and signature must be strings');
  }
  if (typeof explicitIntent !== 'boolean')
    throw new AgentError('bad_arguments', 'explicitIntent must be a boolean');
  if (delayMs !== undefined && (typeof delayMs !== 'number' || !Number.isInteger(delayMs) || delayMs < 0)) {
    throw new AgentError('bad_arguments', 'delayMs must be a non-negative integer');
  }
  return {
    challengeId,
    credentialId,
    intent: parseIntent(args.intent),
    explicitIntent,
    signature,
    ...(delayMs !== undefined ? { delayMs } : {}),
  };
}

/** sim.challenge, sim.answer and sim.uid: `vehicle-agent sim present` plays a key through these. */
export function simReaderHandlers(simReader: SimReader, lock: LockControl): Map<string, ControlHandler> {
  return new Map<string, ControlHandler>([
    ['sim.challenge', () => simReader.issueChallenge()],
    ['sim.answer', async (args) => decisionReply(await simReader.answer(parseSimAnswer(args)), lock)],
    [
      'sim.uid',
      async (args) => {
        if (typeof args.uid !== 'string') throw new AgentError('bad_arguments', 'uid must be a hex string');
        return decisionReply(await simReader.presentUid(args.uid, parseIntent(args.intent)), lock);
      },
    ],
  ]);
}
