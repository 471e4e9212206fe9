import { type AuthVerifier, Keyring } from '../access/keyring.js';
import type { Logger } from '../core/logger.js';
import { KeyringStore } from './keyring-store.js';
import { loadIdentity, type VehicleIdentity } from './provision.js';

export interface VehicleState {
  readonly identity: VehicleIdentity;
  readonly keyring: Keyring;
  readonly keyringStore: KeyringStore;
  close(): Promise<void>;
}

/** Loads identity and keyring from a provisioned state directory. The caller holds the instance lock. */
export async function openVehicleState(
  stateDir: string,
  log: Logger,
  authVerifiers: ReadonlyMap<string, AuthVerifier> = new Map(),
): Promise<VehicleState> {
  const identity = await loadIdentity(stateDir);
  const keyring = new Keyring({
    vehicleId: identity.vehicleId,
    rootKey: identity.rootKey,
    vehicleKey: identity.vehicleKey,
    authVerifiers,
  });
  const keyringStore = await KeyringStore.open(stateDir, keyring, log.child({ module: 'keyring' }));
  return { identity, keyring, keyringStore, close: () => keyringStore.close() };
}
