import { join } from 'node:path';
import { MonotonicFloorClock } from '../core/clock.js';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { readFileIfExists, writeFileAtomic } from './atomic.js';
import { decodeChecksummedJson, encodeChecksummedJson, looksChecksummed } from './checksummed.js';
import type { IntegrityFinding } from './integrity.js';
import { STATE_FILES } from './provision.js';

/**
 * The trusted clock with its floor persisted at start, every minute, and at stop, so a restart
 * (or a Pi booting with its clock in 1970) resumes from the last trusted time. The floor is
 * written to two checksummed files, <stateDir>/clock.json and clock.mirror.json; the higher
 * readable one wins, so a damaged or deleted file neither stops the agent nor sets time back.
 * Plain JSON `{"floor":N}` from before checksums is still read.
 *
 * A disk that stops answering (frozen, a hung card) must not pile up writes or hold the stop: one
 * write at a time (a persist asked for meanwhile waits for it, and one such wait stands for all),
 * and `close` gives up after `closeTimeoutMs` with a coded error instead of hanging.
 */
const PERSIST_EVERY_MS = 60_000;
/** How long `close` waits for the last write of the floor by default. */
export const CLOCK_CLOSE_TIMEOUT_MS = 2000;

export interface TrustedClockStore {
  readonly clock: MonotonicFloorClock;
  /** What was found wrong with the clock files at start, and what was done. */
  readonly findings: readonly IntegrityFinding[];
  /** A floor file existed before this start: the agent has run here before. */
  readonly existedBefore: boolean;
  persist(): Promise<void>;
  /**
   * Stops the periodic persist and writes the floor one last time; rejects with state_io when
   * that write has not finished within the close timeout (the disk is stuck; the write goes on).
   */
  close(): Promise<void>;
}

type FloorRead =
  | { readonly state: 'ok'; readonly floor: number }
  | { readonly state: 'missing' }
  | { readonly state: 'damaged'; readonly problem: string };

async function readFloor(path: string): Promise<FloorRead> {
  const bytes = await readFileIfExists(path);
  if (bytes === undefined) return { state: 'missing' };
  try {
    const floor = (decodeChecksummedJson(bytes, true) as { floor?: unknown } | null)?.floor;
    if (typeof floor !== 'number' || !Number.isFinite(floor) || floor < 0)
      throw new Error('floor must be a number');
    return { state: 'ok', floor };
  } catch (err) {
    return { state: 'damaged', problem: (err as Error).message };
  }
}

/** Reads both copies of the floor; says what is wrong with them (read-only: `state check`). */
export async function inspectTrustedClock(
  stateDir: string,
): Promise<{ floor: number | undefined; findings: IntegrityFinding[]; exists: boolean }> {
  const paths = [join(stateDir, STATE_FILES.clock), join(stateDir, STATE_FILES.clockMirror)];
  const reads = await Promise.all(paths.map(readFloor));
  const floors = reads.flatMap((r) => (r.state === 'ok' ? [r.floor] : []));
  const floor = floors.length > 0 ? Math.max(...floors) : undefined;
  const findings: IntegrityFinding[] = [];
  const anyExists = reads.some((r) => r.state !== 'missing');
  // A checksummed main copy was written beside a mirror: the mirror missing was removed. (A plain
  // JSON main copy is from before mirrors.)
  const mainBytes = await readFileIfExists(paths[0] ?? '');
  const hadMirror = mainBytes !== undefined && looksChecksummed(mainBytes);
  reads.forEach((r, i) => {
    const file = paths[i] ?? '';
    if (r.state === 'damaged' || (r.state === 'missing' && anyExists && (i === 0 || hadMirror))) {
      findings.push(
        floor === undefined
          ? {
              file,
              code: 'state_corrupt',
              problem: r.state === 'damaged' ? r.problem : 'missing',
              action:
                'the last trusted time is lost: the system clock is trusted as it is until a signed command moves it forward',
            }
          : {
              file,
              code: 'state_repaired',
              problem: r.state === 'damaged' ? r.problem : 'missing',
              action: 'the other copy is used and both are rewritten',
            },
      );
    }
  });
  return { floor, findings, exists: anyExists };
}

export async function openTrustedClock(
  stateDir: string,
  log: Logger,
  options: { readonly closeTimeoutMs?: number } = {},
): Promise<TrustedClockStore> {
  const paths = [join(stateDir, STATE_FILES.clock), join(stateDir, STATE_FILES.clockMirror)];
  const { floor, findings, exists } = await inspectTrustedClock(stateDir);
  for (const f of findings) {
    log[f.code === 'state_repaired' ? 'warn' : 'error'](
      { code: f.code, file: f.file, problem: f.problem },
      f.action,
    );
  }
  const clock = new MonotonicFloorClock(floor ?? 0);
  const writeFloor = async () => {
    const bytes = encodeChecksummedJson({ floor: clock.floor() });
    for (const path of paths) await writeFileAtomic(path, bytes);
  };
  let running: Promise<void> | undefined;
  let queued: Promise<void> | undefined;
  const start = (): Promise<void> => {
    const run = writeFloor().finally(() => {
      if (running === run) running = undefined;
    });
    running = run;
    return run;
  };
  // One write at a time; a persist asked for during a write runs once after it, with the floor
  // as it is then (so the last one asked for always writes the latest floor).
  const persist = (): Promise<void> => {
    if (queued !== undefined) return queued;
    if (running === undefined) return start();
    const next = running
      .catch(() => {})
      .then(() => {
        queued = undefined;
        return start();
      });
    queued = next;
    return next;
  };
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
    findings,
    existedBefore: exists,
    persist,
    close: async () => {
      clearInterval(timer);
      const timeoutMs = options.closeTimeoutMs ?? CLOCK_CLOSE_TIMEOUT_MS;
      let deadline: NodeJS.Timeout | undefined;
      const timedOut = new Promise<never>((_, reject) => {
        deadline = setTimeout(
          () =>
            reject(
              new AgentError(
                'state_io',
                `the trusted time could not be written within ${timeoutMs} ms (is the state disk stuck?)`,
                { file: paths[0], timeoutMs },
              ),
            ),
          timeoutMs,
        );
      });
      try {
        await Promise.race([persist(), timedOut]);
      } finally {
        clearTimeout(deadline);
      }
    },
  };
}
