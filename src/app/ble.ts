import type { CredentialLookup } from '../access/credential-lookup.js';
import type { CredentialReader, EnrollmentHost, ReaderContext } from '../agent/reader.js';
import { EnrollmentDesk } from '../ble/enrollment.js';
import { KEY_TO_VEHICLE_UUID, SERVICE_UUID, VEHICLE_TO_KEY_UUID } from '../ble/protocol/constants.js';
import { BleReader } from '../ble/reader.js';
import type { Config } from '../config/schema.js';
import type { Clock } from '../core/clock.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Health } from '../core/types.js';
import { bindHandler, MAX_ENROLL_WINDOW_MS } from '../host/control-api.js';
import type { ControlHandler } from '../host/control-server.js';
import type { BleSimEnvironment, SimPhones } from '../sim/ble-sim.js';
import {
  builtInPhoneKeyService,
  PeripheralReader,
  type PhoneKeyServiceFactory,
  simCentralHandlers,
} from './ble-peripheral.js';

/** The answer of a desk's status or cancel when no enrollment is open. */
const NO_ENROLLMENT = { state: 'none' } as const;

/**
 * Builds the BLE phone-key reader for the composition root (src/app/start.ts), by dynamic import so
 * node-ble loads only here: the link (node-ble on the system bus, or in sim mode on a private
 * dbus-daemon with the BlueZ stand-in), the reader, the enrollment desk, and their control
 * commands. When sim mode cannot start (no dbus-daemon), the reader reports itself down and the
 * rest of the agent works.
 */

export interface BleSetupDeps extends EnrollmentHost {
  readonly config: Config;
  readonly vehicleId: string;
  readonly keyring: CredentialLookup;
  readonly clock: Clock;
  readonly log: Logger;
  /** The phone-key service of the peripheral role; default builtInPhoneKeyService (src/app/ble-peripheral.ts). */
  readonly phoneKeyService?: PhoneKeyServiceFactory;
  /** The vehicle key's SubjectPublicKeyInfo DER (the phone-key page pins it). */
  readonly vehicleSpki: Uint8Array;
  /** The status page's URL once it listens (passkeys from its origin are accepted). */
  readonly statusPageUrl?: () => string | undefined;
}

export interface BleSetup {
  /** ble0 (the central) and ble-peripheral, as ble.mode asks. */
  readonly readers: readonly CredentialReader[];
  /** Control commands: ble.status, enroll.*, and in sim mode sim.phone.approach and sim.ble.*. */
  readonly handlers: ReadonlyMap<string, ControlHandler>;
  readonly mode: 'sim' | 'bluez';
  /** The phone enrollment desk (the NFC reader's owner FIDO approval reaches it). */
  readonly desk: EnrollmentDesk;
  /** Ends what the setup started beside the reader (sim: stand-in and dbus-daemon). After reader.stop(). */
  stop(): Promise<void>;
}

export function bleMode(config: Config): 'sim' | 'bluez' {
  const { driver } = config.ble;
  if (driver === 'auto') return config.relay.driver === 'sim' ? 'sim' : 'bluez';
  return driver;
}

export async function setupBle(deps: BleSetupDeps): Promise<BleSetup> {
  const { config, log } = deps;
  const ble = config.ble;
  const mode = bleMode(config);
  const handlers = new Map<string, ControlHandler>();

  const desk = new EnrollmentDesk({
    vehicleId: deps.vehicleId,
    clock: deps.clock,
    keyring: deps.keyring,
    signOp: deps.signOp,
    addOps: (jws) => deps.agent().addKeyringOps(jws, 'enroll.ble'),
    audit: (event) => deps.agent().audit(event),
    log: log.child({ module: 'ble-enrollment' }),
    windowMs: Math.min(ble.enrollWindowMs, MAX_ENROLL_WINDOW_MS),
    maxWindowMs: MAX_ENROLL_WINDOW_MS,
  });
  handlers.set(
    ...bindHandler('enroll.open', ({ credential, windowMs }) =>
      desk.open(credential, windowMs ?? Math.min(ble.enrollWindowMs, MAX_ENROLL_WINDOW_MS)),
    ),
  );
  handlers.set(...bindHandler('enroll.status', () => desk.status() ?? NO_ENROLLMENT));
  handlers.set(...bindHandler('enroll.cancel', () => desk.cancel() ?? NO_ENROLLMENT));

  // One private bus and stand-in in sim mode, shared by the central and the peripheral.
  let simEnv: Promise<BleSimEnvironment> | undefined;
  const simEnvironment = (): Promise<BleSimEnvironment> => {
    simEnv ??= (async () => {
      const { startBleSim } = await import('../sim/ble-sim.js');
      try {
        return await startBleSim(log);
      } catch (err) {
        const e = toAgentError(err, 'reader_error');
        throw new AgentError(
          'reader_error',
          `sim mode needs dbus-daemon (apt-get install dbus): ${e.message}`,
        );
      }
    })();
    return simEnv;
  };
  const phoneKeyService = deps.phoneKeyService ?? builtInPhoneKeyService;
  const roles = {
    central: ble.mode !== 'peripheral',
    peripheral: ble.mode !== 'central',
  };

  // Everything below runs in the background once the agent starts the reader: node-ble, dbus-next,
  // the stand-in and noble take a few hundred ms to load on a Pi, and the agent's `ready` and its
  // other readers do not wait for them (nor for a dbus-daemon and BlueZ round trips).
  const reader = new BackgroundBleReader('ble0', mode, async () => {
    const [{ BleLink }, sim] = await Promise.all([
      import('../ble/link.js'),
      mode === 'sim' ? import('../sim/ble-sim.js') : Promise.resolve(undefined),
    ]);
    const env = sim === undefined ? undefined : await simEnvironment();
    const link = new BleLink({
      serviceUuid: SERVICE_UUID,
      writeUuid: VEHICLE_TO_KEY_UUID,
      notifyUuid: KEY_TO_VEHICLE_UUID,
      logger: log,
      ...(env === undefined ? {} : { busAddress: env.busAddress }),
      ...(ble.adapter === undefined ? {} : { adapter: ble.adapter }),
      rssiThreshold: ble.rssiThreshold,
      maxSessions: ble.maxSessions,
      unprovenTurnMs: ble.unprovenTurnMs,
      unprovenDeadlineMs: ble.unprovenDeadlineMs,
      maxWaiting: ble.maxWaiting,
      maxConnectsPerSecond: ble.maxConnectsPerSecond,
      maxTrackedDevices: ble.maxTrackedDevices,
      connectTimeoutMs: ble.connectTimeoutMs,
      servicesTimeoutMs: ble.servicesTimeoutMs,
      gattTimeoutMs: ble.gattTimeoutMs,
      gattAttempts: ble.gattAttempts,
      // Spacing after any session: the denial cooldown is asked explicitly, so keep this short.
      sessionSpacingMs: Math.min(ble.denialCooldownMs, 1000),
    });
    const inner = new BleReader({
      id: 'ble0',
      link,
      answerWindowMs: config.policy.bleAnswerDeadlineMs,
      lateGraceMs: ble.lateGraceMs,
      grantCooldownMs: ble.grantCooldownMs,
      denialCooldownMs: ble.denialCooldownMs,
      enrollment: desk,
    });
    const phones =
      env !== undefined && sim !== undefined
        ? new sim.SimPhones(env.standIn, inner, log.child({ module: 'sim-phone' }))
        : undefined;
    return { reader: inner, env, phones };
  });
  reader.onFailure((err) =>
    log.error({ module: 'ble', code: err.code, err: err.message }, 'BLE reader not started; BLE is down'),
  );

  const peripheral = new PeripheralReader({
    service: phoneKeyService,
    desk,
    vehicleSpki: deps.vehicleSpki,
    audit: (event) => deps.agent().audit(event),
    ...(deps.statusPageUrl === undefined ? {} : { statusPageUrl: deps.statusPageUrl }),
    config,
    log: log.child({ module: 'ble-peripheral' }),
    busAddress: async () => (mode === 'sim' ? (await simEnvironment()).busAddress : undefined),
  });

  handlers.set(
    ...bindHandler('ble.status', () => {
      const up = reader.current();
      return {
        mode,
        health: reader.health(),
        ...(up === undefined ? {} : { stats: up.reader.stats() }),
        enrollment: desk.status() ?? { state: 'none' },
        roles,
        ...(roles.peripheral
          ? { peripheral: { health: peripheral.health(), stats: peripheral.stats() ?? {} } }
          : {}),
        ...(up?.env === undefined ? {} : { sim: { busAddress: up.env.busAddress, dbusPid: up.env.dbusPid } }),
      };
    }),
  );

  /** sim mode: at most one radio flood at a time (see src/sim/ble-flood.ts). */
  let flood: { stop(): Record<string, number> } | undefined;
  if (mode === 'sim') {
    /** The simulated BlueZ, once up (a command that comes during start-up waits for it). */
    const sim = async (): Promise<{ env: BleSimEnvironment; phones: SimPhones }> => {
      const up = await reader.whenUp();
      if (up?.env === undefined || up.phones === undefined) {
        throw new AgentError(
          'reader_error',
          `the BLE reader is not running: ${reader.health().detail ?? 'down'}`,
        );
      }
      return { env: up.env, phones: up.phones };
    };
    handlers.set(
      ...bindHandler('sim.phone.approach', async (args) => {
        const { phones } = await sim();
        const result = await phones.approach(args);
        return result.granted && result.outcome === 'decision'
          ? { ...result, lock: deps.lockState() }
          : result;
      }),
    );
    handlers.set(
      ...bindHandler('sim.ble.adapter', async (args) => {
        const { standIn } = await simEnvironment();
        standIn.setPowered(args.powered);
        return { powered: standIn.powered };
      }),
    );
    handlers.set(
      ...bindHandler('sim.ble.flood', async (args) => {
        const { standIn } = (await sim()).env;
        if (args.action === 'stop') {
          const counts = flood?.stop();
          flood = undefined;
          return { running: false, ...(counts ?? {}) };
        }
        const { BleFlood } = await import('../sim/ble-flood.js');
        const { devices, mode } = args;
        flood?.stop();
        const started = new BleFlood(standIn, { devices, mode });
        started.start();
        flood = { stop: () => ({ ...started.stop() }) };
        return { running: true, devices, mode };
      }),
    );
    if (roles.peripheral) {
      for (const [name, handler] of simCentralHandlers(
        async () => (await simEnvironment()).standIn,
        peripheral,
      )) {
        handlers.set(name, handler);
      }
    }
    handlers.set(
      ...bindHandler('sim.ble.bluez', async (args) => {
        const { standIn } = await simEnvironment();
        if (args.owned) await standIn.reacquireName();
        else await standIn.releaseName();
        return { owned: standIn.nameOwned };
      }),
    );
  }

  return {
    readers: [...(roles.central ? [reader] : []), ...(roles.peripheral ? [peripheral] : [])],
    handlers,
    mode,
    desk,
    stop: async () => {
      desk.close();
      flood?.stop();
      await (await simEnv?.catch(() => undefined))?.stop();
    },
  };
}

interface BleUp {
  readonly reader: BleReader;
  readonly env: BleSimEnvironment | undefined;
  readonly phones: SimPhones | undefined;
}

/**
 * The BLE reader as the agent sees it: start() returns at once and brings the real reader up in
 * the background (health says `down: starting` meanwhile); if that fails (sim mode without
 * dbus-daemon, say) the reader stays down with the reason, and the rest of the agent works.
 */
class BackgroundBleReader implements CredentialReader {
  private state: Health = { state: 'down', detail: 'not started', since: Date.now() };
  private up: BleUp | undefined;
  private bringingUp: Promise<BleUp | undefined> | undefined;
  private stopped = false;
  private readonly failureListeners = new Set<(err: AgentError) => void>();

  constructor(
    readonly id: string,
    private readonly mode: 'sim' | 'bluez',
    private readonly bringUp: () => Promise<BleUp>,
  ) {}

  async start(context: ReaderContext): Promise<void> {
    if (this.bringingUp !== undefined) return;
    this.state = { state: 'down', detail: `starting (${this.mode})`, since: Date.now() };
    this.bringingUp = (async () => {
      try {
        const up = await this.bringUp();
        // The sim environment is shared with the peripheral: setup.stop() ends it.
        if (this.stopped) return undefined;
        this.up = up;
        await up.reader.start(context);
        return up;
      } catch (err) {
        const e = toAgentError(err, 'reader_error');
        this.state = { state: 'down', detail: e.message, since: Date.now() };
        for (const listener of this.failureListeners) listener(e);
        return this.up;
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const up = await this.whenUp();
    await up?.reader.stop();
    this.state = { state: 'down', detail: 'stopped', since: Date.now() };
  }

  health(): Health {
    return this.up?.reader.health() ?? this.state;
  }

  /** The running reader, once up. */
  current(): BleUp | undefined {
    return this.up;
  }

  /** Waits for the bring-up to finish; undefined when it failed or never started. */
  async whenUp(): Promise<BleUp | undefined> {
    return (await this.bringingUp) ?? this.up;
  }

  onFailure(listener: (err: AgentError) => void): void {
    this.failureListeners.add(listener);
  }
}
