import { generateKeyPairSync, type KeyObject, sign } from 'node:crypto';
import type { PublicJwk } from '../../../src/core/types.js';
import { publicJwkOf } from '../../../src/crypto/keys.js';

/** A vehicle key pair signing as the agent does (node:crypto, 64-byte r‖s over SHA-256). */
export interface TestVehicle {
  readonly vehicleId: string;
  readonly privateKey: KeyObject;
  readonly publicJwk: PublicJwk;
  readonly sign: (message: Uint8Array) => Uint8Array;
}

export function makeVehicle(vehicleId = 'test-vehicle'): TestVehicle {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return {
    vehicleId,
    privateKey,
    publicJwk: publicJwkOf(publicKey),
    sign: (message) =>
      new Uint8Array(sign('sha256', message, { key: privateKey, dsaEncoding: 'ieee-p1363' })),
  };
}

/** Seeded PRNG (mulberry32), so a failing fuzz case can be reproduced from its seed. */
export function seededRandom(seed: number): {
  next(): number;
  int(n: number): number;
  bytes(n: number): Uint8Array;
} {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number): number => Math.floor(next() * n);
  const bytes = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => int(256));
  return { next, int, bytes };
}

/** A counter-based stand-in for crypto random bytes: distinct, reproducible challenges. */
export function countingRandom(start = 1): (length: number) => Uint8Array {
  let counter = start;
  return (length) => {
    const out = new Uint8Array(length);
    let c = counter++;
    for (let i = length - 1; i >= 0 && c > 0; i--) {
      out[i] = c & 0xff;
      c = Math.floor(c / 256);
    }
    out[0] = 0xc0;
    return out;
  };
}
