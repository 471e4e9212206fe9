import { describe, expect, it } from 'vitest';
import { decodeChallenge } from '../../../src/ble/protocol/mode-p.js';
import { ChallengeBook } from '../../../src/ble/protocol/mode-p-session.js';
import { countingRandom } from './fixtures.js';

/** The per-connection challenges of mode P: issued per read, replaced, single use, deadline from the read. */

function book(over: { maxConnections?: number; usedNonces?: number } = {}) {
  return new ChallengeBook({
    vehicleId: 'VIN-1',
    windowMs: 1000,
    slowWindowMs: 30_000,
    randomBytes: countingRandom(),
    ...over,
  });
}

describe('challenge book', () => {
  it('issues a challenge naming the vehicle, the wall time and the window', () => {
    const b = book();
    const issued = b.issue('/dev/a', 500, 1_800_000_000_000);
    expect(decodeChallenge(issued.message)).toMatchObject({
      vehicleId: 'VIN-1',
      issuedAtMs: 1_800_000_000_000,
      windowMs: 1000,
    });
    expect(issued.readAt).toBe(500);
  });

  it('takes an answer once; the same nonce again is replay, on any connection', () => {
    const b = book();
    const { nonce } = b.issue('/dev/a', 0, 0);
    expect(b.take('/dev/a', nonce, 400, 'fast')).toMatchObject({ ok: true, elapsedMs: 400 });
    expect(b.take('/dev/a', nonce, 401, 'fast')).toEqual({ ok: false, code: 'replay' });
    expect(b.take('/dev/b', nonce, 401, 'fast')).toEqual({ ok: false, code: 'replay' });
  });

  it('a new read replaces the previous challenge of the connection, not of another', () => {
    const b = book();
    const first = b.issue('/dev/a', 0, 0);
    const other = b.issue('/dev/b', 0, 0);
    const second = b.issue('/dev/a', 10, 0);
    expect(b.take('/dev/a', first.nonce, 20, 'fast')).toEqual({ ok: false, code: 'no_challenge' });
    expect(b.take('/dev/a', second.nonce, 20, 'fast')).toMatchObject({ ok: true });
    expect(b.take('/dev/b', other.nonce, 20, 'fast')).toMatchObject({ ok: true });
  });

  it('an answer without a read, or with another connection’s nonce, is no_challenge', () => {
    const b = book();
    const issued = b.issue('/dev/a', 0, 0);
    expect(b.take('/dev/b', issued.nonce, 1, 'fast')).toEqual({ ok: false, code: 'no_challenge' });
    expect(b.take('/dev/c', new Uint8Array(32), 1, 'fast')).toEqual({ ok: false, code: 'no_challenge' });
  });

  it('counts the deadline from the read: late is challenge_expired and consumes the challenge', () => {
    const b = book();
    const issued = b.issue('/dev/a', 100, 0);
    expect(b.take('/dev/a', issued.nonce, 1100, 'fast')).toMatchObject({ ok: true, elapsedMs: 1000 });
    const late = b.issue('/dev/a', 2000, 0);
    expect(b.take('/dev/a', late.nonce, 3001, 'fast')).toMatchObject({
      ok: false,
      code: 'challenge_expired',
      elapsedMs: 1001,
    });
    expect(b.take('/dev/a', late.nonce, 3002, 'fast')).toEqual({ ok: false, code: 'replay' });
  });

  it('gives passkeys and enrollments the slow window', () => {
    const b = book();
    const issued = b.issue('/dev/a', 0, 0);
    expect(b.take('/dev/a', issued.nonce, 29_000, 'slow')).toMatchObject({ ok: true });
  });

  it('forgets a disconnected connection', () => {
    const b = book();
    const issued = b.issue('/dev/a', 0, 0);
    b.forget('/dev/a');
    expect(b.take('/dev/a', issued.nonce, 1, 'fast')).toEqual({ ok: false, code: 'no_challenge' });
    expect(b.connections).toBe(0);
  });

  it('a flood of reads from one connection keeps one challenge and leaves the others answerable', () => {
    const b = book({ maxConnections: 8 });
    const other = b.issue('/dev/b', 0, 0);
    let last = b.issue('/dev/a', 0, 0);
    for (let i = 0; i < 10_000; i++) last = b.issue('/dev/a', i, 0);
    expect(b.connections).toBe(2);
    expect(b.take('/dev/b', other.nonce, 10, 'fast')).toMatchObject({ ok: true });
    expect(b.take('/dev/a', last.nonce, 10_000, 'fast')).toMatchObject({ ok: true });
  });

  it('holds at most maxConnections challenges and usedNonces remembered nonces', () => {
    const b = book({ maxConnections: 4, usedNonces: 3 });
    for (let i = 0; i < 10; i++) b.issue(`/dev/${i}`, 0, 0);
    expect(b.connections).toBe(4);
    expect(b.current('/dev/0')).toBeUndefined();
    expect(b.current('/dev/9')).toBeDefined();
  });
});
