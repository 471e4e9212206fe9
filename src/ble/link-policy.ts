/**
 * Pure rules for when the BLE link may open a session with a device, and with which one when
 * several wait. Time and randomness are passed in.
 *
 * - One session per device, at most `maxSessions` at once, a per-device hold after each session
 *   (the caller's cooldown after a grant or a denial, else a short spacing).
 * - Addresses cost an attacker nothing (phones rotate theirs anyway), so per-address holds alone
 *   cannot keep a flood of fake devices from holding every slot. A session that has not proved
 *   anything yet (no signature-checked answer) is unproven: it keeps its slot for its turn,
 *   `unprovenTurnMs`, and after that gives it up to a device that is waiting. The link also drops
 *   it at its deadline whether or not anyone waits.
 * - Under contention nobody is served first-come: devices sighted while the slots are full wait in
 *   a bounded set, and each free or reclaimed slot goes to one of them picked at random, so a
 *   device that advertises faster, or a flood of addresses that arrives first, gains nothing over
 *   a phone that advertises once a second.
 * - Sessions being torn down (Disconnect in flight) no longer hold a slot but are bounded too, so
 *   a peer that is slow to let go cannot pile up connections.
 */

export type GateRefusal = 'device-busy' | 'too-many-sessions' | 'cooldown' | 'spacing';

export interface SessionGateOptions {
  readonly maxSessions: number;
  /** After any session a device is not offered again for this long (ms). */
  readonly spacingMs: number;
  /** An unproven session keeps its slot this long before a waiting device may take it. Default: never. */
  readonly unprovenTurnMs?: number;
  /** Devices remembered as waiting for a slot; past it a random one is forgotten. Default 64. */
  readonly maxWaiting?: number;
  /** A waiting device not sighted again for this long is forgotten. Default 1500 ms. */
  readonly waitingTtlMs?: number;
  /** Sessions given a longer turn at once (enrollment approvals). Default 1. */
  readonly maxExtended?: number;
  /** A random integer in [0, n). Default Math.random. */
  readonly random?: (n: number) => number;
}

/** Who gets a session now; `evict` is the unproven session to end for it. */
export interface Turn {
  readonly admit: string;
  readonly evict?: string;
}

export interface GateStats {
  /** Sightings that found every slot taken and had to wait. */
  readonly deferred: number;
  /** Unproven sessions ended after their turn to let a waiting device in. */
  readonly evicted: number;
  /** Waiting devices forgotten because the waiting set was full. */
  readonly waitingDropped: number;
  readonly waiting: number;
  readonly active: number;
  readonly unproven: number;
  readonly closing: number;
}

interface Hold {
  readonly until: number;
  readonly reason: 'cooldown' | 'spacing';
}

interface Slot {
  readonly startedAt: number;
  proven: boolean;
  extended: boolean;
}

const DEFAULT_MAX_WAITING = 64;
const DEFAULT_WAITING_TTL_MS = 1500;

export class SessionGate {
  private readonly options: SessionGateOptions;
  private readonly random: (n: number) => number;
  private readonly slots = new Map<string, Slot>();
  private readonly closing = new Set<string>();
  private readonly holds = new Map<string, Hold>();
  /** Address → when it was last sighted while it could not be served. */
  private readonly waiting = new Map<string, number>();
  private readonly counts = { deferred: 0, evicted: 0, waitingDropped: 0 };

  constructor(options: SessionGateOptions) {
    if (!Number.isInteger(options.maxSessions) || options.maxSessions < 1) {
      throw new RangeError('maxSessions must be a positive integer');
    }
    this.options = options;
    this.random = options.random ?? ((n) => Math.floor(Math.random() * n));
  }

  get active(): number {
    return this.slots.size;
  }

  get full(): boolean {
    return this.slots.size >= this.options.maxSessions || this.closing.size >= this.options.maxSessions;
  }

  stats(): GateStats {
    let unproven = 0;
    for (const slot of this.slots.values()) if (!slot.proven) unproven++;
    return {
      ...this.counts,
      waiting: this.waiting.size,
      active: this.slots.size,
      unproven,
      closing: this.closing.size,
    };
  }

  isBusy(address: string): boolean {
    return this.slots.has(address) || this.closing.has(address);
  }

  /** Why a session with `address` may not start now, or undefined when it may. */
  check(address: string, now: number): GateRefusal | undefined {
    if (this.isBusy(address)) return 'device-busy';
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
    this.waiting.delete(address);
    this.slots.set(address, { startedAt: now, proven: false, extended: false });
    return undefined;
  }

  /**
   * A device was sighted (an advertisement). Returns who should get a session now: the device
   * itself when a slot is free and nobody waits; under contention a random waiting device (this
   * one included), with the unproven session to evict when no slot is free; or undefined.
   */
  offer(address: string, now: number): Turn | undefined {
    const refusal = this.check(address, now);
    if (refusal !== undefined && refusal !== 'too-many-sessions') {
      this.waiting.delete(address);
      return undefined;
    }
    this.expireWaiting(now);
    if (refusal === undefined && this.waiting.size === 0) return { admit: address };
    if (refusal === 'too-many-sessions' && !this.waiting.has(address)) this.counts.deferred++;
    this.remember(address, now);
    let evict: string | undefined;
    if (this.full) {
      // Evicting frees a slot only when the tear-down bound has room for one more.
      if (this.closing.size >= this.options.maxSessions) return undefined;
      evict = this.evictable(now);
      if (evict === undefined) return undefined;
      this.beginClose(evict);
      this.counts.evicted++;
    }
    const admit = this.pick(now);
    if (admit === undefined) return undefined;
    return evict === undefined ? { admit } : { admit, evict };
  }

  /** A slot is free: a random waiting device to serve, or undefined. */
  next(now: number): string | undefined {
    if (this.full) return undefined;
    this.expireWaiting(now);
    return this.pick(now);
  }

  /** The session showed a signature-checked answer: it is no longer unproven. */
  markProven(address: string): void {
    const slot = this.slots.get(address);
    if (slot !== undefined) slot.proven = true;
  }

  /** Gives a session a longer turn (it may not be evicted); false when too many have one. */
  extend(address: string): boolean {
    const slot = this.slots.get(address);
    if (slot === undefined) return false;
    if (slot.extended) return true;
    let extended = 0;
    for (const s of this.slots.values()) if (s.extended) extended++;
    if (extended >= (this.options.maxExtended ?? 1)) return false;
    slot.extended = true;
    return true;
  }

  /** The session is ending (Disconnect in flight): its slot is free, the device still busy. */
  beginClose(address: string): void {
    if (this.slots.delete(address)) this.closing.add(address);
  }

  /** The session ended: forget it; hold the device for the cooldown or the spacing. */
  release(address: string, now: number, cooldownMs = 0): void {
    this.slots.delete(address);
    this.closing.delete(address);
    this.hold(address, now, cooldownMs);
  }

  /** Forgets a waiting device (it is gone). */
  forget(address: string): void {
    this.waiting.delete(address);
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

  /** The unproven session that has held its slot longest past its turn, if any (round robin). */
  private evictable(now: number): string | undefined {
    const turn = this.options.unprovenTurnMs;
    if (turn === undefined) return undefined;
    let victim: string | undefined;
    let oldest = Number.POSITIVE_INFINITY;
    for (const [address, slot] of this.slots) {
      if (slot.proven || slot.extended || now - slot.startedAt < turn) continue;
      if (slot.startedAt < oldest) {
        oldest = slot.startedAt;
        victim = address;
      }
    }
    return victim;
  }

  /** Takes one waiting device at random (among those that may start now). */
  private pick(now: number): string | undefined {
    while (this.waiting.size > 0) {
      const index = this.random(this.waiting.size);
      let i = 0;
      let chosen: string | undefined;
      for (const address of this.waiting.keys()) {
        if (i++ === index) {
          chosen = address;
          break;
        }
      }
      if (chosen === undefined) return undefined;
      this.waiting.delete(chosen);
      if (this.heldBack(chosen, now) === undefined) return chosen;
    }
    return undefined;
  }

  /** Busy or held, whatever the free slots. */
  private heldBack(address: string, now: number): GateRefusal | undefined {
    const refusal = this.check(address, now);
    return refusal === 'too-many-sessions' ? undefined : refusal;
  }

  private remember(address: string, now: number): void {
    if (!this.waiting.has(address) && this.waiting.size >= (this.options.maxWaiting ?? DEFAULT_MAX_WAITING)) {
      // Full: forget one at random, so a spray of addresses cannot keep a phone out of the set.
      const index = this.random(this.waiting.size);
      let i = 0;
      for (const victim of this.waiting.keys()) {
        if (i++ === index) {
          this.waiting.delete(victim);
          break;
        }
      }
      this.counts.waitingDropped++;
    }
    this.waiting.set(address, now);
  }

  private expireWaiting(now: number): void {
    const ttl = this.options.waitingTtlMs ?? DEFAULT_WAITING_TTL_MS;
    for (const [address, seen] of this.waiting) if (now - seen > ttl) this.waiting.delete(address);
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
