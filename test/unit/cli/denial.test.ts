import { describe, expect, it } from 'vitest';
import { describeRateLimit, duration } from '../../../src/cli/denial.js';
import type { LimitsReply } from '../../../src/host/control-api.js';

const policy = {
  maxDenials: 5,
  windowMs: 60_000,
  cooldownMs: 300_000,
  maxUnknownCards: 10,
  uidThrottleMs: 300_000,
};
const base: LimitsReply = {
  now: '2026-12-05T18:00:00.000Z',
  policy,
  lockedOut: [],
  more: 0,
  clearable: true,
};
const locked = { credentialId: 'phone:KM3iMx7Vf_V8DoPaKAWqWg', until: '2026-12-05T18:04:59.000Z' };

describe('a rate_limited denial, explained', () => {
  it.each([
    [
      'the credential named is locked out, on a simulated vehicle',
      { ...base, lockedOut: [locked] },
      locked.credentialId,
      [
        'phone:KM3iMx7Vf_V8DoPaKAWqWg is locked out until 2026-12-05T18:04:59.000Z (4 min 59 s from now)',
        'after 5 failed proofs within 1 min',
        'every other key still works',
        '`vehicle-agent sim clear-limits` lifts it now',
      ],
      ['UID-only'],
    ],
    [
      'the credential named is locked out, on a real vehicle',
      { ...base, lockedOut: [locked], clearable: false },
      locked.credentialId,
      ['is locked out until 2026-12-05T18:04:59.000Z', 'It ends on time (policy.cooldownMs in the config)'],
      ['clear-limits'],
    ],
    [
      'UID-only tags are throttled (another credential is locked out)',
      { ...base, lockedOut: [locked], uidThrottledUntil: '2026-12-05T18:00:45.000Z' },
      'uid:AAAAAAAAAAAAAAAAAAAAAA',
      [
        'UID-only tags are refused until 2026-12-05T18:00:45.000Z (45 s from now)',
        'after 10 unknown cards within 1 min',
        'FIDO keys, NTAG 424 cards and phones still work',
        'sim clear-limits',
      ],
      ['is locked out'],
    ],
    [
      'the limit ended between the denial and the question',
      base,
      locked.credentialId,
      ['the limit has ended since: try again'],
      ['locked out', 'refused'],
    ],
  ])('%s', (_name, limits, credentialId, says, doesNotSay) => {
    const line = describeRateLimit(limits, credentialId);
    expect(line.startsWith('rate_limited')).toBe(true);
    for (const s of says) expect(line).toContain(s);
    for (const s of doesNotSay) expect(line).not.toContain(s);
  });

  it.each([
    [300_000, '5 min'],
    [299_400, '4 min 59 s'],
    [60_000, '1 min'],
    [45_000, '45 s'],
    [0, '0 s'],
  ])('duration(%i) is %s', (ms, text) => {
    expect(duration(ms)).toBe(text);
  });
});
