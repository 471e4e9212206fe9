import type { Code } from '../../core/codes.js';
import { AgentError } from '../../core/errors.js';

/**
 * PN532 command payloads (PN532 User Manual UM0701-02 §7): builders return the bytes that follow
 * the TFI (command code first); parsers take the response bytes that follow the TFI (response code
 * first, which is the command code + 1). Pure.
 */

export const CMD = {
  Diagnose: 0x00,
  GetFirmwareVersion: 0x02,
  GetGeneralStatus: 0x04,
  ReadRegister: 0x06,
  WriteRegister: 0x08,
  ReadGPIO: 0x0c,
  WriteGPIO: 0x0e,
  SetParameters: 0x12,
  SAMConfiguration: 0x14,
  PowerDown: 0x16,
  RFConfiguration: 0x32,
  InDataExchange: 0x40,
  InCommunicateThru: 0x42,
  InDeselect: 0x44,
  InListPassiveTarget: 0x4a,
  InRelease: 0x52,
  InAutoPoll: 0x60,
} as const;

export type CommandName = keyof typeof CMD;

export function commandName(code: number): string {
  for (const [name, value] of Object.entries(CMD)) if (value === code) return name;
  return `0x${code.toString(16).padStart(2, '0')}`;
}

/** RFConfiguration items (§7.3.1). */
export const RF_ITEM = { field: 0x01, timings: 0x02, maxRtyCom: 0x04, maxRetries: 0x05 } as const;

/** SetParameters flags (§7.2.9). */
export const PARAM = {
  nadUsed: 0x01,
  didUsed: 0x02,
  automaticAtrRes: 0x04,
  automaticRats: 0x10,
  iso14443_4Picc: 0x20,
  removePrePostAmble: 0x40,
} as const;

/** InListPassiveTarget BrTy for 106 kbps type A. */
export const BRTY_106_TYPE_A = 0x00;

/** Data bytes InDataExchange carries each way in one command (§7.3.8). */
export const MAX_EXCHANGE_DATA = 262;

/** Status byte bits of InDataExchange / InCommunicateThru answers. */
export const STATUS_MI = 0x40;
export const STATUS_ERROR_MASK = 0x3f;

function bytes(...values: number[]): Uint8Array {
  return Uint8Array.from(values, (v) => v & 0xff);
}

// ── builders ────────────────────────────────────────────────────────────────

/** SAMConfiguration: mode 1 = normal (no SAM); leaves Low-VBat mode on a PN532 v1.6. */
export function samConfiguration(mode = 0x01, timeout = 0x14, useIrq = true): Uint8Array {
  return bytes(CMD.SAMConfiguration, mode, timeout, useIrq ? 0x01 : 0x00);
}

export function getFirmwareVersion(): Uint8Array {
  return bytes(CMD.GetFirmwareVersion);
}

export function setParameters(flags: number): Uint8Array {
  return bytes(CMD.SetParameters, flags);
}

/**
 * RFConfiguration MaxRetries. `passiveActivation` 0xFF makes InListPassiveTarget wait until a
 * card enters the field; n < 0xFF gives up after n+1 tries and answers NbTg = 0.
 */
export function rfMaxRetries(atr: number, psl: number, passiveActivation: number): Uint8Array {
  return bytes(CMD.RFConfiguration, RF_ITEM.maxRetries, atr, psl, passiveActivation);
}

export function inListPassiveTarget(
  maxTargets = 1,
  brTy = BRTY_106_TYPE_A,
  initiatorData?: Uint8Array,
): Uint8Array {
  return Uint8Array.of(CMD.InListPassiveTarget, maxTargets, brTy, ...(initiatorData ?? []));
}

/** InDataExchange to target `tg`; `more` sets the MI bit: the host has more data to chain. */
export function inDataExchange(tg: number, data: Uint8Array, more = false): Uint8Array {
  if (data.length > MAX_EXCHANGE_DATA) {
    throw new AgentError('frame_too_large', `InDataExchange carries at most ${MAX_EXCHANGE_DATA} bytes`, {
      length: data.length,
    });
  }
  const out = new Uint8Array(2 + data.length);
  out[0] = CMD.InDataExchange;
  out[1] = (tg & 0x0f) | (more ? STATUS_MI : 0);
  out.set(data, 2);
  return out;
}

export function inRelease(tg = 0): Uint8Array {
  return bytes(CMD.InRelease, tg);
}

// ── parsers ─────────────────────────────────────────────────────────────────

function expectResponse(response: Uint8Array, command: number, minParams: number): Uint8Array {
  if (response[0] !== command + 1) {
    throw new AgentError('malformed', `expected the answer to ${commandName(command)}`, {
      got: response[0] ?? null,
    });
  }
  const params = response.subarray(1);
  if (params.length < minParams) {
    throw new AgentError('malformed', `${commandName(command)} answer too short`, { length: params.length });
  }
  return params;
}

export interface FirmwareVersion {
  /** 0x32 for a PN532. */
  readonly ic: number;
  readonly version: number;
  readonly revision: number;
  /** Bit 0 ISO 14443 type A, bit 1 type B, bit 2 ISO 18092. */
  readonly support: number;
}

export function parseFirmwareVersion(response: Uint8Array): FirmwareVersion {
  const p = expectResponse(response, CMD.GetFirmwareVersion, 4);
  return { ic: p[0] ?? 0, version: p[1] ?? 0, revision: p[2] ?? 0, support: p[3] ?? 0 };
}

export function formatFirmware(fw: FirmwareVersion): string {
  const ic = fw.ic === 0x32 ? 'PN532' : `IC 0x${fw.ic.toString(16)}`;
  return `${ic} v${fw.version}.${fw.revision}`;
}

/** A 106 kbps type A target as InListPassiveTarget reports it. */
export interface TypeATarget {
  readonly tg: number;
  /** SENS_RES (ATQA), two bytes in the order the PN532 sends them. */
  readonly atqa: Uint8Array;
  /** SEL_RES (SAK). */
  readonly sak: number;
  /** NFCID1. */
  readonly uid: Uint8Array;
  /** ATS starting with TL, when the card is ISO 14443-4 and the chip sent RATS. */
  readonly ats?: Uint8Array;
}

/** What a target is likely to be, from SAK and ATQA (a guess: the card proves nothing here). */
export type TargetKind = 'iso14443-4' | 'mifare-classic' | 'ntag21x' | 'unknown';

export function guessTargetKind(target: { readonly sak: number; readonly atqa: Uint8Array }): TargetKind {
  if (target.sak & 0x20) return 'iso14443-4';
  if (target.sak === 0x08 || target.sak === 0x18 || target.sak === 0x09 || target.sak === 0x88)
    return 'mifare-classic';
  if (target.sak === 0x00 && (target.atqa[1] ?? 0) === 0x44) return 'ntag21x';
  return 'unknown';
}

/**
 * Parses an InListPassiveTarget answer for BrTy 0x00: NbTg then, per target,
 * Tg SENS_RES[2] SEL_RES NFCIDLength NFCID1[..] [ATS (TL first)]. The ATS is present when the SAK
 * announces ISO 14443-4 support (the chip sends RATS by itself).
 */
export function parseTypeATargets(response: Uint8Array): TypeATarget[] {
  const p = expectResponse(response, CMD.InListPassiveTarget, 1);
  const count = p[0] ?? 0;
  if (count > 2)
    throw new AgentError('malformed', 'InListPassiveTarget reports more than 2 targets', { count });
  const targets: TypeATarget[] = [];
  let i = 1;
  const need = (n: number): void => {
    if (i + n > p.length) throw new AgentError('malformed', 'InListPassiveTarget answer truncated');
  };
  for (let t = 0; t < count; t++) {
    need(5);
    const tg = p[i] ?? 0;
    const atqa = p.slice(i + 1, i + 3);
    const sak = p[i + 3] ?? 0;
    const uidLength = p[i + 4] ?? 0;
    i += 5;
    if (uidLength !== 4 && uidLength !== 7 && uidLength !== 10) {
      throw new AgentError('malformed', 'NFCID1 must be 4, 7 or 10 bytes', { uidLength });
    }
    need(uidLength);
    const uid = p.slice(i, i + uidLength);
    i += uidLength;
    let ats: Uint8Array | undefined;
    if (sak & 0x20 && i < p.length) {
      const tl = p[i] ?? 0;
      if (tl < 1) throw new AgentError('malformed', 'ATS length byte is 0');
      need(tl);
      ats = p.slice(i, i + tl);
      i += tl;
    }
    targets.push(ats ? { tg, atqa, sak, uid, ats } : { tg, atqa, sak, uid });
  }
  return targets;
}

/** Encodes one type A target record (the emulator's side of parseTypeATargets). */
export function encodeTypeATarget(target: TypeATarget): Uint8Array {
  return Uint8Array.of(
    target.tg,
    ...target.atqa,
    target.sak,
    target.uid.length,
    ...target.uid,
    ...(target.ats ?? []),
  );
}

export interface ExchangeAnswer {
  /** Error code, the low 6 bits of the status byte (0 = success). */
  readonly error: number;
  /** More information: the target has more data; send InDataExchange again to fetch it. */
  readonly more: boolean;
  readonly data: Uint8Array;
}

/** Parses an InDataExchange answer: Status DataIn[]. */
export function parseInDataExchange(response: Uint8Array): ExchangeAnswer {
  const p = expectResponse(response, CMD.InDataExchange, 1);
  const status = p[0] ?? 0;
  return { error: status & STATUS_ERROR_MASK, more: (status & STATUS_MI) !== 0, data: p.slice(1) };
}

/** Parses the one-status-byte answer of InRelease / InDeselect. */
export function parseStatusOnly(response: Uint8Array, command: number): number {
  const p = expectResponse(response, command, 1);
  return (p[0] ?? 0) & STATUS_ERROR_MASK;
}

/** Checks that the answer is the response code of `command` (commands answered with no data). */
export function expectEmptyAnswer(response: Uint8Array, command: number): void {
  expectResponse(response, command, 0);
}

// ── error codes (§7.1, Table 4) ─────────────────────────────────────────────

export const PN532_ERRORS: Readonly<Record<number, string>> = {
  1: 'time out: the target has not answered',
  2: 'CRC error detected by the contactless interface',
  3: 'parity error detected by the contactless interface',
  4: 'erroneous bit count during anticollision/select',
  5: 'framing error during MIFARE operation',
  6: 'abnormal bit collision during bitwise anticollision',
  7: 'communication buffer size insufficient',
  9: 'RF buffer overflow detected by the contactless interface',
  10: 'RF field not switched on in time by the counterpart',
  11: 'RF protocol error',
  13: 'temperature error: the antenna drivers overheated',
  14: 'internal buffer overflow',
  16: 'invalid parameter',
  18: 'DEP: unsupported command received from the initiator',
  19: 'received data format does not match the specification',
  20: 'MIFARE authentication error',
  35: 'ISO 14443-3: UID check byte is wrong',
  37: 'DEP: invalid device state',
  38: 'operation not allowed in this configuration',
  39: 'command not acceptable in the current context',
  41: 'the target has been released by the initiator',
  42: 'ISO 14443-3B: the card ID does not match',
  43: 'ISO 14443-3B: the card previously activated has disappeared',
  44: 'DEP: NFCID3 mismatch',
  45: 'over-current event detected',
  46: 'DEP: NAD missing',
};

export function pn532ErrorText(error: number): string {
  return PN532_ERRORS[error] ?? `unknown PN532 error 0x${error.toString(16).padStart(2, '0')}`;
}

/**
 * Errors that mean the RF link to the card broke: in practice the card was pulled away (or is
 * out of range) during the exchange.
 */
const LINK_LOST = new Set([0x01, 0x02, 0x03, 0x05, 0x0a, 0x0b, 0x13, 0x29, 0x2b]);

/** The AgentError code for a PN532 error status during a card exchange. */
export function pn532ErrorCode(error: number): Code {
  return LINK_LOST.has(error) ? 'card_removed' : 'reader_error';
}

export function pn532Error(error: number, command: number): AgentError {
  const text = pn532ErrorText(error);
  return new AgentError(pn532ErrorCode(error), `${commandName(command)}: ${text}`, {
    pn532Error: error,
    command: commandName(command),
  });
}
