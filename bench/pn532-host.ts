import { b64url, fromB64url } from '../src/crypto/encoding.js';
import { personaliseForSite } from '../src/nfc/ntag424.js';
import { openSerialLink } from '../src/nfc/pn532/link.js';
import { tapChallenge, u2fRegister, vehicleAppParam } from '../src/nfc/u2f.js';
import { SimulatedFidoU2fKey } from '../src/sim/cards/fido-u2f.js';
import { SimulatedNtag424 } from '../src/sim/cards/ntag424.js';
import type { SimulatedCard } from '../src/sim/cards/types.js';
import { SimulatedUidTag } from '../src/sim/cards/uid-tag.js';
import { Pn532Emulator, type Pn532EmulatorStats } from '../src/sim/pn532-emulator.js';
import { type LineEvent, TimedByteLink, turnTime } from './line-timing.js';

/**
 * Forked by bench/nfc.ts: the PN532 emulator and its cards in a process of their own, on the
 * device end of the pty pair, as the chip and the card are hardware of their own. The simulated
 * FIDO key's P-256 signing (and its garbage) and the emulator's timers then do not run on the
 * agent's event loop. Times are process.hrtime (CLOCK_MONOTONIC, shared by both processes), in
 * ns as strings.
 */

export type CardKind = 'fido' | 'ntag424' | 'uid';

export type Pn532HostRequest =
  | { readonly type: 'start'; readonly device: string; readonly vehicleId: string; readonly siteKey: string }
  | { readonly type: 'place'; readonly kind: CardKind }
  /** The tap is over: `relayAt` is when the agent energised the relay. */
  | { readonly type: 'remove'; readonly relayAt: string }
  | { readonly type: 'stop' };

export interface CardsReady {
  readonly type: 'ready';
  /** The FIDO key's registration for this vehicle: raw public key and key handle (base64url). */
  readonly fido: { readonly publicKey: string; readonly keyHandle: string; readonly uid: string };
  readonly ntag424Uid: string;
  readonly uidTagUid: string;
}

export interface TapReport {
  readonly type: 'tap';
  readonly placedAt: string;
  /** Modelled wire time of every byte exchanged up to the relay, ms. */
  readonly wireMs: number;
  /** Modelled card compute time up to the relay, ms. */
  readonly computeMs: number;
  /**
   * Time the host side held the turn, seen from this end of the line: from each answer leaving
   * the chip to the next command arriving, and from the last answer to the relay, ms.
   */
  readonly hostHeldMs: number;
}

export type Pn532HostReply =
  | CardsReady
  | { readonly type: 'placed'; readonly placedAt: string }
  | TapReport
  | { readonly type: 'error'; readonly message: string };

/** A command arriving carries the emulator's counters from just before its bytes reached it. */
interface ChipLineEvent extends LineEvent {
  readonly before?: Pn532EmulatorStats;
}

let emulator: Pn532Emulator | undefined;
let link: TimedByteLink<ChipLineEvent> | undefined;
let lineEvents: ChipLineEvent[] = [];
let cards: Record<CardKind, SimulatedCard> | undefined;
let tap: { placedAt: bigint; before: Pn532EmulatorStats } | undefined;

function send(reply: Pn532HostReply): void {
  process.send?.(reply);
}

function over(card: SimulatedCard) {
  return async (apdu: Uint8Array) => card.transceive(apdu).response;
}

async function start(request: Extract<Pn532HostRequest, { type: 'start' }>): Promise<CardsReady> {
  const fido = new SimulatedFidoU2fKey({ label: 'fido' });
  const registered = await u2fRegister(over(fido), {
    appParam: vehicleAppParam(request.vehicleId),
    challenge: tapChallenge(),
  });
  if (!registered.ok) throw registered.error;
  const ntag = new SimulatedNtag424({ label: 'ntag' });
  const personalised = await personaliseForSite(over(ntag), fromB64url(request.siteKey), ntag.uid);
  if (!personalised.ok) throw personalised.error;
  const tag = new SimulatedUidTag({ label: 'tag', model: 'ntag213' });
  cards = { fido, ntag424: ntag, uid: tag };
  let chip: Pn532Emulator | undefined;
  lineEvents = [];
  link = new TimedByteLink<ChipLineEvent>(await openSerialLink(request.device), lineEvents, (dir) => {
    const before = dir === 'in' ? chip?.stats() : undefined;
    return { at: process.hrtime.bigint(), dir, ...(before ? { before } : {}) };
  });
  chip = new Pn532Emulator(link);
  emulator = chip;
  const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');
  return {
    type: 'ready',
    fido: {
      publicKey: b64url(registered.value.publicKey),
      keyHandle: b64url(registered.value.keyHandle),
      uid: hex(fido.uid),
    },
    ntag424Uid: hex(ntag.uid),
    uidTagUid: hex(tag.uid),
  };
}

function finishTap(relayAt: bigint): TapReport {
  if (!emulator || !link || !tap) throw new Error('no tap under way');
  // The counters as they stood when the first command after the relay (the release) arrived.
  const after = lineEvents.find((e) => e.dir === 'in' && e.at > relayAt)?.before ?? emulator.stats();
  const report: TapReport = {
    type: 'tap',
    placedAt: tap.placedAt.toString(),
    wireMs: after.wireMs - tap.before.wireMs,
    computeMs: after.computeMs - tap.before.computeMs,
    hostHeldMs: turnTime(lineEvents, tap.placedAt, relayAt, 'out'),
  };
  emulator.removeCard();
  lineEvents.length = 0;
  tap = undefined;
  return report;
}

process.on('message', (raw: unknown) => {
  const request = raw as Pn532HostRequest;
  void (async () => {
    try {
      switch (request.type) {
        case 'start':
          send(await start(request));
          break;
        case 'place': {
          if (!emulator || !cards || !link) throw new Error('not started');
          lineEvents.length = 0;
          const before = emulator.stats();
          const placedAt = process.hrtime.bigint();
          emulator.placeCard(cards[request.kind]);
          tap = { placedAt, before };
          send({ type: 'placed', placedAt: placedAt.toString() });
          break;
        }
        case 'remove':
          send(finishTap(BigInt(request.relayAt)));
          break;
        case 'stop':
          await emulator?.close();
          process.disconnect?.();
          break;
      }
    } catch (err) {
      send({ type: 'error', message: err instanceof Error ? err.message : String(err) });
    }
  })();
});
