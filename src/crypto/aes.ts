import { createCipheriv, createDecipheriv } from 'node:crypto';
import { AgentError } from '../core/errors.js';

/**
 * AES-128 building blocks for NXP secure messaging (NTAG 424 DNA, AN10922 diversification):
 * raw ECB/CBC without padding, AES-CMAC (RFC 4493), NXP's truncated MAC, ISO/IEC 9797-1 method 2
 * padding and the CRC32 NXP puts inside ChangeKey. Pure functions on node:crypto.
 */

export const AES_BLOCK = 16;
const ZERO_BLOCK = new Uint8Array(AES_BLOCK);

function requireKey(key: Uint8Array): void {
  if (key.length !== 16)
    throw new AgentError('key_invalid', 'AES-128 key must be 16 bytes', { length: key.length });
}

function requireBlocks(data: Uint8Array, what: string): void {
  if (data.length % AES_BLOCK !== 0) {
    throw new AgentError('malformed', `${what} must be a multiple of 16 bytes`, { length: data.length });
  }
}

function run(cipher: { update(d: Uint8Array): Buffer; final(): Buffer }, data: Uint8Array): Uint8Array {
  const head = cipher.update(data);
  const tail = cipher.final();
  const out = new Uint8Array(head.length + tail.length);
  out.set(head, 0);
  out.set(tail, head.length);
  return out;
}

/** AES-128-CBC encryption without padding; `data` must be whole blocks. */
export function aesCbcEncrypt(key: Uint8Array, iv: Uint8Array, data: Uint8Array): Uint8Array {
  requireKey(key);
  requireBlocks(data, 'CBC plaintext');
  const cipher = createCipheriv('aes-128-cbc', key, iv);
  cipher.setAutoPadding(false);
  return run(cipher, data);
}

/** AES-128-CBC decryption without padding removal; `data` must be whole blocks. */
export function aesCbcDecrypt(key: Uint8Array, iv: Uint8Array, data: Uint8Array): Uint8Array {
  requireKey(key);
  requireBlocks(data, 'CBC ciphertext');
  const decipher = createDecipheriv('aes-128-cbc', key, iv);
  decipher.setAutoPadding(false);
  return run(decipher, data);
}

/** One AES-128 block encryption (ECB). */
export function aesEncryptBlock(key: Uint8Array, block: Uint8Array): Uint8Array {
  if (block.length !== AES_BLOCK) throw new AgentError('malformed', 'AES block must be 16 bytes');
  return aesCbcEncrypt(key, ZERO_BLOCK, block);
}

/** One AES-128 block decryption (ECB). */
export function aesDecryptBlock(key: Uint8Array, block: Uint8Array): Uint8Array {
  if (block.length !== AES_BLOCK) throw new AgentError('malformed', 'AES block must be 16 bytes');
  return aesCbcDecrypt(key, ZERO_BLOCK, block);
}

export function xorBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length !== b.length) throw new AgentError('internal', 'xor of unequal lengths');
  const out = new Uint8Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = (a[i] ?? 0) ^ (b[i] ?? 0);
  return out;
}

/** Left shift of a whole block by one bit, XORing in the GF(2^128) constant when the top bit falls out. */
function doubleBlock(block: Uint8Array): Uint8Array {
  const out = new Uint8Array(AES_BLOCK);
  for (let i = 0; i < AES_BLOCK; i++) {
    out[i] = (((block[i] ?? 0) << 1) | ((block[i + 1] ?? 0) >>> 7)) & 0xff;
  }
  if (((block[0] ?? 0) & 0x80) !== 0) out[AES_BLOCK - 1] = (out[AES_BLOCK - 1] ?? 0) ^ 0x87;
  return out;
}

export interface CmacSubkeys {
  readonly k1: Uint8Array;
  readonly k2: Uint8Array;
}

/** RFC 4493 §2.3 subkeys: L = AES(K, 0), K1 = dbl(L), K2 = dbl(K1). */
export function cmacSubkeys(key: Uint8Array): CmacSubkeys {
  const l = aesEncryptBlock(key, ZERO_BLOCK);
  const k1 = doubleBlock(l);
  return { k1, k2: doubleBlock(k1) };
}

/**
 * ISO/IEC 9797-1 padding method 2: append 80 and zeros up to a whole block. NXP secure
 * messaging always pads, so whole-block input gains a full block.
 */
export function padM2(data: Uint8Array): Uint8Array {
  const length = (Math.floor(data.length / AES_BLOCK) + 1) * AES_BLOCK;
  const out = new Uint8Array(length);
  out.set(data, 0);
  out[data.length] = 0x80;
  return out;
}

/** Removes method-2 padding; malformed when the padding is not 80 00.. within the last block. */
export function unpadM2(data: Uint8Array): Uint8Array {
  let i = data.length - 1;
  while (i >= 0 && data[i] === 0x00) i--;
  if (i < 0 || data[i] !== 0x80 || data.length - i > AES_BLOCK) {
    throw new AgentError('malformed', 'bad ISO 9797-1 M2 padding');
  }
  return data.subarray(0, i);
}

/** AES-CMAC (RFC 4493), 16 bytes. */
export function aesCmac(
  key: Uint8Array,
  message: Uint8Array,
  subkeys: CmacSubkeys = cmacSubkeys(key),
): Uint8Array {
  const complete = message.length > 0 && message.length % AES_BLOCK === 0;
  // For input that is not whole blocks, padM2 reaches exactly the next block boundary.
  const padded = complete ? message.slice() : padM2(message);
  const last = padded.length - AES_BLOCK;
  const mask = complete ? subkeys.k1 : subkeys.k2;
  for (let i = 0; i < AES_BLOCK; i++) padded[last + i] = (padded[last + i] ?? 0) ^ (mask[i] ?? 0);
  const chain = aesCbcEncrypt(key, ZERO_BLOCK, padded);
  return chain.slice(chain.length - AES_BLOCK);
}

/** NXP's 8-byte MAC: the CMAC bytes at odd indexes 1, 3, ..., 15. */
export function truncateMac(cmac: Uint8Array): Uint8Array {
  if (cmac.length !== AES_BLOCK) throw new AgentError('internal', 'CMAC must be 16 bytes');
  const out = new Uint8Array(8);
  for (let i = 0; i < 8; i++) out[i] = cmac[2 * i + 1] ?? 0;
  return out;
}

/** MACt of NXP secure messaging: truncateMac(AES-CMAC(key, message)). */
export function nxpMac(key: Uint8Array, message: Uint8Array): Uint8Array {
  return truncateMac(aesCmac(key, message));
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** IEEE CRC32 (reflected, init FFFFFFFF) without the final inversion: "JAMCRC", as NXP uses it. */
export function crc32Jam(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of data) crc = (CRC_TABLE[(crc ^ byte) & 0xff] ?? 0) ^ (crc >>> 8);
  return crc >>> 0;
}

/** JAMCRC of `data` as the 4 little-endian bytes NXP sends (CRC32NK in ChangeKey). */
export function crc32JamLe(data: Uint8Array): Uint8Array {
  const crc = crc32Jam(data);
  return new Uint8Array([crc & 0xff, (crc >>> 8) & 0xff, (crc >>> 16) & 0xff, (crc >>> 24) & 0xff]);
}

/**
 * AN10922 AES-128 key diversification: D = 01 ‖ M, padded 80 00.. to 32 bytes when shorter
 * (last block XOR K2), else last block XOR K1; the key is the last block of AES-CBC(K, 0, D).
 * M (1..31 bytes) is usually UID ‖ AID ‖ system identifier. For |D| ≥ 17 this equals
 * AES-CMAC(K, D); for shorter D it does not, because AN10922 always pads to two blocks.
 */
export function diversifyAes128(masterKey: Uint8Array, m: Uint8Array): Uint8Array {
  if (m.length < 1 || m.length > 31) {
    throw new AgentError('internal', 'AN10922 diversification input must be 1..31 bytes', {
      length: m.length,
    });
  }
  const { k1, k2 } = cmacSubkeys(masterKey);
  const d = new Uint8Array(32);
  d[0] = 0x01;
  d.set(m, 1);
  const padded = m.length + 1 < 32;
  if (padded) d[m.length + 1] = 0x80;
  const mask = padded ? k2 : k1;
  for (let i = 0; i < AES_BLOCK; i++) d[16 + i] = (d[16 + i] ?? 0) ^ (mask[i] ?? 0);
  return aesCbcEncrypt(masterKey, ZERO_BLOCK, d).slice(16);
}
