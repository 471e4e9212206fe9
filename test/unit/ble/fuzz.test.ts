import { describe, expect, it } from 'vitest';
import { chunkFrame, FrameReassembler } from '../../../src/ble/protocol/framing.js';
import { decodeMessage, encodeAbort, encodeResult } from '../../../src/ble/protocol/messages.js';
import { AgentSession } from '../../../src/ble/protocol/session.js';
import { verifyKeyAnswer } from '../../../src/ble/protocol/verify.js';
import { AgentError } from '../../../src/core/errors.js';
import { bytesEqual } from '../../../src/crypto/encoding.js';
import { PhoneKey } from '../../../src/sim/ble/phone.js';
import { makeVehicle, seededRandom } from './fixtures.js';

/**
 * Random and mutated input must only ever give an AgentError or a denial: nothing else thrown,
 * nothing altered accepted. Seeded, so a failure names a reproducible case.
 */

const vehicle = makeVehicle('VIN-FUZZ');
const phone = new PhoneKey({ vehicles: [{ vehicleId: vehicle.vehicleId, publicKey: vehicle.publicJwk }] });
const fixedChallenge = Uint8Array.from({ length: 32 }, (_, i) => (i * 37 + 11) & 0xff);

function newSession(): AgentSession {
  return AgentSession.open({
    vehicleId: vehicle.vehicleId,
    answerWindowMs: 1500,
    now: 0,
    randomBytes: () => fixedChallenge.slice(),
    signAsVehicle: vehicle.sign,
  });
}

const hello = newSession().hello;
const reply = phone.receive(hello);
if (reply?.kind !== 'answer') throw new Error('fixture: the phone did not answer');
const answer = reply.message;
const seeds = [
  hello,
  answer,
  encodeResult({ granted: true }),
  encodeResult({ granted: false, code: 'revoked' }),
  encodeAbort('wrong_vehicle'),
];

type Rng = ReturnType<typeof seededRandom>;

function mutate(rng: Rng, input: Uint8Array): Uint8Array {
  let bytes = input.slice();
  const rounds = 1 + rng.int(3);
  for (let i = 0; i < rounds; i++) {
    const at = rng.int(Math.max(1, bytes.length));
    switch (rng.int(8)) {
      case 0: // bit flip
        bytes[at] = (bytes[at] ?? 0) ^ (1 << rng.int(8));
        break;
      case 1: // byte replaced
        bytes[at] = rng.int(256);
        break;
      case 2: // boundary values in a length/type position
        bytes[at] = [0, 1, 0x7f, 0x80, 0xff, bytes.length & 0xff][rng.int(6)] ?? 0;
        break;
      case 3: // byte inserted
        bytes = Uint8Array.of(...bytes.subarray(0, at), rng.int(256), ...bytes.subarray(at));
        break;
      case 4: // byte deleted
        bytes = Uint8Array.of(...bytes.subarray(0, at), ...bytes.subarray(at + 1));
        break;
      case 5: // truncated
        bytes = bytes.slice(0, at);
        break;
      case 6: // extended
        bytes = Uint8Array.of(...bytes, ...rng.bytes(1 + rng.int(8)));
        break;
      default: {
        // spliced with another message
        const other = seeds[rng.int(seeds.length)] ?? hello;
        bytes = Uint8Array.of(...bytes.subarray(0, at), ...other.subarray(rng.int(other.length)));
      }
    }
  }
  return bytes;
}

function expectAgentError(fn: () => unknown): void {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof AgentError)) throw err;
  }
}

describe('fuzz', () => {
  it('random bytes never decode into anything but an AgentError or a well-formed message', () => {
    const rng = seededRandom(1);
    let decoded = 0;
    for (let i = 0; i < 20_000; i++) {
      const bytes =
        i % 2 === 0 ? rng.bytes(rng.int(300)) : Uint8Array.of(1, 1 + rng.int(4), ...rng.bytes(rng.int(250)));
      try {
        decodeMessage(bytes);
        decoded++;
      } catch (err) {
        expect(err).toBeInstanceOf(AgentError);
      }
    }
    // Random bytes are almost never exact messages (a 4-byte abort or result can be).
    expect(decoded).toBeLessThan(50);
  });

  it('no mutated answer verifies, and none makes the session throw anything but AgentError', () => {
    const rng = seededRandom(2);
    const verdicts = new Map<string, number>();
    let mutants = 0;
    for (let i = 0; i < 6000; i++) {
      const bytes = mutate(rng, answer);
      if (bytesEqual(bytes, answer)) continue;
      mutants++;
      const verdict = verifyKeyAnswer(bytes, {
        challenge: fixedChallenge,
        vehicleId: vehicle.vehicleId,
        publicKey: phone.publicKey,
      });
      expect(verdict, Buffer.from(bytes).toString('hex')).not.toBe('valid');
      verdicts.set(verdict, (verdicts.get(verdict) ?? 0) + 1);
      const session = newSession();
      try {
        const receipt = session.receive(bytes, 10);
        if (receipt.kind === 'answer') expect(session.verify(phone.publicKey).proof).not.toBe('valid');
      } catch (err) {
        expect(err).toBeInstanceOf(AgentError);
      }
    }
    expect(mutants).toBeGreaterThan(5000);
    // The mutations reach past the decoder into the signature check.
    expect(verdicts.get('invalid') ?? 0).toBeGreaterThan(100);
    expect(verdicts.get('malformed') ?? 0).toBeGreaterThan(100);
    // The unmutated answer still verifies (the check above is not vacuous).
    expect(
      verifyKeyAnswer(answer, {
        challenge: fixedChallenge,
        vehicleId: vehicle.vehicleId,
        publicKey: phone.publicKey,
      }),
    ).toBe('valid');
  });

  it('the phone answers no mutated hello', () => {
    const rng = seededRandom(3);
    for (let i = 0; i < 1500; i++) {
      const bytes = mutate(rng, hello);
      if (bytesEqual(bytes, hello)) continue;
      // An abort, or nothing when the mutant happens to be a result or abort itself.
      expect(phone.receive(bytes)?.kind, Buffer.from(bytes).toString('hex')).not.toBe('answer');
    }
    expect(phone.receive(hello)?.kind).toBe('answer');
  });

  it('mutated chunk streams give frames or coded errors, never a changed frame accepted as the answer', () => {
    const rng = seededRandom(4);
    for (let i = 0; i < 5000; i++) {
      const size = [4, 20, 23, 64][rng.int(4)] ?? 20;
      const chunks = chunkFrame(seeds[rng.int(seeds.length)] ?? answer, size).map((c) =>
        rng.int(4) === 0 ? mutate(rng, c) : c,
      );
      if (rng.int(5) === 0) chunks.splice(rng.int(chunks.length), 1);
      if (rng.int(5) === 0) chunks.reverse();
      const reassembler = new FrameReassembler();
      for (const chunk of chunks) {
        expectAgentError(() => {
          const frame = reassembler.push(chunk, i);
          if (frame === undefined) return;
          const verdict = verifyKeyAnswer(frame, {
            challenge: fixedChallenge,
            vehicleId: vehicle.vehicleId,
            publicKey: phone.publicKey,
          });
          if (verdict === 'valid') expect(bytesEqual(frame, answer)).toBe(true);
          decodeMessage(frame);
        });
      }
    }
  });
});
