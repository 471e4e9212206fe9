import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { p256 } from '@noble/curves/nist.js';
import { describe, expect, it } from 'vitest';
import { authRequestHash, type GrantOp } from '../../../src/access/keyring.js';
import {
  authProofFor,
  buildEnrollOffer,
  decodeEnrollMessage,
  type EnrollApproval,
  type EnrollOfferFields,
  encodeEnrollApproval,
  encodeEnrollRequest,
  enrollApprovalSignedMessage,
  enrollOfferSignedMessage,
  enrollRequestSignedMessage,
  isEnrollMessage,
  verifyBleEnrollAuth,
  verifyEnrollApproval,
  verifyEnrollOffer,
  verifyEnrollRequest,
} from '../../../src/ble/protocol/enroll.js';
import { buildHello, decodeMessage } from '../../../src/ble/protocol/messages.js';
import type { Credential } from '../../../src/core/types.js';
import { canonicalJson } from '../../../src/crypto/canonical.js';
import { fromHex, toHex } from '../../../src/crypto/encoding.js';
import { keyCredentialId, p256JwkFromRaw } from '../../../src/crypto/keys.js';
import { PhoneKey, toHighS } from '../../../src/sim/ble/phone.js';

/**
 * Extension E1 (docs/ble-protocol.md §12): messages, signatures and the keyring's verifier, and
 * the vectors of §12.4, each required to appear in the document.
 */

const doc = readFileSync(new URL('../../../docs/ble-protocol.md', import.meta.url), 'utf8').replace(
  /\s+/g,
  '',
);
const inDoc = (text: string): void => {
  expect(doc.includes(text.replace(/\s+/g, '')), `docs/ble-protocol.md should contain ${text}`).toBe(true);
};

const VEHICLE_SECRET = fromHex('c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721');
const NEW_SECRET = fromHex('519b423d715f8b581f4fa8ee59f4771a5b44c8130b4e3eacca54a56dda72b464');
const OWNER_SECRET = fromHex('1ffe5050f74ed3cb640e771ba74868148f2219a0e384a73e37e70179ffd110fc');
const VEHICLE_ID = 'VIN-TEST-0001';
const CHALLENGE = Uint8Array.from({ length: 32 }, (_, i) => i);

const jwkOf = (secret: Uint8Array) => p256JwkFromRaw(p256.getPublicKey(secret, false));
const vehicleJwk = jwkOf(VEHICLE_SECRET);
const newJwk = jwkOf(NEW_SECRET);
const ownerJwk = jwkOf(OWNER_SECRET);
const newId = keyCredentialId('phone', newJwk);
const ownerId = keyCredentialId('phone', ownerJwk);

const op: GrantOp = {
  v: 1,
  op: 'grant',
  id: 'enrollVectorOp000001',
  vid: VEHICLE_ID,
  iat: 1767225600,
  cred: { id: newId, kind: 'phone', role: 'driver', publicKey: newJwk, options: {} },
};
const requestHash = authRequestHash(op);
const offerFields: EnrollOfferFields = {
  vehicleId: VEHICLE_ID,
  challenge: CHALLENGE,
  requestHash,
  credentialId: newId,
  kind: 'phone',
  role: 'driver',
  passive: false,
  notBefore: 0,
  notAfter: 0,
};
const approvalFields = { vehicleId: VEHICLE_ID, challenge: CHALLENGE, requestHash, keyId: ownerId };
const requestFields = { vehicleId: VEHICLE_ID, challenge: CHALLENGE, keyId: ownerId };
const sha = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');
const owner: Credential = { id: ownerId, kind: 'phone', role: 'owner', publicKey: ownerJwk, options: {} };

function approval(signature: Uint8Array): EnrollApproval {
  const decoded = decodeEnrollMessage(encodeEnrollApproval(approvalFields, signature));
  if (decoded.type !== 'enroll_approval') throw new Error('not an approval');
  return decoded;
}

describe('E1 test vectors (docs/ble-protocol.md §12.4)', () => {
  it('pins the keys, the request hash and every message', () => {
    inDoc(toHex(p256.getPublicKey(OWNER_SECRET, false)));
    inDoc(JSON.stringify(ownerJwk));
    inDoc(ownerId);
    inDoc(new TextDecoder().decode(new TextEncoder().encode(canonicalJson(op))));
    inDoc(`request hash ${toHex(requestHash)}`);
    const requestSigned = enrollRequestSignedMessage(requestFields);
    inDoc(toHex(requestSigned));
    inDoc(`sha256 ${sha(requestSigned)}`);
    const request = encodeEnrollRequest(requestFields, p256.sign(requestSigned, OWNER_SECRET));
    expect(request.length).toBe(141);
    inDoc(toHex(request));
    const offerSigned = enrollOfferSignedMessage(offerFields);
    inDoc(toHex(offerSigned));
    inDoc(`sha256 ${sha(offerSigned)}`);
    const offer = buildEnrollOffer(offerFields, (m) => p256.sign(m, VEHICLE_SECRET));
    expect(offer.length).toBe(184);
    inDoc(toHex(offer));
    const approvalSigned = enrollApprovalSignedMessage(approvalFields);
    inDoc(toHex(approvalSigned));
    inDoc(`sha256 ${sha(approvalSigned)}`);
    const signature = p256.sign(approvalSigned, OWNER_SECRET);
    const encoded = encodeEnrollApproval(approvalFields, signature);
    expect(encoded.length).toBe(173);
    inDoc(toHex(encoded));
    inDoc(JSON.stringify(authProofFor(approval(signature))));
  });

  it('verifies with the public keys (node:crypto against noble), high-S too', () => {
    const offer = decodeEnrollMessage(buildEnrollOffer(offerFields, (m) => p256.sign(m, VEHICLE_SECRET)));
    if (offer.type !== 'enroll_offer') throw new Error('not an offer');
    expect(verifyEnrollOffer(offer, vehicleJwk)).toBe(true);
    expect(verifyEnrollOffer(offer, ownerJwk)).toBe(false);
    const signature = p256.sign(enrollApprovalSignedMessage(approvalFields), OWNER_SECRET);
    expect(verifyEnrollApproval(approval(signature), ownerJwk)).toBe('valid');
    expect(verifyEnrollApproval(approval(toHighS(signature)), ownerJwk)).toBe('valid');
    expect(verifyEnrollApproval(approval(signature), newJwk)).toBe('invalid');
    const requestSignature = p256.sign(enrollRequestSignedMessage(requestFields), OWNER_SECRET);
    const request = decodeEnrollMessage(encodeEnrollRequest(requestFields, requestSignature));
    if (request.type !== 'enroll_request') throw new Error('not a request');
    expect(verifyEnrollRequest(request, ownerJwk)).toBe('valid');
    expect(verifyEnrollRequest({ ...request, signature: toHighS(requestSignature) }, ownerJwk)).toBe('valid');
    expect(verifyEnrollRequest(request, newJwk)).toBe('invalid');
    // Signed for another session: the signature does not cover this challenge.
    expect(verifyEnrollRequest({ ...request, challenge: new Uint8Array(32) }, ownerJwk)).toBe('invalid');
  });
});

describe('E1 messages', () => {
  const offer = buildEnrollOffer(
    { ...offerFields, role: 'guest', passive: true, notBefore: 1767225600, notAfter: 1767830400 },
    (m) => p256.sign(m, VEHICLE_SECRET),
  );

  it('decodes what it encodes, byte for byte', () => {
    const decoded = decodeEnrollMessage(offer);
    expect(decoded).toMatchObject({
      type: 'enroll_offer',
      role: 'guest',
      passive: true,
      notBefore: 1767225600,
      notAfter: 1767830400,
      credentialId: newId,
    });
    if (decoded.type !== 'enroll_offer') throw new Error('not an offer');
    expect(buildEnrollOffer(decoded, () => decoded.signature)).toEqual(offer);
    const request = encodeEnrollRequest(requestFields, new Uint8Array(64).fill(7));
    const decodedRequest = decodeEnrollMessage(request);
    expect(decodedRequest).toMatchObject({ type: 'enroll_request', vehicleId: VEHICLE_ID, keyId: ownerId });
    if (decodedRequest.type !== 'enroll_request') throw new Error('not a request');
    expect(encodeEnrollRequest(decodedRequest, decodedRequest.signature)).toEqual(request);
  });

  it('refuses the unsigned enroll_request of revision 1 as unsupported, a truncated one as malformed', () => {
    const code = (bytes: Uint8Array): string | undefined => {
      try {
        decodeEnrollMessage(bytes);
        return undefined;
      } catch (err) {
        return (err as { code?: string }).code;
      }
    };
    expect(code(Uint8Array.of(1, 5))).toBe('unsupported');
    const request = encodeEnrollRequest(requestFields, new Uint8Array(64).fill(7));
    expect(code(request.subarray(0, request.length - 1))).toBe('malformed');
    expect(code(Uint8Array.of(...request, 0))).toBe('malformed');
  });

  it('is strict: trailing bytes, truncation, reserved flags, unknown role and another version are refused', () => {
    const code = (bytes: Uint8Array): string | undefined => {
      try {
        decodeEnrollMessage(bytes);
        return undefined;
      } catch (err) {
        return (err as { code?: string }).code;
      }
    };
    expect(code(Uint8Array.of(...offer, 0))).toBe('malformed');
    expect(code(offer.subarray(0, offer.length - 1))).toBe('malformed');
    expect(code(Uint8Array.of(1, 5, 0))).toBe('malformed');
    const flagsAt = 3 + VEHICLE_ID.length + 64 + 1 + newId.length + 2;
    const reserved = offer.slice();
    reserved[flagsAt] = 0x02;
    expect(code(reserved)).toBe('malformed');
    const role = offer.slice();
    role[flagsAt - 1] = 9;
    expect(code(role)).toBe('malformed');
    const version = offer.slice();
    version[0] = 2;
    expect(code(version)).toBe('unsupported');
  });

  it('is kept apart from the v1 messages: a v1 decoder refuses E1 types, E1 refuses v1 types', () => {
    expect(isEnrollMessage(offer)).toBe(true);
    expect(isEnrollMessage(Uint8Array.of(1, 2))).toBe(false);
    expect(() => decodeMessage(offer)).toThrow();
    expect(() => decodeEnrollMessage(Uint8Array.of(1, 3, 0, 0))).toThrow();
  });
});

describe('the keyring verifier of BLE-approved grants', () => {
  const signature = p256.sign(enrollApprovalSignedMessage(approvalFields), OWNER_SECRET);
  const proof = authProofFor(approval(signature)).proof;

  it('accepts the owner signature over exactly this request', () => {
    expect(verifyBleEnrollAuth(owner, requestHash, proof)).toBe(true);
  });

  it('refuses another request, another key, a non-phone authoriser and a damaged proof', () => {
    const other = authRequestHash({ ...op, id: 'enrollVectorOp000002' });
    expect(verifyBleEnrollAuth(owner, other, proof)).toBe(false);
    expect(verifyBleEnrollAuth({ ...owner, publicKey: newJwk }, requestHash, proof)).toBe(false);
    expect(verifyBleEnrollAuth({ ...owner, kind: 'signer' }, requestHash, proof)).toBe(false);
    expect(verifyBleEnrollAuth(owner, requestHash, { ...proof, vid: 'OTHER-CAR' })).toBe(false);
    expect(verifyBleEnrollAuth(owner, requestHash, { ...proof, challenge: 'AAAA' })).toBe(false);
    expect(verifyBleEnrollAuth(owner, requestHash, { ...proof, sig: 42 })).toBe(false);
    expect(verifyBleEnrollAuth(owner, requestHash, { ...proof, v: 2 })).toBe(false);
  });
});

describe('the reference phone approving an enrollment', () => {
  const vehicleSign = (m: Uint8Array) => p256.sign(m, VEHICLE_SECRET);
  const pinned = [{ vehicleId: VEHICLE_ID, publicKey: vehicleJwk }];
  const hello = buildHello(
    { vehicleId: VEHICLE_ID, challenge: CHALLENGE, answerWindowMs: 1500 },
    vehicleSign,
  );
  const offerFor = (fields: Partial<EnrollOfferFields> = {}) =>
    buildEnrollOffer({ ...offerFields, ...fields }, vehicleSign);

  it('asks for the request instead of answering, then signs exactly the offered hash', () => {
    const phone = new PhoneKey({
      secretKey: OWNER_SECRET,
      vehicles: pinned,
      behaviour: { approveEnrollment: true },
    });
    const asked = decodeEnrollMessage(phone.receive(hello)?.message ?? new Uint8Array());
    if (asked.type !== 'enroll_request') throw new Error('no request');
    expect(asked).toMatchObject({ vehicleId: VEHICLE_ID, challenge: CHALLENGE, keyId: ownerId });
    expect(verifyEnrollRequest(asked, ownerJwk)).toBe('valid');
    const reply = phone.receive(offerFor());
    const decoded = decodeEnrollMessage(reply?.message ?? new Uint8Array());
    if (decoded.type !== 'enroll_approval') throw new Error('no approval');
    expect(decoded).toMatchObject({ keyId: ownerId, vehicleId: VEHICLE_ID });
    expect(toHex(decoded.requestHash)).toBe(toHex(requestHash));
    expect(verifyEnrollApproval(decoded, ownerJwk)).toBe('valid');
    expect(phone.events).toContainEqual({
      type: 'enroll-offered',
      credentialId: newId,
      role: 'driver',
      approved: true,
    });
  });

  it('refuses an offer for another exchange, a forged offer and one it was not asked to approve', () => {
    const abortCode = (reply: ReturnType<PhoneKey['receive']>) => {
      const m = decodeMessage(reply?.message ?? new Uint8Array());
      return m.type === 'abort' ? m.code : m.type;
    };
    const phone = () =>
      new PhoneKey({ secretKey: OWNER_SECRET, vehicles: pinned, behaviour: { approveEnrollment: true } });
    const a = phone();
    a.receive(hello);
    expect(abortCode(a.receive(offerFor({ challenge: new Uint8Array(32) })))).toBe('replay');
    const b = phone();
    b.receive(hello);
    const forged = buildEnrollOffer(offerFields, (m) => p256.sign(m, OWNER_SECRET));
    expect(abortCode(b.receive(forged))).toBe('bad_proof');
    const c = phone();
    expect(abortCode(c.receive(offerFor()))).toBe('wrong_vehicle');
    const d = new PhoneKey({
      secretKey: OWNER_SECRET,
      vehicles: pinned,
      behaviour: { approveEnrollment: true, enrollmentFor: 'phone:someone-else' },
    });
    d.receive(hello);
    expect(abortCode(d.receive(offerFor()))).toBe('unauthorized');
  });
});
