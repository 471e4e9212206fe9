import { isCode } from '../../core/codes.js';
import { AgentError } from '../../core/errors.js';
import type { Intent } from '../../core/types.js';
import { concatBytes } from '../../crypto/encoding.js';
import { MAX_CODE_BYTES, MAX_ID_BYTES } from './constants.js';
import { isValidId, isValidWireCode } from './messages.js';
import {
  ANSWER_DOMAIN_V2,
  ENROLL_DOMAIN_V2,
  MAX_DER_SIGNATURE_BYTES,
  MODE_P_MAX_MESSAGE_BYTES,
  MODE_P_TYPES,
  MODE_P_VERSION,
  NONCE_BYTES,
  P1363_SIGNATURE_BYTES,
  PASSKEY_DOMAIN_V2,
  RESULT_DOMAIN_V2,
} from './peripheral-constants.js';

/**
 * Messages of mode P (the vehicle as peripheral, protocol v2; docs/ble-protocol.md part
 * "Mode P"), byte by byte. Every message starts with version 0x02 ‖ type. Integers big-endian;
 * strings u8-length-prefixed ASCII. Decoding is strict: exact lengths, no trailing bytes, known
 * enum values, reserved flag bits zero; anything else is AgentError 'malformed' ('unsupported'
 * for another version, 'frame_too_large' past 512 bytes). Pure: no I/O, no clock.
 *
 * challenge  02 21 | idLen | vehicleId | nonce[32] | issuedAtMs u64 | windowMs u16
 * answer     02 22 | intent | flags | kidLen | keyId | nonce[32] | sig[64]
 * passkey    02 23 | intent | flags | credIdLen | credId | nonce[32] | authDataLen u16 | authData
 *                  | clientDataLen u16 | clientDataJSON | sigLen u8 | sig (DER)
 * enroll     02 25 | kind | nameLen | name | nonce[32] | spkiLen u16 | spki | credIdLen | credId
 *                  | rpIdLen | rpId | sigLen | sig
 * result     02 24 | outcome | codeLen | code | sigLen | sig | spkiLen u16 | vehicle SPKI
 */

/** Mode P adds `identify`: the key proves itself and gets a signed result, no relay action. */
export type ModePIntent = Intent | 'identify';
export const MODE_P_INTENT_BYTES: Readonly<Record<ModePIntent, number>> = {
  unlock: 1,
  lock: 2,
  toggle: 3,
  identify: 4,
};
/** flags bit 0: the user acted on purpose (a button click). Other bits are reserved (zero). */
export const FLAG_EXPLICIT = 0x01;

export const ENROLL_KINDS = { webkey: 1, passkey: 2 } as const;
export type EnrollKind = keyof typeof ENROLL_KINDS;

export const RESULT_OUTCOMES = { granted: 0, denied: 1, pending: 2 } as const;
export type ResultOutcome = keyof typeof RESULT_OUTCOMES;

/** Longest enrollment name (printable ASCII, space allowed). */
export const MAX_NAME_BYTES = 64;
/** Longest rpId (a DNS name or an IP literal). */
export const MAX_RP_ID_BYTES = 253;

export interface ChallengeFields {
  readonly vehicleId: string;
  readonly nonce: Uint8Array;
  /** Vehicle wall clock when the challenge was read (ms since the epoch; informative for the page). */
  readonly issuedAtMs: number;
  /** The answer deadline counted from the read. 1..65535. */
  readonly windowMs: number;
}

export interface AnswerFields {
  readonly intent: ModePIntent;
  readonly explicitIntent: boolean;
  /** The phone credential id of the web key (keyCredentialId('phone', jwk)). */
  readonly keyId: string;
  readonly nonce: Uint8Array;
  /** P-256 IEEE P1363 r‖s, as WebCrypto gives it (not low-S normalised). */
  readonly signature: Uint8Array;
}

export interface PasskeyFields {
  readonly intent: ModePIntent;
  readonly explicitIntent: boolean;
  /** The WebAuthn credential id (raw bytes). */
  readonly credentialId: Uint8Array;
  readonly nonce: Uint8Array;
  readonly authenticatorData: Uint8Array;
  readonly clientDataJSON: Uint8Array;
  /** DER ECDSA signature, as WebAuthn gives it. */
  readonly signature: Uint8Array;
}

export interface EnrollFields {
  readonly kind: EnrollKind;
  readonly name: string;
  readonly nonce: Uint8Array;
  /** SubjectPublicKeyInfo DER of the P-256 key (its curve is checked where it is used). */
  readonly spki: Uint8Array;
  /** passkey: the WebAuthn credential id; webkey: empty. */
  readonly credentialId: Uint8Array;
  /** passkey: the relying party id; webkey: empty. */
  readonly rpId: string;
  /** webkey: P1363 proof of possession over enrollSignedBytes; passkey: empty. */
  readonly signature: Uint8Array;
}

export interface ResultFields {
  readonly outcome: ResultOutcome;
  /** A code of codes.ts, or '' (a grant says nothing more). */
  readonly code: string;
  /** Vehicle signature over resultSignedBytes (granted only; may be empty), else empty. */
  readonly signature: Uint8Array;
  /** The vehicle key's SPKI DER: present exactly when the signature is. */
  readonly vehicleSpki: Uint8Array;
}

export type ModePMessage =
  | ({ readonly type: 'challenge' } & ChallengeFields)
  | ({ readonly type: 'answer' } & AnswerFields)
  | ({ readonly type: 'passkey' } & PasskeyFields)
  | ({ readonly type: 'enroll' } & EnrollFields)
  | ({ readonly type: 'result' } & ResultFields);

// ── helpers ──────────────────────────────────────────────────────────────────

const ASCII = new TextEncoder();
const NAME_CHARS = /^[\x20-\x7e]*$/;
const RP_ID_CHARS = /^[A-Za-z0-9.:[\]-]*$/;

function malformed(message: string): AgentError {
  return new AgentError('malformed', message);
}

function u8Prefixed(bytes: Uint8Array, what: string): Uint8Array {
  if (bytes.length > 0xff) throw malformed(`${what} must be at most 255 bytes`);
  return concatBytes(Uint8Array.of(bytes.length), bytes);
}

function u16Prefixed(bytes: Uint8Array, what: string): Uint8Array {
  if (bytes.length > 0xffff) throw malformed(`${what} must be at most 65535 bytes`);
  return concatBytes(Uint8Array.of(bytes.length >> 8, bytes.length & 0xff), bytes);
}

function checkNonce(nonce: Uint8Array): void {
  if (nonce.length !== NONCE_BYTES) throw malformed(`nonce must be ${NONCE_BYTES} bytes`);
}

function intentByte(intent: ModePIntent): number {
  const byte = MODE_P_INTENT_BYTES[intent];
  if (byte === undefined) throw malformed(`unknown intent ${String(intent)}`);
  return byte;
}

function header(type: number): Uint8Array {
  return Uint8Array.of(MODE_P_VERSION, type);
}

function finish(message: Uint8Array): Uint8Array {
  if (message.length > MODE_P_MAX_MESSAGE_BYTES)
    throw new AgentError('frame_too_large', `a mode P message is at most ${MODE_P_MAX_MESSAGE_BYTES} bytes`);
  return message;
}

function domainBytes(domain: string): Uint8Array {
  return concatBytes(ASCII.encode(domain), Uint8Array.of(0));
}

/** A strict forward reader: every read checks the bytes are there. */
class Reader {
  private offset = 0;
  constructor(private readonly bytes: Uint8Array) {}

  u8(what: string): number {
    if (this.offset >= this.bytes.length) throw malformed(`message ends before ${what}`);
    const value = this.bytes[this.offset] ?? 0;
    this.offset += 1;
    return value;
  }

  u16(what: string): number {
    return (this.u8(what) << 8) | this.u8(what);
  }

  u64(what: string): number {
    const high = this.u16(what) * 0x10000 + this.u16(what);
    const low = this.u16(what) * 0x10000 + this.u16(what);
    if (high > 0x1fffff) throw malformed(`${what} is beyond 2^53`);
    return high * 0x1_0000_0000 + low;
  }

  take(length: number, what: string): Uint8Array {
    if (this.offset + length > this.bytes.length) throw malformed(`message ends inside ${what}`);
    const out = this.bytes.slice(this.offset, this.offset + length);
    this.offset += length;
    return out;
  }

  ascii(length: number, what: string): string {
    return String.fromCharCode(...this.take(length, what));
  }

  end(): void {
    if (this.offset !== this.bytes.length) throw malformed('trailing bytes after the message');
  }
}

function open(bytes: Uint8Array, type: number, name: string): Reader {
  if (!(bytes instanceof Uint8Array)) throw malformed('a message is bytes');
  if (bytes.length > MODE_P_MAX_MESSAGE_BYTES)
    throw new AgentError('frame_too_large', `a mode P message is at most ${MODE_P_MAX_MESSAGE_BYTES} bytes`);
  const reader = new Reader(bytes);
  const version = reader.u8('the version');
  if (version !== MODE_P_VERSION)
    throw new AgentError('unsupported', `protocol version ${version} is not mode P (${MODE_P_VERSION})`);
  const got = reader.u8('the type');
  if (got !== type) throw malformed(`expected a ${name} message`);
  return reader;
}

function readIntent(reader: Reader): { intent: ModePIntent; explicitIntent: boolean } {
  const byte = reader.u8('the intent');
  const intent = (Object.keys(MODE_P_INTENT_BYTES) as ModePIntent[]).find(
    (k) => MODE_P_INTENT_BYTES[k] === byte,
  );
  if (intent === undefined) throw malformed(`unknown intent ${byte}`);
  const flags = reader.u8('the flags');
  if ((flags & ~FLAG_EXPLICIT) !== 0) throw malformed('reserved flag bits are set');
  return { intent, explicitIntent: (flags & FLAG_EXPLICIT) !== 0 };
}

function readId(reader: Reader, what: string): string {
  const length = reader.u8(what);
  const id = reader.ascii(length, what);
  if (!isValidId(id)) throw malformed(`${what} must be 1..${MAX_ID_BYTES} printable ASCII characters`);
  return id;
}

function encodeId(id: string, what: string): Uint8Array {
  if (!isValidId(id)) throw malformed(`${what} must be 1..${MAX_ID_BYTES} printable ASCII characters`);
  return u8Prefixed(ASCII.encode(id), what);
}

/** The type of a mode P message, or undefined when the bytes are not one (no other checks). */
export function modePType(bytes: Uint8Array): keyof typeof MODE_P_TYPES | undefined {
  if (bytes.length < 2 || bytes[0] !== MODE_P_VERSION) return undefined;
  const type = bytes[1];
  return (Object.keys(MODE_P_TYPES) as (keyof typeof MODE_P_TYPES)[]).find((k) => MODE_P_TYPES[k] === type);
}

// ── challenge ────────────────────────────────────────────────────────────────

export function encodeChallenge(fields: ChallengeFields): Uint8Array {
  checkNonce(fields.nonce);
  const { issuedAtMs, windowMs } = fields;
  if (!Number.isSafeInteger(issuedAtMs) || issuedAtMs < 0) throw malformed('issuedAtMs must be a u64');
  if (!Number.isInteger(windowMs) || windowMs < 1 || windowMs > 0xffff)
    throw malformed('windowMs must be 1..65535');
  const time = new Uint8Array(8);
  new DataView(time.buffer).setBigUint64(0, BigInt(issuedAtMs));
  return finish(
    concatBytes(
      header(MODE_P_TYPES.challenge),
      encodeId(fields.vehicleId, 'vehicle id'),
      fields.nonce,
      time,
      Uint8Array.of(windowMs >> 8, windowMs & 0xff),
    ),
  );
}

export function decodeChallenge(bytes: Uint8Array): { readonly type: 'challenge' } & ChallengeFields {
  const reader = open(bytes, MODE_P_TYPES.challenge, 'challenge');
  const vehicleId = readId(reader, 'vehicle id');
  const nonce = reader.take(NONCE_BYTES, 'the nonce');
  const issuedAtMs = reader.u64('issuedAtMs');
  const windowMs = reader.u16('windowMs');
  if (windowMs < 1) throw malformed('windowMs must be 1..65535');
  reader.end();
  return { type: 'challenge', vehicleId, nonce, issuedAtMs, windowMs };
}

// ── answer (web key) ─────────────────────────────────────────────────────────

export function encodeAnswer(fields: AnswerFields): Uint8Array {
  checkNonce(fields.nonce);
  if (fields.signature.length !== P1363_SIGNATURE_BYTES)
    throw malformed(`the signature must be ${P1363_SIGNATURE_BYTES} bytes (r‖s)`);
  return finish(
    concatBytes(
      header(MODE_P_TYPES.answer),
      Uint8Array.of(intentByte(fields.intent), fields.explicitIntent ? FLAG_EXPLICIT : 0),
      encodeId(fields.keyId, 'key id'),
      fields.nonce,
      fields.signature,
    ),
  );
}

export function decodeAnswer(bytes: Uint8Array): { readonly type: 'answer' } & AnswerFields {
  const reader = open(bytes, MODE_P_TYPES.answer, 'answer');
  const { intent, explicitIntent } = readIntent(reader);
  const keyId = readId(reader, 'key id');
  const nonce = reader.take(NONCE_BYTES, 'the nonce');
  const signature = reader.take(P1363_SIGNATURE_BYTES, 'the signature');
  reader.end();
  return { type: 'answer', intent, explicitIntent, keyId, nonce, signature };
}

/** What a web key signs: "vehicle-agent/ble/v2/answer" 00 ‖ challengeMsg ‖ intent ‖ flags ‖ keyId. */
export function answerSignedBytes(
  challengeMessage: Uint8Array,
  fields: Pick<AnswerFields, 'intent' | 'explicitIntent' | 'keyId'>,
): Uint8Array {
  if (!isValidId(fields.keyId)) throw malformed('key id must be 1..64 printable ASCII characters');
  return concatBytes(
    domainBytes(ANSWER_DOMAIN_V2),
    challengeMessage,
    Uint8Array.of(intentByte(fields.intent), fields.explicitIntent ? FLAG_EXPLICIT : 0),
    ASCII.encode(fields.keyId),
  );
}

// ── passkey ──────────────────────────────────────────────────────────────────

export function encodePasskey(fields: PasskeyFields): Uint8Array {
  checkNonce(fields.nonce);
  if (fields.credentialId.length < 1) throw malformed('the credential id is empty');
  if (fields.signature.length < 8 || fields.signature.length > MAX_DER_SIGNATURE_BYTES)
    throw malformed(`the signature must be 8..${MAX_DER_SIGNATURE_BYTES} bytes of DER`);
  return finish(
    concatBytes(
      header(MODE_P_TYPES.passkey),
      Uint8Array.of(intentByte(fields.intent), fields.explicitIntent ? FLAG_EXPLICIT : 0),
      u8Prefixed(fields.credentialId, 'the credential id'),
      fields.nonce,
      u16Prefixed(fields.authenticatorData, 'authenticatorData'),
      u16Prefixed(fields.clientDataJSON, 'clientDataJSON'),
      u8Prefixed(fields.signature, 'the signature'),
    ),
  );
}

export function decodePasskey(bytes: Uint8Array): { readonly type: 'passkey' } & PasskeyFields {
  const reader = open(bytes, MODE_P_TYPES.passkey, 'passkey');
  const { intent, explicitIntent } = readIntent(reader);
  const credentialId = reader.take(reader.u8('the credential id length'), 'the credential id');
  if (credentialId.length < 1) throw malformed('the credential id is empty');
  const nonce = reader.take(NONCE_BYTES, 'the nonce');
  const authenticatorData = reader.take(reader.u16('the authenticatorData length'), 'authenticatorData');
  const clientDataJSON = reader.take(reader.u16('the clientDataJSON length'), 'clientDataJSON');
  const signature = reader.take(reader.u8('the signature length'), 'the signature');
  if (signature.length < 8 || signature.length > MAX_DER_SIGNATURE_BYTES)
    throw malformed(`the signature must be 8..${MAX_DER_SIGNATURE_BYTES} bytes of DER`);
  reader.end();
  return {
    type: 'passkey',
    intent,
    explicitIntent,
    credentialId,
    nonce,
    authenticatorData,
    clientDataJSON,
    signature,
  };
}

/**
 * The WebAuthn challenge a passkey signs (the page passes it to navigator.credentials.get):
 * SHA-256("vehicle-agent/ble/v2/passkey" 00 ‖ challengeMsg ‖ intent ‖ flags), 32 bytes.
 */
export function passkeyChallengePreimage(
  challengeMessage: Uint8Array,
  fields: Pick<PasskeyFields, 'intent' | 'explicitIntent'>,
): Uint8Array {
  return concatBytes(
    domainBytes(PASSKEY_DOMAIN_V2),
    challengeMessage,
    Uint8Array.of(intentByte(fields.intent), fields.explicitIntent ? FLAG_EXPLICIT : 0),
  );
}

// ── enroll ───────────────────────────────────────────────────────────────────

function checkEnroll(fields: EnrollFields): void {
  checkNonce(fields.nonce);
  if (fields.name.length < 1 || fields.name.length > MAX_NAME_BYTES || !NAME_CHARS.test(fields.name))
    throw malformed(`the name must be 1..${MAX_NAME_BYTES} printable ASCII characters`);
  if (fields.spki.length < 1) throw malformed('the public key is empty');
  if (fields.kind === 'webkey') {
    if (fields.credentialId.length !== 0 || fields.rpId.length !== 0)
      throw malformed('a web key enrollment carries no credential id and no rpId');
    if (fields.signature.length !== P1363_SIGNATURE_BYTES)
      throw malformed(`a web key enrollment carries a ${P1363_SIGNATURE_BYTES}-byte proof of possession`);
  } else {
    if (fields.credentialId.length < 1) throw malformed('a passkey enrollment needs its credential id');
    if (fields.rpId.length < 1 || fields.rpId.length > MAX_RP_ID_BYTES || !RP_ID_CHARS.test(fields.rpId))
      throw malformed('a passkey enrollment needs its rpId (a host name)');
    if (fields.signature.length !== 0) throw malformed('a passkey enrollment carries no signature');
  }
}

/** The enroll message without its sigLen | sig (what the proof of possession covers). */
export function enrollBody(fields: EnrollFields): Uint8Array {
  checkEnroll(fields);
  return concatBytes(
    header(MODE_P_TYPES.enroll),
    Uint8Array.of(ENROLL_KINDS[fields.kind]),
    u8Prefixed(ASCII.encode(fields.name), 'the name'),
    fields.nonce,
    u16Prefixed(fields.spki, 'the public key'),
    u8Prefixed(fields.credentialId, 'the credential id'),
    u8Prefixed(ASCII.encode(fields.rpId), 'the rpId'),
  );
}

export function encodeEnroll(fields: EnrollFields): Uint8Array {
  return finish(concatBytes(enrollBody(fields), u8Prefixed(fields.signature, 'the signature')));
}

export function decodeEnroll(bytes: Uint8Array): { readonly type: 'enroll' } & EnrollFields {
  const reader = open(bytes, MODE_P_TYPES.enroll, 'enroll');
  const kindByte = reader.u8('the kind');
  const kind = (Object.keys(ENROLL_KINDS) as EnrollKind[]).find((k) => ENROLL_KINDS[k] === kindByte);
  if (kind === undefined) throw malformed(`unknown enrollment kind ${kindByte}`);
  const name = reader.ascii(reader.u8('the name length'), 'the name');
  const nonce = reader.take(NONCE_BYTES, 'the nonce');
  const spki = reader.take(reader.u16('the public key length'), 'the public key');
  const credentialId = reader.take(reader.u8('the credential id length'), 'the credential id');
  const rpId = reader.ascii(reader.u8('the rpId length'), 'the rpId');
  const signature = reader.take(reader.u8('the signature length'), 'the signature');
  reader.end();
  const fields: EnrollFields = { kind, name, nonce, spki, credentialId, rpId, signature };
  checkEnroll(fields);
  return { type: 'enroll', ...fields };
}

/** What a web key signs to enroll: "vehicle-agent/ble/v2/enroll" 00 ‖ challengeMsg ‖ enrollBody. */
export function enrollSignedBytes(challengeMessage: Uint8Array, fields: EnrollFields): Uint8Array {
  return concatBytes(domainBytes(ENROLL_DOMAIN_V2), challengeMessage, enrollBody(fields));
}

// ── result ───────────────────────────────────────────────────────────────────

function checkResult(fields: ResultFields): void {
  const { outcome, code, signature, vehicleSpki } = fields;
  if (code !== '' && (!isCode(code) || !isValidWireCode(code)))
    throw malformed(`"${code}" is not a reason code of codes.ts`);
  if (code.length > MAX_CODE_BYTES) throw malformed('the code is too long');
  if (outcome !== 'granted' && code === '') throw malformed('a denied or pending result names its code');
  if (signature.length !== 0 && signature.length !== P1363_SIGNATURE_BYTES)
    throw malformed(`the signature must be empty or ${P1363_SIGNATURE_BYTES} bytes`);
  if (signature.length !== 0 && outcome !== 'granted')
    throw malformed('only a granted result is signed (an unauthenticated peer gets no signed data)');
  if ((signature.length === 0) !== (vehicleSpki.length === 0))
    throw malformed('the vehicle key comes with the signature and only with it');
}

export function encodeResult(fields: ResultFields): Uint8Array {
  checkResult(fields);
  return finish(
    concatBytes(
      header(MODE_P_TYPES.result),
      Uint8Array.of(RESULT_OUTCOMES[fields.outcome]),
      u8Prefixed(ASCII.encode(fields.code), 'the code'),
      u8Prefixed(fields.signature, 'the signature'),
      u16Prefixed(fields.vehicleSpki, 'the vehicle key'),
    ),
  );
}

export function decodeResult(bytes: Uint8Array): { readonly type: 'result' } & ResultFields {
  const reader = open(bytes, MODE_P_TYPES.result, 'result');
  const outcomeByte = reader.u8('the outcome');
  const outcome = (Object.keys(RESULT_OUTCOMES) as ResultOutcome[]).find(
    (k) => RESULT_OUTCOMES[k] === outcomeByte,
  );
  if (outcome === undefined) throw malformed(`unknown outcome ${outcomeByte}`);
  const code = reader.ascii(reader.u8('the code length'), 'the code');
  const signature = reader.take(reader.u8('the signature length'), 'the signature');
  const vehicleSpki = reader.take(reader.u16('the vehicle key length'), 'the vehicle key');
  reader.end();
  const fields: ResultFields = { outcome, code, signature, vehicleSpki };
  checkResult(fields);
  return { type: 'result', ...fields };
}

/**
 * What the vehicle signs in a granted result:
 * "vehicle-agent/ble/v2/result" 00 ‖ nonce ‖ outcome ‖ code ‖ keyId (ASCII) or credId (raw bytes).
 */
export function resultSignedBytes(
  nonce: Uint8Array,
  outcome: ResultOutcome,
  code: string,
  keyIdOrCredentialId: string | Uint8Array,
): Uint8Array {
  checkNonce(nonce);
  return concatBytes(
    domainBytes(RESULT_DOMAIN_V2),
    nonce,
    Uint8Array.of(RESULT_OUTCOMES[outcome]),
    ASCII.encode(code),
    typeof keyIdOrCredentialId === 'string' ? ASCII.encode(keyIdOrCredentialId) : keyIdOrCredentialId,
  );
}

/** Decodes any mode P message by its type byte. */
export function decodeModeP(bytes: Uint8Array): ModePMessage {
  if (!(bytes instanceof Uint8Array)) throw malformed('a message is bytes');
  if (bytes.length >= 1 && bytes[0] !== MODE_P_VERSION)
    throw new AgentError('unsupported', `protocol version ${bytes[0]} is not mode P (${MODE_P_VERSION})`);
  switch (modePType(bytes)) {
    case 'challenge':
      return decodeChallenge(bytes);
    case 'answer':
      return decodeAnswer(bytes);
    case 'passkey':
      return decodePasskey(bytes);
    case 'enroll':
      return decodeEnroll(bytes);
    case 'result':
      return decodeResult(bytes);
    default:
      throw malformed('not a mode P message');
  }
}
