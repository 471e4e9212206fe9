import { randomInt } from 'node:crypto';
import { onTestFailed } from 'vitest';

/**
 * Random choices for tests that can be replayed: each run draws a new seed (so runs explore
 * different cases) unless TEST_SEED is set, and a failing test prints the seed to rerun it with.
 * The generator is mulberry32: tiny, fast and good enough for picking cases (not for keys).
 */
export interface SeededRandom {
  readonly seed: number;
  /** A float in [0, 1). */
  next(): number;
  /** An integer in [0, n). */
  int(n: number): number;
  bytes(n: number): Uint8Array;
  /** A shuffled copy (Fisher-Yates). */
  shuffle<T>(items: readonly T[]): T[];
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The seed from TEST_SEED, or a fresh one. */
export function testSeed(): number {
  const fromEnv = process.env.TEST_SEED;
  if (fromEnv !== undefined && fromEnv !== '') {
    const seed = Number(fromEnv);
    if (!Number.isInteger(seed)) throw new Error(`TEST_SEED must be an integer, not ${fromEnv}`);
    return seed >>> 0;
  }
  return randomInt(0, 2 ** 32 - 1);
}

/** A generator for the running test; call it inside `it` so a failure can name the seed. */
export function seededRandom(seed = testSeed()): SeededRandom {
  onTestFailed(() => {
    console.error(`random choices in this test used seed ${seed}: rerun with TEST_SEED=${seed}`);
  });
  const next = mulberry32(seed);
  const int = (n: number): number => Math.floor(next() * n);
  return {
    seed,
    next,
    int,
    bytes: (n) => Uint8Array.from({ length: n }, () => int(256)),
    shuffle: (items) => {
      const out = [...items];
      for (let i = out.length - 1; i > 0; i--) {
        const j = int(i + 1);
        [out[i], out[j]] = [out[j] as (typeof out)[number], out[i] as (typeof out)[number]];
      }
      return out;
    },
  };
}
