import type { KeyObject } from 'node:crypto';
import { isAgentError } from '../../core/errors.js';
import type { ProofVerdict, PublicJwk } from '../../core/types.js';
import { bytesEqual } from '../../crypto/encoding.js';
import { algorithmOf, cachedPublicKey } from '../../crypto/keys.js';
import { verifyP256 } from '../../crypto/verify.js';
import {
  answerSignedMessage,
  decodeMessage,
  helloSignedMessage,
  type KeyAnswer,
  type VehicleHello,
} from './messages.js';

/**
 * The vehicle's checks of a key answer, with the unlock path's verifier (src/crypto/verify.ts:
 * node:crypto, the faster one, and independent of the simulated phones, which sign with
 * @noble/curves). High-S signatures are accepted, as they must be: phone secure elements do not
 * normalise s.
 */

/** Something that knows the challenges of earlier sessions (see session.ts RecentChallenges). */
export interface ChallengeMemory {
  has(challenge: Uint8Array): boolean;
}

export interface AnswerExpectation {
  /** The challenge of this session's hello. */
  readonly challenge: Uint8Array;
  readonly vehicleId: string;
  /** The enrolled public key of the credential named by the answer's key id (P-256). */
  readonly publicKey: KeyObject | PublicJwk;
  /** Earlier challenges: an answer bound to one of them is 'replayed' rather than 'invalid'. */
  readonly earlierChallenges?: ChallengeMemory;
}

function p256Key(key: KeyObject | PublicJwk): KeyObject | undefined {
  try {
    const object = 'kty' in key ? cachedPublicKey(key) : key;
    return algorithmOf(object) === 'P-256' ? object : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Checks a key answer (decoded, or the raw message bytes) against this session.
 *   'malformed' / 'unsupported'  the bytes are not a v1 answer / the key is not a P-256 key
 *   'wrong_vehicle'              the answer names another vehicle
 *   'replayed'                   the answer is bound to an earlier session's challenge
 *   'invalid'                    another challenge, or the signature does not verify
 *   'valid'                      the enrolled key signed exactly this challenge, vehicle, intent and key id
 * The caller found `publicKey` in the keyring under the answer's key id. Deadlines are the
 * session's business (session.ts), not this function's.
 */
export function verifyKeyAnswer(answer: KeyAnswer | Uint8Array, expected: AnswerExpectation): ProofVerdict {
  let decoded: KeyAnswer;
  if (answer instanceof Uint8Array) {
    try {
      const message = decodeMessage(answer);
      if (message.type !== 'answer') return 'malformed';
      decoded = message;
    } catch (err) {
      return isAgentError(err) && err.code === 'unsupported' ? 'unsupported' : 'malformed';
    }
  } else {
    decoded = answer;
  }
  if (decoded.vehicleId !== expected.vehicleId) return 'wrong_vehicle';
  if (!bytesEqual(decoded.challenge, expected.challenge)) {
    return expected.earlierChallenges?.has(decoded.challenge) ? 'replayed' : 'invalid';
  }
  const key = p256Key(expected.publicKey);
  if (key === undefined) return 'unsupported';
  let signed: Uint8Array;
  try {
    // Rebuilt from the fields, never taken from the object, so what is verified is what is acted on.
    signed = answerSignedMessage(decoded);
  } catch {
    return 'malformed';
  }
  return verifyP256(key, signed, decoded.signature) ? 'valid' : 'invalid';
}

/** The vehicle signature of a hello, checked as answers are (the reference phone uses noble). */
export function verifyHelloSignature(hello: VehicleHello, vehiclePublicKey: KeyObject | PublicJwk): boolean {
  const key = p256Key(vehiclePublicKey);
  if (key === undefined) return false;
  try {
    return verifyP256(key, helloSignedMessage(hello), hello.signature);
  } catch {
    return false;
  }
}
