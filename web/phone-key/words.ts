/**
 * Every code a result can carry, in words for the person holding the phone. The codes are the
 * agent's stable codes (src/core/codes.ts); test/unit/web/phone-key-words.test.ts checks each
 * one here is a real agent code and that the decision codes are all covered.
 */
export const RESULT_WORDS: Readonly<Record<string, string>> = {
  granted: 'Done: the vehicle accepted this key.',
  enrollment_pending: 'Waiting for the owner to approve this phone at the vehicle.',
  unknown_credential: 'The vehicle does not know this key. Enroll it first.',
  revoked: 'This key was revoked by the owner. It no longer opens the vehicle.',
  not_yet_valid: 'This key is not valid yet. Try again later or ask the owner.',
  expired: 'This key has expired. Ask the owner for a new one.',
  bad_proof: 'The vehicle could not verify this key’s signature.',
  replay: 'The vehicle refused a repeated answer. Try again.',
  rate_limited: 'Too many attempts. Wait a moment and try again.',
  clone_suspected: 'The vehicle suspects this key was copied. Ask the owner.',
  timeout: 'The answer reached the vehicle too late. Try again, closer to it.',
  challenge_expired: 'The answer reached the vehicle too late. Try again, closer to it.',
  no_challenge: 'The vehicle had no challenge for this connection. Try again.',
  role_not_allowed: 'This key may not do that.',
  intent_required: 'The vehicle needs you to press the button to confirm.',
  wrong_vehicle: 'This is not the vehicle this phone is paired with.',
  malformed: 'The vehicle could not read the message. Update this page and try again.',
  unsupported: 'The vehicle does not support this kind of key.',
  credential_suspect: 'The vehicle’s record of this key is damaged. The owner must repair it.',
  user_verification_required: 'The passkey was used without unlocking the phone (fingerprint, face or PIN).',
  origin_not_allowed: 'The vehicle does not accept keys from this web address.',
  counter_replay: 'The passkey’s counter went backwards: it may have been copied.',
  enrollment_closed: 'No enrollment is open at the vehicle, or the request expired. Start again.',
  already_enrolled: 'This key is already enrolled (or was revoked and cannot come back).',
  busy: 'The vehicle is busy. Try again in a moment.',
  unavailable: 'The vehicle is starting or stopping. Try again shortly.',
  state_io: 'The vehicle could not read its key list. Try again.',
  reader_error: 'The vehicle’s Bluetooth reader failed. Try again.',
  frame_too_large: 'The message was too large for the vehicle.',
  internal: 'The vehicle had an internal error.',
};

export function resultInWords(code: string): string {
  return RESULT_WORDS[code] ?? `The vehicle answered “${code}”, which this page does not know.`;
}
