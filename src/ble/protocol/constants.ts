/**
 * Fixed numbers of the vehicle-key protocol v1 (docs/ble-protocol.md). Changing any of them is a
 * protocol change: bump PROTOCOL_VERSION and the document.
 */

export const PROTOCOL_VERSION = 1;

/**
 * GATT service of the vehicle key. The side that is the GATT server (today the key: phone or fob)
 * hosts both characteristics; the UUIDs name the direction of the bytes, not the ATT operation.
 * Random 128-bit UUIDs, generated once; never reuse them for anything else.
 */
export const SERVICE_UUID = 'ca5f5490-6a2b-496f-b718-c9a989eb8306';
/** Bytes from the vehicle to the key. Key as GATT server: Write (with response). */
export const VEHICLE_TO_KEY_UUID = 'f6474ad6-7b46-4f83-a69b-cabe10bd5c6d';
/** Bytes from the key to the vehicle. Key as GATT server: Notify. */
export const KEY_TO_VEHICLE_UUID = '9e1bb24b-f529-409a-a411-b75b5034ff55';

/** A reassembled frame (one message) is never longer than this. */
export const MAX_FRAME_BYTES = 512;
/** The reassembler drops a partial frame whose first chunk is older than this. */
export const REASSEMBLY_TIMEOUT_MS = 1000;
/** Chunk size when the ATT MTU is unknown: the minimum ATT_MTU 23 less the 3-byte ATT header. */
export const DEFAULT_CHUNK_BYTES = 20;
/** Smallest chunk that still carries a first-chunk header, the length and one byte. */
export const MIN_CHUNK_BYTES = 4;
/** An ATT attribute value is at most 512 bytes (Core spec Vol 3 Part F 3.2.9). */
export const MAX_CHUNK_BYTES = 512;

export const CHALLENGE_BYTES = 32;
export const SIGNATURE_BYTES = 64;
export const MAX_ID_BYTES = 64;
export const MAX_CODE_BYTES = 32;

/** Domain-separation prefixes of the two signed messages (ASCII, followed by one 0x00 byte). */
export const HELLO_DOMAIN = 'vehicle-agent/ble/v1/hello';
export const ANSWER_DOMAIN = 'vehicle-agent/ble/v1/answer';
