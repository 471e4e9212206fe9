import { constants } from 'node:fs';
import { access, statfs } from 'node:fs/promises';
import type { LockState } from '../core/types.js';
import type { WriteHealth } from '../store/group-commit.js';

/**
 * "Healthy" for the systemd watchdog and /healthz: the event loop is not stalled and the lock
 * controller runs and is not stuck between states. A reader or the cloud being down is NOT
 * unhealthy here: they recover by themselves, and a restart would not bring a missing PN532 or
 * broker back, only interrupt the other readers.
 *
 * Storage is the same: a full, read-only, frozen or failing state disk is reported ("degraded":
 * STATUS=, /healthz, /metrics) but does not stop the watchdog pings. A restart would not free the
 * disk, and an agent that cannot write its lock file or trusted time does not start at all, where
 * the running one keeps opening for keys that need no disk (docs/storage.md).
 */

export interface CheckResult {
  readonly ok: boolean;
  readonly detail?: string;
  /** A failure that is reported (degraded) but leaves the agent healthy for the watchdog. */
  readonly advisory?: true;
}

export interface HealthCheck {
  readonly name: string;
  /** Its failures, a throw or a timeout included, are advisory (see CheckResult). */
  readonly advisory?: true;
  run(): CheckResult | Promise<CheckResult>;
}

export interface HealthReport {
  readonly healthy: boolean;
  /** An advisory check fails (storage): reported, but the watchdog keeps pinging. */
  readonly degraded?: boolean;
  /** Wall time of the run, ISO 8601. */
  readonly at: string;
  readonly checks: Readonly<Record<string, CheckResult>>;
  /** Per-store write figures at the time of the run (for /metrics), when storage is watched. */
  readonly storage?: StorageFigures;
}

/** Write health of each state store, and audit events lost to the disk. */
export interface StorageFigures {
  readonly stores: readonly (WriteHealth & { readonly name: string })[];
  readonly audit?: {
    /** Events lost and not yet recorded by an `audit.dropped` record. */
    readonly dropped: number;
    readonly since?: number;
    /** Events lost since start. */
    readonly total: number;
    readonly inFlight: number;
  };
  /** Audit rotation against the cloud outbox (AuditLog.rotationStats). */
  readonly auditRetention?: {
    /** Files kept past keepFiles for records the outbox has not sent; at most maxFiles in all. */
    readonly retainedFiles: number;
    readonly keepFiles: number;
    readonly maxFiles: number;
    /** Unsent records deleted at the cap (since the log began). */
    readonly unsentRecords: number;
    /** Records the outbox needs now that are gone. */
    readonly unsentMissing: number;
  };
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
      const advised = (r: CheckResult): CheckResult =>
        check.advisory === true && !r.ok ? { ...r, advisory: true } : r;
      try {
        const result = await Promise.race([Promise.resolve().then(() => check.run()), timeout]);
        return [check.name, advised(result)];
      } catch (err) {
        return [check.name, advised(fail(err instanceof Error ? err.message : String(err)))];
      } finally {
        clearTimeout(timer);
      }
    }),
  );
  return {
    healthy: results.every(([, r]) => r.ok || r.advisory === true),
    degraded: results.some(([, r]) => !r.ok && r.advisory === true),
    at: new Date((options.wallNow ?? Date.now)()).toISOString(),
    checks: Object.fromEntries(results),
  };
}

/** The one-line summary systemd shows in `systemctl status` (STATUS=). */
export function describeReport(report: HealthReport): string {
  const failing = (advisory: boolean) =>
    Object.entries(report.checks)
      .filter(([, r]) => !r.ok && (r.advisory === true) === advisory)
      .map(([name, r]) => `${name}: ${r.detail ?? 'failed'}`)
      .join('; ');
  if (!report.healthy) return `unhealthy: ${failing(false)}`;
  return report.degraded === true ? `degraded: ${failing(true)}` : 'healthy';
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

function degraded(detail: string): CheckResult {
  return { ok: false, detail, advisory: true };
}

export function stateDirVerdict(input: {
  readonly accessError?: string;
  readonly freeBytes?: number;
  readonly minFreeBytes: number;
}): CheckResult {
  if (input.accessError !== undefined) return degraded(`state directory not writable: ${input.accessError}`);
  if (input.freeBytes !== undefined && input.freeBytes < input.minFreeBytes) {
    return degraded(`state directory has ${input.freeBytes} bytes free (need ${input.minFreeBytes})`);
  }
  return ok;
}

/**
 * Writable without writing: access(W_OK) fails on a read-only remount (EROFS) or a missing
 * directory, statfs shows a full disk. No probe file, so the check costs the SD card nothing.
 */
export function stateDirCheck(dir: string, minFreeBytes: number): HealthCheck {
  return oneProbeAtATime({
    name: 'state',
    advisory: true,
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
  });
}

/**
 * A check that touches the disk, run at most once at a time: on a disk that does not answer, a
 * probe every few seconds would each hold a thread of libuv's pool (the serial readers' reads
 * need them), so while one is out the check fails saying so instead of starting another.
 */
export function oneProbeAtATime(
  check: HealthCheck,
  now: () => number = () => performance.now(),
): HealthCheck {
  let probing: { since: number } | undefined;
  return {
    ...check,
    run: () => {
      if (probing !== undefined) {
        return {
          ok: false,
          detail: `the last probe has not answered for ${Math.round(now() - probing.since)} ms`,
          ...(check.advisory ? { advisory: true as const } : {}),
        };
      }
      const started = { since: now() };
      probing = started;
      const clear = () => {
        if (probing === started) probing = undefined;
      };
      const done = Promise.resolve().then(() => check.run());
      done.then(clear, clear);
      return done;
    },
  };
}

// ── storage writes ───────────────────────────────────────────────────────────────

/**
 * Real write failures, not just permissions: a store whose last write failed (until one
 * succeeds), one that stopped for good (latched: restart needed), a write running longer than
 * `stallMs` (a frozen or hung disk), and audit events lost. Advisory (see the file comment).
 */
export function storageVerdict(figures: StorageFigures, stallMs: number): CheckResult {
  const problems: string[] = [];
  const since = (ms: number | undefined) => (ms === undefined ? '' : ` since ${new Date(ms).toISOString()}`);
  for (const store of figures.stores) {
    const error = store.lastError?.code ?? 'error';
    if (store.state === 'latched')
      problems.push(`${store.name}: stopped after ${error} (restart to recover)`);
    else if (store.failingSince !== undefined)
      problems.push(`${store.name}: writes failing (${error})${since(store.failingSince)}`);
    else if (store.busyMs !== undefined && store.busyMs > stallMs)
      problems.push(`${store.name}: a write has not finished for ${Math.round(store.busyMs)} ms`);
  }
  const audit = figures.audit;
  if (audit !== undefined && audit.dropped > 0) {
    problems.push(`audit: ${audit.dropped} event(s) not recorded${since(audit.since)}`);
  }
  const retention = figures.auditRetention;
  if (retention !== undefined && retention.unsentMissing > 0) {
    problems.push(
      `audit: ${retention.unsentMissing} record(s) the cloud has not received were deleted at the file cap (audit.maxFiles ${retention.maxFiles}; audit_retention_exceeded)`,
    );
  } else if (
    retention !== undefined &&
    retention.retainedFiles > 0 &&
    retention.keepFiles + retention.retainedFiles >= retention.maxFiles
  ) {
    problems.push(
      `audit: at its file cap (audit.maxFiles ${retention.maxFiles}) keeping records for the cloud; the next rotation deletes some it has not received`,
    );
  }
  return problems.length === 0 ? ok : degraded(problems.join('; '));
}

export function storageCheck(figures: () => StorageFigures, stallMs: number): HealthCheck {
  return { name: 'storage', advisory: true, run: () => storageVerdict(figures(), stallMs) };
}
