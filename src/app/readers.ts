import { createPublicKey, type KeyObject } from 'node:crypto';
import type { Agent, LockControl } from '../agent/agent.js';
import type { CredentialReader } from '../agent/reader.js';
import type { EnrollmentDesk } from '../ble/enrollment.js';
import type { Config } from '../config/schema.js';
import type { Clock } from '../core/clock.js';
import { toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { ControlHandler } from '../host/control-server.js';
import type { JournaledMap } from '../store/journaled-map.js';
import type { VehicleState } from '../store/vehicle-state.js';
import type { CleanupStack } from './cleanup-stack.js';
import { createSimReader } from './sim.js';

export interface ReaderParts {
  readonly readers: readonly CredentialReader[];
  /** Control commands the readers add (sim.*, ble.*, nfc.*). */
  readonly handlers: ReadonlyMap<string, ControlHandler>;
  /** What to try in sim mode, from the readers that have simulated hardware. */
  readonly hints: readonly string[];
}

export interface ReaderDeps {
  readonly config: Config;
  readonly stateDir: string;
  readonly vehicle: VehicleState;
  readonly vehicleKey: KeyObject;
  readonly counters: JournaledMap<number>;
  readonly clock: Clock;
  readonly lock: LockControl;
  /** The agent, once built (readers are built before it, and enrollment reaches it later). */
  readonly agent: () => Agent;
  readonly log: Logger;
  readonly cleanup: CleanupStack;
  /** The status page's URL once it listens (it starts after the readers). */
  readonly statusPageUrl?: () => string | undefined;
}

/**
 * The credential readers the configuration asks for: the simulated reader, BLE phone keys
 * (src/ble, docs/ble.md) and NFC cards (src/nfc, docs/cards.md). node-ble and serialport load
 * only when their reader is enabled. Each stop is registered before the agent's, so the agent
 * stops first and the readers after it.
 */
export async function buildReaders(deps: ReaderDeps): Promise<ReaderParts> {
  const { config, vehicle, log } = deps;
  const { identity, keyring } = vehicle;
  const readers: CredentialReader[] = [];
  const handlers = new Map<string, ControlHandler>();
  const hints: string[] = [];
  const add = (more: ReadonlyMap<string, ControlHandler>) => {
    for (const [name, handler] of more) handlers.set(name, handler);
  };

  const sim = createSimReader(config, deps.lock);
  if (sim) {
    readers.push(sim.reader);
    add(sim.handlers);
  }

  const enrollment = async () => {
    const [{ signJws }, { KEYRING_OP_TYP }] = await Promise.all([
      import('../crypto/jws.js'),
      import('../access/keyring.js'),
    ]);
    return {
      vehicleId: identity.vehicleId,
      keyring,
      clock: deps.clock,
      log,
      signOp: (op: Parameters<typeof signJws>[0]) =>
        signJws(op, deps.vehicleKey, identity.vehicleKeyId, KEYRING_OP_TYP),
      agent: deps.agent,
      lockState: () => deps.lock.state(),
    };
  };

  let phoneEnrollment: EnrollmentDesk | undefined;
  if (config.ble.enabled) {
    const { setupBle } = await import('./ble.js');
    const vehicleSpki = new Uint8Array(
      createPublicKey(deps.vehicleKey).export({ format: 'der', type: 'spki' }),
    );
    const ble = await setupBle({
      config,
      vehicleSpki,
      ...(await enrollment()),
      ...(deps.statusPageUrl === undefined ? {} : { statusPageUrl: deps.statusPageUrl }),
    });
    readers.push(...ble.readers);
    add(ble.handlers);
    phoneEnrollment = ble.desk;
    deps.cleanup.defer('ble', () => ble.stop());
  }

  // A reader that cannot be set up (sim mode failing to start its emulator, say) is logged and
  // the vehicle runs on without it; a PN532 that is absent or fails later recovers by itself.
  if (config.nfc.enabled) {
    try {
      const { setupNfc } = await import('./nfc.js');
      const nfc = await setupNfc({
        config,
        stateDir: deps.stateDir,
        counters: deps.counters,
        ...(phoneEnrollment === undefined ? {} : { phoneEnrollment }),
        ...(await enrollment()),
      });
      readers.push(nfc.reader);
      add(nfc.handlers);
      hints.push(...nfc.hints);
      deps.cleanup.defer('nfc', () => nfc.stop());
    } catch (err) {
      const e = toAgentError(err, 'reader_error');
      log.error(
        { module: 'nfc', code: e.code, err: e.message },
        'NFC reader not started; running without it',
      );
    }
  }
  return { readers, handlers, hints };
}
