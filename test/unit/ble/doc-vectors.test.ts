import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { p256 } from '@noble/curves/nist.js';
import { describe, expect, it } from 'vitest';
import {
  ANSWER_DOMAIN,
  HELLO_DOMAIN,
  KEY_TO_VEHICLE_UUID,
  MAX_FRAME_BYTES,
  REASSEMBLY_TIMEOUT_MS,
  SERVICE_UUID,
  VEHICLE_TO_KEY_UUID,
} from '../../../src/ble/protocol/constants.js';
import { chunkFrame, FrameReassembler } from '../../../src/ble/protocol/framing.js';
import {
  type AnswerFields,
  answerSignedMessage,
  decodeMessage,
  encodeAbort,
  encodeAnswer,
  encodeHello,
  encodeResult,
  helloSignedMessage,
} from '../../../src/ble/protocol/messages.js';
import { verifyHelloSignature, verifyKeyAnswer } from '../../../src/ble/protocol/verify.js';
import { fromHex, toHex } from '../../../src/crypto/encoding.js';
import { keyCredentialId, p256JwkFromRaw } from '../../../src/crypto/keys.js';
import { PhoneKey, toHighS } from '../../../src/sim/ble/phone.js';

/**
 * The test vectors of docs/ble-protocol.md §9, computed from the fixed inputs with the code, and
 * each required to appear in the document. If the code or the document changes, this fails.
 */

const doc = readFileSync(new URL('../../../docs/ble-protocol.md', import.meta.url), 'utf8');
const docCompact = doc.replace(/\s+/g, '');

function inDoc(text: string): void {
  expect(docCompact, `docs/ble-protocol.md should contain ${text}`).toContain(text.replace(/\s+/g, ''));
}

// Fixed inputs.
const VEHICLE_SECRET = 'c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721';
const PHONE_SECRET = '519b423d715f8b581f4fa8ee59f4771a5b44c8130b4e3eacca54a56dda72b464';
const VEHICLE_ID = 'VIN-TEST-0001';
const CHALLENGE = Uint8Array.from({ length: 32 }, (_, i) => i);
const WINDOW = 1500;

// Expected outputs, as printed in the document.
const V = {
  vehiclePublic:
    '0460fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb67903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299',
  vehicleJwk:
    '{"kty":"EC","crv":"P-256","x":"YP7UuiVanTHJYet0xjVtaMBJuJI7Yfps5mliLmDyn7Y","y":"eQP-EAi4vJmkGunpVii8ZPLxsgwtfp9Rd6PClNRGIpk"}',
  phonePublic:
    '041ccbe91c075fc7f4f033bfa248db8fccd3565de94bbfb12f3c59ff46c271bf83ce4014c68811f9a21a1fdb2c0e6113e06db7ca93b7404e78dc7ccd5ca89a4ca9',
  phoneJwk:
    '{"kty":"EC","crv":"P-256","x":"HMvpHAdfx_TwM7-iSNuPzNNWXelLv7EvPFn_RsJxv4M","y":"zkAUxogR-aIaH9ssDmET4G23ypO3QE543HzNXKiaTKk"}',
  keyId: 'phone:f4jP36MhBQ_DgzJ10hoDUg',
  helloSigned:
    '76656869636c652d6167656e742f626c652f76312f68656c6c6f0001010d56494e2d544553542d30303031000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f05dc',
  helloSignedSha: '9391836fb733089b5041a8591f3e400965366e865284e1bc87a89eb9759103c8',
  helloSignature:
    'cd5a6497ad05a8d6849fa4d84fb44eab27ef3ea66a2a6cc10ab28abd7064a2197e40bbb09ce95b1a86955e9265d7b669f6833ebc478d692d613c49ff1bb3e17e',
  answerSigned:
    '76656869636c652d6167656e742f626c652f76312f616e7377657200010201010d56494e2d544553542d30303031000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f1c70686f6e653a66346a5033364d6842515f44677a4a3130686f445567',
  answerSignedSha: 'e319b4b913c660e16a81d68119092ca24f63136a0e700bee886e36f6eccf217e',
  answerSignature:
    '0f62a2a5c8ca18fc48035b57c9098b44a2bfb579be6634aa3cb659fa9a8009b16f0ca661ce327576afecfa659db46ea81ffa71b9d112ff54c8266b0dc40e9aba',
  answerSignatureHighS:
    '0f62a2a5c8ca18fc48035b57c9098b44a2bfb579be6634aa3cb659fa9a8009b190f3599d31cd8a8a5013059a624b91579cec88f3d6049f302b935fb538548a97',
  passiveLockSignature:
    '8b87501b20b2d4217ef477484951f08ed147e8d6cbc560ce01607ca756673e12052d97443a7357afe3ccecafa5d246e5dfd158cc2b692658b0b84cb88ad2f28d',
  resultGranted: '01030000',
  resultDenied: '010301096261645f70726f6f66',
  abortWrongVehicle: '01040d77726f6e675f76656869636c65',
  advertisedUuid: '0683eb89a9c918b76f492b6a90545fca',
};

const vehicleSecret = fromHex(VEHICLE_SECRET);
const phoneSecret = fromHex(PHONE_SECRET);
const vehicleJwk = p256JwkFromRaw(p256.getPublicKey(vehicleSecret, false));
const phoneJwk = p256JwkFromRaw(p256.getPublicKey(phoneSecret, false));
const helloFields = { vehicleId: VEHICLE_ID, challenge: CHALLENGE, answerWindowMs: WINDOW };
const answerFields: AnswerFields = {
  intent: 'unlock',
  explicitIntent: true,
  vehicleId: VEHICLE_ID,
  challenge: CHALLENGE,
  keyId: V.keyId,
};
const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

describe('docs/ble-protocol.md test vectors', () => {
  it('UUIDs, limits and domains are those of the document', () => {
    for (const uuid of [SERVICE_UUID, VEHICLE_TO_KEY_UUID, KEY_TO_VEHICLE_UUID]) inDoc(uuid);
    inDoc(`"${HELLO_DOMAIN}"`);
    inDoc(`"${ANSWER_DOMAIN}"`);
    expect(doc).toContain(`**${MAX_FRAME_BYTES} bytes**`);
    expect(doc).toContain(`**${REASSEMBLY_TIMEOUT_MS} ms**`);
    // The advertised UUID, least significant byte first.
    const le = toHex(fromHex(SERVICE_UUID.replace(/-/g, '')).reverse());
    expect(le).toBe(V.advertisedUuid);
    inDoc(`11 07 ${le.replace(/(..)/g, '$1 ')}`);
  });

  it('keys and the credential id', () => {
    expect(toHex(p256.getPublicKey(vehicleSecret, false))).toBe(V.vehiclePublic);
    expect(JSON.stringify(vehicleJwk)).toBe(V.vehicleJwk);
    expect(toHex(p256.getPublicKey(phoneSecret, false))).toBe(V.phonePublic);
    expect(JSON.stringify(phoneJwk)).toBe(V.phoneJwk);
    expect(keyCredentialId('phone', phoneJwk)).toBe(V.keyId);
    expect(new PhoneKey({ secretKey: phoneSecret, vehicles: [] }).credentialId).toBe(V.keyId);
    for (const value of [
      VEHICLE_SECRET,
      V.vehiclePublic,
      V.vehicleJwk,
      PHONE_SECRET,
      V.phonePublic,
      V.phoneJwk,
      V.keyId,
    ])
      inDoc(value);
  });

  it('hello: signed message, deterministic signature, bytes and chunks', () => {
    const signed = helloSignedMessage(helloFields);
    expect(toHex(signed)).toBe(V.helloSigned);
    expect(sha256(signed)).toBe(V.helloSignedSha);
    const signature = p256.sign(signed, vehicleSecret);
    expect(toHex(signature)).toBe(V.helloSignature);
    const hello = encodeHello(helloFields, signature);
    expect(hello.length).toBe(114);
    const decoded = decodeMessage(hello);
    if (decoded.type !== 'hello') throw new Error('not a hello');
    expect(verifyHelloSignature(decoded, vehicleJwk)).toBe(true);
    const chunks = chunkFrame(hello, 20).map(toHex);
    for (const value of [V.helloSigned, V.helloSignedSha, toHex(hello), ...chunks]) inDoc(value);
    expect(reassemble(chunks)).toEqual(hello);
    // The document's hello is accepted by the reference phone that pinned the vehicle.
    const phone = new PhoneKey({
      secretKey: phoneSecret,
      vehicles: [{ vehicleId: VEHICLE_ID, publicKey: vehicleJwk }],
    });
    expect(phone.receive(hello)?.kind).toBe('answer');
  });

  it('answer: signed message, signature in both S forms, bytes and chunks', () => {
    const signed = answerSignedMessage(answerFields);
    expect(toHex(signed)).toBe(V.answerSigned);
    expect(sha256(signed)).toBe(V.answerSignedSha);
    const signature = p256.sign(signed, phoneSecret);
    expect(toHex(signature)).toBe(V.answerSignature);
    expect(toHex(toHighS(signature))).toBe(V.answerSignatureHighS);
    const answer = encodeAnswer(answerFields, signature);
    expect(answer.length).toBe(143);
    const expected = { challenge: CHALLENGE, vehicleId: VEHICLE_ID, publicKey: phoneJwk };
    expect(verifyKeyAnswer(answer, expected)).toBe('valid');
    expect(verifyKeyAnswer(encodeAnswer(answerFields, fromHex(V.answerSignatureHighS)), expected)).toBe(
      'valid',
    );
    const chunks = chunkFrame(answer, 20).map(toHex);
    for (const value of [V.answerSigned, V.answerSignedSha, toHex(answer), V.answerSignatureHighS, ...chunks])
      inDoc(value);
    expect(reassemble(chunks)).toEqual(answer);
  });

  it('passive lock answer', () => {
    const fields: AnswerFields = { ...answerFields, intent: 'lock', explicitIntent: false };
    const signature = p256.sign(answerSignedMessage(fields), phoneSecret);
    expect(toHex(signature)).toBe(V.passiveLockSignature);
    const answer = encodeAnswer(fields, signature);
    expect(answer.subarray(2, 4)).toEqual(Uint8Array.of(0x02, 0x00));
    expect(
      verifyKeyAnswer(answer, { challenge: CHALLENGE, vehicleId: VEHICLE_ID, publicKey: phoneJwk }),
    ).toBe('valid');
    inDoc(toHex(answer));
  });

  it('results and aborts', () => {
    expect(toHex(encodeResult({ granted: true }))).toBe(V.resultGranted);
    expect(toHex(encodeResult({ granted: false, code: 'bad_proof' }))).toBe(V.resultDenied);
    expect(toHex(encodeAbort('wrong_vehicle'))).toBe(V.abortWrongVehicle);
    inDoc(`result granted ${V.resultGranted}`);
    inDoc(`result denied bad_proof ${V.resultDenied}`);
    inDoc(`abort wrong_vehicle ${V.abortWrongVehicle}`);
  });
});

function reassemble(chunks: readonly string[]): Uint8Array | undefined {
  const r = new FrameReassembler();
  let frame: Uint8Array | undefined;
  for (const c of chunks) frame = r.push(fromHex(c), 0) ?? frame;
  return frame;
}
