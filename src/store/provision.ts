import { randomBytes, sign, verify } from 'node:crypto';
import { chmod, mkdir, readdir, stat } from 'node:fs/promises';
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
  publicKeyFromJwk,
} from '../crypto/keys.js';
import { parseJsonBytes, readFileIfExists, writeFileAtomic } from './atomic.js';
import { decodeChecksummedJson, encodeChecksummedJson } from './checksummed.js';
import { uniqueStamp } from './fs-util.js';
import type { IntegrityFinding } from './integrity.js';

/**
 * The vehicle's identity in its state directory, each file with a copy beside it so that one
 * damaged or deleted file does not leave the vehicle without an identity:
 *   vehicle.json             vehicle id, pinned owner root public key, vehicle public key (0600)
 *   vehicle.mirror.json      the same, as one checksummed line: when the two differ it says
 *                            which is right (a flipped byte in vehicle.json may still parse)
 *   vehicle-key.pem          the vehicle's P-256 private key (0600; never logged, never leaves the Pi)
 *   vehicle-key.mirror.pem   the same key; a copy counts when its public key matches vehicle.json
 * A damaged copy is rewritten from the good one and reported; both damaged is `state_corrupt`.
 */
export const STATE_FILES = {
  vehicle: 'vehicle.json',
  vehicleMirror: 'vehicle.mirror.json',
  vehicleKey: 'vehicle-key.pem',
  vehicleKeyMirror: 'vehicle-key.mirror.pem',
  keyringSnapshot: 'keyring.json',
  keyringOps: 'keyring.ops',
  keyringOpsMirror: 'keyring.mirror.ops',
  keyringJournal: 'keyring.journal',
  keyringJournalMirror: 'keyring.mirror.journal',
  /** Credentials denied because what named them was lost in every copy (exist only then). */
  keyringSuspects: 'keyring.suspects',
  keyringSuspectsMirror: 'keyring.mirror.suspects',
  /** Base of a journaled map: counters.snapshot.json, counters.journal and their .mirror. copies. */
  counters: 'counters',
  clock: 'clock.json',
  clockMirror: 'clock.mirror.json',
  /** Directory; its head anchors are audit.head and audit.mirror.head beside it. */
  audit: 'audit',
  cloud: 'cloud',
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
  for (const name of [STATE_FILES.vehicle, STATE_FILES.vehicleMirror]) {
    try {
      await stat(join(stateDir, name));
      return true;
    } catch {
      // try the other
    }
  }
  return false;
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

type Read<T> =
  | { readonly state: 'ok'; readonly value: T }
  | { readonly state: 'missing' }
  | { readonly state: 'damaged'; readonly problem: string };

async function readWith<T>(path: string, decode: (bytes: Buffer) => T): Promise<Read<T>> {
  const bytes = await readFileIfExists(path);
  if (bytes === undefined) return { state: 'missing' };
  try {
    return { state: 'ok', value: decode(bytes) };
  } catch (err) {
    const e = err as Error;
    return {
      state: 'damaged',
      problem: e instanceof AgentError ? String(e.details.problem ?? e.message) : e.message,
    };
  }
}

const problemOf = (r: Read<unknown>): string => (r.state === 'damaged' ? r.problem : 'missing');

/**
 * Reads the identity, repairing a damaged or missing copy from the good one (when `repair`),
 * and pushes what it found to `findings`. Throws `state_corrupt` when no copy is usable.
 */
export async function loadIdentity(
  stateDir: string,
  findings: IntegrityFinding[] = [],
  repair = true,
): Promise<VehicleIdentity> {
  if (!(await isProvisioned(stateDir))) {
    throw new AgentError(
      'not_provisioned',
      `${stateDir} holds no provisioned vehicle: run \`vehicle-agent init\` first`,
      { file: stateDir },
    );
  }
  const mainPath = join(stateDir, STATE_FILES.vehicle);
  const mirrorPath = join(stateDir, STATE_FILES.vehicleMirror);
  const main = await readWith(mainPath, (bytes) =>
    parseJsonBytes(mainPath, bytes, { parse: parseVehicleFile }),
  );
  const mirror = await readWith(mirrorPath, (bytes) => parseVehicleFile(decodeChecksummedJson(bytes)));
  let file: VehicleFile;
  const fixes: [string, string][] = [];
  if (mirror.state === 'ok') {
    file = mirror.value;
    // The checksummed mirror decides when vehicle.json parses but says something else.
    if (main.state !== 'ok' || JSON.stringify(main.value) !== JSON.stringify(mirror.value)) {
      findings.push({
        file: mainPath,
        code: 'state_repaired',
        problem: main.state === 'ok' ? 'differs from its checksummed copy' : problemOf(main),
        action: `rebuilt from ${STATE_FILES.vehicleMirror}`,
      });
      fixes.push([mainPath, `${JSON.stringify(file, null, 2)}\n`]);
    }
  } else if (main.state === 'ok') {
    file = main.value;
    // A vehicle from before mirrors has none: made now, without a finding. With a key mirror
    // beside it, the vehicle has had one, so a missing mirror was removed.
    const hadMirrors = (await readFileIfExists(join(stateDir, STATE_FILES.vehicleKeyMirror))) !== undefined;
    if (mirror.state === 'damaged' || hadMirrors) {
      findings.push({
        file: mirrorPath,
        code: 'state_repaired',
        problem: problemOf(mirror),
        action: `rebuilt from ${STATE_FILES.vehicle}`,
      });
    }
    fixes.push([mirrorPath, encodeChecksummedJson(file).toString('utf8')]);
  } else {
    throw new AgentError(
      'state_corrupt',
      `${mainPath} (${problemOf(main)}) and ${mirrorPath} (${problemOf(mirror)}) are both unusable: the vehicle has no identity; restore them from a backup or provision again`,
      { file: mainPath, problem: problemOf(main) },
    );
  }
  const keyPath = join(stateDir, STATE_FILES.vehicleKey);
  const keyMirrorPath = join(stateDir, STATE_FILES.vehicleKeyMirror);
  // A copy counts when it signs for the vehicle's public key: the public key a PKCS#8 file
  // carries beside the private scalar would still match with the scalar damaged. It is damaged
  // when its bytes are not the key's own PEM encoding (a part decoding tolerates).
  const vehiclePublic = publicKeyFromJwk(file.vehicleKey);
  const matching = (bytes: Buffer): { pem: string; canonical: boolean } => {
    const pem = bytes.toString('utf8');
    const key = parseKeyText(pem, keyPath);
    if (key.type !== 'private' || JSON.stringify(publicJwkOf(key)) !== JSON.stringify(file.vehicleKey)) {
      throw new Error(`does not match the vehicle key in ${STATE_FILES.vehicle}`);
    }
    const probe = Buffer.from('vehicle-agent/vehicle-key-check');
    const hash = key.asymmetricKeyType === 'ed25519' ? null : 'sha256';
    if (!verify(hash, probe, vehiclePublic, sign(hash, probe, key))) {
      throw new Error(`its private key does not sign for the vehicle key in ${STATE_FILES.vehicle}`);
    }
    const canonical = key.export({ format: 'pem', type: 'pkcs8' }).toString();
    return { pem: canonical, canonical: canonical === pem };
  };
  const key = await readWith(keyPath, matching);
  const keyMirror = await readWith(keyMirrorPath, matching);
  const good = key.state === 'ok' ? key.value : keyMirror.state === 'ok' ? keyMirror.value : undefined;
  if (good === undefined) {
    throw new AgentError(
      'state_corrupt',
      `${keyPath} (${problemOf(key)}) and ${keyMirrorPath} (${problemOf(keyMirror)}) are both unusable: the vehicle key is lost; provision the vehicle again`,
      { file: keyPath, problem: problemOf(key) },
    );
  }
  const vehicleKeyPem = good.pem;
  for (const [path, read, other] of [
    [keyPath, key, STATE_FILES.vehicleKeyMirror],
    [keyMirrorPath, keyMirror, STATE_FILES.vehicleKey],
  ] as const) {
    if (read.state === 'ok' && read.value.canonical) continue;
    // A key from before mirrors has no mirror: made now, without a finding (a vehicle.mirror.json
    // says the vehicle has had mirrors).
    if (!(read.state === 'missing' && path === keyMirrorPath && mirror.state === 'missing')) {
      findings.push({
        file: path,
        code: 'state_repaired',
        problem:
          read.state === 'ok'
            ? 'damaged (its bytes are not the encoding of the key it still holds)'
            : problemOf(read),
        action: read.state === 'ok' ? 'rewritten from the key' : `rebuilt from ${other}`,
      });
    }
    fixes.push([path, vehicleKeyPem]);
  }
  if (repair) {
    for (const [path, text] of fixes) {
      const bytes = await readFileIfExists(path);
      if (bytes !== undefined && bytes.length > 0)
        await writeFileAtomic(`${path}.corrupt-${uniqueStamp()}`, bytes);
      await writeFileAtomic(path, text, { mode: 0o600 });
    }
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
  await writeIdentityFiles(stateDir, file, vehicleEncoded.privatePem);
  const identity: VehicleIdentity = {
    ...file,
    rootId: keyCredentialId('signer', rootKey),
    vehicleKeyId: keyCredentialId('signer', file.vehicleKey),
    vehicleKeyPem: vehicleEncoded.privatePem,
  };
  return ownerKey ? { identity, ownerKey } : { identity };
}

/**
 * Writes an identity's four files (provisioning; `vehicle-agent restore` from a backup). Keys
 * first, identity last: vehicle.json (or its mirror) is what marks the directory provisioned.
 */
export async function writeIdentityFiles(
  stateDir: string,
  file: VehicleFile,
  privatePem: string,
): Promise<void> {
  await writeFileAtomic(join(stateDir, STATE_FILES.vehicleKey), privatePem, { mode: 0o600 });
  await writeFileAtomic(join(stateDir, STATE_FILES.vehicleKeyMirror), privatePem, { mode: 0o600 });
  await writeFileAtomic(join(stateDir, STATE_FILES.vehicleMirror), encodeChecksummedJson(file), {
    mode: 0o600,
  });
  await writeFileAtomic(join(stateDir, STATE_FILES.vehicle), `${JSON.stringify(file, null, 2)}\n`, {
    mode: 0o600,
  });
}
