import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import { fromHex, toHex } from '../../../src/crypto/encoding.js';
import { parseResponse, type Transceive } from '../../../src/nfc/apdu.js';
import {
  authenticateCard,
  authenticateEv2First,
  authFirstAnswer,
  authFirstCommand,
  authFirstComplete,
  changeKey,
  changeKeyCommand,
  changeKeyResult,
  commandIv,
  deriveSessionKeys,
  getCardUid,
  NTAG424_FACTORY_KEY,
  NTAG424_TAP_KEY_NO,
  Ntag424Session,
  ntag424CardKey,
  personaliseCard,
  personaliseForSite,
  selectNdefApplicationApdu,
} from '../../../src/nfc/ntag424.js';
import { SimulatedNtag424 } from '../../../src/sim/cards/ntag424.js';
import { restoreSimulatedCard } from '../../../src/sim/cards/state.js';
import { seededRandom } from '../../helpers/seeded-random.js';

const h = fromHex;
const hex = (b: Uint8Array) => toHex(b).toUpperCase();

// AN12196 §5.6 AuthenticateEV2First with key 0 = 16 zero bytes
const AN_R1 = h('A04C124213C186F22399D33AC2A30215');
const AN_RND_B = h('B9E2FC789B64BF237CCCAA20EC7E6E48');
const AN_RND_A = h('13C5DB8A5930439FC3DEF9A4C675360F');
const AN_C2 = '35C3E05A752E0144BAC0DE51C1F22C56B34408A23D8AEA266CAB947EA8E0118D';
const AN_R2 = h('3FA64DB5446D1F34CD6EA311167F5E4985B89690C04A05F17FA7AB2F08120663');

function fixedRandom(...values: Uint8Array[]): (length: number) => Uint8Array {
  const queue = [...values];
  return (length) => {
    const next = queue.shift();
    if (!next || next.length !== length) throw new Error(`test random: no ${length}-byte value queued`);
    return next.slice();
  };
}

function over(card: SimulatedNtag424, log?: Uint8Array[][]): Transceive {
  return async (apdu) => {
    const { response } = card.transceive(apdu);
    log?.push([apdu, response]);
    return response;
  };
}

const SITE_KEY = h('00112233445566778899AABBCCDDEEFF');
const UID = h('04A1B2C3D4E5F6');

describe('NTAG 424 DNA APDUs and AN12196 vectors', () => {
  it('builds the ISO select and EV2First command', () => {
    expect(hex(selectNdefApplicationApdu())).toBe('00A4040C07D276000085010100');
    expect(hex(authFirstCommand(0))).toBe('9071000002000000');
    expect(hex(authFirstCommand(3))).toBe('9071000002030000');
    expect(() => authFirstCommand(5)).toThrow(AgentError);
  });

  it('answers R1 with the AN12196 C2 and opens the session of the vector', () => {
    const challenge = authFirstAnswer(NTAG424_FACTORY_KEY, parseResponse(concat(AN_R1, h('91AF'))), AN_RND_A);
    expect(hex(challenge.rndB)).toBe(hex(AN_RND_B));
    expect(hex(challenge.apdu)).toBe(`90AF000020${AN_C2}00`);
    const session = authFirstComplete(
      NTAG424_FACTORY_KEY,
      0,
      challenge,
      parseResponse(concat(AN_R2, h('9100'))),
    );
    expect(hex(session.ti)).toBe('9D00C4DF');
    expect(session.cmdCtr).toBe(0);
    expect(hex(session.pdCap2)).toBe('000000000000');
    const keys = deriveSessionKeys(NTAG424_FACTORY_KEY, AN_RND_A, AN_RND_B);
    expect(hex(keys.sv1)).toBe('A55A0001008013C56268A548D8FBBF237CCCAA20EC7E6E48C3DEF9A4C675360F');
    expect(hex(keys.sv2)).toBe('5AA50001008013C56268A548D8FBBF237CCCAA20EC7E6E48C3DEF9A4C675360F');
    expect(hex(keys.encKey)).toBe('1309C877509E5A215007FF0ED19CA564');
    expect(hex(keys.macKey)).toBe('4C6626F5E72EA694202139295C7A7FC7');
  });

  it('produces the MAC-mode GetFileSettings command of AN12196 Table 7', () => {
    const session = new Ntag424Session({
      keyNo: 0,
      ti: h('7A21085E'),
      encKey: new Uint8Array(16),
      macKey: h('8248134A386E86EB7FAF54A52E536CB6'),
    });
    expect(hex(session.command(0xf5, h('02'), new Uint8Array(0), 'mac'))).toBe(
      '90F5000009026597A457C8CD442C00',
    );
  });

  it('encrypts, MACs and checks the full-mode WriteData of AN12196 Table 17', () => {
    const session = new Ntag424Session({
      keyNo: 0,
      ti: h('9D00C4DF'),
      encKey: h('1309C877509E5A215007FF0ED19CA564'),
      macKey: h('4C6626F5E72EA694202139295C7A7FC7'),
    });
    const data = new Uint8Array(128);
    data.set(
      h(
        '0051D1014D550463686F6F73652E75726C2E636F6D2F6E7461673432343F653D' +
          '3030303030303030303030303030303030303030303030303030303030303030' +
          '26633D30303030303030303030303030303030',
      ),
    );
    const apdu = session.command(0x8d, h('02000000800000'), data, 'full');
    expect(hex(apdu)).toBe(
      '908D00009F02000000800000' +
        '421C73A27D827658AF481FDFF20A5025B559D0E3AA21E58D347F343CFFC768BF' +
        'E596C706BC00F2176781D4B0242642A0FF5A42C461AAF894D9A1284B8C76BCFA' +
        '658ACD40555D362E08DB15CF421B51283F9064BCBE20E96CAE545B407C9D651A' +
        '3315B27373772E5DA2367D2064AE054AF996C6F1F669170FA88CE8C4E3A4A7BB' +
        'BEF0FD971FF532C3A802AF745660F2B4D1D9A8499661EBF300',
    );
    expect(session.response(parseResponse(h('FC222E5F7A5424529100')), 'mac', 'write').length).toBe(0);
    expect(session.cmdCtr).toBe(1);
  });

  const changeSession = () =>
    new Ntag424Session({
      keyNo: 0,
      ti: h('7614281A'),
      encKey: h('4CF3CB41A22583A61E89B158D252FC53'),
      macKey: h('5529860B2FC5FB6154B7F28361D30BF9'),
      cmdCtr: 2,
    });

  it('changes key 2 exactly as AN12196 Table 25, then key 0 as Table 26', () => {
    const session = changeSession();
    expect(hex(commandIv(h('4CF3CB41A22583A61E89B158D252FC53'), session.ti, 2))).toBe(
      '307EDE1814707F30CFE603DD6CA62353',
    );
    const change2 = {
      keyNo: 2,
      newKey: h('F3847D627727ED3BC9C4CC050489B966'),
      version: 1,
      oldKey: new Uint8Array(16),
    };
    expect(hex(changeKeyCommand(session, change2))).toBe(
      '90C400002902' +
        '2CF362B7BF4311FF3BE1DAA295E8C68DE09050560D19B9E16C2393AE9CD1FAC7' +
        '5D0CE20BCD1D06E600',
    );
    changeKeyResult(session, 2, parseResponse(h('203BB55D1089D5879100')));
    expect(session.cmdCtr).toBe(3);

    const change0 = { keyNo: 0, newKey: h('5004BF991F408672B1EF00F08F9E8647'), version: 1 };
    expect(hex(changeKeyCommand(session, change0))).toBe(
      '90C400002900' +
        'C0EB4DEEFEDDF0B513A03A95A75491818580503190D4D05053FF75668A01D6FD' +
        'A6610234BDED643200',
    );
    changeKeyResult(session, 0, parseResponse(h('9100')));
    expect(session.closed).toBe(true);
    expect(() => session.command(0x51, new Uint8Array(0), new Uint8Array(0), 'full')).toThrow(AgentError);
  });

  it('rejects a wrong response MAC as bad_proof and closes the session', () => {
    const session = changeSession();
    changeKeyCommand(session, { keyNo: 2, newKey: new Uint8Array(16).fill(1), oldKey: new Uint8Array(16) });
    const err = catchError(() => changeKeyResult(session, 2, parseResponse(h('203BB55D1089D5869100'))));
    expect(err.code).toBe('bad_proof');
    expect(session.closed).toBe(true);
  });

  it('needs the old key to change another key', () => {
    const err = catchError(() => changeKeyCommand(changeSession(), { keyNo: 3, newKey: new Uint8Array(16) }));
    expect(err.code).toBe('bad_arguments');
  });
});

describe('simulated NTAG 424 against the host code', () => {
  it('replays the AN12196 exchange byte for byte from the card side', async () => {
    const card = new SimulatedNtag424({
      label: 'an12196',
      uid: UID,
      random: fixedRandom(AN_RND_B, h('9D00C4DF')),
    });
    const log: Uint8Array[][] = [];
    const transceive = over(card, log);
    await transceive(selectNdefApplicationApdu());
    const session = await authenticateEv2First(transceive, NTAG424_FACTORY_KEY, 0, {
      random: fixedRandom(AN_RND_A),
    });
    expect(hex(session.ti)).toBe('9D00C4DF');
    expect(log.map(([c, r]) => [hex(c ?? new Uint8Array()), hex(r ?? new Uint8Array())])).toEqual([
      ['00A4040C07D276000085010100', '9000'],
      ['9071000002000000', `${hex(AN_R1)}91AF`],
      [`90AF000020${AN_C2}00`, `${hex(AN_R2)}9100`],
    ]);
  });

  it('authenticates a card holding its diversified key and reads its UID in full mode', async () => {
    const card = new SimulatedNtag424({
      label: 'c',
      uid: UID,
      keys: keysWith(1, ntag424CardKey(SITE_KEY, UID, 1)),
    });
    const result = await authenticateCard(over(card), SITE_KEY, UID, 1);
    if (!result.ok) throw result.error;
    expect(result.value.keyNo).toBe(1);
    const uid = await getCardUid(over(card), result.value.session);
    expect(hex(uid)).toBe(hex(UID));
    expect(result.value.session.cmdCtr).toBe(1);
  });

  it('diversifies per card and per key number', () => {
    const a = ntag424CardKey(SITE_KEY, UID, 0);
    expect(a.length).toBe(16);
    expect(hex(a)).not.toBe(hex(ntag424CardKey(SITE_KEY, UID, 1)));
    expect(hex(a)).not.toBe(hex(ntag424CardKey(SITE_KEY, h('04A1B2C3D4E5F7'), 0)));
    expect(hex(a)).not.toBe(hex(ntag424CardKey(h('00112233445566778899AABBCCDDEEFE'), UID, 0)));
    expect(catchError(() => ntag424CardKey(SITE_KEY, h('0102'), 0)).code).toBe('malformed');
  });

  it('denies a wrong key with bad_proof, then the card delays (91AD → rate_limited) until time passes', async () => {
    let now = 1_000_000;
    const card = new SimulatedNtag424({
      label: 'c',
      uid: UID,
      keys: keysWith(1, ntag424CardKey(SITE_KEY, UID, 1)),
      delayAfterFailures: 3,
      delayMs: 5000,
      now: () => now,
    });
    const wrongSite = new Uint8Array(16).fill(7);
    for (let i = 0; i < 3; i++) {
      const r = await authenticateCard(over(card), wrongSite, UID, 1);
      expect(r.ok ? 'ok' : r.error.code).toBe('bad_proof');
    }
    expect(card.failedAuths).toBe(3);
    const delayed = await authenticateCard(over(card), SITE_KEY, UID, 1);
    expect(delayed.ok ? 'ok' : delayed.error.code).toBe('rate_limited');
    expect(delayed.ok ? undefined : delayed.error.details.sw).toBe('91AD');
    now += 5001;
    const after = await authenticateCard(over(card), SITE_KEY, UID, 1);
    expect(after.ok).toBe(true);
    expect(card.failedAuths).toBe(0);
  });

  it('personalises a factory card for the site, after which only the diversified keys work', async () => {
    const card = new SimulatedNtag424({ label: 'new', uid: UID });
    const result = await personaliseForSite(over(card), SITE_KEY, UID, { keyVersion: 2 });
    if (!result.ok) throw result.error;
    expect(result.value).toEqual({ alreadyPersonalised: false, changedKeys: [NTAG424_TAP_KEY_NO, 0] });
    expect(card.holdsKey(0, ntag424CardKey(SITE_KEY, UID, 0))).toBe(true);
    expect(card.holdsKey(1, ntag424CardKey(SITE_KEY, UID, 1))).toBe(true);
    expect(card.holdsKey(2, NTAG424_FACTORY_KEY)).toBe(true);
    expect(card.keyVersion(0)).toBe(2);

    const tap = await authenticateCard(over(card), SITE_KEY, UID);
    expect(tap.ok).toBe(true);
    const factory = await runAuth(card, NTAG424_FACTORY_KEY, 0);
    expect(factory).toBe('bad_proof');

    const again = await personaliseForSite(over(card), SITE_KEY, UID);
    if (!again.ok) throw again.error;
    expect(again.value).toEqual({ alreadyPersonalised: true, changedKeys: [] });
  });

  it('finishes a personalisation torn after the tap key was written', async () => {
    const card = new SimulatedNtag424({
      label: 'torn',
      uid: UID,
      keys: keysWith(1, ntag424CardKey(SITE_KEY, UID, 1)),
    });
    const result = await personaliseForSite(over(card), SITE_KEY, UID);
    if (!result.ok) throw result.error;
    expect(result.value.changedKeys).toEqual([1, 0]);
    expect(card.holdsKey(0, ntag424CardKey(SITE_KEY, UID, 0))).toBe(true);
    expect((await authenticateCard(over(card), SITE_KEY, UID)).ok).toBe(true);
  });

  it('refuses to personalise a card that belongs to someone else', async () => {
    const foreign = new Uint8Array(16).fill(0x42);
    const card = new SimulatedNtag424({ label: 'foreign', uid: UID, keys: keysWith(0, foreign) });
    const result = await personaliseForSite(over(card), SITE_KEY, UID);
    expect(result.ok ? 'ok' : result.error.code).toBe('bad_proof');
    expect(card.holdsKey(0, foreign)).toBe(true);
  });

  it('personaliseCard changes key 0 alone and verifies with the new key', async () => {
    const card = new SimulatedNtag424({ label: 'k0', uid: UID });
    const newKey = new Uint8Array(randomBytes(16));
    const result = await personaliseCard(over(card), NTAG424_FACTORY_KEY, newKey);
    if (!result.ok) throw result.error;
    expect(result.value.changedKeys).toEqual([0]);
    expect(card.holdsKey(0, newKey)).toBe(true);
  });

  it('changes another key and keeps counting CmdCtr in the same session', async () => {
    const card = new SimulatedNtag424({ label: 'k', uid: UID });
    const t = over(card);
    await t(selectNdefApplicationApdu());
    const session = await authenticateEv2First(t, NTAG424_FACTORY_KEY, 0);
    await changeKey(t, session, {
      keyNo: 3,
      newKey: h('F3847D627727ED3BC9C4CC050489B966'),
      oldKey: NTAG424_FACTORY_KEY,
    });
    await changeKey(t, session, {
      keyNo: 4,
      newKey: h('00000000000000000000000000000001'),
      oldKey: NTAG424_FACTORY_KEY,
    });
    expect(session.cmdCtr).toBe(2);
    expect(hex(await getCardUid(t, session))).toBe(hex(UID));
    expect(session.cmdCtr).toBe(3);
    expect(card.holdsKey(3, h('F3847D627727ED3BC9C4CC050489B966'))).toBe(true);
    // a wrong old key breaks the CRC check on the card: integrity error, bad_proof, session gone
    const err = await changeKey(t, session, {
      keyNo: 2,
      newKey: new Uint8Array(16).fill(9),
      oldKey: h('11'.repeat(16)),
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
    expect((err as AgentError).code).toBe('bad_proof');
    expect(card.holdsKey(2, NTAG424_FACTORY_KEY)).toBe(true);
  });

  it('answers the card errors the host maps to codes', () => {
    const card = new SimulatedNtag424({ label: 'e', uid: UID });
    const sw = (apdu: string) => hex(card.transceive(h(apdu)).response);
    expect(sw('9071000002000000')).toBe('919D'); // not selected
    expect(sw('00A4040C07D276000085010200')).toBe('6A82');
    expect(sw('00A4040C07D276000085010100')).toBe('9000');
    expect(sw('9071000002050000')).toBe('9140');
    expect(sw('90710000010000')).toBe('917E');
    expect(sw('9060000000')).toBe('911C');
    expect(sw('90AF00000100')).toBe('911C'); // nothing pending
    expect(sw(`90C400002900${'00'.repeat(40)}00`)).toBe('919D'); // not authenticated
    expect(sw('80CA000000')).toBe('6E00');
    expect(sw('00B0000000')).toBe('6D00');
    expect(sw('00')).toBe('6700');
  });
});

describe('coded failures on bad answers', () => {
  const cases: [string, (apdu: Uint8Array) => Uint8Array, string][] = [
    ['an empty answer', () => new Uint8Array(0), 'malformed'],
    ['one byte', () => h('91'), 'malformed'],
    ['no NDEF application', () => h('6A82'), 'unsupported'],
    ['a card that is not an NTAG 424', (a) => (a[0] === 0 ? h('9000') : h('911C')), 'unsupported'],
    ['a short R1', (a) => (a[0] === 0 ? h('9000') : h('A04C124213C186F22399D33AC2A30291AF')), 'malformed'],
    ['R1 with a 9100 status', (a) => (a[0] === 0 ? h('9000') : concat(AN_R1, h('9100'))), 'unsupported'],
    [
      'a short R2',
      (a) => (a[0] === 0 ? h('9000') : a[1] === 0x71 ? concat(AN_R1, h('91AF')) : h('3FA69100')),
      'malformed',
    ],
    [
      'an R2 that does not return RndA',
      (a) => (a[0] === 0 ? h('9000') : a[1] === 0x71 ? concat(AN_R1, h('91AF')) : concat(AN_R2, h('9100'))),
      'bad_proof',
    ],
    ['auth delay', (a) => (a[0] === 0 ? h('9000') : h('91AD')), 'rate_limited'],
    ['permission denied', (a) => (a[0] === 0 ? h('9000') : h('919D')), 'unauthorized'],
    ['no such key', (a) => (a[0] === 0 ? h('9000') : h('9140')), 'unsupported'],
    ['a length error', (a) => (a[0] === 0 ? h('9000') : h('917E')), 'malformed'],
  ];

  it.each(cases)('%s', async (_name, answer, code) => {
    const result = await authenticateCard(async (apdu) => answer(apdu), SITE_KEY, UID, 1, {
      random: () => AN_RND_A.slice(), // the R2 vector carries this RndA, not rotl of it for another key
    });
    expect(result.ok).toBe(false);
    if (!result.ok) {
      expect(result.error).toBeInstanceOf(AgentError);
      expect(result.error.code).toBe(code);
    }
  });

  it('passes transport errors through as codes', async () => {
    const removed = await authenticateCard(
      async () => {
        throw new AgentError('card_removed');
      },
      SITE_KEY,
      UID,
    );
    expect(removed.ok ? 'ok' : removed.error.code).toBe('card_removed');
    const broken = await authenticateCard(
      async () => {
        throw new TypeError('port closed');
      },
      SITE_KEY,
      UID,
    );
    expect(broken.ok ? 'ok' : broken.error.code).toBe('reader_error');
  });

  it('never accepts an exchange in which one answer byte was changed', async () => {
    const key = ntag424CardKey(SITE_KEY, UID, 1);
    const random = seededRandom();
    for (let i = 0; i < 300; i++) {
      const card = new SimulatedNtag424({
        label: 'f',
        uid: UID,
        keys: keysWith(1, key),
        delayAfterFailures: 1e9,
      });
      const target = i % 3; // which of select / R1 / R2 to damage
      let index = 0;
      const transceive: Transceive = async (apdu) => {
        const response = card.transceive(apdu).response.slice();
        if (index++ === target) {
          const at = random.int(response.length);
          response[at] = (response[at] ?? 0) ^ (1 + random.int(255));
        }
        return response;
      };
      const result = await authenticateCard(transceive, SITE_KEY, UID, 1);
      expect(result.ok).toBe(false);
      if (!result.ok) expect(result.error).toBeInstanceOf(AgentError);
    }
  });

  it('never accepts random answers', async () => {
    const random = seededRandom();
    for (let i = 0; i < 300; i++) {
      const result = await authenticateCard(async () => random.bytes(random.int(40)), SITE_KEY, UID, 1);
      expect(result.ok).toBe(false);
      if (!result.ok) expect(result.error).toBeInstanceOf(AgentError);
    }
  });
});

describe('simulated NTAG 424 state', () => {
  it('round-trips through JSON and keeps its keys', async () => {
    const card = new SimulatedNtag424({ label: 'persist', uid: UID });
    const done = await personaliseForSite(over(card), SITE_KEY, UID);
    expect(done.ok).toBe(true);
    const restored = restoreSimulatedCard(JSON.parse(JSON.stringify(card.toState())));
    expect(restored).toBeInstanceOf(SimulatedNtag424);
    expect((await authenticateCard(over(restored as SimulatedNtag424), SITE_KEY, UID)).ok).toBe(true);
  });

  it('rejects corrupt states with state_corrupt', () => {
    const good = new SimulatedNtag424({ label: 'x', uid: UID }).toState();
    for (const bad of [
      null,
      { ...good, kind: 'ntag999' },
      { ...good, uid: 'zz' },
      { ...good, keys: good.keys.slice(0, 4) },
      { ...good, keys: ['00', ...good.keys.slice(1)] },
      { ...good, keyVersions: [0, 0, 0, 0, 256] },
      { ...good, failedAuths: -1 },
      { ...good, label: '' },
    ]) {
      expect(catchError(() => restoreSimulatedCard(bad)).code).toBe('state_corrupt');
    }
  });
});

function keysWith(keyNo: number, key: Uint8Array): Uint8Array[] {
  const keys: Uint8Array[] = Array.from({ length: 5 }, () => new Uint8Array(16));
  keys[keyNo] = key;
  return keys;
}

async function runAuth(card: SimulatedNtag424, key: Uint8Array, keyNo: number): Promise<string> {
  const t = over(card);
  await t(selectNdefApplicationApdu());
  try {
    await authenticateEv2First(t, key, keyNo);
    return 'ok';
  } catch (err) {
    return err instanceof AgentError ? err.code : 'thrown';
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function catchError(fn: () => unknown): AgentError {
  try {
    fn();
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw err;
  }
  throw new Error('expected an AgentError');
}
