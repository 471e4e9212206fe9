import { readFile, stat } from 'node:fs/promises';
import { expectedCredentialId } from '../../access/credential-wire.js';
import { type ImportFile, parseImportFile } from '../../access/import-file.js';
import {
  decodeTrustedOp,
  digestOfOps,
  Keyring,
  type KeyringOp,
  type MergeResult,
  signGrant,
} from '../../access/keyring.js';
import type { LoadedConfig } from '../../config/load.js';
import { AgentError, toAgentError } from '../../core/errors.js';
import { silentLogger } from '../../core/logger.js';
import type { Credential } from '../../core/types.js';
import { uidHash } from '../../crypto/keys.js';
import { writeFileAtomic } from '../../store/atomic.js';
import { acquireInstanceLock } from '../../store/instance-lock.js';
import { readSignerKey } from '../../store/key-files.js';
import { readKeyringOps } from '../../store/keyring-store.js';
import { loadIdentity } from '../../store/provision.js';
import { openVehicleState } from '../../store/vehicle-state.js';
import { COMMON_OPTIONS, loadFor, out, parse, requireString } from '../args.js';
import { controlCall } from '../control-client.js';
import { authVerifiers } from './backup.js';
import { auditOffline } from './keys.js';

/**
 * `keys export` and `keys import` (docs/backup.md "Moving credentials"): credentials moved in bulk
 * as signed keyring operations. Exported ops stay verifiable, so an export holds no secret; an
 * import verifies every op against the keyring here (and signs UID cards from other systems with
 * the owner key given) before the first write, then stores them in batches.
 */

export const UID_WARNING =
  'UID-only cards prove nothing: anyone who reads a UID can make a card (or a phone) that answers with it. ' +
  'Use them only where that is acceptable, and replace them with FIDO security keys or NTAG 424 DNA cards (docs/cards.md)';

/** About 170 000 phone grants: a larger import is split into files. */
const MAX_IMPORT_BYTES = 128 * 1024 * 1024;
/** Bytes of ops per control-socket request (its lines are at most 64 KiB). */
const SOCKET_BATCH_BYTES = 48 * 1024;

export async function keysExport(argv: readonly string[]): Promise<number> {
  const { values } = parse(argv, { ...COMMON_OPTIONS, out: { type: 'string', short: 'o' } }, false);
  const loaded = loadFor(values);
  // Read-only and safe beside the running agent (see readKeyringOps).
  const identity = await loadIdentity(loaded.stateDir, [], false);
  const ops = (await readKeyringOps(loaded.stateDir)).map((r) => decodeTrustedOp(r.jws, r.signer));
  const digest = digestOfOps(ops.map((s) => ({ id: s.op.id, jws: s.jws })));
  const text = values.json
    ? `${JSON.stringify({ vehicleId: identity.vehicleId, digest, ops: ops.map((s) => s.jws) })}\n`
    : ops.map((s) => `${s.jws}\n`).join('');
  if (values.out === undefined) {
    process.stdout.write(text);
    return 0;
  }
  await writeFileAtomic(values.out, text, { mode: 0o600 });
  out(
    `exported ${ops.length} signed operations of ${identity.vehicleId} to ${values.out} (digest ${digest})`,
  );
  return 0;
}

interface ImportReport {
  readonly added: number;
  readonly duplicates: number;
  /** UID rows whose card is in the keyring already (revoked ones included: a revocation is final). */
  readonly skipped: number;
  readonly skippedRevoked: readonly string[];
  readonly batches: number;
}

/** The keyring as the state files hold it, read-only: what an import is verified against. */
async function keyringOnDisk(loaded: LoadedConfig): Promise<Keyring> {
  const identity = await loadIdentity(loaded.stateDir, [], false);
  const keyring = new Keyring({
    vehicleId: identity.vehicleId,
    rootKey: identity.rootKey,
    vehicleKey: identity.vehicleKey,
    authVerifiers: await authVerifiers(),
  });
  keyring.loadTrusted((await readKeyringOps(loaded.stateDir)).map((r) => decodeTrustedOp(r.jws, r.signer)));
  return keyring;
}

/** UID rows as signed grants; cards the keyring already knows are left out. */
function signUidRows(
  file: Extract<ImportFile, { kind: 'uid' }>,
  keyring: Keyring,
  keyPath: string,
): { ops: { where: string; jws: string }[]; skipped: number; skippedRevoked: string[] } {
  const signer = readSignerKey(keyPath);
  const iat = Math.floor(Date.now() / 1000);
  const ops: { where: string; jws: string }[] = [];
  let skipped = 0;
  const skippedRevoked: string[] = [];
  for (const row of file.rows) {
    const hash = uidHash(keyring.vehicleId, row.uid);
    const id = expectedCredentialId('uid', { uidHash: hash });
    const held = keyring.byId(id);
    if (held !== undefined) {
      skipped++;
      if (held.revoked) skippedRevoked.push(`${row.where}: ${id}`);
      continue;
    }
    const credential: Credential = {
      id,
      kind: 'uid',
      uidHash: hash,
      role: row.role,
      options: { insecureUid: true },
      ...(row.name !== undefined ? { name: row.name } : {}),
      ...(row.notBefore !== undefined ? { notBefore: row.notBefore } : {}),
      ...(row.notAfter !== undefined ? { notAfter: row.notAfter } : {}),
    };
    ops.push({ where: row.where, jws: signGrant(credential, keyring.vehicleId, signer.key, signer.id, iat) });
  }
  return { ops, skipped, skippedRevoked };
}

export async function keysImport(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    ...COMMON_OPTIONS,
    key: { type: 'string', short: 'k' },
    'insecure-uid': { type: 'boolean' },
  });
  const path = positionals[0];
  if (positionals.length !== 1 || path === undefined)
    throw new AgentError('bad_arguments', 'keys import needs one FILE (see vehicle-agent keys --help)');
  let text: string;
  try {
    if ((await stat(path)).size > MAX_IMPORT_BYTES)
      throw new AgentError('import_invalid', `${path} is larger than 128 MiB; split it`);
    text = await readFile(path, 'utf8');
  } catch (err) {
    if (err instanceof AgentError) throw err;
    throw new AgentError('bad_arguments', `cannot read ${path}: ${(err as Error).message}`);
  }
  const file = parseImportFile(text);
  const loaded = loadFor(values);
  const report = (await agentRunning(loaded))
    ? await importThroughAgent(loaded, file, values)
    : await importOffline(loaded, file, values);
  const result: ImportReport = report;
  if (values.json) out(JSON.stringify(result));
  else {
    out(
      `imported ${result.added} operation(s) in ${result.batches} batch(es); ${result.duplicates} already in the keyring` +
        (file.kind === 'uid' ? `; ${result.skipped} card(s) already there` : ''),
    );
  }
  for (const s of result.skippedRevoked)
    process.stderr.write(`note: ${s} was revoked, and a revocation is final: not granted again\n`);
  return 0;
}

interface ImportValues {
  readonly key?: string | undefined;
  readonly 'insecure-uid'?: boolean | undefined;
}

/**
 * The file's ops verified against `keyring` (UID rows signed first): all or nothing up to the
 * first write, so any refused op stops the import before anything is stored.
 */
function verifiedImport(file: ImportFile, keyring: Keyring, values: ImportValues) {
  let ops: { where: string; jws: string }[];
  let skipped = 0;
  let skippedRevoked: string[] = [];
  if (file.kind === 'uid') {
    process.stderr.write(`warning: ${UID_WARNING}\n`);
    if (!values['insecure-uid']) {
      throw new AgentError(
        'bad_arguments',
        `${file.rows.length} UID-only card(s): add --insecure-uid to grant them anyway (and --key OWNER.pem to sign)`,
      );
    }
    const signed = signUidRows(file, keyring, requireString(values.key, 'key'));
    ({ ops, skipped, skippedRevoked } = signed);
  } else {
    ops = [...file.ops];
  }
  const prepared = keyring.prepare(ops.map((o) => o.jws));
  const first = prepared.rejected[0];
  if (first !== undefined) {
    throw new AgentError(
      'import_invalid',
      `${ops[first.index]?.where ?? `operation ${first.index + 1}`}: refused [${first.code}]: ${first.message}; nothing was imported`,
      { where: ops[first.index]?.where, code: first.code },
    );
  }
  return { prepared, skipped, skippedRevoked };
}

async function agentRunning(loaded: LoadedConfig): Promise<boolean> {
  try {
    await controlCall(loaded.socketPath, 'vehicle', {});
    return true;
  } catch (err) {
    if (!(err instanceof AgentError) || err.code !== 'control_unavailable') throw err;
    return false;
  }
}

/** With the agent running: verified here against the files, then sent in batches over its socket. */
async function importThroughAgent(
  loaded: LoadedConfig,
  file: ImportFile,
  values: ImportValues,
): Promise<ImportReport> {
  const v = verifiedImport(file, await keyringOnDisk(loaded), values);
  const report = await sendToAgent(
    loaded,
    v.prepared.added.map((s) => s.jws),
  );
  return {
    ...report,
    duplicates: report.duplicates + v.prepared.duplicates,
    skipped: v.skipped,
    skippedRevoked: v.skippedRevoked,
  };
}

/**
 * With the agent stopped: under the state's lock, every op verified once, then stored through the store's batch path (KeyringStore.importPrepared: chunks of one
 * journal write each, applied once durable, audited per chunk, compacted at the end).
 */
async function importOffline(
  loaded: LoadedConfig,
  file: ImportFile,
  values: ImportValues,
): Promise<ImportReport> {
  const lock = await acquireInstanceLock(loaded.stateDir, 'vehicle-agent keys import');
  try {
    // Verified against the files read-only first, so a refused import leaves them untouched.
    const onDisk = await keyringOnDisk(loaded);
    let v = verifiedImport(file, onDisk, values);
    const state = await openVehicleState(loaded.stateDir, silentLogger, await authVerifiers());
    try {
      await state.keyring.whenMaterialized();
      // The same files under the same lock: the ops verified for one keyring hold for the other
      // (verified once), unless opening found what makes them differ (a repair, a suspect).
      if (state.keyring.digest() !== onDisk.digest() || state.keyring.suspectCredentials().size > 0)
        v = verifiedImport(file, state.keyring, values);
      let added = 0;
      let batches = 0;
      const total = v.prepared.added.length;
      const onStored = async (ops: readonly KeyringOp[]) => {
        added += ops.length;
        batches++;
        await auditOffline(loaded, [
          { type: 'keyring.import', source: 'cli', ops: ops.length, opIds: ops.map((o) => o.id) },
        ]);
      };
      let result: MergeResult;
      try {
        result = await state.keyringStore.importPrepared(v.prepared, onStored);
      } catch (e) {
        const err = toAgentError(e, 'state_io');
        throw new AgentError(
          err.code,
          `${err.message} (after ${added} of ${total} operations were stored in ${batches} batch(es): run the import again for the rest)`,
          { ...err.details, stored: added },
          { cause: err },
        );
      }
      return {
        added: result.added.length,
        duplicates: result.duplicates,
        batches,
        skipped: v.skipped,
        skippedRevoked: v.skippedRevoked,
      };
    } finally {
      await state.close();
    }
  } finally {
    await lock.release();
  }
}

/** Stores the ops through the running agent, one request per batch. */
async function sendToAgent(
  loaded: LoadedConfig,
  ops: readonly string[],
): Promise<{ added: number; duplicates: number; batches: number }> {
  if (ops.length === 0) return { added: 0, duplicates: 0, batches: 0 };
  let added = 0;
  let duplicates = 0;
  let batches = 0;
  const stored = (e: unknown): AgentError => {
    const err = toAgentError(e, 'state_io');
    return new AgentError(
      err.code,
      `${err.message} (after ${added} of ${ops.length} operations were stored in ${batches} batch(es): run the import again for the rest)`,
      { ...err.details, stored: added },
      { cause: err },
    );
  };
  let batch: string[] = [];
  let bytes = 0;
  const send = async () => {
    const r = await controlCall(loaded.socketPath, 'keys.add', { ops: batch });
    if (r.rejected.length > 0) throw new AgentError('import_invalid', r.rejected[0]?.message ?? 'refused');
    added += r.added.length;
    duplicates += r.duplicates;
    batches++;
    batch = [];
    bytes = 0;
  };
  try {
    for (const op of ops) {
      if (batch.length > 0 && bytes + op.length > SOCKET_BATCH_BYTES) await send();
      batch.push(op);
      bytes += op.length + 3;
    }
    if (batch.length > 0) await send();
  } catch (err) {
    throw stored(err);
  }
  return { added, duplicates, batches };
}
