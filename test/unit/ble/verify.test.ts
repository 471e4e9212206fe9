import { generateKeyPairSync } from 'node:crypto';
import { p256 } from '@noble/curves/nist.js';
import { describe, expect, it } from 'vitest';
import {
  type AnswerFields,
  answerSignedMessage,
  buildHello,
  decodeExpecting,
  encodeAnswer,
} from '../../../src/ble/protocol/messages.js';
import { RecentChallenges } from '../../../src/ble/protocol/session.js';
import { verifyHelloSignature, verifyKeyAnswer } from '../../../src/ble/protocol/verify.js';
import { keyCredentialId, p256JwkFromRaw, publicJwkOf, publicKeyFromJwk } from '../../../src/crypto/keys.js';
import { toHighS } from '../../../src/sim/ble/phone.js';
import { makeVehicle, seededRandom } from './fixtures.js';

const rnd = seededRandom(3);
const phoneSecret = p256.utils.randomSecretKey(rnd.bytes(48));
const phoneJwk = p256JwkFromRaw(p256.getPublicKey(phoneSecret, false));
const keyId = keyCredentialId('phone', phoneJwk);
const challenge = rnd.bytes(32);
const vehicleId = 'VIN-42';
const fields: AnswerFields = { intent: 'unlock', explicitIntent: true, vehicleId, challenge, keyId };
const expected = { challenge, vehicleId, publicKey: phoneJwk };

function signed(f: AnswerFields, secret = phoneSecret): Uint8Array {
  return encodeAnswer(f, p256.sign(answerSignedMessage(f), secret));
}

describe('verifyKeyAnswer', () => {
  it('accepts the enrolled key signing this challenge, vehicle, intent and key id', () => {
    expect(verifyKeyAnswer(signed(fields), expected)).toBe('valid');
    expect(verifyKeyAnswer(decodeExpecting(signed(fields), 'answer'), expected)).toBe('valid');
    expect(verifyKeyAnswer(signed(fields), { ...expected, publicKey: publicKeyFromJwk(phoneJwk) })).toBe(
      'valid',
    );
  });

  it('accepts high-S signatures (phones do not normalise s)', () => {
    const answer = decodeExpecting(signed(fields), 'answer');
    const high = toHighS(answer.signature);
    expect(high).not.toEqual(answer.signature);
    expect(p256.verify(high, answerSignedMessage(fields), p256.getPublicKey(phoneSecret, false))).toBe(false); // noble default lowS
    expect(verifyKeyAnswer(encodeAnswer(fields, high), expected)).toBe('valid');
  });

  it('binds the challenge, vehicle id, intent, explicit flag and key id', () => {
    const sig = decodeExpecting(signed(fields), 'answer').signature;
    const otherChallenge = challenge.slice();
    otherChallenge[31] = (otherChallenge[31] ?? 0) ^ 1;
    // The same signature presented with any field changed:
    const changed: [string, AnswerFields, string][] = [
      ['intent', { ...fields, intent: 'lock' }, 'invalid'],
      ['intent toggle', { ...fields, intent: 'toggle' }, 'invalid'],
      ['explicit flag', { ...fields, explicitIntent: false }, 'invalid'],
      ['key id', { ...fields, keyId: 'phone:AAAAAAAAAAAAAAAAAAAAAA' }, 'invalid'],
    ];
    for (const [what, f, verdict] of changed)
      expect(verifyKeyAnswer(encodeAnswer(f, sig), expected), what).toBe(verdict);
    // The vehicle checks the answer against its own challenge and vehicle id:
    expect(verifyKeyAnswer(encodeAnswer(fields, sig), { ...expected, challenge: otherChallenge })).toBe(
      'invalid',
    );
    expect(verifyKeyAnswer(encodeAnswer(fields, sig), { ...expected, vehicleId: 'VIN-43' })).toBe(
      'wrong_vehicle',
    );
    // And an answer honestly signed over another challenge or vehicle does not pass either:
    expect(verifyKeyAnswer(signed({ ...fields, challenge: otherChallenge }), expected)).toBe('invalid');
    expect(verifyKeyAnswer(signed({ ...fields, vehicleId: 'VIN-43' }), expected)).toBe('wrong_vehicle');
  });

  it('rejects another key and every single-bit change of the signature', () => {
    const other = p256.utils.randomSecretKey(rnd.bytes(48));
    expect(verifyKeyAnswer(signed(fields, other), expected)).toBe('invalid');
    const bytes = signed(fields);
    for (let bit = 0; bit < 512; bit += 7) {
      const copy = bytes.slice();
      const at = bytes.length - 64 + (bit >> 3);
      copy[at] = (copy[at] ?? 0) ^ (1 << (bit & 7));
      expect(verifyKeyAnswer(copy, expected)).toBe('invalid');
    }
  });

  it('rejects r or s of zero or at least n', () => {
    const n = Buffer.from(p256.Point.CURVE().n.toString(16), 'hex');
    const good = decodeExpecting(signed(fields), 'answer').signature;
    const cases = [
      new Uint8Array(64),
      Uint8Array.of(...good.subarray(0, 32), ...n),
      Uint8Array.of(...n, ...good.subarray(32)),
    ];
    for (const sig of cases) expect(verifyKeyAnswer(encodeAnswer(fields, sig), expected)).toBe('invalid');
  });

  it('reports an answer to an earlier challenge as replayed when it knows that challenge', () => {
    const earlier = rnd.bytes(32);
    const old = signed({ ...fields, challenge: earlier });
    expect(verifyKeyAnswer(old, expected)).toBe('invalid');
    const recent = new RecentChallenges(4);
    recent.add(earlier);
    expect(verifyKeyAnswer(old, { ...expected, earlierChallenges: recent })).toBe('replayed');
  });

  it('maps bad bytes and non-P-256 keys to verdicts, never throws', () => {
    expect(verifyKeyAnswer(Uint8Array.of(1, 2, 3), expected)).toBe('malformed');
    expect(verifyKeyAnswer(Uint8Array.of(9, 2, 3), expected)).toBe('unsupported');
    expect(verifyKeyAnswer(Uint8Array.of(1, 4, 4, 0x62, 0x75, 0x73, 0x79), expected)).toBe('malformed');
    const ed = generateKeyPairSync('ed25519').publicKey;
    expect(verifyKeyAnswer(signed(fields), { ...expected, publicKey: ed })).toBe('unsupported');
    expect(verifyKeyAnswer(signed(fields), { ...expected, publicKey: publicJwkOf(ed) })).toBe('unsupported');
    expect(
      verifyKeyAnswer(signed(fields), {
        ...expected,
        publicKey: { kty: 'EC', crv: 'P-256', x: 'AAAA', y: 'AAAA' },
      }),
    ).toBe('unsupported');
  });
});

describe('verifyHelloSignature', () => {
  it('accepts the vehicle key and refuses another', () => {
    const vehicle = makeVehicle('VIN-42');
    const other = makeVehicle('VIN-42');
    const hello = decodeExpecting(
      buildHello({ vehicleId, challenge, answerWindowMs: 1000 }, vehicle.sign),
      'hello',
    );
    expect(verifyHelloSignature(hello, vehicle.publicJwk)).toBe(true);
    expect(verifyHelloSignature(hello, other.publicJwk)).toBe(false);
    expect(verifyHelloSignature({ ...hello, answerWindowMs: 1001 }, vehicle.publicJwk)).toBe(false);
  });
});
