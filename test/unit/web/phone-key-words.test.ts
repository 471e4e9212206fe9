import { describe, expect, it } from 'vitest';
import { isCode } from '../../../src/core/codes.js';
import { RESULT_WORDS, resultInWords } from '../../../web/phone-key/words.js';

/** Every code the page puts in words is one the agent can send; the decision codes all have words. */
// Codes the issue 14 spec adds (p14proto adds them to src/core/codes.ts), and the granted result's code.
const SPEC_CODES = [
  'granted',
  'enrollment_pending',
  'user_verification_required',
  'origin_not_allowed',
  'challenge_expired',
  'no_challenge',
];

describe('phone-key result words', () => {
  it('puts only agent codes in words', () => {
    for (const code of Object.keys(RESULT_WORDS))
      expect(isCode(code) || SPEC_CODES.includes(code), code).toBe(true);
  });

  it('covers every code a phone answer can be denied with', () => {
    const decisions = [
      'unknown_credential',
      'revoked',
      'not_yet_valid',
      'expired',
      'bad_proof',
      'replay',
      'rate_limited',
      'clone_suspected',
      'timeout',
      'role_not_allowed',
      'intent_required',
      'wrong_vehicle',
      'malformed',
      'unsupported',
      'credential_suspect',
      'counter_replay',
      'enrollment_closed',
      'already_enrolled',
      ...SPEC_CODES,
    ];
    for (const code of decisions) expect(RESULT_WORDS[code], code).toBeTruthy();
  });

  it('says an unknown code is unknown, with the code', () => {
    expect(resultInWords('something_new')).toContain('something_new');
    expect(resultInWords('revoked')).toMatch(/revoked/);
  });
});
