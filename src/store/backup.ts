import { mkdir, readdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type AuthVerifier,
  decodeTrustedOp,
  digestOfOps,
  Keyring,
  type StoredOp,
} from '../access/keyring.js';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { PublicJwk } from '../core/types.js';
import { parseKeyText, publicJwkOf } from '../crypto/keys.js';
import { AuditLog } from './audit-log.js';
import { inspectTrustedClock, openTrustedClock } from './clock-store.js';
import { uniqueStamp } from './fs-util.js';
import { acquireInstanceLock } from './instance-lock.js';
import { COUNTER_MAP_OPTIONS, inspectJournaledMap, JournaledMap } from './journaled-map.js';
import { inspectKeyringFiles, KeyringStore, readKeyringOps } from './keyring-store.js';
import {
  ensureStateDir,
  isProvisioned,
  loadIdentity,
  STATE_FILES,
  type VehicleFile,
  writeIdentityFiles,
} from './provision.js';
import { openVehicleState } from './vehicle-state.js';

/**
 * What `vehicle-agent backup` saves and `restore` puts back (docs/backup.md): the identity, every
 * signed keyring operation, the counters that only rise and the trusted-time floor. The file
 * around it (encryption) is src/crypto/backup-file.ts; the site key and the config are added by
 * the CLI, which knows where they live.
 *
 * Rollback safety: a restore never replaces state, it merges into it. Keyring operations are
 * united with what the state holds (a revoke, once there, wins over any grant), counters and the
 * time floor take the higher of the two values, so an older backup cannot undo a revocation or
 * lower a counter the state knows; the cloud's keyring set, merged at every connect, brings back
 * revocations made after the backup.
 */

export const BACKUP_CONTENT_FORMAT = 'vehicle-agent/backup/1';

export interface BackupContent {
  readonly format: typeof BACKUP_CONTENT_FORMAT;
  readonly createdAt: string;
  readonly vehicle: VehicleFile & { readonly vehicleKeyPem: string };
  readonly keyring: { readonly digest: string; readonly ops: readonly string[] };
  /** FIDO signature counters and cloud command counters, by key. */
  readonly counters: {
    readonly fido: Readonly<Record<string, number>>;
    readonly commands: Readonly<Record<string, number>>;
  };
  /** The trusted-time floor, ms since the epoch. */
  readonly clockFloor: number;
  /** The NTAG 424 site key file, as it was (cards are diversified from it). */
  readonly siteKey?: string;
  /** The configuration file read when the backup was made. */
  readonly config?: { readonly path: string; readonly text: string };
}

const invalid = (what: string): AgentError =>
  new AgentError('backup_invalid', `the backup's content is not valid: ${what}`, { field: what });

function counterRecord(value: unknown, name: string): Record<string, number> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid(`counters.${name}`);
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(value)) {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw invalid(`counters.${name}.${k}`);
    out[k] = v;
  }
  return out;
}

function isJwk(value: unknown): value is PublicJwk {
  const v = value as Partial<PublicJwk> | null;
  return typeof v === 'object' && v !== null && typeof v.kty === 'string' && typeof v.x === 'string';
}

/** Checks the shape of decrypted backup content (pure). Throws backup_invalid naming the field. */
export function parseBackupContent(bytes: Uint8Array): BackupContent {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw invalid('not JSON');
  }
  const v = value as Record<string, unknown> | null;
  if (typeof v !== 'object' || v === null) throw invalid('not an object');
  if (v.format !== BACKUP_CONTENT_FORMAT) throw invalid(`format (expected ${BACKUP_CONTENT_FORMAT})`);
  if (typeof v.createdAt !== 'string') throw invalid('createdAt');
  const vehicle = v.vehicle as Record<string, unknown> | null;
  if (
    typeof vehicle !== 'object' ||
    vehicle === null ||
    vehicle.format !== 1 ||
    typeof vehicle.vehicleId !== 'string' ||
    typeof vehicle.createdAt !== 'string' ||
    typeof vehicle.vehicleKeyPem !== 'string' ||
    !isJwk(vehicle.rootKey) ||
    !isJwk(vehicle.vehicleKey)
  )
    throw invalid('vehicle');
  const keyring = v.keyring as Record<string, unknown> | null;
  if (
    typeof keyring !== 'object' ||
    keyring === null ||
    typeof keyring.digest !== 'string' ||
    !Array.isArray(keyring.ops) ||
    !keyring.ops.every((o) => typeof o === 'string')
  )
    throw invalid('keyring');
  const counters = v.counters as Record<string, unknown> | null;
  if (typeof counters !== 'object' || counters === null) throw invalid('counters');
  if (typeof v.clockFloor !== 'number' || !Number.isFinite(v.clockFloor) || v.clockFloor < 0)
    throw invalid('clockFloor');
  if (v.siteKey !== undefined && typeof v.siteKey !== 'string') throw invalid('siteKey');
  const config = v.config as Record<string, unknown> | undefined;
  if (
    config !== undefined &&
    (typeof config !== 'object' ||
      config === null ||
      typeof config.path !== 'string' ||
      typeof config.text !== 'string')
  )
    throw invalid('config');
  return {
    format: BACKUP_CONTENT_FORMAT,
    createdAt: v.createdAt,
    vehicle: {
      format: 1,
      vehicleId: vehicle.vehicleId,
      createdAt: vehicle.createdAt,
      rootKey: vehicle.rootKey,
      vehicleKey: vehicle.vehicleKey,
      vehicleKeyPem: vehicle.vehicleKeyPem,
    },
    keyring: { digest: keyring.digest, ops: keyring.ops as string[] },
    counters: {
      fido: counterRecord(counters.fido, 'fido'),
      commands: counterRecord(counters.commands, 'commands'),
    },
    clockFloor: v.clockFloor,
    ...(typeof v.siteKey === 'string' ? { siteKey: v.siteKey } : {}),
    ...(config !== undefined ? { config: { path: String(config.path), text: String(config.text) } } : {}),
  };
}

const COUNTER_OPTIONS = {
  ...COUNTER_MAP_OPTIONS,
  parseValue: (v: unknown): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
      throw new Error('counter must be a non-negative integer');
    return v;
  },
};

const counterPaths = (stateDir: string) => ({
  fido: join(stateDir, STATE_FILES.counters),
  commands: join(stateDir, STATE_FILES.cloud, 'command-counters'),
});

/**
 * A counter map read twice, each key at the higher value: the files are read without the
 * agent's cooperation, and a compaction between reading a snapshot and its journal could hide
 * a value in one read (it cannot in both: compactions are 64 KiB of journal apart).
 */
async function readCounters(path: string): Promise<{ values: Record<string, number>; suspects: string[] }> {
  const values: Record<string, number> = {};
  const suspects = new Set<string>();
  for (let read = 0; read < 2; read++) {
    const map = await inspectJournaledMap<number>(path, COUNTER_OPTIONS);
    for (const [k, v] of map.values) values[k] = Math.max(values[k] ?? 0, v);
    for (const k of map.suspects.keys()) suspects.add(k);
  }
  return { values, suspects: [...suspects] };
}

/**
 * Reads the state directory for a backup, read-only and beside the running agent: every store's
 * files are written atomically or appended with checksums, so reading them gives a state the
 * agent had (each store as of the moment it was read). A state that denies credentials because
 * something about them was lost is refused: the backup would not carry that denial, and a
 * restore from it would let them in again.
 */
export async function readBackupContent(
  stateDir: string,
  extras: { readonly siteKey?: string; readonly config?: { readonly path: string; readonly text: string } },
  now = Date.now(),
): Promise<BackupContent> {
  const identity = await loadIdentity(stateDir, [], false);
  const inspection = await inspectKeyringFiles(stateDir);
  const suspect = inspection.findings.filter((f) => f.code === 'credential_suspect');
  const paths = counterPaths(stateDir);
  const fido = await readCounters(paths.fido);
  const commands = await readCounters(paths.commands);
  if (suspect.length > 0 || fido.suspects.length > 0 || commands.suspects.length > 0) {
    throw new AgentError(
      'state_corrupt',
      'the state denies credentials or counters because records about them were lost; a backup would not carry that denial. ' +
        'Run `vehicle-agent state check`, then `state repair` (agent stopped), and back up after',
      { denied: [...suspect.flatMap((f) => f.denied ?? []), ...fido.suspects, ...commands.suspects] },
    );
  }
  const records = await readKeyringOps(stateDir);
  const ops = records.map((r) => decodeTrustedOp(r.jws, r.signer));
  const clock = await inspectTrustedClock(stateDir);
  const { rootId: _rootId, vehicleKeyId: _vehicleKeyId, vehicleKeyPem, ...file } = identity;
  return {
    format: BACKUP_CONTENT_FORMAT,
    createdAt: new Date(now).toISOString(),
    vehicle: { ...file, vehicleKeyPem },
    keyring: {
      digest: digestOfOps(ops.map((s) => ({ id: s.op.id, jws: s.jws }))),
      ops: ops.map((s) => s.jws),
    },
    counters: { fido: fido.values, commands: commands.values },
    clockFloor: clock.floor ?? 0,
    ...(extras.siteKey !== undefined ? { siteKey: extras.siteKey } : {}),
    ...(extras.config !== undefined ? { config: extras.config } : {}),
  };
}

/**
 * Verifies a backup against itself before anything is written: the private key is the vehicle
 * key's, every keyring operation verifies under the backup's owner root (signatures, authority),
 * and together they give the digest the backup states.
 */
export function verifyBackupContent(
  content: BackupContent,
  authVerifiers: ReadonlyMap<string, AuthVerifier>,
): readonly StoredOp[] {
  const v = content.vehicle;
  let keyMatches = false;
  try {
    const key = parseKeyText(v.vehicleKeyPem, 'backup vehicle key');
    keyMatches = key.type === 'private' && JSON.stringify(publicJwkOf(key)) === JSON.stringify(v.vehicleKey);
  } catch {
    keyMatches = false;
  }
  if (!keyMatches) throw invalid('vehicle.vehicleKeyPem (not the private key of vehicle.vehicleKey)');
  const keyring = new Keyring({
    vehicleId: v.vehicleId,
    rootKey: v.rootKey,
    vehicleKey: v.vehicleKey,
    authVerifiers,
  });
  const prepared = keyring.prepare(content.keyring.ops);
  const first = prepared.rejected[0];
  if (first !== undefined) {
    throw new AgentError(
      'backup_invalid',
      `keyring operation ${first.index + 1} of the backup does not verify [${first.code}]: ${first.message}`,
      { index: first.index, code: first.code },
    );
  }
  const digest = digestOfOps(prepared.added.map((s) => ({ id: s.op.id, jws: s.jws })));
  if (digest !== content.keyring.digest) {
    throw new AgentError(
      'backup_invalid',
      "the backup's keyring operations do not give the digest it states",
    );
  }
  return prepared.added;
}

export interface RestoreOptions {
  readonly force: boolean;
  readonly authVerifiers: ReadonlyMap<string, AuthVerifier>;
  readonly log: Logger;
  /** Keyring operations persisted per batch (each one journal append, fsynced). */
  readonly batchSize?: number;
}

export interface RestoreReport {
  /** fresh: no state was there; merged: the same vehicle's state was there and was kept. */
  readonly mode: 'fresh' | 'merged';
  readonly vehicleId: string;
  /** State that was there and was moved aside by --force (relative to the state directory). */
  readonly movedAside?: string;
  readonly opsAdded: number;
  readonly opsAlreadyHeld: number;
  readonly countersRaised: number;
  readonly countersKept: number;
  readonly keyringDigest: string;
}

/** Files that mean a state directory holds state (an identity or not). */
const STATE_ENTRIES = new Set<string>([
  STATE_FILES.vehicle,
  STATE_FILES.vehicleMirror,
  STATE_FILES.keyringSnapshot,
  STATE_FILES.keyringOps,
  STATE_FILES.keyringOpsMirror,
  STATE_FILES.keyringJournal,
  STATE_FILES.keyringJournalMirror,
  STATE_FILES.keyringSuspects,
  STATE_FILES.keyringSuspectsMirror,
  STATE_FILES.clock,
  STATE_FILES.clockMirror,
  STATE_FILES.audit,
  STATE_FILES.cloud,
  'audit.head',
  'audit.mirror.head',
  'counters.snapshot.json',
  'counters.journal',
  'counters.mirror.snapshot.json',
  'counters.mirror.journal',
]);

const sameVehicle = (a: VehicleFile, b: VehicleFile): boolean =>
  a.vehicleId === b.vehicleId &&
  JSON.stringify(a.rootKey) === JSON.stringify(b.rootKey) &&
  JSON.stringify(a.vehicleKey) === JSON.stringify(b.vehicleKey);

/** Moves every entry but the instance lock into `replaced-<stamp>/`, for a human. */
async function moveAside(stateDir: string, entries: readonly string[]): Promise<string> {
  const aside = `replaced-${uniqueStamp()}`;
  await mkdir(join(stateDir, aside), { mode: 0o700 });
  for (const name of entries) {
    if (name === 'agent.lock' || name.startsWith('replaced-')) continue;
    await rename(join(stateDir, name), join(stateDir, aside, name));
  }
  return aside;
}

/**
 * `vehicle-agent restore`: the backup (verified with verifyBackupContent) into `stateDir`, with
 * the agent stopped. An empty directory gets the backup's vehicle; a directory holding the same
 * vehicle gets the backup merged in (never lowered, see the file comment); anything else is
 * refused with restore_conflict unless `force`, which moves it aside first. The identity is
 * written first, so an interrupted restore leaves the same vehicle, and running it again merges
 * the rest.
 */
export async function restoreState(
  stateDir: string,
  content: BackupContent,
  options: RestoreOptions,
): Promise<RestoreReport> {
  const verified = verifyBackupContent(content, options.authVerifiers);
  await ensureStateDir(stateDir);
  let lock: Awaited<ReturnType<typeof acquireInstanceLock>>;
  try {
    lock = await acquireInstanceLock(stateDir, 'vehicle-agent restore');
  } catch (err) {
    if (err instanceof AgentError && err.code === 'busy')
      throw new AgentError('busy', `${err.message}: stop the agent before a restore`, err.details, {
        cause: err,
      });
    throw err;
  }
  try {
    const { vehicleKeyPem, ...file } = content.vehicle;
    let movedAside: string | undefined;
    let mode: RestoreReport['mode'] = 'merged';
    const entries = (await readdir(stateDir)).filter((n) => STATE_ENTRIES.has(n));
    if (await isProvisioned(stateDir)) {
      let current: VehicleFile | undefined;
      let problem: string;
      try {
        current = await loadIdentity(stateDir, [], false);
        problem = `holds vehicle ${current.vehicleId}${current.vehicleId === file.vehicleId ? ' with other keys' : ''}, not ${file.vehicleId}`;
      } catch (err) {
        problem = `holds an identity that does not load (${(err as Error).message})`;
      }
      if (current === undefined || !sameVehicle(current, file)) {
        if (!options.force) {
          throw new AgentError(
            'restore_conflict',
            `${stateDir} ${problem}: nothing was changed. --force moves what is there aside (into replaced-<stamp>/) and restores the backup's vehicle`,
            { file: stateDir },
          );
        }
        movedAside = await moveAside(stateDir, await readdir(stateDir));
        mode = 'fresh';
      }
    } else if (entries.length > 0) {
      if (!options.force) {
        throw new AgentError(
          'restore_conflict',
          `${stateDir} holds state without an identity (${entries.join(', ')}): nothing was changed. --force moves it aside (into replaced-<stamp>/) and restores the backup`,
          { file: stateDir },
        );
      }
      movedAside = await moveAside(stateDir, await readdir(stateDir));
      mode = 'fresh';
    } else {
      mode = 'fresh';
    }
    if (mode === 'fresh') {
      await writeIdentityFiles(stateDir, file, vehicleKeyPem);
      await KeyringStore.writeSnapshot(
        stateDir,
        new Keyring({ vehicleId: file.vehicleId, rootKey: file.rootKey, vehicleKey: file.vehicleKey }),
      );
    }
    const merged = await mergeKeyring(stateDir, verified, options);
    let raised = 0;
    let kept = 0;
    const paths = counterPaths(stateDir);
    await mkdir(join(stateDir, STATE_FILES.cloud), { recursive: true, mode: 0o700 });
    for (const [path, values] of [
      [paths.fido, content.counters.fido],
      [paths.commands, content.counters.commands],
    ] as const) {
      const r = await raiseCounters(path, values, options.log);
      raised += r.raised;
      kept += r.kept;
    }
    const clockExisted = (await inspectTrustedClock(stateDir)).exists;
    const report: RestoreReport = {
      mode,
      vehicleId: file.vehicleId,
      ...(movedAside !== undefined ? { movedAside } : {}),
      opsAdded: merged.added,
      opsAlreadyHeld: merged.held,
      countersRaised: raised,
      countersKept: kept,
      keyringDigest: merged.digest,
    };
    // The audit log before the clock: a clock file beside no audit log reads as a log removed.
    const audit = await AuditLog.open(join(stateDir, STATE_FILES.audit), {
      expectHistory: clockExisted,
      logger: options.log,
    });
    try {
      await audit.append({
        type: 'state.restored',
        source: 'cli',
        mode,
        backupCreatedAt: content.createdAt,
        opsAdded: report.opsAdded,
        countersRaised: report.countersRaised,
        keyringDigest: report.keyringDigest,
        ...(movedAside !== undefined ? { movedAside } : {}),
      });
    } finally {
      await audit.close();
    }
    const clock = await openTrustedClock(stateDir, options.log);
    clock.clock.advanceTo(content.clockFloor);
    await clock.close();
    return report;
  } finally {
    await lock.release();
  }
}

/** The backup's ops into the keyring as the agent adds ops: stored in batches, then applied. */
async function mergeKeyring(
  stateDir: string,
  ops: readonly StoredOp[],
  options: RestoreOptions,
): Promise<{ added: number; held: number; digest: string }> {
  const state = await openVehicleState(stateDir, options.log, options.authVerifiers);
  try {
    const prepared = state.keyring.prepare(ops.map((s) => s.jws));
    const first = prepared.rejected[0];
    if (first !== undefined) {
      throw new AgentError(
        'restore_conflict',
        `keyring operation ${first.index + 1} of the backup is refused by the keyring here [${first.code}]: ${first.message}; nothing of the keyring was changed`,
        { index: first.index, code: first.code },
      );
    }
    const batch = options.batchSize ?? 1000;
    let added = 0;
    for (let i = 0; i < prepared.added.length; i += batch) {
      const slice = prepared.added.slice(i, i + batch);
      await state.keyringStore.persist(slice);
      added += state.keyring.apply({ added: slice, duplicates: 0, rejected: [] }).added.length;
      await state.keyringStore.compactIfDue();
    }
    return { added, held: prepared.duplicates, digest: state.keyring.digest() };
  } finally {
    await state.close();
  }
}

/** Each counter to the higher of the backup's value and the one held (a lost one reads as the maximum). */
async function raiseCounters(
  path: string,
  values: Readonly<Record<string, number>>,
  log: Logger,
): Promise<{ raised: number; kept: number }> {
  const keys = Object.keys(values);
  if (keys.length === 0) return { raised: 0, kept: 0 };
  const map = await JournaledMap.open<number>(path, { ...COUNTER_OPTIONS, logger: log });
  let raised = 0;
  let kept = 0;
  try {
    for (const key of keys) {
      const value = values[key] ?? 0;
      const held = map.get(key);
      if (held !== undefined && held >= value) kept++;
      else {
        await map.set(key, value);
        raised++;
      }
    }
  } finally {
    await map.close();
  }
  return { raised, kept };
}
