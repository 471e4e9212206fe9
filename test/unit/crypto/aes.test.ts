import { createCipheriv } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import {
  aesCbcDecrypt,
  aesCbcEncrypt,
  aesCmac,
  aesDecryptBlock,
  aesEncryptBlock,
  cmacSubkeys,
  crc32Jam,
  crc32JamLe,
  diversifyAes128,
  nxpMac,
  padM2,
  truncateMac,
  unpadM2,
} from '../../../src/crypto/aes.js';
import { fromHex, toHex } from '../../../src/crypto/encoding.js';
import { seededRandom } from '../../helpers/seeded-random.js';

const h = fromHex;

describe('AES-CMAC (RFC 4493 §4 vectors)', () => {
  const key = h('2b7e151628aed2a6abf7158809cf4f3c');
  const message = h(
    '6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710',
  );

  it('derives the subkeys K1 and K2', () => {
    const { k1, k2 } = cmacSubkeys(key);
    expect(toHex(aesEncryptBlock(key, new Uint8Array(16)))).toBe('7df76b0c1ab899b33e42f047b91b546f');
    expect(toHex(k1)).toBe('fbeed618357133667c85e08f7236a8de');
    expect(toHex(k2)).toBe('f7ddac306ae266ccf90bc11ee46d513b');
  });

  it.each([
    [0, 'bb1d6929e95937287fa37d129b756746'],
    [16, '070a16b46b4d4144f79bdd9dd04a287c'],
    [40, 'dfa66747de9ae63030ca32611497c827'],
    [64, '51f0bebf7e3b9d92fc49741779363cfe'],
  ])('MACs the first %i bytes of the example message', (length, mac) => {
    expect(toHex(aesCmac(key, message.subarray(0, length)))).toBe(mac);
  });
});

describe('AES block and CBC helpers', () => {
  it('matches FIPS-197 appendix C.1', () => {
    const key = h('000102030405060708090a0b0c0d0e0f');
    const plain = h('00112233445566778899aabbccddeeff');
    expect(toHex(aesEncryptBlock(key, plain))).toBe('69c4e0d86a7b0430d8cdb78070b4c55a');
    expect(toHex(aesDecryptBlock(key, h('69c4e0d86a7b0430d8cdb78070b4c55a')))).toBe(toHex(plain));
  });

  it('encrypts CBC like node:crypto without padding and round-trips', () => {
    const random = seededRandom();
    for (let i = 0; i < 20; i++) {
      const key = random.bytes(16);
      const iv = random.bytes(16);
      const data = random.bytes(16 * (1 + (i % 4)));
      const reference = createCipheriv('aes-128-cbc', key, iv).setAutoPadding(false);
      const expected = Buffer.concat([reference.update(data), reference.final()]);
      const ours = aesCbcEncrypt(key, iv, data);
      expect(toHex(ours)).toBe(expected.toString('hex'));
      expect(toHex(aesCbcDecrypt(key, iv, ours))).toBe(toHex(data));
    }
  });

  it('rejects partial blocks and wrong key sizes with coded errors', () => {
    expect(() => aesCbcEncrypt(new Uint8Array(16), new Uint8Array(16), new Uint8Array(15))).toThrow(
      AgentError,
    );
    expect(() => aesCbcDecrypt(new Uint8Array(16), new Uint8Array(16), new Uint8Array(17))).toThrow(
      /multiple of 16/,
    );
    expect(() => aesEncryptBlock(new Uint8Array(24), new Uint8Array(16))).toThrow(/16 bytes/);
  });
});

describe('NXP helpers', () => {
  it('truncates a CMAC to its odd-indexed bytes', () => {
    const cmac = h('000102030405060708090a0b0c0d0e0f');
    expect(toHex(truncateMac(cmac))).toBe('01030507090b0d0f');
  });

  it('reproduces the AN12196 MAC-mode GetFileSettings MAC (Table 7)', () => {
    // F5 ‖ CmdCtr 0000 ‖ TI 7A21085E ‖ FileNo 02
    const mac = nxpMac(h('8248134A386E86EB7FAF54A52E536CB6'), h('F500007A21085E02'));
    expect(toHex(mac).toUpperCase()).toBe('6597A457C8CD442C');
  });

  it('pads with 80 00.. always and unpads strictly', () => {
    expect(toHex(padM2(h('0102')))).toBe(`010280${'00'.repeat(13)}`);
    expect(padM2(new Uint8Array(16)).length).toBe(32);
    expect(padM2(new Uint8Array(0)).length).toBe(16);
    expect(toHex(unpadM2(h(`010280${'00'.repeat(13)}`)))).toBe('0102');
    expect(unpadM2(h(`80${'00'.repeat(15)}`)).length).toBe(0);
    expect(() => unpadM2(new Uint8Array(16))).toThrow(AgentError);
    expect(() => unpadM2(h(`0102${'00'.repeat(14)}`))).toThrow(/padding/);
    // 80 followed by more than a block of zeros is not padding of the last block
    expect(() => unpadM2(h(`80${'00'.repeat(31)}`))).toThrow(/padding/);
  });

  it('computes JAMCRC as NXP does (AN12196 Table 25 CRC32NK)', () => {
    expect(toHex(crc32JamLe(h('F3847D627727ED3BC9C4CC050489B966'))).toUpperCase()).toBe('789DFADC');
    // JAMCRC is the plain IEEE CRC32 without the final inversion: CRC32("123456789") = CBF43926
    expect(crc32Jam(new TextEncoder().encode('123456789'))).toBe(~0xcbf43926 >>> 0);
  });
});

describe('AN10922 AES-128 key diversification', () => {
  it('matches the AN10922 example (UID ‖ AID ‖ SysID, padded)', () => {
    const key = h('00112233445566778899AABBCCDDEEFF');
    const m = h('04782E21801D80 3042F5 4E585020416275');
    expect(toHex(diversifyAes128(key, m)).toUpperCase()).toBe('A8DD63A3B89D54B37CA802473FDA9175');
  });

  it('matches the AN10957 example (UID only, short input)', () => {
    const key = h('F3F9377698707B688EAF84ABE39E3791');
    expect(toHex(diversifyAes128(key, h('04DEADBEEFFEED'))).toUpperCase()).toBe(
      '0BB408BAFF98B6EE9F2E1585777F6A51',
    );
  });

  it('equals AES-CMAC of 01 ‖ M when D is at least 17 bytes, and differs below', () => {
    const random = seededRandom();
    const key = random.bytes(16);
    for (const length of [16, 20, 31]) {
      const m = random.bytes(length);
      const d = new Uint8Array(length + 1);
      d[0] = 1;
      d.set(m, 1);
      expect(toHex(diversifyAes128(key, m))).toBe(toHex(aesCmac(key, d)));
    }
    const short = random.bytes(7);
    const d = new Uint8Array([1, ...short]);
    expect(toHex(diversifyAes128(key, short))).not.toBe(toHex(aesCmac(key, d)));
  });

  it('refuses empty or over-long input', () => {
    expect(() => diversifyAes128(new Uint8Array(16), new Uint8Array(0))).toThrow(AgentError);
    expect(() => diversifyAes128(new Uint8Array(16), new Uint8Array(32))).toThrow(AgentError);
  });
});
