/**
 * Fixed numbers of mode P, the vehicle as GATT peripheral (protocol v2, docs/ble-protocol.md
 * part "Mode P"). The web app (web/phone-key/) cannot import Node modules and copies these values:
 * changing one is a protocol change for both sides.
 */

/** The phone-key service the vehicle hosts and advertises. Random UUIDs, generated once. */
export const PERIPHERAL_SERVICE_UUID = '16b4a5e5-1d72-4bb6-8dc9-8377e988aae2';
/** Read: a fresh challenge for this connection (each read replaces the previous one). */
export const CHALLENGE_CHAR_UUID = 'b808ae76-22bb-4b4f-945f-cae656d66142';
/** Write with response: one whole answer, passkey or enroll message (one ATT long write). */
export const ANSWER_CHAR_UUID = '4055a9af-e75f-47a0-9537-b5af92636544';
/** Read and notify: the latest result message of this connection. */
export const RESULT_CHAR_UUID = 'f3ffc6a0-648c-4d18-9bd2-0b9e12474ef1';

export const MODE_P_VERSION = 0x02;
export const MODE_P_TYPES = {
  challenge: 0x21,
  answer: 0x22,
  passkey: 0x23,
  result: 0x24,
  enroll: 0x25,
} as const;

/** One message is one ATT value: at most 512 bytes. */
export const MODE_P_MAX_MESSAGE_BYTES = 512;
export const NONCE_BYTES = 32;
/** A web key's signature: IEEE P1363 r‖s. */
export const P1363_SIGNATURE_BYTES = 64;
/** Longest DER ECDSA P-256 signature (two 33-byte INTEGERs with headers). */
export const MAX_DER_SIGNATURE_BYTES = 72;

/** Domain-separation prefixes (ASCII, each followed by one 0x00 byte in the signed bytes). */
export const ANSWER_DOMAIN_V2 = 'vehicle-agent/ble/v2/answer';
export const PASSKEY_DOMAIN_V2 = 'vehicle-agent/ble/v2/passkey';
export const ENROLL_DOMAIN_V2 = 'vehicle-agent/ble/v2/enroll';
export const RESULT_DOMAIN_V2 = 'vehicle-agent/ble/v2/result';
