import { randomBytes } from 'node:crypto';
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
} from '../crypto/keys.js';
import { parseJsonBytes, readFileIfExists, writeFileAtomic } from '../store/atomic.js';
import { decodeChecksummedJson, encodeChecksummedJson } from '../store/checksummed.js';
import { uniqueStamp } from '../store/fs-util.js';
import type { IntegrityFinding } from '../store/integrity.js';

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
    // A vehicle from before mirrors has none: made now, without a finding.
    if (mirror.state === 'damaged') {
      findings.push({
        file: mirrorPath,
        code: 'state_repaired',
        problem: mirror.problem,
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
  const matching = (bytes: Buffer): string => {
    const pem = bytes.toString('utf8');
    const key = parseKeyText(pem, keyPath);
    if (key.type !== 'private' || JSON.stringify(publicJwkOf(key)) !== JSON.stringify(file.vehicleKey)) {
      throw new Error(`does not match the vehicle key in ${STATE_FILES.vehicle}`);
    }
    return pem;
  };
  const key = await readWith(keyPath, matching);
  const keyMirror = await readWith(keyMirrorPath, matching);
  let vehicleKeyPem: string;
  if (key.state === 'ok') {
    vehicleKeyPem = key.value;
    if (keyMirror.state !== 'ok') {
      if (keyMirror.state === 'damaged') {
        findings.push({
          file: keyMirrorPath,
          code: 'state_repaired',
          problem: keyMirror.problem,
          action: `rebuilt from ${STATE_FILES.vehicleKey}`,
        });
      }
      fixes.push([keyMirrorPath, vehicleKeyPem]);
    }
  } else if (keyMirror.state === 'ok') {
    vehicleKeyPem = keyMirror.value;
    findings.push({
      file: keyPath,
      code: 'state_repaired',
      problem: problemOf(key),
      action: `rebuilt from ${STATE_FILES.vehicleKeyMirror}`,
    });
    fixes.push([keyPath, vehicleKeyPem]);
  } else {
    throw new AgentError(
      'state_corrupt',
      `${keyPath} (${problemOf(key)}) and ${keyMirrorPath} (${problemOf(keyMirror)}) are both unusable: the vehicle key is lost; provision the vehicle again`,
      { file: keyPath, problem: problemOf(key) },
    );
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
  // Keys first, identity last: vehicle.json (or its mirror) is what marks the directory provisioned.
  await writeFileAtomic(join(stateDir, STATE_FILES.vehicleKey), vehicleEncoded.privatePem, { mode: 0o600 });
  await writeFileAtomic(join(stateDir, STATE_FILES.vehicleKeyMirror), vehicleEncoded.privatePem, {
    mode: 0o600,
  });
  await writeFileAtomic(join(stateDir, STATE_FILES.vehicleMirror), encodeChecksummedJson(file), {
    mode: 0o600,
  });
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
