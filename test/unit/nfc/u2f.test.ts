import { createHash, generateKeyPairSync, sign as nodeSign, randomBytes } from 'node:crypto';
import { p256 } from '@noble/curves/nist.js';
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import { concatBytes, fromHex, toHex } from '../../../src/crypto/encoding.js';
import { encodeCommand, type Transceive } from '../../../src/nfc/apdu.js';
import {
  authenticateCommand,
  authenticationSignedBytes,
  counterVerdict,
  enrollmentChallenge,
  p256PublicKeyFromRaw,
  parseAuthenticateResponse,
  parseRegisterResponse,
  registerCommand,
  registrationSignedBytes,
  selectFidoApdu,
  tapChallenge,
  type U2fRegistration,
  u2fAuthenticate,
  u2fCheckKeyHandle,
  u2fRegister,
  vehicleAppParam,
  verifyAssertion,
  verifyP256Der,
  verifyRegistration,
} from '../../../src/nfc/u2f.js';
import { SimulatedFidoU2fKey } from '../../../src/sim/cards/fido-u2f.js';
import { restoreSimulatedCard } from '../../../src/sim/cards/state.js';
import { seededRandom } from '../../helpers/seeded-random.js';

const h = fromHex;
const hex = (b: Uint8Array) => toHex(b);
const sha256 = (s: string | Uint8Array) => new Uint8Array(createHash('sha256').update(s).digest());

// FIDO U2F Raw Message Formats, examples section (registration and authentication).
const SPEC_REGISTER_RESPONSE = h(
  '0504b174bc49c7ca254b70d2e5c207cee9cf174820ebd77ea3c65508c26da51b657c1cc6b952f8621697936482da0a6d3d3826a59095daf6cd7c03e2e60385d2f6d9402a552dfdb7477ed65fd84133f86196010b2215b57da75d315b7b9e8fe2e3925a6019551bab61d16591659cbaf00b4950f7abfe6660e2e006f76868b772d70c253082013c3081e4a003020102020a47901280001155957352300a06082a8648ce3d0403023017311530130603550403130c476e756262792050696c6f74301e170d3132303831343138323933325a170d3133303831343138323933325a3031312f302d0603550403132650696c6f74476e756262792d302e342e312d34373930313238303030313135353935373335323059301306072a8648ce3d020106082a8648ce3d030107034200048d617e65c9508e64bcc5673ac82a6799da3c1446682c258c463fffdf58dfd2fa3e6c378b53d795c4a4dffb4199edd7862f23abaf0203b4b8911ba0569994e101300a06082a8648ce3d0403020347003044022060cdb6061e9c22262d1aac1d96d8c70829b2366531dda268832cb836bcd30dfa0220631b1459f09e6330055722c8d89b7f48883b9089b88d60d1d9795902b30410df304502201471899bcc3987e62e8202c9b39c33c19033f7340352dba80fcab017db9230e402210082677d673d891933ade6f617e5dbde2e247e70423fd5ad7804a6d3d3961ef871',
);
const SPEC_CID_PUBKEY =
  '"cid_pubkey":{"kty":"EC","crv":"P-256","x":"HzQwlfXX7Q4S5MtCCnZUNBw3RMzPO9tOyWjBqRl4tJ8","y":"XVguGFLIZx1fXg3wNqfdbn75hi4-_7-BxhMljw42Ht4"}';
const SPEC_REGISTER_CLIENT_DATA = `{"typ":"navigator.id.finishEnrollment","challenge":"vqrS6WXDe1JUs5_c3i4-LkKIHRr-3XVb3azuA5TifHo",${SPEC_CID_PUBKEY},"origin":"http://example.com"}`;
const SPEC_AUTH_CLIENT_DATA = `{"typ":"navigator.id.getAssertion","challenge":"opsXqUifDriAAmWclinfbS0e-USY0CgyJHe_Otd7z8o",${SPEC_CID_PUBKEY},"origin":"http://example.com"}`;
const SPEC_REGISTER_APP = sha256('http://example.com');
const SPEC_REGISTER_CHALLENGE = sha256(SPEC_REGISTER_CLIENT_DATA);
const SPEC_AUTH_APP = sha256('https://gstatic.com/securitykey/a/example.com');
const SPEC_AUTH_CHALLENGE = sha256(SPEC_AUTH_CLIENT_DATA);
const SPEC_AUTH_PUBLIC_KEY = h(
  '04d368f1b665bade3c33a20f1e429c7750d5033660c019119d29aa4ba7abc04aa7c80a46bbe11ca8cb5674d74f31f8a903f6bad105fb6ab74aefef4db8b0025e1d',
);
const SPEC_AUTH_RESPONSE = h(
  '0100000001304402204b5f0cd17534cedd8c34ee09570ef542a353df4436030ce43d406de870b847780220267bb998fac9b7266eb60e7cb0b5eabdfd5ba9614f53c7b22272ec10047a923f',
);
const SPEC_KEY_HANDLE = h(
  '2a552dfdb7477ed65fd84133f86196010b2215b57da75d315b7b9e8fe2e3925a6019551bab61d16591659cbaf00b4950f7abfe6660e2e006f76868b772d70c25',
);
const N = p256.Point.Fn.ORDER;

function codeOf(result: { ok: true } | { ok: false; error: AgentError }): string {
  return result.ok ? 'ok' : result.error.code;
}

function over(card: SimulatedFidoU2fKey, log?: string[]): Transceive {
  return async (apdu) => {
    const { response } = card.transceive(apdu);
    log?.push(`${hex(apdu)} -> ${hex(response)}`);
    return response;
  };
}

describe('U2F raw message format examples', () => {
  it('hashes the example parameters as the spec prints them', () => {
    expect(hex(SPEC_REGISTER_APP)).toBe('f0e6a6a97042a4f1f1c87f5f7d44315b2d852c2df5c7991cc66241bf7072d1c4');
    expect(hex(SPEC_REGISTER_CHALLENGE)).toBe(
      '4142d21c00d94ffb9d504ada8f99b721f4b191ae4e37ca0140f696b6983cfacb',
    );
    expect(hex(SPEC_AUTH_APP)).toBe('4b0be934baebb5d12d26011b69227fa5e86df94e7d94aa2949a89f2d493992ca');
    expect(hex(SPEC_AUTH_CHALLENGE)).toBe('ccd6ee2e47baef244d49a222db496bad0ef5b6f93aa7cc4d30c4821b3b9dbc57');
  });

  it('parses and verifies the registration example', () => {
    const reg = parseRegisterResponse(SPEC_REGISTER_RESPONSE);
    expect(hex(reg.publicKey)).toBe(
      '04b174bc49c7ca254b70d2e5c207cee9cf174820ebd77ea3c65508c26da51b657c1cc6b952f8621697936482da0a6d3d3826a59095daf6cd7c03e2e60385d2f6d9',
    );
    expect(hex(reg.keyHandle)).toBe(hex(SPEC_KEY_HANDLE));
    expect(reg.attestationCertificate.length).toBe(0x13c + 4);
    expect(hex(reg.signature)).toBe(
      '304502201471899bcc3987e62e8202c9b39c33c19033f7340352dba80fcab017db9230e402210082677d673d891933ade6f617e5dbde2e247e70423fd5ad7804a6d3d3961ef871',
    );
    expect(
      hex(registrationSignedBytes(SPEC_REGISTER_APP, SPEC_REGISTER_CHALLENGE, reg.keyHandle, reg.publicKey)),
    ).toBe(
      `00${hex(SPEC_REGISTER_APP)}${hex(SPEC_REGISTER_CHALLENGE)}${hex(SPEC_KEY_HANDLE)}${hex(reg.publicKey)}`,
    );
    expect(() => verifyRegistration(reg, SPEC_REGISTER_APP, SPEC_REGISTER_CHALLENGE)).not.toThrow();
    expect(() => verifyRegistration(reg, SPEC_REGISTER_APP, SPEC_AUTH_CHALLENGE)).toThrow(/does not verify/);
    expect(() => verifyRegistration(reg, SPEC_AUTH_APP, SPEC_REGISTER_CHALLENGE)).toThrow(AgentError);
  });

  it('parses and verifies the authentication example (counter 1)', () => {
    const assertion = parseAuthenticateResponse(SPEC_AUTH_RESPONSE);
    expect(assertion.flags).toBe(1);
    expect(assertion.counter).toBe(1);
    expect(verifyAssertion(SPEC_AUTH_PUBLIC_KEY, SPEC_AUTH_APP, SPEC_AUTH_CHALLENGE, assertion)).toBe(true);
    expect(verifyAssertion(SPEC_AUTH_PUBLIC_KEY, SPEC_AUTH_APP, SPEC_REGISTER_CHALLENGE, assertion)).toBe(
      false,
    );
    expect(
      verifyAssertion(SPEC_AUTH_PUBLIC_KEY, SPEC_AUTH_APP, SPEC_AUTH_CHALLENGE, { ...assertion, counter: 2 }),
    ).toBe(false);
    expect(
      verifyAssertion(SPEC_AUTH_PUBLIC_KEY, SPEC_AUTH_APP, SPEC_AUTH_CHALLENGE, { ...assertion, flags: 0 }),
    ).toBe(false);
    expect(hex(authenticationSignedBytes(SPEC_AUTH_APP, 1, 1, SPEC_AUTH_CHALLENGE))).toBe(
      `${hex(SPEC_AUTH_APP)}0100000001${hex(SPEC_AUTH_CHALLENGE)}`,
    );
  });

  it('builds the example authentication request as a short APDU', () => {
    const apdu = encodeCommand(
      authenticateCommand(0x03, SPEC_AUTH_CHALLENGE, SPEC_AUTH_APP, SPEC_KEY_HANDLE),
    );
    expect(hex(apdu)).toBe(
      `0002030081${hex(SPEC_AUTH_CHALLENGE)}${hex(SPEC_AUTH_APP)}40${hex(SPEC_KEY_HANDLE)}00`,
    );
    expect(hex(encodeCommand(registerCommand(SPEC_REGISTER_CHALLENGE, SPEC_REGISTER_APP)))).toBe(
      `0001000040${hex(SPEC_REGISTER_CHALLENGE)}${hex(SPEC_REGISTER_APP)}00`,
    );
    expect(hex(selectFidoApdu())).toBe('00a4040008a0000006472f000100');
  });

  it('registers through 61XX / GET RESPONSE with the example answer from a scripted key', async () => {
    let rest: Uint8Array = new Uint8Array(0);
    const sent: string[] = [];
    // answers at most Ne bytes, then 61XX with XX = what is left (00 for 256 or more)
    const part = (ne: number) => {
      const chunk = rest.subarray(0, ne);
      rest = rest.subarray(ne);
      return concatBytes(
        chunk,
        rest.length === 0 ? h('9000') : new Uint8Array([0x61, Math.min(rest.length, 256) & 0xff]),
      );
    };
    const transceive: Transceive = async (apdu) => {
      sent.push(hex(apdu));
      if (apdu[1] === 0xa4) return h('5532465f56329000');
      if (apdu[1] === 0x01) {
        rest = SPEC_REGISTER_RESPONSE;
        return part(256);
      }
      if (apdu[1] === 0xc0) return part(apdu[4] === 0 ? 256 : (apdu[4] ?? 0));
      return h('6d00');
    };
    const result = await u2fRegister(transceive, {
      appParam: SPEC_REGISTER_APP,
      challenge: SPEC_REGISTER_CHALLENGE,
    });
    if (!result.ok) throw result.error;
    expect(hex(result.value.keyHandle)).toBe(hex(SPEC_KEY_HANDLE));
    expect(SPEC_REGISTER_RESPONSE.length).toBe(522);
    expect(sent.slice(2)).toEqual(['00c0000000', '00c000000a']);
  });
});

describe('P-256 DER signatures: node:crypto path against @noble/curves', () => {
  it('verifies noble signatures (low and high S) and rejects mutations, 300 random vectors', () => {
    const random = seededRandom();
    let highS = 0;
    for (let i = 0; i < 300; i++) {
      const secret = p256.utils.randomSecretKey(random.bytes(48));
      const pub = p256.getPublicKey(secret, false);
      const key = p256PublicKeyFromRaw(pub);
      const message = random.bytes(1 + (i % 120));
      const der = p256.sign(message, secret, { lowS: false, format: 'der', extraEntropy: random.bytes(32) });
      const parsed = p256.Signature.fromBytes(der, 'der');
      // the same signature in both S halves: authenticators do not normalise, so both must pass
      const flipped = new p256.Signature(parsed.r, N - parsed.s).toBytes('der');
      if (parsed.hasHighS()) highS++;
      expect(verifyP256Der(key, message, der)).toBe(true);
      expect(verifyP256Der(key, message, flipped)).toBe(true);

      const badMessage = message.slice();
      badMessage[i % badMessage.length] = (badMessage[i % badMessage.length] ?? 0) ^ 0x01;
      expect(verifyP256Der(key, badMessage, der)).toBe(false);
      const badSig = der.slice();
      const at = 4 + (i % (badSig.length - 4));
      badSig[at] = (badSig[at] ?? 0) ^ (1 << (i % 8));
      expect(verifyP256Der(key, message, badSig)).toBe(false);
      expect(verifyP256Der(key, message, der.subarray(0, der.length - 1))).toBe(false);
      const otherKey = p256PublicKeyFromRaw(p256.getPublicKey(p256.utils.randomSecretKey(), false));
      expect(verifyP256Der(otherKey, message, der)).toBe(false);
    }
    expect(highS).toBeGreaterThan(90); // about half of genuine signatures have a high S
  });

  it('signs with node:crypto in a way noble verifies with lowS false, 300 random vectors', () => {
    let rejectedByStrictNoble = 0;
    for (let i = 0; i < 300; i++) {
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
      const raw = new Uint8Array(publicKey.export({ format: 'der', type: 'spki' }).subarray(-65));
      const message = new Uint8Array(randomBytes(64));
      const der = new Uint8Array(nodeSign('sha256', message, { key: privateKey, dsaEncoding: 'der' }));
      expect(p256.verify(der, message, raw, { format: 'der', lowS: false })).toBe(true);
      if (!p256.verify(der, message, raw, { format: 'der' })) rejectedByStrictNoble++;
      const assertion = { flags: 1, counter: i, signature: der };
      expect(verifyP256Der(publicKey, message, der)).toBe(true);
      expect(verifyAssertion(raw, message.subarray(0, 32), message.subarray(32), assertion)).toBe(false);
    }
    // the trap: noble's default lowS=true refuses about half of them
    expect(rejectedByStrictNoble).toBeGreaterThan(90);
  });

  it('rejects public keys that are not points on the curve', () => {
    const bad = new Uint8Array(65);
    bad[0] = 4;
    bad[64] = 1;
    expect(() => p256PublicKeyFromRaw(bad)).toThrow(AgentError);
    expect(() => p256PublicKeyFromRaw(new Uint8Array(33))).toThrow(AgentError);
  });
});

describe('simulated FIDO U2F key against the host code', () => {
  const appParam = vehicleAppParam('vehicle-1');

  async function enroll(card: SimulatedFidoU2fKey): Promise<U2fRegistration> {
    const result = await u2fRegister(over(card), { appParam, challenge: tapChallenge() });
    if (!result.ok) throw result.error;
    return result.value;
  }

  it('registers (answer > 256 bytes through 61XX) then authenticates with a rising counter', async () => {
    const card = new SimulatedFidoU2fKey({ label: 'owner', counter: 41 });
    const log: string[] = [];
    const result = await u2fRegister(over(card, log), { appParam, challenge: tapChallenge() });
    if (!result.ok) throw result.error;
    const reg = result.value;
    expect(reg.keyHandle.length).toBe(64);
    expect(log.some((line) => /61[0-9a-f]{2}$/.test(line))).toBe(true);
    expect(log.some((line) => line.startsWith('00c00000'))).toBe(true);

    let stored: number | undefined;
    for (let i = 1; i <= 3; i++) {
      const auth = await u2fAuthenticate(over(card), {
        appParam,
        challenge: tapChallenge(),
        keyHandle: reg.keyHandle,
        publicKey: reg.publicKey,
      });
      if (!auth.ok) throw auth.error;
      expect(auth.value).toEqual({ counter: 41 + i, userPresent: true });
      expect(counterVerdict(stored, auth.value.counter)).toBe('ok');
      stored = auth.value.counter;
    }
  });

  it('detects a clone by its falling or repeated counter', async () => {
    const card = new SimulatedFidoU2fKey({ label: 'owner' });
    const reg = await enroll(card);
    const request = { appParam, keyHandle: reg.keyHandle, publicKey: reg.publicKey };
    const first = await u2fAuthenticate(over(card), { ...request, challenge: tapChallenge() });
    const second = await u2fAuthenticate(over(card), { ...request, challenge: tapChallenge() });
    if (!first.ok || !second.ok) throw new Error('authentication failed');
    const stored = second.value.counter;

    const clone = card.clone({ label: 'clone', counter: 0 });
    const cloned = await u2fAuthenticate(over(clone), { ...request, challenge: tapChallenge() });
    if (!cloned.ok) throw cloned.error; // the signature is genuine: only the counter gives it away
    expect(cloned.value.counter).toBeLessThanOrEqual(stored);
    expect(counterVerdict(stored, cloned.value.counter)).toBe('clone_suspected');

    card.counterFrozen = true;
    const repeated = await u2fAuthenticate(over(card), { ...request, challenge: tapChallenge() });
    if (!repeated.ok) throw repeated.error;
    expect(repeated.value.counter).toBe(stored);
    expect(counterVerdict(stored, repeated.value.counter)).toBe('clone_suspected');
  });

  it('applies the counter rules for keys without a counter', () => {
    expect(counterVerdict(undefined, 0)).toBe('ok');
    expect(counterVerdict(0, 0)).toBe('ok');
    expect(counterVerdict(0, 1)).toBe('ok');
    expect(counterVerdict(5, 0)).toBe('clone_suspected');
    expect(counterVerdict(5, 5)).toBe('clone_suspected');
    expect(counterVerdict(5, 6)).toBe('ok');
    expect(counterVerdict(0xfffffffe, 0xffffffff)).toBe('ok');
  });

  it('refuses a foreign or damaged key handle, another vehicle, and a wrong public key', async () => {
    const card = new SimulatedFidoU2fKey({ label: 'a' });
    const other = new SimulatedFidoU2fKey({ label: 'b' });
    const reg = await enroll(card);
    const otherReg = await enroll(other);
    const base = { appParam, challenge: tapChallenge(), publicKey: reg.publicKey };

    expect(codeOf(await u2fAuthenticate(over(card), { ...base, keyHandle: otherReg.keyHandle }))).toBe(
      'unknown_credential',
    );
    const damaged = reg.keyHandle.slice();
    damaged[40] = (damaged[40] ?? 0) ^ 1;
    expect(codeOf(await u2fAuthenticate(over(card), { ...base, keyHandle: damaged }))).toBe(
      'unknown_credential',
    );
    expect(
      codeOf(
        await u2fAuthenticate(over(card), {
          ...base,
          appParam: vehicleAppParam('vehicle-2'),
          keyHandle: reg.keyHandle,
        }),
      ),
    ).toBe('unknown_credential');
    expect(
      codeOf(
        await u2fAuthenticate(over(card), {
          ...base,
          keyHandle: reg.keyHandle,
          publicKey: otherReg.publicKey,
        }),
      ),
    ).toBe('bad_proof');
  });

  it('checks key handles with P1=07 without signing or counting', async () => {
    const card = new SimulatedFidoU2fKey({ label: 'a', counter: 7 });
    const reg = await enroll(card);
    const own = await u2fCheckKeyHandle(over(card), { appParam, keyHandle: reg.keyHandle });
    const foreign = await u2fCheckKeyHandle(over(card), { appParam, keyHandle: new Uint8Array(64).fill(3) });
    expect(own).toEqual({ ok: true, value: true });
    expect(foreign).toEqual({ ok: true, value: false });
    expect(card.counter).toBe(7);
  });

  it('reports a key that wants presence as intent_required', async () => {
    const card = new SimulatedFidoU2fKey({ label: 'touchy' });
    const reg = await enroll(card);
    card.presenceRequired = true;
    const auth = await u2fAuthenticate(over(card), {
      appParam,
      challenge: tapChallenge(),
      keyHandle: reg.keyHandle,
      publicKey: reg.publicKey,
    });
    expect(codeOf(auth)).toBe('intent_required');
    expect(codeOf(await u2fRegister(over(card), { appParam, challenge: tapChallenge() }))).toBe(
      'intent_required',
    );
  });

  it('chains a command longer than 255 bytes (CLA 10) and the key reassembles it', async () => {
    const card = new SimulatedFidoU2fKey({ label: 'chain' });
    const log: string[] = [];
    const result = await u2fAuthenticate(over(card, log), {
      appParam,
      challenge: tapChallenge(),
      keyHandle: new Uint8Array(200).fill(9),
      publicKey: (await enroll(card)).publicKey,
    });
    // 65 + 200 bytes of data went in two parts; the key saw one command with a 200-byte handle
    expect(codeOf(result)).toBe('unknown_credential');
    expect(log.filter((line) => line.startsWith('10020300'))).toHaveLength(1);
  });

  it('persists its seed and counter', async () => {
    const card = new SimulatedFidoU2fKey({ label: 'persist', counter: 100 });
    const reg = await enroll(card);
    const restored = restoreSimulatedCard(JSON.parse(JSON.stringify(card.toState())));
    expect(restored).toBeInstanceOf(SimulatedFidoU2fKey);
    const auth = await u2fAuthenticate(over(restored as SimulatedFidoU2fKey), {
      appParam,
      challenge: tapChallenge(),
      keyHandle: reg.keyHandle,
      publicKey: reg.publicKey,
    });
    expect(auth).toEqual({ ok: true, value: { counter: 101, userPresent: true } });
    expect(() => restoreSimulatedCard({ ...card.toState(), seed: 'abcd' })).toThrow(/seed/);
    expect(() => restoreSimulatedCard({ ...card.toState(), counter: 2 ** 32 })).toThrow(AgentError);
  });

  it('models compute time: signatures take tens of milliseconds, plain answers little', () => {
    const card = new SimulatedFidoU2fKey({ label: 't', timing: { signMs: 70 } });
    expect(card.transceive(selectFidoApdu()).computeMs).toBeLessThan(10);
    expect(card.timing.signMs).toBe(70);
    expect(card.timing.registerMs).toBeGreaterThanOrEqual(30);
  });
});

describe('coded failures on bad U2F answers', () => {
  const appParam = vehicleAppParam('vehicle-1');
  const request = {
    appParam,
    challenge: new Uint8Array(32),
    keyHandle: new Uint8Array(64),
    publicKey: SPEC_AUTH_PUBLIC_KEY,
  };
  const ok = h('5532465f56329000');

  it.each([
    ['an empty answer', () => new Uint8Array(0), 'malformed'],
    ['no FIDO applet', () => h('6a82'), 'unsupported'],
    ['a CTAP2-only key', () => concatBytes(new TextEncoder().encode('FIDO_2_0'), h('9000')), 'unsupported'],
    ['a truncated assertion', (a: Uint8Array) => (a[1] === 0xa4 ? ok : h('01000000019000')), 'malformed'],
    [
      'trailing bytes after the signature',
      (a: Uint8Array) => (a[1] === 0xa4 ? ok : concatBytes(SPEC_AUTH_RESPONSE, h('00'), h('9000'))),
      'malformed',
    ],
    ['wrong length', (a: Uint8Array) => (a[1] === 0xa4 ? ok : h('6700')), 'malformed'],
    ['INS not supported', (a: Uint8Array) => (a[1] === 0xa4 ? ok : h('6d00')), 'unsupported'],
    [
      'a valid signature by another key',
      (a: Uint8Array) => (a[1] === 0xa4 ? ok : concatBytes(SPEC_AUTH_RESPONSE, h('9000'))),
      'bad_proof',
    ],
  ])('%s', async (_name, answer, code) => {
    const result = await u2fAuthenticate(async (apdu) => answer(apdu), request);
    expect(result.ok).toBe(false);
    if (!result.ok) {
      expect(result.error).toBeInstanceOf(AgentError);
      expect(result.error.code).toBe(code);
    }
  });

  it('rejects a truncated registration', async () => {
    for (const cut of [1, 60, 67, 130, 200, SPEC_REGISTER_RESPONSE.length - 1]) {
      const result = await u2fRegister(
        async (apdu) =>
          apdu[1] === 0xa4 ? ok : concatBytes(SPEC_REGISTER_RESPONSE.subarray(0, cut), h('9000')),
        { appParam: SPEC_REGISTER_APP, challenge: SPEC_REGISTER_CHALLENGE },
      );
      expect(codeOf(result)).toBe('malformed');
    }
  });

  it('never accepts an authentication in which one answer byte was changed', async () => {
    const card = new SimulatedFidoU2fKey({ label: 'm', timing: { signMs: 0 } });
    const reg = await u2fRegister(over(card), { appParam, challenge: tapChallenge() });
    if (!reg.ok) throw reg.error;
    const random = seededRandom();
    for (let i = 0; i < 300; i++) {
      let calls = 0;
      const target = i % 2; // the SELECT answer or the AUTHENTICATE answer
      const transceive: Transceive = async (apdu) => {
        const response = card.transceive(apdu).response.slice();
        // Data bytes only: a status word turned into 61XX or 6CXX is a legitimate "ask again",
        // after which the card's real answer verifies (that is not an acceptance of a forgery).
        if (calls++ === target && response.length > 2) {
          const at = random.int(response.length - 2);
          response[at] = (response[at] ?? 0) ^ (1 + random.int(255));
        }
        return response;
      };
      const result = await u2fAuthenticate(transceive, {
        appParam,
        challenge: tapChallenge(),
        keyHandle: reg.value.keyHandle,
        publicKey: reg.value.publicKey,
      });
      expect(result.ok).toBe(false);
      if (!result.ok) expect(result.error).toBeInstanceOf(AgentError);
    }
  });

  it('never accepts random answers', async () => {
    const random = seededRandom();
    for (let i = 0; i < 300; i++) {
      const result = await u2fAuthenticate(async (apdu) => {
        if (apdu[1] === 0xa4 && i % 2 === 0) return ok;
        return random.bytes(random.int(90));
      }, request);
      expect(result.ok).toBe(false);
      if (!result.ok) expect(result.error).toBeInstanceOf(AgentError);
    }
  });

  it('passes transport errors through as codes', async () => {
    const removed = await u2fAuthenticate(async () => {
      throw new AgentError('card_removed');
    }, request);
    expect(codeOf(removed)).toBe('card_removed');
    const broken = await u2fAuthenticate(async () => {
      throw new RangeError('driver bug');
    }, request);
    expect(codeOf(broken)).toBe('reader_error');
  });
});

describe('parameters bound to this vehicle', () => {
  it('derives a stable application parameter per vehicle', () => {
    expect(hex(vehicleAppParam('v1'))).toBe(hex(sha256('vehicle-agent:vehicle:v1')));
    expect(hex(vehicleAppParam('v1'))).not.toBe(hex(vehicleAppParam('v2')));
  });

  it('binds an enrollment challenge to the request and separates it from a plain hash', () => {
    const request = '{"credential":"fido:abc","role":"driver"}';
    expect(enrollmentChallenge(request)).toHaveLength(32);
    expect(hex(enrollmentChallenge(request))).toBe(
      hex(enrollmentChallenge(new TextEncoder().encode(request))),
    );
    expect(hex(enrollmentChallenge(request))).not.toBe(hex(sha256(request)));
    expect(hex(enrollmentChallenge(request))).not.toBe(hex(enrollmentChallenge(`${request} `)));
    expect(hex(tapChallenge())).not.toBe(hex(tapChallenge()));
  });
});
