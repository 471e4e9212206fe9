import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import * as agent from '../../../src/ble/protocol/mode-p.js';
import * as page from '../../../web/phone-key/codec.js';

/**
 * The page's codec (web/phone-key/codec.ts, which cannot import Node modules) against the agent's
 * (src/ble/protocol/mode-p.ts): every message one side encodes, the other decodes to the same
 * fields, and both sign the same bytes. Random fields within the protocol's limits.
 */

const INTENTS = ['unlock', 'lock', 'toggle', 'identify'] as const;
const intentByte = (intent: (typeof INTENTS)[number]): number => agent.MODE_P_INTENT_BYTES[intent];
const printable = (min: number, max: number) =>
  fc
    .array(fc.integer({ min: 0x21, max: 0x7e }), { minLength: min, maxLength: max })
    .map((codes) => String.fromCharCode(...codes));
const bytes = (min: number, max: number) => fc.uint8Array({ minLength: min, maxLength: max });
const nonce = bytes(32, 32);

describe('the page codec and the agent codec agree', () => {
  it('challenge: the agent encodes, the page decodes; the page signs what the agent checks', () => {
    fc.assert(
      fc.property(
        printable(1, 64),
        nonce,
        fc.integer({ min: 0, max: 2 ** 52 }),
        fc.integer({ min: 1, max: 0xffff }),
        fc.constantFrom(...INTENTS),
        fc.boolean(),
        printable(1, 64),
        (vehicleId, n, issuedAtMs, windowMs, intent, explicitIntent, keyId) => {
          const message = agent.encodeChallenge({ vehicleId, nonce: n, issuedAtMs, windowMs });
          expect(page.decodeChallenge(message)).toEqual({ vehicleId, nonce: n, issuedAtMs, windowMs });
          const flags = explicitIntent ? agent.FLAG_EXPLICIT : 0;
          expect(page.answerSignedBytes(message, intentByte(intent), flags, keyId)).toEqual(
            agent.answerSignedBytes(message, { intent, explicitIntent, keyId }),
          );
          expect(page.passkeyChallengePreimage(message, intentByte(intent), flags)).toEqual(
            agent.passkeyChallengePreimage(message, { intent, explicitIntent }),
          );
        },
      ),
    );
  });

  it('answer and passkey answer: the page encodes, the agent decodes', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...INTENTS),
        fc.boolean(),
        printable(1, 64),
        nonce,
        bytes(64, 64),
        bytes(1, 64),
        bytes(37, 64),
        bytes(1, 200),
        bytes(8, 72),
        (intent, explicitIntent, keyId, n, sig, credId, authData, clientData, derSig) => {
          const flags = explicitIntent ? agent.FLAG_EXPLICIT : 0;
          const answer = page.encodeAnswer({ intent: intentByte(intent), flags, keyId, nonce: n, sig });
          expect(agent.decodeAnswer(answer)).toEqual({
            type: 'answer',
            intent,
            explicitIntent,
            keyId,
            nonce: n,
            signature: sig,
          });
          const passkey = page.encodePasskeyAnswer({
            intent: intentByte(intent),
            flags,
            credId,
            nonce: n,
            authenticatorData: authData,
            clientDataJSON: clientData,
            sig: derSig,
          });
          expect(agent.decodePasskey(passkey)).toEqual({
            type: 'passkey',
            intent,
            explicitIntent,
            credentialId: credId,
            nonce: n,
            authenticatorData: authData,
            clientDataJSON: clientData,
            signature: derSig,
          });
        },
      ),
    );
  });

  it('enroll: the page encodes and signs, the agent decodes and computes the same signed bytes', () => {
    fc.assert(
      fc.property(
        fc.boolean(),
        printable(1, 64),
        nonce,
        bytes(91, 91),
        bytes(1, 64),
        fc.constantFrom('localhost', 'example.com', 'keys.example.org'),
        bytes(64, 64),
        bytes(5, 40),
        (passkey, name, n, spki, credId, rpId, sig, challengeMsg) => {
          const fields = passkey
            ? { kind: 2, name, nonce: n, spki, credId, rpId, sig: new Uint8Array(0) }
            : { kind: 1, name, nonce: n, spki, credId: new Uint8Array(0), rpId: '', sig };
          const decoded = agent.decodeEnroll(page.encodeEnroll(fields));
          expect(decoded).toEqual({
            type: 'enroll',
            kind: passkey ? 'passkey' : 'webkey',
            name,
            nonce: n,
            spki,
            credentialId: fields.credId,
            rpId: fields.rpId,
            signature: fields.sig,
          });
          const { sig: _sig, ...body } = fields;
          expect(page.enrollSignedBytes(challengeMsg, page.encodeEnrollBody(body))).toEqual(
            agent.enrollSignedBytes(challengeMsg, decoded),
          );
        },
      ),
    );
  });

  it('result: the agent encodes (signed grant, unsigned grant, denial, pending), the page decodes and checks the same bytes', () => {
    fc.assert(
      fc.property(
        nonce,
        fc.constantFrom('granted', 'denied', 'pending') as fc.Arbitrary<agent.ResultOutcome>,
        fc.boolean(),
        fc.constantFrom('revoked', 'expired', 'enrollment_pending', 'busy'),
        printable(1, 64),
        bytes(64, 64),
        bytes(91, 91),
        (n, outcome, signed, reason, keyId, sig, spki) => {
          // A grant names no code; a denial or a pending result always does.
          const code = outcome === 'granted' ? '' : reason;
          const withSignature = outcome === 'granted' && signed;
          const fields = {
            outcome,
            code,
            signature: withSignature ? sig : new Uint8Array(0),
            vehicleSpki: withSignature ? spki : new Uint8Array(0),
          };
          expect(page.decodeResult(agent.encodeResult(fields))).toEqual({
            outcome,
            code,
            sig: fields.signature,
            vehicleSpki: fields.vehicleSpki,
          });
          const id = new TextEncoder().encode(keyId);
          expect(page.resultSignedBytes(n, outcome, code, id)).toEqual(
            agent.resultSignedBytes(n, outcome, code, keyId),
          );
        },
      ),
    );
  });
});
