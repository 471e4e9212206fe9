import { type KeyObject, verify as nodeVerify } from 'node:crypto';

/**
 * Every signature check on the unlock path (BLE key answers and hellos, enrollment approvals,
 * FIDO assertions and attestations, the simulated reader's keys, JWS keyring ops and commands)
 * goes through these two functions, so the implementation is chosen in one place.
 *
 * The implementation is node:crypto (OpenSSL): `npm run bench -- --only=crypto` verifies the
 * same signatures with it and with @noble/curves in one run; OpenSSL was 40 to 50 times faster
 * for both curves on the development machine (about 11 000 P-256 and 10 000 Ed25519 checks a
 * second against 250 and 450). test/unit/crypto/verify.test.ts cross-checks both on the same
 * inputs, so a switch would show any difference in what is accepted.
 *
 * Policy (both pure, never throw: false for anything that is not a valid signature):
 *  - P-256: ECDSA over SHA-256. High-S signatures are ACCEPTED: phone secure elements and FIDO
 *    authenticators do not normalise s, and the signer, not a third party, chooses the form, so
 *    malleability gives an attacker nothing here (answers are bound to a fresh challenge).
 *    OpenSSL accepts them; noble only with `lowS: false` (its default rejects them).
 *    'p1363' is 64-byte r‖s; 'der' is a strict DER SEQUENCE of two INTEGERs (OpenSSL refuses
 *    non-minimal encodings and trailing bytes).
 *  - Ed25519: RFC 8032 as OpenSSL checks it (S must be below the group order); noble agrees
 *    with `zip215: false`.
 * A key of the other algorithm is refused (false), never reinterpreted.
 */

export type P256Encoding = 'p1363' | 'der';

const P1363_BYTES = 64;
const ED25519_SIGNATURE_BYTES = 64;

function keyIs(key: KeyObject, type: 'ec' | 'ed25519'): boolean {
  if (key.asymmetricKeyType !== type) return false;
  return type === 'ed25519' || key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
}

/** ECDSA P-256 / SHA-256 over `message`; high-S accepted (see the policy above). */
export function verifyP256(
  publicKey: KeyObject,
  message: Uint8Array,
  signature: Uint8Array,
  encoding: P256Encoding = 'p1363',
): boolean {
  if (!keyIs(publicKey, 'ec')) return false;
  if (encoding === 'p1363' && signature.length !== P1363_BYTES) return false;
  try {
    return nodeVerify(
      'sha256',
      message,
      { key: publicKey, dsaEncoding: encoding === 'der' ? 'der' : 'ieee-p1363' },
      signature,
    );
  } catch {
    return false;
  }
}

/** Ed25519 (pure, RFC 8032) over `message`; the signature is 64 bytes R‖S. */
export function verifyEd25519(publicKey: KeyObject, message: Uint8Array, signature: Uint8Array): boolean {
  if (!keyIs(publicKey, 'ed25519') || signature.length !== ED25519_SIGNATURE_BYTES) return false;
  try {
    return nodeVerify(null, message, publicKey, signature);
  } catch {
    return false;
  }
}
