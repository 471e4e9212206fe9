import { createHash, generateKeyPairSync } from 'node:crypto';
import { p256 } from '@noble/curves/nist.js';
import { describe, expect, it } from 'vitest';
import {
  counterAccepted,
  type PasskeyExpectation,
  verifyPasskeyAssertion,
} from '../../../src/ble/protocol/webauthn.js';
import { type AssertionOptions, assertion, makePasskey } from './mode-p-client.js';

/** WebAuthn assertion checks, each rule with a case that breaks only it. */

const CHALLENGE = new Uint8Array(createHash('sha256').update('a challenge').digest());
const passkey = makePasskey('keys.example.org');
const ORIGIN = 'https://keys.example.org';

function expectation(over: Partial<PasskeyExpectation> = {}): PasskeyExpectation {
  return {
    challenge: CHALLENGE,
    allowedOrigins: new Set([ORIGIN, 'http://127.0.0.1:8080']),
    rpId: passkey.rpId,
    publicKey: passkey.jwk,
    ...over,
  };
}

function check(options: AssertionOptions, over: Partial<PasskeyExpectation> = {}) {
  return verifyPasskeyAssertion(
    assertion(passkey, CHALLENGE, { origin: ORIGIN, ...options }),
    expectation(over),
  );
}

describe('passkey assertion', () => {
  it('accepts a good assertion and returns its counter', () => {
    expect(check({ counter: 7 })).toEqual({ ok: true, counter: 7 });
  });

  it.each([
    ['another origin', { origin: 'https://evil.example' }, {}, 'origin_not_allowed'],
    [
      'an origin differing only by port',
      { origin: 'https://keys.example.org:444' },
      {},
      'origin_not_allowed',
    ],
    ['a cross-origin iframe', { crossOrigin: true }, {}, 'origin_not_allowed'],
    ['another rpId', { rpId: 'example.org' }, {}, 'bad_proof'],
    ['type webauthn.create', { type: 'webauthn.create' }, {}, 'bad_proof'],
    ['UV missing', { flags: 0x01 }, {}, 'user_verification_required'],
    ['UP missing', { flags: 0x04 }, {}, 'user_verification_required'],
    ['another challenge', { challenge: new Uint8Array(32).fill(1) }, {}, 'bad_proof'],
    [
      'a signature by another key',
      { signer: generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey },
      {},
      'bad_proof',
    ],
    ['a counter going back', { counter: 4 }, { lastCounter: 5 }, 'clone_suspected'],
    ['a counter standing still', { counter: 5 }, { lastCounter: 5 }, 'clone_suspected'],
    ['a counter 0 after a non-zero one', { counter: 0 }, { lastCounter: 5 }, 'clone_suspected'],
  ] as const)('refuses %s', (_, options, over, code) => {
    expect(check(options, over)).toEqual({ ok: false, code });
  });

  it('accepts counter 0 twice (a synced passkey) and a growing counter', () => {
    expect(check({ counter: 0 }, { lastCounter: 0 })).toEqual({ ok: true, counter: 0 });
    expect(check({ counter: 0 }, { lastCounter: 0 })).toEqual({ ok: true, counter: 0 });
    expect(check({ counter: 6 }, { lastCounter: 5 })).toEqual({ ok: true, counter: 6 });
    expect(counterAccepted(undefined, 0)).toBe(true);
  });

  it('refuses a flipped bit anywhere in authenticatorData, clientDataJSON or the signature', () => {
    const good = assertion(passkey, CHALLENGE, { origin: ORIGIN });
    for (const part of ['authenticatorData', 'clientDataJSON', 'signature'] as const) {
      for (let i = 0; i < good[part].length; i += 3) {
        const bad = { ...good, [part]: Uint8Array.from(good[part]) };
        bad[part][i] = (bad[part][i] ?? 0) ^ 0x01;
        expect(verifyPasskeyAssertion(bad, expectation()).ok, `${part}[${i}]`).toBe(false);
      }
    }
  });

  it('accepts a high-S signature (authenticators do not normalise s)', () => {
    const good = assertion(passkey, CHALLENGE, { origin: ORIGIN });
    const sig = p256.Signature.fromBytes(good.signature, 'der');
    const flipped = new p256.Signature(sig.r, p256.Point.CURVE().n - sig.s);
    const highS = sig.hasHighS() ? sig : flipped;
    expect(highS.hasHighS()).toBe(true);
    expect(verifyPasskeyAssertion({ ...good, signature: highS.toBytes('der') }, expectation())).toMatchObject(
      { ok: true },
    );
  });

  it('refuses clientDataJSON that is not a JSON object with string fields, and short authenticatorData', () => {
    const good = assertion(passkey, CHALLENGE, { origin: ORIGIN });
    for (const text of ['[]', 'null', '{"type":1}', '\xff\xfe', '']) {
      const bad = { ...good, clientDataJSON: new TextEncoder().encode(text) };
      expect(verifyPasskeyAssertion(bad, expectation())).toEqual({ ok: false, code: 'malformed' });
    }
    expect(
      verifyPasskeyAssertion(
        { ...good, authenticatorData: good.authenticatorData.subarray(0, 36) },
        expectation(),
      ),
    ).toEqual({ ok: false, code: 'malformed' });
  });
});
