import { createHash } from 'node:crypto';
import { credentialToWire, expectedCredentialId, parseCredentialWire } from '../access/credential-wire.js';
import { type AuthProof, type AuthVerifier, authRequestHash, type GrantOp } from '../access/keyring.js';
import { AgentError } from '../core/errors.js';
import { type Credential, type PublicJwk, ROLES, type Role } from '../core/types.js';
import { canonicalJson } from '../crypto/canonical.js';
import { b64url, bytesEqual, fromB64url } from '../crypto/encoding.js';
import { parseJws, verifyJws } from '../crypto/jws.js';
import { publicKeyFromJwk } from '../crypto/keys.js';
import { FIDO_APPROVAL_AUTH_METHOD, verifyFidoApprovalAuth } from './approve-auth.js';
import { enrollmentChallenge, verifyOwnerFidoSignature } from './u2f.js';

/**
 * Card enrollment at the vehicle, authorised by the owner (docs/keyring.md).
 * Pure: the request, the grant it leads to, and the keyring's verifiers of the owner's proof.
 *
 * The owner authorises a *request* before any card is tapped: which kind of card, which role,
 * which name and validity, for this vehicle, with a nonce from the vehicle and a short expiry.
 * Its canonical JSON is what the owner signs:
 *   - an owner signing key (the CLI's --owner-key): a JWS whose payload is the request;
 *   - an owner FIDO key tapped at the reader: U2F AUTHENTICATE whose challenge parameter is
 *     enrollmentChallenge(canonical request), with this vehicle's application parameter.
 * The vehicle learns the card's identity (public key and key handle, or UID hash) only at the tap,
 * so the grant is signed by the vehicle key and carries the owner's proof as its AuthProof. Its
 * verifier rebuilds the grant from the signed request plus the card identity in the proof and
 * requires it to hash to the grant itself: kind, role, name, validity, vehicle, the grant's id
 * (derived from the request, so one authorisation yields one grant) and its time all come from
 * what the owner signed; only the card identity is the vehicle's word.
 */

export const CARD_ENROLL_TYP = 'vehicle-agent.card-enroll';
/** AuthProof.method: the owner signed the request with a signing key (JWS). */
export const CARD_ENROLL_KEY_METHOD = 'nfc-card-enroll-key-v1';
/** AuthProof.method: the owner's FIDO key signed the request's challenge at the reader. */
export const CARD_ENROLL_FIDO_METHOD = 'nfc-card-enroll-fido-v1';

export const CARD_KINDS = ['fido', 'ntag424', 'uid'] as const;
export type CardKind = (typeof CARD_KINDS)[number];

/** What the owner authorises. Times: iat/exp in seconds; notBefore/notAfter ISO 8601 like grants. */
export interface CardEnrollRequest {
  readonly v: 1;
  readonly typ: typeof CARD_ENROLL_TYP;
  readonly vid: string;
  /** base64url, 16 random bytes from the vehicle: a request can be authorised once. */
  readonly nonce: string;
  readonly iat: number;
  readonly exp: number;
  readonly kind: CardKind;
  readonly role: Role;
  readonly name?: string;
  readonly notBefore?: string;
  readonly notAfter?: string;
}

/** What the vehicle learnt about the card at the tap. */
export interface CardIdentity {
  readonly publicKey?: PublicJwk;
  readonly keyHandle?: string;
  readonly uidHash?: string;
}

const REQUEST_KEYS = new Set([
  'v',
  'typ',
  'vid',
  'nonce',
  'iat',
  'exp',
  'kind',
  'role',
  'name',
  'notBefore',
  'notAfter',
]);
const FIDO_IDENTITY_KEYS = new Set(['publicKey', 'keyHandle', 'uidHash']);
const UID_IDENTITY_KEYS = new Set(['uidHash']);
const NONCE = /^[A-Za-z0-9_-]{22}$/;

function bad(message: string): AgentError {
  return new AgentError('bad_arguments', `card enrollment request: ${message}`);
}

/** Strictly parses a request (from a JWS payload, a proof or the control socket). */
export function parseCardEnrollRequest(value: unknown): CardEnrollRequest {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('must be an object');
  const r = value as Record<string, unknown>;
  for (const key of Object.keys(r)) if (!REQUEST_KEYS.has(key)) throw bad(`unknown field ${key}`);
  const { v, typ, vid, nonce, iat, exp, kind, role, name, notBefore, notAfter } = r;
  if (v !== 1 || typ !== CARD_ENROLL_TYP) throw bad(`v must be 1 and typ ${CARD_ENROLL_TYP}`);
  if (typeof vid !== 'string' || vid.length === 0 || vid.length > 64) throw bad('vid must be a vehicle id');
  if (typeof nonce !== 'string' || !NONCE.test(nonce)) throw bad('nonce must be 16 bytes of base64url');
  const seconds = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
  if (!seconds(iat) || !seconds(exp) || exp <= iat) throw bad('iat and exp must be seconds, exp after iat');
  if (typeof kind !== 'string' || !(CARD_KINDS as readonly string[]).includes(kind))
    throw bad(`kind must be one of ${CARD_KINDS.join(', ')}`);
  if (typeof role !== 'string' || !(ROLES as readonly string[]).includes(role))
    throw bad(`role must be one of ${ROLES.join(', ')}`);
  const optional = (x: unknown, what: string): string | undefined => {
    if (x === undefined) return undefined;
    if (typeof x !== 'string') throw bad(`${what} must be a string`);
    return x;
  };
  const request: CardEnrollRequest = {
    v: 1,
    typ: CARD_ENROLL_TYP,
    vid,
    nonce,
    iat,
    exp,
    kind: kind as CardKind,
    role: role as Role,
    ...(optional(name, 'name') === undefined ? {} : { name: name as string }),
    ...(optional(notBefore, 'notBefore') === undefined ? {} : { notBefore: notBefore as string }),
    ...(optional(notAfter, 'notAfter') === undefined ? {} : { notAfter: notAfter as string }),
  };
  // The credential fields must make a valid grant (name length, window order, guest needs notAfter).
  checkCredentialFields(request);
  return request;
}

function checkCredentialFields(request: CardEnrollRequest): void {
  try {
    const probe: CardIdentity =
      request.kind === 'fido'
        ? { keyHandle: b64url(new Uint8Array(16)), publicKey: PROBE_KEY }
        : { uidHash: '0'.repeat(32) };
    credentialFor(request, probe);
  } catch (err) {
    throw bad(err instanceof Error ? err.message : String(err));
  }
}

// A valid P-256 point (the generator), only to check the request's other fields.
const PROBE_KEY: PublicJwk = {
  kty: 'EC',
  crv: 'P-256',
  x: 'axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY',
  y: 'T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU',
};

/** The canonical bytes the owner signs. */
export function canonicalRequest(request: CardEnrollRequest): string {
  return canonicalJson(request);
}

/** The U2F challenge parameter an owner FIDO key signs to authorise `request`. */
export function fidoAuthorisationChallenge(request: CardEnrollRequest): Uint8Array {
  return enrollmentChallenge(canonicalRequest(request));
}

/** The grant's id: derived from the request, so one authorisation can produce one grant only. */
export function grantIdFor(request: CardEnrollRequest): string {
  const h = createHash('sha256')
    .update('vehicle-agent/card-enroll-grant/v1\0')
    .update(canonicalRequest(request))
    .digest();
  return b64url(h.subarray(0, 18));
}

/** The credential a request and a card identity describe (validated like any grant). */
export function credentialFor(request: CardEnrollRequest, card: CardIdentity): Credential {
  const allowed = request.kind === 'fido' ? FIDO_IDENTITY_KEYS : UID_IDENTITY_KEYS;
  for (const key of Object.keys(card)) if (!allowed.has(key)) throw bad(`unexpected card field ${key}`);
  const identity: CardIdentity = {
    ...(card.publicKey === undefined ? {} : { publicKey: card.publicKey }),
    ...(card.keyHandle === undefined ? {} : { keyHandle: card.keyHandle }),
    ...(card.uidHash === undefined ? {} : { uidHash: card.uidHash }),
  };
  return parseCredentialWire({
    id: expectedCredentialId(request.kind, identity),
    kind: request.kind,
    role: request.role,
    ...(request.name === undefined ? {} : { name: request.name }),
    ...(request.notBefore === undefined ? {} : { notBefore: request.notBefore }),
    ...(request.notAfter === undefined ? {} : { notAfter: request.notAfter }),
    ...identity,
    // A UID-only tag is enrolled only because the owner asked for exactly that.
    ...(request.kind === 'uid' ? { options: { insecureUid: true } } : {}),
  });
}

/** The grant (without auth) that enrolling `card` under `request` produces. */
export function grantFor(request: CardEnrollRequest, card: CardIdentity): GrantOp {
  return {
    v: 1,
    op: 'grant',
    id: grantIdFor(request),
    vid: request.vid,
    iat: request.iat,
    cred: credentialToWire(credentialFor(request, card)),
  };
}

// ── proofs ─────────────────────────────────────────────────────────────────────

/** AuthProof of a grant authorised with an owner signing key. */
export function keyAuthProof(by: string, requestJws: string, card: CardIdentity): AuthProof {
  return { by, method: CARD_ENROLL_KEY_METHOD, proof: { v: 1, jws: requestJws, card: { ...card } } };
}

export interface FidoAuthorisation {
  readonly flags: number;
  readonly counter: number;
  /** DER ECDSA signature. */
  readonly signature: Uint8Array;
}

/** AuthProof of a grant authorised by an owner FIDO key tapped at the reader. */
export function fidoAuthProof(
  by: string,
  request: CardEnrollRequest,
  assertion: FidoAuthorisation,
  card: CardIdentity,
): AuthProof {
  return {
    by,
    method: CARD_ENROLL_FIDO_METHOD,
    proof: {
      v: 1,
      req: { ...request },
      flags: assertion.flags,
      counter: assertion.counter,
      sig: b64url(assertion.signature),
      card: { ...card },
    },
  };
}

/** Verifies an owner's JWS over a request; returns the request or undefined. Pure. */
export function verifyRequestJws(jws: unknown, signer: Credential): CardEnrollRequest | undefined {
  if (typeof jws !== 'string' || signer.kind !== 'signer' || signer.publicKey === undefined) return undefined;
  try {
    const parsed = parseJws(jws);
    if (parsed.header.kid !== signer.id || parsed.header.typ !== CARD_ENROLL_TYP) return undefined;
    if (!verifyJws(parsed, publicKeyFromJwk(signer.publicKey))) return undefined;
    return parseCardEnrollRequest(parsed.payload);
  } catch {
    return undefined;
  }
}

/** Verifies an owner FIDO key's signature over a request's challenge. Pure. */
export function verifyFidoAuthorisation(
  request: CardEnrollRequest,
  assertion: FidoAuthorisation,
  owner: Credential,
): boolean {
  return verifyOwnerFidoSignature(owner, request.vid, fidoAuthorisationChallenge(request), assertion);
}

function proofCard(value: unknown): CardIdentity | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  return value as CardIdentity;
}

/** True when `request` + `card` rebuild exactly the grant whose hash is `requestHash`. */
function rebuildsGrant(request: CardEnrollRequest, card: CardIdentity, requestHash: Uint8Array): boolean {
  try {
    return bytesEqual(authRequestHash(grantFor(request, card)), requestHash);
  } catch {
    return false;
  }
}

/** The keyring's verifier for CARD_ENROLL_KEY_METHOD. */
export const verifyCardEnrollKeyAuth: AuthVerifier = (authoriser, requestHash, proof) => {
  if (proof.v !== 1) return false;
  const card = proofCard(proof.card);
  const request = verifyRequestJws(proof.jws, authoriser);
  return card !== undefined && request !== undefined && rebuildsGrant(request, card, requestHash);
};

/** The keyring's verifier for CARD_ENROLL_FIDO_METHOD. */
export const verifyCardEnrollFidoAuth: AuthVerifier = (authoriser, requestHash, proof) => {
  if (proof.v !== 1) return false;
  const card = proofCard(proof.card);
  if (card === undefined || typeof proof.sig !== 'string') return false;
  const { flags, counter } = proof;
  if (typeof flags !== 'number' || !Number.isInteger(flags) || flags < 0 || flags > 255) return false;
  if (typeof counter !== 'number' || !Number.isInteger(counter) || counter < 0 || counter > 0xffffffff)
    return false;
  let request: CardEnrollRequest;
  let signature: Uint8Array;
  try {
    request = parseCardEnrollRequest(proof.req);
    signature = fromB64url(proof.sig);
  } catch {
    return false;
  }
  return (
    rebuildsGrant(request, card, requestHash) &&
    verifyFidoAuthorisation(request, { flags, counter, signature }, authoriser)
  );
};

/** Verifiers of this module, to merge into the map handed to openVehicleState. */
export const NFC_AUTH_VERIFIERS: ReadonlyMap<string, AuthVerifier> = new Map([
  [CARD_ENROLL_KEY_METHOD, verifyCardEnrollKeyAuth],
  [CARD_ENROLL_FIDO_METHOD, verifyCardEnrollFidoAuth],
  // A phone or web-key enrollment approved by an owner FIDO key at the reader (approve-auth.ts).
  [FIDO_APPROVAL_AUTH_METHOD, verifyFidoApprovalAuth],
]);
