import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { p256 } from '@noble/curves/nist.js';
import { bytesEqual, concatBytes, fromHex, toHex } from '../../crypto/encoding.js';
import {
  CLA_CHAINING,
  encodeResponse,
  INS_GET_RESPONSE,
  type ParsedCommand,
  parseCommand,
  SW,
} from '../../nfc/apdu.js';
import { FIDO_AID, U2F_CONTROL, U2F_FLAG_USER_PRESENT, U2F_INS, U2F_VERSION } from '../../nfc/u2f.js';
import { SIM_ATTESTATION_CERTIFICATE_HEX, SIM_ATTESTATION_PRIVATE_KEY_HEX } from './fido-attestation.js';
import { stateBoolean, stateHex, stateInteger, stateObject, stateString } from './state-fields.js';
import type { ApduAnswer, SimulatedCard } from './types.js';

/**
 * A simulated FIDO U2F security key on ISO 14443-4 (YubiKey-like): U2F_V2 applet, REGISTER and
 * AUTHENTICATE with real P-256 signatures made by @noble/curves (DER, s not normalised, as real
 * keys sign), one global rising counter, stateless key handles that wrap the private key
 * (nonce ‖ HMAC tag, key derived from a device seed), 61XX when an answer exceeds Le, command
 * chaining, and knobs for tests: presence required (6985), frozen counter, clones.
 */

export interface FidoTiming {
  readonly selectMs: number;
  readonly registerMs: number;
  readonly signMs: number;
  readonly checkMs: number;
  readonly transferMs: number;
}

export const DEFAULT_FIDO_TIMING: FidoTiming = {
  selectMs: 2,
  registerMs: 85,
  signMs: 55,
  checkMs: 6,
  transferMs: 1,
};

export interface FidoU2fCardState {
  readonly kind: 'fido-u2f';
  readonly label: string;
  readonly uid: string;
  /** Device secret (hex, 32 bytes) from which key handles and credential keys derive. */
  readonly seed: string;
  readonly counter: number;
  readonly presenceRequired: boolean;
  readonly counterFrozen: boolean;
}

export interface FidoU2fCardOptions {
  readonly label: string;
  readonly uid?: Uint8Array;
  readonly seed?: Uint8Array;
  readonly counter?: number;
  /** Answer 6985 to REGISTER and AUTHENTICATE P1=03, like a key waiting for a touch. */
  readonly presenceRequired?: boolean;
  /** Sign without advancing the counter (a clone replaying a counter). */
  readonly counterFrozen?: boolean;
  readonly timing?: Partial<FidoTiming>;
}

const ATTESTATION_KEY = fromHex(SIM_ATTESTATION_PRIVATE_KEY_HEX);
const ATTESTATION_CERT = fromHex(SIM_ATTESTATION_CERTIFICATE_HEX);
const KEY_HANDLE_LENGTH = 64;
export const MAX_COUNTER = 0xffffffff;
const EMPTY = new Uint8Array(0);

function randomUid(): Uint8Array {
  const uid = new Uint8Array(randomBytes(7));
  uid[0] = 0x04; // NXP manufacturer byte, as on common NFC security keys
  return uid;
}

export class SimulatedFidoU2fKey implements SimulatedCard {
  readonly label: string;
  readonly type = 'iso14443-4' as const;
  readonly uid: Uint8Array;
  readonly atqa = new Uint8Array([0x00, 0x44]);
  readonly sak = 0x20;
  /** TL T0(FSCI 8: 256-byte frames) TA TB TC, historical byte 80. */
  readonly ats = new Uint8Array([0x06, 0x78, 0x77, 0x71, 0x02, 0x80]);
  readonly timing: FidoTiming;
  /** Test knob: 6985 until presence is given. */
  presenceRequired: boolean;
  /** Test knob: keep signing with the same counter value. */
  counterFrozen: boolean;

  readonly #seed: Uint8Array;
  #counter: number;
  #selected = false;
  #pending: Uint8Array | undefined;
  #chain: { ins: number; parts: Uint8Array[] } | undefined;

  constructor(options: FidoU2fCardOptions) {
    this.label = options.label;
    this.uid = (options.uid ?? randomUid()).slice();
    this.#seed = (options.seed ?? new Uint8Array(randomBytes(32))).slice();
    this.#counter = options.counter ?? 0;
    this.presenceRequired = options.presenceRequired ?? false;
    this.counterFrozen = options.counterFrozen ?? false;
    this.timing = { ...DEFAULT_FIDO_TIMING, ...options.timing };
  }

  static fromState(value: unknown, timing?: Partial<FidoTiming>): SimulatedFidoU2fKey {
    const state = stateObject(value, 'fido-u2f');
    return new SimulatedFidoU2fKey({
      label: stateString(state, 'label'),
      uid: stateHex(state, 'uid', [4, 7, 10]),
      seed: stateHex(state, 'seed', [32]),
      counter: stateInteger(state, 'counter', 0, MAX_COUNTER),
      presenceRequired: stateBoolean(state, 'presenceRequired'),
      counterFrozen: stateBoolean(state, 'counterFrozen'),
      ...(timing ? { timing } : {}),
    });
  }

  toState(): FidoU2fCardState {
    return {
      kind: 'fido-u2f',
      label: this.label,
      uid: toHex(this.uid),
      seed: toHex(this.#seed),
      counter: this.#counter,
      presenceRequired: this.presenceRequired,
      counterFrozen: this.counterFrozen,
    };
  }

  get counter(): number {
    return this.#counter;
  }

  /** A copy holding the same secrets (an extracted key), with its own counter and label. */
  clone(options: {
    label: string;
    counter?: number;
    uid?: Uint8Array;
    counterFrozen?: boolean;
  }): SimulatedFidoU2fKey {
    return new SimulatedFidoU2fKey({
      label: options.label,
      uid: options.uid ?? this.uid,
      seed: this.#seed,
      counter: options.counter ?? 0,
      counterFrozen: options.counterFrozen ?? false,
      timing: this.timing,
    });
  }

  reset(): void {
    this.#selected = false;
    this.#pending = undefined;
    this.#chain = undefined;
  }

  transceive(apdu: Uint8Array): ApduAnswer {
    let command: ParsedCommand;
    try {
      command = parseCommand(apdu);
    } catch {
      return this.#status(SW.WRONG_LENGTH, this.timing.transferMs);
    }
    if ((command.cla & ~CLA_CHAINING) !== 0x00)
      return this.#status(SW.CLA_NOT_SUPPORTED, this.timing.transferMs);
    if (command.ins === INS_GET_RESPONSE && this.#chain === undefined) return this.#getResponse(command);
    this.#pending = undefined;

    if ((command.cla & CLA_CHAINING) !== 0) {
      if (this.#chain && this.#chain.ins !== command.ins) this.#chain = undefined;
      this.#chain ??= { ins: command.ins, parts: [] };
      this.#chain.parts.push(command.data);
      return this.#status(SW.OK, this.timing.transferMs);
    }
    let data = command.data;
    if (this.#chain) {
      if (this.#chain.ins === command.ins) data = concatBytes(...this.#chain.parts, command.data);
      this.#chain = undefined;
    }
    const ne = command.le ?? 256;

    if (command.ins === 0xa4) return this.#select(command, data, ne);
    if (!this.#selected) return this.#status(SW.INS_NOT_SUPPORTED, this.timing.transferMs);
    switch (command.ins) {
      case U2F_INS.REGISTER:
        return this.#register(data, ne);
      case U2F_INS.AUTHENTICATE:
        return this.#authenticate(command.p1, data, ne);
      case U2F_INS.VERSION:
        return this.#reply(new TextEncoder().encode(U2F_VERSION), ne, this.timing.selectMs);
      default:
        return this.#status(SW.INS_NOT_SUPPORTED, this.timing.transferMs);
    }
  }

  #status(sw: number, computeMs: number): ApduAnswer {
    return { response: encodeResponse(EMPTY, sw), computeMs };
  }

  /** Sends up to Ne bytes; the rest waits for GET RESPONSE behind 61XX. */
  #reply(data: Uint8Array, ne: number, computeMs: number): ApduAnswer {
    if (data.length <= ne) return { response: encodeResponse(data, SW.OK), computeMs };
    this.#pending = data.slice(ne);
    return {
      response: encodeResponse(data.subarray(0, ne), 0x6100 | (Math.min(this.#pending.length, 256) & 0xff)),
      computeMs,
    };
  }

  #getResponse(command: ParsedCommand): ApduAnswer {
    const pending = this.#pending;
    this.#pending = undefined;
    if (!pending || command.p1 !== 0 || command.p2 !== 0) return this.#status(SW.CONDITIONS_NOT_SATISFIED, 0);
    return this.#reply(pending, command.le ?? 256, this.timing.transferMs);
  }

  #select(command: ParsedCommand, aid: Uint8Array, ne: number): ApduAnswer {
    if (command.p1 !== 0x04 || !bytesEqual(aid, FIDO_AID)) {
      this.#selected = false;
      return this.#status(SW.FILE_NOT_FOUND, this.timing.transferMs);
    }
    this.#selected = true;
    return this.#reply(new TextEncoder().encode(U2F_VERSION), ne, this.timing.selectMs);
  }

  #register(data: Uint8Array, ne: number): ApduAnswer {
    if (data.length !== 64) return this.#status(SW.WRONG_LENGTH, this.timing.transferMs);
    if (this.presenceRequired) return this.#status(SW.CONDITIONS_NOT_SATISFIED, this.timing.checkMs);
    const challenge = data.subarray(0, 32);
    const appParam = data.subarray(32, 64);
    const nonce = new Uint8Array(randomBytes(32));
    const keyHandle = concatBytes(nonce, this.#handleTag(appParam, nonce));
    const publicKey = p256.getPublicKey(this.#credentialKey(appParam, nonce), false);
    const signed = concatBytes(new Uint8Array([0x00]), appParam, challenge, keyHandle, publicKey);
    const signature = p256.sign(signed, ATTESTATION_KEY, { lowS: false, format: 'der', extraEntropy: true });
    const answer = concatBytes(
      new Uint8Array([0x05]),
      publicKey,
      new Uint8Array([keyHandle.length]),
      keyHandle,
      ATTESTATION_CERT,
      signature,
    );
    return this.#reply(answer, ne, this.timing.registerMs);
  }

  #authenticate(control: number, data: Uint8Array, ne: number): ApduAnswer {
    if (data.length < 66 || data.length !== 65 + (data[64] ?? 0)) {
      return this.#status(SW.WRONG_LENGTH, this.timing.transferMs);
    }
    const challenge = data.subarray(0, 32);
    const appParam = data.subarray(32, 64);
    const keyHandle = data.subarray(65);
    const nonce = this.#openHandle(appParam, keyHandle);
    if (control === U2F_CONTROL.CHECK_ONLY) {
      return this.#status(nonce ? SW.CONDITIONS_NOT_SATISFIED : SW.WRONG_DATA, this.timing.checkMs);
    }
    if (control !== U2F_CONTROL.ENFORCE_PRESENCE && control !== U2F_CONTROL.DONT_ENFORCE_PRESENCE) {
      return this.#status(SW.INCORRECT_P1P2, this.timing.transferMs);
    }
    if (!nonce) return this.#status(SW.WRONG_DATA, this.timing.checkMs);
    const enforce = control === U2F_CONTROL.ENFORCE_PRESENCE;
    if (enforce && this.presenceRequired)
      return this.#status(SW.CONDITIONS_NOT_SATISFIED, this.timing.checkMs);
    if (!this.counterFrozen && this.#counter < MAX_COUNTER) this.#counter++;
    const flags = enforce ? U2F_FLAG_USER_PRESENT : 0x00;
    const fixed = new Uint8Array(5);
    fixed[0] = flags;
    new DataView(fixed.buffer).setUint32(1, this.#counter, false);
    const signed = concatBytes(appParam, fixed, challenge);
    const signature = p256.sign(signed, this.#credentialKey(appParam, nonce), {
      lowS: false,
      format: 'der',
      extraEntropy: true,
    });
    return this.#reply(concatBytes(fixed, signature), ne, this.timing.signMs);
  }

  #handleTag(appParam: Uint8Array, nonce: Uint8Array): Uint8Array {
    return new Uint8Array(
      createHmac('sha256', this.#seed).update('u2f-sim/key-handle').update(appParam).update(nonce).digest(),
    );
  }

  /** The nonce of a key handle this key made for `appParam`, or undefined. */
  #openHandle(appParam: Uint8Array, keyHandle: Uint8Array): Uint8Array | undefined {
    if (keyHandle.length !== KEY_HANDLE_LENGTH) return undefined;
    const nonce = keyHandle.subarray(0, 32);
    const tag = keyHandle.subarray(32);
    return timingSafeEqual(tag, this.#handleTag(appParam, nonce)) ? nonce : undefined;
  }

  #credentialKey(appParam: Uint8Array, nonce: Uint8Array): Uint8Array {
    for (let attempt = 0; ; attempt++) {
      const candidate = new Uint8Array(
        createHmac('sha256', this.#seed)
          .update('u2f-sim/credential-key')
          .update(appParam)
          .update(nonce)
          .update(new Uint8Array([attempt]))
          .digest(),
      );
      if (p256.utils.isValidSecretKey(candidate)) return candidate;
    }
  }
}
