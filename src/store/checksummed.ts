import { crc32 } from 'node:zlib';
import { AgentError } from '../core/errors.js';

/**
 * A small state file as one checksummed line, `<crc32 of the JSON, 8 lowercase hex> <JSON>\n`,
 * the journal's record format: a flipped bit anywhere shows as a checksum mismatch instead of
 * a plausible wrong value (a counter of 1034 instead of 1234).
 */

export function crcHex(bytes: string | Uint8Array): string {
  return crc32(typeof bytes === 'string' ? Buffer.from(bytes, 'utf8') : bytes)
    .toString(16)
    .padStart(8, '0');
}

export function encodeChecksummedJson(value: unknown): Buffer {
  const json = JSON.stringify(value);
  return Buffer.from(`${crcHex(json)} ${json}\n`, 'utf8');
}

const HEX8 = /^[0-9a-f]{8}$/;

/** True when `bytes` starts like a checksummed line (as opposed to plain JSON from before). */
export function looksChecksummed(bytes: Uint8Array): boolean {
  return (
    bytes.length > 9 && bytes[8] === 0x20 && HEX8.test(Buffer.from(bytes.subarray(0, 8)).toString('latin1'))
  );
}

/** The JSON bytes of a checksummed line; throws with the problem when it does not check out. */
export function checksummedBody(bytes: Uint8Array): Buffer {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  if (!looksChecksummed(buf)) throw new AgentError('state_corrupt', 'not a checksummed line');
  if (buf[buf.length - 1] !== 0x0a) throw new AgentError('state_corrupt', 'incomplete (no final newline)');
  const json = buf.subarray(9, buf.length - 1);
  if (crcHex(json) !== buf.toString('latin1', 0, 8))
    throw new AgentError('state_corrupt', 'checksum mismatch');
  return json;
}

/** Parses a checksummed line (or, with `legacyPlainJson`, plain JSON from before checksums). */
export function decodeChecksummedJson(bytes: Uint8Array, legacyPlainJson = false): unknown {
  const json = legacyPlainJson && !looksChecksummed(bytes) ? Buffer.from(bytes) : checksummedBody(bytes);
  try {
    return JSON.parse(json.toString('utf8'));
  } catch {
    throw new AgentError('state_corrupt', 'not valid JSON');
  }
}
