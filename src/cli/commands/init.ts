import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Keyring } from '../../access/keyring.js';
import { provisionDemo } from '../../app/sim.js';
import { AgentError } from '../../core/errors.js';
import { acquireInstanceLock } from '../../store/instance-lock.js';
import { KeyringStore } from '../../store/keyring-store.js';
import { ensureStateDir, type ProvisionResult, provision, STATE_FILES } from '../../store/provision.js';
import { COMMON_OPTIONS, loadFor, out, parse } from '../args.js';

export const INIT_HELP = `vehicle-agent init (--owner-key FILE | --demo) [--vehicle-id ID] [--state-dir DIR] [--config FILE]

Provisions the state directory (mode 0700): a vehicle id, the vehicle's P-256 key pair, and the
pinned owner root public key. --owner-key takes the owner's public key (PEM or JWK; a private key
file works too, only its public half is kept). --demo generates an owner key in <stateDir>/demo
plus demo keys and a demo keyring for the simulator.`;

export async function init(argv: readonly string[]): Promise<number> {
  const { values } = parse(argv, {
    ...COMMON_OPTIONS,
    'owner-key': { type: 'string' },
    'vehicle-id': { type: 'string' },
    demo: { type: 'boolean' },
  });
  if (values['owner-key'] !== undefined && values.demo)
    throw new AgentError('bad_arguments', 'give either --owner-key or --demo, not both');
  const loaded = loadFor(values);
  let ownerKeyText: string | undefined;
  if (values['owner-key'] !== undefined) {
    try {
      ownerKeyText = readFileSync(values['owner-key'], 'utf8');
    } catch (err) {
      throw new AgentError('key_invalid', `cannot read ${values['owner-key']}: ${(err as Error).message}`);
    }
  }
  await ensureStateDir(loaded.stateDir);
  const lock = await acquireInstanceLock(loaded.stateDir, 'init');
  let result: ProvisionResult;
  try {
    const vehicleId = values['vehicle-id'] !== undefined ? { vehicleId: values['vehicle-id'] } : {};
    if (values.demo === true) result = await provisionDemo({ stateDir: loaded.stateDir, ...vehicleId });
    else {
      result = await provision({
        stateDir: loaded.stateDir,
        ...vehicleId,
        ...(ownerKeyText !== undefined ? { ownerKeyText } : {}),
        demoOwner: false,
      });
      const { identity } = result;
      const empty = new Keyring({
        vehicleId: identity.vehicleId,
        rootKey: identity.rootKey,
        vehicleKey: identity.vehicleKey,
      });
      await KeyringStore.writeSnapshot(loaded.stateDir, empty);
    }
  } finally {
    await lock.release();
  }
  const { identity, ownerKey } = result;
  const summary = {
    stateDir: loaded.stateDir,
    vehicleId: identity.vehicleId,
    ownerRootId: identity.rootId,
    vehicleKeyId: identity.vehicleKeyId,
    vehiclePublicKey: identity.vehicleKey,
    ...(ownerKey ? { demoDir: join(loaded.stateDir, STATE_FILES.demo) } : {}),
  };
  if (values.json) out(JSON.stringify(summary));
  else {
    out(`provisioned ${identity.vehicleId} in ${loaded.stateDir}`);
    out(`  owner root key id: ${identity.rootId}`);
    out(`  vehicle key id:    ${identity.vehicleKeyId}`);
    if (ownerKey)
      out(`  demo keys:         ${join(loaded.stateDir, STATE_FILES.demo)} (see README.txt there)`);
  }
  return 0;
}
