import { randomBytes } from 'node:crypto';
import { AgentError } from '../core/errors.js';
import {
  aesCbcDecrypt,
  aesCbcEncrypt,
  aesCmac,
  aesEncryptBlock,
  crc32JamLe,
  diversifyAes128,
  nxpMac,
  padM2,
  unpadM2,
  xorBytes,
} from '../crypto/aes.js';
import { bytesEqual, concatBytes, fromHex } from '../crypto/encoding.js';
import { encodeCommand, exchange, type ResponseApdu, SW, swHex, type Transceive } from './apdu.js';
import { type CardResult, runCardFlow } from './card-result.js';

/**
 * NTAG 424 DNA (NXP NT4H2421Gx) host side, written from NXP's public datasheet and AN12196:
 * ISO select of the NDEF application, AES-128 AuthenticateEV2First, session keys, secure
 * messaging (CmdCtr, TI, MACt, IVs, encryption), ChangeKey, GetCardUID, and per-card keys
 * diversified from a site key by AN10922. The builders and parsers are pure; the flow functions
 * take a `Transceive` so the reader can run them over any transport.
 */

export const NTAG424_NDEF_AID = fromHex('D2760000850101');
export const NTAG424_FACTORY_KEY: Uint8Array = new Uint8Array(16);
export const NTAG424_KEY_COUNT = 5;
/** The application master key: the only key allowed to change keys (NTAG 424 DNA key settings). */
export const NTAG424_MASTER_KEY_NO = 0;
/** The key a tap authenticates with, distinct from the master key (see personaliseForSite). */
export const NTAG424_TAP_KEY_NO = 1;

const CLA_NATIVE = 0x90;
export const NTAG424_INS = {
  AUTH_EV2_FIRST: 0x71,
  ADDITIONAL_FRAME: 0xaf,
  CHANGE_KEY: 0xc4,
  GET_CARD_UID: 0x51,
} as const;

export const NTAG424_SW = {
  OK: 0x9100,
  ADDITIONAL_FRAME: 0x91af,
  ILLEGAL_COMMAND: 0x911c,
  INTEGRITY_ERROR: 0x911e,
  NO_SUCH_KEY: 0x9140,
  LENGTH_ERROR: 0x917e,
  PERMISSION_DENIED: 0x919d,
  PARAMETER_ERROR: 0x919e,
  AUTH_DELAY: 0x91ad,
  AUTH_ERROR: 0x91ae,
  COMMAND_ABORTED: 0x91ca,
  MEMORY_ERROR: 0x91ee,
} as const;

/** Maps a card status word to the coded error the reader reports. */
export function ntag424StatusError(sw: number, step: string): AgentError {
  const details = { sw: swHex(sw), step };
  switch (sw) {
    case NTAG424_SW.AUTH_ERROR:
      return new AgentError('bad_proof', `NTAG 424 ${step}: authentication error`, details);
    case NTAG424_SW.INTEGRITY_ERROR:
      return new AgentError('bad_proof', `NTAG 424 ${step}: integrity error (MAC, CRC or padding)`, details);
    case NTAG424_SW.AUTH_DELAY:
      return new AgentError(
        'rate_limited',
        `NTAG 424 ${step}: card in authentication delay after failures`,
        details,
      );
    case NTAG424_SW.PERMISSION_DENIED:
      return new AgentError('unauthorized', `NTAG 424 ${step}: permission denied`, details);
    case NTAG424_SW.NO_SUCH_KEY:
      return new AgentError('unsupported', `NTAG 424 ${step}: no such key`, details);
    case NTAG424_SW.ILLEGAL_COMMAND:
    case SW.INS_NOT_SUPPORTED:
    case SW.CLA_NOT_SUPPORTED:
      return new AgentError('unsupported', `NTAG 424 ${step}: command not supported by this card`, details);
    case SW.FILE_NOT_FOUND:
      return new AgentError('unsupported', `NTAG 424 ${step}: no NTAG 424 NDEF application`, details);
    case NTAG424_SW.LENGTH_ERROR:
    case NTAG424_SW.PARAMETER_ERROR:
    case SW.WRONG_LENGTH:
      return new AgentError('malformed', `NTAG 424 ${step}: the card rejected the command format`, details);
    case NTAG424_SW.COMMAND_ABORTED:
    case NTAG424_SW.MEMORY_ERROR:
      return new AgentError('reader_error', `NTAG 424 ${step}: the card aborted the command`, details);
    default:
      return new AgentError('unsupported', `NTAG 424 ${step}: unexpected status ${swHex(sw)}`, details);
  }
}

function requireKey(key: Uint8Array, what: string): void {
  if (key.length !== 16) throw new AgentError('key_invalid', `${what} must be a 16-byte AES key`);
}

function requireKeyNo(keyNo: number): void {
  if (!Number.isInteger(keyNo) || keyNo < 0 || keyNo >= NTAG424_KEY_COUNT) {
    throw new AgentError('bad_arguments', `NTAG 424 key number must be 0..${NTAG424_KEY_COUNT - 1}`, {
      keyNo,
    });
  }
}

function nativeCommand(ins: number, data: Uint8Array): Uint8Array {
  return encodeCommand({ cla: CLA_NATIVE, ins, p1: 0, p2: 0, ...(data.length > 0 ? { data } : {}), le: 256 });
}

export function rotateLeft(bytes: Uint8Array): Uint8Array {
  return concatBytes(bytes.subarray(1), bytes.subarray(0, 1));
}

const ZERO_IV = new Uint8Array(16);

// ── ISO select ────────────────────────────────────────────────────────────────

/** 00 A4 04 0C 07 D2760000850101 00: select the NDEF application, where the keys live. */
export function selectNdefApplicationApdu(): Uint8Array {
  return encodeCommand({ cla: 0x00, ins: 0xa4, p1: 0x04, p2: 0x0c, data: NTAG424_NDEF_AID, le: 256 });
}

export function checkSelectResponse(response: ResponseApdu): void {
  if (response.sw !== SW.OK) throw ntag424StatusError(response.sw, 'select');
}

// ── AuthenticateEV2First ──────────────────────────────────────────────────────

/** C1: 90 71 00 00 02 KeyNo LenCap=00 00. */
export function authFirstCommand(keyNo: number): Uint8Array {
  requireKeyNo(keyNo);
  return nativeCommand(NTAG424_INS.AUTH_EV2_FIRST, new Uint8Array([keyNo, 0x00]));
}

export interface AuthFirstChallenge {
  readonly apdu: Uint8Array;
  readonly rndA: Uint8Array;
  readonly rndB: Uint8Array;
}

/** Reads R1 = E(K, RndB) 91AF and builds C2 = 90 AF 00 00 20 E(K, RndA ‖ rotl(RndB)) 00. */
export function authFirstAnswer(key: Uint8Array, r1: ResponseApdu, rndA: Uint8Array): AuthFirstChallenge {
  requireKey(key, 'authentication key');
  if (rndA.length !== 16) throw new AgentError('internal', 'RndA must be 16 bytes');
  if (r1.sw !== NTAG424_SW.ADDITIONAL_FRAME) throw ntag424StatusError(r1.sw, 'authenticate');
  if (r1.data.length !== 16) {
    throw new AgentError('malformed', 'NTAG 424 authenticate: encrypted RndB must be 16 bytes', {
      length: r1.data.length,
    });
  }
  const rndB = aesCbcDecrypt(key, ZERO_IV, r1.data);
  const token = aesCbcEncrypt(key, ZERO_IV, concatBytes(rndA, rotateLeft(rndB)));
  return { apdu: nativeCommand(NTAG424_INS.ADDITIONAL_FRAME, token), rndA, rndB };
}

export interface SessionKeys {
  readonly sv1: Uint8Array;
  readonly sv2: Uint8Array;
  readonly encKey: Uint8Array;
  readonly macKey: Uint8Array;
}

/**
 * SV1 = A5 5A 00 01 00 80 ‖ RndA[0..1] ‖ (RndA[2..7] ⊕ RndB[0..5]) ‖ RndB[6..15] ‖ RndA[8..15],
 * SV2 the same with 5A A5; SesAuthENC = CMAC(K, SV1), SesAuthMAC = CMAC(K, SV2).
 */
export function deriveSessionKeys(key: Uint8Array, rndA: Uint8Array, rndB: Uint8Array): SessionKeys {
  const mixed = concatBytes(
    rndA.subarray(0, 2),
    xorBytes(rndA.subarray(2, 8), rndB.subarray(0, 6)),
    rndB.subarray(6, 16),
    rndA.subarray(8, 16),
  );
  const sv1 = concatBytes(fromHex('A55A00010080'), mixed);
  const sv2 = concatBytes(fromHex('5AA500010080'), mixed);
  return { sv1, sv2, encKey: aesCmac(key, sv1), macKey: aesCmac(key, sv2) };
}

/** Reads R2 = E(K, TI ‖ rotl(RndA) ‖ PDcap2 ‖ PCDcap2) 9100, checks RndA and opens the session. */
export function authFirstComplete(
  key: Uint8Array,
  keyNo: number,
  challenge: Pick<AuthFirstChallenge, 'rndA' | 'rndB'>,
  r2: ResponseApdu,
): Ntag424Session {
  if (r2.sw !== NTAG424_SW.OK) throw ntag424StatusError(r2.sw, 'authenticate');
  if (r2.data.length !== 32) {
    throw new AgentError('malformed', 'NTAG 424 authenticate: final answer must be 32 bytes', {
      length: r2.data.length,
    });
  }
  const plain = aesCbcDecrypt(key, ZERO_IV, r2.data);
  if (!bytesEqual(plain.subarray(4, 20), rotateLeft(challenge.rndA))) {
    throw new AgentError('bad_proof', 'NTAG 424 authenticate: the card did not return our RndA');
  }
  const keys = deriveSessionKeys(key, challenge.rndA, challenge.rndB);
  return new Ntag424Session({
    keyNo,
    ti: plain.slice(0, 4),
    encKey: keys.encKey,
    macKey: keys.macKey,
    pdCap2: plain.slice(20, 26),
    pcdCap2: plain.slice(26, 32),
  });
}

// ── Secure messaging ─────────────────────────────────────────────────────────

export type CommMode = 'plain' | 'mac' | 'full';

function counterLe(counter: number): Uint8Array {
  return new Uint8Array([counter & 0xff, (counter >> 8) & 0xff]);
}

/** IV for command data: E(SesAuthENC, A5 5A ‖ TI ‖ CmdCtr ‖ 00*8). */
export function commandIv(encKey: Uint8Array, ti: Uint8Array, cmdCtr: number): Uint8Array {
  return aesEncryptBlock(encKey, concatBytes(fromHex('A55A'), ti, counterLe(cmdCtr), new Uint8Array(8)));
}

/** IV for response data: E(SesAuthENC, 5A A5 ‖ TI ‖ CmdCtr+1 ‖ 00*8); pass the incremented counter. */
export function responseIv(encKey: Uint8Array, ti: Uint8Array, nextCmdCtr: number): Uint8Array {
  return aesEncryptBlock(encKey, concatBytes(fromHex('5AA5'), ti, counterLe(nextCmdCtr), new Uint8Array(8)));
}

/** MACt(SesAuthMAC, INS ‖ CmdCtr ‖ TI ‖ header ‖ data). */
export function commandMac(
  macKey: Uint8Array,
  ins: number,
  cmdCtr: number,
  ti: Uint8Array,
  headerAndData: Uint8Array,
): Uint8Array {
  return nxpMac(macKey, concatBytes(new Uint8Array([ins]), counterLe(cmdCtr), ti, headerAndData));
}

/** MACt(SesAuthMAC, SW2 ‖ CmdCtr+1 ‖ TI ‖ data); pass the incremented counter. */
export function responseMac(
  macKey: Uint8Array,
  sw2: number,
  nextCmdCtr: number,
  ti: Uint8Array,
  data: Uint8Array,
): Uint8Array {
  return nxpMac(macKey, concatBytes(new Uint8Array([sw2]), counterLe(nextCmdCtr), ti, data));
}

export interface SessionInit {
  readonly keyNo: number;
  readonly ti: Uint8Array;
  readonly encKey: Uint8Array;
  readonly macKey: Uint8Array;
  readonly cmdCtr?: number;
  readonly pdCap2?: Uint8Array;
  readonly pcdCap2?: Uint8Array;
}

/**
 * An authenticated EV2 session: builds protected commands at the current CmdCtr and opens their
 * answers, advancing CmdCtr once per command/response pair. Holds session keys only (never the
 * card key). Once closed (key changed, error answer) it refuses further use.
 */
export class Ntag424Session {
  readonly keyNo: number;
  readonly ti: Uint8Array;
  readonly pdCap2: Uint8Array;
  readonly pcdCap2: Uint8Array;
  readonly #encKey: Uint8Array;
  readonly #macKey: Uint8Array;
  #cmdCtr: number;
  #closed = false;

  constructor(init: SessionInit) {
    if (init.ti.length !== 4) throw new AgentError('internal', 'TI must be 4 bytes');
    requireKey(init.encKey, 'SesAuthENC');
    requireKey(init.macKey, 'SesAuthMAC');
    this.keyNo = init.keyNo;
    this.ti = init.ti.slice();
    this.#encKey = init.encKey.slice();
    this.#macKey = init.macKey.slice();
    this.#cmdCtr = init.cmdCtr ?? 0;
    this.pdCap2 = init.pdCap2?.slice() ?? new Uint8Array(6);
    this.pcdCap2 = init.pcdCap2?.slice() ?? new Uint8Array(6);
  }

  get cmdCtr(): number {
    return this.#cmdCtr;
  }

  get closed(): boolean {
    return this.#closed;
  }

  close(): void {
    this.#closed = true;
  }

  #requireOpen(): void {
    if (this.#closed) throw new AgentError('internal', 'NTAG 424 session is closed');
    if (this.#cmdCtr >= 0xffff)
      throw new AgentError('internal', 'NTAG 424 CmdCtr exhausted; re-authenticate');
  }

  /**
   * APDU 90 INS 00 00 Lc header ‖ payload ‖ MACt 00. In 'full' mode the payload is the data,
   * padded 80 00.. and encrypted; in 'mac' mode it is the data in clear; 'plain' adds no MAC.
   */
  command(ins: number, header: Uint8Array, data: Uint8Array, mode: CommMode): Uint8Array {
    this.#requireOpen();
    if (mode === 'plain') return nativeCommand(ins, concatBytes(header, data));
    const payload =
      mode === 'full' && data.length > 0
        ? aesCbcEncrypt(this.#encKey, commandIv(this.#encKey, this.ti, this.#cmdCtr), padM2(data))
        : data;
    const body = concatBytes(header, payload);
    const mac = commandMac(this.#macKey, ins, this.#cmdCtr, this.ti, body);
    return nativeCommand(ins, concatBytes(body, mac));
  }

  /**
   * Checks an answer to the last command and returns its data (decrypted in 'full' mode). A
   * status other than 9100 closes the session (the card drops it too); a bad MAC is bad_proof.
   */
  response(answer: ResponseApdu, mode: CommMode, step: string): Uint8Array {
    this.#requireOpen();
    if (answer.sw !== NTAG424_SW.OK) {
      this.#closed = true;
      throw ntag424StatusError(answer.sw, step);
    }
    const next = this.#cmdCtr + 1;
    if (mode === 'plain') {
      this.#cmdCtr = next;
      return answer.data;
    }
    if (answer.data.length < 8) {
      this.#closed = true;
      throw new AgentError('malformed', `NTAG 424 ${step}: answer lacks its MAC`, {
        length: answer.data.length,
      });
    }
    const body = answer.data.subarray(0, answer.data.length - 8);
    const mac = answer.data.subarray(answer.data.length - 8);
    if (!bytesEqual(mac, responseMac(this.#macKey, answer.sw2, next, this.ti, body))) {
      this.#closed = true;
      throw new AgentError('bad_proof', `NTAG 424 ${step}: response MAC does not verify`);
    }
    this.#cmdCtr = next;
    if (mode === 'mac' || body.length === 0) return body.slice();
    if (body.length % 16 !== 0) {
      this.#closed = true;
      throw new AgentError('malformed', `NTAG 424 ${step}: encrypted answer is not whole blocks`);
    }
    const plain = aesCbcDecrypt(this.#encKey, responseIv(this.#encKey, this.ti, next), body);
    try {
      return unpadM2(plain).slice();
    } catch (err) {
      this.#closed = true;
      throw err;
    }
  }
}

// ── ChangeKey ────────────────────────────────────────────────────────────────

export interface KeyChange {
  readonly keyNo: number;
  readonly newKey: Uint8Array;
  /** Key version byte stored with the key (default 1). */
  readonly version?: number;
  /** Current value of the key; required unless it is the key the session authenticated with. */
  readonly oldKey?: Uint8Array;
}

/**
 * ChangeKey in full mode: 90 C4 00 00 29 KeyNo E(...) MACt 00. For the session's own key the
 * plaintext is NewKey ‖ KeyVer; for another key (NewKey ⊕ OldKey) ‖ KeyVer ‖ CRC32NK(NewKey).
 */
export function changeKeyCommand(session: Ntag424Session, change: KeyChange): Uint8Array {
  requireKeyNo(change.keyNo);
  requireKey(change.newKey, 'new key');
  const version = change.version ?? 1;
  if (!Number.isInteger(version) || version < 0 || version > 0xff) {
    throw new AgentError('bad_arguments', 'key version must be a byte');
  }
  let plain: Uint8Array;
  if (change.keyNo === session.keyNo) {
    plain = concatBytes(change.newKey, new Uint8Array([version]));
  } else {
    if (!change.oldKey) throw new AgentError('bad_arguments', 'changing another key needs its current value');
    requireKey(change.oldKey, 'old key');
    plain = concatBytes(
      xorBytes(change.newKey, change.oldKey),
      new Uint8Array([version]),
      crc32JamLe(change.newKey),
    );
  }
  return session.command(NTAG424_INS.CHANGE_KEY, new Uint8Array([change.keyNo]), plain, 'full');
}

/**
 * Checks the ChangeKey answer: bare 9100 when the session's own key changed (the session ends),
 * MACt 9100 otherwise.
 */
export function changeKeyResult(session: Ntag424Session, keyNo: number, answer: ResponseApdu): void {
  if (keyNo === session.keyNo) {
    if (answer.sw !== NTAG424_SW.OK) {
      session.close();
      throw ntag424StatusError(answer.sw, 'change key');
    }
    session.close();
    if (answer.data.length !== 0) {
      throw new AgentError(
        'malformed',
        'NTAG 424 change key: unexpected data after changing the session key',
      );
    }
    return;
  }
  const data = session.response(answer, 'mac', 'change key');
  if (data.length !== 0) throw new AgentError('malformed', 'NTAG 424 change key: unexpected answer data');
}

/** GetCardUID (90 51, full mode): the real UID even when the card sends a random one at anticollision. */
export function getCardUidCommand(session: Ntag424Session): Uint8Array {
  return session.command(NTAG424_INS.GET_CARD_UID, new Uint8Array(0), new Uint8Array(0), 'full');
}

export function getCardUidResult(session: Ntag424Session, answer: ResponseApdu): Uint8Array {
  const uid = session.response(answer, 'full', 'get card UID');
  if (uid.length !== 7 && uid.length !== 4 && uid.length !== 10) {
    throw new AgentError('malformed', 'NTAG 424 get card UID: bad UID length', { length: uid.length });
  }
  return uid;
}

// ── Key diversification ──────────────────────────────────────────────────────

/** AN10922 "AID" bytes of this system (3 bytes, fixed). */
export const NTAG424_DIVERSIFICATION_AID = new TextEncoder().encode('VA1');
/** AN10922 system identifier of this system; the key number is appended to it. */
export const NTAG424_SYSTEM_ID = new TextEncoder().encode('vehicle-agent');

/**
 * The per-card key for `keyNo`: AN10922(siteKey, UID ‖ 'VA1' ‖ systemId ‖ keyNo). Every card and
 * every key number gets its own key, so one card's keys say nothing about another's or the site key.
 */
export function ntag424CardKey(
  siteKey: Uint8Array,
  uid: Uint8Array,
  keyNo: number,
  systemId: Uint8Array = NTAG424_SYSTEM_ID,
): Uint8Array {
  requireKey(siteKey, 'site key');
  requireKeyNo(keyNo);
  if (uid.length !== 4 && uid.length !== 7 && uid.length !== 10) {
    throw new AgentError('malformed', 'card UID must be 4, 7 or 10 bytes', { length: uid.length });
  }
  const m = concatBytes(uid, NTAG424_DIVERSIFICATION_AID, systemId, new Uint8Array([keyNo]));
  if (m.length > 31) throw new AgentError('bad_arguments', 'diversification input too long (system id)');
  return diversifyAes128(siteKey, m);
}

// ── Flows over a transceive ──────────────────────────────────────────────────

export interface Ntag424FlowOptions {
  /** Source of RndA; tests inject fixed values. Defaults to node:crypto randomBytes. */
  readonly random?: (length: number) => Uint8Array;
}

function randomSource(options: Ntag424FlowOptions): (length: number) => Uint8Array {
  return options.random ?? ((length) => new Uint8Array(randomBytes(length)));
}

export async function selectNdefApplication(transceive: Transceive): Promise<void> {
  checkSelectResponse(await exchange(transceive, selectNdefApplicationApdu()));
}

/** AuthenticateEV2First with `key` as key number `keyNo`; throws coded AgentErrors. */
export async function authenticateEv2First(
  transceive: Transceive,
  key: Uint8Array,
  keyNo: number,
  options: Ntag424FlowOptions = {},
): Promise<Ntag424Session> {
  requireKey(key, 'authentication key');
  const rndA = randomSource(options)(16);
  const r1 = await exchange(transceive, authFirstCommand(keyNo));
  const challenge = authFirstAnswer(key, r1, rndA);
  const r2 = await exchange(transceive, challenge.apdu);
  return authFirstComplete(key, keyNo, challenge, r2);
}

export async function changeKey(
  transceive: Transceive,
  session: Ntag424Session,
  change: KeyChange,
): Promise<void> {
  const apdu = changeKeyCommand(session, change);
  changeKeyResult(session, change.keyNo, await exchange(transceive, apdu));
}

export async function getCardUid(transceive: Transceive, session: Ntag424Session): Promise<Uint8Array> {
  const apdu = getCardUidCommand(session);
  return getCardUidResult(session, await exchange(transceive, apdu));
}

export interface Ntag424Authenticated {
  readonly keyNo: number;
  /** The open session, for further protected commands in the same tap. */
  readonly session: Ntag424Session;
}

/**
 * A tap: select the NDEF application and run EV2First with this card's diversified key.
 * bad_proof when the card does not hold that key; other codes per ntag424StatusError.
 */
export function authenticateCard(
  transceive: Transceive,
  siteKey: Uint8Array,
  uid: Uint8Array,
  keyNo: number = NTAG424_TAP_KEY_NO,
  options: Ntag424FlowOptions = {},
): Promise<CardResult<Ntag424Authenticated>> {
  return runCardFlow(async () => {
    const key = ntag424CardKey(siteKey, uid, keyNo);
    await selectNdefApplication(transceive);
    const session = await authenticateEv2First(transceive, key, keyNo, options);
    return { keyNo, session };
  });
}

export interface PersonaliseOptions extends Ntag424FlowOptions {
  /** Version byte stored with every new key (default 1). */
  readonly keyVersion?: number;
  /**
   * Keys other than key 0 to set first, in the same session. Their current value is `oldKey`,
   * or the factory key when absent.
   */
  readonly otherKeys?: readonly {
    readonly keyNo: number;
    readonly newKey: Uint8Array;
    readonly oldKey?: Uint8Array;
  }[];
  /** After the change, authenticate with this key number and key to prove the card took it (default key 0). */
  readonly verify?: { readonly keyNo: number; readonly key: Uint8Array };
}

export interface PersonaliseOutcome {
  /** True when the card already held the new keys (an earlier enrollment of the same card). */
  readonly alreadyPersonalised: boolean;
  /** Key numbers written in this run. */
  readonly changedKeys: readonly number[];
}

/**
 * Enrollment: authenticate as key 0 with `factoryKey`, set `otherKeys` (a key left half-changed
 * by an earlier torn attempt is detected and accepted), then set key 0 to `newKey` last (that
 * ends the session), then re-authenticate to prove the card took the keys. A card whose key 0 is
 * already `newKey` is reported as already personalised after the verification.
 */
export function personaliseCard(
  transceive: Transceive,
  factoryKey: Uint8Array,
  newKey: Uint8Array,
  options: PersonaliseOptions = {},
): Promise<CardResult<PersonaliseOutcome>> {
  return runCardFlow(async () => {
    requireKey(factoryKey, 'factory key');
    requireKey(newKey, 'new key');
    const version = options.keyVersion ?? 1;
    const others = options.otherKeys ?? [];
    for (const other of others) {
      requireKeyNo(other.keyNo);
      if (other.keyNo === NTAG424_MASTER_KEY_NO)
        throw new AgentError('bad_arguments', 'key 0 is set by newKey');
    }
    const verify = options.verify ?? { keyNo: NTAG424_MASTER_KEY_NO, key: newKey };
    await selectNdefApplication(transceive);

    let session: Ntag424Session;
    try {
      session = await authenticateEv2First(transceive, factoryKey, NTAG424_MASTER_KEY_NO, options);
    } catch (err) {
      if (!(err instanceof AgentError) || err.code !== 'bad_proof') throw err;
      // Not factory: maybe ours already. Key 0 is written last, so if it is ours, so are the others.
      await authenticateEv2First(transceive, newKey, NTAG424_MASTER_KEY_NO, options);
      await authenticateEv2First(transceive, verify.key, verify.keyNo, options);
      return { alreadyPersonalised: true, changedKeys: [] };
    }

    const changed: number[] = [];
    for (const other of others) {
      const oldKey = other.oldKey ?? factoryKey;
      try {
        await changeKey(transceive, session, { keyNo: other.keyNo, newKey: other.newKey, version, oldKey });
      } catch (err) {
        if (!(err instanceof AgentError) || err.code !== 'bad_proof') throw err;
        // Integrity error: the key is not `oldKey`. A torn earlier run may have set it already;
        // with oldKey = newKey the card's CRC check passes only if it holds newKey, changing nothing.
        session = await authenticateEv2First(transceive, factoryKey, NTAG424_MASTER_KEY_NO, options);
        await changeKey(transceive, session, {
          keyNo: other.keyNo,
          newKey: other.newKey,
          version,
          oldKey: other.newKey,
        });
      }
      changed.push(other.keyNo);
    }
    await changeKey(transceive, session, { keyNo: NTAG424_MASTER_KEY_NO, newKey, version });
    changed.push(NTAG424_MASTER_KEY_NO);
    await authenticateEv2First(transceive, verify.key, verify.keyNo, options);
    return { alreadyPersonalised: false, changedKeys: changed };
  });
}

/**
 * Enrollment for this system: key 0 (master) and the tap key become this card's diversified keys
 * for their key numbers; keys 2–4 stay as they are (they guard nothing the lock uses). Verifies by
 * authenticating with the tap key, exactly as a tap will.
 */
export function personaliseForSite(
  transceive: Transceive,
  siteKey: Uint8Array,
  uid: Uint8Array,
  options: Ntag424FlowOptions & {
    readonly factoryKey?: Uint8Array;
    readonly tapKeyNo?: number;
    readonly keyVersion?: number;
  } = {},
): Promise<CardResult<PersonaliseOutcome>> {
  return runCardFlow(async () => {
    const tapKeyNo = options.tapKeyNo ?? NTAG424_TAP_KEY_NO;
    const masterKey = ntag424CardKey(siteKey, uid, NTAG424_MASTER_KEY_NO);
    const tapKey = ntag424CardKey(siteKey, uid, tapKeyNo);
    const result = await personaliseCard(transceive, options.factoryKey ?? NTAG424_FACTORY_KEY, masterKey, {
      ...(options.random ? { random: options.random } : {}),
      ...(options.keyVersion === undefined ? {} : { keyVersion: options.keyVersion }),
      otherKeys: tapKeyNo === NTAG424_MASTER_KEY_NO ? [] : [{ keyNo: tapKeyNo, newKey: tapKey }],
      verify: { keyNo: tapKeyNo, key: tapKey },
    });
    if (!result.ok) throw result.error;
    return result.value;
  });
}
