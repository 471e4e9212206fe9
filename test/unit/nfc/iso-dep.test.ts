import { describe, expect, it } from 'vitest';
import { IsoDepCard, type IsoDepStep } from '../../../src/sim/cards/iso-dep.js';

function hex(s: string): Uint8Array {
  return Uint8Array.from(s.replace(/\s+/g, '').match(/../g) ?? [], (b) => Number.parseInt(b, 16));
}

function toHex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

/** What the card sends back for `block`, running an APDU as "echo ‖ 9000". */
function answer(card: IsoDepCard, block: string, apdus: string[] = []): string {
  const step: IsoDepStep = card.receive(hex(block));
  switch (step.kind) {
    case 'silent':
      return 'silent';
    case 'reply':
      return toHex(step.block);
    case 'deselect':
      return `deselect:${toHex(step.block)}`;
    case 'apdu':
      apdus.push(toHex(step.apdu));
      return toHex(step.reply(Uint8Array.of(...step.apdu, 0x90, 0x00)));
  }
}

/**
 * The card side of ISO/IEC 14443-4 block exchanges, as libnfc and a PCD drive it through
 * InCommunicateThru. Each row: blocks sent in order after an activation, and the answers.
 */
describe('ISO-DEP card block layer', () => {
  const rows: readonly { name: string; exchange: readonly [string, string][]; maxInf?: number }[] = [
    {
      name: "libnfc's presence check (R(NAK), block 0) right after activation gets R(ACK), block 1",
      exchange: [
        ['b2', 'a3'],
        ['b2', 'a3'],
        ['b3', 'a3'], // the current number and nothing sent yet: R(ACK) again
      ],
    },
    {
      name: 'an I-block carries an APDU; the answer comes back with the same block number',
      exchange: [
        ['02 00a4', '02 00a49000'],
        ['03 00b0', '03 00b09000'],
      ],
    },
    {
      name: 'R(NAK) with the current block number gets the last I-block again, not a new APDU run',
      exchange: [
        ['02 0001', '02 00019000'],
        ['b2', '02 00019000'],
        ['b3', 'a2'], // the other number: R(ACK) with the current one
        ['a2', '02 00019000'], // R(ACK), current number: retransmission as well
      ],
    },
    {
      name: 'the host chains an APDU: R(ACK) for each chained part, one APDU at the end',
      exchange: [
        ['12 0001', 'a2'],
        ['13 0203', 'a3'],
        ['b3', 'a3'], // a lost R(ACK) is sent again
        ['02 04', '02 0001020304 9000'],
      ],
    },
    {
      name: 'the card chains a long answer; the host acknowledges each part',
      maxInf: 4,
      exchange: [
        ['02 00112233', '12 00112233'],
        ['a3', '03 9000'],
        ['a3', '03 9000'], // the same R(ACK) again: the last part again
      ],
    },
    {
      name: 'CID 0 is answered with its CID; another CID and NAD are not for this card',
      exchange: [
        ['0a00 0001', '0a00 00019000'],
        ['0a01 0001', 'silent'],
        ['06 00 0001', 'silent'],
        ['ba00', '0a00 00019000'],
      ],
    },
    {
      name: 'S(DESELECT) is answered and ends the session; S(WTX) and non-blocks are ignored',
      exchange: [
        ['f2 01', 'silent'],
        ['30 00', 'silent'], // a Type 2 READ: not a block
        ['', 'silent'],
        ['ca00', 'deselect:ca00'],
        ['c2', 'deselect:c2'],
      ],
    },
  ];

  it.each(rows)('$name', ({ exchange, maxInf }) => {
    const card = new IsoDepCard(maxInf);
    for (const [sent, expected] of exchange)
      expect(answer(card, sent), sent).toBe(expected.replace(/\s+/g, ''));
  });

  it('runs each APDU once, whatever the retransmissions', () => {
    const card = new IsoDepCard();
    const apdus: string[] = [];
    answer(card, '02 0001', apdus);
    for (const probe of ['b2', 'b2', 'a2', 'b3']) answer(card, probe, apdus);
    expect(apdus).toEqual(['0001']);
  });

  it("follows the chip's own exchanges (InDataExchange): the next R(NAK) of that number repeats its answer", () => {
    const card = new IsoDepCard();
    card.chipExchanged(hex('6a82'));
    expect(answer(card, 'b2')).toBe('026a82');
    expect(answer(card, 'b3')).toBe('a2');
    card.chipExchanged(hex('9000'));
    expect(answer(card, 'b3')).toBe('039000');
    card.reset();
    expect(answer(card, 'b2')).toBe('a3');
  });

  it('drops an APDU chained past the largest extended APDU', () => {
    const card = new IsoDepCard();
    const part = `12${'00'.repeat(250)}`;
    let last = '';
    for (let i = 0; i < 263; i++) last = answer(card, i % 2 === 0 ? part : `13${'00'.repeat(250)}`);
    expect(last).toBe('silent');
  });
});
