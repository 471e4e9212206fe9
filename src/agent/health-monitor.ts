import { constants } from 'node:fs';
import { access, statfs } from 'node:fs/promises';
import type { LockState } from '../core/types.js';

/**
 * "Healthy" for the systemd watchdog and /healthz: the event loop is not stalled, the lock
 * controller runs and is not stuck between states, and the state directory can be written.
 * A reader or the cloud being down is NOT unhealthy here: they recover by themselves, and a
 * restart would not bring a missing PN532 or broker back, only interrupt the other readers.
 */

export interface CheckResult {
  readonly ok: boolean;
  readonly detail?: string;
}

export interface HealthCheck {
  readonly name: string;
  run(): CheckResult | Promise<CheckResult>;
}

export interface HealthReport {
  readonly healthy: boolean;
  /** Wall time of the run, ISO 8601. */
  readonly at: string;
  readonly checks: Readonly<Record<string, CheckResult>>;
}

const ok: CheckResult = { ok: true };

function fail(detail: string): CheckResult {
  return { ok: false, detail };
}

/** Runs every check at once; a check that throws or does not answer within timeoutMs fails. */
export async function runHealthChecks(
  checks: readonly HealthCheck[],
  options: { readonly timeoutMs: number; readonly wallNow?: () => number },
): Promise<HealthReport> {
  const results = await Promise.all(
    checks.map(async (check): Promise<[string, CheckResult]> => {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<CheckResult>((resolve) => {
        timer = setTimeout(
          () => resolve(fail(`no answer within ${options.timeoutMs} ms`)),
          options.timeoutMs,
        );
      });
      try {
        const result = await Promise.race([Promise.resolve().then(() => check.run()), timeout]);
        return [check.name, result];
      } catch (err) {
        return [check.name, fail(err instanceof Error ? err.message : String(err))];
      } finally {
        clearTimeout(timer);
      }
    }),
  );
  return {
    healthy: results.every(([, r]) => r.ok),
    at: new Date((options.wallNow ?? Date.now)()).toISOString(),
    checks: Object.fromEntries(results),
  };
}

/** The one-line summary systemd shows in `systemctl status` (STATUS=). */
export function describeReport(report: HealthReport): string {
  if (report.healthy) return 'healthy';
  const failing = Object.entries(report.checks)
    .filter(([, r]) => !r.ok)
    .map(([name, r]) => `${name}: ${r.detail ?? 'failed'}`);
  return `unhealthy: ${failing.join('; ')}`;
}

// ── event loop ───────────────────────────────────────────────────────────────────

export function eventLoopVerdict(maxDelayMs: number, thresholdMs: number): CheckResult {
  return maxDelayMs > thresholdMs
    ? fail(`event loop stalled ${Math.round(maxDelayMs)} ms (limit ${thresholdMs} ms)`)
    : ok;
}

/** Longest event-loop delay since the previous read. */
export interface LoopDelaySampler {
  takeMaxMs(): number;
  close(): void;
}

export function createLoopDelaySampler(resolutionMs = 20): LoopDelaySampler {
  // A drift timer, not perf_hooks' histogram: the histogram drops the first sample after every
  // reset(), so a stall right after a read went unseen (one run in three in the notify test).
  let last = performance.now();
  let maxMs = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    maxMs = Math.max(maxMs, now - last - resolutionMs);
    last = now;
  }, resolutionMs);
  timer.unref();
  return {
    takeMaxMs: () => {
      // The gap still open counts too: a read right after a stall sees it at once.
      const now = performance.now();
      const taken = Math.max(0, maxMs, now - last - resolutionMs);
      maxMs = 0;
      last = now;
      return taken;
    },
    close: () => clearInterval(timer),
  };
}

export function eventLoopCheck(sampler: LoopDelaySampler, thresholdMs: number): HealthCheck {
  return { name: 'eventLoop', run: () => eventLoopVerdict(sampler.takeMaxMs(), thresholdMs) };
}

// ── lock controller ──────────────────────────────────────────────────────────────

export interface LockProbe {
  /** True between the controller's start and the beginning of shutdown. */
  running(): boolean;
  state(): LockState;
  /** Monotonic ms of the last state change. */
  changedAt(): number;
}

/**
 * A transition (unlocking, locking) ends within a relay command plus at most maxOnMs, when the
 * relay watchdog cuts it; one that lasts longer means the controller is wedged.
 */
export function lockVerdict(input: {
  readonly running: boolean;
  readonly state: LockState;
  readonly changedAt: number;
  readonly now: number;
  readonly maxTransitionMs: number;
}): CheckResult {
  if (!input.running) return fail('lock controller not running');
  if (input.state === 'unlocking' || input.state === 'locking') {
    const stuckMs = input.now - input.changedAt;
    if (stuckMs > input.maxTransitionMs) {
      return fail(`lock controller stuck in ${input.state} for ${Math.round(stuckMs)} ms`);
    }
  }
  return ok;
}

export function lockCheck(
  probe: LockProbe,
  maxTransitionMs: number,
  now: () => number = () => performance.now(),
): HealthCheck {
  return {
    name: 'lock',
    run: () =>
      lockVerdict({
        running: probe.running(),
        state: probe.state(),
        changedAt: probe.changedAt(),
        now: now(),
        maxTransitionMs,
      }),
  };
}

// ── state directory ──────────────────────────────────────────────────────────────

export function stateDirVerdict(input: {
  readonly accessError?: string;
  readonly freeBytes?: number;
  readonly minFreeBytes: number;
}): CheckResult {
  if (input.accessError !== undefined) return fail(`state directory not writable: ${input.accessError}`);
  if (input.freeBytes !== undefined && input.freeBytes < input.minFreeBytes) {
    return fail(`state directory has ${input.freeBytes} bytes free (need ${input.minFreeBytes})`);
  }
  return ok;
}

/**
 * Writable without writing: access(W_OK) fails on a read-only remount (EROFS) or a missing
 * directory, statfs shows a full disk. No probe file, so the check costs the SD card nothing.
 */
export function stateDirCheck(dir: string, minFreeBytes: number): HealthCheck {
  return {
    name: 'state',
    run: async () => {
      try {
        await access(dir, constants.W_OK);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? 'error';
        return stateDirVerdict({ accessError: code, minFreeBytes });
      }
      const fs = await statfs(dir);
      return stateDirVerdict({ freeBytes: fs.bavail * fs.bsize, minFreeBytes });
    },
  };
}
