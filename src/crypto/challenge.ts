import { type KeyObject, sign as nodeSign } from 'node:crypto';
import type { Intent } from '../core/types.js';
import { concatBytes } from './encoding.js';

/**
 * The message a key signs to answer a vehicle challenge on the simulated reader: domain-separated
 * so a signature made here can never be replayed as anything else, and binding challenge, vehicle,
 * intent (with whether the user acted) and key id.
 */
export const SIM_KEY_DOMAIN = 'vehicle-agent/sim-key/v1';

const enc = new TextEncoder();

function lengthPrefixed(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(2 + bytes.length);
  out[0] = bytes.length >> 8;
  out[1] = bytes.length & 0xff;
  out.set(bytes, 2);
  return out;
}

export function simKeyMessage(
  challenge: Uint8Array,
  vehicleId: string,
  intent: Intent,
  explicitIntent: boolean,
  credentialId: string,
): Uint8Array {
  return concatBytes(
    lengthPrefixed(enc.encode(SIM_KEY_DOMAIN)),
    lengthPrefixed(challenge),
    lengthPrefixed(enc.encode(vehicleId)),
    lengthPrefixed(enc.encode(intent)),
    Uint8Array.of(explicitIntent ? 1 : 0),
    lengthPrefixed(enc.encode(credentialId)),
  );
}

/** P-256 ECDSA over SHA-256, 64-byte r‖s, high-S accepted: the unlock path's one verifier. */
export { verifyP256 } from './verify.js';

export function signP256(privateKey: KeyObject, message: Uint8Array): Uint8Array {
  return new Uint8Array(nodeSign('sha256', message, { key: privateKey, dsaEncoding: 'ieee-p1363' }));
}
