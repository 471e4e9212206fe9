import type { Logger } from '../core/logger.js';
import type { LockState } from '../core/types.js';
import {
  createLoopDelaySampler,
  describeReport,
  eventLoopCheck,
  type HealthCheck,
  type HealthReport,
  lockCheck,
  runHealthChecks,
  type StorageFigures,
  stateDirCheck,
  storageCheck,
} from './health-monitor.js';
import {
  createNotifyTransport,
  formatNotification,
  type NotifyTransport,
  watchdogPingIntervalMs,
} from './sd-notify.js';

/**
 * Supervision beside the agent: the health checks (health-monitor.ts), run on a timer, and the
 * systemd notifications that follow from them (sd-notify.ts): READY=1 once readers and relays are
 * up, WATCHDOG=1 every WatchdogSec/2 only while healthy, STOPPING=1 at shutdown. The unlock path
 * never waits on any of it. /healthz and /metrics read the same reports.
 */

export interface SupervisionDeps {
  readonly stateDir: string;
  readonly lock: { state(): LockState };
  /** Subscribes to lock state changes (RelayHandle.onLockChange). */
  readonly onLockChange: (listener: (state: LockState) => void) => void;
  /** lock.maxOnMs: a transition longer than this (plus slack) means a wedged controller. */
  readonly maxOnMs: number;
  /** The notify variables, taken out of process.env at start (takeNotifyEnvironment). */
  readonly notifyEnv: NodeJS.ProcessEnv;
  readonly log: Logger;
  readonly pid?: number;
  /** Default: from $NOTIFY_SOCKET (none when not run by systemd). */
  readonly transport?: NotifyTransport | undefined;
  /** Write figures of the state stores and the audit drops (main.ts); adds the storage check. */
  readonly storage?: () => StorageFigures;
  /** A store write running longer than this counts as stalled; default 5 s. */
  readonly storageStallMs?: number;
  /** Extra checks (state integrity; tests). */
  readonly extraChecks?: readonly HealthCheck[];
}

export interface Supervision {
  /** WATCHDOG=1 interval in ms, undefined when systemd's watchdog is off. */
  readonly watchdogPingMs: number | undefined;
  /** What sends the notifications (`socat`, `systemd-notify`), undefined when not under systemd. */
  readonly notifier: string | undefined;
  lastReport(): HealthReport | undefined;
  /** Runs the checks now (a run already under way is shared). */
  check(): Promise<HealthReport>;
  /** Readers and relays are up: READY=1, and the watchdog pings start. */
  ready(status: string): void;
  /** Shutdown began: STOPPING=1; no more pings. */
  stopping(): void;
  /** Ends timers and the notify helper. Never rejects. */
  close(): Promise<void>;
}

/** Free space below this in the state directory counts as "not writable". */
export const MIN_FREE_STATE_BYTES = 1024 * 1024;
/** Relay command time allowed on top of lock.maxOnMs before a transition counts as stuck. */
const TRANSITION_SLACK_MS = 5000;
/** Health checks run this often when systemd's watchdog is off (for /healthz and /metrics). */
const DEFAULT_CHECK_INTERVAL_MS = 5000;
const MAX_STALL_MS = 5000;
const DEFAULT_STORAGE_STALL_MS = 5000;

export function stallThresholdMs(pingMs: number | undefined): number {
  return pingMs === undefined ? MAX_STALL_MS : Math.min(MAX_STALL_MS, Math.max(50, Math.floor(pingMs / 2)));
}

export function startSupervision(deps: SupervisionDeps): Supervision {
  const { log } = deps;
  const pingMs = watchdogPingIntervalMs(deps.notifyEnv, deps.pid ?? process.pid);
  const transport =
    'transport' in deps ? deps.transport : createNotifyTransport({ notifyEnv: deps.notifyEnv, log });
  const sampler = createLoopDelaySampler();
  let lockRunning = true;
  let lockChangedAt = performance.now();
  deps.onLockChange(() => {
    lockChangedAt = performance.now();
  });
  const checks: HealthCheck[] = [
    eventLoopCheck(sampler, stallThresholdMs(pingMs)),
    lockCheck(
      { running: () => lockRunning, state: () => deps.lock.state(), changedAt: () => lockChangedAt },
      deps.maxOnMs + TRANSITION_SLACK_MS,
    ),
    stateDirCheck(deps.stateDir, MIN_FREE_STATE_BYTES),
    ...(deps.storage ? [storageCheck(deps.storage, deps.storageStallMs ?? DEFAULT_STORAGE_STALL_MS)] : []),
    ...(deps.extraChecks ?? []),
  ];
  const intervalMs = pingMs ?? DEFAULT_CHECK_INTERVAL_MS;
  const timeoutMs = Math.max(20, Math.min(2000, Math.floor(intervalMs / 2)));

  let last: HealthReport | undefined;
  let inFlight: Promise<HealthReport> | undefined;
  let pinging = false;
  let wasHealthy = true;
  let lastStatus = 'healthy';
  let closed = false;

  const check = (): Promise<HealthReport> => {
    inFlight ??= runHealthChecks(checks, { timeoutMs }).then((report) => {
      const withFigures = deps.storage ? { ...report, storage: deps.storage() } : report;
      last = withFigures;
      inFlight = undefined;
      return withFigures;
    });
    return inFlight;
  };

  const send = (fields: readonly (readonly [string, string])[]) =>
    transport?.send(formatNotification(fields));

  const tick = async () => {
    const report = await check();
    if (closed) return;
    const status = describeReport(report);
    if (report.healthy !== wasHealthy) {
      wasHealthy = report.healthy;
      if (report.healthy) log.info({ module: 'supervision' }, 'healthy again');
      else log.warn({ module: 'supervision', code: 'busy', checks: report.checks }, status);
    } else if (status !== lastStatus && report.healthy) {
      // Degraded (storage): said once per change, with the figures; the pings go on.
      if (report.degraded === true)
        log.warn(
          { module: 'supervision', code: 'state_io', checks: report.checks, storage: report.storage },
          status,
        );
      else log.info({ module: 'supervision' }, 'storage healthy again');
    }
    if (status !== lastStatus) {
      lastStatus = status;
      if (pinging) send([['STATUS', status]]);
    }
    if (pinging && report.healthy) send([['WATCHDOG', '1']]);
  };

  const timer = setInterval(() => {
    void tick();
  }, intervalMs);
  timer.unref();
  void tick();

  return {
    watchdogPingMs: pingMs,
    notifier: transport?.kind,
    lastReport: () => last,
    check,
    ready: (status) => {
      if (closed) return;
      // Start-up work (module loading, keyring decode) is not a stall of the running loop.
      sampler.takeMaxMs();
      send([
        ['READY', '1'],
        ['STATUS', status],
      ]);
      pinging = pingMs !== undefined;
    },
    stopping: () => {
      lockRunning = false;
      if (!pinging && transport === undefined) return;
      pinging = false;
      send([
        ['STOPPING', '1'],
        ['STATUS', 'stopping: relays de-energising'],
      ]);
    },
    close: async () => {
      if (closed) return;
      closed = true;
      pinging = false;
      clearInterval(timer);
      sampler.close();
      await transport?.close();
    },
  };
}
