import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import type { ApduAnswer, SimulatedCard } from './cards/types.js';
import { Pn532Emulator } from './pn532-emulator.js';

/**
 * Serves a PN532 emulator on a serial line for manual testing, e.g. with libnfc:
 *
 *   socat -d -d pty,raw,echo=0,link=/tmp/pn532-host pty,raw,echo=0,link=/tmp/pn532-dev &
 *   node dist/src/sim/pn532-emulator-main.js --port /tmp/pn532-dev --uid 04a1b2c3d4e5f6
 *   LIBNFC_DEVICE=pn532_uart:/tmp/pn532-host nfc-list
 *
 * Options: --uid HEX (default 04a1b2c3d4e5f6), --atqa HEX (0044), --sak HEX (00), --ats HEX
 * (an ATS makes the card ISO 14443-4; it then answers every APDU with 9000), --empty (start with
 * no card). Commands on stdin: `place`, `remove`, `quit`.
 */

function hex(value: string, what: string): Uint8Array {
  if (!/^([0-9a-fA-F]{2})+$/.test(value)) throw new Error(`${what} must be hex bytes`);
  return Uint8Array.from(value.match(/../g) ?? [], (b) => Number.parseInt(b, 16));
}

function main(): void {
  const { values } = parseArgs({
    options: {
      port: { type: 'string' },
      uid: { type: 'string', default: '04a1b2c3d4e5f6' },
      atqa: { type: 'string', default: '0044' },
      sak: { type: 'string', default: '00' },
      ats: { type: 'string' },
      empty: { type: 'boolean', default: false },
    },
  });
  if (!values.port) {
    process.stderr.write(
      'usage: pn532-emulator-main --port <pty> [--uid HEX] [--atqa HEX] [--sak HEX] [--ats HEX]\n',
    );
    process.exit(2);
  }
  const uid = hex(values.uid, '--uid');
  if (![4, 7, 10].includes(uid.length)) throw new Error('--uid must be 4, 7 or 10 bytes');
  const ats = values.ats ? hex(values.ats, '--ats') : undefined;
  const sakValue = hex(values.sak, '--sak')[0] ?? 0;
  const card: SimulatedCard = {
    label: 'manual',
    type: ats ? 'iso14443-4' : 'ntag21x',
    uid,
    atqa: hex(values.atqa, '--atqa'),
    sak: ats ? sakValue | 0x20 : sakValue,
    ...(ats ? { ats } : {}),
    transceive: (): ApduAnswer => ({ response: Uint8Array.of(0x90, 0x00), computeMs: 1 }),
    reset: () => {},
  };
  const port = values.port;
  void Pn532Emulator.open(port).then((emulator) => {
    if (!values.empty) emulator.placeCard(card);
    process.stdout.write(`PN532 emulator on ${port}; commands: place, remove, quit\n`);
    const input = createInterface({ input: process.stdin });
    const quit = (): void => {
      input.close();
      void emulator.close().then(() => process.exit(0));
    };
    input.on('line', (line) => {
      const command = line.trim();
      if (command === 'place') {
        emulator.placeCard(card);
        process.stdout.write('card placed\n');
      } else if (command === 'remove') {
        emulator.removeCard();
        process.stdout.write('card removed\n');
      } else if (command === 'quit') quit();
      else if (command !== '') process.stdout.write('commands: place, remove, quit\n');
    });
    process.on('SIGTERM', quit);
    process.on('SIGINT', quit);
  });
}

main();
