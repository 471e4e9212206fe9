import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { p256 } from '@noble/curves/nist.js';
import { describe, expect, it } from 'vitest';
import {
  answerSignedBytes,
  decodeAnswer,
  decodeChallenge,
  decodeEnroll,
  decodePasskey,
  decodeResult,
  type EnrollFields,
  encodeAnswer,
  encodeChallenge,
  encodeEnroll,
  encodePasskey,
  encodeResult,
  enrollSignedBytes,
  passkeyChallengePreimage,
  resultSignedBytes,
} from '../../../src/ble/protocol/mode-p.js';
import {
  ANSWER_CHAR_UUID,
  ANSWER_DOMAIN_V2,
  CHALLENGE_CHAR_UUID,
  ENROLL_DOMAIN_V2,
  PASSKEY_DOMAIN_V2,
  PERIPHERAL_SERVICE_UUID,
  RESULT_CHAR_UUID,
  RESULT_DOMAIN_V2,
} from '../../../src/ble/protocol/peripheral-constants.js';
import { verifyPasskeyAssertion } from '../../../src/ble/protocol/webauthn.js';
import { b64url, concatBytes, fromHex, toHex } from '../../../src/crypto/encoding.js';
import {
  credentialIdFor,
  keyCredentialId,
  p256JwkFromRaw,
  publicKeyFromJwk,
} from '../../../src/crypto/keys.js';
import { verifyP256 } from '../../../src/crypto/verify.js';

/**
 * The test vectors of docs/ble-protocol.md part "Mode P", computed here from fixed keys with the
 * code (RFC 6979 signatures by @noble/curves), each required to appear in the document, and each
 * message decoded and verified by the vehicle's own checks (node:crypto). If the code or the
 * document changes, this fails. PRINT_VECTORS=1 prints them.
 */

const doc = readFileSync(new URL('../../../docs/ble-protocol.md', import.meta.url), 'utf8');
const modeStart = doc.indexOf('## 14. Mode P: the vehicle as peripheral');
const modeP = modeStart < 0 ? '' : doc.slice(modeStart);
const compact = modeP.replace(/\s+/g, '');

function inDoc(text: string): void {
  expect(compact, `docs/ble-protocol.md (Mode P) should contain ${text}`).toContain(text.replace(/\s+/g, ''));
}

const hex = (b: Uint8Array): string => toHex(b);
const sha256 = (bytes: Uint8Array | string): Uint8Array =>
  new Uint8Array(createHash('sha256').update(bytes).digest());

// Fixed inputs (the vehicle and phone keys of §9; the passkey's secret is SHA-256("passkey")).
const VEHICLE_SECRET = fromHex('c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721');
const WEB_KEY_SECRET = fromHex('519b423d715f8b581f4fa8ee59f4771a5b44c8130b4e3eacca54a56dda72b464');
const PASSKEY_SECRET = sha256('passkey');
const VEHICLE_ID = 'VIN-TEST-0001';
const NONCE = Uint8Array.from({ length: 32 }, (_, i) => i);
const ISSUED_AT = 1_800_000_000_000;
const WINDOW = 1500;
const RP_ID = '127.0.0.1';
const ORIGIN = 'http://127.0.0.1:8080';
const CREDENTIAL_ID = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);

function spkiOf(secret: Uint8Array): Uint8Array {
  const key = publicKeyFromJwk(p256JwkFromRaw(p256.getPublicKey(secret, false)));
  return new Uint8Array(key.export({ format: 'der', type: 'spki' }));
}

function vectors() {
  const webJwk = p256JwkFromRaw(p256.getPublicKey(WEB_KEY_SECRET, false));
  const passkeyJwk = p256JwkFromRaw(p256.getPublicKey(PASSKEY_SECRET, false));
  const keyId = keyCredentialId('phone', webJwk);
  const challenge = encodeChallenge({
    vehicleId: VEHICLE_ID,
    nonce: NONCE,
    issuedAtMs: ISSUED_AT,
    windowMs: WINDOW,
  });

  const answerFields = { intent: 'unlock' as const, explicitIntent: true, keyId };
  const answerSigned = answerSignedBytes(challenge, answerFields);
  const answerSignature = p256.sign(answerSigned, WEB_KEY_SECRET);
  const answer = encodeAnswer({ ...answerFields, nonce: NONCE, signature: answerSignature });

  const webauthnChallenge = sha256(passkeyChallengePreimage(challenge, answerFields));
  const authenticatorData = concatBytes(sha256(RP_ID), Uint8Array.of(0x05), Uint8Array.of(0, 0, 0, 0));
  const clientDataJSON = new TextEncoder().encode(
    JSON.stringify({
      type: 'webauthn.get',
      challenge: b64url(webauthnChallenge),
      origin: ORIGIN,
      crossOrigin: false,
    }),
  );
  const assertionSigned = concatBytes(authenticatorData, sha256(clientDataJSON));
  const passkeySignature = p256.Signature.fromBytes(
    p256.sign(assertionSigned, PASSKEY_SECRET),
    'compact',
  ).toBytes('der');
  const passkey = encodePasskey({
    ...answerFields,
    credentialId: CREDENTIAL_ID,
    nonce: NONCE,
    authenticatorData,
    clientDataJSON,
    signature: passkeySignature,
  });

  const enrollFields: EnrollFields = {
    kind: 'webkey',
    name: 'phone',
    nonce: NONCE,
    spki: spkiOf(WEB_KEY_SECRET),
    credentialId: new Uint8Array(0),
    rpId: '',
    signature: new Uint8Array(0),
  };
  const enrollSigned = enrollSignedBytes(challenge, { ...enrollFields, signature: new Uint8Array(64) });
  const enrollSignature = p256.sign(enrollSigned, WEB_KEY_SECRET);
  const enroll = encodeEnroll({ ...enrollFields, signature: enrollSignature });

  const resultSigned = resultSignedBytes(NONCE, 'granted', '', keyId);
  const resultSignature = p256.sign(resultSigned, VEHICLE_SECRET);
  const vehicleSpki = spkiOf(VEHICLE_SECRET);
  const granted = encodeResult({ outcome: 'granted', code: '', signature: resultSignature, vehicleSpki });
  const none = new Uint8Array(0);
  const revoked = encodeResult({ outcome: 'denied', code: 'revoked', signature: none, vehicleSpki: none });
  const pending = encodeResult({
    outcome: 'pending',
    code: 'enrollment_pending',
    signature: none,
    vehicleSpki: none,
  });

  return {
    keyId,
    passkeyId: credentialIdFor('passkey', CREDENTIAL_ID),
    webJwk,
    passkeyJwk,
    challenge,
    answerSigned,
    answer,
    webauthnChallenge,
    clientDataJSON,
    authenticatorData,
    passkeySignature,
    passkey,
    enrollSigned,
    enroll,
    resultSigned,
    granted,
    revoked,
    pending,
    vehicleSpki,
  };
}

const V = vectors();

if (process.env.PRINT_VECTORS) {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(V)) out[k] = v instanceof Uint8Array ? hex(v) : JSON.stringify(v);
  out.clientDataText = new TextDecoder().decode(V.clientDataJSON);
  console.log(JSON.stringify(out, null, 2));
}

describe('docs/ble-protocol.md Mode P test vectors', () => {
  it('names the UUIDs and domains of the code', () => {
    for (const value of [PERIPHERAL_SERVICE_UUID, CHALLENGE_CHAR_UUID, ANSWER_CHAR_UUID, RESULT_CHAR_UUID])
      inDoc(value);
    for (const domain of [ANSWER_DOMAIN_V2, PASSKEY_DOMAIN_V2, ENROLL_DOMAIN_V2, RESULT_DOMAIN_V2])
      inDoc(`"${domain}"`);
  });

  it('challenge and web key answer: bytes in the document, the signature verifies', () => {
    for (const value of [V.keyId, V.challenge, V.answerSigned, V.answer])
      inDoc(typeof value === 'string' ? value : hex(value));
    expect(decodeChallenge(V.challenge)).toMatchObject({
      vehicleId: VEHICLE_ID,
      issuedAtMs: ISSUED_AT,
      windowMs: WINDOW,
    });
    const answer = decodeAnswer(V.answer);
    expect(answer.keyId).toBe(V.keyId);
    const key = publicKeyFromJwk(V.webJwk);
    expect(verifyP256(key, answerSignedBytes(V.challenge, answer), answer.signature)).toBe(true);
    const flipped = Uint8Array.from(V.answer);
    flipped[3] = (flipped[3] ?? 0) ^ 1; // the explicit-intent flag: the signature no longer covers it
    const changed = decodeAnswer(flipped);
    expect(verifyP256(key, answerSignedBytes(V.challenge, changed), changed.signature)).toBe(false);
  });

  it('passkey: the WebAuthn challenge, client data and message are in the document and verify', () => {
    for (const value of [V.webauthnChallenge, V.authenticatorData, V.clientDataJSON, V.passkey])
      inDoc(hex(value));
    inDoc(V.passkeyId);
    inDoc(new TextDecoder().decode(V.clientDataJSON));
    const message = decodePasskey(V.passkey);
    expect(
      verifyPasskeyAssertion(message, {
        challenge: sha256(passkeyChallengePreimage(V.challenge, message)),
        allowedOrigins: new Set([ORIGIN]),
        rpId: RP_ID,
        publicKey: V.passkeyJwk,
      }),
    ).toEqual({ ok: true, counter: 0 });
  });

  it('enroll: the proof of possession over the challenge verifies', () => {
    for (const value of [V.enrollSigned, V.enroll]) inDoc(hex(value));
    const message = decodeEnroll(V.enroll);
    const key = publicKeyFromJwk(V.webJwk);
    expect(verifyP256(key, enrollSignedBytes(V.challenge, message), message.signature)).toBe(true);
  });

  it('results: a granted one signed by the vehicle key it carries; denied and pending unsigned', () => {
    for (const value of [V.resultSigned, V.granted, V.revoked, V.pending, V.vehicleSpki]) inDoc(hex(value));
    const granted = decodeResult(V.granted);
    const vehicleKey = publicKeyFromJwk(p256JwkFromRaw(p256.getPublicKey(VEHICLE_SECRET, false)));
    expect(toHex(granted.vehicleSpki)).toBe(toHex(V.vehicleSpki));
    expect(verifyP256(vehicleKey, resultSignedBytes(NONCE, 'granted', '', V.keyId), granted.signature)).toBe(
      true,
    );
    expect(decodeResult(V.revoked)).toMatchObject({
      outcome: 'denied',
      code: 'revoked',
      signature: new Uint8Array(0),
    });
    expect(decodeResult(V.pending)).toMatchObject({ outcome: 'pending', code: 'enrollment_pending' });
  });
});
