import { p256 } from '@noble/curves/nist.js';
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import { concatBytes, fromHex, toHex } from '../../../src/crypto/encoding.js';
import { encodeCommand, parseResponse, type Transceive } from '../../../src/nfc/apdu.js';
import {
  authenticateCommand,
  parseAuthenticateResponse,
  registerCommand,
  selectFidoApdu,
  tapChallenge,
  u2fAuthenticate,
  u2fRegister,
  vehicleAppParam,
} from '../../../src/nfc/u2f.js';
import { DEFAULT_FIDO_TIMING, SimulatedFidoU2fKey } from '../../../src/sim/cards/fido-u2f.js';
import { restoreSimulatedCard } from '../../../src/sim/cards/state.js';
import { SimulatedUidTag } from '../../../src/sim/cards/uid-tag.js';

const h = fromHex;
const sw = (response: Uint8Array) => toHex(response.subarray(response.length - 2));
const appParam = vehicleAppParam('vehicle-1');

function over(card: SimulatedFidoU2fKey): Transceive {
  return async (apdu) => card.transceive(apdu).response;
}

describe('simulated UID-only tags', () => {
  it('look like a MIFARE Classic 1K and an NTAG213 at anticollision', () => {
    const classic = new SimulatedUidTag({ label: 'gym', model: 'mifare-classic-1k' });
    expect(classic.type).toBe('mifare-classic');
    expect(classic.uid).toHaveLength(4);
    expect(toHex(classic.atqa)).toBe('0004');
    expect(classic.sak).toBe(0x08);

    const ntag = new SimulatedUidTag({ label: 'sticker', model: 'ntag213' });
    expect(ntag.type).toBe('ntag21x');
    expect(ntag.uid).toHaveLength(7);
    expect(ntag.uid[0]).toBe(0x04);
    expect(toHex(ntag.atqa)).toBe('0044');
    expect(ntag.sak).toBe(0x00);
    expect('ats' in ntag && ntag.ats !== undefined).toBe(false);
  });

  it('answers no APDU and round-trips its state', () => {
    const tag = new SimulatedUidTag({ label: 'gym', model: 'mifare-classic-1k', uid: h('DEADBEEF') });
    expect(sw(tag.transceive(selectFidoApdu()).response)).toBe('6d00');
    const restored = restoreSimulatedCard(JSON.parse(JSON.stringify(tag.toState())));
    expect(restored).toBeInstanceOf(SimulatedUidTag);
    expect(toHex(restored.uid)).toBe('deadbeef');
    expect(restored.sak).toBe(0x08);
    expect(() => new SimulatedUidTag({ label: 'x', model: 'ntag213', uid: h('01020304') })).toThrow(
      AgentError,
    );
    expect(() => restoreSimulatedCard({ ...tag.toState(), uid: '0102030405060708' })).toThrow(/uid/);
    expect(() => restoreSimulatedCard({ ...tag.toState(), model: 'desfire' })).toThrow(AgentError);
    expect(() => restoreSimulatedCard({ kind: 'smartphone' })).toThrow(AgentError);
    expect(() => restoreSimulatedCard('fido-u2f')).toThrow(AgentError);
  });
});

/** A frame answer as text: hex data, `ack`/`nak N`, or `silent → state`. */
function frameAnswer(tag: SimulatedUidTag, frame: string): string {
  const a = tag.transceiveFrame(h(frame.replace(/\s+/g, '')));
  if (a.kind === 'data') return toHex(a.data);
  if (a.kind === 'nibble') return a.value === 0x0a ? 'ack' : `nak ${a.value}`;
  return `silent → ${a.after}`;
}

describe('simulated NTAG213: a Type 2 tag (NTAG213/215/216 datasheet command set)', () => {
  const uid = '04a1b2c3d4e5f6';
  const page0to3 = '04a1b29f c3d4e5f6 04480000 e1101200'.replace(/\s+/g, '');
  const rows: readonly { name: string; exchange: readonly [string, string][] }[] = [
    {
      name: 'READ gives four pages: UID with BCC0 (88^04^a1^b2) and BCC1, lock bytes, the NDEF CC',
      exchange: [
        ['30 00', page0to3],
        ['30 04', `0300fe00${'00'.repeat(12)}`],
      ],
    },
    {
      name: 'READ rolls over past the last page; PWD and PACK read as zeros; past the end is a NAK',
      exchange: [
        ['30 2a', `00050000${'00'.repeat(8)}04a1b29f`],
        ['30 2d', 'nak 0'],
        ['30 ff', 'nak 0'],
      ],
    },
    {
      name: 'FAST_READ gives pages start..end; a reversed or too long range is a NAK',
      exchange: [
        ['3a 00 01', '04a1b29fc3d4e5f6'],
        ['3a 29 29', '040000ff'],
        ['3a 05 04', 'nak 0'],
        ['3a 00 2d', 'nak 0'],
      ],
    },
    {
      name: 'GET_VERSION names an NTAG213',
      exchange: [['60', '0004040201000f03']],
    },
    {
      name: 'WRITE takes user pages (ACK), not the UID, CC or configuration pages (NAK)',
      exchange: [
        ['a2 04 d1010254', 'ack'],
        ['30 04', `d1010254${'00'.repeat(12)}`],
        ['a2 27 01020304', 'ack'],
        ['a2 03 ffffffff', 'nak 0'],
        ['a2 00 00000000', 'nak 0'],
        ['a2 29 000000 00', 'nak 0'],
        ['30 00', page0to3],
      ],
    },
    {
      name: 'COMPATIBILITY_WRITE: the address (ACK), then 16 bytes of which 4 are written (ACK)',
      exchange: [
        ['a0 05', 'ack'],
        [`0a0b0c0d${'ee'.repeat(12)}`, 'ack'],
        ['30 05', `0a0b0c0d${'00'.repeat(12)}`],
        ['a0 02', 'nak 0'],
        ['a0 06', 'ack'],
        ['0102', 'nak 0'],
      ],
    },
    {
      name: 'HLTA halts it; malformed and unknown frames send it back to IDLE without an answer',
      exchange: [
        ['50 00', 'silent → halt'],
        ['30', 'silent → idle'],
        ['30 00 00', 'silent → idle'],
        ['1b ffffffff', 'silent → idle'],
        ['60 00', 'silent → idle'],
      ],
    },
  ];

  it.each(rows)('$name', ({ exchange }) => {
    const tag = new SimulatedUidTag({ label: 'sticker', model: 'ntag213', uid: h(uid) });
    for (const [sent, expected] of exchange) expect(frameAnswer(tag, sent), sent).toBe(expected);
  });

  it('a MIFARE Classic answers HLTA and an authentication nonce, and halts on what follows it', () => {
    const tag = new SimulatedUidTag({ label: 'gym', model: 'mifare-classic-1k', uid: h('deadbeef') });
    expect(frameAnswer(tag, '50 00')).toBe('silent → halt');
    expect(frameAnswer(tag, '30 00')).toBe('silent → idle');
    expect(frameAnswer(tag, '60 04')).toMatch(/^[0-9a-f]{8}$/);
    expect(frameAnswer(tag, '0102030405060708')).toBe('silent → halt');
    expect(frameAnswer(tag, '61 04')).toMatch(/^[0-9a-f]{8}$/);
    tag.reset();
    expect(frameAnswer(tag, '50 00')).toBe('silent → halt');
  });
});

describe('simulated FIDO U2F key, ISO 7816 behaviour', () => {
  it('answers only after SELECT, and only to its own AID', () => {
    const card = new SimulatedFidoU2fKey({ label: 'k' });
    const register = encodeCommand(registerCommand(tapChallenge(), appParam));
    expect(sw(card.transceive(register).response)).toBe('6d00');
    expect(sw(card.transceive(h('00A4040007A000000527210100')).response)).toBe('6a82');
    const selected = parseResponse(card.transceive(selectFidoApdu()).response);
    expect(new TextDecoder().decode(selected.data)).toBe('U2F_V2');
    expect(toHex(card.transceive(h('0003000000')).response)).toBe(
      `${toHex(new TextEncoder().encode('U2F_V2'))}9000`,
    );
    expect(sw(card.transceive(h('8003000000')).response)).toBe('6e00');
    expect(sw(card.transceive(h('0009000000')).response)).toBe('6d00');
    expect(sw(card.transceive(h('00C0000000')).response)).toBe('6985'); // nothing pending
    expect(sw(card.transceive(h('00010000')).response)).toBe('6700');
    expect(sw(card.transceive(h('01')).response)).toBe('6700');
  });

  it('honours a small Le with 61XX parts and drops pending output on a new command', () => {
    const card = new SimulatedFidoU2fKey({ label: 'k' });
    card.transceive(selectFidoApdu());
    const first = card.transceive(
      encodeCommand({ ...registerCommand(tapChallenge(), appParam), le: 100 }),
    ).response;
    expect(first).toHaveLength(102);
    expect(first[100]).toBe(0x61);
    let collected = first.subarray(0, 100);
    let status = first[101] ?? 0;
    for (let guard = 0; guard < 20; guard++) {
      const next = card.transceive(encodeCommand({ cla: 0, ins: 0xc0, p1: 0, p2: 0, le: 100 })).response;
      collected = concatBytes(collected, next.subarray(0, next.length - 2));
      status = next[next.length - 2] ?? 0;
      if (status === 0x90) break;
      expect(status).toBe(0x61);
    }
    expect(status).toBe(0x90);
    expect(collected[0]).toBe(0x05);
    expect(collected.length).toBeGreaterThan(500);

    const again = card.transceive(
      encodeCommand({ ...registerCommand(tapChallenge(), appParam), le: 100 }),
    ).response;
    expect(again[100]).toBe(0x61);
    card.transceive(selectFidoApdu());
    expect(sw(card.transceive(h('00C0000000')).response)).toBe('6985');
  });

  it('answers an extended-length request in one piece', () => {
    const card = new SimulatedFidoU2fKey({ label: 'k' });
    card.transceive(selectFidoApdu());
    const apdu = encodeCommand(
      { ...registerCommand(tapChallenge(), appParam), le: 65536 },
      { extended: true },
    );
    const response = parseResponse(card.transceive(apdu).response);
    expect(response.sw).toBe(0x9000);
    expect(response.data.length).toBeGreaterThan(500);
  });

  it('signs without presence on P1=08 (flags 00), which the host refuses by default', async () => {
    const card = new SimulatedFidoU2fKey({ label: 'k' });
    const reg = await u2fRegister(over(card), { appParam, challenge: tapChallenge() });
    if (!reg.ok) throw reg.error;
    const apdu = encodeCommand(authenticateCommand(0x08, tapChallenge(), appParam, reg.value.keyHandle));
    const answer = parseResponse(card.transceive(apdu).response);
    expect(answer.sw).toBe(0x9000);
    expect(parseAuthenticateResponse(answer.data).flags).toBe(0);
    expect(
      sw(
        card.transceive(
          encodeCommand(authenticateCommand(0x05, tapChallenge(), appParam, reg.value.keyHandle)),
        ).response,
      ),
    ).toBe('6a86');
    const scripted: Transceive = async (a) =>
      a[1] === 0x02 ? concatBytes(answer.data, h('9000')) : h('5532465f56329000');
    const challengeOfAnswer = await u2fAuthenticate(scripted, {
      appParam,
      challenge: tapChallenge(),
      keyHandle: reg.value.keyHandle,
      publicKey: reg.value.publicKey,
    });
    expect(challengeOfAnswer.ok ? 'ok' : challengeOfAnswer.error.code).toBe('bad_proof'); // not our challenge
  });

  it('makes DER signatures with unnormalised S, like real keys', async () => {
    const card = new SimulatedFidoU2fKey({ label: 'k' });
    const reg = await u2fRegister(over(card), { appParam, challenge: tapChallenge() });
    if (!reg.ok) throw reg.error;
    let high = 0;
    for (let i = 0; i < 60; i++) {
      const apdu = encodeCommand(authenticateCommand(0x03, tapChallenge(), appParam, reg.value.keyHandle));
      const { signature } = parseAuthenticateResponse(parseResponse(card.transceive(apdu).response).data);
      if (p256.Signature.fromBytes(signature, 'der').hasHighS()) high++;
    }
    expect(high).toBeGreaterThan(5);
    expect(high).toBeLessThan(55);
  });

  it('models 30–90 ms signing by default', () => {
    expect(DEFAULT_FIDO_TIMING.signMs).toBeGreaterThanOrEqual(30);
    expect(DEFAULT_FIDO_TIMING.signMs).toBeLessThanOrEqual(90);
    expect(DEFAULT_FIDO_TIMING.registerMs).toBeGreaterThanOrEqual(30);
    expect(DEFAULT_FIDO_TIMING.registerMs).toBeLessThanOrEqual(90);
  });

  it('forgets its session on reset but keeps its counter', async () => {
    const card = new SimulatedFidoU2fKey({ label: 'k', counter: 9 });
    const reg = await u2fRegister(over(card), { appParam, challenge: tapChallenge() });
    if (!reg.ok) throw reg.error;
    card.reset();
    const apdu = encodeCommand(authenticateCommand(0x03, tapChallenge(), appParam, reg.value.keyHandle));
    expect(sw(card.transceive(apdu).response)).toBe('6d00');
    card.transceive(selectFidoApdu());
    expect(sw(card.transceive(apdu).response)).toBe('9000');
    expect(card.counter).toBe(10);
  });
});
