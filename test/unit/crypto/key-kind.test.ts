import { describe, expect, it } from 'vitest';
import type { CredentialKind } from '../../../src/core/types.js';
import { generateKeyPair, publicJwkOf, requireKeyForKind } from '../../../src/crypto/keys.js';

const p256 = publicJwkOf(generateKeyPair('P-256').publicKey);
const ed25519 = publicJwkOf(generateKeyPair('Ed25519').publicKey);

describe('requireKeyForKind', () => {
  it.each<[CredentialKind, 'P-256' | 'Ed25519', boolean]>([
    ['phone', 'P-256', true],
    ['phone', 'Ed25519', false],
    ['fido', 'P-256', true],
    ['fido', 'Ed25519', false],
    ['signer', 'P-256', true],
    ['signer', 'Ed25519', true],
  ])('%s key on %s: accepted %s', (kind, curve, accepted) => {
    const check = () => requireKeyForKind(kind, curve === 'P-256' ? p256 : ed25519, 'k.pem');
    if (accepted) expect(check).not.toThrow();
    else
      expect(check).toThrow(
        expect.objectContaining({
          code: 'key_invalid',
          message: expect.stringMatching(/^k\.pem: a \w+ key must be P-256/),
        }),
      );
  });
});
