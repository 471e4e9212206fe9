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

  it('work already done overdraws it, down to maxDebt at most', () => {
    let now = 0;
    const capped = new TokenBucket(250, { burst: 50, maxDebt: 250, now: () => now });
    const uncapped = new TokenBucket(250, { burst: 50, now: () => now });
    for (const b of [capped, uncapped]) b.spend(6000); // one request held the loop for 6 s
    expect(capped.available()).toBe(-250);
    expect(capped.msUntil(5)).toBe(1020);
    expect(uncapped.msUntil(5)).toBe(23_820);
    now += 1020;
    expect(capped.take(5)).toBe(true);
    expect(uncapped.take(5)).toBe(false);
  });
});
