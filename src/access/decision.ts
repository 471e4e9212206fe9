import type { DenialCode } from '../core/codes.js';
import type { CredentialKind, Decision, Presentation, ProofVerdict } from '../core/types.js';
import type { CredentialLookup } from './credential-lookup.js';
import { roleAllows } from './policy.js';
import { isUidThrottled, lockedOutUntil, type RateLimitPolicy, type RateLimitState } from './rate-limit.js';

export type { RateLimitPolicy, RateLimitState } from './rate-limit.js';

export interface DecisionPolicy {
  readonly rateLimit: RateLimitPolicy;
  /** Answer deadline per credential kind (relay-attack bound); undefined = no deadline. */
  readonly answerDeadlineMs: Readonly<Partial<Record<CredentialKind, number>>>;
}

export interface DecisionInput {
  readonly presentation: Presentation;
  readonly keyring: CredentialLookup;
  /** Trusted time (MonotonicFloorClock.now()). */
  readonly now: number;
  /** Rate-limit state (per-credential lockouts, the UID-guessing throttle): see rate-limit.ts. */
  readonly limits: RateLimitState;
  /** Last signature counter accepted for this credential, if any. */
  readonly lastCounter: number | undefined;
  readonly policy: DecisionPolicy;
}

const VERDICT_CODES: Readonly<Record<Exclude<ProofVerdict, 'valid' | 'none'>, DenialCode>> = {
  invalid: 'bad_proof',
  replayed: 'replay',
  cloned: 'clone_suspected',
  timeout: 'timeout',
  removed: 'card_removed',
  wrong_vehicle: 'wrong_vehicle',
  malformed: 'malformed',
  frame_too_large: 'frame_too_large',
  unsupported: 'unsupported',
  reader_error: 'reader_error',
};

/**
 * The access decision: a pure function of the presentation, the keyring, trusted time and the
 * rate-limit state. The order of checks matters: a presentation that names no credential is
 * denied for what it is and never rate limited (nothing unauthenticated can refuse a valid key);
 * a locked-out credential is refused before its proof is looked at; proof before windows and
 * roles, so someone without the key learns nothing about the credential.
 */
export function decide(input: DecisionInput): Decision {
  const { presentation: p, keyring, now, limits, policy } = input;
  const deny = (code: DenialCode, status?: ReturnType<CredentialLookup['byId']>): Decision =>
    status ? { granted: false, code, credential: status.credential } : { granted: false, code };

  const status = p.credentialId === undefined ? undefined : keyring.byId(p.credentialId);
  if (!status) {
    // A reader error or a malformed frame says more than "unknown" when nothing was identified.
    if (p.proof !== 'valid' && p.proof !== 'none' && p.proof !== 'invalid')
      return deny(VERDICT_CODES[p.proof]);
    return deny('unknown_credential');
  }
  const { credential } = status;
  if (status.suspect !== undefined) return deny('credential_suspect', status);
  if (lockedOutUntil(limits, credential.id, now) !== undefined) return deny('rate_limited', status);
  if (status.revoked) return deny('revoked', status);
  if (credential.kind !== p.kind) return deny('bad_proof', status);
  if (credential.kind === 'uid') {
    if (!credential.options.insecureUid) return deny('insecure_uid_disabled', status);
    if (p.proof !== 'none' && p.proof !== 'valid') return deny(VERDICT_CODES[p.proof], status);
    // Someone has been trying unknown cards: UIDs prove nothing, so UID-only grants wait.
    if (isUidThrottled(limits, now)) return deny('rate_limited', status);
  } else if (p.proof !== 'valid') {
    return deny(p.proof === 'none' ? 'bad_proof' : VERDICT_CODES[p.proof], status);
  }
  const deadline = policy.answerDeadlineMs[credential.kind];
  if (deadline !== undefined && p.answerMs !== undefined && p.answerMs > deadline)
    return deny('timeout', status);
  if (credential.notBefore !== undefined && now < credential.notBefore) return deny('not_yet_valid', status);
  if (credential.notAfter !== undefined && now >= credential.notAfter) return deny('expired', status);
  const action = p.intent === 'lock' ? 'lock' : 'unlock';
  if (!roleAllows(credential.role, action)) return deny('role_not_allowed', status);
  if (!p.explicitIntent && !(credential.kind === 'phone' && credential.options.passive))
    return deny('intent_required', status);
  if (p.counter !== undefined && counterSuspicious(input.lastCounter, p.counter))
    return deny('clone_suspected', status);
  return { granted: true, credential, intent: p.intent };
}

/**
 * FIDO signature counters (WebAuthn §6.1.1): compare only when the stored or the new value is
 * non-zero; a new value not above the stored one suggests a cloned authenticator.
 */
export function counterSuspicious(stored: number | undefined, presented: number): boolean {
  const last = stored ?? 0;
  if (last === 0 && presented === 0) return false;
  return presented <= last;
}
