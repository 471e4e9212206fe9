import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { toAgentError } from '../core/errors.js';
import { SimulatedFidoU2fKey } from './cards/fido-u2f.js';
import { SimulatedNtag424 } from './cards/ntag424.js';
import type { SimulatedCard } from './cards/types.js';
import { SimulatedUidTag } from './cards/uid-tag.js';
import { Pn532Emulator } from './pn532-emulator.js';

/**
 * Serves a PN532 emulator on a serial line for manual testing, e.g. with libnfc (see USAGE).
 * Exit status: 0 after `quit` or a signal, 1 when the port cannot be opened, 2 for bad options.
 */

const USAGE = `usage: node dist/src/sim/pn532-emulator-main.js --port PTY [--card MODEL] [--uid HEX] [--empty]

Serves an emulated PN532 (firmware 1.6, HSU) on the device end of a serial line, with one
simulated card in its field; libnfc's tools or the agent's driver open the other end:

  socat pty,raw,echo=0,link=/tmp/pn532-host pty,raw,echo=0,link=/tmp/pn532-dev &
  node dist/src/sim/pn532-emulator-main.js --port /tmp/pn532-dev --card ntag213
  LIBNFC_DEVICE=pn532_uart:/tmp/pn532-host nfc-list      (in another terminal)

Options:
  --port PTY     the device end of the pty pair (required)
  --card MODEL   ntag213 (default; a Type 2 tag: READ, FAST_READ, WRITE, GET_VERSION),
                 mifare-classic-1k (UID only), ntag424 (NTAG 424 DNA, ISO-DEP, factory keys),
                 fido-u2f (a FIDO U2F key over ISO-DEP)
  --uid HEX      the card's UID: 7 bytes (default 04a1b2c3d4e5f6), 4 for mifare-classic-1k
                 (default a1b2c3d4)
  --empty        start with the field empty
  -h, --help     print this text and exit

Commands on stdin: place (put the card in the field), remove (take it out), quit.
`;

const CARD_MODELS = ['ntag213', 'mifare-classic-1k', 'ntag424', 'fido-u2f'] as const;
type CardModel = (typeof CARD_MODELS)[number];

class UsageError extends Error {}

function hex(value: string, what: string): Uint8Array {
  if (!/^([0-9a-fA-F]{2})+$/.test(value))
    throw new UsageError(`${what} must be hex bytes, e.g. 04a1b2c3d4e5f6`);
  return Uint8Array.from(value.match(/../g) ?? [], (b) => Number.parseInt(b, 16));
}

function makeCard(model: CardModel, uidHex: string | undefined): SimulatedCard {
  const uid = hex(uidHex ?? (model === 'mifare-classic-1k' ? 'a1b2c3d4' : '04a1b2c3d4e5f6'), '--uid');
  if (![4, 7, 10].includes(uid.length)) throw new UsageError('--uid must be 4, 7 or 10 bytes');
  try {
    switch (model) {
      case 'ntag213':
      case 'mifare-classic-1k':
        return new SimulatedUidTag({ label: 'manual', model, uid });
      case 'ntag424':
        return new SimulatedNtag424({ label: 'manual', uid });
      case 'fido-u2f':
        return new SimulatedFidoU2fKey({ label: 'manual', uid });
    }
  } catch (err) {
    throw new UsageError(`--uid: ${toAgentError(err).message}`);
  }
}

interface Invocation {
  readonly port: string;
  readonly card: SimulatedCard;
  readonly empty: boolean;
}

/** The options, or 'help'; a UsageError for anything else. */
function parseInvocation(argv: readonly string[]): Invocation | 'help' {
  let values: { port?: string; card?: string; uid?: string; empty?: boolean; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: {
        port: { type: 'string' },
        card: { type: 'string' },
        uid: { type: 'string' },
        empty: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  if (values.help) return 'help';
  if (values.port === undefined || values.port === '') throw new UsageError('--port is required');
  const model = values.card ?? 'ntag213';
  if (!(CARD_MODELS as readonly string[]).includes(model))
    throw new UsageError(`--card must be one of ${CARD_MODELS.join(', ')}`);
  return { port: values.port, card: makeCard(model as CardModel, values.uid), empty: values.empty === true };
}

async function serve({ port, card, empty }: Invocation): Promise<void> {
  let emulator: Pn532Emulator;
  try {
    emulator = await Pn532Emulator.open(port);
  } catch (err) {
    process.stderr.write(`pn532-emulator: cannot open ${port}: ${toAgentError(err).message}\n`);
    process.exit(1);
  }
  if (!empty) emulator.placeCard(card);
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
}

function main(): void {
  let invocation: Invocation | 'help';
  try {
    invocation = parseInvocation(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`pn532-emulator: ${err.message}\n\n${USAGE}`);
    process.exit(2);
  }
  if (invocation === 'help') {
    process.stdout.write(USAGE);
    return;
  }
  void serve(invocation);
}

main();
