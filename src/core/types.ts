import type { Code, DenialCode } from './codes.js';

export const ROLES = ['owner', 'driver', 'guest', 'service'] as const;
export type Role = (typeof ROLES)[number];

/**
 * phone:   P-256 key in a phone secure element, challenge-response over BLE
 * fido:    FIDO U2F security key over NFC (P-256, signature counter)
 * ntag424: NTAG 424 DNA card, AES-128 EV2First with a diversified key
 * uid:     UID-only tag (cloneable; needs options.insecureUid)
 * passkey: a WebAuthn passkey (P-256, platform authenticator with user verification) used from the
 *          phone-key web app in mode P; keyHandle holds its WebAuthn credential id, rpId its relying party
 * signer:  a P-256 or Ed25519 key that signs commands and keyring operations (owner laptop, cloud service)
 */
export const CREDENTIAL_KINDS = ['phone', 'fido', 'ntag424', 'uid', 'signer', 'passkey'] as const;
export type CredentialKind = (typeof CREDENTIAL_KINDS)[number];

export const INTENTS = ['unlock', 'lock', 'toggle'] as const;
export type Intent = (typeof INTENTS)[number];

/** Public key as a JWK (public members only). */
export interface PublicJwk {
  readonly kty: 'EC' | 'OKP';
  readonly crv: 'P-256' | 'Ed25519';
  readonly x: string;
  readonly y?: string;
}

export interface CredentialOptions {
  /** Accept answers without explicit user intent (passive proximity unlock). Off by default. */
  readonly passive?: boolean;
  /** Accept this UID-only tag although UIDs are cloneable. Off by default. */
  readonly insecureUid?: boolean;
}

/**
 * A credential as granted in the keyring. Times are milliseconds since the epoch in memory and
 * ISO 8601 strings on the wire.
 */
export interface Credential {
  readonly id: string;
  readonly kind: CredentialKind;
  readonly role: Role;
  readonly name?: string;
  readonly notBefore?: number;
  readonly notAfter?: number;
  readonly publicKey?: PublicJwk;
  /** Salted hash of the card UID (crypto/keys.ts uidHash), for NFC kinds. Never the raw UID. */
  readonly uidHash?: string;
  /** FIDO U2F key handle, or a passkey's WebAuthn credential id: base64url. */
  readonly keyHandle?: string;
  /** A passkey's WebAuthn relying party id (the host name of the web app it was created on). */
  readonly rpId?: string;
  readonly options: CredentialOptions;
}

/**
 * Outcome of the reader's own protocol checks, before policy. Readers verify cryptography against
 * the credential found in the keyring and report the verdict; the decision applies policy.
 */
export type ProofVerdict =
  | 'valid'
  | 'none' // nothing to prove (UID-only)
  | 'invalid'
  | 'replayed'
  | 'cloned' // the card shows an enrolled UID but cannot prove the enrolled key: a UID clone
  | 'timeout'
  | 'removed'
  | 'wrong_vehicle'
  | 'malformed'
  | 'frame_too_large'
  | 'unsupported'
  | 'reader_error';

export interface Presentation {
  /** Reader that saw the credential, e.g. `nfc0`, `ble0`, `sim`. */
  readonly reader: string;
  readonly kind: CredentialKind;
  /** Keyring id the reader resolved, or undefined when nothing in the keyring matched. */
  readonly credentialId: string | undefined;
  /** Non-secret identity for the audit log: the credential id, or a salted UID hash. */
  readonly subject: string;
  readonly intent: Intent;
  /** True when the user acted on purpose (button, tap); false for passive proximity. */
  readonly explicitIntent: boolean;
  readonly proof: ProofVerdict;
  /** Signature counter reported by the credential (FIDO), checked against the last one seen. */
  readonly counter?: number;
  /** Time from challenge to answer, for the relay-attack deadline. */
  readonly answerMs?: number;
  /** The answer deadline the reader held the credential to (audited with a miss). */
  readonly deadlineMs?: number;
  /**
   * A missed deadline, measured: how late the answer came, or with no answer (answerMs absent)
   * how long past the deadline the reader waited before giving up.
   */
  readonly lateMs?: number;
  /**
   * Why a proof the reader checked failed, when it knows more than bad_proof (a passkey without
   * user verification, from an origin not listed, …): the audit record carries this code.
   */
  readonly proofDetail?: Code;
}

export type Decision =
  | { readonly granted: true; readonly credential: Credential; readonly intent: Intent }
  | { readonly granted: false; readonly code: DenialCode; readonly credential?: Credential };

export const LOCK_STATES = ['locked', 'unlocking', 'unlocked', 'locking'] as const;
export type LockState = (typeof LOCK_STATES)[number];

export type HealthState = 'ok' | 'degraded' | 'down' | 'disabled';
export interface Health {
  readonly state: HealthState;
  readonly detail?: string;
  /** ms since epoch of the last state change. */
  readonly since: number;
}
