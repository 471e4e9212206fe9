/**
 * Budgets for work that arrives over MQTT (docs/mqtt.md "Floods"). Pure: no I/O, no timers; the
 * caller passes the time. Two layers:
 *
 * - the intake pace: every inbound message, whatever its topic, costs one message and its bytes
 *   from one pair of buckets; when they run dry the link waits before taking the next message
 *   from the broker (its PUBACK waits too, so with Receive Maximum the broker holds the rest).
 *   This bounds the CPU share of the whole MQTT intake, drops included.
 * - topic budgets: per topic, messages and bytes per second; a message beyond is dropped and
 *   counted before anything is parsed or verified. This bounds the signature checks and JSON
 *   parses an outsider can cause on each topic.
 */

/** A token bucket: `ratePerS` tokens a second, at most `burst` saved up. */
export class TokenBucket {
  private level: number;
  private at: number;

  constructor(
    readonly ratePerS: number,
    readonly burst: number,
    now: number,
  ) {
    this.level = burst;
    this.at = now;
  }

  private refill(now: number): void {
    if (now > this.at) {
      this.level = Math.min(this.burst, this.level + ((now - this.at) * this.ratePerS) / 1000);
      this.at = now;
    }
  }

  /** Takes `n` tokens when there are that many; false (and nothing taken) otherwise. */
  tryTake(n: number, now: number): boolean {
    this.refill(now);
    if (this.level < n) return false;
    this.level -= n;
    return true;
  }

  /**
   * Takes `n` tokens even when it goes into debt; returns how long (ms) until the level is back
   * to zero, which is how long the taker should wait before its next take.
   */
  takeWithDebt(n: number, now: number): number {
    this.refill(now);
    this.level -= n;
    return this.level >= 0 ? 0 : Math.ceil((-this.level * 1000) / this.ratePerS);
  }

  available(now: number): number {
    this.refill(now);
    return this.level;
  }
}

export interface RateLimit {
  readonly messagesPerS: number;
  readonly bytesPerS: number;
}

/** The intake pace: how long to wait after a message of `bytes` before taking the next one. */
export class IntakePace {
  private readonly messages: TokenBucket;
  private readonly bytes: TokenBucket;

  constructor(limit: RateLimit, now: number) {
    // A burst of one second's worth: a quiet link takes a short burst without waiting.
    this.messages = new TokenBucket(limit.messagesPerS, limit.messagesPerS, now);
    this.bytes = new TokenBucket(limit.bytesPerS, limit.bytesPerS, now);
  }

  /** Charges one message of `bytes`; resolves to the wait (ms) before the next may be taken. */
  charge(bytes: number, now: number): number {
    return Math.max(this.messages.takeWithDebt(1, now), this.bytes.takeWithDebt(bytes, now));
  }
}

export type TopicVerdict = 'accepted' | 'too_large' | 'over_budget';

export interface TopicLimit extends RateLimit {
  /** The largest message accepted on the topic. */
  readonly maxBytes: number;
}

/**
 * One topic's budget. The byte bucket holds at least one largest message, so a lone message of
 * the largest size is accepted on a quiet topic.
 */
export class TopicBudget {
  private readonly messages: TokenBucket;
  private readonly bytes: TokenBucket;
  readonly counts = { accepted: 0, tooLarge: 0, overBudget: 0, bytes: 0 };

  constructor(
    readonly limit: TopicLimit,
    now: number,
  ) {
    this.messages = new TokenBucket(limit.messagesPerS, Math.max(1, limit.messagesPerS), now);
    this.bytes = new TokenBucket(limit.bytesPerS, Math.max(limit.bytesPerS, limit.maxBytes), now);
  }

  /** Counts a message refused for its size before it reached admit (cut by the 3.1.1 size guard). */
  countTooLarge(): void {
    this.counts.tooLarge += 1;
  }

  /** Decides on one message of `bytes` arriving at `now`, and counts it. */
  admit(bytes: number, now: number): TopicVerdict {
    if (bytes > this.limit.maxBytes) {
      this.counts.tooLarge += 1;
      return 'too_large';
    }
    // Both buckets are checked before either is charged: a refused message costs nothing.
    if (this.messages.available(now) < 1 || this.bytes.available(now) < bytes) {
      this.counts.overBudget += 1;
      return 'over_budget';
    }
    this.messages.tryTake(1, now);
    this.bytes.tryTake(bytes, now);
    this.counts.accepted += 1;
    this.counts.bytes += bytes;
    return 'accepted';
  }
}
