import { createHash } from 'node:crypto';
import type { AuthProof, AuthVerifier } from '../access/keyring.js';
import type { Credential } from '../core/types.js';
import { b64url, fromB64url } from '../crypto/encoding.js';
import { verifyOwnerFidoSignature } from './u2f.js';

/**
 * Approval of a pending phone or web-key enrollment (src/ble/enrollment.ts) by an owner FIDO key
 * tapped at the reader (docs/keyring.md, "Approval by an owner FIDO key"). Pure.
 *
 * The key signs, with U2F AUTHENTICATE and this vehicle's application parameter, the challenge
 *   SHA-256("vehicle-agent/u2f-enroll-approval/v1" ‖ 0x00 ‖ requestHash)
 * where requestHash is keyring authRequestHash of the pending grant (32 bytes). The domain tag
 * differs from the card-enrollment challenge's ("vehicle-agent/u2f-enrollment/v1", over a
 * canonical JSON request) and an unlock tap's challenge is 32 random bytes, so a signature made
 * for one purpose is never one for another. The vehicle writes the grant signed by its own key,
 * carrying the owner's assertion as its AuthProof (method FIDO_APPROVAL_AUTH_METHOD); any keyring
 * checks it from the grant alone with verifyFidoApprovalAuth.
 */

/** AuthProof.method of a grant approved by an owner FIDO key at the reader. */
export const FIDO_APPROVAL_AUTH_METHOD = 'ble-enroll-fido-v1';
export const FIDO_APPROVAL_DOMAIN = 'vehicle-agent/u2f-enroll-approval/v1';
const REQUEST_HASH_BYTES = 32;
const MAX_ID_LENGTH = 64;

/** The U2F challenge parameter an owner FIDO key signs to approve the grant hashing to `requestHash`. */
export function fidoApprovalChallenge(requestHash: Uint8Array): Uint8Array {
  if (requestHash.length !== REQUEST_HASH_BYTES) throw new RangeError('a request hash is 32 bytes');
  return new Uint8Array(
    createHash('sha256').update(FIDO_APPROVAL_DOMAIN).update(Uint8Array.of(0)).update(requestHash).digest(),
  );
}

/** What the owner's key answered at the reader. */
export interface FidoApprovalAssertion {
  readonly flags: number;
  readonly counter: number;
  /** DER ECDSA signature. */
  readonly signature: Uint8Array;
}

/** AuthProof.proof of FIDO_APPROVAL_AUTH_METHOD. */
export interface FidoApprovalProof {
  readonly v: 1;
  /** The vehicle whose application parameter the key signed with. */
  readonly vid: string;
  readonly flags: number;
  readonly counter: number;
  /** base64url DER signature. */
  readonly sig: string;
}

export function fidoApprovalAuthProof(
  by: string,
  vehicleId: string,
  assertion: FidoApprovalAssertion,
): AuthProof {
  const proof: FidoApprovalProof = {
    v: 1,
    vid: vehicleId,
    flags: assertion.flags,
    counter: assertion.counter,
    sig: b64url(assertion.signature),
  };
  return { by, method: FIDO_APPROVAL_AUTH_METHOD, proof: { ...proof } };
}

/**
 * True when `owner` is a FIDO credential whose key signed, with user presence, the approval
 * challenge of `requestHash` under `vehicleId`'s application parameter.
 */
export function verifyFidoApproval(
  owner: Credential,
  vehicleId: string,
  requestHash: Uint8Array,
  assertion: FidoApprovalAssertion,
): boolean {
  if (requestHash.length !== REQUEST_HASH_BYTES) return false;
  return verifyOwnerFidoSignature(owner, vehicleId, fidoApprovalChallenge(requestHash), assertion);
}

/** The keyring's verifier for FIDO_APPROVAL_AUTH_METHOD (pure): everything comes from the grant. */
export const verifyFidoApprovalAuth: AuthVerifier = (authoriser, requestHash, proof) => {
  const { v, vid, flags, counter, sig } = proof;
  if (v !== 1 || typeof vid !== 'string' || vid.length === 0 || vid.length > MAX_ID_LENGTH) return false;
  if (typeof flags !== 'number' || !Number.isInteger(flags) || flags < 0 || flags > 255) return false;
  if (typeof counter !== 'number' || !Number.isInteger(counter) || counter < 0 || counter > 0xffffffff)
    return false;
  if (typeof sig !== 'string' || requestHash.length !== REQUEST_HASH_BYTES) return false;
  let signature: Uint8Array;
  try {
    signature = fromB64url(sig);
  } catch {
    return false;
  }
  return verifyFidoApproval(authoriser, vid, requestHash, { flags, counter, signature });
};
