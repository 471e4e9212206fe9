import { describe, expect, it } from 'vitest';
import { activeLimits, type RateLimitState } from '../../../src/access/rate-limit.js';

const state = (credentials: [string, number][], uidThrottledUntil = 0): RateLimitState => ({
  credentials: new Map(credentials.map(([id, lockedUntil]) => [id, { failures: [1], lockedUntil }])),
  unknownCards: [],
  uidThrottledUntil,
});

describe('the rate limits in force', () => {
  it.each([
    ['nothing limited', state([]), 100, 10, { credentials: [], more: 0 }],
    [
      'failures below the limit are not a lockout',
      state([['phone:a', 0]]),
      100,
      10,
      { credentials: [], more: 0 },
    ],
    [
      'a lockout that ended is not listed',
      state([
        ['phone:a', 100],
        ['phone:b', 101],
      ]),
      100,
      10,
      { credentials: [{ credentialId: 'phone:b', until: 101 }], more: 0 },
    ],
    [
      'soonest end first, at most max, the rest counted',
      state([
        ['phone:c', 300],
        ['phone:a', 200],
        ['phone:b', 250],
      ]),
      100,
      2,
      {
        credentials: [
          { credentialId: 'phone:a', until: 200 },
          { credentialId: 'phone:b', until: 250 },
        ],
        more: 1,
      },
    ],
    [
      'the UID throttle while it lasts',
      state([], 150),
      100,
      10,
      { credentials: [], more: 0, uidThrottledUntil: 150 },
    ],
    ['and not after', state([], 150), 150, 10, { credentials: [], more: 0 }],
  ])('%s', (_name, s, now, max, expected) => {
    expect(activeLimits(s, now, max)).toEqual(expected);
  });
});
