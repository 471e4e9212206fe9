/**
 * A card in the PN532 emulator's field. The emulator (src/sim/pn532-emulator.ts) handles the
 * PN532 frames, the RF-level target listing and, for ISO-DEP cards, the ISO 14443-4 block layer
 * (iso-dep.ts); the card answers ISO-DEP APDUs (ISO 14443-4) or, for tags without ISO-DEP, the
 * ISO 14443-3 frames of its command set (a Type 2 tag's READ, WRITE, GET_VERSION).
 */
export type SimulatedCardType = 'iso14443-4' | 'mifare-classic' | 'ntag21x';

export interface ApduAnswer {
  /** Response APDU: data ‖ SW1 ‖ SW2. */
  readonly response: Uint8Array;
  /** Modelled card compute time in ms before the answer (a FIDO signature takes 30–90 ms). */
  readonly computeMs: number;
}

/** A card's answer to one ISO 14443-3 frame (CRC_A stripped on the way in and added on the way out). */
export type FrameAnswer =
  /** A whole-byte answer. */
  | { readonly kind: 'data'; readonly data: Uint8Array }
  /** A 4-bit answer: ACK 0xA, or a NAK (0x0 invalid argument, 0x1 CRC or parity error, ...). */
  | { readonly kind: 'nibble'; readonly value: number }
  /**
   * No answer. `halt`: the card goes to HALT (HLTA), `idle`: back to IDLE (a frame it does not
   * know, per ISO 14443-3); either way it answers nothing until it is selected again.
   */
  | { readonly kind: 'silent'; readonly after: 'active' | 'idle' | 'halt' };

export interface SimulatedCard {
  /** Human label for logs and the sim CLI, e.g. `fido-owner`. */
  readonly label: string;
  readonly type: SimulatedCardType;
  readonly uid: Uint8Array;
  /** SENS_RES, 2 bytes as the PN532 reports them. */
  readonly atqa: Uint8Array;
  /** SEL_RES. */
  readonly sak: number;
  /** ATS for ISO 14443-4 cards (starting with TL). */
  readonly ats?: Uint8Array;
  /** Handles one APDU; only called for 'iso14443-4' cards. */
  transceive(apdu: Uint8Array): ApduAnswer;
  /**
   * Handles one ISO 14443-3 frame while the card is selected without ISO-DEP (a Type 2 tag's
   * commands). A card without it answers nothing.
   */
  transceiveFrame?(frame: Uint8Array): FrameAnswer;
  /** Called when the card is (re)selected or leaves the field: drop session state. */
  reset(): void;
}
