import { randomBytes } from 'node:crypto';
import { AgentError } from '../../core/errors.js';
import { toHex } from '../../crypto/encoding.js';
import type { UidTagModel } from '../../host/control-api.js';
import { encodeResponse, SW } from '../../nfc/apdu.js';
import { stateHex, stateObject, stateString } from './state-fields.js';
import type { ApduAnswer, FrameAnswer, SimulatedCard } from './types.js';

/**
 * A UID-only tag: no ISO 14443-4, so no APDUs, and nothing that proves who it is. MIFARE Classic
 * 1K: 4-byte UID, ATQA 00 04, SAK 08; it answers anticollision and HLTA, and its sectors stay shut
 * (Crypto-1 is not modelled: an authentication gets a nonce and nothing after it). NTAG213: 7-byte
 * UID starting with the NXP byte 04, ATQA 00 44, SAK 00; a Type 2 tag with the NTAG213 memory map
 * (45 pages, NXP datasheet NTAG213/215/216 §8-10): READ, FAST_READ, WRITE, COMPATIBILITY_WRITE,
 * GET_VERSION and HLTA, ACK/NAK as 4-bit answers. Written pages live as long as the object (they
 * are not part of the saved state).
 */

export type { UidTagModel };

export interface UidTagState {
  readonly kind: 'uid-tag';
  readonly label: string;
  readonly model: UidTagModel;
  readonly uid: string;
}

const MODELS: Record<
  UidTagModel,
  { type: 'mifare-classic' | 'ntag21x'; uidLength: number; atqa: number[]; sak: number }
> = {
  'mifare-classic-1k': { type: 'mifare-classic', uidLength: 4, atqa: [0x00, 0x04], sak: 0x08 },
  ntag213: { type: 'ntag21x', uidLength: 7, atqa: [0x00, 0x44], sak: 0x00 },
};

/** NTAG213 command codes and memory map. */
const T2 = {
  READ: 0x30,
  FAST_READ: 0x3a,
  WRITE: 0xa2,
  COMPATIBILITY_WRITE: 0xa0,
  GET_VERSION: 0x60,
  HLTA: 0x50,
  AUTH_KEY_A: 0x60,
  AUTH_KEY_B: 0x61,
} as const;
const NTAG213_PAGES = 0x2d;
const NTAG213_USER_FIRST = 0x04;
const NTAG213_USER_LAST = 0x27;
/** PWD and PACK read back as zeros. */
const NTAG213_SECRET_PAGES = new Set([0x2b, 0x2c]);
/** GET_VERSION of an NTAG213: NXP, NTAG, 50 pF, v1.0, 144 bytes user memory, ISO 14443-3. */
const NTAG213_VERSION = Uint8Array.of(0x00, 0x04, 0x04, 0x02, 0x01, 0x00, 0x0f, 0x03);
const ACK = 0x0a;
const NAK_INVALID = 0x00;

const ACKED: FrameAnswer = { kind: 'nibble', value: ACK };
const NAKED: FrameAnswer = { kind: 'nibble', value: NAK_INVALID };
const TO_IDLE: FrameAnswer = { kind: 'silent', after: 'idle' };
const TO_HALT: FrameAnswer = { kind: 'silent', after: 'halt' };

function isHlta(frame: Uint8Array): boolean {
  return frame.length === 2 && frame[0] === T2.HLTA && frame[1] === 0x00;
}

/** A factory NTAG213: UID and BCCs, lock bytes open, CC for NDEF, an empty NDEF message. */
function ntag213Memory(uid: Uint8Array): Uint8Array {
  const m = new Uint8Array(NTAG213_PAGES * 4);
  const [u0 = 0, u1 = 0, u2 = 0, u3 = 0, u4 = 0, u5 = 0, u6 = 0] = uid;
  m.set([u0, u1, u2, 0x88 ^ u0 ^ u1 ^ u2, u3, u4, u5, u6, u3 ^ u4 ^ u5 ^ u6, 0x48, 0x00, 0x00], 0);
  m.set([0xe1, 0x10, 0x12, 0x00], 3 * 4); // CC: NDEF 1.0, 144 bytes, read/write
  m.set([0x03, 0x00, 0xfe], 4 * 4); // an empty NDEF message TLV, then the terminator TLV
  m.set([0x00, 0x00, 0x00, 0xbd], 0x28 * 4); // dynamic lock bytes
  m.set([0x04, 0x00, 0x00, 0xff], 0x29 * 4); // CFG0: AUTH0 = FF (no password protection)
  m.set([0x00, 0x05, 0x00, 0x00], 0x2a * 4); // CFG1
  m.set([0xff, 0xff, 0xff, 0xff], 0x2b * 4); // PWD (factory)
  return m;
}

export class SimulatedUidTag implements SimulatedCard {
  readonly label: string;
  readonly model: UidTagModel;
  readonly type: 'mifare-classic' | 'ntag21x';
  readonly uid: Uint8Array;
  readonly atqa: Uint8Array;
  readonly sak: number;
  readonly #memory: Uint8Array | undefined;
  /** Page of a COMPATIBILITY_WRITE whose 16 data bytes are awaited. */
  #compatibilityWritePage: number | undefined;
  /** An authentication was asked for (MIFARE Classic): what follows is Crypto-1, not modelled. */
  #authenticating = false;

  constructor(options: { label: string; model: UidTagModel; uid?: Uint8Array }) {
    const model = MODELS[options.model];
    if (!model) throw new AgentError('bad_arguments', 'unknown UID tag model', { model: options.model });
    let uid = options.uid;
    if (!uid) {
      uid = new Uint8Array(randomBytes(model.uidLength));
      if (model.uidLength === 7) uid[0] = 0x04;
    }
    if (uid.length !== model.uidLength) {
      throw new AgentError('bad_arguments', `${options.model} UID must be ${model.uidLength} bytes`);
    }
    this.label = options.label;
    this.model = options.model;
    this.type = model.type;
    this.uid = uid.slice();
    this.atqa = new Uint8Array(model.atqa);
    this.sak = model.sak;
    this.#memory = options.model === 'ntag213' ? ntag213Memory(this.uid) : undefined;
  }

  static fromState(value: unknown): SimulatedUidTag {
    const state = stateObject(value, 'uid-tag');
    const model = state.model;
    if (model !== 'mifare-classic-1k' && model !== 'ntag213') {
      throw new AgentError('state_corrupt', 'card state field model must be mifare-classic-1k or ntag213');
    }
    return new SimulatedUidTag({
      label: stateString(state, 'label'),
      model,
      uid: stateHex(state, 'uid', [MODELS[model].uidLength]),
    });
  }

  toState(): UidTagState {
    return { kind: 'uid-tag', label: this.label, model: this.model, uid: toHex(this.uid) };
  }

  /** Never called by a faithful emulator (no ISO 14443-4); answers "INS not supported" if it is. */
  transceive(_apdu: Uint8Array): ApduAnswer {
    return { response: encodeResponse(new Uint8Array(0), SW.INS_NOT_SUPPORTED), computeMs: 0 };
  }

  transceiveFrame(frame: Uint8Array): FrameAnswer {
    return this.#memory ? this.type2Frame(this.#memory, frame) : this.classicFrame(frame);
  }

  reset(): void {
    this.#compatibilityWritePage = undefined;
    this.#authenticating = false;
  }

  /** A page as the tag reads it out (PWD and PACK read as zeros). */
  private page(memory: Uint8Array, page: number): Uint8Array {
    const p = page % NTAG213_PAGES;
    return NTAG213_SECRET_PAGES.has(p) ? new Uint8Array(4) : memory.subarray(p * 4, p * 4 + 4);
  }

  private type2Frame(memory: Uint8Array, frame: Uint8Array): FrameAnswer {
    const pending = this.#compatibilityWritePage;
    if (pending !== undefined) {
      // The second part of COMPATIBILITY_WRITE: 16 bytes, of which the first 4 are written.
      this.#compatibilityWritePage = undefined;
      if (frame.length !== 16) return NAKED;
      memory.set(frame.subarray(0, 4), pending * 4);
      return ACKED;
    }
    const [code, a = 0, b = 0] = frame;
    switch (code) {
      case T2.READ:
        if (frame.length !== 2) return TO_IDLE;
        if (a >= NTAG213_PAGES) return NAKED;
        // Four pages from `a`, rolling over to page 0 past the last one.
        return { kind: 'data', data: concatPages([0, 1, 2, 3].map((i) => this.page(memory, a + i))) };
      case T2.FAST_READ: {
        if (frame.length !== 3) return TO_IDLE;
        if (a > b || b >= NTAG213_PAGES) return NAKED;
        const pages: Uint8Array[] = [];
        for (let p = a; p <= b; p++) pages.push(this.page(memory, p));
        return { kind: 'data', data: concatPages(pages) };
      }
      case T2.WRITE:
        if (frame.length !== 6) return TO_IDLE;
        if (a < NTAG213_USER_FIRST || a > NTAG213_USER_LAST) return NAKED; // lock and config pages are not modelled
        memory.set(frame.subarray(2, 6), a * 4);
        return ACKED;
      case T2.COMPATIBILITY_WRITE:
        if (frame.length !== 2) return TO_IDLE;
        if (a < NTAG213_USER_FIRST || a > NTAG213_USER_LAST) return NAKED;
        this.#compatibilityWritePage = a;
        return ACKED;
      case T2.GET_VERSION:
        return frame.length === 1 ? { kind: 'data', data: NTAG213_VERSION.slice() } : TO_IDLE;
      default:
        // HLTA halts; any other frame sends an NTAG back to IDLE without an answer.
        return isHlta(frame) ? TO_HALT : TO_IDLE;
    }
  }

  private classicFrame(frame: Uint8Array): FrameAnswer {
    if (isHlta(frame) && !this.#authenticating) return TO_HALT;
    const code = frame[0];
    if (!this.#authenticating && frame.length === 2 && (code === T2.AUTH_KEY_A || code === T2.AUTH_KEY_B)) {
      // The card's nonce; the reader's encrypted answer to it is never right (no Crypto-1 here).
      this.#authenticating = true;
      return { kind: 'data', data: new Uint8Array(randomBytes(4)) };
    }
    if (this.#authenticating) {
      // The reader's answer to the nonce fails the (unmodelled) Crypto-1 check: the card halts.
      this.#authenticating = false;
      return TO_HALT;
    }
    return TO_IDLE;
  }
}

function concatPages(pages: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(pages.length * 4);
  pages.forEach((p, i) => {
    out.set(p, i * 4);
  });
  return out;
}
