import type { CredentialLookup } from '../access/credential-lookup.js';
import { expectedCredentialId, parseCredentialWire } from '../access/credential-wire.js';
import type { CredentialReader, EnrollmentHost, ReaderContext } from '../agent/reader.js';
import { EnrollmentDesk } from '../ble/enrollment.js';
import { KEY_TO_VEHICLE_UUID, SERVICE_UUID, VEHICLE_TO_KEY_UUID } from '../ble/protocol/constants.js';
import { BleReader } from '../ble/reader.js';
import type { Config } from '../config/schema.js';
import type { Clock } from '../core/clock.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { type Health, INTENTS, type Intent, type PublicJwk, ROLES } from '../core/types.js';
import { fromB64url } from '../crypto/encoding.js';
import { bindHandler } from '../host/control-api.js';
import type { ControlHandler } from '../host/control-server.js';
import type { BleSimEnvironment, SimPhones } from '../sim/ble-sim.js';

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
}

export interface BleSetup {
  readonly reader: CredentialReader;
  /** Control commands: ble.status, enroll.*, and in sim mode sim.phone.approach and sim.ble.*. */
  readonly handlers: ReadonlyMap<string, ControlHandler>;
  readonly mode: 'sim' | 'bluez';
  /** Ends what the setup started beside the reader (sim: stand-in and dbus-daemon). After reader.stop(). */
  stop(): Promise<void>;
}

/** The longest enrollment window anyone may ask for. */
export const MAX_ENROLL_WINDOW_MS = 600_000;
const APPROACH_TIMEOUT_MS = 10_000;

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
    ...bindHandler('enroll.open', (args) =>
      desk.open(parseEnrollArgs(args), parseWindow(args.windowMs, ble.enrollWindowMs)),
    ),
  );
  handlers.set(...bindHandler('enroll.status', () => desk.status() ?? NO_ENROLLMENT));
  handlers.set(...bindHandler('enroll.cancel', () => desk.cancel() ?? NO_ENROLLMENT));

  // Everything below runs in the background once the agent starts the reader: node-ble, dbus-next,
  // the stand-in and noble take a few hundred ms to load on a Pi, and the agent's `ready` and its
  // other readers do not wait for them (nor for a dbus-daemon and BlueZ round trips).
  const reader = new BackgroundBleReader('ble0', mode, async () => {
    const [{ BleLink }, sim] = await Promise.all([
      import('../ble/link.js'),
      mode === 'sim' ? import('../sim/ble-sim.js') : Promise.resolve(undefined),
    ]);
    let env: BleSimEnvironment | undefined;
    if (sim !== undefined) {
      const { startBleSim } = sim;
      try {
        env = await startBleSim(log);
      } catch (err) {
        const e = toAgentError(err, 'reader_error');
        throw new AgentError(
          'reader_error',
          `sim mode needs dbus-daemon (apt-get install dbus): ${e.message}`,
        );
      }
    }
    try {
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
        enrollAnswerMs: ble.enrollAnswerMs,
        enrollment: desk,
      });
      const phones =
        env !== undefined && sim !== undefined
          ? new sim.SimPhones(env.standIn, inner, log.child({ module: 'sim-phone' }))
          : undefined;
      return { reader: inner, env, phones };
    } catch (err) {
      await env?.stop();
      throw err;
    }
  });
  reader.onFailure((err) =>
    log.error({ module: 'ble', code: err.code, err: err.message }, 'BLE reader not started; BLE is down'),
  );

  handlers.set(
    ...bindHandler('ble.status', () => {
      const up = reader.current();
      return {
        mode,
        health: reader.health(),
        ...(up === undefined ? {} : { stats: up.reader.stats() }),
        enrollment: desk.status() ?? { state: 'none' },
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
        const result = await phones.approach(await parseApproach(args));
        return result.granted && result.outcome === 'decision'
          ? { ...result, lock: deps.lockState() }
          : result;
      }),
    );
    handlers.set(
      ...bindHandler('sim.ble.adapter', async (args) => {
        const { standIn } = (await sim()).env;
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
        if (args.action !== 'start') throw new AgentError('bad_arguments', 'action must be start or stop');
        const { BleFlood, FLOOD_MODES } = await import('../sim/ble-flood.js');
        const mode = args.mode ?? 'garbage';
        if (typeof mode !== 'string' || !(FLOOD_MODES as readonly string[]).includes(mode))
          throw new AgentError('bad_arguments', `mode must be one of ${FLOOD_MODES.join(', ')}`);
        const devices = args.devices ?? 16;
        if (typeof devices !== 'number') throw new AgentError('bad_arguments', 'devices must be a number');
        flood?.stop();
        const started = new BleFlood(standIn, { devices, mode: mode as (typeof FLOOD_MODES)[number] });
        started.start();
        flood = { stop: () => ({ ...started.stop() }) };
        return { running: true, devices, mode };
      }),
    );
    handlers.set(
      ...bindHandler('sim.ble.bluez', async (args) => {
        const { standIn } = (await sim()).env;
        if (args.owned) await standIn.reacquireName();
        else await standIn.releaseName();
        return { owned: standIn.nameOwned };
      }),
    );
  }

  return {
    reader,
    handlers,
    mode,
    stop: async () => {
      desk.close();
      flood?.stop();
      await (await reader.whenUp())?.env?.stop();
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
        if (this.stopped) {
          await up.env?.stop();
          return undefined;
        }
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

// ── control arguments ──────────────────────────────────────────────────────────

function parseWindow(value: unknown, fallback: number): number {
  if (value === undefined) return Math.min(fallback, MAX_ENROLL_WINDOW_MS);
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_ENROLL_WINDOW_MS) {
    throw new AgentError('bad_arguments', `windowMs must be an integer 1..${MAX_ENROLL_WINDOW_MS}`);
  }
  return value;
}

function parseEnrollArgs(args: Readonly<Record<string, unknown>>) {
  const { kind, publicKey, role, name, notBefore, notAfter, passive } = args;
  if (kind !== 'phone') throw new AgentError('bad_arguments', 'kind must be phone');
  if (typeof role !== 'string' || !(ROLES as readonly string[]).includes(role)) {
    throw new AgentError('bad_arguments', `role must be one of ${ROLES.join(', ')}`);
  }
  if (passive !== undefined && typeof passive !== 'boolean')
    throw new AgentError('bad_arguments', 'passive must be a boolean');
  try {
    const id = expectedCredentialId('phone', { publicKey: publicKey as PublicJwk });
    return parseCredentialWire({
      id,
      kind,
      role,
      publicKey,
      ...(name === undefined ? {} : { name }),
      ...(notBefore === undefined ? {} : { notBefore }),
      ...(notAfter === undefined ? {} : { notAfter }),
      options: passive === true ? { passive: true } : {},
    });
  } catch (err) {
    throw new AgentError('bad_arguments', toAgentError(err).message);
  }
}

async function parseApproach(args: Readonly<Record<string, unknown>>) {
  const { parseApproachFault } = await import('../sim/ble-sim.js');
  const {
    secretKey,
    pin,
    intent,
    explicitIntent,
    answerDelayMs,
    approveEnrollment,
    enrollmentFor,
    rssi,
    timeoutMs,
  } = args;
  let secret: Uint8Array;
  try {
    secret = fromB64url(typeof secretKey === 'string' ? secretKey : '');
  } catch {
    secret = new Uint8Array();
  }
  if (secret.length !== 32)
    throw new AgentError('bad_arguments', 'secretKey must be a base64url 32-byte P-256 scalar');
  const p = (typeof pin === 'object' && pin !== null ? pin : {}) as Record<string, unknown>;
  if (typeof p.vehicleId !== 'string' || typeof p.publicKey !== 'object' || p.publicKey === null) {
    throw new AgentError('bad_arguments', 'pin must be {vehicleId, publicKey}');
  }
  const chosen = intent ?? 'unlock';
  if (typeof chosen !== 'string' || !(INTENTS as readonly string[]).includes(chosen)) {
    throw new AgentError('bad_arguments', `intent must be one of ${INTENTS.join(', ')}`);
  }
  const int = (value: unknown, name: string, fallback: number, min: number, max: number): number => {
    if (value === undefined) return fallback;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
      throw new AgentError('bad_arguments', `${name} must be an integer ${min}..${max}`);
    }
    return value;
  };
  if (enrollmentFor !== undefined && typeof enrollmentFor !== 'string')
    throw new AgentError('bad_arguments', 'enrollmentFor must be a credential id');
  return {
    secretKey: secret,
    pin: { vehicleId: p.vehicleId, publicKey: p.publicKey as PublicJwk },
    intent: chosen as Intent,
    explicitIntent: explicitIntent !== false,
    fault: parseApproachFault(args.fault),
    answerDelayMs: int(answerDelayMs, 'answerDelayMs', 0, 0, 60_000),
    approveEnrollment: approveEnrollment === true,
    enrollmentFor,
    rssi: int(rssi, 'rssi', -50, -127, 20),
    timeoutMs: int(timeoutMs, 'timeoutMs', APPROACH_TIMEOUT_MS, 100, 120_000),
  };
}
