import { describe, expect, it } from 'vitest';
import {
  counterSuspicious,
  type DecisionPolicy,
  decide,
  EMPTY_HISTORY,
  type ReaderHistory,
  recordOutcome,
} from '../../../src/access/decision.js';
import type { Decision, Presentation } from '../../../src/core/types.js';
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
  rateLimit: { maxDenials: 3, windowMs: 60_000, cooldownMs: 300_000 },
  answerDeadlineMs: { phone: 1500, fido: 500 },
};

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
  for (const c of [driver, passive, guest, future, expired, revoked, service])
    ring.add(grantBy(root, c.credential));
  ring.add(grantBy(root, tagOk));
  ring.add(grantBy(root, tagPlain));
  ring.add(revokeBy(root, revoked.id));
  return { ring, driver, passive, guest, future, expired, revoked, tagOk, tagPlain };
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
  history: ReaderHistory = EMPTY_HISTORY,
  lastCounter?: number,
): Decision {
  return decide({ presentation: p, keyring: ring, now: T0, history, lastCounter, policy });
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
    expect(code(run(s.ring, present({ credentialId: s.driver.id, counter: 7 }), EMPTY_HISTORY, 7))).toBe(
      'clone_suspected',
    );
    expect(code(run(s.ring, present({ credentialId: s.driver.id, counter: 3 }), EMPTY_HISTORY, 7))).toBe(
      'clone_suspected',
    );
    expect(code(run(s.ring, present({ credentialId: s.driver.id, counter: 8 }), EMPTY_HISTORY, 7))).toBe(
      'granted',
    );
    expect(counterSuspicious(undefined, 0)).toBe(false);
    expect(counterSuspicious(0, 0)).toBe(false);
    expect(counterSuspicious(5, 0)).toBe(true);
  });
});

describe('rate limiting', () => {
  const s = setup();

  it('denies every attempt during the cooldown after N denials in the window, then recovers', () => {
    let history = EMPTY_HISTORY;
    const bad = present({ credentialId: undefined });
    let started = 0;
    for (let i = 0; i < policy.rateLimit.maxDenials; i++) {
      const now = T0 + i * 1000;
      const d = decide({ presentation: bad, keyring: s.ring, now, history, lastCounter: undefined, policy });
      expect(code(d)).toBe('unknown_credential');
      const r = recordOutcome(history, d, now, policy.rateLimit);
      history = r.history;
      if (r.cooldownStarted) started++;
    }
    expect(started).toBe(1);
    const good = present({ credentialId: s.driver.id });
    const during = decide({
      presentation: good,
      keyring: s.ring,
      now: T0 + 10_000,
      history,
      lastCounter: undefined,
      policy,
    });
    expect(code(during)).toBe('rate_limited');
    // rate_limited denials do not extend the cooldown
    expect(recordOutcome(history, during, T0 + 10_000, policy.rateLimit).history).toBe(history);
    const after = decide({
      presentation: good,
      keyring: s.ring,
      now: T0 + 2000 + policy.rateLimit.cooldownMs,
      history,
      lastCounter: undefined,
      policy,
    });
    expect(code(after)).toBe('granted');
  });

  it('forgets denials older than the window', () => {
    let history = EMPTY_HISTORY;
    const deny = { granted: false as const, code: 'bad_proof' as const };
    for (let i = 0; i < 10; i++) {
      const r = recordOutcome(history, deny, T0 + i * 61_000, policy.rateLimit);
      expect(r.cooldownStarted).toBe(false);
      history = r.history;
    }
    expect(history.denials).toHaveLength(1);
  });
});
