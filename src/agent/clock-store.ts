import { join } from 'node:path';
import { MonotonicFloorClock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import { readJsonFileIfExists, writeFileAtomic } from '../store/atomic.js';
import { STATE_FILES } from './provision.js';

/**
 * The trusted clock with its floor persisted in <stateDir>/clock.json: at start, every minute, and
 * at stop, so a restart (or a Pi booting with its clock in 1970) resumes from the last trusted time.
 */
const PERSIST_EVERY_MS = 60_000;

export interface TrustedClockStore {
  readonly clock: MonotonicFloorClock;
  persist(): Promise<void>;
  /** Stops the periodic persist and writes the floor one last time. */
  close(): Promise<void>;
}

export async function openTrustedClock(stateDir: string, log: Logger): Promise<TrustedClockStore> {
  const path = join(stateDir, STATE_FILES.clock);
  const file = await readJsonFileIfExists<{ floor: number }>(path, {
    parse: (v) => {
      const floor = (v as { floor?: unknown } | null)?.floor;
      if (typeof floor !== 'number' || !Number.isFinite(floor)) throw new Error('floor must be a number');
      return { floor };
    },
  });
  const clock = new MonotonicFloorClock(file?.floor ?? 0);
  const persist = () => writeFileAtomic(path, JSON.stringify({ floor: clock.floor() }));
  await persist();
  if (clock.trust() === 'behind') {
    log.warn(
      { code: 'expired', now: new Date(clock.now()).toISOString() },
      'system clock is behind the last trusted time; using the trusted time',
    );
  }
  const timer = setInterval(() => {
    persist().catch((err: unknown) =>
      log.error({ code: 'state_io', err: String(err) }, 'cannot persist the trusted time'),
    );
  }, PERSIST_EVERY_MS);
  timer.unref();
  return {
    clock,
    persist,
    close: async () => {
      clearInterval(timer);
      await persist();
    },
  };
}
