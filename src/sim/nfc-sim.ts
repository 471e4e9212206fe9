import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { type LinkFactory, serialLinkFactory } from '../nfc/pn532/link.js';
import type { NfcReader, TapOutcome } from '../nfc/reader.js';
import { SIM_DIR, SimCardStore, simCardsPath } from './card-store.js';
import { SimulatedFidoU2fKey } from './cards/fido-u2f.js';
import type { ApduAnswer, SimulatedCard } from './cards/types.js';
import { MemoryLinkPair } from './memory-link.js';
import type { EmulatorFaultName, SimTapOptions } from './nfc-sim-options.js';
import { Pn532Emulator, type Pn532Fault } from './pn532-emulator.js';
import { findExecutable, type SocatPtyPair, startSocatPtyPair } from './socat-pty.js';

/**
 * The simulated NFC side of sim mode: a PN532 emulator on the far end of a socat pty pair (the
 * driver opens the other end with serialport, exactly as it opens a real UART), or of an
 * in-memory line when socat is missing, and a wallet of simulated cards persisted in
 * <stateDir>/sim/cards.json (FIDO seeds and counters, NTAG 424 keys, UIDs). `tap` puts a card in
 * the field, waits for the reader's outcome, and takes the card away.
 */

/** The card as the emulator sees it, with another card's UID (a UID clone). */
function withUid(card: SimulatedCard, uid: Uint8Array): SimulatedCard {
  return {
    label: card.label,
    type: card.type,
    uid,
    atqa: card.atqa,
    sak: card.sak,
    ...(card.ats ? { ats: card.ats } : {}),
    transceive: (apdu) => card.transceive(apdu),
    reset: () => card.reset(),
  };
}

/** The card, taking `extraMs` longer over every APDU (a slow card, or a relay in between). */
function slowed(card: SimulatedCard, extraMs: number): SimulatedCard {
  return {
    label: card.label,
    type: card.type,
    uid: card.uid,
    atqa: card.atqa,
    sak: card.sak,
    ...(card.ats ? { ats: card.ats } : {}),
    transceive: (apdu): ApduAnswer => {
      const answer = card.transceive(apdu);
      return { response: answer.response, computeMs: answer.computeMs + extraMs };
    },
    ...(card.transceiveFrame ? { transceiveFrame: card.transceiveFrame.bind(card) } : {}),
    reset: () => card.reset(),
  };
}

/** How long `stop` waits for the cards' last save (a frozen disk must not hold the stop). */
const STOP_SAVE_TIMEOUT_MS = 2000;

export interface NfcSimOptions {
  readonly stateDir: string;
  readonly link: 'auto' | 'pty' | 'memory';
  readonly log: Logger;
}

export class NfcSim {
  readonly transport: 'pty' | 'memory';
  readonly openLink: LinkFactory;
  readonly emulator: Pn532Emulator;
  readonly cards: SimCardStore;
  private readonly pty: SocatPtyPair | undefined;
  private readonly log: Logger;
  private tapping = false;

  private constructor(init: {
    transport: 'pty' | 'memory';
    openLink: LinkFactory;
    emulator: Pn532Emulator;
    cards: SimCardStore;
    pty: SocatPtyPair | undefined;
    log: Logger;
  }) {
    this.log = init.log;
    this.transport = init.transport;
    this.openLink = init.openLink;
    this.emulator = init.emulator;
    this.cards = init.cards;
    this.pty = init.pty;
  }

  static async start(options: NfcSimOptions): Promise<NfcSim> {
    const { stateDir, log } = options;
    const dir = join(stateDir, SIM_DIR);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const cards = await SimCardStore.open(simCardsPath(stateDir));
    const emulatorLog = log.child({ module: 'pn532-emulator' });
    const usePty =
      options.link === 'pty' || (options.link === 'auto' && findExecutable('socat') !== undefined);
    if (usePty) {
      const pty = await startSocatPtyPair(dir);
      try {
        const emulator = await Pn532Emulator.open(pty.device, { log: emulatorLog });
        log.info({ host: pty.host }, 'simulated PN532 on a socat pty pair');
        return new NfcSim({
          transport: 'pty',
          openLink: serialLinkFactory(pty.host),
          emulator,
          cards,
          pty,
          log,
        });
      } catch (err) {
        await pty.stop();
        throw err;
      }
    }
    const pair = new MemoryLinkPair();
    const emulator = new Pn532Emulator(pair.device, { log: emulatorLog });
    log.warn(
      { link: options.link },
      options.link === 'memory'
        ? 'simulated PN532 on an in-memory link (nfc.simLink is memory)'
        : 'socat is not installed: the simulated PN532 runs on an in-memory link, not a serial port (apt-get install socat)',
    );
    return new NfcSim({
      transport: 'memory',
      openLink: () => pair.openHost(),
      emulator,
      cards,
      pty: undefined,
      log,
    });
  }

  /** Places a card in the field, waits for the reader's outcome, and removes the card. */
  private saveCards(): void {
    this.cards.saveInBackground((err) =>
      this.log.warn({ code: 'state_io', err: String(err) }, 'could not save the simulated cards'),
    );
  }

  async tap(reader: NfcReader, options: SimTapOptions): Promise<TapOutcome> {
    if (this.tapping) throw new AgentError('busy', 'a simulated tap is in progress');
    const base = this.cards.get(options.card);
    if (!base)
      throw new AgentError('bad_arguments', `no simulated card named ${options.card} (sim cards lists them)`);
    let card: SimulatedCard = base;
    if (options.counter !== undefined) {
      if (!(base instanceof SimulatedFidoU2fKey))
        throw new AgentError('bad_arguments', '--counter applies to FIDO keys only');
      card = base.clone({ label: `${base.label}-copy`, counter: options.counter });
    }
    if (options.cloneOf !== undefined) {
      const original = this.cards.get(options.cloneOf);
      if (!original) throw new AgentError('bad_arguments', `no simulated card named ${options.cloneOf}`);
      card = withUid(card, original.uid);
    }
    if (options.slowMs !== undefined && options.slowMs > 0) card = slowed(card, options.slowMs);
    this.tapping = true;
    const placed = card;
    let removeTimer: NodeJS.Timeout | undefined;
    try {
      const outcome = nextOutcome(reader, options.timeoutMs ?? 10_000);
      if (options.fault) this.emulator.injectFault(faultFor(options.fault));
      this.emulator.placeCard(placed);
      if (options.removeAfterMs !== undefined) {
        removeTimer = setTimeout(() => this.emulator.removeCard(), options.removeAfterMs);
      }
      return await outcome;
    } finally {
      clearTimeout(removeTimer);
      this.emulator.removeCard();
      this.tapping = false;
      // The card's new state (a FIDO counter) is saved behind the answer, never before it.
      this.saveCards();
    }
  }

  async stop(): Promise<void> {
    this.saveCards();
    await this.cards.flush(STOP_SAVE_TIMEOUT_MS).catch((err: unknown) => {
      const e = toAgentError(err);
      this.log.warn({ code: e.code, err: e.message }, 'simulated cards not saved at stop');
    });
    await this.emulator.close().catch(() => {});
    await this.pty?.stop();
  }
}

function faultFor(name: EmulatorFaultName): Pn532Fault {
  return { kind: name };
}

function nextOutcome(reader: NfcReader, timeoutMs: number): Promise<TapOutcome> {
  return new Promise((resolve, reject) => {
    const onTap = (outcome: TapOutcome): void => {
      clearTimeout(timer);
      resolve(outcome);
    };
    const timer = setTimeout(() => {
      reader.off('tap', onTap);
      reject(
        new AgentError('reader_timeout', `the reader reported no tap within ${timeoutMs} ms (see status)`),
      );
    }, timeoutMs);
    reader.once('tap', onTap);
  });
}
