import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/core/logger.js';
import { Pn532Driver, type Pn532Target } from '../../../src/nfc/pn532/driver.js';
import type { ApduAnswer, SimulatedCard } from '../../../src/sim/cards/types.js';
import { MemoryLinkPair } from '../../../src/sim/memory-link.js';
import { Pn532Emulator } from '../../../src/sim/pn532-emulator.js';

/** An ISO-DEP card that answers every APDU with its own bytes and 9000. */
const echo: SimulatedCard = {
  label: 'echo',
  type: 'iso14443-4',
  uid: Uint8Array.of(0x04, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60),
  atqa: Uint8Array.of(0x03, 0x44),
  sak: 0x20,
  ats: Uint8Array.of(0x06, 0x77, 0x77, 0x71, 0x02, 0x80),
  transceive: (apdu): ApduAnswer => ({ response: Uint8Array.of(...apdu, 0x90, 0x00), computeMs: 0 }),
  reset: () => {},
};

let stop: (() => Promise<void>) | undefined;
afterEach(async () => {
  await stop?.();
  stop = undefined;
});

/**
 * Regression: the emulator took 55 55 anywhere in a chunk for the HSU wake-up preamble, even when
 * awake, and dropped the frame around it; random APDU data (a ciphertext, a signature) holds
 * 55 55 about once in 2 000 bytes, so about one tap in a few hundred timed out in sim mode.
 */
describe('PN532 emulator, awake', () => {
  it('carries APDU data that contains 55 55 (the wake-up bytes) like any other data', async () => {
    const pair = new MemoryLinkPair();
    const emulator = new Pn532Emulator(pair.device, { byteTimeMs: 0 });
    const driver = new Pn532Driver({ openLink: () => pair.openHost(), log: silentLogger });
    stop = async () => {
      await driver.stop();
      await emulator.close();
    };
    await driver.start();
    const target = new Promise<Pn532Target>((resolve) => driver.once('target', resolve));
    emulator.placeCard(echo);
    const session = await target;
    for (const data of [
      [0x55, 0x55],
      [0x00, 0x55, 0x55, 0x00, 0x00, 0xff],
      [0x12, 0x55, 0x55, 0x55, 0x55, 0x34],
    ]) {
      const apdu = Uint8Array.of(0x80, 0x01, 0x00, 0x00, data.length, ...data);
      const answer = await session.exchangeApdu(apdu, { timeoutMs: 500 });
      expect([...answer]).toEqual([...apdu, 0x90, 0x00]);
    }
  });
});
