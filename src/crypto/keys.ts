import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type JsonWebKey,
  type KeyObject,
} from 'node:crypto';
import { AgentError } from '../core/errors.js';
import { CREDENTIAL_KINDS, type CredentialKind, type PublicJwk } from '../core/types.js';
import { b64url, fromB64url } from './encoding.js';

export type KeyAlgorithm = 'P-256' | 'Ed25519';

export interface KeyPair {
  readonly algorithm: KeyAlgorithm;
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
}

/**
 * Generated as DER and made into key objects after: Node 20 can deadlock when a key object that
 * generateKeyPairSync returned is exported (publicJwkOf) while a garbage collection frees its
 * finished generation job (seen in bench/scale.ts: the main thread waits on a lock it holds).
 */
export function generateKeyPair(algorithm: KeyAlgorithm): KeyPair {
  const publicKeyEncoding = { type: 'spki', format: 'der' } as const;
  const privateKeyEncoding = { type: 'pkcs8', format: 'der' } as const;
  const { privateKey, publicKey } =
    algorithm === 'P-256'
      ? generateKeyPairSync('ec', { namedCurve: 'prime256v1', publicKeyEncoding, privateKeyEncoding })
      : generateKeyPairSync('ed25519', { publicKeyEncoding, privateKeyEncoding });
  return {
    algorithm,
    privateKey: createPrivateKey({ key: privateKey, format: 'der', type: 'pkcs8' }),
    publicKey: createPublicKey({ key: publicKey, format: 'der', type: 'spki' }),
  };
}

export function algorithmOf(key: KeyObject): KeyAlgorithm {
  if (key.asymmetricKeyType === 'ed25519') return 'Ed25519';
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'P-256';
  throw new AgentError('key_invalid', 'only P-256 and Ed25519 keys are supported', {
    type: key.asymmetricKeyType,
    curve: key.asymmetricKeyDetails?.namedCurve,
  });
}

export function publicJwkOf(key: KeyObject): PublicJwk {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  const jwk = pub.export({ format: 'jwk' });
  if (jwk.kty === 'EC' && jwk.crv === 'P-256' && jwk.x && jwk.y) {
    return { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y };
  }
  if (jwk.kty === 'OKP' && jwk.crv === 'Ed25519' && jwk.x) return { kty: 'OKP', crv: 'Ed25519', x: jwk.x };
  throw new AgentError('key_invalid', 'only P-256 and Ed25519 keys are supported', { kty: jwk.kty });
}

/**
 * Public keys imported once per JWK object: an import costs about as much as a verification, and
 * the keyring hands out the same JWK object for a credential until it is recomputed (then the
 * cache simply misses and refills). Throws like publicKeyFromJwk.
 */
const importedKeys = new WeakMap<PublicJwk, KeyObject>();

export function cachedPublicKey(jwk: PublicJwk): KeyObject {
  let key = importedKeys.get(jwk);
  if (key === undefined) {
    key = publicKeyFromJwk(jwk);
    importedKeys.set(jwk, key);
  }
  return key;
}

/** Imports a public JWK, validating that the point is on the curve. */
export function publicKeyFromJwk(jwk: PublicJwk): KeyObject {
  try {
    const key = createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' });
    algorithmOf(key);
    return key;
  } catch (err) {
    throw new AgentError(
      'key_invalid',
      'public key JWK is not a valid P-256 or Ed25519 key',
      {},
      { cause: err },
    );
  }
}

/**
 * The key algorithm a credential kind needs: phone keys and FIDO keys are P-256 (what phone
 * secure elements and U2F authenticators hold, and all the BLE and NFC checks verify); signers
 * may be P-256 or Ed25519. Throws key_invalid naming `source` (a file, a field) otherwise.
 */
export function requireKeyForKind(kind: CredentialKind, jwk: PublicJwk, source = 'public key'): void {
  if (
    (kind === 'phone' || kind === 'fido' || kind === 'passkey') &&
    !(jwk.kty === 'EC' && jwk.crv === 'P-256')
  ) {
    throw new AgentError(
      'key_invalid',
      `${source}: a ${kind} key must be P-256 (ECDSA); this is ${jwk.crv}. ` +
        'Ed25519 keys can only be signer keys (--kind signer)',
      { kind, curve: jwk.crv },
    );
  }
}

/** Raw public key bytes: 65-byte uncompressed point for P-256, 32 bytes for Ed25519. */
export function rawPublicKey(jwk: PublicJwk): Uint8Array {
  if (jwk.kty === 'EC') {
    const x = fromB64url(jwk.x);
    const y = fromB64url(jwk.y ?? '');
    if (x.length !== 32 || y.length !== 32)
      throw new AgentError('key_invalid', 'P-256 JWK coordinates must be 32 bytes');
    const out = new Uint8Array(65);
    out[0] = 0x04;
    out.set(x, 1);
    out.set(y, 33);
    return out;
  }
  const x = fromB64url(jwk.x);
  if (x.length !== 32) throw new AgentError('key_invalid', 'Ed25519 JWK x must be 32 bytes');
  return x;
}

/** JWK from a 65-byte uncompressed P-256 point (as phones and FIDO keys send it). */
export function p256JwkFromRaw(raw: Uint8Array): PublicJwk {
  if (raw.length !== 65 || raw[0] !== 0x04) {
    throw new AgentError('key_invalid', 'P-256 public key must be a 65-byte uncompressed point');
  }
  const jwk: PublicJwk = {
    kty: 'EC',
    crv: 'P-256',
    x: b64url(raw.subarray(1, 33)),
    y: b64url(raw.subarray(33)),
  };
  publicKeyFromJwk(jwk); // on-curve check
  return jwk;
}

/**
 * Parses a key file's text: PEM (PKCS#8 / SEC1 private, SPKI public) or JWK JSON.
 * Returns the KeyObject; private when the text holds a private key.
 */
export function parseKeyText(text: string, source = 'key'): KeyObject {
  const trimmed = text.trim();
  try {
    if (trimmed.startsWith('{')) {
      const jwk = JSON.parse(trimmed) as JsonWebKey;
      const key =
        typeof jwk.d === 'string'
          ? createPrivateKey({ key: jwk, format: 'jwk' })
          : createPublicKey({ key: jwk, format: 'jwk' });
      algorithmOf(key);
      return key;
    }
    if (trimmed.includes('PRIVATE KEY')) {
      const key = createPrivateKey(trimmed);
      algorithmOf(key);
      return key;
    }
    const key = createPublicKey(trimmed);
    algorithmOf(key);
    return key;
  } catch (err) {
    if (err instanceof AgentError) throw new AgentError(err.code, `${source}: ${err.message}`, { source });
    throw new AgentError(
      'key_invalid',
      `${source}: not a P-256 or Ed25519 key in PEM or JWK form`,
      { source },
      { cause: err },
    );
  }
}

export interface EncodedKeyPair {
  readonly privatePem: string;
  readonly publicPem: string;
  readonly privateJwk: string;
  readonly publicJwk: string;
}

export function encodeKeyPair(pair: KeyPair): EncodedKeyPair {
  return {
    privatePem: pair.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    publicPem: pair.publicKey.export({ format: 'pem', type: 'spki' }).toString(),
    privateJwk: `${JSON.stringify(pair.privateKey.export({ format: 'jwk' }))}\n`,
    publicJwk: `${JSON.stringify(publicJwkOf(pair.publicKey))}\n`,
  };
}

function digest(bytes: Uint8Array | string): Buffer {
  return createHash('sha256').update(bytes).digest();
}

/**
 * Stable credential id derived from what identifies the credential: `<kind>:<22 base64url chars>`
 * (132 bits of SHA-256). Used as the JWS `kid` for keys that sign.
 */
export function credentialIdFor(kind: CredentialKind, identity: Uint8Array): string {
  const h = createHash('sha256').update(`vehicle-agent/credential/v1/${kind}/`).update(identity).digest();
  return `${kind}:${b64url(h.subarray(0, 16)).slice(0, 22)}`;
}

const CREDENTIAL_ID = new RegExp(`^(${CREDENTIAL_KINDS.join('|')}):[A-Za-z0-9_-]{22}$`);

/** Whether `id` has the shape credentialIdFor gives (kind, colon, 22 base64url characters). */
export function isCredentialId(id: string): boolean {
  return CREDENTIAL_ID.test(id);
}

export function keyCredentialId(kind: 'phone' | 'signer', jwk: PublicJwk): string {
  return credentialIdFor(kind, rawPublicKey(jwk));
}

/**
 * Salted hash of a card UID. The raw UID never leaves the reader module: the keyring and the
 * audit log hold only this. Salted with the vehicle id so hashes do not link across vehicles.
 */
export function uidHash(vehicleId: string, uid: Uint8Array): string {
  return digest(Buffer.concat([Buffer.from(`vehicle-agent/uid/v1/${vehicleId}/`), uid]))
    .subarray(0, 16)
    .toString('hex');
}

export function sha256(bytes: Uint8Array | string): Uint8Array {
  return new Uint8Array(digest(bytes));
}
