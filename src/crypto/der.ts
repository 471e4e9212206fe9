import { AgentError } from '../core/errors.js';

/** One DER TLV header as found in `bytes` at some offset. */
export interface DerElement {
  readonly tag: number;
  readonly offset: number;
  readonly headerLength: number;
  /** Content length. */
  readonly length: number;
  /** Offset just past the element. */
  readonly end: number;
}

/**
 * Reads the DER tag and definite length at `offset` (low tag numbers; lengths in short form or
 * long form of 1–3 bytes) and checks the element fits in `bytes`. Malformed otherwise: enough
 * to find where a certificate or signature ends, not a general ASN.1 parser.
 */
export function readDerElement(bytes: Uint8Array, offset = 0): DerElement {
  const tag = bytes[offset];
  const first = bytes[offset + 1];
  if (tag === undefined || first === undefined) throw new AgentError('malformed', 'DER element truncated');
  if ((tag & 0x1f) === 0x1f) throw new AgentError('malformed', 'DER high tag numbers are not supported');
  let length: number;
  let headerLength: number;
  if (first < 0x80) {
    length = first;
    headerLength = 2;
  } else {
    const count = first & 0x7f;
    if (count === 0 || count > 3)
      throw new AgentError('malformed', 'DER length form not supported', { count });
    length = 0;
    for (let i = 0; i < count; i++) {
      const b = bytes[offset + 2 + i];
      if (b === undefined) throw new AgentError('malformed', 'DER length truncated');
      length = length * 256 + b;
    }
    if (length < 0x80) throw new AgentError('malformed', 'DER length not minimally encoded');
    headerLength = 2 + count;
  }
  const end = offset + headerLength + length;
  if (end > bytes.length) throw new AgentError('malformed', 'DER element runs past the data', { end });
  return { tag, offset, headerLength, length, end };
}
