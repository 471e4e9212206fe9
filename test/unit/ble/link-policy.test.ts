import { describe, expect, it } from 'vitest';
import { Backoff, ConnectBudget, SessionGate } from '../../../src/ble/link-policy.js';

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

describe('ConnectBudget', () => {
  it.each([
    // perSecond, burst, times at which a connect is asked, which of them are allowed
    {
      perSecond: 8,
      burst: 1,
      at: [0, 1, 124, 125, 126, 250],
      allowed: [true, false, false, true, false, true],
    },
    {
      perSecond: 8,
      burst: 4,
      at: [0, 0, 0, 0, 0, 100, 125],
      allowed: [true, true, true, true, false, false, true],
    },
    {
      perSecond: 2,
      burst: 2,
      at: [0, 0, 499, 500, 10_000, 10_000, 10_000],
      allowed: [true, true, false, true, true, true, false],
    },
    { perSecond: 1000, burst: 1, at: [0, 0, 1, 1, 2], allowed: [true, false, true, false, true] },
  ])('$perSecond/s with bursts of $burst', ({ perSecond, burst, at, allowed }) => {
    const budget = new ConnectBudget({ perSecond, burst });
    expect(at.map((t) => budget.take(t))).toEqual(allowed);
    expect(budget.taken).toBe(allowed.filter(Boolean).length);
  });

  it('says how long until the next connect, and never saves up more than the burst', () => {
    const budget = new ConnectBudget({ perSecond: 4, burst: 2 });
    expect(budget.waitMs(0)).toBe(0);
    budget.take(0);
    budget.take(0);
    expect(budget.waitMs(0)).toBe(250);
    expect(budget.waitMs(200)).toBe(50);
    expect(budget.available(249)).toBe(false);
    expect(budget.available(250)).toBe(true);
    // An hour of quiet buys two connects, not 14 400.
    expect([0, 1, 2].map(() => budget.take(3_600_000))).toEqual([true, true, false]);
    // A clock that steps back is not a refill.
    expect(budget.take(1000)).toBe(false);
  });

  it('over any second allows at most perSecond + burst connects, whatever is asked', () => {
    const budget = new ConnectBudget({ perSecond: 8, burst: 4 });
    const granted: number[] = [];
    for (let t = 0; t < 10_000; t += 1) if (budget.take(t)) granted.push(t);
    for (let start = 0; start <= 9000; start += 250) {
      const inSecond = granted.filter((t) => t >= start && t < start + 1000).length;
      expect(inSecond).toBeLessThanOrEqual(8 + 4);
    }
    expect(granted.length).toBeLessThanOrEqual(4 + 80);
    expect(granted.length).toBeGreaterThanOrEqual(80);
  });

  it('rejects nonsense', () => {
    expect(() => new ConnectBudget({ perSecond: 0 })).toThrow(RangeError);
    expect(() => new ConnectBudget({ perSecond: Number.NaN })).toThrow(RangeError);
    expect(() => new ConnectBudget({ perSecond: 1, burst: 0 })).toThrow(RangeError);
  });
});

describe('SessionGate with a connect budget', () => {
  const P = 'AA:BB:CC:DD:EE:50';
  const fake = (i: number) =>
    `C0:00:00:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`.toUpperCase();
  const gate = (over: Partial<ConstructorParameters<typeof SessionGate>[0]> = {}) =>
    new SessionGate({
      maxSessions: 4,
      spacingMs: 0,
      unprovenTurnMs: 1000,
      random: () => 0,
      connectBudget: { perSecond: 4, burst: 1 },
      ...over,
    });

  it('refuses a connect past the budget and counts the sighting as deferred', () => {
    const g = gate();
    expect(g.offer(fake(1), 0)).toEqual({ admit: fake(1) });
    expect(g.acquire(fake(1), 0)).toBeUndefined();
    expect(g.check(fake(2), 10)).toBe('connect-budget');
    expect(g.acquire(fake(2), 10)).toBe('connect-budget');
    expect(g.offer(fake(2), 10)).toBeUndefined();
    expect(g.offer(fake(2), 20)).toBeUndefined(); // counted once while it waits
    expect(g.stats()).toMatchObject({ budgetDeferred: 1, deferred: 1, waiting: 1, connects: 1 });
    expect(g.budgetWaitMs(20)).toBe(230);
    expect(g.next(100)).toBeUndefined();
    // The next connect goes to a waiting device, not to whoever advertises at that moment.
    expect(g.offer(P, 250)).toEqual({ admit: fake(2) });
    expect(g.acquire(fake(2), 250)).toBeUndefined();
    expect(g.stats()).toMatchObject({ waiting: 1, connects: 2 });
  });

  it('evicts nobody while the budget is spent (the slot could not be used)', () => {
    const g = gate({ maxSessions: 1, connectBudget: { perSecond: 0.5, burst: 1 } });
    g.acquire(fake(1), 0);
    // fake(1) has had its turn at 1000, but the next connect is allowed only at 2000.
    expect(g.offer(P, 1500)).toBeUndefined();
    expect(g.stats()).toMatchObject({ evicted: 0, active: 1, waiting: 1, closing: 0 });
    expect(g.offer(P, 2000)).toEqual({ admit: P, evict: fake(1) });
    expect(g.stats()).toMatchObject({ evicted: 1, closing: 1 });
  });

  it('serves a genuine phone among rotating fakes in proportion to the devices waiting', () => {
    // 32 fakes, each on a fresh address for one session; the phone advertises every 100 ms.
    let seed = 7;
    const random = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const g = gate({ random, connectBudget: { perSecond: 8, burst: 4 }, maxWaiting: 64 });
    let next = 0;
    const present = new Set<string>();
    for (let i = 0; i < 32; i++) present.add(fake(next++));
    let connects = 0;
    let phoneAt: number | undefined;
    for (let t = 0; t < 60_000 && phoneAt === undefined; t += 10) {
      for (const address of [...present, ...(t % 100 === 0 ? [P] : [])]) {
        const turn = g.offer(address, t);
        if (turn === undefined) continue;
        if (turn.evict !== undefined) g.release(turn.evict, t);
        if (g.acquire(turn.admit, t) !== undefined) continue;
        connects++;
        if (turn.admit === P) phoneAt = t;
        else {
          // garbage: the session ends at once and the address is used up
          g.release(turn.admit, t, 2000);
          present.delete(turn.admit);
          present.add(fake(next++));
        }
      }
    }
    expect(phoneAt).toBeDefined();
    // Never more connects than the budget lets through.
    expect(connects).toBeLessThanOrEqual(4 + Math.ceil(((phoneAt ?? 0) / 1000) * 8) + 1);
    expect(g.stats().holds).toBeLessThanOrEqual(4 + 8 * 2 + 1);
  });

  it('forgets expired holds, so rotating addresses do not pile up', () => {
    const g = gate({ connectBudget: { perSecond: 1000, burst: 4 }, spacingMs: 1000 });
    for (let i = 0; i < 5000; i++) {
      const t = i * 2;
      expect(g.acquire(fake(i), t)).toBeUndefined();
      g.release(fake(i), t, 2000);
    }
    // A hold lasts 2 s and one device ends every 2 ms: about 1000 are live at any time.
    expect(g.stats().holds).toBeLessThanOrEqual(1000 + 100);
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
