/**
 * A card in the PN532 emulator's field. The emulator (src/sim/pn532-emulator.ts) handles the
 * PN532 frames and the RF-level target listing; the card answers ISO-DEP APDUs (ISO 14443-4) or,
 * for UID-only tags, nothing beyond its UID.
 */
export type SimulatedCardType = 'iso14443-4' | 'mifare-classic' | 'ntag21x';

export interface ApduAnswer {
  /** Response APDU: data ‖ SW1 ‖ SW2. */
  readonly response: Uint8Array;
  /** Modelled card compute time in ms before the answer (a FIDO signature takes 30–90 ms). */
  readonly computeMs: number;
}

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
  /** Called when the card is (re)selected or leaves the field: drop session state. */
  reset(): void;
}
