import { createHash, createPublicKey, type KeyObject, randomBytes, X509Certificate } from 'node:crypto';
import { AgentError } from '../core/errors.js';
import type { Credential, PublicJwk } from '../core/types.js';
import { readDerElement } from '../crypto/der.js';
import { concatBytes, fromHex } from '../crypto/encoding.js';
import { publicKeyFromJwk } from '../crypto/keys.js';
import { verifyP256 } from '../crypto/verify.js';
import { encodeCommand, exchange, SW, selectByAid, swHex, type Transceive, transmit } from './apdu.js';
import { type CardResult, runCardFlow } from './card-result.js';

/**
 * FIDO U2F (CTAP1) over NFC, from the FIDO U2F NFC protocol and raw message formats: SELECT of
 * the FIDO applet, REGISTER and AUTHENTICATE, response parsing, and signature verification with
 * src/crypto/verify.ts (DER ECDSA P-256, high-S accepted as real authenticators produce it).
 */

export const FIDO_AID = fromHex('A0000006472F0001');
export const U2F_VERSION = 'U2F_V2';

export const U2F_INS = { REGISTER: 0x01, AUTHENTICATE: 0x02, VERSION: 0x03 } as const;
/** AUTHENTICATE control byte (P1). */
export const U2F_CONTROL = { ENFORCE_PRESENCE: 0x03, CHECK_ONLY: 0x07, DONT_ENFORCE_PRESENCE: 0x08 } as const;
/** Bit 0 of the flags byte of an authentication answer: user presence verified. */
export const U2F_FLAG_USER_PRESENT = 0x01;

const P256_SPKI_PREFIX = fromHex('3059301306072a8648ce3d020106082a8648ce3d030107034200');

export type U2fStep = 'select' | 'register' | 'authenticate' | 'check';

/** Maps a U2F status word to the coded error the reader reports. */
export function u2fStatusError(sw: number, step: U2fStep): AgentError {
  const details = { sw: swHex(sw), step };
  switch (sw) {
    case SW.CONDITIONS_NOT_SATISFIED:
    case SW.SECURITY_NOT_SATISFIED:
      return new AgentError('intent_required', `U2F ${step}: the key wants user presence (a touch)`, details);
    case SW.WRONG_DATA:
      return step === 'authenticate' || step === 'check'
        ? new AgentError('unknown_credential', `U2F ${step}: the key does not know this key handle`, details)
        : new AgentError('malformed', `U2F ${step}: the key rejected the request data`, details);
    case SW.WRONG_LENGTH:
    case SW.INCORRECT_P1P2:
      return new AgentError('malformed', `U2F ${step}: the key rejected the request format`, details);
    case SW.FILE_NOT_FOUND:
      return new AgentError('unsupported', `U2F ${step}: no FIDO applet on this card`, details);
    case SW.INS_NOT_SUPPORTED:
    case SW.CLA_NOT_SUPPORTED:
      return new AgentError('unsupported', `U2F ${step}: command not supported by this key`, details);
    default:
      return new AgentError('unsupported', `U2F ${step}: unexpected status ${swHex(sw)}`, details);
  }
}

function requireBytes(value: Uint8Array, length: number, what: string): void {
  if (value.length !== length) throw new AgentError('bad_arguments', `${what} must be ${length} bytes`);
}

// ── Parameters bound to this system ──────────────────────────────────────────

/**
 * Application parameter for this vehicle: SHA-256 of a string naming it. Key handles are bound
 * to it, so a key enrolled here answers only for this vehicle (and no website can use it).
 */
export function vehicleAppParam(vehicleId: string): Uint8Array {
  return sha256(`vehicle-agent:vehicle:${vehicleId}`);
}

/**
 * Challenge parameter that binds an owner's FIDO signature to one enrollment request:
 * SHA-256 of a domain tag and the request's canonical bytes. A random tap challenge can never
 * collide with it, so an unlock tap authorises no enrollment.
 */
export function enrollmentChallenge(canonicalRequest: Uint8Array | string): Uint8Array {
  return new Uint8Array(
    createHash('sha256').update('vehicle-agent/u2f-enrollment/v1\0').update(canonicalRequest).digest(),
  );
}

/** A fresh random challenge for a tap. */
export function tapChallenge(): Uint8Array {
  return new Uint8Array(randomBytes(32));
}

function sha256(data: string | Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(data).digest());
}

// ── APDUs ────────────────────────────────────────────────────────────────────

/** 00 A4 04 00 08 A0000006472F0001 00 */
export function selectFidoApdu(): Uint8Array {
  return selectByAid(FIDO_AID, { p2: 0x00, le: 256 });
}

/** 00 01 P1 00 40 challenge ‖ application 00 (short, Le 256; the answer comes back through 61XX). */
export function registerCommand(challenge: Uint8Array, appParam: Uint8Array, p1 = 0x00) {
  requireBytes(challenge, 32, 'challenge');
  requireBytes(appParam, 32, 'application parameter');
  return { cla: 0x00, ins: U2F_INS.REGISTER, p1, p2: 0x00, data: concatBytes(challenge, appParam), le: 256 };
}

/** 00 02 P1 00 Lc challenge ‖ application ‖ L ‖ keyHandle 00 */
export function authenticateCommand(
  control: number,
  challenge: Uint8Array,
  appParam: Uint8Array,
  keyHandle: Uint8Array,
) {
  requireBytes(challenge, 32, 'challenge');
  requireBytes(appParam, 32, 'application parameter');
  if (keyHandle.length < 1 || keyHandle.length > 255)
    throw new AgentError('bad_arguments', 'key handle must be 1..255 bytes');
  return {
    cla: 0x00,
    ins: U2F_INS.AUTHENTICATE,
    p1: control,
    p2: 0x00,
    data: concatBytes(challenge, appParam, new Uint8Array([keyHandle.length]), keyHandle),
    le: 256,
  };
}

// ── Parsing ──────────────────────────────────────────────────────────────────

export interface U2fRegistration {
  /** 65-byte uncompressed P-256 point. */
  readonly publicKey: Uint8Array;
  readonly keyHandle: Uint8Array;
  /** X.509 attestation certificate, DER. */
  readonly attestationCertificate: Uint8Array;
  /** DER ECDSA signature by the attestation key. */
  readonly signature: Uint8Array;
}

/** Checks that `signature` is exactly one DER SEQUENCE, as ECDSA signatures are. */
function requireDerSignature(signature: Uint8Array, what: string): void {
  const element = readDerElement(signature, 0);
  if (element.tag !== 0x30 || element.end !== signature.length) {
    throw new AgentError('malformed', `${what} is not a DER signature`);
  }
}

/** 05 ‖ pub[65] ‖ L ‖ KH[L] ‖ certificate (DER, length from its header) ‖ signature (DER). */
export function parseRegisterResponse(data: Uint8Array): U2fRegistration {
  if (data.length < 1 + 65 + 1 + 1 || data[0] !== 0x05) {
    throw new AgentError('malformed', 'U2F register: answer does not start with 05', { length: data.length });
  }
  const publicKey = data.slice(1, 66);
  if (publicKey[0] !== 0x04)
    throw new AgentError('malformed', 'U2F register: public key is not an uncompressed point');
  const handleLength = data[66] ?? 0;
  if (handleLength === 0) throw new AgentError('malformed', 'U2F register: empty key handle');
  const certOffset = 67 + handleLength;
  if (certOffset >= data.length)
    throw new AgentError('malformed', 'U2F register: answer ends inside the key handle');
  const keyHandle = data.slice(67, certOffset);
  const cert = readDerElement(data, certOffset);
  if (cert.tag !== 0x30) throw new AgentError('malformed', 'U2F register: certificate is not a DER SEQUENCE');
  const signature = data.slice(cert.end);
  requireDerSignature(signature, 'U2F register: signature');
  return { publicKey, keyHandle, attestationCertificate: data.slice(certOffset, cert.end), signature };
}

export interface U2fAssertion {
  /** Flags byte; bit 0 = user present. */
  readonly flags: number;
  readonly counter: number;
  readonly signature: Uint8Array;
}

/** UP[1] ‖ counter[4, big-endian] ‖ signature (DER). */
export function parseAuthenticateResponse(data: Uint8Array): U2fAssertion {
  if (data.length < 5 + 8)
    throw new AgentError('malformed', 'U2F authenticate: answer too short', { length: data.length });
  const flags = data[0] ?? 0;
  const counter =
    (((data[1] ?? 0) << 24) | ((data[2] ?? 0) << 16) | ((data[3] ?? 0) << 8) | (data[4] ?? 0)) >>> 0;
  const signature = data.slice(5);
  requireDerSignature(signature, 'U2F authenticate: signature');
  return { flags, counter, signature };
}

// ── Signatures ───────────────────────────────────────────────────────────────

/** 00 ‖ application ‖ challenge ‖ keyHandle ‖ publicKey: what the attestation key signs. */
export function registrationSignedBytes(
  appParam: Uint8Array,
  challenge: Uint8Array,
  keyHandle: Uint8Array,
  publicKey: Uint8Array,
): Uint8Array {
  return concatBytes(new Uint8Array([0x00]), appParam, challenge, keyHandle, publicKey);
}

/** application ‖ flags ‖ counter (big-endian) ‖ challenge: what the credential key signs. */
export function authenticationSignedBytes(
  appParam: Uint8Array,
  flags: number,
  counter: number,
  challenge: Uint8Array,
): Uint8Array {
  const fixed = new Uint8Array(5);
  fixed[0] = flags & 0xff;
  new DataView(fixed.buffer).setUint32(1, counter >>> 0, false);
  return concatBytes(appParam, fixed, challenge);
}

/** KeyObject for a 65-byte uncompressed P-256 point; key_invalid when it is not on the curve. */
export function p256PublicKeyFromRaw(raw: Uint8Array): KeyObject {
  if (raw.length !== 65 || raw[0] !== 0x04) {
    throw new AgentError('key_invalid', 'P-256 public key must be a 65-byte uncompressed point');
  }
  try {
    return createPublicKey({
      key: Buffer.from(concatBytes(P256_SPKI_PREFIX, raw)),
      format: 'der',
      type: 'spki',
    });
  } catch (err) {
    throw new AgentError('key_invalid', 'P-256 public key is not a point on the curve', {}, { cause: err });
  }
}

export type U2fPublicKey = KeyObject | PublicJwk | Uint8Array;

function toKeyObject(key: U2fPublicKey): KeyObject {
  if (key instanceof Uint8Array) return p256PublicKeyFromRaw(key);
  if ('kty' in key) return publicKeyFromJwk(key);
  return key;
}

/**
 * ECDSA P-256 / SHA-256 verification of a DER signature with the unlock path's verifier
 * (src/crypto/verify.ts): high-S accepted (authenticators make them), non-DER refused; never throws.
 */
export function verifyP256Der(key: KeyObject, message: Uint8Array, signature: Uint8Array): boolean {
  return verifyP256(key, message, signature, 'der');
}

/** The attestation certificate's P-256 key; malformed or unsupported when it has none. */
export function attestationKey(certificate: Uint8Array): KeyObject {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certificate);
  } catch (err) {
    throw new AgentError('malformed', 'U2F register: attestation certificate unreadable', {}, { cause: err });
  }
  const key = cert.publicKey;
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new AgentError('unsupported', 'U2F register: attestation key is not P-256');
  }
  return key;
}

/** Verifies a registration's attestation signature; bad_proof when it does not verify. */
export function verifyRegistration(
  registration: U2fRegistration,
  appParam: Uint8Array,
  challenge: Uint8Array,
): void {
  p256PublicKeyFromRaw(registration.publicKey); // the credential key must be a real point
  const key = attestationKey(registration.attestationCertificate);
  const signed = registrationSignedBytes(appParam, challenge, registration.keyHandle, registration.publicKey);
  if (!verifyP256Der(key, signed, registration.signature)) {
    throw new AgentError('bad_proof', 'U2F register: attestation signature does not verify');
  }
}

/** Verifies an assertion's signature with the credential key; false when it does not verify. */
export function verifyAssertion(
  publicKey: U2fPublicKey,
  appParam: Uint8Array,
  challenge: Uint8Array,
  assertion: U2fAssertion,
): boolean {
  const signed = authenticationSignedBytes(appParam, assertion.flags, assertion.counter, challenge);
  return verifyP256Der(toKeyObject(publicKey), signed, assertion.signature);
}

// ── Counter ──────────────────────────────────────────────────────────────────

export type CounterVerdict = 'ok' | 'clone_suspected';

/**
 * WebAuthn §6.1.1 rule: when the stored or the new counter is non-zero, the new one must be
 * greater; otherwise the credential may be cloned. Both zero means the key keeps no counter.
 * `stored` undefined (first use) accepts any value.
 */
export function counterVerdict(stored: number | undefined, reported: number): CounterVerdict {
  if (stored === undefined) return 'ok';
  if (stored === 0 && reported === 0) return 'ok';
  return reported > stored ? 'ok' : 'clone_suspected';
}

// ── Flows over a transceive ──────────────────────────────────────────────────

/** SELECT the FIDO applet; resolves with the version string. unsupported unless it is U2F_V2. */
export async function selectU2f(transceive: Transceive): Promise<string> {
  const response = await transmit(transceive, {
    cla: 0x00,
    ins: 0xa4,
    p1: 0x04,
    p2: 0x00,
    data: FIDO_AID,
    le: 256,
  });
  if (response.sw !== SW.OK) throw u2fStatusError(response.sw, 'select');
  const version = new TextDecoder('utf-8', { fatal: false }).decode(response.data);
  if (version !== U2F_VERSION) {
    throw new AgentError('unsupported', 'the FIDO applet does not speak U2F (CTAP1)', {
      version: version.slice(0, 16),
    });
  }
  return version;
}

export interface U2fFlowOptions {
  /** SELECT the applet first (default true). */
  readonly select?: boolean;
}

export interface U2fRegisterRequest extends U2fFlowOptions {
  readonly appParam: Uint8Array;
  readonly challenge: Uint8Array;
  /** REGISTER P1; 00 by the raw-message spec, some old keys want 03. */
  readonly p1?: number;
}

/** Enrollment: REGISTER, parse, verify the attestation signature. */
export function u2fRegister(
  transceive: Transceive,
  request: U2fRegisterRequest,
): Promise<CardResult<U2fRegistration>> {
  return runCardFlow(async () => {
    const command = registerCommand(request.challenge, request.appParam, request.p1 ?? 0x00);
    if (request.select !== false) await selectU2f(transceive);
    const response = await transmit(transceive, command);
    if (response.sw !== SW.OK) throw u2fStatusError(response.sw, 'register');
    const registration = parseRegisterResponse(response.data);
    verifyRegistration(registration, request.appParam, request.challenge);
    return registration;
  });
}

export interface U2fAuthenticateRequest extends U2fFlowOptions {
  readonly appParam: Uint8Array;
  readonly challenge: Uint8Array;
  readonly keyHandle: Uint8Array;
  readonly publicKey: U2fPublicKey;
  /** Refuse answers without the user-present flag (default true). */
  readonly requireUserPresence?: boolean;
}

export interface U2fAuthentication {
  readonly counter: number;
  readonly userPresent: boolean;
}

/**
 * A tap: AUTHENTICATE with P1 = 03 (over NFC the tap is the presence), parse, verify the
 * signature. The counter is returned for the caller's counterVerdict against the stored one.
 */
export function u2fAuthenticate(
  transceive: Transceive,
  request: U2fAuthenticateRequest,
): Promise<CardResult<U2fAuthentication>> {
  return runCardFlow(async () => {
    const command = authenticateCommand(
      U2F_CONTROL.ENFORCE_PRESENCE,
      request.challenge,
      request.appParam,
      request.keyHandle,
    );
    const key = toKeyObject(request.publicKey);
    if (request.select !== false) await selectU2f(transceive);
    const response = await transmit(transceive, command);
    if (response.sw !== SW.OK) throw u2fStatusError(response.sw, 'authenticate');
    const assertion = parseAuthenticateResponse(response.data);
    if (!verifyAssertion(key, request.appParam, request.challenge, assertion)) {
      throw new AgentError('bad_proof', 'U2F authenticate: signature does not verify');
    }
    const userPresent = (assertion.flags & U2F_FLAG_USER_PRESENT) !== 0;
    if (!userPresent && request.requireUserPresence !== false) {
      throw new AgentError('intent_required', 'U2F authenticate: the key did not assert user presence');
    }
    return { counter: assertion.counter, userPresent };
  });
}

/**
 * AUTHENTICATE with P1 = 07: does this key own `keyHandle` for `appParam`? 6985 means yes,
 * 6A80 no; no signature is made and the counter does not move.
 */
export function u2fCheckKeyHandle(
  transceive: Transceive,
  request: U2fFlowOptions & { readonly appParam: Uint8Array; readonly keyHandle: Uint8Array },
): Promise<CardResult<boolean>> {
  return runCardFlow(async () => {
    const command = authenticateCommand(
      U2F_CONTROL.CHECK_ONLY,
      new Uint8Array(32),
      request.appParam,
      request.keyHandle,
    );
    if (request.select !== false) await selectU2f(transceive);
    const response = await exchange(transceive, encodeCommand(command));
    if (response.sw === SW.CONDITIONS_NOT_SATISFIED) return true;
    if (response.sw === SW.WRONG_DATA) return false;
    throw u2fStatusError(response.sw, 'check');
  });
}

/**
 * True when `owner` is a FIDO credential whose key signed `challenge`, with user presence, under
 * `vehicleId`'s application parameter (card enrollment and enrollment approval alike). Pure.
 */
export function verifyOwnerFidoSignature(
  owner: Credential,
  vehicleId: string,
  challenge: Uint8Array,
  assertion: { readonly flags: number; readonly counter: number; readonly signature: Uint8Array },
): boolean {
  if (owner.kind !== 'fido' || owner.publicKey === undefined) return false;
  if ((assertion.flags & U2F_FLAG_USER_PRESENT) === 0) return false;
  try {
    return verifyAssertion(owner.publicKey, vehicleAppParam(vehicleId), challenge, assertion);
  } catch {
    return false;
  }
}
