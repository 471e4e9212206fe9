import { createHash, type KeyObject } from 'node:crypto';
import { type Action, roleAllows } from '../access/policy.js';
import type { Code } from '../core/codes.js';
import { AgentError } from '../core/errors.js';
import { b64url } from '../crypto/encoding.js';
import { MAX_JWS_LENGTH, parseJws, signJws, verifyJws } from '../crypto/jws.js';
import type { SignerLookup } from './command.js';

/**
 * A signed set of keyring operations, as carried on `<base>/keyring` (from the cloud) and
 * `<base>/keyring/vehicle` (from the vehicle). Pure.
 *
 * Message: {"set": "<JWS compact>", "ops": ["<op JWS>", ...]}
 * The JWS (typ vehicle-agent.keyring-set) signs {vid, iat, count, opsDigest} where
 * opsDigest = base64url(SHA-256(ops joined with "\n")), so the signature covers the exact list
 * however long it grows (a compact JWS is capped at 64 KiB; a keyring is not). Each operation is
 * also signed on its own and verified again when merged: the set's signature says who published
 * the list, the operations' signatures say what is allowed.
 */

export const KEYRING_SET_TYP = 'vehicle-agent.keyring-set';
/** Most operations one set may carry. */
export const MAX_SET_OPS = 10_000;
/** Largest set message accepted, bytes. */
export const MAX_SET_BYTES = 16 * 1024 * 1024;

export interface KeyringSetManifest {
  readonly vid: string;
  readonly iat: number;
  readonly count: number;
  readonly opsDigest: string;
}

export interface KeyringSetMessage {
  readonly set: string;
  readonly ops: readonly string[];
}

export type KeyringSetCheck =
  | { readonly ok: true; readonly ops: readonly string[]; readonly kid: string; readonly iat: number }
  | { readonly ok: false; readonly code: Code; readonly message: string };

export function opsDigest(ops: readonly string[]): string {
  return b64url(createHash('sha256').update(ops.join('\n'), 'utf8').digest());
}

export function signKeyringSet(
  vehicleId: string,
  ops: readonly string[],
  privateKey: KeyObject,
  kid: string,
  iatSeconds: number,
): string {
  const manifest: KeyringSetManifest = {
    vid: vehicleId,
    iat: iatSeconds,
    count: ops.length,
    opsDigest: opsDigest(ops),
  };
  const message: KeyringSetMessage = {
    set: signJws(manifest, privateKey, kid, KEYRING_SET_TYP),
    ops: [...ops],
  };
  return JSON.stringify(message);
}

/** Parses the message and its manifest without checking who signed it. Throws jws_malformed. */
export function parseKeyringSet(payload: string | Uint8Array): {
  readonly message: KeyringSetMessage;
  readonly manifest: KeyringSetManifest;
  readonly kid: string;
} {
  const bad = (message: string) => new AgentError('jws_malformed', `keyring set: ${message}`);
  const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
  if (size > MAX_SET_BYTES) throw bad(`larger than ${MAX_SET_BYTES} bytes`);
  let raw: unknown;
  try {
    raw = JSON.parse(typeof payload === 'string' ? payload : Buffer.from(payload).toString('utf8'));
  } catch {
    throw bad('not JSON');
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad('not an object');
  const { set, ops } = raw as { set?: unknown; ops?: unknown };
  if (typeof set !== 'string') throw bad('set must be a JWS');
  if (!Array.isArray(ops) || ops.length > MAX_SET_OPS)
    throw bad(`ops must be a list of at most ${MAX_SET_OPS}`);
  if (!ops.every((o) => typeof o === 'string' && o.length > 0 && o.length <= MAX_JWS_LENGTH))
    throw bad('ops must be keyring operation JWS strings');
  const jws = parseJws(set);
  if (jws.header.typ !== KEYRING_SET_TYP) throw bad(`set typ must be ${KEYRING_SET_TYP}`);
  const m = jws.payload;
  if (
    typeof m.vid !== 'string' ||
    typeof m.iat !== 'number' ||
    !Number.isSafeInteger(m.iat) ||
    typeof m.count !== 'number' ||
    typeof m.opsDigest !== 'string'
  ) {
    throw bad('the manifest needs vid, iat, count and opsDigest');
  }
  const manifest: KeyringSetManifest = { vid: m.vid, iat: m.iat, count: m.count, opsDigest: m.opsDigest };
  if (manifest.count !== ops.length || manifest.opsDigest !== opsDigest(ops as string[]))
    throw bad('ops do not match the signed manifest');
  return { message: { set, ops: ops as string[] }, manifest, kid: jws.header.kid };
}

const SET_ACTIONS: readonly Action[] = ['keys.grant', 'keys.revoke'];

/**
 * Checks a set from the cloud: parse, vehicle id, a signer that is known, not revoked, and whose
 * role may change the keyring (owner or service), and the signature.
 */
export function checkKeyringSet(
  payload: string | Uint8Array,
  ctx: { readonly vehicleId: string; readonly keys: SignerLookup; readonly nowMs: number },
): KeyringSetCheck {
  let parsed: ReturnType<typeof parseKeyringSet>;
  try {
    parsed = parseKeyringSet(payload);
  } catch (err) {
    const e = err instanceof AgentError ? err : new AgentError('jws_malformed', String(err));
    return { ok: false, code: e.code, message: e.message };
  }
  const { manifest, kid, message } = parsed;
  if (manifest.vid !== ctx.vehicleId)
    return { ok: false, code: 'wrong_vehicle', message: `keyring set is for vehicle ${manifest.vid}` };
  const status = ctx.keys.byId(kid);
  const key = ctx.keys.keyOf(kid);
  if (!status || !key)
    return { ok: false, code: 'unknown_kid', message: `no signing key ${kid} in the keyring` };
  if (status.revoked) return { ok: false, code: 'revoked_kid', message: `key ${kid} is revoked` };
  const { credential } = status;
  if (
    (credential.notBefore !== undefined && ctx.nowMs < credential.notBefore) ||
    (credential.notAfter !== undefined && ctx.nowMs >= credential.notAfter)
  ) {
    return { ok: false, code: 'role_not_allowed', message: `key ${kid} is outside its validity window` };
  }
  if (!SET_ACTIONS.some((a) => roleAllows(credential.role, a)))
    return {
      ok: false,
      code: 'role_not_allowed',
      message: `a ${credential.role} key may not publish keyring sets`,
    };
  if (!verifyJws(parseJws(message.set), key))
    return { ok: false, code: 'bad_signature', message: 'keyring set signature did not verify' };
  return { ok: true, ops: message.ops, kid, iat: manifest.iat };
}
