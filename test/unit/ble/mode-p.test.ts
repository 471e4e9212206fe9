import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  decodeAnswer,
  decodeChallenge,
  decodeEnroll,
  decodeModeP,
  decodePasskey,
  decodeResult,
  type EnrollFields,
  encodeAnswer,
  encodeChallenge,
  encodeEnroll,
  encodePasskey,
  encodeResult,
  modePType,
  type PasskeyFields,
  resultSignedBytes,
} from '../../../src/ble/protocol/mode-p.js';
import { isCode } from '../../../src/core/codes.js';
import { AgentError } from '../../../src/core/errors.js';
import { fromHex, toHex } from '../../../src/crypto/encoding.js';

/** The mode P codecs: exact byte layouts, round trips, and every rejection coded. */

const NONCE = Uint8Array.from({ length: 32 }, (_, i) => i);
const SIG = Uint8Array.from({ length: 64 }, (_, i) => 0xa0 ^ i);
const SEED = Number(process.env.TEST_SEED ?? 0x5eed);
const RUNS = { seed: SEED, numRuns: 500 };

function codeOf(fn: () => unknown): string {
  try {
    fn();
    return 'value';
  } catch (err) {
    if (!(err instanceof AgentError)) throw new Error(`not an AgentError: ${String(err)}`);
    return err.code;
  }
}

const challenge = { vehicleId: 'VIN-1', nonce: NONCE, issuedAtMs: 1_800_000_000_123, windowMs: 1500 };

describe('challenge', () => {
  it('has the documented layout', () => {
    const bytes = encodeChallenge(challenge);
    expect(toHex(bytes)).toBe(`0221 05 56494e2d31 ${toHex(NONCE)} 000001a3185c507b 05dc`.replace(/ /g, ''));
    expect(decodeChallenge(bytes)).toEqual({ type: 'challenge', ...challenge });
    expect(modePType(bytes)).toBe('challenge');
  });

  it.each([
    ['trailing byte', (b: Uint8Array) => Uint8Array.from([...b, 0]), 'malformed'],
    ['cut short', (b: Uint8Array) => b.subarray(0, b.length - 1), 'malformed'],
    ['version 1', (b: Uint8Array) => Uint8Array.from([1, ...b.subarray(1)]), 'unsupported'],
    ['window 0', (b: Uint8Array) => Uint8Array.from([...b.subarray(0, b.length - 2), 0, 0]), 'malformed'],
    ['empty id', () => fromHex(`022100${toHex(NONCE)}00000000000000000001`), 'malformed'],
    ['answer type', (b: Uint8Array) => Uint8Array.from([2, 0x22, ...b.subarray(2)]), 'malformed'],
    [
      'time beyond 2^53',
      (b: Uint8Array) => {
        const c = Uint8Array.from(b);
        c[2 + 1 + 5 + 32] = 0xff;
        return c;
      },
      'malformed',
    ],
  ])('refuses %s', (_, mutate, code) => {
    expect(codeOf(() => decodeChallenge(mutate(encodeChallenge(challenge))))).toBe(code);
  });

  it('refuses to encode what it could not decode', () => {
    expect(codeOf(() => encodeChallenge({ ...challenge, windowMs: 0 }))).toBe('malformed');
    expect(codeOf(() => encodeChallenge({ ...challenge, nonce: NONCE.subarray(1) }))).toBe('malformed');
    expect(codeOf(() => encodeChallenge({ ...challenge, vehicleId: 'a b' }))).toBe('malformed');
    expect(codeOf(() => encodeChallenge({ ...challenge, issuedAtMs: -1 }))).toBe('malformed');
  });
});

describe('answer', () => {
  const answer = {
    intent: 'identify' as const,
    explicitIntent: true,
    keyId: 'phone:abc',
    nonce: NONCE,
    signature: SIG,
  };

  it('has the documented layout and round-trips', () => {
    const bytes = encodeAnswer(answer);
    expect(toHex(bytes)).toBe(
      `02220401 09 70686f6e653a616263 ${toHex(NONCE)} ${toHex(SIG)}`.replace(/ /g, ''),
    );
    expect(decodeAnswer(bytes)).toEqual({ type: 'answer', ...answer });
  });

  it.each([
    ['intent 0', 2, 0, 'malformed'],
    ['intent 5', 2, 5, 'malformed'],
    ['reserved flag', 3, 0x81, 'malformed'],
    ['key id length past the end', 4, 200, 'malformed'],
    ['empty key id', 4, 0, 'malformed'],
  ])('refuses %s', (_, index, value, code) => {
    const bytes = encodeAnswer(answer);
    bytes[index] = value;
    expect(codeOf(() => decodeAnswer(bytes))).toBe(code);
  });

  it('refuses a short signature and trailing bytes', () => {
    const bytes = encodeAnswer(answer);
    expect(codeOf(() => decodeAnswer(bytes.subarray(0, bytes.length - 1)))).toBe('malformed');
    expect(codeOf(() => decodeAnswer(Uint8Array.from([...bytes, 1])))).toBe('malformed');
    expect(codeOf(() => encodeAnswer({ ...answer, signature: SIG.subarray(1) }))).toBe('malformed');
  });
});

describe('passkey', () => {
  const passkey: PasskeyFields = {
    intent: 'unlock',
    explicitIntent: true,
    credentialId: Uint8Array.of(1, 2, 3, 4),
    nonce: NONCE,
    authenticatorData: new Uint8Array(37).fill(7),
    clientDataJSON: new TextEncoder().encode('{"type":"webauthn.get"}'),
    signature: new Uint8Array(70).fill(0x30),
  };

  it('has the documented layout and round-trips', () => {
    const bytes = encodePasskey(passkey);
    const cdj = toHex(passkey.clientDataJSON);
    expect(toHex(bytes)).toBe(
      `02230101 04 01020304 ${toHex(NONCE)} 0025 ${'07'.repeat(37)} 0017 ${cdj} 46 ${'30'.repeat(70)}`.replace(
        / /g,
        '',
      ),
    );
    expect(decodePasskey(bytes)).toEqual({ type: 'passkey', ...passkey });
  });

  it('refuses an empty credential id, a signature too long, and more than 512 bytes', () => {
    expect(codeOf(() => encodePasskey({ ...passkey, credentialId: new Uint8Array(0) }))).toBe('malformed');
    expect(codeOf(() => encodePasskey({ ...passkey, signature: new Uint8Array(73) }))).toBe('malformed');
    expect(codeOf(() => encodePasskey({ ...passkey, clientDataJSON: new Uint8Array(500) }))).toBe(
      'frame_too_large',
    );
    const bytes = encodePasskey(passkey);
    expect(codeOf(() => decodePasskey(Uint8Array.from([...bytes, ...new Uint8Array(600)])))).toBe(
      'frame_too_large',
    );
  });
});

describe('enroll', () => {
  const webkey: EnrollFields = {
    kind: 'webkey',
    name: 'Ann phone',
    nonce: NONCE,
    spki: Uint8Array.of(0x30, 1, 2),
    credentialId: new Uint8Array(0),
    rpId: '',
    signature: SIG,
  };
  const passkey: EnrollFields = {
    ...webkey,
    kind: 'passkey',
    credentialId: Uint8Array.of(9, 9),
    rpId: 'keys.example.org',
    signature: new Uint8Array(0),
  };

  it('has the documented layout and round-trips both kinds', () => {
    expect(toHex(encodeEnroll(webkey))).toBe(
      `022501 09 416e6e2070686f6e65 ${toHex(NONCE)} 0003 300102 00 00 40 ${toHex(SIG)}`.replace(/ /g, ''),
    );
    expect(decodeEnroll(encodeEnroll(webkey))).toEqual({ type: 'enroll', ...webkey });
    expect(decodeEnroll(encodeEnroll(passkey))).toEqual({ type: 'enroll', ...passkey });
  });

  it.each([
    ['a web key with a credential id', { ...webkey, credentialId: Uint8Array.of(1) }],
    ['a web key without its proof', { ...webkey, signature: new Uint8Array(0) }],
    ['a passkey with a signature', { ...passkey, signature: SIG }],
    ['a passkey without rpId', { ...passkey, rpId: '' }],
    ['a passkey without credential id', { ...passkey, credentialId: new Uint8Array(0) }],
    ['a control character in the name', { ...webkey, name: 'a\nb' }],
    ['an empty name', { ...webkey, name: '' }],
    ['an empty public key', { ...webkey, spki: new Uint8Array(0) }],
  ])('refuses %s', (_, fields) => {
    expect(codeOf(() => encodeEnroll(fields as EnrollFields))).toBe('malformed');
  });

  it('refuses an unknown kind on the wire', () => {
    const bytes = encodeEnroll(webkey);
    bytes[2] = 3;
    expect(codeOf(() => decodeEnroll(bytes))).toBe('malformed');
  });
});

describe('result', () => {
  it('has the documented layouts', () => {
    expect(
      toHex(
        encodeResult({
          outcome: 'denied',
          code: 'revoked',
          signature: new Uint8Array(0),
          vehicleSpki: new Uint8Array(0),
        }),
      ),
    ).toBe(`02240107${toHex(new TextEncoder().encode('revoked'))}000000`);
    const granted = encodeResult({
      outcome: 'granted',
      code: '',
      signature: SIG,
      vehicleSpki: Uint8Array.of(0x30, 0),
    });
    expect(toHex(granted)).toBe(`0224 00 00 40 ${toHex(SIG)} 0002 3000`.replace(/ /g, ''));
    expect(decodeResult(granted)).toMatchObject({ outcome: 'granted', code: '' });
  });

  it.each([
    [
      'a signed denial',
      { outcome: 'denied', code: 'revoked', signature: SIG, vehicleSpki: Uint8Array.of(1) },
    ],
    [
      'a signed pending',
      { outcome: 'pending', code: 'enrollment_pending', signature: SIG, vehicleSpki: Uint8Array.of(1) },
    ],
    [
      'a denial without code',
      { outcome: 'denied', code: '', signature: new Uint8Array(0), vehicleSpki: new Uint8Array(0) },
    ],
    [
      'a code not in codes.ts',
      { outcome: 'denied', code: 'nope', signature: new Uint8Array(0), vehicleSpki: new Uint8Array(0) },
    ],
    [
      'a vehicle key without signature',
      { outcome: 'granted', code: '', signature: new Uint8Array(0), vehicleSpki: Uint8Array.of(1) },
    ],
    [
      'a short signature',
      { outcome: 'granted', code: '', signature: SIG.subarray(1), vehicleSpki: Uint8Array.of(1) },
    ],
  ] as const)('refuses %s', (_, fields) => {
    expect(codeOf(() => encodeResult(fields))).toBe('malformed');
  });

  it('signs over the nonce, outcome, code and the key id or raw credential id', () => {
    expect(toHex(resultSignedBytes(NONCE, 'granted', '', 'k1'))).toBe(
      `${toHex(new TextEncoder().encode('vehicle-agent/ble/v2/result'))}00${toHex(NONCE)}006b31`,
    );
    expect(toHex(resultSignedBytes(NONCE, 'granted', '', Uint8Array.of(0xfe)))).toMatch(/00fe$/);
  });
});

describe('every decoder, fed anything', () => {
  const decoders = [decodeChallenge, decodeAnswer, decodePasskey, decodeEnroll, decodeResult, decodeModeP];

  it('returns a message or throws an AgentError with a known code, and nothing else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.boolean(), (bytes, asModeP) => {
        // Half the inputs start like a mode P message so the decoders get past the header.
        const input =
          asModeP && bytes.length >= 2
            ? Uint8Array.from([2, 0x21 + ((bytes[1] ?? 0) % 5), ...bytes.subarray(2)])
            : bytes;
        for (const decode of decoders) {
          try {
            decode(input);
          } catch (err) {
            expect(err).toBeInstanceOf(AgentError);
            expect(isCode((err as AgentError).code)).toBe(true);
          }
        }
      }),
      RUNS,
    );
  });

  it('a valid message with one byte flipped decodes to something that encodes back to itself, or is refused', () => {
    const samples = [
      encodeChallenge(challenge),
      encodeAnswer({
        intent: 'unlock',
        explicitIntent: false,
        keyId: 'phone:x',
        nonce: NONCE,
        signature: SIG,
      }),
      encodeResult({
        outcome: 'pending',
        code: 'enrollment_pending',
        signature: new Uint8Array(0),
        vehicleSpki: new Uint8Array(0),
      }),
    ];
    fc.assert(
      fc.property(fc.nat(), fc.nat({ max: 7 }), fc.nat({ max: samples.length - 1 }), (at, bit, which) => {
        const sample = samples[which] as Uint8Array;
        const bytes = Uint8Array.from(sample);
        const index = at % bytes.length;
        bytes[index] = (bytes[index] ?? 0) ^ (1 << bit);
        let message: ReturnType<typeof decodeModeP>;
        try {
          message = decodeModeP(bytes);
        } catch (err) {
          expect(err).toBeInstanceOf(AgentError);
          return;
        }
        const again =
          message.type === 'challenge'
            ? encodeChallenge(message)
            : message.type === 'answer'
              ? encodeAnswer(message)
              : message.type === 'result'
                ? encodeResult(message)
                : message.type === 'passkey'
                  ? encodePasskey(message)
                  : encodeEnroll(message);
        expect(toHex(again)).toBe(toHex(bytes));
      }),
      RUNS,
    );
  });
});
