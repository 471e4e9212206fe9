import { AgentError } from '../../core/errors.js';
import { bytesEqual, toHex } from '../../crypto/encoding.js';
import { encodeChallenge } from './mode-p.js';
import { NONCE_BYTES } from './peripheral-constants.js';

/**
 * The challenges of mode P, per connection (docs/ble-protocol.md part "Mode P"). Pure state: the
 * caller passes the times. Rules:
 * - each read of the challenge characteristic issues a fresh challenge for that connection and
 *   replaces the previous one (which can then no longer be answered);
 * - a challenge is answered once: taking it consumes it, and its nonce is remembered as used, so a
 *   replayed answer is refused as `replay` (on any connection);
 * - the deadline runs from the read: an answer taken after it is `challenge_expired`;
 * - an answer whose nonce is no live challenge of this connection is `no_challenge`.
 * Bounded: at most maxConnections connections (the least recently read is forgotten first) and
 * usedNonces remembered nonces (oldest first), so a flood of reads costs a fixed amount of memory
 * and touches only the flooding connection's own challenge.
 */

export interface ChallengeBookOptions {
  readonly vehicleId: string;
  /** The deadline of a web key answer, from the read (and the windowMs the challenge carries). */
  readonly windowMs: number;
  /** The deadline of a passkey answer or an enrollment: user verification takes a human's time. */
  readonly slowWindowMs: number;
  readonly randomBytes: (length: number) => Uint8Array;
  readonly maxConnections?: number;
  readonly usedNonces?: number;
}

export interface IssuedChallenge {
  /** The exact challenge message bytes (what the signatures cover). */
  readonly message: Uint8Array;
  readonly nonce: Uint8Array;
  /** Monotonic ms of the read. */
  readonly readAt: number;
}

export type AnswerPace = 'fast' | 'slow';

export type TakeOutcome =
  | { readonly ok: true; readonly challenge: IssuedChallenge; readonly elapsedMs: number }
  | {
      readonly ok: false;
      readonly code: 'challenge_expired';
      /** The (now consumed) challenge: a late answer's signature can still be checked, for the audit. */
      readonly challenge: IssuedChallenge;
      readonly elapsedMs: number;
    }
  | { readonly ok: false; readonly code: 'no_challenge' | 'replay' };

const DEFAULT_MAX_CONNECTIONS = 64;
const DEFAULT_USED_NONCES = 4096;

export class ChallengeBook {
  private readonly options: ChallengeBookOptions;
  /** Live challenge per connection, in the order of their last read (a Map keeps insertion order). */
  private readonly live = new Map<string, IssuedChallenge>();
  private readonly used = new Set<string>();

  constructor(options: ChallengeBookOptions) {
    for (const [name, value] of [
      ['windowMs', options.windowMs],
      ['slowWindowMs', options.slowWindowMs],
    ] as const) {
      if (!Number.isInteger(value) || value < 1 || value > 0xffff)
        throw new AgentError('internal', `the mode P ${name} must be 1..65535 ms`);
    }
    this.options = options;
  }

  /** A read of the challenge by `connection` at monotonic `now`, wall clock `wallNow`. */
  issue(connection: string, now: number, wallNow: number): IssuedChallenge {
    const nonce = this.options.randomBytes(NONCE_BYTES);
    if (nonce.length !== NONCE_BYTES) throw new AgentError('internal', 'randomBytes gave the wrong length');
    const message = encodeChallenge({
      vehicleId: this.options.vehicleId,
      nonce,
      issuedAtMs: Math.max(0, Math.floor(wallNow)),
      windowMs: this.options.windowMs,
    });
    const issued: IssuedChallenge = { message, nonce, readAt: now };
    this.live.delete(connection);
    this.live.set(connection, issued);
    const max = this.options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    while (this.live.size > max) {
      const oldest = this.live.keys().next().value;
      if (oldest === undefined) break;
      this.live.delete(oldest);
    }
    return issued;
  }

  /**
   * An answer naming `nonce` arrived on `connection` at `now`. On success (and on expiry) the
   * challenge is consumed: it can never be answered again.
   */
  take(connection: string, nonce: Uint8Array, now: number, pace: AnswerPace): TakeOutcome {
    const key = toHex(nonce);
    if (this.used.has(key)) return { ok: false, code: 'replay' };
    const challenge = this.live.get(connection);
    if (challenge === undefined || !bytesEqual(challenge.nonce, nonce))
      return { ok: false, code: 'no_challenge' };
    this.live.delete(connection);
    this.remember(key);
    const elapsedMs = Math.max(0, now - challenge.readAt);
    const window = pace === 'fast' ? this.options.windowMs : this.options.slowWindowMs;
    if (elapsedMs > window) return { ok: false, code: 'challenge_expired', challenge, elapsedMs };
    return { ok: true, challenge, elapsedMs };
  }

  /** The live challenge of a connection, if any (not consumed). */
  current(connection: string): IssuedChallenge | undefined {
    return this.live.get(connection);
  }

  forget(connection: string): void {
    this.live.delete(connection);
  }

  get connections(): number {
    return this.live.size;
  }

  private remember(key: string): void {
    this.used.add(key);
    const max = this.options.usedNonces ?? DEFAULT_USED_NONCES;
    while (this.used.size > max) {
      const oldest = this.used.values().next().value;
      if (oldest === undefined) break;
      this.used.delete(oldest);
    }
  }
}
