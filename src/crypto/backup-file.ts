import { createCipheriv, createDecipheriv, randomBytes, scryptSync } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import { AgentError } from '../core/errors.js';

/**
 * The backup file (`vehicle-agent backup`, docs/backup.md): a passphrase-encrypted container.
 * Pure: bytes in, bytes out.
 *
 *   offset  size  field
 *        0     8  magic "VABACKUP"
 *        8     1  format version (1)
 *        9     1  KDF (1 = scrypt)
 *       10     1  scrypt log2(N)
 *       11     1  scrypt r
 *       12     1  scrypt p
 *       13    16  salt
 *       29    12  AES-GCM nonce
 *       41     4  ciphertext length, big-endian
 *       45     n  AES-256-GCM ciphertext of the gzipped content
 *     45+n    16  GCM tag
 *
 * The key is scrypt(passphrase, salt, N, r, p) → 32 bytes; the 45 header bytes are the GCM
 * additional data, so a changed parameter fails authentication like a changed ciphertext byte.
 * The stated length tells a cut file (`backup_truncated`) from a damaged one; GCM cannot tell a
 * wrong passphrase from damage (`backup_auth_failed` names both). Decoding bounds the scrypt
 * parameters a file may ask for, so a crafted header cannot make the reader spend gigabytes.
 */

export const BACKUP_MAGIC = Buffer.from('VABACKUP', 'ascii');
export const BACKUP_VERSION = 1;
const KDF_SCRYPT = 1;
const SALT_BYTES = 16;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
export const BACKUP_HEADER_BYTES = 8 + 1 + 1 + 3 + SALT_BYTES + NONCE_BYTES + 4;
/** Largest ciphertext accepted (a 100 000-credential keyring is well under this). */
export const MAX_BACKUP_CIPHERTEXT = 256 * 1024 * 1024;

export interface ScryptParams {
  readonly log2N: number;
  readonly r: number;
  readonly p: number;
}

/** N = 2^15, r = 8, p = 1: 32 MiB and about a second on a Raspberry Pi 4 per backup or restore. */
export const DEFAULT_SCRYPT: ScryptParams = { log2N: 15, r: 8, p: 1 };
/** What a file may ask for; and at most MAX_SCRYPT_BYTES of memory (128 × N × r). */
const LIMITS = { log2N: [14, 20], r: [1, 16], p: [1, 4] } as const;
const MAX_SCRYPT_BYTES = 256 * 1024 * 1024;

export interface BackupHeader {
  readonly version: number;
  readonly kdf: ScryptParams;
  readonly salt: Buffer;
  readonly nonce: Buffer;
  readonly ciphertextBytes: number;
}

function checkParams(kdf: ScryptParams): void {
  for (const name of ['log2N', 'r', 'p'] as const) {
    const [min, max] = LIMITS[name];
    const v = kdf[name];
    if (!Number.isInteger(v) || v < min || v > max) {
      throw new AgentError(
        'backup_invalid',
        `the backup asks for scrypt ${name} = ${v}; allowed ${min}..${max} (a damaged or crafted header)`,
        { field: name },
      );
    }
  }
  if (128 * 2 ** kdf.log2N * kdf.r > MAX_SCRYPT_BYTES) {
    throw new AgentError(
      'backup_invalid',
      `the backup asks for scrypt N = 2^${kdf.log2N}, r = ${kdf.r}: over ${MAX_SCRYPT_BYTES >> 20} MiB of memory`,
    );
  }
}

function scryptMemory(kdf: ScryptParams): number {
  return 2 * 128 * 2 ** kdf.log2N * kdf.r;
}

function deriveKey(passphrase: string, salt: Uint8Array, kdf: ScryptParams): Buffer {
  return scryptSync(passphrase.normalize('NFC'), salt, 32, {
    N: 2 ** kdf.log2N,
    r: kdf.r,
    p: kdf.p,
    maxmem: scryptMemory(kdf),
  });
}

function encodeHeader(h: BackupHeader): Buffer {
  const out = Buffer.alloc(BACKUP_HEADER_BYTES);
  BACKUP_MAGIC.copy(out, 0);
  out[8] = h.version;
  out[9] = KDF_SCRYPT;
  out[10] = h.kdf.log2N;
  out[11] = h.kdf.r;
  out[12] = h.kdf.p;
  h.salt.copy(out, 13);
  h.nonce.copy(out, 13 + SALT_BYTES);
  out.writeUInt32BE(h.ciphertextBytes, 13 + SALT_BYTES + NONCE_BYTES);
  return out;
}

/** Reads and checks the header (no passphrase needed). */
export function readBackupHeader(file: Uint8Array): BackupHeader {
  const bytes = Buffer.from(file.buffer, file.byteOffset, file.byteLength);
  const magicSeen = bytes.subarray(0, Math.min(bytes.length, BACKUP_MAGIC.length));
  if (!magicSeen.equals(BACKUP_MAGIC.subarray(0, magicSeen.length)) || bytes.length === 0) {
    throw new AgentError('backup_invalid', 'not a vehicle-agent backup (it does not start with VABACKUP)');
  }
  if (bytes.length < BACKUP_HEADER_BYTES) {
    throw new AgentError(
      'backup_truncated',
      `the backup is cut short: ${bytes.length} bytes, less than its ${BACKUP_HEADER_BYTES}-byte header`,
      { bytes: bytes.length },
    );
  }
  const version = bytes[8] ?? 0;
  if (version !== BACKUP_VERSION) {
    throw new AgentError(
      'backup_invalid',
      `backup format ${version} is not supported (this agent reads format ${BACKUP_VERSION})`,
      { version },
    );
  }
  if (bytes[9] !== KDF_SCRYPT) {
    throw new AgentError('backup_invalid', `unknown key derivation ${bytes[9]} in the backup header`);
  }
  const kdf = { log2N: bytes[10] ?? 0, r: bytes[11] ?? 0, p: bytes[12] ?? 0 };
  checkParams(kdf);
  const ciphertextBytes = bytes.readUInt32BE(13 + SALT_BYTES + NONCE_BYTES);
  if (ciphertextBytes > MAX_BACKUP_CIPHERTEXT) {
    throw new AgentError(
      'backup_invalid',
      `the backup header states ${ciphertextBytes} bytes, over the limit`,
    );
  }
  return {
    version,
    kdf,
    salt: Buffer.from(bytes.subarray(13, 13 + SALT_BYTES)),
    nonce: Buffer.from(bytes.subarray(13 + SALT_BYTES, 13 + SALT_BYTES + NONCE_BYTES)),
    ciphertextBytes,
  };
}

export interface SealOptions {
  readonly kdf?: ScryptParams;
  /** Fixed salt and nonce: test vectors only (a repeated nonce under one key breaks GCM). */
  readonly salt?: Uint8Array;
  readonly nonce?: Uint8Array;
}

/** Compresses and encrypts `content` under `passphrase`. */
export function sealBackup(content: Uint8Array, passphrase: string, options: SealOptions = {}): Buffer {
  const kdf = options.kdf ?? DEFAULT_SCRYPT;
  checkParams(kdf);
  const salt = Buffer.from(options.salt ?? randomBytes(SALT_BYTES));
  const nonce = Buffer.from(options.nonce ?? randomBytes(NONCE_BYTES));
  if (salt.length !== SALT_BYTES || nonce.length !== NONCE_BYTES)
    throw new AgentError('bad_arguments', 'salt must be 16 bytes and nonce 12');
  const plain = gzipSync(content);
  const header = encodeHeader({ version: BACKUP_VERSION, kdf, salt, nonce, ciphertextBytes: plain.length });
  const cipher = createCipheriv('aes-256-gcm', deriveKey(passphrase, salt, kdf), nonce);
  cipher.setAAD(header);
  const body = Buffer.concat([cipher.update(plain), cipher.final()]);
  return Buffer.concat([header, body, cipher.getAuthTag()]);
}

/** Checks, decrypts and decompresses a backup. Coded errors: backup_invalid, backup_truncated, backup_auth_failed. */
export function openBackup(file: Uint8Array, passphrase: string): Buffer {
  const header = readBackupHeader(file);
  const bytes = Buffer.from(file.buffer, file.byteOffset, file.byteLength);
  const expected = BACKUP_HEADER_BYTES + header.ciphertextBytes + TAG_BYTES;
  if (bytes.length < expected) {
    throw new AgentError(
      'backup_truncated',
      `the backup is cut short: ${bytes.length} of its ${expected} bytes`,
      { bytes: bytes.length, expected },
    );
  }
  if (bytes.length > expected) {
    throw new AgentError(
      'backup_invalid',
      `the backup has ${bytes.length - expected} bytes after its end (damaged, or two files joined)`,
      { bytes: bytes.length, expected },
    );
  }
  const decipher = createDecipheriv(
    'aes-256-gcm',
    deriveKey(passphrase, header.salt, header.kdf),
    header.nonce,
  );
  decipher.setAAD(bytes.subarray(0, BACKUP_HEADER_BYTES));
  decipher.setAuthTag(bytes.subarray(expected - TAG_BYTES));
  let plain: Buffer;
  try {
    plain = Buffer.concat([
      decipher.update(bytes.subarray(BACKUP_HEADER_BYTES, expected - TAG_BYTES)),
      decipher.final(),
    ]);
  } catch {
    throw new AgentError(
      'backup_auth_failed',
      'the backup does not open: wrong passphrase, or the file was changed after it was written',
    );
  }
  try {
    return gunzipSync(plain, { maxOutputLength: 4 * MAX_BACKUP_CIPHERTEXT });
  } catch (err) {
    throw new AgentError(
      'backup_invalid',
      `the backup's content does not decompress: ${(err as Error).message}`,
    );
  }
}
