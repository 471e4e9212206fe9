import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { IntakePace, TokenBucket, TopicBudget } from '../../../src/cloud/intake.js';

describe('TokenBucket', () => {
  it.each([
    // rate/s, burst, [ [at ms, take n, expected] ... ]
    {
      name: 'a full bucket gives its burst, then nothing',
      rate: 10,
      burst: 3,
      steps: [
        [0, 1, true],
        [0, 1, true],
        [0, 1, true],
        [0, 1, false],
      ],
    },
    {
      name: 'refills at its rate',
      rate: 10,
      burst: 1,
      steps: [
        [0, 1, true],
        [50, 1, false],
        [100, 1, true],
        [150, 1, false],
      ],
    },
    {
      name: 'never saves up beyond the burst',
      rate: 10,
      burst: 2,
      steps: [
        [0, 2, true],
        [10_000, 3, false],
        [10_000, 2, true],
      ],
    },
    {
      name: 'a refused take costs nothing',
      rate: 1,
      burst: 5,
      steps: [
        [0, 6, false],
        [0, 5, true],
      ],
    },
    {
      name: 'time going backwards adds nothing',
      rate: 10,
      burst: 1,
      steps: [
        [1000, 1, true],
        [500, 1, false],
      ],
    },
  ] as const)('$name', ({ rate, burst, steps }) => {
    const bucket = new TokenBucket(rate, burst, 0);
    for (const [at, n, expected] of steps) expect(bucket.tryTake(n, at)).toBe(expected);
  });

  it('takeWithDebt says how long until the debt is paid', () => {
    const bucket = new TokenBucket(100, 2, 0);
    expect(bucket.takeWithDebt(1, 0)).toBe(0);
    expect(bucket.takeWithDebt(1, 0)).toBe(0);
    expect(bucket.takeWithDebt(1, 0)).toBe(10);
    expect(bucket.takeWithDebt(1, 0)).toBe(20);
    // paid off by waiting what it said
    expect(bucket.takeWithDebt(0, 20)).toBe(0);
  });
});

describe('IntakePace', () => {
  it('lets a second of messages through at once, then paces them at the rate', () => {
    const pace = new IntakePace({ messagesPerS: 4, bytesPerS: 1_000_000 }, 0);
    expect([1, 2, 3, 4].map(() => pace.charge(10, 0))).toEqual([0, 0, 0, 0]);
    expect(pace.charge(10, 0)).toBe(250);
  });

  it('paces by bytes too: a large message costs the wait its size takes', () => {
    const pace = new IntakePace({ messagesPerS: 1000, bytesPerS: 1000 }, 0);
    expect(pace.charge(1000, 0)).toBe(0);
    expect(pace.charge(2000, 0)).toBe(2000);
  });

  it('property: whatever arrives, the messages let through in any window are bounded by the rate', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 200 }),
        fc.array(fc.integer({ min: 0, max: 4096 }), { minLength: 1, maxLength: 400 }),
        (rate, sizes) => {
          const pace = new IntakePace({ messagesPerS: rate, bytesPerS: 1 << 30 }, 0);
          // The caller waits what charge says before taking the next message.
          let now = 0;
          for (const size of sizes) now += pace.charge(size, now);
          // n messages need at least (n - burst) / rate seconds.
          const minimum = (Math.max(0, sizes.length - rate - 1) * 1000) / rate;
          expect(now).toBeGreaterThanOrEqual(Math.floor(minimum));
        },
      ),
    );
  });
});

describe('TopicBudget', () => {
  const limit = { messagesPerS: 2, bytesPerS: 1000, maxBytes: 800 };

  it.each([
    {
      name: 'a message above the size limit is refused, whatever the budget',
      arrivals: [[0, 801]],
      verdicts: ['too_large'],
    },
    {
      name: 'a lone message of the largest size passes on a quiet topic',
      arrivals: [[0, 800]],
      verdicts: ['accepted'],
    },
    {
      name: 'messages beyond the rate are dropped',
      arrivals: [
        [0, 1],
        [0, 1],
        [0, 1],
      ],
      verdicts: ['accepted', 'accepted', 'over_budget'],
    },
    {
      name: 'bytes beyond the rate are dropped',
      arrivals: [
        [0, 700],
        [0, 400],
      ],
      verdicts: ['accepted', 'over_budget'],
    },
    {
      name: 'the budget comes back with time',
      arrivals: [
        [0, 1],
        [0, 1],
        [0, 1],
        [500, 1],
      ],
      verdicts: ['accepted', 'accepted', 'over_budget', 'accepted'],
    },
    {
      name: 'a dropped message costs no budget',
      arrivals: [
        [0, 700],
        [0, 400],
        [0, 300],
      ],
      verdicts: ['accepted', 'over_budget', 'accepted'],
    },
  ] as const)('$name', ({ arrivals, verdicts }) => {
    const budget = new TopicBudget(limit, 0);
    expect(arrivals.map(([at, bytes]) => budget.admit(bytes, at))).toEqual(verdicts);
  });

  it('counts every verdict', () => {
    const budget = new TopicBudget(limit, 0);
    for (const bytes of [900, 10, 10, 10]) budget.admit(bytes, 0);
    expect(budget.counts).toEqual({ accepted: 2, tooLarge: 1, overBudget: 1, bytes: 20 });
  });

  it('property: over any run, accepted messages never exceed burst + rate × time', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 0, max: 900 })), {
          maxLength: 300,
        }),
        (steps) => {
          const budget = new TopicBudget(limit, 0);
          let now = 0;
          let bytes = 0;
          for (const [dt, size] of steps) {
            now += dt;
            if (budget.admit(size, now) === 'accepted') bytes += size;
          }
          expect(budget.counts.accepted).toBeLessThanOrEqual(2 + (now * 2) / 1000);
          expect(bytes).toBeLessThanOrEqual(1000 + now);
        },
      ),
    );
  });
});
