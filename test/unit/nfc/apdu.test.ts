import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import { fromHex, toHex } from '../../../src/crypto/encoding.js';
import {
  chainCommand,
  encodeCommand,
  encodeResponse,
  getResponseApdu,
  parseCommand,
  parseResponse,
  selectByAid,
  type Transceive,
  transmit,
} from '../../../src/nfc/apdu.js';

const hex = (b: Uint8Array) => toHex(b).toUpperCase();
const h = fromHex;

describe('command APDU encoding', () => {
  const head = { cla: 0x00, ins: 0x01, p1: 0x02, p2: 0x03 };

  it.each([
    ['case 1', {}, '00010203'],
    ['case 2 short, Le 256 as 00', { le: 256 }, '0001020300'],
    ['case 2 short, Le 16', { le: 16 }, '0001020310'],
    ['case 3 short', { data: h('AABB') }, '0001020302AABB'],
    ['case 4 short', { data: h('AABB'), le: 256 }, '0001020302AABB00'],
    ['case 2 extended, Le 65536', { le: 65536 }, '00010203000000'],
    ['case 2 extended, Le 300', { le: 300 }, '0001020300012C'],
    ['case 4 extended', { data: h('AA'), le: 1000 }, '00010203000001AA03E8'],
  ] as const)('%s', (_name, extra, expected) => {
    expect(hex(encodeCommand({ ...head, ...extra }))).toBe(expected);
    const parsed = parseCommand(h(expected));
    expect(parsed.le).toBe('le' in extra ? extra.le : undefined);
    expect(hex(parsed.data)).toBe('data' in extra ? hex(extra.data) : '');
  });

  it('switches to extended form for long data or on request', () => {
    const data = new Uint8Array(300).fill(0xee);
    const apdu = encodeCommand({ ...head, data, le: 256 });
    expect(hex(apdu.subarray(0, 7))).toBe('0001020300012C');
    expect(apdu.length).toBe(4 + 3 + 300 + 2);
    expect(parseCommand(apdu)).toMatchObject({ extended: true, le: 256 });
    expect(hex(encodeCommand({ ...head, data: h('01'), le: 2 }, { extended: true }))).toBe(
      '000102030000010100' + '02',
    );
  });

  it('rejects inconsistent command lengths as malformed', () => {
    for (const bad of ['000102', '0001020303AABB', '00010203000003AA', '000102030000']) {
      const err = (() => {
        try {
          parseCommand(h(bad));
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      expect(err).toBeInstanceOf(AgentError);
      expect((err as AgentError).code).toBe('malformed');
    }
  });

  it('builds SELECT and GET RESPONSE', () => {
    expect(hex(selectByAid(h('A0000006472F0001'), { le: 256 }))).toBe('00A4040008A0000006472F000100');
    expect(hex(selectByAid(h('D2760000850101'), { p2: 0x0c }))).toBe('00A4040C07D2760000850101');
    expect(hex(getResponseApdu())).toBe('00C0000000');
    expect(hex(getResponseApdu(0x41))).toBe('00C0000041');
  });

  it('chains long data with CLA | 10 on all but the last part', () => {
    const data = new Uint8Array(600).map((_, i) => i & 0xff);
    const parts = chainCommand({ cla: 0x00, ins: 0x02, p1: 0x03, p2: 0, data, le: 256 });
    expect(parts.map((p) => [p[0], p[4], p.length])).toEqual([
      [0x10, 255, 260],
      [0x10, 255, 260],
      [0x00, 90, 96],
    ]);
    expect(chainCommand({ cla: 0, ins: 1, p1: 0, p2: 0, data: new Uint8Array(10) })).toHaveLength(1);
  });
});

describe('response APDUs', () => {
  it('splits data and status word', () => {
    expect(parseResponse(h('01029000'))).toEqual({ data: h('0102'), sw1: 0x90, sw2: 0x00, sw: 0x9000 });
    expect(hex(encodeResponse(h('AA'), 0x6a82))).toBe('AA6A82');
    expect(() => parseResponse(h('90'))).toThrow(AgentError);
  });

  it('collects 61XX parts with GET RESPONSE and resends on 6CXX', async () => {
    const sent: string[] = [];
    const script: Record<string, string> = {
      '0001000000': '6C05',
      '0001000005': '0102036102',
      '00C0000002': '04056100',
      '00C0000000': '069000',
    };
    const transceive: Transceive = async (apdu) => {
      sent.push(hex(apdu));
      const answer = script[hex(apdu)];
      if (!answer) throw new Error(`unexpected ${hex(apdu)}`);
      return h(answer);
    };
    const r = await transmit(transceive, { cla: 0, ins: 1, p1: 0, p2: 0, le: 256 });
    expect(hex(r.data)).toBe('010203040506');
    expect(r.sw).toBe(0x9000);
    expect(sent).toEqual(['0001000000', '0001000005', '00C0000002', '00C0000000']);
  });

  it('bounds GET RESPONSE loops and sizes', async () => {
    const endless: Transceive = async () => h('AA6101');
    await expect(transmit(endless, { cla: 0, ins: 1, p1: 0, p2: 0, le: 256 })).rejects.toMatchObject({
      code: 'malformed',
    });
    const big: Transceive = async () => new Uint8Array(258).fill(0x61);
    await expect(
      transmit(big, { cla: 0, ins: 1, p1: 0, p2: 0, le: 256 }, { maxBytes: 1000 }),
    ).rejects.toMatchObject({
      code: 'frame_too_large',
    });
  });

  it('turns foreign transport errors into reader_error and keeps coded ones', async () => {
    await expect(
      transmit(
        async () => {
          throw new Error('boom');
        },
        { cla: 0, ins: 1, p1: 0, p2: 0 },
      ),
    ).rejects.toMatchObject({ code: 'reader_error' });
    await expect(
      transmit(
        async () => {
          throw new AgentError('timeout');
        },
        { cla: 0, ins: 1, p1: 0, p2: 0 },
      ),
    ).rejects.toMatchObject({ code: 'timeout' });
  });
});
