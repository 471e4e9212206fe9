import { describe, expect, it } from 'vitest';
import { credentialToWire, parseCredentialWire } from '../../../src/access/credential-wire.js';
import { AgentError } from '../../../src/core/errors.js';
import { b64url } from '../../../src/crypto/encoding.js';
import { credentialIdFor, generateKeyPair, publicJwkOf } from '../../../src/crypto/keys.js';

/** The passkey credential kind on the wire: id from the WebAuthn credential id, rpId kept, strictly checked. */

const rawId = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
const publicKey = publicJwkOf(generateKeyPair('P-256').publicKey);
const good = {
  id: credentialIdFor('passkey', rawId),
  kind: 'passkey',
  role: 'driver',
  publicKey,
  keyHandle: b64url(rawId),
  rpId: 'keys.example.org',
};

function codeOf(value: unknown): string {
  try {
    parseCredentialWire(value);
    return 'value';
  } catch (err) {
    if (!(err instanceof AgentError)) throw err;
    return err.code;
  }
}

describe('passkey credential', () => {
  it('round-trips with its rpId and an id derived from the WebAuthn credential id', () => {
    const parsed = parseCredentialWire(good);
    expect(parsed).toMatchObject({ kind: 'passkey', rpId: 'keys.example.org', keyHandle: b64url(rawId) });
    expect(parsed.id).toMatch(/^passkey:/);
    expect(credentialToWire(parsed)).toEqual(good);
  });

  it.each([
    ['no rpId', { ...good, rpId: undefined }, 'op_malformed'],
    ['a bad rpId', { ...good, rpId: 'a/b' }, 'op_malformed'],
    ['no credential id', { ...good, keyHandle: undefined }, 'op_malformed'],
    ['another id', { ...good, id: credentialIdFor('passkey', Uint8Array.of(9, ...rawId)) }, 'op_malformed'],
    [
      'an Ed25519 key',
      { ...good, publicKey: publicJwkOf(generateKeyPair('Ed25519').publicKey) },
      'key_invalid',
    ],
    ['passive unlock', { ...good, options: { passive: true } }, 'op_malformed'],
  ])('refuses %s', (_, value, code) => {
    expect(codeOf(value)).toBe(code);
  });

  it('refuses rpId on another kind', () => {
    const phoneKey = generateKeyPair('P-256').publicKey;
    const jwk = publicJwkOf(phoneKey);
    const phone = { kind: 'phone', role: 'driver', publicKey: jwk, rpId: 'x.org' };
    expect(codeOf({ ...phone, id: 'phone:whatever' })).toBe('op_malformed');
  });
});
