import { join } from 'node:path';
import type { CredentialStatus } from '../../access/credential-lookup.js';
import { credentialToWire } from '../../access/credential-wire.js';
import type { KeyringOp, MergeResult } from '../../access/keyring.js';
import type { LoadedConfig } from '../../config/load.js';
import { AgentError, toAgentError } from '../../core/errors.js';
import { silentLogger } from '../../core/logger.js';
import { isCredentialId } from '../../crypto/keys.js';
import { KEYS_PAGE_MAX } from '../../host/control-api.js';
import { AuditLog } from '../../store/audit-log.js';
import { acquireInstanceLock } from '../../store/instance-lock.js';
import { readSignerKey } from '../../store/key-files.js';
import { STATE_FILES } from '../../store/provision.js';
import { openVehicleState } from '../../store/vehicle-state.js';
import { COMMON_OPTIONS, loadFor, out, parse, requireString } from '../args.js';
import { controlCall } from '../control-client.js';
import { buildGrant, buildRevoke, GRANT_OPTIONS, notCredentialId } from './signing.js';

export const KEYS_HELP = `vehicle-agent keys list [--json]
vehicle-agent keys grant --key OWNER.pem --kind phone|signer --public KEY.pub.pem --role ROLE
                         [--name TEXT] [--not-before TIME] [--not-after TIME] [--passive]
vehicle-agent keys grant --key OWNER.pem --kind uid --uid HEX --role ROLE --insecure-uid [...]
vehicle-agent keys grant --key OWNER.pem --kind passkey --public KEY.pub.pem --credential-id B64URL
                         --rp-id HOST --role ROLE [...]
vehicle-agent keys revoke --key OWNER.pem --id CREDENTIAL_ID [--reason TEXT]
vehicle-agent keys export [--json] [--out FILE]
vehicle-agent keys import FILE [--key OWNER.pem --insecure-uid] [--json]

Grants and revokes are signed with the --key private key (the owner root key, an owner key, or for
revoke a service key) and added to the keyring: through the running agent when it is up, else
directly to the state directory. ROLE is owner, driver, guest (needs --not-after) or service.
TIME is ISO 8601 (2026-12-24T18:00:00Z) or relative (+2h, +7d).
A change is stored before it takes effect: when it cannot be written (a full disk) it fails with
[state_io] and the keyring is unchanged (a refused grant opens nothing, a refused revoke did not
happen); try again once the disk takes writes.

export writes every signed keyring operation (one JWS per line, or JSON with --json); they stay
verifiable, so an export holds no secret. import reads such a file (or a keyring set) and, for UID
cards from another system, a CSV with a header row (uid,role,name,not_before,not_after) or a JSON
list of such objects, signed here with --key and allowed only with --insecure-uid: UID-only cards
can be cloned. Every row and operation is checked before the first write ([import_invalid] names
the bad one; nothing is imported); they are then stored in batches. See docs/backup.md.`;

/**
 * How long a grant or revoke waits for the running agent's answer. Right after a start with a
 * large keyring the agent answers a change only once its ops are decoded (seconds at 100 000 keys,
 * longer on a Pi), past the socket's usual 10 s; the change is made whole or not at all, so
 * waiting is safe, and a `busy` after 10 s would hide a change that was then made.
 */
const KEYS_ADD_TIMEOUT_MS = 60_000;

/** What building ops needs of the vehicle (the running agent's `vehicle` answer, or the state directory). */
interface VehicleInfo {
  readonly vehicleId: string;
}

/** Runs `fn` against the running agent (ops over the control socket) or, when it is down, the state directory. */
async function applyOps(
  values: { config?: string | undefined; 'state-dir'?: string | undefined },
  build: (vehicle: VehicleInfo) => string[],
): Promise<MergeResult> {
  const loaded = loadFor(values);
  try {
    const info = await controlCall(loaded.socketPath, 'vehicle', {});
    return await controlCall(loaded.socketPath, 'keys.add', { ops: build(info) }, KEYS_ADD_TIMEOUT_MS);
  } catch (err) {
    if (!(err instanceof AgentError) || err.code !== 'control_unavailable') throw err;
  }
  const lock = await acquireInstanceLock(loaded.stateDir, 'vehicle-agent keys');
  try {
    const state = await openVehicleState(loaded.stateDir, silentLogger);
    try {
      const ops = build({ vehicleId: state.identity.vehicleId });
      // As the agent does it: verified, stored, and only then applied (see Agent.addKeyringOps).
      const prepared = state.keyring.prepare(ops);
      if (prepared.added.length > 0) {
        try {
          await state.keyringStore.persist(prepared.added);
        } catch (err) {
          const e = toAgentError(err, 'state_io');
          await auditOffline(loaded, [
            {
              type: 'keyring.failed',
              source: 'cli',
              code: 'state_io',
              detail: e.message,
              ops: prepared.added.map((s) => ({
                opId: s.op.id,
                op: s.op.op,
                credentialId: credentialOf(s.op),
              })),
            },
          ]);
          throw new AgentError(
            'state_io',
            `the keyring change could not be stored, so it was not made (${e.message})`,
            { opIds: prepared.added.map((s) => s.op.id) },
            { cause: e },
          );
        }
      }
      const result = state.keyring.apply(prepared);
      await auditOffline(
        loaded,
        result.added.map((op) => ({
          type: `keyring.${op.op}`,
          source: 'cli',
          opId: op.id,
          credentialId: credentialOf(op),
        })),
      );
      return result;
    } finally {
      await state.close();
    }
  } finally {
    await lock.release();
  }
}

function credentialOf(op: KeyringOp): string {
  return op.op === 'grant' ? op.cred.id : op.credId;
}

/**
 * Records offline keyring changes in the agent's audit log (the agent is down: this command holds
 * the instance lock). Best effort: a log that cannot be written does not undo a stored change;
 * it is said on stderr.
 */
export async function auditOffline(
  loaded: LoadedConfig,
  events: readonly { readonly type: string; readonly [field: string]: unknown }[],
): Promise<void> {
  if (events.length === 0) return;
  try {
    const log = await AuditLog.open(join(loaded.stateDir, STATE_FILES.audit), {
      maxFileBytes: loaded.config.audit.maxFileBytes,
      keepFiles: loaded.config.audit.keepFiles,
    });
    try {
      for (const event of events) await log.append(event);
    } finally {
      await log.close();
    }
  } catch (err) {
    const e = toAgentError(err, 'state_io');
    process.stderr.write(`warning: the audit log could not record this [${e.code}]: ${e.message}\n`);
  }
}

function report(result: MergeResult, json: boolean | undefined, what: string): number {
  if (json) out(JSON.stringify(result));
  if (result.rejected.length > 0) {
    for (const r of result.rejected) process.stderr.write(`refused [${r.code}]: ${r.message}\n`);
    return 1;
  }
  if (!json) out(result.added.length > 0 ? `${what}` : `${what} (already in the keyring)`);
  return 0;
}

export async function keys(argv: readonly string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'list':
      return await list(rest);
    case 'grant':
      return await grant(rest);
    case 'revoke':
      return await revoke(rest);
    case 'export':
      return await (await import('./keys-transfer.js')).keysExport(rest);
    case 'import':
      return await (await import('./keys-transfer.js')).keysImport(rest);
    default:
      throw new AgentError(
        'bad_arguments',
        `keys needs list, grant, revoke, export or import\n\n${KEYS_HELP}`,
      );
  }
}

/**
 * The keyring's credentials, or with `ids` only those it has: from the running agent, else from
 * the state folder. A grant or revoke asks about its own credential only: the whole list is tens
 * of MB at 100 000 keys, and fetching it after a grant made the grant report `busy`.
 */
async function readCredentials(
  values: {
    config?: string | undefined;
    'state-dir'?: string | undefined;
  },
  ids?: readonly string[],
): Promise<readonly CredentialStatus[]> {
  const loaded = loadFor(values);
  try {
    if (ids !== undefined) return (await controlCall(loaded.socketPath, 'keys.list', { ids })).credentials;
    return await listAllPages(loaded.socketPath);
  } catch (err) {
    if (!(err instanceof AgentError) || err.code !== 'control_unavailable') throw err;
  }
  const lock = await acquireInstanceLock(loaded.stateDir, 'vehicle-agent keys');
  try {
    const state = await openVehicleState(loaded.stateDir, silentLogger);
    const credentials =
      ids === undefined ? state.keyring.list() : ids.flatMap((id) => state.keyring.byId(id) ?? []);
    await state.close();
    return credentials;
  } finally {
    await lock.release();
  }
}

/**
 * Every credential from the running agent, a page per request (id order): each page costs the
 * agent a few ms, and between pages it serves keys at the reader, the cloud and other clients.
 * A credential granted while the pages are read shows if its id sorts after the page being read.
 */
export async function listAllPages(socketPath: string): Promise<CredentialStatus[]> {
  const all: CredentialStatus[] = [];
  let after: string | undefined;
  for (;;) {
    const page = await controlCall(
      socketPath,
      'keys.list',
      after === undefined ? { limit: KEYS_PAGE_MAX } : { limit: KEYS_PAGE_MAX, after },
    );
    for (const c of page.credentials) all.push(c);
    if (page.next === undefined) return all;
    after = page.next;
  }
}

async function list(argv: readonly string[]): Promise<number> {
  const { values } = parse(argv, COMMON_OPTIONS);
  const credentials = await readCredentials(values);
  if (values.json) {
    out(JSON.stringify(credentials.map((s) => ({ ...credentialToWire(s.credential), revoked: s.revoked }))));
    return 0;
  }
  for (const s of credentials) {
    const c = s.credential;
    const window =
      c.notBefore || c.notAfter
        ? ` ${c.notBefore ? new Date(c.notBefore).toISOString() : '…'}..${c.notAfter ? new Date(c.notAfter).toISOString() : '…'}`
        : '';
    const flags = [
      s.revoked ? 'REVOKED' : '',
      c.options.passive ? 'passive' : '',
      c.options.insecureUid ? 'insecure-uid' : '',
    ]
      .filter(Boolean)
      .join(',');
    out(
      `${c.id.padEnd(32)} ${c.role.padEnd(7)} ${(c.name ?? '').padEnd(20)}${window}${flags ? ` [${flags}]` : ''}`,
    );
  }
  return 0;
}

async function grant(argv: readonly string[]): Promise<number> {
  const { vehicle: _vehicle, ...grantOptions } = GRANT_OPTIONS;
  const { values } = parse(argv, { ...COMMON_OPTIONS, ...grantOptions });
  // Read the signer and the public key before contacting the agent, so a bad file fails fast.
  readSignerKey(requireString(values.key, 'key'));
  const result = await applyOps(values, (vehicle) => [buildGrant({ ...values, vehicle: vehicle.vehicleId })]);
  const granted = result.added[0]?.op === 'grant' ? result.added[0].cred.id : undefined;
  // A revocation is final: a later grant of the same key is kept, but changes nothing.
  if (
    granted !== undefined &&
    (await readCredentials(values, [granted])).some((c) => c.credential.id === granted && c.revoked)
  ) {
    throw new AgentError(
      'revoked',
      `${granted} was revoked, and a revocation is final: this grant does not bring it back. ` +
        'Make a new key (vehicle-agent keygen) and grant that one',
      { credentialId: granted },
    );
  }
  return report(result, values.json, `granted ${granted ?? ''}`.trim());
}

async function revoke(argv: readonly string[]): Promise<number> {
  const { values } = parse(argv, {
    ...COMMON_OPTIONS,
    key: { type: 'string', short: 'k' },
    id: { type: 'string' },
    reason: { type: 'string' },
  });
  readSignerKey(requireString(values.key, 'key'));
  const credId = requireString(values.id, 'id');
  if (!isCredentialId(credId)) {
    throw new AgentError('bad_arguments', notCredentialId(credId));
  }
  // Revoking twice stores nothing new: say so instead of signing a second revocation.
  // A suspect credential (its state was damaged) is revoked again on purpose: that explains the loss.
  if (
    (await readCredentials(values, [credId])).some(
      (c) => c.credential.id === credId && c.revoked && c.suspect === undefined,
    )
  ) {
    if (values.json) out(JSON.stringify({ added: [], duplicates: 0, rejected: [], alreadyRevoked: true }));
    else out(`${credId} is already revoked; nothing changed`);
    return 0;
  }
  const result = await applyOps(values, (vehicle) => [
    buildRevoke({ ...values, vehicle: vehicle.vehicleId }),
  ]);
  return report(result, values.json, `revoked ${credId}`);
}
