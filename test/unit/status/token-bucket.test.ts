import { describe, expect, it } from 'vitest';
import { TokenBucket } from '../../../src/core/token-bucket.js';

describe('TokenBucket', () => {
  it('allows a burst of twice the rate, then the rate', () => {
    let now = 0;
    const bucket = new TokenBucket(5, { now: () => now });
    const burst = Array.from({ length: 12 }, () => bucket.take());
    expect(burst.filter(Boolean)).toHaveLength(10);
    now += 200; // one token's worth at 5 a second
    expect(bucket.take()).toBe(true);
    expect(bucket.take()).toBe(false);
    now += 60_000; // refills to the burst size, no further
    expect(Array.from({ length: 12 }, () => bucket.take()).filter(Boolean)).toHaveLength(10);
  });
});
