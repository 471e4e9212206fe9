import { describe, expect, it } from 'vitest';
import { MonotonicFloorClock, type TimeSource } from '../../../src/core/clock.js';

function fakeSource(wall: number) {
  const s = { wallMs: wall, mono: 1000 };
  const source: TimeSource = { wall: () => s.wallMs, monotonic: () => s.mono };
  return { s, source };
}

describe('MonotonicFloorClock', () => {
  it('never goes below the persisted floor, even if the system clock was set back', () => {
    const { s, source } = fakeSource(Date.UTC(2020, 0, 1));
    const floor = Date.UTC(2027, 0, 1);
    const clock = new MonotonicFloorClock(floor, source);
    expect(clock.now()).toBe(floor);
    expect(clock.trust()).toBe('behind');
    s.mono += 5000;
    expect(clock.now()).toBe(floor + 5000);
  });

  it('follows the system clock forward and ignores it going back while running', () => {
    const { s, source } = fakeSource(Date.UTC(2027, 0, 1));
    const clock = new MonotonicFloorClock(0, source);
    s.wallMs += 10_000;
    s.mono += 10_000;
    expect(clock.now()).toBe(Date.UTC(2027, 0, 1) + 10_000);
    expect(clock.trust()).toBe('trusted');
    s.wallMs -= 86_400_000; // someone sets the clock back a day
    s.mono += 1000;
    expect(clock.now()).toBe(Date.UTC(2027, 0, 1) + 11_000);
    expect(clock.trust()).toBe('behind');
  });

  it('advances only forwards', () => {
    const { source } = fakeSource(Date.UTC(2027, 0, 1));
    const clock = new MonotonicFloorClock(0, source);
    clock.advanceTo(Date.UTC(2026, 0, 1));
    expect(clock.now()).toBe(Date.UTC(2027, 0, 1));
    clock.advanceTo(Date.UTC(2028, 0, 1));
    expect(clock.now()).toBe(Date.UTC(2028, 0, 1));
  });
});
