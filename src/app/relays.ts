import type { LockControl } from '../agent/agent.js';
import { LockController } from '../agent/lock-controller.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../core/logger.js';
import type { Health, LockState } from '../core/types.js';
import type { GuardSpec } from '../relay/guard-protocol.js';
import type { WatchdogRelease } from '../relay/watchdog.js';

/**
 * Starts the relay guard, a process of its own that owns the configured outputs and times them
 * (src/relay/guarded.ts; gpioset handling or serialport load only there, and only when
 * configured), with every channel off; then puts the lock controller (with its in-process max-on
 * watchdog, the second layer) on top. Also installs the last-resort release on process exit.
 */
export interface RelayHandle {
  readonly lockController: LockControl;
  /** Waits for the relay guard to run (every relay off), then starts the lock controller. Rejects with relay_failed. */
  start(): Promise<void>;
  /** Stops the controller (all off) and releases the hardware. Never rejects. */
  close(): Promise<void>;
  status(): {
    driver: string;
    health: Health;
    timeline?: { channel: string; energised: boolean; at: string }[];
    guard?: { pid: number | undefined; restarts: number };
  };
  onLockChange(listener: (state: LockState, cause: string) => void): void;
  /** A relay released without being asked: by the in-process watchdog or by the relay guard. */
  onWatchdog(listener: (channel: string, release: WatchdogRelease) => void): void;
}

/** What the relay guard drives, from the configuration. */
function guardSpec(config: Config): GuardSpec {
  const { relay, lock, log } = config;
  const pulse = lock.wiring === 'pulse';
  const logLevel =
    log.level === 'trace' || log.level === 'debug'
      ? 'debug'
      : log.level === 'info' || log.level === 'warn'
        ? log.level
        : 'error';
  const base = { maxOnMs: lock.maxOnMs, logLevel } as const;
  switch (relay.driver) {
    case 'sim':
      return { ...base, driver: { kind: 'sim', channels: pulse ? ['unlock', 'lock'] : ['unlock'] } };
    case 'gpio': {
      const line = (n: number, activeLow: boolean) => ({
        chip: relay.gpio.chip,
        line: n,
        activeLow,
        // With nothing holding the line (agent and guard gone), the bias keeps the relay off.
        bias: activeLow ? ('pull-up' as const) : ('pull-down' as const),
      });
      return {
        ...base,
        driver: {
          kind: 'gpio',
          gpiosetPath: relay.gpio.gpiosetPath,
          consumer: 'vehicle-agent',
          interactive: true,
          channels: pulse
            ? {
                unlock: line(relay.gpio.unlockLine, relay.gpio.unlockActiveLow),
                lock: line(relay.gpio.lockLine, relay.gpio.lockActiveLow),
              }
            : { unlock: line(relay.gpio.unlockLine, relay.gpio.unlockActiveLow) },
        },
      };
    }
    case 'lcus':
      return {
        ...base,
        driver: {
          kind: 'lcus',
          path: relay.lcus.path,
          baudRate: relay.lcus.baudRate,
          channels: pulse
            ? { unlock: relay.lcus.unlockChannel, lock: relay.lcus.lockChannel }
            : { unlock: relay.lcus.unlockChannel },
        },
      };
  }
}

export interface CreateRelayOptions {
  /** Environment of the relay guard and what it runs (gpioset on its PATH). Default: this process's. */
  readonly env?: NodeJS.ProcessEnv;
}

export async function createRelay(
  config: Config,
  log: Logger,
  options: CreateRelayOptions = {},
): Promise<RelayHandle> {
  const { GuardedRelay } = await import('../relay/guarded.js');
  const driver = new GuardedRelay({
    spec: guardSpec(config),
    logger: log,
    ...(options.env !== undefined ? { env: options.env } : {}),
  });
  const emergency = () => driver.allOffSync();
  process.once('exit', emergency);
  // The guard starts now and switches every relay off as soon as it runs, while the agent opens
  // its state and readers; start() waits for it, and fails as it fails.
  const ready = driver.init();
  ready.catch(() => {});
  const controller = new LockController({
    relay: driver,
    config: config.lock,
    logger: log.child({ component: 'lock' }),
  });
  let closing: Promise<void> | undefined;
  return {
    lockController: controller,
    start: async () => {
      await ready;
      await controller.start();
    },
    close: () => {
      closing ??= (async () => {
        await controller
          .stop()
          .catch((err: unknown) => log.error({ code: 'relay_failed', err: String(err) }, 'lock stop failed'));
        await driver.close();
        process.off('exit', emergency);
      })();
      return closing;
    },
    status: () => ({
      driver: driver.kind,
      health: driver.health(),
      timeline: driver
        .timeline()
        .slice(-20)
        .map((t) => ({ channel: t.channel, energised: t.energised, at: new Date(t.atMs).toISOString() })),
      guard: driver.guardStatus(),
    }),
    onLockChange: (listener) => {
      controller.onChange(listener);
    },
    onWatchdog: (listener) => {
      controller.onWatchdog((release: WatchdogRelease) => listener(release.channel, release));
    },
  };
}
