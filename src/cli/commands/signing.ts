import { readFileSync } from 'node:fs';
import { credentialToWire, expectedCredentialId, parseCredentialWire } from '../../access/credential-wire.js';
import { signGrant, signRevoke } from '../../access/keyring.js';
import {
  COMMAND_NAMES,
  type CommandName,
  type CommandPayload,
  newJti,
  parseCommandArgs,
  signCommand,
} from '../../cloud/command.js';
import { signKeyringSet } from '../../cloud/keyring-set.js';
import { AgentError } from '../../core/errors.js';
import { type Credential, type CredentialKind, ROLES, type Role } from '../../core/types.js';
import { fromHex } from '../../crypto/encoding.js';
import { isCredentialId, publicJwkOf, requireKeyForKind, uidHash } from '../../crypto/keys.js';
import { readKeyFile, readSignerKey } from '../../store/key-files.js';
import { parseTime, requireString } from '../args.js';

/**
 * Building and signing what goes to the vehicle from the cloud side: commands, keyring operations
 * and keyring sets. Shared by `vehicle-agent sign` and `vehicle-agent cloud` (no MQTT here).
 */

export const COMMAND_OPTIONS = {
  key: { type: 'string', short: 'k' },
  vehicle: { type: 'string' },
  args: { type: 'string' },
  ops: { type: 'string', multiple: true },
  ttl: { type: 'string', default: '30' },
  counter: { type: 'string' },
  jti: { type: 'string' },
} as const;

export interface CommandValues {
  readonly key?: string | undefined;
  readonly vehicle?: string | undefined;
  readonly args?: string | undefined;
  readonly ops?: string[] | undefined;
  readonly ttl?: string | undefined;
  readonly counter?: string | undefined;
  readonly jti?: string | undefined;
}

/** Reads keyring operation JWS from files: one per line, blank lines and # comments skipped. */
export function readOpsFiles(paths: readonly string[]): string[] {
  const ops: string[] = [];
  for (const path of paths) {
    let text: string;
    try {
      text = readFileSync(path === '-' ? 0 : path, 'utf8');
    } catch (err) {
      throw new AgentError('bad_arguments', `cannot read ${path}: ${(err as Error).message}`);
    }
    for (const line of text.split('\n')) {
      const t = line.trim();
      if (t !== '' && !t.startsWith('#')) ops.push(t);
    }
  }
  return ops;
}

function wholeNumber(text: string, name: string, min: number): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min)
    throw new AgentError('bad_arguments', `--${name} must be a whole number of at least ${min}`);
  return n;
}

export function commandName(text: string | undefined): CommandName {
  if (text === undefined || !(COMMAND_NAMES as readonly string[]).includes(text))
    throw new AgentError('bad_arguments', `name a command: ${COMMAND_NAMES.join(', ')}`);
  return text as CommandName;
}

/**
 * Builds and signs a command. The counter defaults to the current time in milliseconds: any
 * strictly rising number per key will do, and the clock rises without a counter file.
 */
export function buildCommand(
  cmd: CommandName,
  values: CommandValues,
  now = Date.now(),
): { readonly jws: string; readonly payload: CommandPayload; readonly kid: string } {
  const signer = readSignerKey(requireString(values.key, 'key'));
  const vid = requireString(values.vehicle, 'vehicle');
  let args: Record<string, unknown> = {};
  if (cmd === 'keys.grant' || cmd === 'keys.revoke') {
    args = { ops: readOpsFiles(values.ops ?? []) };
  } else if (values.args !== undefined) {
    try {
      args = JSON.parse(values.args) as Record<string, unknown>;
    } catch {
      throw new AgentError('bad_arguments', '--args must be a JSON object');
    }
  }
  parseCommandArgs(cmd, args);
  const ttl = wholeNumber(values.ttl ?? '30', 'ttl', 1);
  const iat = Math.floor(now / 1000);
  const payload: CommandPayload = {
    vid,
    cmd,
    args,
    jti: values.jti ?? newJti(),
    iat,
    exp: iat + ttl,
    ctr: values.counter === undefined ? now : wholeNumber(values.counter, 'counter', 0),
  };
  return { jws: signCommand(payload, signer.key, signer.id), payload, kid: signer.id };
}

export const GRANT_OPTIONS = {
  key: { type: 'string', short: 'k' },
  vehicle: { type: 'string' },
  kind: { type: 'string' },
  public: { type: 'string' },
  uid: { type: 'string' },
  role: { type: 'string' },
  name: { type: 'string' },
  'not-before': { type: 'string' },
  'not-after': { type: 'string' },
  passive: { type: 'boolean' },
  'insecure-uid': { type: 'boolean' },
  'credential-id': { type: 'string' },
  'rp-id': { type: 'string' },
} as const;

/** A signed grant for `--vehicle`, made without the vehicle (for the cloud). */
export function buildGrant(values: {
  readonly key?: string | undefined;
  readonly vehicle?: string | undefined;
  readonly kind?: string | undefined;
  readonly public?: string | undefined;
  readonly uid?: string | undefined;
  readonly role?: string | undefined;
  readonly name?: string | undefined;
  readonly 'not-before'?: string | undefined;
  readonly 'not-after'?: string | undefined;
  readonly passive?: boolean | undefined;
  readonly 'insecure-uid'?: boolean | undefined;
  readonly 'credential-id'?: string | undefined;
  readonly 'rp-id'?: string | undefined;
}): string {
  const signer = readSignerKey(requireString(values.key, 'key'));
  const vid = requireString(values.vehicle, 'vehicle');
  const kind = requireString(values.kind, 'kind') as CredentialKind;
  if (kind !== 'phone' && kind !== 'signer' && kind !== 'uid' && kind !== 'passkey')
    throw new AgentError(
      'bad_arguments',
      '--kind must be phone, signer, uid or passkey (FIDO keys and NTAG 424 cards are enrolled at the vehicle: vehicle-agent enroll card)',
    );
  const role = requireString(values.role, 'role') as Role;
  if (!(ROLES as readonly string[]).includes(role))
    throw new AgentError('bad_arguments', `--role must be one of ${ROLES.join(', ')}`);
  const common = {
    role,
    options: {
      ...(values.passive ? { passive: true } : {}),
      ...(values['insecure-uid'] ? { insecureUid: true } : {}),
    },
    ...(values['not-before'] !== undefined
      ? { notBefore: parseTime(values['not-before'], 'not-before') }
      : {}),
    ...(values['not-after'] !== undefined ? { notAfter: parseTime(values['not-after'], 'not-after') } : {}),
    ...(values.name ? { name: values.name } : {}),
  };
  let credential: Credential;
  if (kind === 'uid') {
    let uid: Uint8Array;
    try {
      uid = fromHex(requireString(values.uid, 'uid'));
    } catch {
      throw new AgentError('bad_arguments', '--uid must be hex');
    }
    const hash = uidHash(vid, uid);
    credential = { id: expectedCredentialId('uid', { uidHash: hash }), kind, uidHash: hash, ...common };
  } else if (kind === 'passkey') {
    const publicPath = requireString(values.public, 'public');
    const publicKey = publicJwkOf(readKeyFile(publicPath));
    requireKeyForKind(kind, publicKey, publicPath);
    const keyHandle = requireString(values['credential-id'], 'credential-id');
    const rpId = requireString(values['rp-id'], 'rp-id');
    const identity = { publicKey, keyHandle, rpId };
    let id: string;
    try {
      id = expectedCredentialId(kind, identity);
      credential = { id, kind, ...identity, ...common };
      // Checked as a grant is, so a bad credential id or rpId is said here, not by the vehicle.
      parseCredentialWire(credentialToWire(credential));
    } catch (err) {
      throw new AgentError(
        'bad_arguments',
        `--credential-id / --rp-id: ${err instanceof Error ? err.message : String(err)}`,
      );
    }
  } else {
    const publicPath = requireString(values.public, 'public');
    const publicKey = publicJwkOf(readKeyFile(publicPath));
    requireKeyForKind(kind, publicKey, publicPath);
    credential = { id: expectedCredentialId(kind, { publicKey }), kind, publicKey, ...common };
  }
  return signGrant(credential, vid, signer.key, signer.id, Math.floor(Date.now() / 1000));
}

export function buildRevoke(values: {
  readonly key?: string | undefined;
  readonly vehicle?: string | undefined;
  readonly id?: string | undefined;
  readonly reason?: string | undefined;
}): string {
  const signer = readSignerKey(requireString(values.key, 'key'));
  const id = requireString(values.id, 'id');
  // A revocation is permanent: sign one only for something that can be a credential.
  if (!isCredentialId(id)) throw new AgentError('bad_arguments', notCredentialId(id));
  return signRevoke(
    id,
    requireString(values.vehicle, 'vehicle'),
    signer.key,
    signer.id,
    Math.floor(Date.now() / 1000),
    values.reason,
  );
}

/** The message for `<base>/keyring`: the operations, signed as a set. */
export function buildKeyringSet(
  values: { readonly key?: string | undefined; readonly vehicle?: string | undefined },
  ops: readonly string[],
): string {
  const signer = readSignerKey(requireString(values.key, 'key'));
  return signKeyringSet(
    requireString(values.vehicle, 'vehicle'),
    ops,
    signer.key,
    signer.id,
    Math.floor(Date.now() / 1000),
  );
}

/** Why an id given to revoke is refused (keys revoke, sign revoke). */
export function notCredentialId(id: string): string {
  return `${id.slice(0, 80)} is not a credential id: ids look like phone:… or fido:… followed by 22 characters, as \`vehicle-agent keys list\` shows them`;
}
