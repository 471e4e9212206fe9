import { randomBytes } from 'node:crypto';
import { aesCbcDecrypt, aesCbcEncrypt, crc32JamLe, padM2, xorBytes } from '../../crypto/aes.js';
import { bytesEqual, concatBytes, toHex } from '../../crypto/encoding.js';
import { encodeResponse, type ParsedCommand, parseCommand, SW } from '../../nfc/apdu.js';
import {
  commandIv,
  commandMac,
  deriveSessionKeys,
  NTAG424_FACTORY_KEY,
  NTAG424_INS,
  NTAG424_KEY_COUNT,
  NTAG424_NDEF_AID,
  NTAG424_SW,
  responseIv,
  responseMac,
  rotateLeft,
} from '../../nfc/ntag424.js';
import { stateArray, stateHex, stateInteger, stateObject, stateString } from './state-fields.js';
import type { ApduAnswer, SimulatedCard } from './types.js';

/**
 * A simulated NTAG 424 DNA, card side of the protocol in NXP's datasheet and AN12196: ISO select
 * of the NDEF application, AuthenticateEV2First with its five AES keys (factory all-zero),
 * secure messaging with CmdCtr and TI, ChangeKey (own key and other keys with CRC32), GetCardUID,
 * the native error codes, and an authentication delay (91AD) after repeated failures.
 */

export interface Ntag424CardState {
  readonly kind: 'ntag424';
  readonly label: string;
  readonly uid: string;
  /** Five AES-128 keys, hex. */
  readonly keys: readonly string[];
  readonly keyVersions: readonly number[];
  readonly failedAuths: number;
}

export interface Ntag424CardOptions {
  readonly label: string;
  readonly uid?: Uint8Array;
  readonly keys?: readonly Uint8Array[];
  readonly keyVersions?: readonly number[];
  readonly failedAuths?: number;
  /** Modelled compute time of every command (default 3 ms). */
  readonly computeMs?: number;
  /** Consecutive failed authentications before the delay starts (default 3). */
  readonly delayAfterFailures?: number;
  /** Length of the authentication delay (default 2000 ms). */
  readonly delayMs?: number;
  /** Clock for the delay; default Date.now. */
  readonly now?: () => number;
  /** Source of RndB and TI; tests inject fixed values. */
  readonly random?: (length: number) => Uint8Array;
}

interface Session {
  readonly keyNo: number;
  readonly ti: Uint8Array;
  readonly encKey: Uint8Array;
  readonly macKey: Uint8Array;
  cmdCtr: number;
}

const EMPTY = new Uint8Array(0);

export class SimulatedNtag424 implements SimulatedCard {
  readonly label: string;
  readonly type = 'iso14443-4' as const;
  readonly uid: Uint8Array;
  readonly atqa = new Uint8Array([0x03, 0x44]);
  readonly sak = 0x20;
  readonly ats = new Uint8Array([0x06, 0x77, 0x77, 0x71, 0x02, 0x80]);
  readonly computeMs: number;

  readonly #keys: Uint8Array[];
  readonly #versions: number[];
  #failedAuths: number;
  #delayUntil = 0;
  readonly #delayAfterFailures: number;
  readonly #delayMs: number;
  readonly #now: () => number;
  readonly #random: (length: number) => Uint8Array;
  #selected = false;
  #pendingAuth: { keyNo: number; rndB: Uint8Array } | undefined;
  #session: Session | undefined;

  constructor(options: Ntag424CardOptions) {
    this.label = options.label;
    this.#random = options.random ?? ((length) => new Uint8Array(randomBytes(length)));
    const uid = options.uid ?? this.#random(7);
    if (!options.uid) uid[0] = 0x04;
    this.uid = uid.slice();
    this.#keys = Array.from({ length: NTAG424_KEY_COUNT }, (_, i) =>
      (options.keys?.[i] ?? NTAG424_FACTORY_KEY).slice(),
    );
    this.#versions = Array.from({ length: NTAG424_KEY_COUNT }, (_, i) => options.keyVersions?.[i] ?? 0);
    this.#failedAuths = options.failedAuths ?? 0;
    this.computeMs = options.computeMs ?? 3;
    this.#delayAfterFailures = options.delayAfterFailures ?? 3;
    this.#delayMs = options.delayMs ?? 2000;
    this.#now = options.now ?? Date.now;
  }

  static fromState(
    value: unknown,
    options: Omit<Ntag424CardOptions, 'label' | 'uid' | 'keys'> = {},
  ): SimulatedNtag424 {
    const state = stateObject(value, 'ntag424');
    const keysField = stateArray(state, 'keys', NTAG424_KEY_COUNT);
    const keys = keysField.map((_, i) => stateHex({ key: keysField[i] }, 'key', [16]));
    const versionsField = stateArray(state, 'keyVersions', NTAG424_KEY_COUNT);
    const keyVersions = versionsField.map((_, i) => stateInteger({ v: versionsField[i] }, 'v', 0, 255));
    return new SimulatedNtag424({
      ...options,
      label: stateString(state, 'label'),
      uid: stateHex(state, 'uid', [7]),
      keys,
      keyVersions,
      failedAuths: stateInteger(state, 'failedAuths', 0, 0xffff),
    });
  }

  toState(): Ntag424CardState {
    return {
      kind: 'ntag424',
      label: this.label,
      uid: toHex(this.uid),
      keys: this.#keys.map((k) => toHex(k)),
      keyVersions: [...this.#versions],
      failedAuths: this.#failedAuths,
    };
  }

  /** Test helper: does key `keyNo` equal `key`? */
  holdsKey(keyNo: number, key: Uint8Array): boolean {
    const current = this.#keys[keyNo];
    return current !== undefined && bytesEqual(current, key);
  }

  keyVersion(keyNo: number): number | undefined {
    return this.#versions[keyNo];
  }

  get failedAuths(): number {
    return this.#failedAuths;
  }

  reset(): void {
    this.#selected = false;
    this.#pendingAuth = undefined;
    this.#session = undefined;
  }

  transceive(apdu: Uint8Array): ApduAnswer {
    let command: ParsedCommand;
    try {
      command = parseCommand(apdu);
    } catch {
      return this.#status(SW.WRONG_LENGTH);
    }
    if (command.cla === 0x00) {
      if (command.ins === 0xa4) return this.#select(command);
      return this.#status(SW.INS_NOT_SUPPORTED);
    }
    if (command.cla !== 0x90) return this.#status(SW.CLA_NOT_SUPPORTED);
    if (!this.#selected) return this.#fail(NTAG424_SW.PERMISSION_DENIED);
    const pending = this.#pendingAuth;
    this.#pendingAuth = undefined;
    switch (command.ins) {
      case NTAG424_INS.AUTH_EV2_FIRST:
        return this.#authFirst(command.data);
      case NTAG424_INS.ADDITIONAL_FRAME:
        return pending ? this.#authSecond(pending, command.data) : this.#fail(NTAG424_SW.ILLEGAL_COMMAND);
      case NTAG424_INS.CHANGE_KEY:
        return this.#changeKey(command.data);
      case NTAG424_INS.GET_CARD_UID:
        return this.#getCardUid(command.data);
      default:
        return this.#fail(NTAG424_SW.ILLEGAL_COMMAND);
    }
  }

  #answer(data: Uint8Array, sw: number): ApduAnswer {
    return { response: encodeResponse(data, sw), computeMs: this.computeMs };
  }

  #status(sw: number): ApduAnswer {
    return this.#answer(EMPTY, sw);
  }

  /** An error ends any authenticated session, as on the card. */
  #fail(sw: number): ApduAnswer {
    this.#session = undefined;
    return this.#status(sw);
  }

  #select(command: ParsedCommand): ApduAnswer {
    this.#session = undefined;
    this.#pendingAuth = undefined;
    const byName = command.p1 === 0x04 && bytesEqual(command.data, NTAG424_NDEF_AID);
    const byFileId = command.p1 === 0x00 && bytesEqual(command.data, new Uint8Array([0xe1, 0x10]));
    this.#selected = byName || byFileId;
    return this.#status(this.#selected ? SW.OK : SW.FILE_NOT_FOUND);
  }

  #authFirst(data: Uint8Array): ApduAnswer {
    this.#session = undefined;
    const keyNo = data[0];
    const lenCap = data[1];
    if (keyNo === undefined || lenCap === undefined || lenCap > 6 || data.length !== 2 + lenCap) {
      return this.#fail(NTAG424_SW.LENGTH_ERROR);
    }
    const key = this.#keys[keyNo];
    if (!key) return this.#fail(NTAG424_SW.NO_SUCH_KEY);
    if (this.#failedAuths >= this.#delayAfterFailures && this.#now() < this.#delayUntil) {
      return this.#fail(NTAG424_SW.AUTH_DELAY);
    }
    const rndB = this.#random(16);
    this.#pendingAuth = { keyNo, rndB };
    return this.#answer(aesCbcEncrypt(key, new Uint8Array(16), rndB), NTAG424_SW.ADDITIONAL_FRAME);
  }

  #authFailed(): ApduAnswer {
    this.#failedAuths++;
    if (this.#failedAuths >= this.#delayAfterFailures) this.#delayUntil = this.#now() + this.#delayMs;
    return this.#fail(NTAG424_SW.AUTH_ERROR);
  }

  #authSecond(pending: { keyNo: number; rndB: Uint8Array }, data: Uint8Array): ApduAnswer {
    if (data.length !== 32) return this.#fail(NTAG424_SW.LENGTH_ERROR);
    const key = this.#keys[pending.keyNo] ?? NTAG424_FACTORY_KEY;
    const plain = aesCbcDecrypt(key, new Uint8Array(16), data);
    const rndA = plain.slice(0, 16);
    if (!bytesEqual(plain.subarray(16), rotateLeft(pending.rndB))) return this.#authFailed();
    this.#failedAuths = 0;
    const ti = this.#random(4);
    const { encKey, macKey } = deriveSessionKeys(key, rndA, pending.rndB);
    this.#session = { keyNo: pending.keyNo, ti, encKey, macKey, cmdCtr: 0 };
    const answer = concatBytes(ti, rotateLeft(rndA), new Uint8Array(6), new Uint8Array(6));
    return this.#answer(aesCbcEncrypt(key, new Uint8Array(16), answer), NTAG424_SW.OK);
  }

  /** Checks a full/MAC-mode command's MAC; the session's CmdCtr is the command's. */
  #macValid(session: Session, ins: number, body: Uint8Array, mac: Uint8Array): boolean {
    return bytesEqual(mac, commandMac(session.macKey, ins, session.cmdCtr, session.ti, body));
  }

  #changeKey(data: Uint8Array): ApduAnswer {
    const session = this.#session;
    if (session?.keyNo !== 0) return this.#fail(NTAG424_SW.PERMISSION_DENIED);
    if (data.length !== 1 + 32 + 8) return this.#fail(NTAG424_SW.LENGTH_ERROR);
    const keyNo = data[0] ?? 0xff;
    const body = data.subarray(0, 33);
    if (!this.#macValid(session, NTAG424_INS.CHANGE_KEY, body, data.subarray(33))) {
      return this.#fail(NTAG424_SW.INTEGRITY_ERROR);
    }
    const current = this.#keys[keyNo];
    if (!current) return this.#fail(NTAG424_SW.NO_SUCH_KEY);
    const plain = aesCbcDecrypt(
      session.encKey,
      commandIv(session.encKey, session.ti, session.cmdCtr),
      data.subarray(1, 33),
    );
    const version = plain[16] ?? 0;
    if (keyNo === session.keyNo) {
      if (plain[17] !== 0x80 || !plain.subarray(18).every((b) => b === 0)) {
        return this.#fail(NTAG424_SW.INTEGRITY_ERROR);
      }
      this.#keys[keyNo] = plain.slice(0, 16);
      this.#versions[keyNo] = version;
      this.#session = undefined; // the session key changed: the card drops the session
      return this.#status(NTAG424_SW.OK);
    }
    const newKey = xorBytes(plain.subarray(0, 16), current);
    const paddingOk = plain[21] === 0x80 && plain.subarray(22).every((b) => b === 0);
    if (!paddingOk || !bytesEqual(plain.subarray(17, 21), crc32JamLe(newKey))) {
      return this.#fail(NTAG424_SW.INTEGRITY_ERROR);
    }
    this.#keys[keyNo] = newKey;
    this.#versions[keyNo] = version;
    session.cmdCtr++;
    return this.#answer(responseMac(session.macKey, 0x00, session.cmdCtr, session.ti, EMPTY), NTAG424_SW.OK);
  }

  #getCardUid(data: Uint8Array): ApduAnswer {
    const session = this.#session;
    if (!session) return this.#fail(NTAG424_SW.PERMISSION_DENIED);
    if (data.length !== 8) return this.#fail(NTAG424_SW.LENGTH_ERROR);
    if (!this.#macValid(session, NTAG424_INS.GET_CARD_UID, EMPTY, data))
      return this.#fail(NTAG424_SW.INTEGRITY_ERROR);
    session.cmdCtr++;
    const enc = aesCbcEncrypt(
      session.encKey,
      responseIv(session.encKey, session.ti, session.cmdCtr),
      padM2(this.uid),
    );
    const mac = responseMac(session.macKey, 0x00, session.cmdCtr, session.ti, enc);
    return this.#answer(concatBytes(enc, mac), NTAG424_SW.OK);
  }
}
