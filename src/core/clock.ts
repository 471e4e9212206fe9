/**
 * Wall time that never moves backwards past the last time it trusted. Setting the system clock
 * back (or a Pi booting with no RTC and no network) cannot revive an expired guest key.
 *
 * now() = max(system time, floor + monotonic time elapsed since the floor was taken).
 * The floor is persisted by the caller (see `floor()`), so it survives restarts.
 */
export interface Clock {
  /** Trusted wall time, ms since the epoch. */
  now(): number;
  /** Monotonic ms for durations and timers. */
  monotonic(): number;
}

export type ClockTrust = 'trusted' | 'behind';

export interface TimeSource {
  wall(): number;
  monotonic(): number;
}

export const systemTime: TimeSource = {
  wall: () => Date.now(),
  monotonic: () => performance.now(),
};

export class MonotonicFloorClock implements Clock {
  private floorWall: number;
  private floorMono: number;
  private readonly source: TimeSource;
  /** System time more than this far behind the floor means the system clock was set back. */
  private readonly toleranceMs: number;

  constructor(persistedFloor: number, source: TimeSource = systemTime, toleranceMs = 2000) {
    this.source = source;
    this.toleranceMs = toleranceMs;
    this.floorWall = Math.max(persistedFloor, source.wall());
    this.floorMono = source.monotonic();
  }

  now(): number {
    const projected = this.floorWall + (this.source.monotonic() - this.floorMono);
    return Math.max(this.source.wall(), projected);
  }

  monotonic(): number {
    return this.source.monotonic();
  }

  /** The value to persist: the current trusted time. */
  floor(): number {
    return this.now();
  }

  /** Move the floor forward (e.g. from a signed command's iat); never backwards. */
  advanceTo(wallMs: number): void {
    if (wallMs > this.now()) {
      this.floorWall = wallMs;
      this.floorMono = this.source.monotonic();
    }
  }

  trust(): ClockTrust {
    return this.source.wall() + this.toleranceMs < this.now() ? 'behind' : 'trusted';
  }
}
