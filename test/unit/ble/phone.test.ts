import { p256 } from '@noble/curves/nist.js';
import { describe, expect, it } from 'vitest';
import { buildHello, decodeMessage, encodeAbort, encodeResult } from '../../../src/ble/protocol/messages.js';
import { verifyKeyAnswer } from '../../../src/ble/protocol/verify.js';
import { AgentError } from '../../../src/core/errors.js';
import { keyCredentialId, p256JwkFromRaw, parseKeyText, publicJwkOf } from '../../../src/crypto/keys.js';
import { type PHONE_FAULTS, type PhoneEvent, PhoneKey } from '../../../src/sim/ble/phone.js';
import { makeVehicle, seededRandom } from './fixtures.js';

const vehicle = makeVehicle('VIN-9');
const stranger = makeVehicle('VIN-9'); // same id, another key: an impostor vehicle
const rnd = seededRandom(5);

function hello(signer = vehicle, vehicleId = vehicle.vehicleId, challenge = rnd.bytes(32)) {
  return { challenge, bytes: buildHello({ vehicleId, challenge, answerWindowMs: 1000 }, signer.sign) };
}

function newPhone(events: PhoneEvent[] = []) {
  return new PhoneKey({
    vehicles: [{ vehicleId: vehicle.vehicleId, publicKey: vehicle.publicJwk }],
    onEvent: (e) => events.push(e),
  });
}

describe('PhoneKey', () => {
  it('has a P-256 key and the credential id the owner enrolls', () => {
    const secret = p256.utils.randomSecretKey(rnd.bytes(48));
    const phone = new PhoneKey({ secretKey: secret, vehicles: [] });
    const jwk = p256JwkFromRaw(p256.getPublicKey(secret, false));
    expect(phone.enrollment()).toEqual({
      kind: 'phone',
      credentialId: keyCredentialId('phone', jwk),
      publicKey: jwk,
    });
    expect(phone.credentialId).toMatch(/^phone:[A-Za-z0-9_-]{22}$/);
    expect(phone.exportSecretKey()).toEqual(secret);
    expect(() => new PhoneKey({ secretKey: new Uint8Array(32), vehicles: [] })).toThrow(AgentError);
  });

  it('saves and restores its key as a private JWK that node:crypto reads as the same key', () => {
    const phone = new PhoneKey({ vehicles: [] });
    const jwk = phone.privateJwk();
    const restored = new PhoneKey({
      secretKey: PhoneKey.secretFromJwk(JSON.parse(JSON.stringify(jwk))),
      vehicles: [],
    });
    expect(restored.credentialId).toBe(phone.credentialId);
    expect(publicJwkOf(parseKeyText(JSON.stringify(jwk)))).toEqual(phone.publicKey);
    for (const bad of [null, {}, { ...jwk, crv: 'P-384' }, { ...jwk, d: 'AA' }, { ...jwk, d: '!!' }]) {
      expect(() => PhoneKey.secretFromJwk(bad)).toThrow(AgentError);
    }
  });

  it('answers its own vehicle with a signature the vehicle accepts', () => {
    const events: PhoneEvent[] = [];
    const phone = newPhone(events);
    const { bytes, challenge } = hello();
    const reply = phone.receive(bytes);
    expect(reply?.kind).toBe('answer');
    const verdict = verifyKeyAnswer(reply?.message ?? new Uint8Array(), {
      challenge,
      vehicleId: vehicle.vehicleId,
      publicKey: phone.publicKey,
    });
    expect(verdict).toBe('valid');
    expect(events).toEqual([
      { type: 'answered', vehicleId: 'VIN-9', intent: 'unlock', explicitIntent: true },
    ]);
  });

  it('refuses a hello signed by another vehicle key, and a vehicle it does not know', () => {
    const events: PhoneEvent[] = [];
    const phone = newPhone(events);
    const impostor = phone.receive(hello(stranger).bytes);
    expect(impostor?.kind).toBe('abort');
    expect(decodeMessage(impostor?.message ?? new Uint8Array())).toMatchObject({
      type: 'abort',
      code: 'bad_proof',
    });
    const unknown = phone.receive(hello(stranger, 'VIN-10').bytes);
    expect(decodeMessage(unknown?.message ?? new Uint8Array())).toMatchObject({
      type: 'abort',
      code: 'wrong_vehicle',
    });
    expect(events.map((e) => e.type)).toEqual(['refused', 'refused']);
  });

  it('refuses malformed and other-version messages with an abort', () => {
    const phone = newPhone();
    expect(decodeMessage(phone.receive(Uint8Array.of(1, 9))?.message ?? new Uint8Array())).toMatchObject({
      code: 'malformed',
    });
    expect(decodeMessage(phone.receive(Uint8Array.of(2, 1))?.message ?? new Uint8Array())).toMatchObject({
      code: 'unsupported',
    });
  });

  it('records results and aborts from the vehicle', () => {
    const events: PhoneEvent[] = [];
    const phone = newPhone(events);
    expect(phone.receive(encodeResult({ granted: true }))).toBeUndefined();
    expect(phone.receive(encodeResult({ granted: false, code: 'intent_required' }))).toBeUndefined();
    expect(phone.receive(encodeAbort('timeout'))).toBeUndefined();
    expect(events).toEqual([
      { type: 'result', granted: true },
      { type: 'result', granted: false, code: 'intent_required' },
      { type: 'aborted', code: 'timeout' },
    ]);
  });

  it('answers passively when told to, flagged as passive', () => {
    const phone = newPhone();
    phone.setBehaviour({ explicitIntent: false });
    const reply = phone.receive(hello().bytes);
    expect(decodeMessage(reply?.message ?? new Uint8Array())).toMatchObject({
      type: 'answer',
      explicitIntent: false,
    });
  });

  it('makes high-S signatures on request, which the vehicle accepts', () => {
    const phone = newPhone();
    phone.setBehaviour({ highS: true });
    const { bytes, challenge } = hello();
    const answer = decodeMessage(phone.receive(bytes)?.message ?? new Uint8Array());
    if (answer.type !== 'answer') throw new Error('no answer');
    const s = BigInt(`0x${Buffer.from(answer.signature.subarray(32)).toString('hex')}`);
    expect(s > p256.Point.CURVE().n / 2n).toBe(true);
    expect(verifyKeyAnswer(answer, { challenge, vehicleId: 'VIN-9', publicKey: phone.publicKey })).toBe(
      'valid',
    );
  });

  describe('message-level faults give the verdict the vehicle must reach', () => {
    const cases: [(typeof PHONE_FAULTS)[number], string][] = [
      ['wrong_key', 'invalid'],
      ['bad_signature', 'invalid'],
      ['wrong_vehicle', 'wrong_vehicle'],
      ['wrong_intent', 'invalid'],
      ['garbage', 'malformed'],
    ];
    it.each(cases)('%s → %s', (fault, verdict) => {
      const phone = newPhone();
      phone.setBehaviour({ fault });
      const { bytes, challenge } = hello();
      const reply = phone.receive(bytes);
      expect(reply?.kind).toBe('answer');
      expect(
        verifyKeyAnswer(reply?.message ?? new Uint8Array(), {
          challenge,
          vehicleId: 'VIN-9',
          publicKey: phone.publicKey,
        }),
      ).toBe(verdict);
    });

    it('replay sends the previous answer', () => {
      const phone = newPhone();
      const first = phone.receive(hello().bytes)?.message;
      phone.setBehaviour({ fault: 'replay' });
      const { bytes, challenge } = hello();
      const again = phone.receive(bytes)?.message;
      expect(again).toEqual(first);
      expect(
        verifyKeyAnswer(again ?? new Uint8Array(), {
          challenge,
          vehicleId: 'VIN-9',
          publicKey: phone.publicKey,
        }),
      ).toBe('invalid');
    });

    it('silent sends nothing; ignore_pinning answers an impostor', () => {
      const phone = newPhone();
      phone.setBehaviour({ fault: 'silent' });
      expect(phone.receive(hello().bytes)).toBeUndefined();
      phone.setBehaviour({ fault: 'ignore_pinning' });
      expect(phone.receive(hello(stranger, 'VIN-10').bytes)?.kind).toBe('answer');
    });

    it('the slow answer is scheduled later', () => {
      const phone = newPhone();
      phone.setBehaviour({ answerDelayMs: 2500 });
      expect(phone.receive(hello().bytes)?.delayMs).toBe(2500);
    });
  });
});
