/**
 * A token bucket: `rate` tokens a second, holding at most `burst` (default twice the rate).
 * `take` is all or nothing (a request budget); `spend` may overdraw (work that was already done,
 * measured afterwards) down to `-maxDebt`, and `msUntil` says when the bucket is usable again.
 * The debt is capped so that one long piece of work (a legitimate slow command, a stalled loop)
 * closes the bucket for a bounded time, not for as long as it took divided by the rate.
 */
export class TokenBucket {
  readonly rate: number;
  readonly burst: number;
  readonly maxDebt: number;
  private tokens: number;
  private last: number;
  private readonly now: () => number;

  constructor(rate: number, options: { burst?: number; maxDebt?: number; now?: () => number } = {}) {
    this.rate = rate;
    this.burst = options.burst ?? rate * 2;
    this.maxDebt = options.maxDebt ?? Number.POSITIVE_INFINITY;
    this.now = options.now ?? (() => performance.now());
    this.tokens = this.burst;
    this.last = this.now();
  }

  private refill(): void {
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((t - this.last) / 1000) * this.rate);
    this.last = t;
  }

  /** Takes `cost` tokens if there are that many; false (and nothing taken) otherwise. */
  take(cost = 1): boolean {
    this.refill();
    if (this.tokens < cost) return false;
    this.tokens -= cost;
    return true;
  }

  /** Takes `cost` tokens even if that overdraws the bucket (never below `-maxDebt`). */
  spend(cost: number): void {
    this.refill();
    this.tokens = Math.max(-this.maxDebt, this.tokens - cost);
  }

  /** Tokens there now (negative when overdrawn). */
  available(): number {
    this.refill();
    return this.tokens;
  }

  /** Milliseconds until `tokens` are there (0 when they are now). */
  msUntil(tokens = 1): number {
    this.refill();
    return this.tokens >= tokens ? 0 : ((tokens - this.tokens) / this.rate) * 1000;
  }
}
