import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { counterSuspicious, type DecisionPolicy, decide } from '../../../src/access/decision.js';
import {
  EMPTY_LIMITS,
  isNoise,
  lockedOutCount,
  type RateLimitState,
  recordOutcome,
} from '../../../src/access/rate-limit.js';
import {
  CREDENTIAL_KINDS,
  type Credential,
  type Decision,
  INTENTS,
  type Presentation,
  type ProofVerdict,
} from '../../../src/core/types.js';
import { b64url } from '../../../src/crypto/encoding.js';
import { credentialIdFor, generateKeyPair, publicJwkOf } from '../../../src/crypto/keys.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  makeUidCredential,
  newKeyring,
  revokeBy,
} from '../../helpers/keyring-fixtures.js';

const T0 = Date.UTC(2027, 0, 10, 12);
const policy: DecisionPolicy = {
  rateLimit: {
    maxDenials: 3,
    windowMs: 60_000,
    cooldownMs: 300_000,
    maxUnknownCards: 4,
    uidThrottleMs: 120_000,
  },
  answerDeadlineMs: { phone: 1500, fido: 500, ntag424: 500 },
};

function makeFido(role: Credential['role']): Credential {
  const handle = randomBytes(32);
  return {
    id: credentialIdFor('fido', handle),
    kind: 'fido',
    role,
    publicKey: publicJwkOf(generateKeyPair('P-256').publicKey),
    keyHandle: b64url(handle),
    options: {},
  };
}

function setup() {
  const root = makeRoot();
  const ring = newKeyring(root);
  const driver = makeKey('phone', 'driver');
  const passive = makeKey('phone', 'driver', { options: { passive: true } });
  const guest = makeKey('phone', 'guest', { notBefore: T0 - 3_600_000, notAfter: T0 + 3_600_000 });
  const future = makeKey('phone', 'guest', { notBefore: T0 + 3_600_000, notAfter: T0 + 7_200_000 });
  const expired = makeKey('phone', 'guest', { notBefore: T0 - 7_200_000, notAfter: T0 - 1 });
  const revoked = makeKey('phone', 'driver');
  const service = makeKey('signer', 'service');
  const tagOk = makeUidCredential('uid', '1'.repeat(32), 'driver', { options: { insecureUid: true } });
  const tagPlain = makeUidCredential('uid', '2'.repeat(32), 'driver');
  const ntag = makeUidCredential('ntag424', '3'.repeat(32), 'driver');
  const fido = makeFido('owner');
  const otherPhone = makeKey('phone', 'driver');
  for (const c of [driver, passive, guest, future, expired, revoked, service, otherPhone])
    ring.add(grantBy(root, c.credential));
  for (const c of [tagOk, tagPlain, ntag, fido]) ring.add(grantBy(root, c));
  ring.add(revokeBy(root, revoked.id));
  return { ring, driver, passive, guest, future, expired, revoked, tagOk, tagPlain, ntag, fido, otherPhone };
}

function present(over: Partial<Presentation> & Pick<Presentation, 'credentialId'>): Presentation {
  return {
    reader: 'ble0',
    kind: 'phone',
    subject: over.credentialId ?? 'unknown',
    intent: 'unlock',
    explicitIntent: true,
    proof: 'valid',
    answerMs: 200,
    ...over,
  };
}

function run(
  ring: ReturnType<typeof setup>['ring'],
  p: Presentation,
  limits: RateLimitState = EMPTY_LIMITS,
  lastCounter?: number,
  now = T0,
): Decision {
  return decide({ presentation: p, keyring: ring, now, limits, lastCounter, policy });
}

/** Decides and folds the outcome in, as the agent does. */
function step(
  ring: ReturnType<typeof setup>['ring'],
  limits: RateLimitState,
  p: Presentation,
  now: number,
): { decision: Decision; limits: RateLimitState; event: ReturnType<typeof recordOutcome>['event'] } {
  const decision = run(ring, p, limits, undefined, now);
  const out = recordOutcome(limits, p, decision, now, policy.rateLimit);
  return { decision, limits: out.state, event: out.event };
}

const code = (d: Decision) => (d.granted ? 'granted' : d.code);

describe('decide', () => {
  const s = setup();

  it('grants a valid, enrolled key with explicit intent', () => {
    const d = run(s.ring, present({ credentialId: s.driver.id }));
    expect(d).toMatchObject({ granted: true, intent: 'unlock', credential: { id: s.driver.id } });
  });

  it.each([
    ['unknown credential', () => present({ credentialId: undefined }), 'unknown_credential'],
    ['id not in keyring', () => present({ credentialId: 'phone:nope' }), 'unknown_credential'],
    ['revoked', () => present({ credentialId: s.revoked.id }), 'revoked'],
    ['bad proof', () => present({ credentialId: s.driver.id, proof: 'invalid' }), 'bad_proof'],
    ['replayed answer', () => present({ credentialId: s.driver.id, proof: 'replayed' }), 'replay'],
    ['wrong vehicle', () => present({ credentialId: s.driver.id, proof: 'wrong_vehicle' }), 'wrong_vehicle'],
    ['card removed', () => present({ credentialId: s.driver.id, proof: 'removed' }), 'card_removed'],
    ['cloned UID', () => present({ credentialId: s.driver.id, proof: 'cloned' }), 'clone_suspected'],
    ['late answer', () => present({ credentialId: s.driver.id, answerMs: 1501 }), 'timeout'],
    ['not yet valid', () => present({ credentialId: s.future.id }), 'not_yet_valid'],
    ['expired', () => present({ credentialId: s.expired.id }), 'expired'],
    [
      'passive without the option',
      () => present({ credentialId: s.driver.id, explicitIntent: false }),
      'intent_required',
    ],
    [
      'uid not marked insecure',
      () => present({ credentialId: s.tagPlain.id, kind: 'uid', proof: 'none' }),
      'insecure_uid_disabled',
    ],
    ['kind mismatch', () => present({ credentialId: s.tagOk.id, kind: 'phone' }), 'bad_proof'],
    [
      'malformed frame, nothing identified',
      () => present({ credentialId: undefined, proof: 'malformed' }),
      'malformed',
    ],
  ])('denies %s', (_name, make, expected) => {
    expect(code(run(s.ring, make()))).toBe(expected);
  });

  it('grants inside a guest window, passive for keys enrolled so, and insecure UIDs when marked', () => {
    expect(code(run(s.ring, present({ credentialId: s.guest.id })))).toBe('granted');
    expect(code(run(s.ring, present({ credentialId: s.passive.id, explicitIntent: false })))).toBe('granted');
    expect(
      code(run(s.ring, present({ credentialId: s.tagOk.id, kind: 'uid', proof: 'none', reader: 'nfc0' }))),
    ).toBe('granted');
  });

  it('checks the proof before the window, so a forger learns nothing about expiry', () => {
    expect(code(run(s.ring, present({ credentialId: s.expired.id, proof: 'invalid' })))).toBe('bad_proof');
  });

  it('flags a counter that does not rise as a clone', () => {
    expect(code(run(s.ring, present({ credentialId: s.driver.id, counter: 7 }), EMPTY_LIMITS, 7))).toBe(
      'clone_suspected',
    );
    expect(code(run(s.ring, present({ credentialId: s.driver.id, counter: 3 }), EMPTY_LIMITS, 7))).toBe(
      'clone_suspected',
    );
    expect(code(run(s.ring, present({ credentialId: s.driver.id, counter: 8 }), EMPTY_LIMITS, 7))).toBe(
      'granted',
    );
    expect(counterSuspicious(undefined, 0)).toBe(false);
    expect(counterSuspicious(0, 0)).toBe(false);
    expect(counterSuspicious(5, 0)).toBe(true);
  });
});

/** A valid presentation of each key with a cryptographic proof (phone, FIDO, NTAG 424). */
function validOf(s: ReturnType<typeof setup>): Presentation[] {
  return [
    present({ credentialId: s.driver.id }),
    present({
      credentialId: s.fido.id,
      kind: 'fido',
      reader: 'nfc0',
      intent: 'toggle',
      counter: 1e6,
      answerMs: 80,
    }),
    present({ credentialId: s.ntag.id, kind: 'ntag424', reader: 'nfc0', intent: 'toggle', answerMs: 30 }),
  ];
}

describe('rate limits keyed by the credential', () => {
  const s = setup();

  it.each([
    ['bad signature', { proof: 'invalid' as const }, true],
    ['replayed answer', { proof: 'replayed' as const }, true],
    ['late answer (relay)', { answerMs: 5000 }, true],
    ['wrong vehicle', { proof: 'wrong_vehicle' as const }, true],
    ['clone', { proof: 'cloned' as const }, true],
    ['card or phone gone mid-exchange', { proof: 'removed' as const }, false],
    ['reader error', { proof: 'reader_error' as const }, false],
    ['malformed frame', { proof: 'malformed' as const }, false],
    ['no explicit intent (the key proved itself)', { explicitIntent: false }, false],
    ['claimed over the wrong kind of reader', { kind: 'uid' as const, proof: 'none' as const }, false],
  ])('%s: counts against the claimed key = %s', (_name, over, counts) => {
    let limits = EMPTY_LIMITS;
    for (let i = 0; i < policy.rateLimit.maxDenials; i++)
      limits = step(s.ring, limits, present({ credentialId: s.driver.id, ...over }), T0 + i).limits;
    const after = run(s.ring, present({ credentialId: s.driver.id }), limits, undefined, T0 + 10);
    expect(code(after)).toBe(counts ? 'rate_limited' : 'granted');
  });

  it('locks out only the key whose proofs failed, audits what it is keyed on, and lets it back after the cooldown', () => {
    let limits = EMPTY_LIMITS;
    const events: unknown[] = [];
    for (let i = 0; i < policy.rateLimit.maxDenials; i++) {
      const r = step(s.ring, limits, present({ credentialId: s.driver.id, proof: 'invalid' }), T0 + i * 1000);
      expect(code(r.decision)).toBe('bad_proof');
      limits = r.limits;
      if (r.event) events.push(r.event);
    }
    expect(events).toEqual([
      { scope: 'credential', credentialId: s.driver.id, failures: 3, until: T0 + 2000 + 300_000 },
    ]);
    expect(lockedOutCount(limits, T0 + 3000)).toBe(1);
    // Even a valid answer of the locked key waits; every other key is untouched.
    expect(code(run(s.ring, present({ credentialId: s.driver.id }), limits, undefined, T0 + 3000))).toBe(
      'rate_limited',
    );
    expect(code(run(s.ring, present({ credentialId: s.otherPhone.id }), limits, undefined, T0 + 3000))).toBe(
      'granted',
    );
    // Refusals while locked do not extend the lockout.
    const during = step(s.ring, limits, present({ credentialId: s.driver.id, proof: 'invalid' }), T0 + 4000);
    expect(code(during.decision)).toBe('rate_limited');
    expect(during.limits).toBe(limits);
    expect(
      code(run(s.ring, present({ credentialId: s.driver.id }), limits, undefined, T0 + 2000 + 300_000)),
    ).toBe('granted');
  });

  it('forgets failures older than the window, and forgives them on a grant', () => {
    let limits = EMPTY_LIMITS;
    for (let i = 0; i < 10; i++) {
      const r = step(
        s.ring,
        limits,
        present({ credentialId: s.driver.id, proof: 'invalid' }),
        T0 + i * 61_000,
      );
      expect(r.event).toBeUndefined();
      limits = r.limits;
    }
    expect(limits.credentials.get(s.driver.id)?.failures).toHaveLength(1);
    limits = step(
      s.ring,
      limits,
      present({ credentialId: s.driver.id, proof: 'invalid' }),
      T0 + 600_001,
    ).limits;
    limits = step(s.ring, limits, present({ credentialId: s.driver.id }), T0 + 600_002).limits;
    expect(limits.credentials.has(s.driver.id)).toBe(false);
  });

  it('keeps no state for unknown keys, garbage or malformed frames', () => {
    let limits = EMPTY_LIMITS;
    for (const p of [
      present({ credentialId: undefined, subject: 'phone:made-up' }),
      present({ credentialId: 'phone:not-in-the-keyring', proof: 'invalid' }),
      present({ credentialId: undefined, proof: 'malformed' }),
      present({ credentialId: undefined, proof: 'timeout' }),
    ]) {
      const r = step(s.ring, limits, p, T0);
      expect(r.decision.granted).toBe(false);
      expect(r.limits).toBe(limits);
      limits = r.limits;
    }
  });

  it('never rate limits a presentation that names no credential', () => {
    let limits = EMPTY_LIMITS;
    for (let i = 0; i < 3; i++)
      limits = step(s.ring, limits, present({ credentialId: s.driver.id, proof: 'invalid' }), T0).limits;
    expect(code(run(s.ring, present({ credentialId: undefined }), limits))).toBe('unknown_credential');
  });
});

describe('the UID-guessing throttle', () => {
  const s = setup();
  const unknownCard = (kind: Presentation['kind'] = 'uid') =>
    present({
      credentialId: undefined,
      kind,
      reader: 'nfc0',
      proof: kind === 'uid' ? 'none' : 'invalid',
      subject: 'uid:x',
    });
  const uidTag = present({ credentialId: s.tagOk.id, kind: 'uid', proof: 'none', reader: 'nfc0' });

  it('refuses UID-only grants after unknown cards, never a key with a cryptographic proof', () => {
    let limits = EMPTY_LIMITS;
    const events: unknown[] = [];
    for (let i = 0; i < 4; i++) {
      const r = step(s.ring, limits, unknownCard(i % 2 === 0 ? 'uid' : 'fido'), T0 + i);
      expect(code(r.decision)).toBe('unknown_credential');
      limits = r.limits;
      if (r.event) events.push(r.event);
    }
    expect(events).toEqual([{ scope: 'uid-guessing', unknownCards: 4, until: T0 + 3 + 120_000 }]);
    expect(code(run(s.ring, uidTag, limits, undefined, T0 + 10))).toBe('rate_limited');
    for (const p of validOf(s)) expect(code(run(s.ring, p, limits, undefined, T0 + 10))).toBe('granted');
    expect(code(run(s.ring, uidTag, limits, undefined, T0 + 3 + 120_000))).toBe('granted');
  });

  it('is not moved by unknown phone keys (they guess nothing about UIDs)', () => {
    let limits = EMPTY_LIMITS;
    for (let i = 0; i < 10; i++)
      limits = step(s.ring, limits, present({ credentialId: undefined }), T0 + i).limits;
    expect(code(run(s.ring, uidTag, limits, undefined, T0 + 20))).toBe('granted');
  });
});

describe('audit noise', () => {
  const s = setup();
  it.each([
    ['unknown key', present({ credentialId: undefined }), true],
    ['malformed frame', present({ credentialId: undefined, proof: 'malformed' }), true],
    ['bad proof for an enrolled key', present({ credentialId: s.driver.id, proof: 'invalid' }), false],
    ['revoked key', present({ credentialId: s.revoked.id }), false],
    ['grant', present({ credentialId: s.driver.id }), false],
  ])('%s is noise = %s', (_name, p, noise) => {
    expect(isNoise(run(s.ring, p))).toBe(noise);
  });
});

const VERDICTS: readonly ProofVerdict[] = [
  'valid',
  'none',
  'invalid',
  'replayed',
  'cloned',
  'timeout',
  'removed',
  'wrong_vehicle',
  'malformed',
  'frame_too_large',
  'unsupported',
  'reader_error',
];

describe('property: nothing unauthenticated keeps a valid key out', () => {
  const s = setup();
  const known = new Set(
    [s.driver, s.passive, s.guest, s.future, s.expired, s.revoked, s.otherPhone].map((k) => k.id),
  );
  for (const c of [s.tagOk, s.tagPlain, s.ntag, s.fido]) known.add(c.id);

  /** Presentations that name no credential in the keyring: garbage, unknown keys and cards, bad frames. */
  const unauthenticated = fc
    .record({
      reader: fc.constantFrom('ble0', 'nfc0', 'sim'),
      kind: fc.constantFrom(...CREDENTIAL_KINDS),
      credentialId: fc.option(
        fc.oneof(
          fc.string({ maxLength: 40 }),
          fc
            .constantFrom(...CREDENTIAL_KINDS)
            .chain((k) => fc.stringMatching(/^[0-9a-f]{1,43}$/).map((h) => `${k}:${h}`)),
        ),
        { nil: undefined },
      ),
      subject: fc.string({ maxLength: 20 }),
      intent: fc.constantFrom(...INTENTS),
      explicitIntent: fc.boolean(),
      proof: fc.constantFrom(...VERDICTS),
      counter: fc.option(fc.nat(), { nil: undefined }),
      answerMs: fc.option(fc.nat({ max: 10_000 }), { nil: undefined }),
    })
    .filter((p) => p.credentialId === undefined || !known.has(p.credentialId));

  /** Any presentation claiming another enrolled credential, with any proof (its own lockout is allowed). */
  const others = (except: string) =>
    fc.record({
      credentialId: fc.constantFrom(...[...known].filter((id) => id !== except)),
      proof: fc.constantFrom(...VERDICTS),
      answerMs: fc.nat({ max: 5000 }),
      explicitIntent: fc.boolean(),
    });

  const stepsOf = <T>(arb: fc.Arbitrary<T>) =>
    fc.array(fc.tuple(arb, fc.nat({ max: 5000 })), { maxLength: 200 });

  function replay(items: readonly (readonly [Presentation, number])[]): {
    limits: RateLimitState;
    now: number;
  } {
    let limits = EMPTY_LIMITS;
    let now = T0;
    for (const [p, dt] of items) {
      now += dt;
      limits = step(s.ring, limits, p, now).limits;
    }
    return { limits, now };
  }

  it('any sequence of unauthenticated presentations, on any reader, leaves every valid key granted', () => {
    fc.assert(
      fc.property(stepsOf(unauthenticated), fc.nat({ max: 1000 }), (items, after) => {
        const { limits, now } = replay(items.map(([p, dt]) => [{ ...p, kind: p.kind } as Presentation, dt]));
        for (const p of validOf(s))
          expect(code(run(s.ring, p, limits, undefined, now + after))).toBe('granted');
      }),
      { numRuns: 300 },
    );
  });

  it('any sequence against other credentials, mixed with noise, leaves the driver key granted', () => {
    const other = others(s.driver.id).map((o) => {
      const kind =
        o.credentialId === s.fido.id
          ? 'fido'
          : o.credentialId === s.ntag.id
            ? 'ntag424'
            : o.credentialId.startsWith('uid')
              ? 'uid'
              : 'phone';
      return present({ ...o, kind });
    });
    fc.assert(
      fc.property(stepsOf(fc.oneof(other, unauthenticated as fc.Arbitrary<Presentation>)), (items) => {
        const { limits, now } = replay(items);
        expect(code(run(s.ring, present({ credentialId: s.driver.id }), limits, undefined, now))).toBe(
          'granted',
        );
      }),
      { numRuns: 300 },
    );
  });
});
