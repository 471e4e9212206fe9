import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import {
  CMD,
  encodeTypeATarget,
  formatFirmware,
  guessTargetKind,
  inDataExchange,
  inListPassiveTarget,
  parseFirmwareVersion,
  parseInDataExchange,
  parseTypeATargets,
  pn532Error,
  pn532ErrorText,
  rfMaxRetries,
  samConfiguration,
} from '../../../src/nfc/pn532/commands.js';

function hex(s: string): Uint8Array {
  const clean = s.replace(/\s+/g, '');
  return Uint8Array.from(clean.match(/../g) ?? [], (b) => Number.parseInt(b, 16));
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof AgentError ? err.code : 'not-agent-error';
  }
  return undefined;
}

describe('PN532 command builders', () => {
  it('builds the payloads the chip expects', () => {
    expect(samConfiguration()).toEqual(hex('14 01 14 01'));
    expect(rfMaxRetries(0xff, 0x01, 0xff)).toEqual(hex('32 05 FF 01 FF'));
    expect(inListPassiveTarget(1)).toEqual(hex('4A 01 00'));
    expect(inDataExchange(1, hex('00 A4 04 00'))).toEqual(hex('40 01 00 A4 04 00'));
    expect(inDataExchange(1, hex('AA'), true)).toEqual(hex('40 41 AA'));
  });

  it('refuses more than 262 bytes in one InDataExchange', () => {
    expect(codeOf(() => inDataExchange(1, new Uint8Array(263)))).toBe('frame_too_large');
    expect(inDataExchange(1, new Uint8Array(262)).length).toBe(264);
  });
});

describe('PN532 answer parsers', () => {
  it('parses the firmware version', () => {
    const fw = parseFirmwareVersion(hex('03 32 01 06 07'));
    expect(fw).toEqual({ ic: 0x32, version: 1, revision: 6, support: 7 });
    expect(formatFirmware(fw)).toBe('PN532 v1.6');
    expect(codeOf(() => parseFirmwareVersion(hex('05 32 01 06 07')))).toBe('malformed');
    expect(codeOf(() => parseFirmwareVersion(hex('03 32 01')))).toBe('malformed');
  });

  it('parses a type A target without ATS (NTAG213 as a PN532 reports it)', () => {
    const [t] = parseTypeATargets(hex('4B 01 01 00 44 00 07 04 A1 B2 C3 D4 E5 F6'));
    expect(t).toEqual({ tg: 1, atqa: hex('00 44'), sak: 0, uid: hex('04 A1 B2 C3 D4 E5 F6') });
    expect(t && guessTargetKind(t)).toBe('ntag21x');
  });

  it('parses a type A ISO 14443-4 target with its ATS (TL first)', () => {
    const [t] = parseTypeATargets(hex('4B 01 01 03 44 20 07 04 11 22 33 44 55 66 06 77 75 81 02 80'));
    expect(t?.ats).toEqual(hex('06 77 75 81 02 80'));
    expect(t && guessTargetKind(t)).toBe('iso14443-4');
  });

  it('parses "no target" and a MIFARE Classic', () => {
    expect(parseTypeATargets(hex('4B 00'))).toEqual([]);
    const [t] = parseTypeATargets(hex('4B 01 01 00 04 08 04 DE AD BE EF'));
    expect(t && guessTargetKind(t)).toBe('mifare-classic');
  });

  it('round-trips encodeTypeATarget', () => {
    const target = {
      tg: 1,
      atqa: hex('00 44'),
      sak: 0x20,
      uid: hex('04 01 02 03 04 05 06'),
      ats: hex('05 78 80 70 02'),
    };
    expect(parseTypeATargets(Uint8Array.of(0x4b, 0x01, ...encodeTypeATarget(target)))).toEqual([target]);
  });

  it('rejects malformed target lists', () => {
    expect(codeOf(() => parseTypeATargets(hex('4B 01 01 00 44 00 07 04 A1')))).toBe('malformed');
    expect(codeOf(() => parseTypeATargets(hex('4B 01 01 00 44 00 05 04 A1 B2 C3 D4')))).toBe('malformed');
    expect(codeOf(() => parseTypeATargets(hex('4B 03')))).toBe('malformed');
    expect(codeOf(() => parseTypeATargets(hex('4B 01 01 00 44 20 04 01 02 03 04 09 01')))).toBe('malformed');
  });

  it('parses InDataExchange status: success, MI and error codes', () => {
    expect(parseInDataExchange(hex('41 00 90 00'))).toEqual({ error: 0, more: false, data: hex('90 00') });
    expect(parseInDataExchange(hex('41 40 01 02'))).toEqual({ error: 0, more: true, data: hex('01 02') });
    expect(parseInDataExchange(hex('41 01'))).toEqual({ error: 1, more: false, data: new Uint8Array(0) });
  });

  it('maps PN532 error codes to coded errors with readable text', () => {
    expect(pn532Error(0x01, CMD.InDataExchange).code).toBe('card_removed');
    expect(pn532Error(0x01, CMD.InDataExchange).message).toContain('has not answered');
    expect(pn532Error(0x29, CMD.InDataExchange).code).toBe('card_removed');
    expect(pn532Error(0x0e, CMD.InDataExchange).code).toBe('reader_error');
    expect(pn532Error(0x27, CMD.InDataExchange).details).toMatchObject({
      pn532Error: 0x27,
      command: 'InDataExchange',
    });
    expect(pn532ErrorText(0x3f)).toContain('unknown');
  });
});
