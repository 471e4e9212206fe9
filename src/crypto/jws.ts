import { type KeyObject, sign as nodeSign } from 'node:crypto';
import { AgentError } from '../core/errors.js';
import { b64url, fromB64url } from './encoding.js';
import { algorithmOf } from './keys.js';
import { verifyEd25519, verifyP256 } from './verify.js';

/** JWS compact serialisation (RFC 7515) with ES256 (RFC 7518 §3.4, r‖s) and EdDSA (RFC 8037). */
export type JwsAlg = 'ES256' | 'EdDSA';

export interface JwsHeader {
  readonly alg: JwsAlg;
  readonly kid: string;
  readonly typ?: string;
}

export interface ParsedJws<P = unknown> {
  readonly header: JwsHeader;
  readonly payload: P;
  readonly signingInput: string;
  readonly signature: Uint8Array;
}

/** Upper bound on a compact JWS we will parse; anything larger is refused before decoding. */
export const MAX_JWS_LENGTH = 64 * 1024;

export function algForKey(key: KeyObject): JwsAlg {
  return algorithmOf(key) === 'P-256' ? 'ES256' : 'EdDSA';
}

export function signJws(payload: unknown, privateKey: KeyObject, kid: string, typ?: string): string {
  const alg = algForKey(privateKey);
  const header: JwsHeader = typ === undefined ? { alg, kid } : { alg, kid, typ };
  const signingInput = `${b64url(Buffer.from(JSON.stringify(header)))}.${b64url(Buffer.from(JSON.stringify(payload)))}`;
  const signature =
    alg === 'ES256'
      ? nodeSign('sha256', Buffer.from(signingInput), { key: privateKey, dsaEncoding: 'ieee-p1363' })
      : nodeSign(null, Buffer.from(signingInput), privateKey);
  return `${signingInput}.${b64url(signature)}`;
}

function malformed(message: string): AgentError {
  return new AgentError('jws_malformed', message);
}

function decodeJsonPart(part: string, what: string): unknown {
  let bytes: Uint8Array;
  try {
    bytes = fromB64url(part);
  } catch {
    throw malformed(`JWS ${what} is not base64url`);
  }
  try {
    return JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw malformed(`JWS ${what} is not JSON`);
  }
}

/** Parses without verifying. Strict: three parts, known alg, string kid, no `crit`, object payload. */
export function parseJws<P = Record<string, unknown>>(compact: string): ParsedJws<P> {
  if (typeof compact !== 'string') throw malformed('JWS must be a string');
  if (compact.length > MAX_JWS_LENGTH) throw malformed(`JWS longer than ${MAX_JWS_LENGTH} characters`);
  const parts = compact.trim().split('.');
  if (parts.length !== 3) throw malformed('JWS compact form has three dot-separated parts');
  const [h, p, s] = parts as [string, string, string];
  const header = decodeJsonPart(h, 'header');
  if (typeof header !== 'object' || header === null || Array.isArray(header))
    throw malformed('JWS header is not an object');
  const { alg, kid, crit, typ } = header as Record<string, unknown>;
  if (alg !== 'ES256' && alg !== 'EdDSA') throw malformed('JWS alg must be ES256 or EdDSA');
  if (typeof kid !== 'string' || kid.length === 0 || kid.length > 200)
    throw malformed('JWS header needs a kid');
  if (crit !== undefined) throw malformed('JWS crit headers are not supported');
  if (typ !== undefined && typeof typ !== 'string') throw malformed('JWS typ must be a string');
  const payload = decodeJsonPart(p, 'payload');
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload))
    throw malformed('JWS payload is not an object');
  let signature: Uint8Array;
  try {
    signature = fromB64url(s);
  } catch {
    throw malformed('JWS signature is not base64url');
  }
  const parsedHeader: JwsHeader = typ === undefined ? { alg, kid } : { alg, kid, typ: typ as string };
  return { header: parsedHeader, payload: payload as P, signingInput: `${h}.${p}`, signature };
}

/** True iff the signature verifies with `publicKey` and the key's algorithm matches the header. */
export function verifyJws(parsed: ParsedJws<unknown>, publicKey: KeyObject): boolean {
  let keyAlg: JwsAlg;
  try {
    keyAlg = algForKey(publicKey);
  } catch {
    return false;
  }
  if (keyAlg !== parsed.header.alg) return false;
  const data = Buffer.from(parsed.signingInput);
  return keyAlg === 'ES256'
    ? verifyP256(publicKey, data, parsed.signature)
    : verifyEd25519(publicKey, data, parsed.signature);
}
