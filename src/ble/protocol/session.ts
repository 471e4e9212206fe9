import type { KeyObject } from 'node:crypto';
import { AgentError } from '../../core/errors.js';
import type { Intent, ProofVerdict, PublicJwk } from '../../core/types.js';
import { toHex } from '../../crypto/encoding.js';
import { CHALLENGE_BYTES } from './constants.js';
import { type AbortMessage, buildHello, decodeExpecting, type KeyAnswer } from './messages.js';
import { type ChallengeMemory, verifyKeyAnswer } from './verify.js';

/**
 * The vehicle side of one exchange, pure: time and randomness are injected.
 *
 *   open() ── hello with a fresh challenge ──▶ awaiting_answer
 *   helloSent(t0): the last chunk of the hello is handed to the link (the deadline starts here)
 *   receive(frame, t1) ──▶ answered (answerMs = t1 - t0)   or closed (malformed)
 *                      ──▶ an abort is noted and the session keeps waiting (it is not signed)
 *   verify(publicKey) ──▶ verdict; 'timeout' when a valid answer came after the window
 *
 * A challenge is used once: the session accepts one answer from the key, and its challenge goes
 * into RecentChallenges at open, so an answer to it replayed into another session is 'replayed'.
 * An abort is unsigned: anyone in radio range can send one. It ends nothing and changes nothing
 * (no other version, no weaker mode); the deadline decides a session that gets no answer.
 */

/** A bounded memory of recent challenges (oldest forgotten first). Shared by all sessions of a reader. */
export class RecentChallenges implements ChallengeMemory {
  private readonly seen = new Set<string>();
  private readonly order: string[] = [];
  private next = 0;

  constructor(readonly capacity = 1024) {
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new AgentError('internal', 'capacity must be a positive integer');
  }

  add(challenge: Uint8Array): void {
    const key = toHex(challenge);
    if (this.seen.has(key)) return;
    const evicted = this.order[this.next];
    if (evicted !== undefined) this.seen.delete(evicted);
    this.order[this.next] = key;
    this.next = (this.next + 1) % this.capacity;
    this.seen.add(key);
  }

  has(challenge: Uint8Array): boolean {
    return this.seen.has(toHex(challenge));
  }

  get size(): number {
    return this.seen.size;
  }
}

export interface AgentSessionOptions {
  readonly vehicleId: string;
  /** The deadline: a valid answer held later than this after `now` is a 'timeout'. 1..65535. */
  readonly answerWindowMs: number;
  /**
   * Monotonic ms now. The deadline counts from here until helloSent() moves it to the moment the
   * hello's last chunk is handed to the link.
   */
  readonly now: number;
  readonly randomBytes: (length: number) => Uint8Array;
  /** The vehicle key: 64-byte r‖s P-256 signature over SHA-256(message) (ReaderContext.signAsVehicle). */
  readonly signAsVehicle: (message: Uint8Array) => Uint8Array;
  /** Shared across sessions; this session's challenge is added to it. */
  readonly recentChallenges?: RecentChallenges;
}

export type SessionState = 'awaiting_answer' | 'answered' | 'closed';

/**
 * What the key sent: its answer, or an abort (it refused, e.g. our hello is not its vehicle's).
 * An abort leaves the session waiting for an answer until the deadline.
 */
export type SessionReceipt =
  | { readonly kind: 'answer'; readonly answer: KeyAnswer; readonly answerMs: number }
  | { readonly kind: 'abort'; readonly code: string; readonly answerMs: number };

export interface SessionVerdict {
  readonly proof: ProofVerdict;
  readonly keyId: string;
  readonly intent: Intent;
  readonly explicitIntent: boolean;
  /** Time from issuing the hello to holding the complete answer. */
  readonly answerMs: number;
}

export class AgentSession {
  readonly vehicleId: string;
  readonly challenge: Uint8Array;
  /** The hello message to frame and send (see framing.ts chunkFrame). */
  readonly hello: Uint8Array;
  readonly answerWindowMs: number;
  private sentAt: number;
  private abortCode: string | undefined;
  private readonly recent: RecentChallenges | undefined;
  private current: SessionState = 'awaiting_answer';
  private receipt: (SessionReceipt & { kind: 'answer' }) | undefined;

  private constructor(options: AgentSessionOptions, challenge: Uint8Array, hello: Uint8Array) {
    this.vehicleId = options.vehicleId;
    this.answerWindowMs = options.answerWindowMs;
    this.sentAt = options.now;
    this.challenge = challenge;
    this.hello = hello;
    this.recent = options.recentChallenges;
  }

  /** Starts an exchange: draws a fresh challenge and signs the hello with the vehicle key. */
  static open(options: AgentSessionOptions): AgentSession {
    const challenge = options.randomBytes(CHALLENGE_BYTES);
    if (challenge.length !== CHALLENGE_BYTES) {
      throw new AgentError(
        'internal',
        `random source gave ${challenge.length} bytes, not ${CHALLENGE_BYTES}`,
      );
    }
    const fresh = challenge.slice();
    const hello = buildHello(
      { vehicleId: options.vehicleId, challenge: fresh, answerWindowMs: options.answerWindowMs },
      options.signAsVehicle,
    );
    // Known from now on, so an answer to it replayed into any other session (even a concurrent one) is 'replayed'.
    options.recentChallenges?.add(fresh);
    return new AgentSession(options, fresh, hello);
  }

  get state(): SessionState {
    return this.current;
  }

  /**
   * The hello's last chunk is handed to the link at `now`: the deadline runs from here. Not
   * earlier (the writes of the chunks before it are the link's time, not the key's) and not when
   * that write is acknowledged, which the peer controls: a relay could hold the acknowledgement
   * back while it forwards the hello and so hide its own delay from the clock.
   */
  helloSent(now: number): void {
    this.sentAt = now;
  }

  /** Monotonic ms from which the answer window runs (see helloSent). */
  get issuedAt(): number {
    return this.sentAt;
  }

  /** Monotonic ms after which a valid answer is too late. */
  get deadlineAt(): number {
    return this.sentAt + this.answerWindowMs;
  }

  /** The code of the first abort the key sent, if it sent one (and no answer yet). */
  get abortedWith(): string | undefined {
    return this.abortCode;
  }

  isExpired(now: number): boolean {
    return now > this.deadlineAt;
  }

  /**
   * Takes the one frame the key may send. Throws AgentError 'replay' when this session's
   * challenge was already used, 'malformed' / 'unsupported' for bad bytes (the session closes:
   * there is no second try on the same challenge).
   */
  receive(message: Uint8Array, now: number): SessionReceipt {
    if (this.current !== 'awaiting_answer') {
      throw new AgentError('replay', 'this session already received its one answer; its challenge is used');
    }
    const answerMs = Math.max(0, now - this.sentAt);
    let decoded: KeyAnswer | AbortMessage;
    try {
      decoded = decodeExpecting(message, 'answer', 'abort');
    } catch (err) {
      this.current = 'closed';
      throw err;
    }
    if (decoded.type === 'abort') {
      // Unsigned: noted, never acted on. The key's one answer may still come before the deadline.
      this.abortCode ??= decoded.code;
      return { kind: 'abort', code: decoded.code, answerMs };
    }
    this.current = 'answered';
    this.receipt = { kind: 'answer', answer: decoded, answerMs };
    return this.receipt;
  }

  /** The verdict on the received answer, given the public key enrolled under its key id. */
  verify(publicKey: KeyObject | PublicJwk): SessionVerdict {
    const receipt = this.receipt;
    if (receipt === undefined) throw new AgentError('internal', 'verify() before an answer was received');
    const { answer, answerMs } = receipt;
    let proof = verifyKeyAnswer(answer, {
      challenge: this.challenge,
      vehicleId: this.vehicleId,
      publicKey,
      ...(this.recent ? { earlierChallenges: this.recent } : {}),
    });
    // A correct answer that took too long is what a relay looks like: deny it as late.
    if (proof === 'valid' && answerMs > this.answerWindowMs) proof = 'timeout';
    return {
      proof,
      keyId: answer.keyId,
      intent: answer.intent,
      explicitIntent: answer.explicitIntent,
      answerMs,
    };
  }

  /** Ends the session without an answer (deadline passed, link lost). Its challenge stays used. */
  close(): void {
    this.current = 'closed';
  }
}
