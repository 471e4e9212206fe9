import { concatBytes } from '../../crypto/encoding.js';

/**
 * The card side of the ISO 14443-4 block protocol (ISO/IEC 14443-4 §7), for the raw frames a host
 * sends with InCommunicateThru: I-blocks carry APDUs (chained both ways), R-blocks acknowledge a
 * chained block or ask for the last one again, S(DESELECT) ends the session. Block numbering
 * follows the PICC rules: 1 at activation, set by each I-block received; an R-block with the
 * current number gets the last block again, an R(NAK) with the other number gets an R(ACK). CID 0
 * is accepted with or without its byte, and answered the same way; NAD is not supported (such
 * blocks are ignored, as by a card whose ATS does not offer NAD). Pure: the caller runs the APDU.
 */

export type IsoDepStep =
  /** Answer this block. */
  | { readonly kind: 'reply'; readonly block: Uint8Array }
  /** Run this APDU on the card, then answer with `reply(response)`. */
  | { readonly kind: 'apdu'; readonly apdu: Uint8Array; readonly reply: (response: Uint8Array) => Uint8Array }
  /** Answer this block, then the card is deselected (HALT). */
  | { readonly kind: 'deselect'; readonly block: Uint8Array }
  /** No answer (not a valid block for this card). */
  | { readonly kind: 'silent' };

const BLOCK_NUMBER = 0x01;
const NAD_FOLLOWING = 0x04;
const CID_FOLLOWING = 0x08;
/** I-block: chaining; R-block: NAK. */
const CHAINING_OR_NAK = 0x10;
const I_BLOCK = 0x02;
const R_BLOCK = 0xa2;
const S_DESELECT = 0xc2;
/** The largest APDU a card takes (extended length: 4 + 3 + 65535 + 2), as InDataExchange. */
const MAX_APDU = 65544;
/** FSD 256 (the largest frame a PN532 takes) less PCB and CRC_A. */
const DEFAULT_MAX_INF = 253;

export class IsoDepCard {
  readonly #maxInf: number;
  #blockNumber = 1;
  #lastBlock: Uint8Array | undefined;
  #chain: Uint8Array[] = [];
  #chainBytes = 0;
  #pendingOut: Uint8Array | undefined;

  constructor(maxInf = DEFAULT_MAX_INF) {
    this.#maxInf = maxInf;
  }

  /** A new activation (RATS): block number 1, nothing pending. */
  reset(): void {
    this.#blockNumber = 1;
    this.#lastBlock = undefined;
    this.#chain = [];
    this.#chainBytes = 0;
    this.#pendingOut = undefined;
  }

  receive(block: Uint8Array): IsoDepStep {
    const pcb = block[0];
    if (pcb === undefined) return { kind: 'silent' };
    const withCid = (pcb & CID_FOLLOWING) !== 0;
    if (withCid && ((block[1] ?? 0xff) & 0x0f) !== 0) return { kind: 'silent' }; // another card's CID
    const inf = block.subarray(withCid ? 2 : 1);

    if ((pcb & 0xe2) === I_BLOCK) {
      if (pcb & NAD_FOLLOWING) return { kind: 'silent' };
      this.#blockNumber = pcb & BLOCK_NUMBER;
      this.#pendingOut = undefined;
      this.#chainBytes += inf.length;
      if (this.#chainBytes > MAX_APDU) {
        this.#chain = [];
        this.#chainBytes = 0;
        return { kind: 'silent' };
      }
      this.#chain.push(inf.slice());
      if (pcb & CHAINING_OR_NAK) return this.reply(this.remember(this.rBlock(false, withCid)));
      const apdu = concatBytes(...this.#chain);
      this.#chain = [];
      this.#chainBytes = 0;
      return {
        kind: 'apdu',
        apdu,
        reply: (response) => {
          this.#pendingOut = response;
          return this.nextPart(withCid);
        },
      };
    }

    if ((pcb & 0xe6) === R_BLOCK && inf.length === 0) {
      const nak = (pcb & CHAINING_OR_NAK) !== 0;
      if ((pcb & BLOCK_NUMBER) === this.#blockNumber)
        return this.reply(this.#lastBlock ?? this.rBlock(false, withCid));
      if (nak) return this.reply(this.rBlock(false, withCid));
      // R(ACK) for the chained block the card sent: the next part.
      if (this.#pendingOut === undefined) return { kind: 'silent' };
      this.#blockNumber ^= 1;
      return this.reply(this.nextPart(withCid));
    }

    if ((pcb & 0xf7) === S_DESELECT && inf.length === 0) {
      this.reset();
      return { kind: 'deselect', block: withCid ? Uint8Array.of(pcb, 0x00) : Uint8Array.of(pcb) };
    }
    // S(WTX) answers (the card never asks for more time), PPS, anything else: ignored.
    return { kind: 'silent' };
  }

  /**
   * The chip exchanged one APDU with the card in I-blocks of its own (InDataExchange): the block
   * number moves on and the answer is the last block sent, as if the host had sent the blocks.
   */
  chipExchanged(response: Uint8Array): void {
    this.#blockNumber ^= 1;
    this.#chain = [];
    this.#chainBytes = 0;
    this.#pendingOut = response;
    this.nextPart(false);
    this.#pendingOut = undefined;
  }

  private nextPart(withCid: boolean): Uint8Array {
    const out = this.#pendingOut ?? new Uint8Array(0);
    const room = this.#maxInf - (withCid ? 1 : 0);
    const part = out.subarray(0, room);
    const rest = out.subarray(room);
    this.#pendingOut = rest.length > 0 ? rest : undefined;
    const pcb =
      I_BLOCK | this.#blockNumber | (rest.length > 0 ? CHAINING_OR_NAK : 0) | (withCid ? CID_FOLLOWING : 0);
    return this.remember(concatBytes(withCid ? Uint8Array.of(pcb, 0x00) : Uint8Array.of(pcb), part));
  }

  private rBlock(nak: boolean, withCid: boolean): Uint8Array {
    const pcb = R_BLOCK | this.#blockNumber | (nak ? CHAINING_OR_NAK : 0) | (withCid ? CID_FOLLOWING : 0);
    return withCid ? Uint8Array.of(pcb, 0x00) : Uint8Array.of(pcb);
  }

  private remember(block: Uint8Array): Uint8Array {
    this.#lastBlock = block;
    return block;
  }

  private reply(block: Uint8Array): IsoDepStep {
    return { kind: 'reply', block };
  }
}
