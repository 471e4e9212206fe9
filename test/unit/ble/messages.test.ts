import { describe, expect, it } from 'vitest';
import { ANSWER_DOMAIN, HELLO_DOMAIN } from '../../../src/ble/protocol/constants.js';
import {
  type AnswerFields,
  answerSignedMessage,
  buildHello,
  decodeExpecting,
  decodeMessage,
  encodeAbort,
  encodeAnswer,
  encodeResult,
  helloSignedMessage,
} from '../../../src/ble/protocol/messages.js';
import { CODES } from '../../../src/core/codes.js';
import { AgentError } from '../../../src/core/errors.js';
import { INTENTS } from '../../../src/core/types.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    expect(err).toBeInstanceOf(AgentError);
    return (err as AgentError).code;
  }
}

const challenge = Uint8Array.from({ length: 32 }, (_, i) => 255 - i);
const signature = Uint8Array.from({ length: 64 }, (_, i) => i + 1);
const answerFields: AnswerFields = {
  intent: 'unlock',
  explicitIntent: true,
  vehicleId: 'VIN-1',
  challenge,
  keyId: 'phone:abcdefghijklmnopqrstuv',
};

describe('messages round trip', () => {
  it('hello', () => {
    const bytes = buildHello({ vehicleId: 'VIN-1', challenge, answerWindowMs: 1500 }, () => signature);
    expect(bytes.length).toBe(101 + 5);
    const m = decodeMessage(bytes);
    expect(m).toMatchObject({
      type: 'hello',
      version: 1,
      vehicleId: 'VIN-1',
      challenge,
      answerWindowMs: 1500,
      signature,
    });
    if (m.type !== 'hello') throw new Error('type');
    expect(m.signedMessage).toEqual(
      helloSignedMessage({ vehicleId: 'VIN-1', challenge, answerWindowMs: 1500 }),
    );
  });

  it('answer, for every intent with and without explicit intent', () => {
    for (const intent of INTENTS) {
      for (const explicitIntent of [true, false]) {
        const fields = { ...answerFields, intent, explicitIntent };
        const bytes = encodeAnswer(fields, signature);
        expect(bytes.length).toBe(102 + 5 + fields.keyId.length);
        const m = decodeExpecting(bytes, 'answer');
        expect(m).toMatchObject({ ...fields, type: 'answer', version: 1, signature });
        expect(m.signedMessage).toEqual(answerSignedMessage(fields));
      }
    }
  });

  it('passive answers carry flags 0, explicit ones flag bit 0', () => {
    expect(encodeAnswer({ ...answerFields, explicitIntent: false }, signature)[3]).toBe(0);
    expect(encodeAnswer(answerFields, signature)[3]).toBe(1);
  });

  it('result and abort with every code of codes.ts', () => {
    expect(decodeMessage(encodeResult({ granted: true }))).toEqual({
      type: 'result',
      version: 1,
      granted: true,
    });
    for (const code of Object.keys(CODES)) {
      expect(decodeMessage(encodeResult({ granted: false, code }))).toEqual({
        type: 'result',
        version: 1,
        granted: false,
        code,
      });
      expect(decodeMessage(encodeAbort(code))).toEqual({ type: 'abort', version: 1, code });
    }
  });

  it('the signed messages start with their domain and a zero byte', () => {
    const hello = helloSignedMessage({ vehicleId: 'VIN-1', challenge, answerWindowMs: 1 });
    expect(Buffer.from(hello.subarray(0, HELLO_DOMAIN.length)).toString('ascii')).toBe(HELLO_DOMAIN);
    expect(hello[HELLO_DOMAIN.length]).toBe(0);
    const answer = answerSignedMessage(answerFields);
    expect(Buffer.from(answer.subarray(0, ANSWER_DOMAIN.length)).toString('ascii')).toBe(ANSWER_DOMAIN);
    expect(answer.subarray(ANSWER_DOMAIN.length, ANSWER_DOMAIN.length + 3)).toEqual(Uint8Array.of(0, 1, 2));
  });
});

describe('encoding refuses what it cannot represent', () => {
  it.each([
    ['empty vehicle id', () => encodeAnswer({ ...answerFields, vehicleId: '' }, signature)],
    ['65-byte vehicle id', () => encodeAnswer({ ...answerFields, vehicleId: 'v'.repeat(65) }, signature)],
    ['space in key id', () => encodeAnswer({ ...answerFields, keyId: 'phone: x' }, signature)],
    ['non-ASCII key id', () => encodeAnswer({ ...answerFields, keyId: 'phöne' }, signature)],
    ['short challenge', () => encodeAnswer({ ...answerFields, challenge: new Uint8Array(31) }, signature)],
    ['short signature', () => encodeAnswer(answerFields, new Uint8Array(63))],
    ['answer window 0', () => helloSignedMessage({ vehicleId: 'v', challenge, answerWindowMs: 0 })],
    ['answer window 65536', () => helloSignedMessage({ vehicleId: 'v', challenge, answerWindowMs: 65536 })],
    ['unknown result code', () => encodeResult({ granted: false, code: 'nope' })],
    ['unknown abort code', () => encodeAbort('Bad Code')],
  ])('%s', (_what, fn) => {
    expect(codeOf(fn)).toBe('malformed');
  });

  it('a vehicle signer that returns DER instead of r‖s is an internal error', () => {
    expect(
      codeOf(() => buildHello({ vehicleId: 'v', challenge, answerWindowMs: 1 }, () => new Uint8Array(71))),
    ).toBe('internal');
  });
});

describe('decoding is strict', () => {
  const answer = encodeAnswer(answerFields, signature);
  const hello = buildHello({ vehicleId: 'VIN-1', challenge, answerWindowMs: 1500 }, () => signature);

  it('rejects every truncation and any trailing byte', () => {
    for (const bytes of [
      answer,
      hello,
      encodeResult({ granted: false, code: 'revoked' }),
      encodeAbort('busy'),
    ]) {
      for (let n = 0; n < bytes.length; n++)
        expect(codeOf(() => decodeMessage(bytes.subarray(0, n)))).toBe('malformed');
      expect(codeOf(() => decodeMessage(Uint8Array.of(...bytes, 0)))).toBe('malformed');
    }
  });

  it('rejects another protocol version as unsupported', () => {
    for (const version of [0, 2, 255]) {
      expect(codeOf(() => decodeMessage(Uint8Array.of(version, ...answer.subarray(1))))).toBe('unsupported');
    }
  });

  it('rejects unknown types, intents, flags and outcomes', () => {
    const patch = (bytes: Uint8Array, at: number, value: number): Uint8Array => {
      const copy = bytes.slice();
      copy[at] = value;
      return copy;
    };
    expect(codeOf(() => decodeMessage(patch(answer, 1, 0x05)))).toBe('malformed');
    expect(codeOf(() => decodeMessage(patch(answer, 1, 0x00)))).toBe('malformed');
    expect(codeOf(() => decodeMessage(patch(answer, 2, 0x00)))).toBe('malformed');
    expect(codeOf(() => decodeMessage(patch(answer, 2, 0x04)))).toBe('malformed');
    expect(codeOf(() => decodeMessage(patch(answer, 3, 0x02)))).toBe('malformed');
    expect(codeOf(() => decodeMessage(patch(answer, 3, 0x81)))).toBe('malformed');
    expect(codeOf(() => decodeMessage(Uint8Array.of(1, 3, 2, 0)))).toBe('malformed');
    expect(codeOf(() => decodeMessage(Uint8Array.of(1, 3, 0, 1, 0x61)))).toBe('malformed');
    expect(codeOf(() => decodeMessage(Uint8Array.of(1, 3, 1, 0)))).toBe('malformed');
  });

  it('rejects ids and codes with bad lengths or characters', () => {
    const withId = (id: number[]): Uint8Array =>
      Uint8Array.of(1, 2, 1, 1, id.length, ...id, ...challenge, 1, 0x6b, ...signature);
    expect(decodeMessage(withId([0x21, 0x7e])).type).toBe('answer');
    expect(codeOf(() => decodeMessage(withId([])))).toBe('malformed');
    expect(codeOf(() => decodeMessage(withId([0x20])))).toBe('malformed');
    expect(codeOf(() => decodeMessage(withId([0x7f])))).toBe('malformed');
    expect(codeOf(() => decodeMessage(withId([0xc3, 0xa9])))).toBe('malformed');
    expect(codeOf(() => decodeMessage(withId(new Array(65).fill(0x41))))).toBe('malformed');
    expect(codeOf(() => decodeMessage(Uint8Array.of(1, 4, 3, 0x41, 0x42, 0x43)))).toBe('malformed');
    expect(codeOf(() => decodeMessage(Uint8Array.of(1, 4, 0)))).toBe('malformed');
    expect(codeOf(() => decodeMessage(Uint8Array.of(1, 4, 33, ...new Array(33).fill(0x61))))).toBe(
      'malformed',
    );
  });

  it('decodes unknown but well-formed reason codes (newer vehicles may add codes)', () => {
    expect(decodeMessage(Uint8Array.of(1, 4, 3, 0x61, 0x5f, 0x31))).toEqual({
      type: 'abort',
      version: 1,
      code: 'a_1',
    });
  });

  it('decodeExpecting refuses a valid message of another type', () => {
    expect(codeOf(() => decodeExpecting(hello, 'answer', 'abort'))).toBe('malformed');
    expect(decodeExpecting(encodeAbort('busy'), 'answer', 'abort').type).toBe('abort');
  });

  it('a zero answer window in a hello is malformed', () => {
    const copy = hello.slice();
    copy[3 + 5 + 32] = 0;
    copy[3 + 5 + 33] = 0;
    expect(codeOf(() => decodeMessage(copy))).toBe('malformed');
  });
});
