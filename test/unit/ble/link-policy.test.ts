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

describe('Backoff', () => {
  it('doubles up to the maximum and resets', () => {
    const backoff = new Backoff(100, 500);
    expect([backoff.next(), backoff.next(), backoff.next(), backoff.next()]).toEqual([100, 200, 400, 500]);
    backoff.reset();
    expect(backoff.next()).toBe(100);
  });
});
