import { AgentError, isAgentError } from '../core/errors.js';

/**
 * ISO/IEC 7816-4 command and response APDUs: encoding (short and extended Lc/Le), parsing (for
 * the simulated cards), status words, 61XX / GET RESPONSE collection and command chaining.
 * Pure, except `exchange`, which runs a caller-supplied transceive.
 */

/** Sends one command APDU to the card and resolves with its response APDU (data ‖ SW1 ‖ SW2). */
export type Transceive = (apdu: Uint8Array) => Promise<Uint8Array>;

export interface CommandApdu {
  readonly cla: number;
  readonly ins: number;
  readonly p1: number;
  readonly p2: number;
  readonly data?: Uint8Array;
  /** Ne, the number of response bytes expected (1..65536); absent means no Le field. */
  readonly le?: number;
}

export interface ResponseApdu {
  readonly data: Uint8Array;
  readonly sw1: number;
  readonly sw2: number;
  /** SW1 << 8 | SW2 */
  readonly sw: number;
}

export const SW = {
  OK: 0x9000,
  WRONG_LENGTH: 0x6700,
  SECURITY_NOT_SATISFIED: 0x6982,
  CONDITIONS_NOT_SATISFIED: 0x6985,
  WRONG_DATA: 0x6a80,
  FILE_NOT_FOUND: 0x6a82,
  INCORRECT_P1P2: 0x6a86,
  INS_NOT_SUPPORTED: 0x6d00,
  CLA_NOT_SUPPORTED: 0x6e00,
  UNKNOWN: 0x6f00,
} as const;

export const INS_GET_RESPONSE = 0xc0;
export const INS_SELECT = 0xa4;
/** CLA bit that marks a non-final command of a chain (ISO 7816-4 §5.1.1). */
export const CLA_CHAINING = 0x10;

export function swHex(sw: number): string {
  return sw.toString(16).toUpperCase().padStart(4, '0');
}

function byte(value: number, what: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xff) {
    throw new AgentError('internal', `${what} must be a byte`, { value });
  }
  return value;
}

/**
 * Encodes a command APDU. Short form when Lc ≤ 255 and Ne ≤ 256, unless `extended` is asked for;
 * extended form otherwise (Lc up to 65535, Ne up to 65536).
 */
export function encodeCommand(command: CommandApdu, options: { extended?: boolean } = {}): Uint8Array {
  const data = command.data ?? new Uint8Array(0);
  const le = command.le;
  if (data.length > 0xffff) throw new AgentError('frame_too_large', 'APDU data exceeds 65535 bytes');
  if (le !== undefined && (!Number.isInteger(le) || le < 1 || le > 65536)) {
    throw new AgentError('internal', 'Ne must be 1..65536', { le });
  }
  const header = [
    byte(command.cla, 'CLA'),
    byte(command.ins, 'INS'),
    byte(command.p1, 'P1'),
    byte(command.p2, 'P2'),
  ];
  const extended = options.extended === true || data.length > 255 || (le !== undefined && le > 256);
  const out: number[] = header;
  if (!extended) {
    if (data.length > 0) out.push(data.length);
    const bytes = new Uint8Array(out.length + data.length + (le === undefined ? 0 : 1));
    bytes.set(out, 0);
    bytes.set(data, out.length);
    if (le !== undefined) bytes[bytes.length - 1] = le === 256 ? 0 : le;
    return bytes;
  }
  if (data.length > 0) out.push(0x00, data.length >> 8, data.length & 0xff);
  const leBytes: number[] = [];
  if (le !== undefined) {
    const v = le === 65536 ? 0 : le;
    if (data.length === 0) leBytes.push(0x00);
    leBytes.push(v >> 8, v & 0xff);
  }
  const bytes = new Uint8Array(out.length + data.length + leBytes.length);
  bytes.set(out, 0);
  bytes.set(data, out.length);
  bytes.set(leBytes, out.length + data.length);
  return bytes;
}

export interface ParsedCommand extends CommandApdu {
  readonly data: Uint8Array;
  readonly extended: boolean;
}

/** Parses a command APDU (cases 1–4, short and extended). Malformed on any inconsistency. */
export function parseCommand(apdu: Uint8Array): ParsedCommand {
  if (apdu.length < 4) throw new AgentError('malformed', 'command APDU shorter than its header');
  const [cla = 0, ins = 0, p1 = 0, p2 = 0] = apdu;
  const head = { cla, ins, p1, p2 };
  const body = apdu.subarray(4);
  const empty = new Uint8Array(0);
  if (body.length === 0) return { ...head, data: empty, extended: false };
  if (body.length === 1)
    return { ...head, data: empty, le: body[0] === 0 ? 256 : (body[0] ?? 0), extended: false };
  const first = body[0] ?? 0;
  if (first !== 0) {
    // short Lc
    const lc = first;
    if (body.length === 1 + lc) return { ...head, data: body.slice(1), extended: false };
    if (body.length === 2 + lc) {
      const le = body[1 + lc] ?? 0;
      return { ...head, data: body.slice(1, 1 + lc), le: le === 0 ? 256 : le, extended: false };
    }
    throw new AgentError('malformed', 'command APDU length does not match Lc', { lc, length: apdu.length });
  }
  // first byte 00 with more bytes: extended
  if (body.length === 3) {
    const v = ((body[1] ?? 0) << 8) | (body[2] ?? 0);
    return { ...head, data: empty, le: v === 0 ? 65536 : v, extended: true };
  }
  const lc = ((body[1] ?? 0) << 8) | (body[2] ?? 0);
  if (lc === 0) throw new AgentError('malformed', 'extended Lc of zero');
  if (body.length === 3 + lc) return { ...head, data: body.slice(3), extended: true };
  if (body.length === 5 + lc) {
    const v = ((body[3 + lc] ?? 0) << 8) | (body[4 + lc] ?? 0);
    return { ...head, data: body.slice(3, 3 + lc), le: v === 0 ? 65536 : v, extended: true };
  }
  throw new AgentError('malformed', 'command APDU length does not match extended Lc', {
    lc,
    length: apdu.length,
  });
}

/** Splits a response APDU into data and status word. Malformed when shorter than SW1 SW2. */
export function parseResponse(response: Uint8Array): ResponseApdu {
  if (response.length < 2) {
    throw new AgentError('malformed', 'response APDU shorter than its status word', {
      length: response.length,
    });
  }
  const sw1 = response[response.length - 2] ?? 0;
  const sw2 = response[response.length - 1] ?? 0;
  return { data: response.slice(0, response.length - 2), sw1, sw2, sw: (sw1 << 8) | sw2 };
}

/** Builds a response APDU (used by the simulated cards). */
export function encodeResponse(data: Uint8Array, sw: number): Uint8Array {
  const out = new Uint8Array(data.length + 2);
  out.set(data, 0);
  out[data.length] = (sw >> 8) & 0xff;
  out[data.length + 1] = sw & 0xff;
  return out;
}

/** SELECT by DF name (AID), P1 = 04. P2 00 asks for FCI, 0C for none; `le` omitted means no Le. */
export function selectByAid(aid: Uint8Array, options: { p2?: number; le?: number } = {}): Uint8Array {
  if (aid.length < 1 || aid.length > 16) throw new AgentError('internal', 'AID must be 1..16 bytes');
  const command: CommandApdu = {
    cla: 0x00,
    ins: INS_SELECT,
    p1: 0x04,
    p2: options.p2 ?? 0x00,
    data: aid,
    ...(options.le === undefined ? {} : { le: options.le }),
  };
  return encodeCommand(command);
}

/** GET RESPONSE 00 C0 00 00 Le (Le 00 = 256). */
export function getResponseApdu(le = 256): Uint8Array {
  return encodeCommand({ cla: 0x00, ins: INS_GET_RESPONSE, p1: 0, p2: 0, le });
}

/**
 * Splits a command whose data exceeds `chunk` bytes into a short-APDU chain: every part but the
 * last has CLA | 0x10 and no Le; the last carries the original CLA and Le.
 */
export function chainCommand(command: CommandApdu, chunk = 255): Uint8Array[] {
  if (chunk < 1 || chunk > 255) throw new AgentError('internal', 'chain chunk must be 1..255');
  const data = command.data ?? new Uint8Array(0);
  if (data.length <= chunk) return [encodeCommand(command)];
  const parts: Uint8Array[] = [];
  for (let offset = 0; offset < data.length; offset += chunk) {
    const piece = data.subarray(offset, offset + chunk);
    const last = offset + chunk >= data.length;
    const part: CommandApdu = last
      ? { ...command, data: piece }
      : { cla: command.cla | CLA_CHAINING, ins: command.ins, p1: command.p1, p2: command.p2, data: piece };
    parts.push(encodeCommand(part));
  }
  return parts;
}

/**
 * Runs the transceive and turns anything it throws that is not an AgentError (a driver bug, a
 * closed port) into `reader_error`, so callers only ever see coded errors.
 */
export async function exchange(transceive: Transceive, apdu: Uint8Array): Promise<ResponseApdu> {
  let raw: Uint8Array;
  try {
    raw = await transceive(apdu);
  } catch (err) {
    if (isAgentError(err)) throw err;
    throw new AgentError(
      'reader_error',
      err instanceof Error ? err.message : String(err),
      {},
      { cause: err },
    );
  }
  if (!(raw instanceof Uint8Array)) throw new AgentError('reader_error', 'transceive returned no bytes');
  return parseResponse(raw);
}

export interface CollectOptions {
  /** Upper bound on the response data assembled from 61XX parts (default 4096). */
  readonly maxBytes?: number;
  /** Upper bound on GET RESPONSE rounds (default 32). */
  readonly maxRounds?: number;
}

/**
 * Sends a command (chained when its data exceeds 255 bytes) and assembles the whole answer:
 * follows 61XX with GET RESPONSE (XX = 00 means 256) and re-sends once on 6CXX with Le = XX.
 * The returned status word is the final one; data is the concatenation of every part.
 */
export async function transmit(
  transceive: Transceive,
  command: CommandApdu,
  options: CollectOptions = {},
): Promise<ResponseApdu> {
  const maxBytes = options.maxBytes ?? 4096;
  const maxRounds = options.maxRounds ?? 32;
  const parts = chainCommand(command);
  for (const part of parts.slice(0, -1)) {
    const r = await exchange(transceive, part);
    if (r.sw !== SW.OK) return r;
  }
  const lastPart = parts[parts.length - 1] ?? encodeCommand(command);
  let response = await exchange(transceive, lastPart);
  if (response.sw1 === 0x6c && parts.length === 1) {
    response = await exchange(
      transceive,
      encodeCommand({ ...command, le: response.sw2 === 0 ? 256 : response.sw2 }),
    );
  }
  const chunks: Uint8Array[] = [response.data];
  let total = response.data.length;
  let rounds = 0;
  while (response.sw1 === 0x61) {
    if (++rounds > maxRounds) throw new AgentError('malformed', 'too many GET RESPONSE rounds', { rounds });
    response = await exchange(transceive, getResponseApdu(response.sw2 === 0 ? 256 : response.sw2));
    total += response.data.length;
    if (total > maxBytes)
      throw new AgentError('frame_too_large', 'card answer exceeds the limit', { maxBytes });
    chunks.push(response.data);
  }
  if (total > maxBytes)
    throw new AgentError('frame_too_large', 'card answer exceeds the limit', { maxBytes });
  const data = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) {
    data.set(c, offset);
    offset += c.length;
  }
  return { data, sw1: response.sw1, sw2: response.sw2, sw: response.sw };
}
