import { isCode } from '../../core/codes.js';
import { AgentError } from '../../core/errors.js';
import type { Intent } from '../../core/types.js';
import { concatBytes } from '../../crypto/encoding.js';
import {
  ANSWER_DOMAIN,
  CHALLENGE_BYTES,
  HELLO_DOMAIN,
  MAX_CODE_BYTES,
  MAX_ID_BYTES,
  PROTOCOL_VERSION,
  SIGNATURE_BYTES,
} from './constants.js';

/**
 * Messages of the vehicle-key protocol v1, byte by byte (docs/ble-protocol.md §Messages).
 * Every message starts with version (u8) ‖ type (u8). Integers are big-endian. Strings are
 * length-prefixed (u8) printable ASCII. Decoding is strict: exact length, no trailing bytes,
 * reserved bits zero; anything else is AgentError 'malformed' ('unsupported' for another version).
 *
 * hello  (vehicle → key)  01 01 | idLen | vehicleId | challenge[32] | windowMs u16 | sig[64]
 * answer (key → vehicle)  01 02 | intent | flags | idLen | vehicleId | challenge[32] | kidLen | keyId | sig[64]
 * result (vehicle → key)  01 03 | outcome | codeLen | code
 * abort  (either way)     01 04 | codeLen | code
 */

export const MESSAGE_TYPES = { hello: 0x01, answer: 0x02, result: 0x03, abort: 0x04 } as const;
export type MessageType = keyof typeof MESSAGE_TYPES;

export const INTENT_BYTES: Readonly<Record<Intent, number>> = { unlock: 0x01, lock: 0x02, toggle: 0x03 };
/** answer flags bit 0: the user acted on purpose (button, app, tap). Clear = passive proximity. */
export const FLAG_EXPLICIT_INTENT = 0x01;
export const OUTCOME_GRANTED = 0x00;
export const OUTCOME_DENIED = 0x01;

export interface HelloFields {
  readonly vehicleId: string;
  readonly challenge: Uint8Array;
  /** How long the key has, from the vehicle issuing the hello to the vehicle holding the answer. */
  readonly answerWindowMs: number;
}

export interface VehicleHello extends HelloFields {
  readonly type: 'hello';
  readonly version: number;
  readonly signature: Uint8Array;
  /** The exact bytes the vehicle signature covers (domain ‖ 0x00 ‖ hello without its signature). */
  readonly signedMessage: Uint8Array;
}

export interface AnswerFields {
  readonly intent: Intent;
  /** False for passive proximity (no user action); the vehicle accepts that only for keys enrolled with it. */
  readonly explicitIntent: boolean;
  readonly vehicleId: string;
  readonly challenge: Uint8Array;
  /** Credential id of the key, as the owner enrolled it (crypto/keys.ts keyCredentialId('phone', jwk)). */
  readonly keyId: string;
}

export interface KeyAnswer extends AnswerFields {
  readonly type: 'answer';
  readonly version: number;
  readonly signature: Uint8Array;
  /** The exact bytes the signature covers (domain ‖ 0x00 ‖ answer without its signature). */
  readonly signedMessage: Uint8Array;
}

export type ResultFields = { readonly granted: true } | { readonly granted: false; readonly code: string };
export type ResultMessage = ResultFields & { readonly type: 'result'; readonly version: number };

export interface AbortMessage {
  readonly type: 'abort';
  readonly version: number;
  readonly code: string;
}

export type ProtocolMessage = VehicleHello | KeyAnswer | ResultMessage | AbortMessage;

// ── encoding helpers ──────────────────────────────────────────────────────────

const ID_CHARS = /^[\x21-\x7e]+$/;
const CODE_CHARS = /^[a-z][a-z0-9_]*$/;
const ASCII = new TextEncoder();
const ASCII_DOMAINS = { hello: ASCII.encode(HELLO_DOMAIN), answer: ASCII.encode(ANSWER_DOMAIN) };

function malformed(message: string): AgentError {
  return new AgentError('malformed', message);
}

/** Checks an id (vehicle id, key id): 1..64 bytes of printable ASCII without space. */
export function isValidId(id: string): boolean {
  return id.length >= 1 && id.length <= MAX_ID_BYTES && ID_CHARS.test(id);
}

/** Checks a reason code as carried on the wire: 1..32 of [a-z0-9_], starting with a letter. */
export function isValidWireCode(code: string): boolean {
  return code.length >= 1 && code.length <= MAX_CODE_BYTES && CODE_CHARS.test(code);
}

function encodeId(id: string, what: string): Uint8Array {
  if (!isValidId(id)) throw malformed(`${what} must be 1..${MAX_ID_BYTES} printable ASCII characters`);
  const out = new Uint8Array(1 + id.length);
  out[0] = id.length;
  out.set(ASCII.encode(id), 1);
  return out;
}

function encodeCode(code: string): Uint8Array {
  if (!isCode(code) || !isValidWireCode(code)) throw malformed(`"${code}" is not a reason code of codes.ts`);
  const out = new Uint8Array(1 + code.length);
  out[0] = code.length;
  out.set(ASCII.encode(code), 1);
  return out;
}

function checkChallenge(challenge: Uint8Array): void {
  if (challenge.length !== CHALLENGE_BYTES) throw malformed(`challenge must be ${CHALLENGE_BYTES} bytes`);
}

function checkSignature(signature: Uint8Array): void {
  if (signature.length !== SIGNATURE_BYTES)
    throw malformed(`signature must be ${SIGNATURE_BYTES} bytes (r‖s)`);
}

function domainSeparated(domain: Uint8Array, body: Uint8Array): Uint8Array {
  return concatBytes(domain, Uint8Array.of(0x00), body);
}

// ── hello ─────────────────────────────────────────────────────────────────────

/** The hello without its signature. */
export function helloBody(fields: HelloFields): Uint8Array {
  checkChallenge(fields.challenge);
  const window = fields.answerWindowMs;
  if (!Number.isInteger(window) || window < 1 || window > 0xffff)
    throw malformed('answer window must be 1..65535 ms');
  return concatBytes(
    Uint8Array.of(PROTOCOL_VERSION, MESSAGE_TYPES.hello),
    encodeId(fields.vehicleId, 'vehicle id'),
    fields.challenge,
    Uint8Array.of(window >> 8, window & 0xff),
  );
}

/** What the vehicle key signs (ECDSA P-256, SHA-256): "vehicle-agent/ble/v1/hello" ‖ 0x00 ‖ body. */
export function helloSignedMessage(fields: HelloFields): Uint8Array {
  return domainSeparated(ASCII_DOMAINS.hello, helloBody(fields));
}

export function encodeHello(fields: HelloFields, signature: Uint8Array): Uint8Array {
  checkSignature(signature);
  return concatBytes(helloBody(fields), signature);
}

/** Builds a signed hello; `sign` returns a 64-byte r‖s P-256 signature over SHA-256(message). */
export function buildHello(fields: HelloFields, sign: (message: Uint8Array) => Uint8Array): Uint8Array {
  const signature = sign(helloSignedMessage(fields));
  if (signature.length !== SIGNATURE_BYTES) {
    throw new AgentError('internal', `vehicle signer returned ${signature.length} bytes, not a 64-byte r‖s`);
  }
  return encodeHello(fields, signature);
}

// ── answer ────────────────────────────────────────────────────────────────────

/** The answer without its signature. */
export function answerBody(fields: AnswerFields): Uint8Array {
  checkChallenge(fields.challenge);
  const intent = INTENT_BYTES[fields.intent];
  if (intent === undefined) throw malformed('intent must be unlock, lock or toggle');
  return concatBytes(
    Uint8Array.of(
      PROTOCOL_VERSION,
      MESSAGE_TYPES.answer,
      intent,
      fields.explicitIntent ? FLAG_EXPLICIT_INTENT : 0,
    ),
    encodeId(fields.vehicleId, 'vehicle id'),
    fields.challenge,
    encodeId(fields.keyId, 'key id'),
  );
}

/**
 * What the key signs (ECDSA P-256, SHA-256): "vehicle-agent/ble/v1/answer" ‖ 0x00 ‖ answer body.
 * The body binds the protocol version, intent, the explicit-intent flag, vehicle id, challenge and
 * key id; every variable field is length-prefixed, so no two field sets give the same bytes.
 */
export function answerSignedMessage(fields: AnswerFields): Uint8Array {
  return domainSeparated(ASCII_DOMAINS.answer, answerBody(fields));
}

export function encodeAnswer(fields: AnswerFields, signature: Uint8Array): Uint8Array {
  checkSignature(signature);
  return concatBytes(answerBody(fields), signature);
}

// ── result and abort ──────────────────────────────────────────────────────────

export function encodeResult(result: ResultFields): Uint8Array {
  if (result.granted) return Uint8Array.of(PROTOCOL_VERSION, MESSAGE_TYPES.result, OUTCOME_GRANTED, 0);
  return concatBytes(
    Uint8Array.of(PROTOCOL_VERSION, MESSAGE_TYPES.result, OUTCOME_DENIED),
    encodeCode(result.code),
  );
}

export function encodeAbort(code: string): Uint8Array {
  return concatBytes(Uint8Array.of(PROTOCOL_VERSION, MESSAGE_TYPES.abort), encodeCode(code));
}

// ── decoding ──────────────────────────────────────────────────────────────────

/** Sequential reader over one message; every read checks the bounds. */
export class Cursor {
  private offset = 0;
  constructor(private readonly bytes: Uint8Array) {}

  u8(what: string): number {
    const value = this.bytes[this.offset];
    if (value === undefined) throw malformed(`message ends before ${what}`);
    this.offset++;
    return value;
  }

  u32(what: string): number {
    const b = this.take(4, what);
    return (((b[0] ?? 0) << 24) >>> 0) + ((b[1] ?? 0) << 16) + ((b[2] ?? 0) << 8) + (b[3] ?? 0);
  }

  take(length: number, what: string): Uint8Array {
    if (this.offset + length > this.bytes.length) throw malformed(`message ends inside ${what}`);
    const out = this.bytes.slice(this.offset, this.offset + length);
    this.offset += length;
    return out;
  }

  id(what: string): string {
    const length = this.u8(`${what} length`);
    if (length < 1 || length > MAX_ID_BYTES)
      throw malformed(`${what} length ${length} outside 1..${MAX_ID_BYTES}`);
    const text = String.fromCharCode(...this.take(length, what));
    if (!ID_CHARS.test(text)) throw malformed(`${what} is not printable ASCII`);
    return text;
  }

  code(): string {
    const length = this.u8('code length');
    if (length < 1 || length > MAX_CODE_BYTES)
      throw malformed(`code length ${length} outside 1..${MAX_CODE_BYTES}`);
    const text = String.fromCharCode(...this.take(length, 'code'));
    if (!CODE_CHARS.test(text)) throw malformed('code is not [a-z0-9_]');
    return text;
  }

  get position(): number {
    return this.offset;
  }

  end(): void {
    if (this.offset !== this.bytes.length) {
      throw malformed(`${this.bytes.length - this.offset} unexpected bytes after the message`);
    }
  }
}

const INTENT_OF_BYTE = new Map<number, Intent>(
  (Object.entries(INTENT_BYTES) as [Intent, number][]).map(([intent, byte]) => [byte, intent]),
);

/**
 * Decodes any v1 message. Throws AgentError 'unsupported' for another protocol version and
 * 'malformed' for everything else that is not exactly a v1 message.
 */
export function decodeMessage(bytes: Uint8Array): ProtocolMessage {
  const cursor = new Cursor(bytes);
  const version = cursor.u8('version');
  if (version !== PROTOCOL_VERSION) {
    throw new AgentError(
      'unsupported',
      `protocol version ${version} is not supported (this side speaks ${PROTOCOL_VERSION})`,
      {
        version,
      },
    );
  }
  const type = cursor.u8('type');
  switch (type) {
    case MESSAGE_TYPES.hello: {
      const vehicleId = cursor.id('vehicle id');
      const challenge = cursor.take(CHALLENGE_BYTES, 'challenge');
      const answerWindowMs = (cursor.u8('answer window') << 8) | cursor.u8('answer window');
      if (answerWindowMs === 0) throw malformed('answer window 0');
      const bodyEnd = cursor.position;
      const signature = cursor.take(SIGNATURE_BYTES, 'signature');
      cursor.end();
      const signedMessage = domainSeparated(ASCII_DOMAINS.hello, bytes.subarray(0, bodyEnd));
      return { type: 'hello', version, vehicleId, challenge, answerWindowMs, signature, signedMessage };
    }
    case MESSAGE_TYPES.answer: {
      const intent = INTENT_OF_BYTE.get(cursor.u8('intent'));
      if (intent === undefined) throw malformed('unknown intent');
      const flags = cursor.u8('flags');
      if ((flags & ~FLAG_EXPLICIT_INTENT) !== 0) throw malformed('reserved flag bits set');
      const vehicleId = cursor.id('vehicle id');
      const challenge = cursor.take(CHALLENGE_BYTES, 'challenge');
      const keyId = cursor.id('key id');
      const bodyEnd = cursor.position;
      const signature = cursor.take(SIGNATURE_BYTES, 'signature');
      cursor.end();
      const explicitIntent = (flags & FLAG_EXPLICIT_INTENT) !== 0;
      const signedMessage = domainSeparated(ASCII_DOMAINS.answer, bytes.subarray(0, bodyEnd));
      return {
        type: 'answer',
        version,
        intent,
        explicitIntent,
        vehicleId,
        challenge,
        keyId,
        signature,
        signedMessage,
      };
    }
    case MESSAGE_TYPES.result: {
      const outcome = cursor.u8('outcome');
      if (outcome === OUTCOME_GRANTED) {
        if (cursor.u8('code length') !== 0) throw malformed('a grant carries no code');
        cursor.end();
        return { type: 'result', version, granted: true };
      }
      if (outcome !== OUTCOME_DENIED) throw malformed('unknown outcome');
      const code = cursor.code();
      cursor.end();
      return { type: 'result', version, granted: false, code };
    }
    case MESSAGE_TYPES.abort: {
      const code = cursor.code();
      cursor.end();
      return { type: 'abort', version, code };
    }
    default:
      throw malformed(`unknown message type 0x${type.toString(16).padStart(2, '0')}`);
  }
}

/** Decodes a message that must be of one type (e.g. the vehicle expects an answer or an abort). */
export function decodeExpecting<T extends MessageType>(
  bytes: Uint8Array,
  ...types: readonly T[]
): Extract<ProtocolMessage, { type: T }> {
  const message = decodeMessage(bytes);
  if (!(types as readonly string[]).includes(message.type)) {
    throw malformed(`unexpected ${message.type} message (expected ${types.join(' or ')})`);
  }
  return message as Extract<ProtocolMessage, { type: T }>;
}
