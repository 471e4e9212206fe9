import type { DenialCode } from '../core/codes.js';
import type { CredentialKind, Decision, Presentation } from '../core/types.js';

/**
 * Rate limits keyed by what an attacker cannot rotate for free. Radio addresses, card UIDs,
 * claimed key ids that name nothing and malformed frames cost nothing to vary, so they never
 * count toward anything that could refuse a valid key. Two budgets remain:
 *
 * - per credential: failed proofs for a credential that exists in the keyring (a bad signature,
 *   a replay, a clone, a late answer) lock that one credential out for a while. Brute force or a
 *   relay against one key stops; every other key works on.
 * - UID guessing: UID-only tags prove nothing, so a stream of unknown NFC cards (someone trying
 *   UIDs) throttles UID-only grants for a while. Cards and keys with a cryptographic proof
 *   (FIDO, NTAG 424, phones) are not affected.
 *
 * Pure: state in, state out; time is passed in. Memory is bounded: failures are kept only for
 * credentials in the keyring, at most maxDenials each, and unknown cards at most maxUnknownCards.
 */

export interface RateLimitPolicy {
  /** Failed proofs for one credential within windowMs that lock that credential out (policy.maxDenials). */
  readonly maxDenials: number;
  readonly windowMs: number;
  /** How long a locked-out credential is refused (policy.cooldownMs). */
  readonly cooldownMs: number;
  /** Unknown NFC cards, agent-wide, within windowMs that throttle UID-only grants. Default 10. */
  readonly maxUnknownCards?: number;
  /** How long UID-only grants are refused once throttled. Default 300 000 ms. */
  readonly uidThrottleMs?: number;
}

export const DEFAULT_MAX_UNKNOWN_CARDS = 10;
export const DEFAULT_UID_THROTTLE_MS = 300_000;

export interface CredentialFailures {
  /** Trusted times of counted failures inside the window, oldest first. */
  readonly failures: readonly number[];
  /** While now < lockedUntil the credential is refused (rate_limited). */
  readonly lockedUntil: number;
}

export interface RateLimitState {
  /** By credential id; only credentials that exist in the keyring. */
  readonly credentials: ReadonlyMap<string, CredentialFailures>;
  /** Trusted times of unknown NFC cards inside the window, oldest first. */
  readonly unknownCards: readonly number[];
  /** While now < uidThrottledUntil UID-only grants are refused (rate_limited). */
  readonly uidThrottledUntil: number;
}

export const EMPTY_LIMITS: RateLimitState = {
  credentials: new Map(),
  unknownCards: [],
  uidThrottledUntil: 0,
};

/** A rate limit that started: audit it with what it is keyed on. */
export type LimitEvent =
  | {
      readonly scope: 'credential';
      readonly credentialId: string;
      readonly failures: number;
      readonly until: number;
    }
  | { readonly scope: 'uid-guessing'; readonly unknownCards: number; readonly until: number };

export interface LimitOutcome {
  readonly state: RateLimitState;
  readonly event?: LimitEvent;
}

/**
 * Denials that are a failed proof of the credential claimed: what a forger, a cloner or a relay
 * produces. A revoked key tried again counts too (it bounds what a stolen key can write to the
 * audit log). Transport outcomes (card removed, reader error, malformed frame) and policy
 * outcomes of a key that proved itself (expired, role, intent) do not.
 */
const PROOF_FAILURES: ReadonlySet<DenialCode> = new Set<DenialCode>([
  'bad_proof',
  'replay',
  'clone_suspected',
  'timeout',
  'wrong_vehicle',
  'revoked',
]);

/** Kinds read at an NFC reader: an unknown one of these is a UID that matched nothing. */
const NFC_KINDS: ReadonlySet<CredentialKind> = new Set<CredentialKind>(['uid', 'fido', 'ntag424']);

export function lockedOutUntil(state: RateLimitState, credentialId: string, now: number): number | undefined {
  const until = state.credentials.get(credentialId)?.lockedUntil ?? 0;
  return now < until ? until : undefined;
}

export function isUidThrottled(state: RateLimitState, now: number): boolean {
  return now < state.uidThrottledUntil;
}

/** Credentials locked out at `now`. */
export function lockedOutCount(state: RateLimitState, now: number): number {
  let n = 0;
  for (const entry of state.credentials.values()) if (now < entry.lockedUntil) n++;
  return n;
}

/** The limits in force at `now`: locked-out credentials (soonest end first, at most `max`) and the UID throttle. */
export interface ActiveLimits {
  readonly credentials: readonly { readonly credentialId: string; readonly until: number }[];
  /** Locked-out credentials beyond `max`, not listed. */
  readonly more: number;
  readonly uidThrottledUntil?: number;
}

export function activeLimits(state: RateLimitState, now: number, max: number): ActiveLimits {
  const locked: { credentialId: string; until: number }[] = [];
  for (const [credentialId, entry] of state.credentials)
    if (now < entry.lockedUntil) locked.push({ credentialId, until: entry.lockedUntil });
  locked.sort((a, b) => a.until - b.until || (a.credentialId < b.credentialId ? -1 : 1));
  return {
    credentials: locked.slice(0, max),
    more: Math.max(0, locked.length - max),
    ...(isUidThrottled(state, now) ? { uidThrottledUntil: state.uidThrottledUntil } : {}),
  };
}

/**
 * A denial that identified no credential in the keyring (garbage, unknown keys and cards,
 * malformed frames, silent peers), or one refused by a rate limit: radio and reader noise that
 * is summarised in the audit log rather than written one record each.
 */
export function isNoise(decision: Decision): boolean {
  return !decision.granted && (decision.credential === undefined || decision.code === 'rate_limited');
}

/** Whether this denial is a failed proof that counts against the credential it names. */
export function countsAgainstCredential(presentation: Presentation, decision: Decision): boolean {
  if (decision.granted || decision.credential === undefined) return false;
  if (!PROOF_FAILURES.has(decision.code)) return false;
  // A claim made over the wrong kind of reader never ran the credential's protocol at all.
  return decision.credential.kind === presentation.kind;
}

/** Folds a decision into the rate-limit state. Returns the same state when nothing changed. */
export function recordOutcome(
  state: RateLimitState,
  presentation: Presentation,
  decision: Decision,
  now: number,
  policy: RateLimitPolicy,
): LimitOutcome {
  if (decision.granted) {
    // The holder proved the key: earlier fumbles (a late answer, a card pulled early) are forgiven.
    if (!state.credentials.has(decision.credential.id)) return { state };
    const credentials = pruned(state.credentials, now, policy.windowMs);
    credentials.delete(decision.credential.id);
    return { state: { ...state, credentials } };
  }
  if (decision.code === 'rate_limited') return { state };
  const credential = decision.credential;
  if (credential !== undefined) {
    if (!countsAgainstCredential(presentation, decision)) return { state };
    const credentials = pruned(state.credentials, now, policy.windowMs);
    const failures = [...(credentials.get(credential.id)?.failures ?? []), now];
    if (failures.length >= policy.maxDenials) {
      const until = now + policy.cooldownMs;
      credentials.set(credential.id, { failures: [], lockedUntil: until });
      return {
        state: { ...state, credentials },
        event: { scope: 'credential', credentialId: credential.id, failures: failures.length, until },
      };
    }
    credentials.set(credential.id, { failures, lockedUntil: 0 });
    return { state: { ...state, credentials } };
  }
  if (decision.code !== 'unknown_credential' || !NFC_KINDS.has(presentation.kind)) return { state };
  // While throttled, unknown cards are not counted: the throttle ends on time and is not extended.
  if (isUidThrottled(state, now)) return { state };
  const maxUnknown = policy.maxUnknownCards ?? DEFAULT_MAX_UNKNOWN_CARDS;
  const unknownCards = [...state.unknownCards.filter((t) => now - t < policy.windowMs), now];
  if (unknownCards.length >= maxUnknown) {
    const until = now + (policy.uidThrottleMs ?? DEFAULT_UID_THROTTLE_MS);
    return {
      state: { ...state, unknownCards: [], uidThrottledUntil: until },
      event: { scope: 'uid-guessing', unknownCards: unknownCards.length, until },
    };
  }
  return { state: { ...state, unknownCards } };
}

/** A copy without failures older than the window and without lockouts that ended. */
function pruned(
  credentials: ReadonlyMap<string, CredentialFailures>,
  now: number,
  windowMs: number,
): Map<string, CredentialFailures> {
  const out = new Map<string, CredentialFailures>();
  for (const [id, entry] of credentials) {
    const failures = entry.failures.filter((t) => now - t < windowMs);
    const lockedUntil = now < entry.lockedUntil ? entry.lockedUntil : 0;
    if (failures.length > 0 || lockedUntil > 0) out.set(id, { failures, lockedUntil });
  }
  return out;
}
