import { AgentError } from '../core/errors.js';
import {
  CREDENTIAL_KINDS,
  type Credential,
  type CredentialKind,
  type CredentialOptions,
  type PublicJwk,
  ROLES,
  type Role,
} from '../core/types.js';
import { fromB64url } from '../crypto/encoding.js';
import { credentialIdFor, keyCredentialId, publicKeyFromJwk, requireKeyForKind } from '../crypto/keys.js';

/** A credential as it travels inside a signed grant: times as ISO 8601 strings. */
export interface CredentialWire {
  readonly id: string;
  readonly kind: CredentialKind;
  readonly role: Role;
  readonly name?: string;
  readonly notBefore?: string;
  readonly notAfter?: string;
  readonly publicKey?: PublicJwk;
  readonly uidHash?: string;
  readonly keyHandle?: string;
  readonly rpId?: string;
  readonly options?: CredentialOptions;
}

function bad(message: string, field: string): AgentError {
  return new AgentError('op_malformed', `credential ${field}: ${message}`, { field });
}

function isoToMs(value: unknown, field: string): number | undefined {
  if (value === undefined) return undefined;
  if (
    typeof value !== 'string' ||
    !/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/.test(value)
  ) {
    throw bad('must be an ISO 8601 date-time with a zone, e.g. 2026-12-24T18:00:00Z', field);
  }
  const ms = Date.parse(value);
  if (Number.isNaN(ms)) throw bad('is not a valid date-time', field);
  return ms;
}

/**
 * The id a credential must carry: derived from what identifies it, so one id can never be bound
 * to two different keys or cards.
 */
export function expectedCredentialId(
  kind: CredentialKind,
  c: Omit<Credential, 'id' | 'role' | 'options' | 'kind'>,
): string {
  switch (kind) {
    case 'phone':
    case 'signer':
      if (!c.publicKey) throw bad(`a ${kind} credential needs publicKey`, 'publicKey');
      return keyCredentialId(kind, c.publicKey);
    case 'fido':
      if (!c.keyHandle) throw bad('a fido credential needs keyHandle', 'keyHandle');
      if (!c.publicKey) throw bad('a fido credential needs publicKey', 'publicKey');
      return credentialIdFor('fido', fromB64url(c.keyHandle));
    case 'passkey':
      // The WebAuthn credential id names the passkey; its public key and rpId are checked as fields.
      if (!c.keyHandle)
        throw bad('a passkey credential needs keyHandle (its WebAuthn credential id)', 'keyHandle');
      if (!c.publicKey) throw bad('a passkey credential needs publicKey', 'publicKey');
      if (!c.rpId) throw bad('a passkey credential needs rpId', 'rpId');
      return credentialIdFor('passkey', fromB64url(c.keyHandle));
    case 'ntag424':
    case 'uid':
      if (!c.uidHash) throw bad(`a ${kind} credential needs uidHash`, 'uidHash');
      return credentialIdFor(kind, Buffer.from(c.uidHash, 'utf8'));
  }
}

export function parseJwk(value: unknown): PublicJwk {
  if (typeof value !== 'object' || value === null) throw bad('must be a public JWK', 'publicKey');
  const { kty, crv, x, y, d } = value as Record<string, unknown>;
  if (d !== undefined) throw bad('must not contain a private key', 'publicKey');
  if (kty === 'EC' && crv === 'P-256' && typeof x === 'string' && typeof y === 'string') {
    const jwk: PublicJwk = { kty, crv, x, y };
    publicKeyFromJwk(jwk);
    return jwk;
  }
  if (kty === 'OKP' && crv === 'Ed25519' && typeof x === 'string') {
    const jwk: PublicJwk = { kty, crv, x };
    publicKeyFromJwk(jwk);
    return jwk;
  }
  throw bad('must be a P-256 (EC) or Ed25519 (OKP) public JWK', 'publicKey');
}

const WIRE_KEYS = new Set([
  'id',
  'kind',
  'role',
  'name',
  'notBefore',
  'notAfter',
  'publicKey',
  'uidHash',
  'keyHandle',
  'rpId',
  'options',
]);

/** Strictly parses a credential from a grant; the id must match the credential's identity. */
export function parseCredentialWire(value: unknown): Credential {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw bad('must be an object', 'cred');
  const w = value as Record<string, unknown>;
  for (const key of Object.keys(w)) if (!WIRE_KEYS.has(key)) throw bad(`unknown field ${key}`, key);
  if (typeof w.kind !== 'string' || !(CREDENTIAL_KINDS as readonly string[]).includes(w.kind)) {
    throw bad(`must be one of ${CREDENTIAL_KINDS.join(', ')}`, 'kind');
  }
  const kind = w.kind as CredentialKind;
  if (typeof w.role !== 'string' || !(ROLES as readonly string[]).includes(w.role)) {
    throw bad(`must be one of ${ROLES.join(', ')}`, 'role');
  }
  const role = w.role as Role;
  if (w.name !== undefined && (typeof w.name !== 'string' || w.name.length > 100))
    throw bad('must be a string of at most 100 characters', 'name');
  const notBefore = isoToMs(w.notBefore, 'notBefore');
  const notAfter = isoToMs(w.notAfter, 'notAfter');
  if (notBefore !== undefined && notAfter !== undefined && notAfter <= notBefore)
    throw bad('must be after notBefore', 'notAfter');
  const publicKey = w.publicKey === undefined ? undefined : parseJwk(w.publicKey);
  if (publicKey !== undefined) requireKeyForKind(kind, publicKey, 'credential publicKey');
  if (w.uidHash !== undefined && (typeof w.uidHash !== 'string' || !/^[0-9a-f]{32}$/.test(w.uidHash))) {
    throw bad('must be 32 lowercase hex characters', 'uidHash');
  }
  if (w.keyHandle !== undefined) {
    if (typeof w.keyHandle !== 'string') throw bad('must be base64url', 'keyHandle');
    let kh: Uint8Array;
    try {
      kh = fromB64url(w.keyHandle);
    } catch {
      throw bad('must be base64url', 'keyHandle');
    }
    if (kh.length < 16 || kh.length > 255) throw bad('must be 16 to 255 bytes', 'keyHandle');
  }
  if (w.rpId !== undefined) {
    if (typeof w.rpId !== 'string' || !/^[A-Za-z0-9.:[\]-]{1,253}$/.test(w.rpId))
      throw bad('must be a host name (1..253 characters)', 'rpId');
    if (kind !== 'passkey') throw bad('rpId applies to passkey credentials only', 'rpId');
  }
  const options: CredentialOptions = {};
  if (w.options !== undefined) {
    if (typeof w.options !== 'object' || w.options === null) throw bad('must be an object', 'options');
    const o = w.options as Record<string, unknown>;
    for (const key of Object.keys(o)) {
      if (key !== 'passive' && key !== 'insecureUid') throw bad(`unknown option ${key}`, `options.${key}`);
      if (typeof o[key] !== 'boolean') throw bad('must be true or false', `options.${key}`);
    }
    if (o.passive === true) Object.assign(options, { passive: true });
    if (o.insecureUid === true) Object.assign(options, { insecureUid: true });
  }
  if (role === 'guest' && notAfter === undefined)
    throw bad('a guest credential needs notAfter (guests are bounded in time)', 'notAfter');
  if (options.insecureUid && kind !== 'uid')
    throw bad('insecureUid applies to uid credentials only', 'options.insecureUid');
  if (options.passive && kind !== 'phone')
    throw bad('passive applies to phone credentials only', 'options.passive');
  const body = {
    ...(w.name !== undefined ? { name: w.name as string } : {}),
    ...(notBefore !== undefined ? { notBefore } : {}),
    ...(notAfter !== undefined ? { notAfter } : {}),
    ...(publicKey !== undefined ? { publicKey } : {}),
    ...(w.uidHash !== undefined ? { uidHash: w.uidHash as string } : {}),
    ...(w.keyHandle !== undefined ? { keyHandle: w.keyHandle as string } : {}),
    ...(w.rpId !== undefined ? { rpId: w.rpId as string } : {}),
  };
  const id = expectedCredentialId(kind, body);
  if (w.id !== id) throw bad(`must be ${id} (derived from the credential's key or card)`, 'id');
  return { id, kind, role, options, ...body };
}

export function credentialToWire(c: Credential): CredentialWire {
  return {
    id: c.id,
    kind: c.kind,
    role: c.role,
    ...(c.name !== undefined ? { name: c.name } : {}),
    ...(c.notBefore !== undefined ? { notBefore: new Date(c.notBefore).toISOString() } : {}),
    ...(c.notAfter !== undefined ? { notAfter: new Date(c.notAfter).toISOString() } : {}),
    ...(c.publicKey !== undefined ? { publicKey: c.publicKey } : {}),
    ...(c.uidHash !== undefined ? { uidHash: c.uidHash } : {}),
    ...(c.keyHandle !== undefined ? { keyHandle: c.keyHandle } : {}),
    ...(c.rpId !== undefined ? { rpId: c.rpId } : {}),
    ...(c.options.passive || c.options.insecureUid ? { options: c.options } : {}),
  };
}
