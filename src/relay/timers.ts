/** Cancels a scheduled callback; calling it again, or after the callback ran, does nothing. */
export type CancelTimer = () => void;

/**
 * Time and timers as a parameter, so the lock controller, the watchdog and the drivers' backoff
 * run on a manual clock in unit tests.
 */
export interface Timers {
  /** Monotonic milliseconds (only differences matter). */
  now(): number;
  schedule(delayMs: number, callback: () => void): CancelTimer;
}

export const systemTimers: Timers = {
  now: () => performance.now(),
  schedule(delayMs, callback) {
    const handle = setTimeout(callback, Math.max(0, delayMs));
    return () => clearTimeout(handle);
  },
};
