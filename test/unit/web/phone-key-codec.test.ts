import { createHash, generateKeyPairSync, sign, verify } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  answerSignedBytes,
  CodecError,
  decodeAnswer,
  decodeChallenge,
  decodeEnroll,
  decodePasskeyAnswer,
  decodeResult,
  encodeAnswer,
  encodeChallenge,
  encodeEnroll,
  encodeEnrollBody,
  encodePasskeyAnswer,
  encodeResult,
  enrollSignedBytes,
  passkeyChallengePreimage,
  resultSignedBytes,
} from '../../../web/phone-key/codec.js';
import {
  ANSWER_CHAR_UUID,
  CHALLENGE_CHAR_UUID,
  PERIPHERAL_SERVICE_UUID,
  RESULT_CHAR_UUID,
} from '../../../web/phone-key/constants.js';

/**
 * The page's codec against the byte layouts of the issue 14 spec (mode P), with vectors built
 * by hand here, byte by byte, independently of the codec. When the agent's codec
 * (src/ble/protocol/mode-p.ts) is merged, the same vectors run through it too.
 */
const hex = (s: string) => new Uint8Array(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const toHex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const NONCE = new Uint8Array(32).map((_, i) => i);
const NONCE_HEX = toHex(NONCE);
const SIG64 = new Uint8Array(64).fill(0xab);

describe('phone-key codec: spec layouts, hand-built vectors', () => {
  it('uses the spec GATT UUIDs', () => {
    expect([PERIPHERAL_SERVICE_UUID, CHALLENGE_CHAR_UUID, ANSWER_CHAR_UUID, RESULT_CHAR_UUID]).toEqual([
      '16b4a5e5-1d72-4bb6-8dc9-8377e988aae2',
      'b808ae76-22bb-4b4f-945f-cae656d66142',
      '4055a9af-e75f-47a0-9537-b5af92636544',
      'f3ffc6a0-648c-4d18-9bd2-0b9e12474ef1',
    ]);
  });

  it('challenge: 02 21 | idLen | vehicleId | nonce[32] | issuedAtMs u64 | windowMs u16', () => {
    const bytes = hex(`02 21 04 56412d31 ${NONCE_HEX} 0000019ae8d0a400 0bb8`);
    const value = { vehicleId: 'VA-1', nonce: NONCE, issuedAtMs: 0x019ae8d0a400, windowMs: 3000 };
    expect(toHex(encodeChallenge(value))).toBe(toHex(bytes));
    expect(decodeChallenge(bytes)).toEqual(value);
  });

  it('answer: 02 22 | intent | flags | kidLen | keyId | nonce[32] | sig[64]', () => {
    const keyId = 'phone:AAAAAAAAAAAAAAAAAAAAAA';
    const bytes = hex(`02 22 01 01 1c ${Buffer.from(keyId).toString('hex')} ${NONCE_HEX} ${toHex(SIG64)}`);
    const value = { intent: 1, flags: 1, keyId, nonce: NONCE, sig: SIG64 };
    expect(toHex(encodeAnswer(value))).toBe(toHex(bytes));
    expect(decodeAnswer(bytes)).toEqual(value);
  });

  it('passkey: … credIdLen | credId | nonce | authDataLen u16 | authData | clientDataLen u16 | clientData | sigLen u8 | sig', () => {
    const value = {
      intent: 2,
      flags: 1,
      credId: hex('c0ffee'),
      nonce: NONCE,
      authenticatorData: hex('aa'.repeat(37)),
      clientDataJSON: new Uint8Array(Buffer.from('{"type":"webauthn.get"}')),
      sig: hex('3006020101020101'),
    };
    const bytes = hex(
      `02 23 02 01 03 c0ffee ${NONCE_HEX} 0025 ${'aa'.repeat(37)} 0017 ${Buffer.from('{"type":"webauthn.get"}').toString('hex')} 08 3006020101020101`,
    );
    expect(toHex(encodePasskeyAnswer(value))).toBe(toHex(bytes));
    expect(decodePasskeyAnswer(bytes)).toEqual(value);
  });

  it('enroll: kind | name | nonce | spkiLen u16 | spki | credId | rpId | sigLen | sig', () => {
    const webkey = {
      kind: 1,
      name: 'Ada',
      nonce: NONCE,
      spki: hex('3059'),
      credId: hex(''),
      rpId: '',
      sig: SIG64,
    };
    const body = `02 25 01 03 416461 ${NONCE_HEX} 0002 3059 00 00`;
    expect(toHex(encodeEnrollBody(webkey))).toBe(toHex(hex(body)));
    expect(toHex(encodeEnroll(webkey))).toBe(toHex(hex(`${body} 40 ${toHex(SIG64)}`)));
    expect(decodeEnroll(hex(`${body} 40 ${toHex(SIG64)}`))).toEqual(webkey);
    const passkey = { ...webkey, kind: 2, credId: hex('0102'), rpId: 'localhost', sig: hex('') };
    const passkeyBytes = hex(
      `02 25 02 03 416461 ${NONCE_HEX} 0002 3059 02 0102 09 ${Buffer.from('localhost').toString('hex')} 00`,
    );
    expect(toHex(encodeEnroll(passkey))).toBe(toHex(passkeyBytes));
    expect(decodeEnroll(passkeyBytes)).toEqual(passkey);
  });

  it('result: outcome | codeLen | code | sigLen | sig | spkiLen u16 | spki; only granted carries a signature', () => {
    const denied = hex(`02 24 01 07 ${Buffer.from('revoked').toString('hex')} 00 0000`);
    expect(decodeResult(denied)).toEqual({
      outcome: 'denied',
      code: 'revoked',
      sig: hex(''),
      vehicleSpki: hex(''),
    });
    expect(toHex(encodeResult(decodeResult(denied)))).toBe(toHex(denied));
    const pending = hex(`02 24 02 12 ${Buffer.from('enrollment_pending').toString('hex')} 00 0000`);
    expect(decodeResult(pending).outcome).toBe('pending');
    const granted = hex(
      `02 24 00 07 ${Buffer.from('granted').toString('hex')} 40 ${toHex(SIG64)} 0003 303132`,
    );
    expect(decodeResult(granted)).toEqual({
      outcome: 'granted',
      code: 'granted',
      sig: SIG64,
      vehicleSpki: hex('303132'),
    });
    // A signature on a denied result is malformed (an unauthenticated peer never gets signed data).
    expect(() =>
      decodeResult(hex(`02 24 01 07 ${Buffer.from('revoked').toString('hex')} 40 ${toHex(SIG64)} 0000`)),
    ).toThrow(CodecError);
  });

  it('signed bytes: domain label, NUL, then the fields as the spec concatenates them', () => {
    const challenge = hex('0221');
    const label = (l: string) => Buffer.from(`vehicle-agent/ble/v2/${l}\0`).toString('hex');
    expect(toHex(answerSignedBytes(challenge, 1, 1, 'phone:x'))).toBe(
      `${label('answer')}0221 01 01 ${Buffer.from('phone:x').toString('hex')}`.replace(/\s/g, ''),
    );
    expect(toHex(passkeyChallengePreimage(challenge, 3, 1))).toBe(`${label('passkey')}02210301`);
    expect(toHex(enrollSignedBytes(challenge, hex('0225')))).toBe(`${label('enroll')}02210225`);
    expect(toHex(resultSignedBytes(NONCE, 'granted', 'granted', hex('ff')))).toBe(
      `${label('result')}${NONCE_HEX}00${Buffer.from('granted').toString('hex')}ff`,
    );
  });

  it('a WebCrypto-style P1363 signature over the answer bytes verifies with node:crypto', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const challenge = encodeChallenge({ vehicleId: 'VA-1', nonce: NONCE, issuedAtMs: 1, windowMs: 3000 });
    const signed = answerSignedBytes(challenge, 1, 1, 'phone:k');
    const sig = sign('sha256', signed, { key: privateKey, dsaEncoding: 'ieee-p1363' });
    const answer = decodeAnswer(encodeAnswer({ intent: 1, flags: 1, keyId: 'phone:k', nonce: NONCE, sig }));
    expect(verify('sha256', signed, { key: publicKey, dsaEncoding: 'ieee-p1363' }, answer.sig)).toBe(true);
    expect(
      createHash('sha256')
        .update(passkeyChallengePreimage(challenge, 1, 1))
        .digest(),
    ).toHaveLength(32);
  });
});

describe('phone-key codec: bad input', () => {
  const valid = encodeChallenge({ vehicleId: 'VA-1', nonce: NONCE, issuedAtMs: 5, windowMs: 7 });

  it('refuses a wrong version, a wrong type, every truncation and trailing bytes', () => {
    expect(() => decodeChallenge(hex(`03${toHex(valid).slice(2)}`))).toThrow(/version/);
    expect(() => decodeChallenge(hex(`0222${toHex(valid).slice(4)}`))).toThrow(/not a challenge/);
    for (let n = 0; n < valid.length; n++)
      expect(() => decodeChallenge(valid.subarray(0, n))).toThrow(CodecError);
    expect(() => decodeChallenge(hex(`${toHex(valid)}00`))).toThrow(/trailing/);
  });

  it('refuses to encode what the layout cannot carry', () => {
    expect(() =>
      encodeChallenge({ vehicleId: 'VA-1', nonce: new Uint8Array(31), issuedAtMs: 0, windowMs: 0 }),
    ).toThrow(/nonce/);
    expect(() => encodeAnswer({ intent: 1, flags: 1, keyId: 'é', nonce: NONCE, sig: SIG64 })).toThrow(
      /ASCII/,
    );
    expect(() => encodeChallenge({ vehicleId: 'x', nonce: NONCE, issuedAtMs: 0, windowMs: 70_000 })).toThrow(
      /u16/,
    );
    expect(() =>
      encodePasskeyAnswer({
        intent: 1,
        flags: 1,
        credId: new Uint8Array(1),
        nonce: NONCE,
        authenticatorData: new Uint8Array(500),
        clientDataJSON: new Uint8Array(1),
        sig: new Uint8Array(1),
      }),
    ).toThrow(/512/);
  });

  it('any bytes decode or fail with a CodecError, never anything else', () => {
    const decoders = [decodeChallenge, decodeAnswer, decodePasskeyAnswer, decodeEnroll, decodeResult];
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.integer({ min: 0x21, max: 0x25 }), (tail, type) => {
        const bytes = Uint8Array.from([0x02, type, ...tail]);
        for (const decode of decoders) {
          try {
            decode(bytes);
          } catch (err) {
            expect(err).toBeInstanceOf(CodecError);
          }
        }
      }),
    );
  });

  it('round-trips any challenge the layout can carry', () => {
    fc.assert(
      fc.property(
        fc.string({ maxLength: 40 }).filter((s) => /^[\x20-\x7e]*$/.test(s)),
        fc.uint8Array({ minLength: 32, maxLength: 32 }),
        fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
        fc.integer({ min: 0, max: 0xffff }),
        (vehicleId, nonce, issuedAtMs, windowMs) => {
          const value = { vehicleId, nonce, issuedAtMs, windowMs };
          expect(decodeChallenge(encodeChallenge(value))).toEqual(value);
        },
      ),
    );
  });
});
