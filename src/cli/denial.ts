import type { LimitsReply } from '../host/control-api.js';
import { controlCall } from './control-client.js';

/**
 * A denial as a person reads it. `rate_limited` alone says nothing about what is limited or for how
 * long, so the agent's `limits` are asked and the line says what is refused, until when, why, and
 * how it ends (in sim: `vehicle-agent sim clear-limits`).
 */
export async function denialLine(
  socketPath: string,
  code: string,
  credentialId: string | undefined,
): Promise<string> {
  if (code !== 'rate_limited') return `denied: ${code}`;
  try {
    return `denied: ${describeRateLimit(await controlCall(socketPath, 'limits', {}), credentialId)}`;
  } catch {
    // An agent without the command, or gone since: the code is still the answer.
    return `denied: ${code}`;
  }
}

/** 300000 → "5 min", 299400 → "4 min 59 s", 45000 → "45 s". */
export function duration(ms: number): string {
  const total = Math.round(ms / 1000);
  const minutes = Math.floor(total / 60);
  const rest = total % 60;
  if (minutes === 0) return `${rest} s`;
  return rest === 0 ? `${minutes} min` : `${minutes} min ${rest} s`;
}

/** Pure: what a rate_limited denial of `credentialId` means, given the limits in force. */
export function describeRateLimit(limits: LimitsReply, credentialId: string | undefined): string {
  const { policy } = limits;
  const now = Date.parse(limits.now);
  const left = (until: string) =>
    `until ${until} (${duration(Math.max(0, Date.parse(until) - now))} from now)`;
  const clear = (setting: string) =>
    limits.clearable
      ? 'This vehicle is simulated: `vehicle-agent sim clear-limits` lifts it now.'
      : `It ends on time (${setting} in the config).`;
  const lockout = limits.lockedOut.find((l) => l.credentialId === credentialId);
  if (lockout !== undefined) {
    return (
      `rate_limited: ${lockout.credentialId} is locked out ${left(lockout.until)}, after ` +
      `${policy.maxDenials} failed proofs within ${duration(policy.windowMs)} (bad signature, replay, clone, ` +
      `late answer, revoked key); every other key still works. ${clear('policy.cooldownMs')}`
    );
  }
  if (limits.uidThrottledUntil !== undefined) {
    return (
      `rate_limited: UID-only tags are refused ${left(limits.uidThrottledUntil)}, after ` +
      `${policy.maxUnknownCards} unknown cards within ${duration(policy.windowMs)} (someone trying UIDs); ` +
      `FIDO keys, NTAG 424 cards and phones still work. ${clear('policy.uidThrottleMs')}`
    );
  }
  return 'rate_limited (the limit has ended since: try again)';
}
