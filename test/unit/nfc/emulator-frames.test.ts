import { afterEach, describe, expect, it } from 'vitest';
import { CMD } from '../../../src/nfc/pn532/commands.js';
import { encodeFrame, FrameDecoder, TFI_HOST } from '../../../src/nfc/pn532/frame.js';
import type { ByteLink } from '../../../src/nfc/pn532/link.js';
import { SimulatedNtag424 } from '../../../src/sim/cards/ntag424.js';
import type { ApduAnswer, SimulatedCard } from '../../../src/sim/cards/types.js';
import { SimulatedUidTag } from '../../../src/sim/cards/uid-tag.js';
import { MemoryLinkPair } from '../../../src/sim/memory-link.js';
import { crcA, Pn532Emulator } from '../../../src/sim/pn532-emulator.js';

function hex(s: string): Uint8Array {
  return Uint8Array.from(s.replace(/\s+/g, '').match(/../g) ?? [], (b) => Number.parseInt(b, 16));
}

function toHex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

/** A host that speaks raw PN532 frames: each call sends one command and returns the answer. */
class RawHost {
  private readonly decoder = new FrameDecoder();
  private waiting: ((answer: string) => void) | undefined;

  constructor(private readonly link: ByteLink) {
    link.onData((chunk) => {
      for (const event of this.decoder.push(chunk)) {
        if (event.type === 'frame') this.waiting?.(toHex(event.data));
        else if (event.type === 'error-frame') this.waiting?.('error-frame');
      }
    });
  }

  /** Sends command `code` with `params`; resolves with the answer's bytes after the response code. */
  async send(code: number, params: string, wake = false): Promise<string> {
    const answer = new Promise<string>((resolve) => {
      this.waiting = resolve;
    });
    const frame = encodeFrame(TFI_HOST, Uint8Array.of(code, ...hex(params)));
    await this.link.write(wake ? Uint8Array.of(0x55, 0x55, 0, 0, 0, ...frame) : frame);
    const text = await answer;
    if (text === 'error-frame') return text;
    expect(text.slice(0, 2)).toBe((code + 1).toString(16).padStart(2, '0'));
    return text.slice(2);
  }
}

let stop: (() => Promise<void>) | undefined;
afterEach(async () => {
  await stop?.();
  stop = undefined;
});

/** An emulator with `card` listed as target 1 by InListPassiveTarget, and a raw host on it. */
async function selected(card: SimulatedCard): Promise<{ host: RawHost; emulator: Pn532Emulator }> {
  const pair = new MemoryLinkPair();
  const emulator = new Pn532Emulator(pair.device, { byteTimeMs: 0, cardLossMs: 1 });
  const host = new RawHost(await pair.openHost());
  stop = () => emulator.close();
  expect(await host.send(CMD.SAMConfiguration, '01 14 01', true)).toBe('');
  emulator.placeCard(card);
  const listed = await host.send(CMD.InListPassiveTarget, '01 00');
  expect(listed.slice(0, 4)).toBe('0101');
  return { host, emulator };
}

/** An ISO-DEP card that answers every APDU with its own bytes and 9000. */
function echoCard(): SimulatedCard {
  return {
    label: 'echo',
    type: 'iso14443-4',
    uid: hex('04102030405060'),
    atqa: hex('0344'),
    sak: 0x20,
    ats: hex('0677777102 80'),
    transceive: (apdu): ApduAnswer => ({ response: Uint8Array.of(...apdu, 0x90, 0x00), computeMs: 0 }),
    reset: () => {},
  };
}

const ntag213 = () => new SimulatedUidTag({ label: 'tag', model: 'ntag213', uid: hex('04a1b2c3d4e5f6') });
const PAGES_0_3 = '04a1b29fc3d4e5f604480000e1101200';

describe('CRC_A (ISO/IEC 14443-3 Annex B)', () => {
  it.each([
    ['0000', 'a01e'],
    ['1234', '26cf'],
    ['5000', '57cd'], // HLTA as it goes on air
    ['3000', '02a8'], // READ page 0
  ])('CRC_A(%s) = %s', (data, crc) => {
    expect(toHex(crcA(hex(data)))).toBe(crc);
  });
});

describe('PN532 emulator: what a selected card answers (UM0701-02 §7.3.8, §7.3.9)', () => {
  it('InDataExchange carries MIFARE commands to a Type 2 tag; an authentication fails (0x14) and halts it', async () => {
    const { host } = await selected(ntag213());
    expect(await host.send(CMD.InDataExchange, '01 30 00')).toBe(`00${PAGES_0_3}`);
    expect(await host.send(CMD.InDataExchange, '01 a2 04 01020304')).toBe('00'); // ACK
    expect(await host.send(CMD.InDataExchange, '01 30 04')).toBe(`0001020304${'00'.repeat(12)}`);
    expect(await host.send(CMD.InDataExchange, '01 a2 02 01020304')).toBe('13'); // NAK
    expect(await host.send(CMD.InDataExchange, `01 a0 06 0a0b0c0d${'00'.repeat(12)}`)).toBe('00');
    expect(await host.send(CMD.InDataExchange, '01 30 06')).toBe(`000a0b0c0d${'00'.repeat(12)}`);
    // Not a MIFARE command: the chip refuses it (PWD_AUTH goes by InCommunicateThru).
    expect(await host.send(CMD.InDataExchange, '01 1b ffffffff')).toBe('error-frame');
    expect(await host.send(CMD.InDataExchange, `01 60 04 ffffffffffff 04a1b2c3`)).toBe('14');
    expect(await host.send(CMD.InDataExchange, '01 30 00')).toBe('01'); // halted: no answer
  });

  it('InCommunicateThru carries Type 2 frames: GET_VERSION, and a 4-bit ACK shows as a CRC error', async () => {
    const { host } = await selected(ntag213());
    expect(await host.send(CMD.InCommunicateThru, '60')).toBe('000004040201000f03');
    expect(await host.send(CMD.InCommunicateThru, '30 00')).toBe(`00${PAGES_0_3}`);
    expect(await host.send(CMD.InCommunicateThru, 'a2 05 01020304')).toBe('02');
    expect(await host.send(CMD.InCommunicateThru, '30 05')).toBe(`0001020304${'00'.repeat(12)}`);
    expect(await host.send(CMD.InCommunicateThru, '50 00')).toBe('01'); // HLTA: halted, no answer
    expect(await host.send(CMD.InCommunicateThru, '30 00')).toBe('01');
    expect(await host.send(CMD.InDataExchange, '01 30 00')).toBe('01');
  });

  it('with CRC handling off (CIU_TxMode/RxMode) the host sends and gets CRC_A itself', async () => {
    const { host } = await selected(ntag213());
    expect(await host.send(CMD.WriteRegister, '6302 00 6303 00')).toBe('');
    expect(await host.send(CMD.InCommunicateThru, '30 00 02a8')).toBe(
      `00${PAGES_0_3}${toHex(crcA(hex(PAGES_0_3)))}`,
    );
    expect(await host.send(CMD.InCommunicateThru, 'a2 05 01020304')).toBe('01'); // no CRC: noise to the card
    const write = hex('a2 05 01020304');
    expect(await host.send(CMD.InCommunicateThru, toHex(Uint8Array.of(...write, ...crcA(write))))).toBe(
      '000a',
    );
    expect(await host.send(CMD.InCommunicateThru, '30 00 0000')).toBe('01'); // a wrong CRC
  });

  it('InCommunicateThru carries ISO-DEP blocks: R(NAK) gets R(ACK), an I-block its APDU, S(DESELECT) ends it', async () => {
    const { host } = await selected(echoCard());
    expect(await host.send(CMD.InCommunicateThru, 'b2')).toBe('00a3');
    expect(await host.send(CMD.InCommunicateThru, '02 00a40400')).toBe(
      '0002 00a40400 9000'.replace(/\s/g, ''),
    );
    // InDataExchange (the chip's own blocks) moves the block number on: block 1 next.
    expect(await host.send(CMD.InDataExchange, '01 0001')).toBe('0000019000');
    expect(await host.send(CMD.InCommunicateThru, 'b3')).toBe('0003 0001 9000'.replace(/\s/g, ''));
    expect(await host.send(CMD.InCommunicateThru, 'c2')).toBe('00c2');
    expect(await host.send(CMD.InCommunicateThru, 'b2')).toBe('01');
    expect(await host.send(CMD.InDataExchange, '01 0001')).toBe('01');
    expect(await host.send(CMD.Diagnose, '06')).toBe('01');
  });

  it('a card that left the field gives the timeout status 0x01 to every command that reaches it', async () => {
    const { host, emulator } = await selected(new SimulatedNtag424({ label: 'dna' }));
    expect(await host.send(CMD.Diagnose, '06')).toBe('00');
    expect(await host.send(CMD.InCommunicateThru, 'b2')).toBe('00a3');
    emulator.removeCard();
    expect(await host.send(CMD.InCommunicateThru, 'b2')).toBe('01');
    expect(await host.send(CMD.InDataExchange, '01 00a4040007d2760000850101')).toBe('01');
    expect(await host.send(CMD.Diagnose, '06')).toBe('01');
  });

  it('RATS reaches an ISO-DEP card listed without automatic RATS; its APDUs then go by blocks', async () => {
    const pair = new MemoryLinkPair();
    const emulator = new Pn532Emulator(pair.device, { byteTimeMs: 0, cardLossMs: 1 });
    const host = new RawHost(await pair.openHost());
    stop = () => emulator.close();
    await host.send(CMD.SAMConfiguration, '01 14 01', true);
    expect(await host.send(CMD.SetParameters, '04')).toBe(''); // no automatic RATS
    emulator.placeCard(echoCard());
    expect(await host.send(CMD.InListPassiveTarget, '01 00')).toBe(
      '01 01 0344 20 07 04102030405060'.replace(/\s/g, ''),
    );
    expect(await host.send(CMD.InCommunicateThru, 'b2')).toBe('01'); // not ISO-DEP yet
    expect(await host.send(CMD.InCommunicateThru, 'e0 50')).toBe('00 0677777102 80'.replace(/\s/g, ''));
    expect(await host.send(CMD.InCommunicateThru, '02 0001')).toBe('0002 0001 9000'.replace(/\s/g, ''));
  });

  it('the driver-facing behaviour stays: InDataExchange to an ISO-DEP card exchanges whole APDUs', async () => {
    const { host } = await selected(echoCard());
    expect(await host.send(CMD.InDataExchange, '01 00a4040000')).toBe('0000a40400009000');
    expect(await host.send(CMD.InDataExchange, '02 00a4040000')).toBe('27'); // no target 2
  });
});
