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
 * - Connects are budgeted (a token bucket, `connectBudget`): a real adapter makes one LE connection
 *   at a time and a connect with GATT discovery takes tens to hundreds of ms, so a vehicle never
 *   needs more than a few a second. Without a budget, fakes that answer garbage at once turn a slot
 *   over as fast as the agent's CPU allows (each session signs a hello and decides a denial) and
 *   take that CPU from every other reader. Out of budget, sighted devices wait like for a slot and
 *   the next token goes to a random waiting device.
 * - Every per-address table is bounded: holds are pruned as they expire (and never outnumber the
 *   connects of their duration), the waiting set has `maxWaiting`.
 */

export type GateRefusal = 'device-busy' | 'too-many-sessions' | 'cooldown' | 'spacing' | 'connect-budget';

/** Refusals that are about the reader as a whole, not the device: the device waits for a turn. */
const WAIT_FOR_TURN: ReadonlySet<GateRefusal> = new Set<GateRefusal>(['too-many-sessions', 'connect-budget']);

export interface ConnectBudgetOptions {
  /** Connects per second on average (refill rate of the bucket). */
  readonly perSecond: number;
  /** Connects allowed back to back after a quiet spell (size of the bucket). Default 1. */
  readonly burst?: number;
}

/**
 * A token bucket of connects. Pure: time (ms, monotonic) is passed in. Starts full.
 */
export class ConnectBudget {
  private readonly intervalMs: number;
  private readonly burst: number;
  private tokens: number;
  private updatedAt: number | undefined;
  private takenTotal = 0;

  constructor(options: ConnectBudgetOptions) {
    if (!(Number.isFinite(options.perSecond) && options.perSecond > 0)) {
      throw new RangeError('connects per second must be a positive number');
    }
    const burst = options.burst ?? 1;
    if (!Number.isInteger(burst) || burst < 1) throw new RangeError('burst must be a positive integer');
    this.intervalMs = 1000 / options.perSecond;
    this.burst = burst;
    this.tokens = burst;
  }

  /** Connects made so far. */
  get taken(): number {
    return this.takenTotal;
  }

  /** Whether a connect may be made at `now`. */
  available(now: number): boolean {
    this.refill(now);
    return this.tokens >= 1;
  }

  /** Takes a connect; false (nothing taken) when the budget is spent. */
  take(now: number): boolean {
    if (!this.available(now)) return false;
    this.tokens -= 1;
    this.takenTotal += 1;
    return true;
  }

  /** Ms from `now` until a connect may be made (0 when it may now). */
  waitMs(now: number): number {
    this.refill(now);
    return this.tokens >= 1 ? 0 : Math.ceil((1 - this.tokens) * this.intervalMs);
  }

  private refill(now: number): void {
    if (this.updatedAt === undefined || now < this.updatedAt) {
      this.updatedAt = now;
      return;
    }
    this.tokens = Math.min(this.burst, this.tokens + (now - this.updatedAt) / this.intervalMs);
    this.updatedAt = now;
  }
}

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
  /** Connects allowed; default none (unbounded, as before the budget existed). */
  readonly connectBudget?: ConnectBudgetOptions;
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
  /** Sightings that found the connect budget spent (counted once per device while it waits). */
  readonly budgetDeferred: number;
  /** Connects the budget allowed so far. */
  readonly connects: number;
  readonly waiting: number;
  readonly active: number;
  readonly unproven: number;
  readonly closing: number;
  /** Devices held back after a session (cooldown or spacing) still remembered. */
  readonly holds: number;
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
  private readonly counts = { deferred: 0, evicted: 0, waitingDropped: 0, budgetDeferred: 0 };
  private readonly budget: ConnectBudget | undefined;
  private connects = 0;
  /** When expired holds were last pruned. */
  private prunedAt = Number.NEGATIVE_INFINITY;

  constructor(options: SessionGateOptions) {
    if (!Number.isInteger(options.maxSessions) || options.maxSessions < 1) {
      throw new RangeError('maxSessions must be a positive integer');
    }
    this.options = options;
    this.random = options.random ?? ((n) => Math.floor(Math.random() * n));
    this.budget = options.connectBudget === undefined ? undefined : new ConnectBudget(options.connectBudget);
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
      connects: this.connects,
      waiting: this.waiting.size,
      active: this.slots.size,
      unproven,
      closing: this.closing.size,
      holds: this.holds.size,
    };
  }

  /** Ms from `now` until the connect budget allows a connect (0 when it does, or has no budget). */
  budgetWaitMs(now: number): number {
    return this.budget?.waitMs(now) ?? 0;
  }

  /** Devices waiting for a turn now. */
  get waitingCount(): number {
    return this.waiting.size;
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
    if (this.budget !== undefined && !this.budget.available(now)) return 'connect-budget';
    return undefined;
  }

  /** Takes the device's slot and a connect; returns the refusal instead when it may not start. */
  acquire(address: string, now: number): GateRefusal | undefined {
    const refusal = this.check(address, now);
    if (refusal !== undefined) return refusal;
    this.budget?.take(now);
    this.connects++;
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
    if (refusal !== undefined && !WAIT_FOR_TURN.has(refusal)) {
      this.waiting.delete(address);
      return undefined;
    }
    this.prune(now);
    this.expireWaiting(now);
    if (refusal === undefined && this.waiting.size === 0) return { admit: address };
    if (refusal !== undefined && !this.waiting.has(address)) {
      this.counts.deferred++;
      if (refusal === 'connect-budget') this.counts.budgetDeferred++;
    }
    this.remember(address, now);
    // Out of connects: evicting now would free a slot nobody may use yet.
    if (this.budget !== undefined && !this.budget.available(now)) return undefined;
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
    if (this.budget !== undefined && !this.budget.available(now)) return undefined;
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

  /** Busy or held, whatever the free slots and the budget. */
  private heldBack(address: string, now: number): GateRefusal | undefined {
    const refusal = this.check(address, now);
    return refusal !== undefined && WAIT_FOR_TURN.has(refusal) ? undefined : refusal;
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

  /**
   * Forgets expired holds so the table stays bounded by the devices of recent sessions; at most
   * every 100 ms, so a storm of sightings does not walk the table each time.
   */
  private prune(now: number): void {
    if (now - this.prunedAt < 100) return;
    this.prunedAt = now;
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
