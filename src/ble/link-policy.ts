/**
 * Pure rules for when the BLE link may open a session with a device: one session per device,
 * a bound on concurrent sessions, a per-device cooldown the caller asks for (after a grant) and
 * a short spacing after any session so a failing phone is not hammered. Time is passed in.
 */

export type GateRefusal = 'device-busy' | 'too-many-sessions' | 'cooldown' | 'spacing';

export interface SessionGateOptions {
  readonly maxSessions: number;
  /** After any session a device is not offered again for this long (ms). */
  readonly spacingMs: number;
}

interface Hold {
  readonly until: number;
  readonly reason: 'cooldown' | 'spacing';
}

export class SessionGate {
  private readonly options: SessionGateOptions;
  private readonly busy = new Set<string>();
  private readonly holds = new Map<string, Hold>();

  constructor(options: SessionGateOptions) {
    if (!Number.isInteger(options.maxSessions) || options.maxSessions < 1) {
      throw new RangeError('maxSessions must be a positive integer');
    }
    this.options = options;
  }

  get active(): number {
    return this.busy.size;
  }

  get full(): boolean {
    return this.busy.size >= this.options.maxSessions;
  }

  isBusy(address: string): boolean {
    return this.busy.has(address);
  }

  /** Why a session with `address` may not start now, or undefined when it may. */
  check(address: string, now: number): GateRefusal | undefined {
    if (this.busy.has(address)) return 'device-busy';
    const hold = this.holds.get(address);
    if (hold !== undefined) {
      if (now < hold.until) return hold.reason;
      this.holds.delete(address);
    }
    if (this.full) return 'too-many-sessions';
    return undefined;
  }

  /** Takes the device's slot; returns the refusal instead when it may not start. */
  acquire(address: string, now: number): GateRefusal | undefined {
    const refusal = this.check(address, now);
    if (refusal !== undefined) return refusal;
    this.prune(now);
    this.busy.add(address);
    return undefined;
  }

  /** The session ended: free the slot; hold the device for the cooldown or the spacing. */
  release(address: string, now: number, cooldownMs = 0): void {
    this.busy.delete(address);
    this.hold(address, now, cooldownMs);
  }

  /** Holds a device for `ms` (the caller's cooldown after a grant); never shortens a hold. */
  setCooldown(address: string, now: number, ms: number): void {
    this.hold(address, now, ms);
  }

  /** Ms until `address` may be offered again (0 when it may now). */
  heldFor(address: string, now: number): number {
    const hold = this.holds.get(address);
    return hold === undefined ? 0 : Math.max(0, hold.until - now);
  }

  private hold(address: string, now: number, cooldownMs: number): void {
    const cooldown = Number.isFinite(cooldownMs) && cooldownMs > 0 ? cooldownMs : 0;
    const next: Hold =
      cooldown > this.options.spacingMs
        ? { until: now + cooldown, reason: 'cooldown' }
        : { until: now + this.options.spacingMs, reason: 'spacing' };
    const current = this.holds.get(address);
    if (current === undefined || next.until > current.until) this.holds.set(address, next);
  }

  /** Forgets expired holds so the table stays bounded by recent devices. */
  private prune(now: number): void {
    for (const [address, hold] of this.holds) if (hold.until <= now) this.holds.delete(address);
  }
}

/** Exponential backoff for re-initialising after BlueZ or the adapter went away. */
export class Backoff {
  private readonly initialMs: number;
  private readonly maxMs: number;
  private current: number;

  constructor(initialMs: number, maxMs: number) {
    this.initialMs = Math.max(1, initialMs);
    this.maxMs = Math.max(this.initialMs, maxMs);
    this.current = this.initialMs;
  }

  /** The delay to wait now; the next one doubles, up to the maximum. */
  next(): number {
    const delay = this.current;
    this.current = Math.min(this.maxMs, this.current * 2);
    return delay;
  }

  reset(): void {
    this.current = this.initialMs;
  }
}
