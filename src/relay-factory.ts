import type { LockControl } from './agent/agent.js';
import { LockController } from './agent/lock-controller.js';
import type { Config } from './config/schema.js';
import type { Logger } from './core/logger.js';
import type { Health, LockState } from './core/types.js';
import type { RelayDriver } from './relay/types.js';
import type { WatchdogRelease } from './relay/watchdog.js';

/**
 * Builds the configured relay driver (by dynamic import, so gpioset handling or serialport load
 * only when configured), de-energises it at once, and puts the lock controller (with its max-on
 * watchdog) on top. Also installs the last-resort synchronous release on process exit.
 */
export interface RelayHandle {
  readonly lockController: LockControl;
  start(): Promise<void>;
  /** Stops the controller (all off) and releases the hardware. Never rejects. */
  close(): Promise<void>;
  status(): {
    driver: string;
    health: Health;
    timeline?: { channel: string; energised: boolean; at: string }[];
  };
  onLockChange(listener: (state: LockState, cause: string) => void): void;
  onWatchdog(listener: (channel: string) => void): void;
}

async function createDriver(config: Config, log: Logger): Promise<RelayDriver> {
  const { relay, lock } = config;
  const pulse = lock.wiring === 'pulse';
  switch (relay.driver) {
    case 'sim': {
      const { SimRelay } = await import('./relay/sim.js');
      return new SimRelay({ logger: log, channels: pulse ? ['unlock', 'lock'] : ['unlock'] });
    }
    case 'gpio': {
      const { GpioRelay } = await import('./relay/gpio.js');
      const line = (n: number, activeLow: boolean) => ({
        chip: relay.gpio.chip,
        line: n,
        activeLow,
        // With nothing holding the line (agent gone), the bias keeps the relay off.
        bias: activeLow ? ('pull-up' as const) : ('pull-down' as const),
      });
      return new GpioRelay({
        logger: log,
        gpiosetPath: relay.gpio.gpiosetPath,
        channels: pulse
          ? {
              unlock: line(relay.gpio.unlockLine, relay.gpio.unlockActiveLow),
              lock: line(relay.gpio.lockLine, relay.gpio.lockActiveLow),
            }
          : { unlock: line(relay.gpio.unlockLine, relay.gpio.unlockActiveLow) },
      });
    }
    case 'lcus': {
      const [{ LcusRelay }, { openSerialLink }] = await Promise.all([
        import('./relay/lcus.js'),
        import('./relay/serial-link.js'),
      ]);
      return new LcusRelay({
        logger: log,
        path: relay.lcus.path,
        baudRate: relay.lcus.baudRate,
        openLink: openSerialLink,
        channels: pulse
          ? { unlock: relay.lcus.unlockChannel, lock: relay.lcus.lockChannel }
          : { unlock: relay.lcus.unlockChannel },
      });
    }
  }
}

export async function createRelay(config: Config, log: Logger): Promise<RelayHandle> {
  const driver = await createDriver(config, log);
  const emergency = () => driver.allOffSync?.();
  process.once('exit', emergency);
  await driver.init();
  const controller = new LockController({
    relay: driver,
    config: config.lock,
    logger: log.child({ component: 'lock' }),
  });
  let closing: Promise<void> | undefined;
  return {
    lockController: controller,
    start: () => controller.start(),
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
    status: () => {
      const timeline =
        'timeline' in driver && typeof driver.timeline === 'function'
          ? (driver.timeline() as readonly { channel: string; energised: boolean; atMs: number }[])
              .slice(-20)
              .map((t) => ({
                channel: t.channel,
                energised: t.energised,
                at: new Date(t.atMs).toISOString(),
              }))
          : undefined;
      return timeline
        ? { driver: driver.kind, health: driver.health(), timeline }
        : { driver: driver.kind, health: driver.health() };
    },
    onLockChange: (listener) => {
      controller.onChange(listener);
    },
    onWatchdog: (listener) => {
      controller.onWatchdog((release: WatchdogRelease) => listener(release.channel));
    },
  };
}
