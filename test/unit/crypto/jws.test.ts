import { createPublicKey } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import { b64url } from '../../../src/crypto/encoding.js';
import { parseJws, signJws, verifyJws } from '../../../src/crypto/jws.js';
import { encodeKeyPair, generateKeyPair, parseKeyText, publicJwkOf } from '../../../src/crypto/keys.js';

const codeOf = (fn: () => unknown) => {
  try {
    fn();
    return 'none';
  } catch (e) {
    return e instanceof AgentError ? e.code : 'raw';
  }
};

describe('JWS', () => {
  it.each(['P-256', 'Ed25519'] as const)('signs and verifies with %s, and rejects tampering', (alg) => {
    const pair = generateKeyPair(alg);
    const jws = signJws({ cmd: 'unlock', n: 1 }, pair.privateKey, 'kid-1', 'test');
    const parsed = parseJws(jws);
    expect(parsed.header).toEqual({ alg: alg === 'P-256' ? 'ES256' : 'EdDSA', kid: 'kid-1', typ: 'test' });
    expect(verifyJws(parsed, pair.publicKey)).toBe(true);
    const [h, , s] = jws.split('.');
    const forged = parseJws(`${h}.${b64url(Buffer.from('{"cmd":"unlock","n":2}'))}.${s}`);
    expect(verifyJws(forged, pair.publicKey)).toBe(false);
    expect(verifyJws(parsed, generateKeyPair(alg).publicKey)).toBe(false);
  });

  it('refuses an algorithm confusion between header and key', () => {
    const ec = generateKeyPair('P-256');
    const ed = generateKeyPair('Ed25519');
    const jws = signJws({ a: 1 }, ed.privateKey, 'k');
    const [, p, s] = jws.split('.');
    const lying = parseJws(`${b64url(Buffer.from('{"alg":"ES256","kid":"k"}'))}.${p}.${s}`);
    expect(verifyJws(lying, ed.publicKey)).toBe(false);
    expect(verifyJws(lying, ec.publicKey)).toBe(false);
  });

  it.each([
    ['empty', ''],
    ['two parts', 'a.b'],
    ['alg none', `${b64url(Buffer.from('{"alg":"none","kid":"k"}'))}.${b64url(Buffer.from('{}'))}.`],
    ['HS256', `${b64url(Buffer.from('{"alg":"HS256","kid":"k"}'))}.${b64url(Buffer.from('{}'))}.AA`],
    ['no kid', `${b64url(Buffer.from('{"alg":"ES256"}'))}.${b64url(Buffer.from('{}'))}.AA`],
    [
      'crit',
      `${b64url(Buffer.from('{"alg":"ES256","kid":"k","crit":["x"]}'))}.${b64url(Buffer.from('{}'))}.AA`,
    ],
    ['array payload', `${b64url(Buffer.from('{"alg":"ES256","kid":"k"}'))}.${b64url(Buffer.from('[1]'))}.AA`],
    ['bad base64', `${b64url(Buffer.from('{"alg":"ES256","kid":"k"}'))}.e30=.AA`],
    ['huge', 'a'.repeat(70_000)],
  ])('rejects a malformed JWS (%s) with jws_malformed', (_n, text) => {
    expect(codeOf(() => parseJws(text))).toBe('jws_malformed');
  });

  it('round-trips key files through PEM and JWK', () => {
    for (const alg of ['P-256', 'Ed25519'] as const) {
      const pair = generateKeyPair(alg);
      const enc = encodeKeyPair(pair);
      const fromPem = parseKeyText(enc.privatePem);
      const fromJwk = parseKeyText(enc.privateJwk);
      expect(publicJwkOf(fromPem)).toEqual(publicJwkOf(pair.publicKey));
      expect(publicJwkOf(fromJwk)).toEqual(publicJwkOf(pair.publicKey));
      expect(publicJwkOf(parseKeyText(enc.publicPem))).toEqual(publicJwkOf(createPublicKey(pair.privateKey)));
      expect(parseKeyText(enc.publicJwk).type).toBe('public');
    }
    expect(codeOf(() => parseKeyText('-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----'))).toBe(
      'key_invalid',
    );
    expect(codeOf(() => parseKeyText('{"kty":"RSA"}'))).toBe('key_invalid');
  });
});
