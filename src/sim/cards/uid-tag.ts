import { randomBytes } from 'node:crypto';
import { AgentError } from '../../core/errors.js';
import { toHex } from '../../crypto/encoding.js';
import { encodeResponse, SW } from '../../nfc/apdu.js';
import { stateHex, stateObject, stateString } from './state-fields.js';
import type { ApduAnswer, SimulatedCard } from './types.js';

/**
 * A UID-only tag: it answers anticollision with its UID, ATQA and SAK and nothing more (no
 * ISO 14443-4, so no APDUs). MIFARE Classic 1K: 4-byte UID, ATQA 00 04, SAK 08. NTAG213:
 * 7-byte UID starting with the NXP byte 04, ATQA 00 44, SAK 00.
 */

export type UidTagModel = 'mifare-classic-1k' | 'ntag213';

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

export class SimulatedUidTag implements SimulatedCard {
  readonly label: string;
  readonly model: UidTagModel;
  readonly type: 'mifare-classic' | 'ntag21x';
  readonly uid: Uint8Array;
  readonly atqa: Uint8Array;
  readonly sak: number;

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

  reset(): void {}
}
