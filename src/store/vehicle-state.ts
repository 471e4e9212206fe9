import { type AuthVerifier, Keyring } from '../access/keyring.js';
import type { Logger } from '../core/logger.js';
import type { IntegrityFinding } from './integrity.js';
import { KeyringStore } from './keyring-store.js';
import { loadIdentity, type VehicleIdentity } from './provision.js';

export interface VehicleState {
  readonly identity: VehicleIdentity;
  readonly keyring: Keyring;
  readonly keyringStore: KeyringStore;
  /** What was found wrong with the identity and keyring files (the keyring's grow in the background). */
  findings(): readonly IntegrityFinding[];
  close(): Promise<void>;
}

/** Loads identity and keyring from a provisioned state directory. The caller holds the instance lock. */
export async function openVehicleState(
  stateDir: string,
  log: Logger,
  authVerifiers: ReadonlyMap<string, AuthVerifier> = new Map(),
): Promise<VehicleState> {
  const identityFindings: IntegrityFinding[] = [];
  const identity = await loadIdentity(stateDir, identityFindings);
  for (const f of identityFindings) {
    log.warn({ module: 'identity', code: f.code, file: f.file, problem: f.problem }, f.action);
  }
  const keyring = new Keyring({
    vehicleId: identity.vehicleId,
    rootKey: identity.rootKey,
    vehicleKey: identity.vehicleKey,
    authVerifiers,
  });
  const keyringStore = await KeyringStore.open(stateDir, keyring, log.child({ module: 'keyring' }));
  return {
    identity,
    keyring,
    keyringStore,
    findings: () => [...identityFindings, ...keyringStore.findings],
    close: () => keyringStore.close(),
  };
}
