import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentError } from '../core/errors.js';
import type { PublicJwk } from '../core/types.js';
import {
  type EncodedKeyPair,
  encodeKeyPair,
  generateKeyPair,
  keyCredentialId,
  parseKeyText,
  publicJwkOf,
} from '../crypto/keys.js';
import { readJsonFile, writeFileAtomic } from '../store/atomic.js';

/**
 * The vehicle's identity in its state directory:
 *   vehicle.json      vehicle id, pinned owner root public key, vehicle public key (0600)
 *   vehicle-key.pem   the vehicle's P-256 private key (0600; never logged, never leaves the Pi)
 */
export const STATE_FILES = {
  vehicle: 'vehicle.json',
  vehicleKey: 'vehicle-key.pem',
  keyringSnapshot: 'keyring.json',
  keyringOps: 'keyring.ops',
  keyringJournal: 'keyring.journal',
  counters: 'counters',
  clock: 'clock.json',
  audit: 'audit',
  demo: 'demo',
} as const;

export interface VehicleFile {
  readonly format: 1;
  readonly vehicleId: string;
  readonly createdAt: string;
  readonly rootKey: PublicJwk;
  readonly vehicleKey: PublicJwk;
}

export interface VehicleIdentity extends VehicleFile {
  readonly rootId: string;
  readonly vehicleKeyId: string;
  readonly vehicleKeyPem: string;
}

const VEHICLE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$/;

export function newVehicleId(): string {
  const alphabet = 'ABCDEFGHJKLMNPQRSTUVWXYZ23456789';
  const bytes = randomBytes(10);
  return `VA-${[...bytes].map((b) => alphabet[b % alphabet.length]).join('')}`;
}

export function validateVehicleId(id: string): string {
  if (!VEHICLE_ID.test(id)) {
    throw new AgentError(
      'bad_arguments',
      `vehicle id "${id}" must be 3-64 characters of letters, digits, . _ - (no leading symbol)`,
    );
  }
  return id;
}

export async function isProvisioned(stateDir: string): Promise<boolean> {
  try {
    await stat(join(stateDir, STATE_FILES.vehicle));
    return true;
  } catch {
    return false;
  }
}

/** Creates the state directory 0700 (and tightens an existing one). */
export async function ensureStateDir(stateDir: string): Promise<void> {
  try {
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    await chmod(stateDir, 0o700);
  } catch (err) {
    throw new AgentError(
      'state_io',
      `cannot create the state directory ${stateDir}: ${(err as Error).message}`,
      { file: stateDir },
    );
  }
}

function parseVehicleFile(value: unknown): VehicleFile {
  const v = value as Partial<VehicleFile> | null;
  if (typeof v !== 'object' || v === null || v.format !== 1) throw new Error('format must be 1');
  if (typeof v.vehicleId !== 'string' || !VEHICLE_ID.test(v.vehicleId))
    throw new Error('vehicleId is invalid');
  if (typeof v.rootKey !== 'object' || typeof v.vehicleKey !== 'object')
    throw new Error('rootKey and vehicleKey are required');
  if (typeof v.createdAt !== 'string') throw new Error('createdAt is required');
  return v as VehicleFile;
}

export async function loadIdentity(stateDir: string): Promise<VehicleIdentity> {
  if (!(await isProvisioned(stateDir))) {
    throw new AgentError(
      'not_provisioned',
      `${stateDir} holds no provisioned vehicle: run \`vehicle-agent init\` first`,
      { file: stateDir },
    );
  }
  const file = await readJsonFile(join(stateDir, STATE_FILES.vehicle), { parse: parseVehicleFile });
  const keyPath = join(stateDir, STATE_FILES.vehicleKey);
  let vehicleKeyPem: string;
  try {
    vehicleKeyPem = await readFile(keyPath, 'utf8');
  } catch (err) {
    throw new AgentError('state_io', `cannot read ${keyPath}: ${(err as Error).message}`, { file: keyPath });
  }
  const key = parseKeyText(vehicleKeyPem, keyPath);
  if (key.type !== 'private' || JSON.stringify(publicJwkOf(key)) !== JSON.stringify(file.vehicleKey)) {
    throw new AgentError(
      'state_corrupt',
      `${keyPath} does not match the vehicle key in ${STATE_FILES.vehicle}`,
      { file: keyPath },
    );
  }
  return {
    ...file,
    rootId: keyCredentialId('signer', file.rootKey),
    vehicleKeyId: keyCredentialId('signer', file.vehicleKey),
    vehicleKeyPem,
  };
}

export interface ProvisionOptions {
  readonly stateDir: string;
  readonly vehicleId?: string;
  /** Owner root public key (PEM or JWK text). Without it, `demoOwner` must be set. */
  readonly ownerKeyText?: string;
  /** Generate an owner root key pair for a demo; its private key is written to demo/owner.pem. */
  readonly demoOwner?: boolean;
}

export interface ProvisionResult {
  readonly identity: VehicleIdentity;
  /** Set when the owner root key was generated here. */
  readonly ownerKey?: EncodedKeyPair;
}

/** `vehicle-agent init`: creates the state directory, the vehicle id and key, and pins the owner root. */
export async function provision(options: ProvisionOptions): Promise<ProvisionResult> {
  const { stateDir } = options;
  await ensureStateDir(stateDir);
  if (await isProvisioned(stateDir)) {
    throw new AgentError(
      'already_provisioned',
      `${stateDir} already holds vehicle state; refusing to overwrite it`,
      { file: stateDir },
    );
  }
  const entries = await readdir(stateDir);
  if (entries.some((e) => e === STATE_FILES.keyringSnapshot || e === STATE_FILES.keyringJournal)) {
    throw new AgentError(
      'already_provisioned',
      `${stateDir} holds a keyring but no ${STATE_FILES.vehicle}; move it away first`,
    );
  }
  let rootKey: PublicJwk;
  let ownerKey: EncodedKeyPair | undefined;
  if (options.ownerKeyText !== undefined) {
    rootKey = publicJwkOf(parseKeyText(options.ownerKeyText, 'owner key'));
  } else if (options.demoOwner) {
    const pair = generateKeyPair('P-256');
    ownerKey = encodeKeyPair(pair);
    rootKey = publicJwkOf(pair.publicKey);
  } else {
    throw new AgentError(
      'bad_arguments',
      'init needs the owner root public key (--owner-key FILE) or --demo',
    );
  }
  const vehicleId = validateVehicleId(options.vehicleId ?? newVehicleId());
  const vehiclePair = generateKeyPair('P-256');
  const vehicleEncoded = encodeKeyPair(vehiclePair);
  const file: VehicleFile = {
    format: 1,
    vehicleId,
    createdAt: new Date().toISOString(),
    rootKey,
    vehicleKey: publicJwkOf(vehiclePair.publicKey),
  };
  // Key first, identity last: vehicle.json is what marks the directory provisioned.
  await writeFileAtomic(join(stateDir, STATE_FILES.vehicleKey), vehicleEncoded.privatePem, { mode: 0o600 });
  await writeFileAtomic(join(stateDir, STATE_FILES.vehicle), `${JSON.stringify(file, null, 2)}\n`, {
    mode: 0o600,
  });
  const identity: VehicleIdentity = {
    ...file,
    rootId: keyCredentialId('signer', rootKey),
    vehicleKeyId: keyCredentialId('signer', file.vehicleKey),
    vehicleKeyPem: vehicleEncoded.privatePem,
  };
  return ownerKey ? { identity, ownerKey } : { identity };
}
