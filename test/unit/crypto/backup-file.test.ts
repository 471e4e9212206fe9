import { createDecipheriv, scryptSync } from 'node:crypto';
import { gunzipSync } from 'node:zlib';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import {
  BACKUP_HEADER_BYTES,
  openBackup,
  readBackupHeader,
  sealBackup,
} from '../../../src/crypto/backup-file.js';

/** The cheapest parameters a file may carry, so the property runs stay quick. */
const FAST = { kdf: { log2N: 14, r: 8, p: 1 } } as const;
const PASS = 'correct horse battery';

/**
 * A backup of `{"hello":"vehicle"}` under PASS with N=2^14, r=8, p=1, salt 16×0x11, nonce 12×0x22,
 * made once by sealBackup: format 1 files must open forever.
 */
const VECTOR =
  '56414241434b555001010e080111111111111111111111111111111111222222222222222222222222000000272be8c41b2ff801cba67932c48cec5813405e262fd02eaf1028188d4f68d452d5cdc3e4403025f31d05642b827afc87b80deb894a7ce86e';

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof AgentError) return err.code;
    throw err;
  }
  return 'opened';
}

describe('backup file format', () => {
  it('opens the format-1 vector', () => {
    expect(openBackup(Buffer.from(VECTOR, 'hex'), PASS).toString()).toBe('{"hello":"vehicle"}');
  });

  it('is laid out as documented: decrypted here with node:crypto from the header alone', () => {
    const file = Buffer.from(VECTOR, 'hex');
    expect(file.subarray(0, 8).toString('ascii')).toBe('VABACKUP');
    expect([...file.subarray(8, 13)]).toEqual([1, 1, 14, 8, 1]);
    const salt = file.subarray(13, 29);
    const nonce = file.subarray(29, 41);
    expect(salt.equals(Buffer.alloc(16, 0x11))).toBe(true);
    expect(nonce.equals(Buffer.alloc(12, 0x22))).toBe(true);
    const length = file.readUInt32BE(41);
    expect(file.length).toBe(45 + length + 16);
    const key = scryptSync(PASS, salt, 32, { N: 2 ** 14, r: 8, p: 1 });
    const d = createDecipheriv('aes-256-gcm', key, nonce);
    d.setAAD(file.subarray(0, 45));
    d.setAuthTag(file.subarray(45 + length));
    const plain = Buffer.concat([d.update(file.subarray(45, 45 + length)), d.final()]);
    expect(gunzipSync(plain).toString()).toBe('{"hello":"vehicle"}');
  });

  it('reads the header without the passphrase', () => {
    const h = readBackupHeader(Buffer.from(VECTOR, 'hex'));
    expect(h).toMatchObject({ version: 1, kdf: { log2N: 14, r: 8, p: 1 } });
    expect(BACKUP_HEADER_BYTES).toBe(45);
  });

  it('uses a fresh salt and nonce for every backup', () => {
    const a = sealBackup(Buffer.from('x'), PASS, FAST);
    const b = sealBackup(Buffer.from('x'), PASS, FAST);
    expect(a.subarray(13, 41).equals(b.subarray(13, 41))).toBe(false);
  });

  it('round-trips any content', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 4096 }),
        fc.string({ minLength: 1, maxLength: 40 }),
        (content, pass) => {
          expect(
            Buffer.from(openBackup(sealBackup(content, pass, FAST), pass)).equals(Buffer.from(content)),
          ).toBe(true);
        },
      ),
      { numRuns: 15 },
    );
  });

  it('refuses a wrong passphrase with backup_auth_failed', () => {
    expect(codeOf(() => openBackup(Buffer.from(VECTOR, 'hex'), 'correct horse batterY'))).toBe(
      'backup_auth_failed',
    );
  });

  it('refuses every single flipped byte with a coded error, never opening', () => {
    const file = Buffer.from(VECTOR, 'hex');
    const codes = new Set<string>();
    for (let i = 0; i < file.length; i++) {
      const bad = Buffer.from(file);
      bad[i] = (bad[i] ?? 0) ^ 0x01;
      const code = codeOf(() => openBackup(bad, PASS));
      expect(['backup_invalid', 'backup_truncated', 'backup_auth_failed'], `byte ${i}`).toContain(code);
      codes.add(code);
    }
    expect([...codes].sort()).toEqual(['backup_auth_failed', 'backup_invalid', 'backup_truncated']);
  });

  it('calls every cut file truncated, and bytes after the end invalid', () => {
    const file = Buffer.from(VECTOR, 'hex');
    for (let n = 1; n < file.length; n++) {
      expect(
        codeOf(() => openBackup(file.subarray(0, n), PASS)),
        `${n} bytes`,
      ).toBe('backup_truncated');
    }
    expect(codeOf(() => openBackup(Buffer.alloc(0), PASS))).toBe('backup_invalid');
    expect(codeOf(() => openBackup(Buffer.concat([file, Buffer.from([0])]), PASS))).toBe('backup_invalid');
  });

  it('refuses what is not a backup, a later format, and scrypt parameters past the limits', () => {
    const file = Buffer.from(VECTOR, 'hex');
    expect(codeOf(() => openBackup(Buffer.from('{"ops":[]}'), PASS))).toBe('backup_invalid');
    const cases: [number, number, string][] = [
      [8, 2, 'version'],
      [9, 7, 'kdf'],
      [10, 30, 'N'],
      [10, 13, 'N too small'],
      [11, 0, 'r'],
      [12, 9, 'p'],
    ];
    for (const [at, value, what] of cases) {
      const bad = Buffer.from(file);
      bad[at] = value;
      expect(
        codeOf(() => readBackupHeader(bad)),
        what,
      ).toBe('backup_invalid');
    }
    // N = 2^20 with r = 16 asks for 2 GiB: refused before any derivation.
    const bomb = Buffer.from(file);
    bomb[10] = 20;
    bomb[11] = 16;
    expect(codeOf(() => readBackupHeader(bomb))).toBe('backup_invalid');
  });
});
