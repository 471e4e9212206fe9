import { createHash, type KeyObject } from 'node:crypto';
import type { PublicJwk } from '../../core/types.js';
import { b64url, bytesEqual, concatBytes } from '../../crypto/encoding.js';
import { algorithmOf, cachedPublicKey } from '../../crypto/keys.js';
import { verifyP256 } from '../../crypto/verify.js';

/**
 * WebAuthn assertion checks of a passkey answer (WebAuthn Level 2 §7.2, the parts a vehicle that
 * verifies offline needs). Pure: node:crypto only, no I/O, no clock. The signature is DER, as
 * authenticators give it, and is not required to be low-S (OpenSSL accepts either, as it must).
 * The order is chosen so a peer without the key learns nothing: the signature is checked first,
 * then what it covers.
 */

/** authenticatorData flags (WebAuthn §6.1). */
export const FLAG_UP = 0x01;
export const FLAG_UV = 0x04;
/** rpIdHash(32) ‖ flags(1) ‖ signCount(4): the shortest authenticatorData. */
export const MIN_AUTH_DATA_BYTES = 37;
/** Longest clientDataJSON the vehicle parses (a page's is about 150 bytes). */
export const MAX_CLIENT_DATA_BYTES = 1024;

export interface PasskeyAssertion {
  readonly authenticatorData: Uint8Array;
  readonly clientDataJSON: Uint8Array;
  /** DER ECDSA P-256 signature over authenticatorData ‖ SHA-256(clientDataJSON). */
  readonly signature: Uint8Array;
}

export interface PasskeyExpectation {
  /** The challenge the page had to pass to navigator.credentials.get (32 bytes). */
  readonly challenge: Uint8Array;
  /** Origins accepted in clientDataJSON.origin (exact match, e.g. https://keys.example.org). */
  readonly allowedOrigins: ReadonlySet<string>;
  /** The rpId the passkey was created for (its enrolled credential's rpId). */
  readonly rpId: string;
  readonly publicKey: KeyObject | PublicJwk;
  /** The last sign counter accepted for this credential (undefined: none yet). */
  readonly lastCounter?: number;
}

export type PasskeyVerdict =
  | { readonly ok: true; readonly counter: number }
  | {
      readonly ok: false;
      readonly code:
        | 'malformed'
        | 'bad_proof'
        | 'origin_not_allowed'
        | 'user_verification_required'
        | 'clone_suspected';
    };

export interface ParsedAuthenticatorData {
  readonly rpIdHash: Uint8Array;
  readonly flags: number;
  readonly signCount: number;
}

export function parseAuthenticatorData(bytes: Uint8Array): ParsedAuthenticatorData | undefined {
  if (bytes.length < MIN_AUTH_DATA_BYTES) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { rpIdHash: bytes.slice(0, 32), flags: view.getUint8(32), signCount: view.getUint32(33) };
}

interface ClientData {
  readonly type: string;
  readonly challenge: string;
  readonly origin: string;
  readonly crossOrigin: boolean;
}

function parseClientData(bytes: Uint8Array): ClientData | undefined {
  if (bytes.length < 2 || bytes.length > MAX_CLIENT_DATA_BYTES) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  const { type, challenge, origin, crossOrigin } = value as Record<string, unknown>;
  if (typeof type !== 'string' || typeof challenge !== 'string' || typeof origin !== 'string')
    return undefined;
  if (crossOrigin !== undefined && typeof crossOrigin !== 'boolean') return undefined;
  return { type, challenge, origin, crossOrigin: crossOrigin === true };
}

function sha256(bytes: Uint8Array | string): Uint8Array {
  return new Uint8Array(createHash('sha256').update(bytes).digest());
}

function p256Key(key: KeyObject | PublicJwk): KeyObject | undefined {
  try {
    const object = 'kty' in key ? cachedPublicKey(key) : key;
    return algorithmOf(object) === 'P-256' ? object : undefined;
  } catch {
    return undefined;
  }
}

/** ECDSA P-256 / SHA-256 with a DER signature, high or low S; false for anything that is not. */
export function verifyP256Der(publicKey: KeyObject, message: Uint8Array, signature: Uint8Array): boolean {
  return verifyP256(publicKey, message, signature, 'der');
}

/**
 * The WebAuthn sign counter rule: 0 and 0 is a synced passkey (no counter); otherwise the new
 * value must be above the last one accepted, else the authenticator may be cloned.
 */
export function counterAccepted(last: number | undefined, presented: number): boolean {
  const stored = last ?? 0;
  if (stored === 0 && presented === 0) return true;
  return presented > stored;
}

/** Verifies one passkey assertion against the enrolled credential and this challenge. */
export function verifyPasskeyAssertion(
  assertion: PasskeyAssertion,
  expected: PasskeyExpectation,
): PasskeyVerdict {
  const authData = parseAuthenticatorData(assertion.authenticatorData);
  const clientData = parseClientData(assertion.clientDataJSON);
  if (authData === undefined || clientData === undefined) return { ok: false, code: 'malformed' };
  const key = p256Key(expected.publicKey);
  if (key === undefined) return { ok: false, code: 'bad_proof' };
  const signed = concatBytes(assertion.authenticatorData, sha256(assertion.clientDataJSON));
  if (!verifyP256Der(key, signed, assertion.signature)) return { ok: false, code: 'bad_proof' };
  // Signed by the enrolled key: now what it signed must be this vehicle's request.
  if (clientData.type !== 'webauthn.get') return { ok: false, code: 'bad_proof' };
  if (clientData.challenge !== b64url(expected.challenge)) return { ok: false, code: 'bad_proof' };
  if (!bytesEqual(authData.rpIdHash, sha256(expected.rpId))) return { ok: false, code: 'bad_proof' };
  if (clientData.crossOrigin || !expected.allowedOrigins.has(clientData.origin))
    return { ok: false, code: 'origin_not_allowed' };
  if ((authData.flags & FLAG_UP) === 0) return { ok: false, code: 'user_verification_required' };
  if ((authData.flags & FLAG_UV) === 0) return { ok: false, code: 'user_verification_required' };
  if (!counterAccepted(expected.lastCounter, authData.signCount))
    return { ok: false, code: 'clone_suspected' };
  return { ok: true, counter: authData.signCount };
}
