import type { KeyObject } from 'node:crypto';
import { ed25519 } from '@noble/curves/ed25519.js';
import { p256 } from '@noble/curves/nist.js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { b64url } from '../../../src/crypto/encoding.js';
import { publicKeyFromJwk } from '../../../src/crypto/keys.js';
import { type P256Encoding, verifyEd25519, verifyP256 } from '../../../src/crypto/verify.js';

/**
 * The unlock path's verifier (node:crypto) cross-checked against @noble/curves on the same
 * inputs. Noble runs with the agent's policy (P-256 `lowS: false`, Ed25519 `zip215: false`), so
 * the two must agree on every input; where noble's defaults differ, the test says so.
 */

const N = p256.Point.CURVE().n;
const L = ed25519.Point.CURVE().n;
const RUNS = { numRuns: 40 };

function p256Jwk(raw: Uint8Array) {
  return {
    kty: 'EC' as const,
    crv: 'P-256' as const,
    x: b64url(raw.subarray(1, 33)),
    y: b64url(raw.subarray(33, 65)),
  };
}

function p256Key(raw: Uint8Array): KeyObject {
  return publicKeyFromJwk(p256Jwk(raw));
}

function edKey(raw: Uint8Array): KeyObject {
  return publicKeyFromJwk({ kty: 'OKP', crv: 'Ed25519', x: b64url(raw) });
}

/** noble with the agent's P-256 policy; a throw (malformed input) counts as a refusal. */
function nobleP256(sig: Uint8Array, msg: Uint8Array, pub: Uint8Array, format: P256Encoding, lowS = false) {
  try {
    return p256.verify(sig, msg, pub, { lowS, format: format === 'der' ? 'der' : 'compact' });
  } catch {
    return false;
  }
}

function nobleEd(sig: Uint8Array, msg: Uint8Array, pub: Uint8Array, zip215 = false) {
  try {
    return ed25519.verify(sig, msg, pub, { zip215 });
  } catch {
    return false;
  }
}

function bigBytes(value: bigint, length: number): Uint8Array {
  return Uint8Array.from(Buffer.from(value.toString(16).padStart(length * 2, '0'), 'hex'));
}

function flipBit(bytes: Uint8Array, bit: number): Uint8Array {
  const out = Uint8Array.from(bytes);
  const index = Math.floor(bit / 8) % out.length;
  out[index] = (out[index] ?? 0) ^ (1 << (bit % 8));
  return out;
}

const p256Secret = fc
  .uint8Array({ minLength: 48, maxLength: 48 })
  .map((seed) => p256.utils.randomSecretKey(seed));
const message = fc.uint8Array({ minLength: 0, maxLength: 300 });
const encoding = fc.constantFrom<P256Encoding>('p1363', 'der');

function signedP256(secret: Uint8Array, msg: Uint8Array, format: P256Encoding, highS: boolean) {
  const low = p256.Signature.fromBytes(p256.sign(msg, secret), 'compact');
  const sig = highS ? new p256.Signature(low.r, N - low.s) : low;
  return {
    pub: p256.getPublicKey(secret, false),
    sig: sig.toBytes(format === 'der' ? 'der' : 'compact'),
  };
}

describe('verifyP256 against @noble/curves', () => {
  it('both accept valid signatures, low-S and high-S, in both encodings', () => {
    fc.assert(
      fc.property(p256Secret, message, encoding, fc.boolean(), (secret, msg, format, highS) => {
        const { pub, sig } = signedP256(secret, msg, format, highS);
        expect(verifyP256(p256Key(pub), msg, sig, format)).toBe(true);
        expect(nobleP256(sig, msg, pub, format)).toBe(true);
      }),
      RUNS,
    );
  });

  it('high-S: the agent accepts it (phones and authenticators do not normalise s); noble only without its low-S default', () => {
    fc.assert(
      fc.property(p256Secret, message, encoding, (secret, msg, format) => {
        const { pub, sig } = signedP256(secret, msg, format, true);
        expect(p256.Signature.fromBytes(sig, format === 'der' ? 'der' : 'compact').hasHighS()).toBe(true);
        expect(verifyP256(p256Key(pub), msg, sig, format)).toBe(true);
        expect(nobleP256(sig, msg, pub, format, true)).toBe(false);
      }),
      { numRuns: 10 },
    );
  });

  it('both refuse a tampered message, a tampered signature and a wrong key', () => {
    fc.assert(
      fc.property(
        p256Secret,
        p256Secret,
        message,
        encoding,
        fc.boolean(),
        fc.nat(),
        (secret, other, msg, format, highS, bit) => {
          fc.pre(!Buffer.from(secret).equals(Buffer.from(other)));
          const { pub, sig } = signedP256(secret, msg, format, highS);
          const key = p256Key(pub);
          const badMsg = msg.length === 0 ? Uint8Array.of(0) : flipBit(msg, bit);
          expect(verifyP256(key, badMsg, sig, format)).toBe(false);
          expect(nobleP256(sig, badMsg, pub, format)).toBe(false);
          const badSig = flipBit(sig, bit);
          expect(verifyP256(key, msg, badSig, format)).toBe(false);
          expect(nobleP256(badSig, msg, pub, format)).toBe(false);
          const otherPub = p256.getPublicKey(other, false);
          expect(verifyP256(p256Key(otherPub), msg, sig, format)).toBe(false);
          expect(nobleP256(sig, msg, otherPub, format)).toBe(false);
        },
      ),
      RUNS,
    );
  });

  it('both refuse arbitrary bytes as a signature (P1363 of any length, DER of any shape)', () => {
    const secret = p256.utils.randomSecretKey();
    const pub = p256.getPublicKey(secret, false);
    const key = p256Key(pub);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 80 }), message, encoding, (junk, msg, format) => {
        const agent = verifyP256(key, msg, junk, format);
        expect(agent).toBe(nobleP256(junk, msg, pub, format));
        expect(agent).toBe(false);
      }),
      { numRuns: 200 },
    );
  });

  it.each([
    ['r = 0', 0n, 1n],
    ['s = 0', 1n, 0n],
    ['r = n', N, 1n],
    ['s = n', 1n, N],
    ['r above n', N + 5n, 1n],
  ])('both refuse a P1363 signature with %s', (_name, r, s) => {
    const msg = Uint8Array.of(1, 2, 3);
    const { pub } = signedP256(p256.utils.randomSecretKey(), msg, 'p1363', false);
    const sig = new Uint8Array([...bigBytes(r % 2n ** 256n, 32), ...bigBytes(s % 2n ** 256n, 32)]);
    expect(verifyP256(p256Key(pub), msg, sig)).toBe(false);
    expect(nobleP256(sig, msg, pub, 'p1363')).toBe(false);
  });

  it('both refuse DER that is valid BER but not DER: a padded integer, a long-form length, trailing bytes', () => {
    const msg = Uint8Array.of(9, 8, 7);
    const secret = p256.utils.randomSecretKey();
    const { pub, sig } = signedP256(secret, msg, 'der', false);
    const key = p256Key(pub);
    expect(verifyP256(key, msg, sig, 'der')).toBe(true);
    // 30 L 02 Lr r 02 Ls s: pad r with a zero byte it does not need (r's top bit clear: Lr ≤ 32).
    const lr = sig[3] ?? 0;
    const rBytes = sig.subarray(4, 4 + lr);
    const rest = sig.subarray(4 + lr);
    const paddedR = Uint8Array.from([0x30, (sig[1] ?? 0) + 1, 0x02, lr + 1, 0x00, ...rBytes, ...rest]);
    const longForm = Uint8Array.from([0x30, 0x81, sig[1] ?? 0, ...sig.subarray(2)]);
    const trailing = Uint8Array.from([...sig, 0x00]);
    const cases = (rBytes[0] ?? 0) & 0x80 ? [longForm, trailing] : [paddedR, longForm, trailing];
    for (const bad of cases) {
      expect(verifyP256(key, msg, bad, 'der')).toBe(false);
      expect(nobleP256(bad, msg, pub, 'der')).toBe(false);
    }
  });

  it('a point not on the curve is refused as a key by both (the agent at import: key_invalid)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 64, maxLength: 64 }), (xy) => {
        const raw = Uint8Array.from([0x04, ...xy]);
        let nobleAccepts = true;
        try {
          p256.Point.fromBytes(raw);
        } catch {
          nobleAccepts = false;
        }
        let agentAccepts = true;
        try {
          p256Key(raw);
        } catch (err) {
          expect((err as { code?: string }).code).toBe('key_invalid');
          agentAccepts = false;
        }
        expect(agentAccepts).toBe(nobleAccepts);
      }),
      { numRuns: 100 },
    );
    // A real point with y moved by one is off the curve.
    const raw = p256.getPublicKey(p256.utils.randomSecretKey(), false);
    raw[64] = (raw[64] ?? 0) ^ 1;
    expect(() => p256Key(raw)).toThrow(/not a valid/);
    expect(() => p256.Point.fromBytes(raw)).toThrow();
  });
});

const edSecret = fc.uint8Array({ minLength: 32, maxLength: 32 });

describe('verifyEd25519 against @noble/curves', () => {
  it('both accept valid signatures and refuse a tampered message, signature or a wrong key', () => {
    fc.assert(
      fc.property(edSecret, edSecret, message, fc.nat(), (secret, other, msg, bit) => {
        fc.pre(!Buffer.from(secret).equals(Buffer.from(other)));
        const pub = ed25519.getPublicKey(secret);
        const sig = ed25519.sign(msg, secret);
        const key = edKey(pub);
        expect(verifyEd25519(key, msg, sig)).toBe(true);
        expect(nobleEd(sig, msg, pub)).toBe(true);
        const badMsg = msg.length === 0 ? Uint8Array.of(0) : flipBit(msg, bit);
        expect(verifyEd25519(key, badMsg, sig)).toBe(false);
        expect(nobleEd(sig, badMsg, pub)).toBe(false);
        const badSig = flipBit(sig, bit);
        expect(verifyEd25519(key, msg, badSig)).toBe(false);
        expect(nobleEd(badSig, msg, pub)).toBe(false);
        const otherPub = ed25519.getPublicKey(other);
        expect(verifyEd25519(edKey(otherPub), msg, sig)).toBe(false);
        expect(nobleEd(sig, msg, otherPub)).toBe(false);
      }),
      RUNS,
    );
  });

  it('both refuse a malleated signature (S + L, not below the group order), noble even in ZIP-215 mode', () => {
    fc.assert(
      fc.property(edSecret, message, (secret, msg) => {
        const pub = ed25519.getPublicKey(secret);
        const sig = ed25519.sign(msg, secret);
        const s = BigInt(`0x${Buffer.from(sig.subarray(32)).reverse().toString('hex')}`) + L;
        const malleated = Uint8Array.from([...sig.subarray(0, 32), ...bigBytes(s, 32).reverse()]);
        expect(verifyEd25519(edKey(pub), msg, malleated)).toBe(false);
        expect(nobleEd(malleated, msg, pub)).toBe(false);
        expect(nobleEd(malleated, msg, pub, true)).toBe(false);
      }),
      { numRuns: 20 },
    );
  });

  it('both refuse a key whose 32 bytes are no curve point, and junk of any length as a signature', () => {
    const sig = ed25519.sign(Uint8Array.of(1), ed25519.utils.randomSecretKey());
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 32, maxLength: 32 }),
        fc.uint8Array({ maxLength: 80 }),
        (pub, junk) => {
          expect(verifyEd25519(edKey(pub), Uint8Array.of(1), sig)).toBe(nobleEd(sig, Uint8Array.of(1), pub));
          expect(verifyEd25519(edKey(pub), Uint8Array.of(1), junk)).toBe(false);
          expect(nobleEd(junk, Uint8Array.of(1), pub)).toBe(false);
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('key and algorithm mismatches', () => {
  it('a P-256 key never verifies as Ed25519 and the reverse: false, no throw', () => {
    const msg = Uint8Array.of(5);
    const ecSecret = p256.utils.randomSecretKey();
    const ecKey = p256Key(p256.getPublicKey(ecSecret, false));
    const edSecretKey = ed25519.utils.randomSecretKey();
    const edPublic = edKey(ed25519.getPublicKey(edSecretKey));
    expect(verifyEd25519(ecKey, msg, p256.sign(msg, ecSecret))).toBe(false);
    expect(verifyP256(edPublic, msg, ed25519.sign(msg, edSecretKey))).toBe(false);
  });
});
