/**
 * Reconnect delays: exponential from minMs to maxMs with "equal jitter" (half the delay fixed,
 * half random), so a fleet that lost its broker at once does not come back at once. Pure.
 */
export interface BackoffPolicy {
  readonly minMs: number;
  readonly maxMs: number;
}

/** Delay before reconnect attempt `attempt` (0 = the first retry). `random` is in [0, 1). */
export function backoffDelay(attempt: number, policy: BackoffPolicy, random: () => number): number {
  const exponent = Math.min(Math.max(0, attempt), 30);
  const ceiling = Math.min(policy.maxMs, policy.minMs * 2 ** exponent);
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.round(ceiling / 2 + (ceiling / 2) * r);
}

/**
 * Delay before retry `attempt` when the retries go round `brokers` URLs in turn: the backoff grows
 * once per round, so the next node is tried soon after one fails, and a fleet whose every node is
 * gone still backs off. With one URL it is backoffDelay. Pure.
 */
export function roundBackoffDelay(
  attempt: number,
  brokers: number,
  policy: BackoffPolicy,
  random: () => number,
): number {
  return backoffDelay(Math.floor(Math.max(0, attempt) / Math.max(1, brokers)), policy, random);
}
