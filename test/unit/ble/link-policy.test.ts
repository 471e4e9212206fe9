import { describe, expect, it } from 'vitest';
import { Backoff, SessionGate } from '../../../src/ble/link-policy.js';

const A = 'AA:BB:CC:DD:EE:01';
const B = 'AA:BB:CC:DD:EE:02';

describe('SessionGate', () => {
  it('allows one session per device', () => {
    const gate = new SessionGate({ maxSessions: 2, spacingMs: 0 });
    expect(gate.acquire(A, 0)).toBeUndefined();
    expect(gate.acquire(A, 0)).toBe('device-busy');
    expect(gate.isBusy(A)).toBe(true);
    expect(gate.active).toBe(1);
  });

  it('bounds concurrent sessions', () => {
    const gate = new SessionGate({ maxSessions: 1, spacingMs: 0 });
    expect(gate.acquire(A, 0)).toBeUndefined();
    expect(gate.check(B, 0)).toBe('too-many-sessions');
    expect(gate.acquire(B, 0)).toBe('too-many-sessions');
    gate.release(A, 10);
    expect(gate.acquire(B, 10)).toBeUndefined();
  });

  it('spaces sessions with the same device', () => {
    const gate = new SessionGate({ maxSessions: 2, spacingMs: 500 });
    gate.acquire(A, 0);
    gate.release(A, 100);
    expect(gate.check(A, 599)).toBe('spacing');
    expect(gate.check(A, 600)).toBeUndefined();
    expect(gate.check(B, 100)).toBeUndefined();
  });

  it('holds a device for the cooldown asked at release', () => {
    const gate = new SessionGate({ maxSessions: 2, spacingMs: 500 });
    gate.acquire(A, 0);
    gate.release(A, 0, 10_000);
    expect(gate.check(A, 9_999)).toBe('cooldown');
    expect(gate.heldFor(A, 4_000)).toBe(6_000);
    expect(gate.check(A, 10_000)).toBeUndefined();
  });

  it('never shortens a hold and ignores nonsense cooldowns', () => {
    const gate = new SessionGate({ maxSessions: 2, spacingMs: 100 });
    gate.setCooldown(A, 0, 5_000);
    gate.setCooldown(A, 0, 1_000);
    expect(gate.check(A, 4_999)).toBe('cooldown');
    gate.acquire(B, 0);
    gate.release(B, 0, Number.NaN);
    expect(gate.check(B, 99)).toBe('spacing');
    gate.setCooldown(B, 0, -5);
    expect(gate.check(B, 100)).toBeUndefined();
  });

  it('rejects a bound below one', () => {
    expect(() => new SessionGate({ maxSessions: 0, spacingMs: 0 })).toThrow(RangeError);
  });
});

describe('SessionGate under contention', () => {
  const P = 'AA:BB:CC:DD:EE:50'; // the genuine phone
  const fake = (i: number) => `C0:00:00:00:00:${i.toString(16).padStart(2, '0').toUpperCase()}`;
  const gate = (over: Partial<ConstructorParameters<typeof SessionGate>[0]> = {}) =>
    new SessionGate({ maxSessions: 2, spacingMs: 0, unprovenTurnMs: 1000, random: () => 0, ...over });

  it('admits the device sighted at once while a slot is free and nobody waits', () => {
    const g = gate();
    expect(g.offer(A, 0)).toEqual({ admit: A });
    expect(g.acquire(A, 0)).toBeUndefined();
    expect(g.offer(A, 1)).toBeUndefined(); // busy
  });

  it('keeps an unproven session for its turn, then gives its slot to a waiting device', () => {
    const g = gate();
    g.acquire(fake(1), 0);
    g.acquire(fake(2), 100);
    expect(g.offer(P, 500)).toBeUndefined();
    expect(g.stats()).toMatchObject({ deferred: 1, waiting: 1, evicted: 0 });
    // fake(1) has had its turn: it goes (the longest holder first), P gets the slot.
    expect(g.offer(P, 1000)).toEqual({ admit: P, evict: fake(1) });
    expect(g.acquire(P, 1000)).toBeUndefined();
    expect(g.stats()).toMatchObject({ evicted: 1, closing: 1, active: 2, unproven: 2 });
  });

  it('never evicts a proven session or one given a longer turn', () => {
    const g = gate({ maxExtended: 1 });
    g.acquire(fake(1), 0);
    g.acquire(fake(2), 0);
    g.markProven(fake(1));
    expect(g.extend(fake(2))).toBe(true);
    expect(g.offer(P, 60_000)).toBeUndefined();
    expect(g.stats().evicted).toBe(0);
  });

  it('gives at most maxExtended sessions a longer turn', () => {
    const g = gate();
    g.acquire(fake(1), 0);
    g.acquire(fake(2), 0);
    expect(g.extend(fake(1))).toBe(true);
    expect(g.extend(fake(2))).toBe(false);
    g.release(fake(1), 10);
    expect(g.extend(fake(2))).toBe(true);
  });

  it('weighs every waiting device once, however often it advertises', () => {
    const g = gate();
    g.acquire(fake(1), 0);
    g.acquire(fake(2), 0);
    for (let t = 0; t < 100; t++) g.offer(fake(3), t);
    g.offer(P, 100);
    expect(g.stats().waiting).toBe(2);
    // A random pick among the two: with random() = n - 1 it is the later one, the phone.
    const picks = gate({ random: (n) => n - 1 });
    picks.acquire(fake(1), 0);
    picks.acquire(fake(2), 0);
    for (let t = 0; t < 100; t++) picks.offer(fake(3), t);
    expect(picks.offer(P, 1000)).toEqual({ admit: P, evict: fake(1) });
  });

  it('hands a freed slot to a waiting device, not to whoever advertises next', () => {
    const g = gate();
    g.acquire(fake(1), 0);
    g.acquire(fake(2), 0);
    g.offer(P, 10);
    g.beginClose(fake(1));
    expect(g.next(20)).toBe(P);
    expect(g.next(20)).toBeUndefined();
  });

  it('forgets a device that stopped advertising, and one held back after its session', () => {
    const g = gate({ waitingTtlMs: 500 });
    g.acquire(fake(1), 0);
    g.acquire(fake(2), 0);
    g.offer(P, 0);
    g.offer(fake(3), 900);
    expect(g.stats().waiting).toBe(1);
    g.release(fake(1), 900, 2000);
    expect(g.offer(fake(1), 950)).toBeUndefined();
    expect(g.stats().waiting).toBe(1);
  });

  it('bounds the waiting set, forgetting one at random when full', () => {
    const g = gate({ maxWaiting: 4 });
    g.acquire(fake(1), 0);
    g.acquire(fake(2), 0);
    for (let i = 10; i < 20; i++) g.offer(fake(i), 10);
    expect(g.stats()).toMatchObject({ waiting: 4, waitingDropped: 6 });
  });

  it('admits no one while as many sessions are being torn down as there are slots', () => {
    const g = gate();
    g.acquire(fake(1), 0);
    g.acquire(fake(2), 0);
    g.beginClose(fake(1));
    g.beginClose(fake(2));
    expect(g.check(P, 10)).toBe('too-many-sessions');
    expect(g.offer(P, 10)).toBeUndefined();
    g.release(fake(1), 20);
    expect(g.next(20)).toBe(P);
  });

  it('evicts nothing when unprovenTurnMs is not set', () => {
    const g = new SessionGate({ maxSessions: 1, spacingMs: 0 });
    g.acquire(fake(1), 0);
    expect(g.offer(P, 1e9)).toBeUndefined();
  });
});

describe('Backoff', () => {
  it('doubles up to the maximum and resets', () => {
    const backoff = new Backoff(100, 500);
    expect([backoff.next(), backoff.next(), backoff.next(), backoff.next()]).toEqual([100, 200, 400, 500]);
    backoff.reset();
    expect(backoff.next()).toBe(100);
  });
});
