import { createHash, createPublicKey, generateKeyPairSync, type KeyObject, sign } from 'node:crypto';
import {
  type AnswerFields,
  answerSignedBytes,
  decodeChallenge,
  type EnrollFields,
  encodeAnswer,
  encodeEnroll,
  encodePasskey,
  enrollSignedBytes,
  type ModePIntent,
  passkeyChallengePreimage,
} from '../../../src/ble/protocol/mode-p.js';
import type { PublicJwk } from '../../../src/core/types.js';
import { b64url, concatBytes } from '../../../src/crypto/encoding.js';
import { credentialIdFor, keyCredentialId, publicJwkOf } from '../../../src/crypto/keys.js';

/**
 * A test-side phone-key page for mode P, signing with node:crypto as WebCrypto and an
 * authenticator would (P1363 for the web key, DER for the passkey): builds answers, passkey
 * assertions and enroll messages from the challenge bytes the vehicle gave.
 */

function sha256(bytes: Uint8Array | string): Uint8Array {
  return new Uint8Array(createHash('sha256').update(bytes).digest());
}

export interface WebKey {
  readonly privateKey: KeyObject;
  readonly jwk: PublicJwk;
  readonly spki: Uint8Array;
  readonly keyId: string;
}

export function makeWebKey(privateKey?: KeyObject): WebKey {
  const key = privateKey ?? generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
  const jwk = publicJwkOf(key);
  const spki = new Uint8Array(createPublicKey(key).export({ format: 'der', type: 'spki' }));
  return { privateKey: key, jwk, spki, keyId: keyCredentialId('phone', jwk) };
}

export function signP1363(key: KeyObject, message: Uint8Array): Uint8Array {
  return new Uint8Array(sign('sha256', message, { key, dsaEncoding: 'ieee-p1363' }));
}

export function webKeyAnswer(
  key: WebKey,
  challenge: Uint8Array,
  intent: ModePIntent = 'unlock',
  explicitIntent = true,
  override: Partial<AnswerFields> = {},
): Uint8Array {
  const { nonce } = decodeChallenge(challenge);
  const fields = { intent, explicitIntent, keyId: key.keyId };
  const signature = signP1363(key.privateKey, answerSignedBytes(challenge, fields));
  return encodeAnswer({ ...fields, nonce, signature, ...override });
}

export function webKeyEnroll(key: WebKey, challenge: Uint8Array, name = 'my phone'): Uint8Array {
  const { nonce } = decodeChallenge(challenge);
  const fields: EnrollFields = {
    kind: 'webkey',
    name,
    nonce,
    spki: key.spki,
    credentialId: new Uint8Array(0),
    rpId: '',
    signature: new Uint8Array(64),
  };
  return encodeEnroll({
    ...fields,
    signature: signP1363(key.privateKey, enrollSignedBytes(challenge, fields)),
  });
}

export interface Passkey {
  readonly privateKey: KeyObject;
  readonly jwk: PublicJwk;
  readonly spki: Uint8Array;
  readonly credentialId: Uint8Array;
  readonly rpId: string;
  /** The keyring credential id. */
  readonly id: string;
  counter: number;
}

export function makePasskey(rpId = '127.0.0.1', credentialId?: Uint8Array, counter = 0): Passkey {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const raw = credentialId ?? new Uint8Array(sha256(b64url(publicKeyBytes(publicKey))).subarray(0, 20));
  return {
    privateKey,
    jwk: publicJwkOf(publicKey),
    spki: new Uint8Array(publicKey.export({ format: 'der', type: 'spki' })),
    credentialId: raw,
    rpId,
    id: credentialIdFor('passkey', raw),
    counter,
  };
}

function publicKeyBytes(key: KeyObject): Uint8Array {
  return new Uint8Array(key.export({ format: 'der', type: 'spki' }));
}

export interface AssertionOptions {
  readonly origin?: string;
  readonly type?: string;
  readonly rpId?: string;
  readonly flags?: number;
  readonly counter?: number;
  /** Replaces the WebAuthn challenge (32 bytes) the client data names. */
  readonly challenge?: Uint8Array;
  readonly crossOrigin?: boolean;
  /** Signs with this key instead of the passkey's. */
  readonly signer?: KeyObject;
}

/** A WebAuthn assertion over `webauthnChallenge`, as navigator.credentials.get returns it. */
export function assertion(
  passkey: Passkey,
  webauthnChallenge: Uint8Array,
  options: AssertionOptions = {},
): { authenticatorData: Uint8Array; clientDataJSON: Uint8Array; signature: Uint8Array } {
  const counter = options.counter ?? passkey.counter;
  const authenticatorData = concatBytes(
    sha256(options.rpId ?? passkey.rpId),
    Uint8Array.of(options.flags ?? 0x05),
    Uint8Array.of(counter >>> 24, (counter >>> 16) & 0xff, (counter >>> 8) & 0xff, counter & 0xff),
  );
  const clientDataJSON = new TextEncoder().encode(
    JSON.stringify({
      type: options.type ?? 'webauthn.get',
      challenge: b64url(options.challenge ?? webauthnChallenge),
      origin: options.origin ?? `http://${passkey.rpId}:8080`,
      crossOrigin: options.crossOrigin ?? false,
    }),
  );
  const signature = new Uint8Array(
    sign('sha256', concatBytes(authenticatorData, sha256(clientDataJSON)), {
      key: options.signer ?? passkey.privateKey,
      dsaEncoding: 'der',
    }),
  );
  return { authenticatorData, clientDataJSON, signature };
}

export function passkeyAnswer(
  passkey: Passkey,
  challenge: Uint8Array,
  intent: ModePIntent = 'unlock',
  options: AssertionOptions = {},
): Uint8Array {
  const { nonce } = decodeChallenge(challenge);
  const webauthnChallenge = sha256(passkeyChallengePreimage(challenge, { intent, explicitIntent: true }));
  return encodePasskey({
    intent,
    explicitIntent: true,
    credentialId: passkey.credentialId,
    nonce,
    ...assertion(passkey, webauthnChallenge, options),
  });
}

export function passkeyEnroll(passkey: Passkey, challenge: Uint8Array, name = 'my passkey'): Uint8Array {
  const { nonce } = decodeChallenge(challenge);
  return encodeEnroll({
    kind: 'passkey',
    name,
    nonce,
    spki: passkey.spki,
    credentialId: passkey.credentialId,
    rpId: passkey.rpId,
    signature: new Uint8Array(0),
  });
}
