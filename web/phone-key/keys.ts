/**
 * The phone's keys and the vehicle pin, with WebCrypto and WebAuthn. The web key's private half
 * is generated non-extractable: script on this origin can ask it to sign, never read it.
 */
import { ascii, concat } from './codec.js';

const ECDSA = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;

export interface WebKey {
  readonly kind: 'webkey';
  readonly privateKey: CryptoKey;
  readonly spki: Uint8Array;
  readonly keyId: string;
}

export interface Passkey {
  readonly kind: 'passkey';
  readonly credId: Uint8Array;
  readonly spki: Uint8Array;
  readonly rpId: string;
}

export type PhoneKey = WebKey | Passkey;

/** The vehicle this phone trusts: what `vehicle-agent identity` prints as vehicle id and fingerprint. */
export interface VehiclePin {
  readonly vehicleId: string;
  readonly spki: Uint8Array;
  readonly fingerprint: string;
}

export function b64url(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export async function sha256(bytes: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as BufferSource));
}

async function rawPoint(spki: Uint8Array): Promise<Uint8Array> {
  const key = await crypto.subtle.importKey('spki', spki as BufferSource, ECDSA, true, ['verify']);
  return new Uint8Array(await crypto.subtle.exportKey('raw', key));
}

/**
 * The agent's credential id of a public key (credentialIdFor in src/crypto/keys.ts): kind, a
 * colon, base64url of the first 16 bytes of SHA-256("vehicle-agent/credential/v1/<kind>/" ‖ raw point).
 * For kind `signer` this is the vehicle key fingerprint `vehicle-agent identity` prints.
 */
export async function credentialId(kind: 'phone' | 'signer', spki: Uint8Array): Promise<string> {
  const h = await sha256(concat(ascii(`vehicle-agent/credential/v1/${kind}/`), await rawPoint(spki)));
  return `${kind}:${b64url(h.subarray(0, 16))}`;
}

export async function createWebKey(): Promise<WebKey> {
  const pair = await crypto.subtle.generateKey(ECDSA, false, ['sign', 'verify']);
  const spki = new Uint8Array(await crypto.subtle.exportKey('spki', pair.publicKey));
  return { kind: 'webkey', privateKey: pair.privateKey, spki, keyId: await credentialId('phone', spki) };
}

/** IEEE P1363 r‖s, 64 bytes (WebCrypto's own format; not low-S normalised). */
export async function signWithWebKey(key: WebKey, bytes: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign(SIGN, key.privateKey, bytes as BufferSource));
}

export async function verifyVehicleSignature(
  spki: Uint8Array,
  sig: Uint8Array,
  bytes: Uint8Array,
): Promise<boolean> {
  try {
    const key = await crypto.subtle.importKey('spki', spki as BufferSource, ECDSA, false, ['verify']);
    return await crypto.subtle.verify(SIGN, key, sig as BufferSource, bytes as BufferSource);
  } catch {
    return false;
  }
}

export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** A platform passkey that needs user verification (fingerprint, face, PIN) at every use. */
export async function createPasskey(name: string): Promise<Passkey> {
  const rpId = location.hostname;
  const cred = (await navigator.credentials.create({
    publicKey: {
      rp: { name: 'vehicle-agent phone key', id: rpId },
      user: { id: crypto.getRandomValues(new Uint8Array(16)), name, displayName: name },
      challenge: crypto.getRandomValues(new Uint8Array(32)),
      pubKeyCredParams: [{ type: 'public-key', alg: -7 }],
      authenticatorSelection: {
        authenticatorAttachment: 'platform',
        userVerification: 'required',
        residentKey: 'preferred',
      },
      attestation: 'none',
      timeout: 120_000,
    },
  })) as PublicKeyCredential | null;
  if (cred === null) throw new Error('no passkey was created');
  const response = cred.response as AuthenticatorAttestationResponse;
  const spki = response.getPublicKey();
  if (spki === null) throw new Error('the authenticator gave no P-256 public key');
  return { kind: 'passkey', credId: new Uint8Array(cred.rawId), spki: new Uint8Array(spki), rpId };
}

export interface Assertion {
  readonly authenticatorData: Uint8Array;
  readonly clientDataJSON: Uint8Array;
  readonly sig: Uint8Array;
}

export async function assertPasskey(key: Passkey, challenge: Uint8Array): Promise<Assertion> {
  const cred = (await navigator.credentials.get({
    publicKey: {
      challenge: challenge as BufferSource,
      rpId: key.rpId,
      allowCredentials: [{ type: 'public-key', id: key.credId as BufferSource }],
      userVerification: 'required',
      timeout: 60_000,
    },
  })) as PublicKeyCredential | null;
  if (cred === null) throw new Error('the passkey gave no answer');
  const response = cred.response as AuthenticatorAssertionResponse;
  return {
    authenticatorData: new Uint8Array(response.authenticatorData),
    clientDataJSON: new Uint8Array(response.clientDataJSON),
    sig: new Uint8Array(response.signature),
  };
}
