import type { KeyObject } from 'node:crypto';
import type { AuthProof, AuthVerifier } from '../../access/keyring.js';
import { AgentError } from '../../core/errors.js';
import type { Credential, CredentialKind, PublicJwk, Role } from '../../core/types.js';
import { b64url, bytesEqual, concatBytes, fromB64url } from '../../crypto/encoding.js';
import { algorithmOf, publicKeyFromJwk } from '../../crypto/keys.js';
import { verifyP256 } from '../../crypto/verify.js';
import { CHALLENGE_BYTES, MAX_ID_BYTES, PROTOCOL_VERSION, SIGNATURE_BYTES } from './constants.js';
import { Cursor, isValidId } from './messages.js';

/**
 * Enrollment extension E1 of the vehicle-key protocol v1 (docs/ble-protocol.md §12): an owner's
 * key approves, at the vehicle and over BLE, a pending enrollment request by signing its hash.
 * The vehicle then writes a keyring grant signed by the vehicle key that carries this signature
 * as its AuthProof, so anyone holding the keyring can check that an owner approved exactly it.
 *
 *   vehicle → key  hello (v1, unchanged)
 *   key → vehicle  enroll_request   01 05 | n | vehicleId | challenge[32] | m | keyId
 *                                   | key sig[64]                (instead of an answer)
 *   vehicle → key  enroll_offer     01 06 | n | vehicleId | challenge[32] | requestHash[32]
 *                                   | m | credentialId | kind | role | flags | notBefore u32
 *                                   | notAfter u32 | vehicle sig[64]
 *   key → vehicle  enroll_approval  01 07 | n | vehicleId | challenge[32] | requestHash[32]
 *                                   | m | keyId | key sig[64]
 *   vehicle → key  result (v1)
 * The enroll_request is signed by the owner's key (revision 2 of E1): the vehicle sends its signed
 * offer, which reveals the pending request, only to a peer that proved an enrolled owner key.
 * Pure: no I/O; verification with node:crypto (the reference key signs with noble).
 */

export const ENROLL_TYPES = { enroll_request: 0x05, enroll_offer: 0x06, enroll_approval: 0x07 } as const;
export const ENROLL_REQUEST_DOMAIN = 'vehicle-agent/ble/v1/enroll-request';
export const ENROLL_OFFER_DOMAIN = 'vehicle-agent/ble/v1/enroll-offer';
export const ENROLL_APPROVAL_DOMAIN = 'vehicle-agent/ble/v1/enroll';
/** AuthProof.method of grants approved this way (keyring authVerifiers key). */
export const BLE_ENROLL_AUTH_METHOD = 'ble-enroll-v1';
export const REQUEST_HASH_BYTES = 32;

export const ENROLL_ROLE_BYTES: Readonly<Record<Role, number>> = {
  owner: 1,
  driver: 2,
  guest: 3,
  service: 4,
};
export const ENROLL_KIND_BYTES: Readonly<Record<CredentialKind, number>> = {
  phone: 1,
  fido: 2,
  ntag424: 3,
  uid: 4,
  signer: 5,
  passkey: 6,
};
/** enroll_offer flags bit 0: the new key is enrolled for passive (no-intent) unlock. */
export const OFFER_FLAG_PASSIVE = 0x01;
const MAX_U32 = 0xffff_ffff;

/** What the owner's key signs to ask for the pending request: this hello, and who it is. */
export interface EnrollRequestFields {
  readonly vehicleId: string;
  /** The challenge of this session's hello. */
  readonly challenge: Uint8Array;
  /** Credential id of the asking (owner) key. */
  readonly keyId: string;
}

export interface EnrollRequest extends EnrollRequestFields {
  readonly type: 'enroll_request';
  readonly signature: Uint8Array;
  readonly signedMessage: Uint8Array;
}

/** Length of the unsigned enroll_request of E1 revision 1 (`01 05`), refused as 'unsupported'. */
export const ENROLL_REQUEST_R1_BYTES = 2;

/** What the vehicle asks the owner to approve: the request hash and a summary the key can show. */
export interface EnrollOfferFields {
  readonly vehicleId: string;
  /** The challenge of this session's hello. */
  readonly challenge: Uint8Array;
  /** SHA-256 of the canonical grant without auth (keyring.ts authRequestHash). */
  readonly requestHash: Uint8Array;
  readonly credentialId: string;
  readonly kind: CredentialKind;
  readonly role: Role;
  readonly passive: boolean;
  /** Seconds since the epoch; 0 = none. */
  readonly notBefore: number;
  readonly notAfter: number;
}

export interface EnrollOffer extends EnrollOfferFields {
  readonly type: 'enroll_offer';
  readonly signature: Uint8Array;
  readonly signedMessage: Uint8Array;
}

export interface EnrollApprovalFields {
  readonly vehicleId: string;
  readonly challenge: Uint8Array;
  readonly requestHash: Uint8Array;
  /** Credential id of the approving (owner) key. */
  readonly keyId: string;
}

export interface EnrollApproval extends EnrollApprovalFields {
  readonly type: 'enroll_approval';
  readonly signature: Uint8Array;
  readonly signedMessage: Uint8Array;
}

export type EnrollMessage = EnrollRequest | EnrollOffer | EnrollApproval;

const ASCII = new TextEncoder();

function malformed(message: string): AgentError {
  return new AgentError('malformed', message);
}

function encodeId(id: string, what: string): Uint8Array {
  if (!isValidId(id)) throw malformed(`${what} must be 1..${MAX_ID_BYTES} printable ASCII characters`);
  return concatBytes(Uint8Array.of(id.length), ASCII.encode(id));
}

function u32(value: number, what: string): Uint8Array {
  if (!Number.isInteger(value) || value < 0 || value > MAX_U32) throw malformed(`${what} must be a u32`);
  return Uint8Array.of(value >>> 24, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff);
}

function fixed(bytes: Uint8Array, length: number, what: string): Uint8Array {
  if (bytes.length !== length) throw malformed(`${what} must be ${length} bytes`);
  return bytes;
}

function domainSeparated(domain: string, body: Uint8Array): Uint8Array {
  return concatBytes(ASCII.encode(domain), Uint8Array.of(0), body);
}

function byteOf<K extends string>(table: Readonly<Record<K, number>>, key: K, what: string): number {
  const value = table[key];
  if (value === undefined) throw malformed(`unknown ${what}`);
  return value;
}

function keyOf<K extends string>(table: Readonly<Record<K, number>>, byte: number, what: string): K {
  for (const [key, value] of Object.entries(table) as [K, number][]) if (value === byte) return key;
  throw malformed(`unknown ${what} 0x${byte.toString(16).padStart(2, '0')}`);
}

// ── encoding ──────────────────────────────────────────────────────────────────

export function enrollRequestBody(fields: EnrollRequestFields): Uint8Array {
  return concatBytes(
    Uint8Array.of(PROTOCOL_VERSION, ENROLL_TYPES.enroll_request),
    encodeId(fields.vehicleId, 'vehicle id'),
    fixed(fields.challenge, CHALLENGE_BYTES, 'challenge'),
    encodeId(fields.keyId, 'key id'),
  );
}

/** What the owner's key signs: "vehicle-agent/ble/v1/enroll-request" ‖ 0x00 ‖ request body. */
export function enrollRequestSignedMessage(fields: EnrollRequestFields): Uint8Array {
  return domainSeparated(ENROLL_REQUEST_DOMAIN, enrollRequestBody(fields));
}

export function encodeEnrollRequest(fields: EnrollRequestFields, signature: Uint8Array): Uint8Array {
  return concatBytes(enrollRequestBody(fields), fixed(signature, SIGNATURE_BYTES, 'signature'));
}

export function enrollOfferBody(fields: EnrollOfferFields): Uint8Array {
  if (fields.notBefore !== 0 && fields.notAfter !== 0 && fields.notAfter <= fields.notBefore) {
    throw malformed('notAfter must be after notBefore');
  }
  return concatBytes(
    Uint8Array.of(PROTOCOL_VERSION, ENROLL_TYPES.enroll_offer),
    encodeId(fields.vehicleId, 'vehicle id'),
    fixed(fields.challenge, CHALLENGE_BYTES, 'challenge'),
    fixed(fields.requestHash, REQUEST_HASH_BYTES, 'request hash'),
    encodeId(fields.credentialId, 'credential id'),
    Uint8Array.of(
      byteOf(ENROLL_KIND_BYTES, fields.kind, 'kind'),
      byteOf(ENROLL_ROLE_BYTES, fields.role, 'role'),
      fields.passive ? OFFER_FLAG_PASSIVE : 0,
    ),
    u32(fields.notBefore, 'notBefore'),
    u32(fields.notAfter, 'notAfter'),
  );
}

/** What the vehicle key signs: "vehicle-agent/ble/v1/enroll-offer" ‖ 0x00 ‖ offer body. */
export function enrollOfferSignedMessage(fields: EnrollOfferFields): Uint8Array {
  return domainSeparated(ENROLL_OFFER_DOMAIN, enrollOfferBody(fields));
}

/** Builds a signed offer; `sign` returns a 64-byte r‖s P-256 signature over SHA-256(message). */
export function buildEnrollOffer(
  fields: EnrollOfferFields,
  sign: (message: Uint8Array) => Uint8Array,
): Uint8Array {
  const signature = sign(enrollOfferSignedMessage(fields));
  if (signature.length !== SIGNATURE_BYTES)
    throw new AgentError('internal', 'vehicle signer did not return a 64-byte r‖s');
  return concatBytes(enrollOfferBody(fields), signature);
}

export function enrollApprovalBody(fields: EnrollApprovalFields): Uint8Array {
  return concatBytes(
    Uint8Array.of(PROTOCOL_VERSION, ENROLL_TYPES.enroll_approval),
    encodeId(fields.vehicleId, 'vehicle id'),
    fixed(fields.challenge, CHALLENGE_BYTES, 'challenge'),
    fixed(fields.requestHash, REQUEST_HASH_BYTES, 'request hash'),
    encodeId(fields.keyId, 'key id'),
  );
}

/** What the owner's key signs: "vehicle-agent/ble/v1/enroll" ‖ 0x00 ‖ approval body. */
export function enrollApprovalSignedMessage(fields: EnrollApprovalFields): Uint8Array {
  return domainSeparated(ENROLL_APPROVAL_DOMAIN, enrollApprovalBody(fields));
}

export function encodeEnrollApproval(fields: EnrollApprovalFields, signature: Uint8Array): Uint8Array {
  return concatBytes(enrollApprovalBody(fields), fixed(signature, SIGNATURE_BYTES, 'signature'));
}

// ── decoding ──────────────────────────────────────────────────────────────────

/** True when `bytes` claims to be an E1 message (v1, type 0x05..0x07); decode it with decodeEnrollMessage. */
export function isEnrollMessage(bytes: Uint8Array): boolean {
  const type = bytes[1];
  return (
    bytes[0] === PROTOCOL_VERSION &&
    type !== undefined &&
    type >= ENROLL_TYPES.enroll_request &&
    type <= ENROLL_TYPES.enroll_approval
  );
}

/** Decodes an E1 message strictly; AgentError 'unsupported' (version) or 'malformed'. */
export function decodeEnrollMessage(bytes: Uint8Array): EnrollMessage {
  const r = new Cursor(bytes);
  const version = r.u8('version');
  if (version !== PROTOCOL_VERSION) {
    throw new AgentError('unsupported', `protocol version ${version} is not supported`, { version });
  }
  const type = r.u8('type');
  switch (type) {
    case ENROLL_TYPES.enroll_request: {
      if (bytes.length === ENROLL_REQUEST_R1_BYTES) {
        throw new AgentError(
          'unsupported',
          'an unsigned enroll_request (E1 revision 1) is no longer accepted: the key must sign it',
        );
      }
      const vehicleId = r.id('vehicle id');
      const challenge = r.take(CHALLENGE_BYTES, 'challenge');
      const keyId = r.id('key id');
      const bodyEnd = r.position;
      const signature = r.take(SIGNATURE_BYTES, 'signature');
      r.end();
      return {
        type: 'enroll_request',
        vehicleId,
        challenge,
        keyId,
        signature,
        signedMessage: domainSeparated(ENROLL_REQUEST_DOMAIN, bytes.subarray(0, bodyEnd)),
      };
    }
    case ENROLL_TYPES.enroll_offer: {
      const vehicleId = r.id('vehicle id');
      const challenge = r.take(CHALLENGE_BYTES, 'challenge');
      const requestHash = r.take(REQUEST_HASH_BYTES, 'request hash');
      const credentialId = r.id('credential id');
      const kind = keyOf(ENROLL_KIND_BYTES, r.u8('kind'), 'kind');
      const role = keyOf(ENROLL_ROLE_BYTES, r.u8('role'), 'role');
      const flags = r.u8('flags');
      if ((flags & ~OFFER_FLAG_PASSIVE) !== 0) throw malformed('reserved flag bits set');
      const notBefore = r.u32('notBefore');
      const notAfter = r.u32('notAfter');
      if (notBefore !== 0 && notAfter !== 0 && notAfter <= notBefore)
        throw malformed('notAfter must be after notBefore');
      const bodyEnd = r.position;
      const signature = r.take(SIGNATURE_BYTES, 'signature');
      r.end();
      return {
        type: 'enroll_offer',
        vehicleId,
        challenge,
        requestHash,
        credentialId,
        kind,
        role,
        passive: (flags & OFFER_FLAG_PASSIVE) !== 0,
        notBefore,
        notAfter,
        signature,
        signedMessage: domainSeparated(ENROLL_OFFER_DOMAIN, bytes.subarray(0, bodyEnd)),
      };
    }
    case ENROLL_TYPES.enroll_approval: {
      const vehicleId = r.id('vehicle id');
      const challenge = r.take(CHALLENGE_BYTES, 'challenge');
      const requestHash = r.take(REQUEST_HASH_BYTES, 'request hash');
      const keyId = r.id('key id');
      const bodyEnd = r.position;
      const signature = r.take(SIGNATURE_BYTES, 'signature');
      r.end();
      return {
        type: 'enroll_approval',
        vehicleId,
        challenge,
        requestHash,
        keyId,
        signature,
        signedMessage: domainSeparated(ENROLL_APPROVAL_DOMAIN, bytes.subarray(0, bodyEnd)),
      };
    }
    default:
      throw malformed(`0x${type.toString(16).padStart(2, '0')} is not an enrollment message`);
  }
}

// ── verification ──────────────────────────────────────────────────────────────

function p256(key: KeyObject | PublicJwk): KeyObject | undefined {
  try {
    const object = 'kty' in key ? publicKeyFromJwk(key) : key;
    return algorithmOf(object) === 'P-256' ? object : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The asking key's signature on an enroll_request, rebuilt from its fields. 'unsupported' when the
 * key is not P-256.
 */
export function verifyEnrollRequest(
  request: EnrollRequestFields & { readonly signature: Uint8Array },
  publicKey: KeyObject | PublicJwk,
): 'valid' | 'invalid' | 'unsupported' {
  const key = p256(publicKey);
  if (key === undefined) return 'unsupported';
  let signed: Uint8Array;
  try {
    signed = enrollRequestSignedMessage(request);
  } catch {
    return 'invalid';
  }
  return verifyP256(key, signed, request.signature) ? 'valid' : 'invalid';
}

/** The vehicle's signature on an offer (what the key checks against the vehicle key it pinned). */
export function verifyEnrollOffer(offer: EnrollOffer, vehiclePublicKey: KeyObject | PublicJwk): boolean {
  const key = p256(vehiclePublicKey);
  if (key === undefined) return false;
  try {
    return verifyP256(key, enrollOfferSignedMessage(offer), offer.signature);
  } catch {
    return false;
  }
}

/**
 * The owner key's signature on an approval, rebuilt from its fields (what is verified is what is
 * acted on). 'unsupported' when the key is not P-256.
 */
export function verifyEnrollApproval(
  approval: EnrollApprovalFields & { readonly signature: Uint8Array },
  publicKey: KeyObject | PublicJwk,
): 'valid' | 'invalid' | 'unsupported' {
  const key = p256(publicKey);
  if (key === undefined) return 'unsupported';
  let signed: Uint8Array;
  try {
    signed = enrollApprovalSignedMessage(approval);
  } catch {
    return 'invalid';
  }
  return verifyP256(key, signed, approval.signature) ? 'valid' : 'invalid';
}

/** AuthProof.proof of a grant approved over BLE: enough to rebuild and check the signed approval. */
export interface BleEnrollProof {
  readonly v: 1;
  /** The vehicle id the approval named. */
  readonly vid: string;
  /** base64url: the session challenge. */
  readonly challenge: string;
  /** base64url: the owner key's 64-byte r‖s signature. */
  readonly sig: string;
}

export function authProofFor(approval: EnrollApproval): AuthProof {
  const proof: BleEnrollProof = {
    v: 1,
    vid: approval.vehicleId,
    challenge: b64url(approval.challenge),
    sig: b64url(approval.signature),
  };
  return { by: approval.keyId, method: BLE_ENROLL_AUTH_METHOD, proof: { ...proof } };
}

function proofBytes(value: unknown, length: number): Uint8Array | undefined {
  if (typeof value !== 'string') return undefined;
  try {
    const bytes = fromB64url(value);
    return bytes.length === length ? bytes : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The keyring's verifier for BLE_ENROLL_AUTH_METHOD (pure): the authoriser is a P-256 phone key
 * that signed the enrollment approval over exactly `requestHash`.
 */
export const verifyBleEnrollAuth: AuthVerifier = (authoriser: Credential, requestHash, proof) => {
  if (authoriser.kind !== 'phone' || authoriser.publicKey === undefined) return false;
  if (proof.v !== 1 || typeof proof.vid !== 'string' || !isValidId(proof.vid)) return false;
  const challenge = proofBytes(proof.challenge, CHALLENGE_BYTES);
  const signature = proofBytes(proof.sig, SIGNATURE_BYTES);
  if (challenge === undefined || signature === undefined || requestHash.length !== REQUEST_HASH_BYTES)
    return false;
  if (!isValidId(authoriser.id)) return false;
  return (
    verifyEnrollApproval(
      { vehicleId: proof.vid, challenge, requestHash, keyId: authoriser.id, signature },
      authoriser.publicKey,
    ) === 'valid'
  );
};

/** Auth verifiers of this module, to hand to openVehicleState / the Keyring. */
export const BLE_AUTH_VERIFIERS: ReadonlyMap<string, AuthVerifier> = new Map([
  [BLE_ENROLL_AUTH_METHOD, verifyBleEnrollAuth],
]);

/** Offer summary from a credential (times to whole seconds; 0 = none). */
export function offerSummary(
  credential: Credential,
): Pick<EnrollOfferFields, 'credentialId' | 'kind' | 'role' | 'passive' | 'notBefore' | 'notAfter'> {
  // notBefore rounds down and notAfter up, so the summary never claims a narrower window.
  const seconds = (ms: number | undefined, round: (x: number) => number): number =>
    ms === undefined ? 0 : Math.min(MAX_U32, Math.max(0, round(ms / 1000)));
  return {
    credentialId: credential.id,
    kind: credential.kind,
    role: credential.role,
    passive: credential.options.passive === true,
    notBefore: seconds(credential.notBefore, Math.floor),
    notAfter: seconds(credential.notAfter, Math.ceil),
  };
}

/** True when `approval` approves exactly this session's offer. */
export function approvalMatches(
  approval: EnrollApprovalFields,
  expected: Pick<EnrollApprovalFields, 'vehicleId' | 'challenge' | 'requestHash'>,
): boolean {
  return (
    approval.vehicleId === expected.vehicleId &&
    bytesEqual(approval.challenge, expected.challenge) &&
    bytesEqual(approval.requestHash, expected.requestHash)
  );
}
