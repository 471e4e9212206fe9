/**
 * The agent's BLE central: the one home of node-ble. It finds devices advertising the
 * vehicle-key service through BlueZ, and opens sessions with them: connect, resolve GATT,
 * subscribe to the notify characteristic, write with response, always disconnect. It knows
 * nothing of the phone-key protocol: a session is a byte channel (BleChannel).
 *
 * node-ble opens the bus connection and finds the adapter. Everything else is done on that one
 * connection: discovery events (ObjectManager and PropertiesChanged signals, since node-ble's
 * waitDevice polls), a discovery filter with UUIDs, noticing that org.bluez or the adapter went
 * away, and the session itself. A session is four D-Bus calls plus one per write: Connect,
 * StartNotify, WriteValue…, Disconnect. The GATT object paths come from the ObjectManager data
 * the link already follows (BlueZ announces the service and characteristics with InterfacesAdded
 * before it sets ServicesResolved), and notifications from its own PropertiesChanged match rule;
 * node-ble's gatt() walks the tree by introspection (ten round trips) and is only the fallback
 * when those objects were not announced. Traps handled here, each seen on the BlueZ stand-in:
 * - gatt() waits for a ServicesResolved signal it can miss when the flip lands right after its
 *   Get; the link waits for ServicesResolved itself first, then bounds gatt() by a timeout and
 *   retries it.
 * - node-ble's writeValue() defaults to a reliable write, which BlueZ refuses on ordinary
 *   characteristics; writes are write requests (type "request", with response).
 * - node-ble (through dbus-next 0.10) never removes the match rules and signal listeners it
 *   adds, about three a gatt(): the daemon refuses more past its limit (512 a connection on the
 *   system bus), memory grows and Node warns. The link's own path_namespace rule keeps signals
 *   flowing regardless, and after `recycleAfterSessions` sessions that used node-ble (or once a
 *   rule was refused) it reconnects to the bus when idle, which frees them all.
 */
import { type ClientInterface, Message, type MessageBus, MessageType, Variant } from 'dbus-next';
import NodeBle from 'node-ble';
import type { Clock } from '../core/clock.js';
import type { Code } from '../core/codes.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Health, HealthState } from '../core/types.js';
import {
  ADAPTER_IFACE,
  addressFromPath,
  changedBoolean,
  changedNumber,
  DEVICE_IFACE,
  DeviceTable,
  devicePath,
  GATT_CHARACTERISTIC_IFACE,
  hasAdapter,
  type KnownDevice,
  type ResolvedGatt,
} from './bluez-model.js';
import { Backoff, ConnectBudget, SessionGate } from './link-policy.js';

const BLUEZ = 'org.bluez';
const DAEMON = 'org.freedesktop.DBus';
const OBJECT_MANAGER = 'org.freedesktop.DBus.ObjectManager';
const PROPERTIES = 'org.freedesktop.DBus.Properties';
const MATCH_RULES = [
  `type='signal',sender='${DAEMON}',interface='${DAEMON}',member='NameOwnerChanged',arg0='${BLUEZ}'`,
  `type='signal',sender='${BLUEZ}',interface='${OBJECT_MANAGER}'`,
  `type='signal',sender='${BLUEZ}',interface='${PROPERTIES}',member='PropertiesChanged',path_namespace='/org/bluez'`,
];
/** BlueZ writes longer values with prepare/execute writes; 512 is the ATT attribute limit. */
export const MAX_WRITE_BYTES = 512;
const ADDRESS = /^([0-9A-F]{2}:){5}[0-9A-F]{2}$/;
/** Notifications held for a channel nobody listens to yet. */
const MAX_QUEUED_CHUNKS = 64;
export const DEFAULT_CONNECTS_PER_SECOND = 8;
const LOOKUPS_PER_CONNECT = 4;

export interface BleLinkOptions {
  /** The vehicle-key GATT service the devices advertise (128-bit UUID). */
  readonly serviceUuid: string;
  /** Characteristic the agent writes. */
  readonly writeUuid: string;
  /** Characteristic the device notifies on. */
  readonly notifyUuid: string;
  readonly logger: Logger;
  readonly clock?: Pick<Clock, 'now' | 'monotonic'>;
  /** D-Bus system bus address; default DBUS_SYSTEM_BUS_ADDRESS or the system socket. */
  readonly busAddress?: string;
  /** Adapter name (hci0…); default the first adapter BlueZ lists. */
  readonly adapter?: string;
  /** Devices heard weaker than this (dBm) are not offered. Default -80. */
  readonly rssiThreshold?: number;
  /** Concurrent sessions. Default 4. */
  readonly maxSessions?: number;
  /**
   * A session that has not shown a signature-checked answer (the reader marks it proven) keeps
   * its slot this long from its start; after that a waiting device may take the slot. Default 1000 ms.
   */
  readonly unprovenTurnMs?: number;
  /** ... and is dropped this long after its start whether or not anyone waits. Default 4000 ms. */
  readonly unprovenDeadlineMs?: number;
  /** Devices remembered as waiting for a slot (a random one is forgotten past it). Default 64. */
  readonly maxWaiting?: number;
  /**
   * Connects per second, on average, with bursts of up to `maxSessions`; sighted devices wait for a
   * turn beyond it. Default 8 (a real adapter makes one LE connection at a time, each with GATT
   * discovery taking tens to hundreds of ms).
   */
  readonly maxConnectsPerSecond?: number;
  /**
   * Remote devices the link keeps track of; past it the least recently heard one without a session
   * is forgotten (it is looked up again when next heard). Default 256.
   */
  readonly maxTrackedDevices?: number;
  /** Random integer in [0, n), for picking among waiting devices. Default Math.random. */
  readonly random?: (n: number) => number;
  /** After any session a device is not offered again for this long. Default 1000 ms. */
  readonly sessionSpacingMs?: number;
  /** Connect until Connected. Default 5000 ms. */
  readonly connectTimeoutMs?: number;
  /** Connected until ServicesResolved. Default 5000 ms. */
  readonly servicesTimeoutMs?: number;
  /** One gatt() attempt. Default 1000 ms. */
  readonly gattTimeoutMs?: number;
  /** gatt() attempts before giving up. Default 3. */
  readonly gattAttempts?: number;
  /** Any other D-Bus call (write, StartNotify, Disconnect…). Default 3000 ms. */
  readonly callTimeoutMs?: number;
  /** A session left open longer is closed by the link. Default 15000 ms. */
  readonly sessionTimeoutMs?: number;
  /** Re-initialisation backoff after BlueZ or the adapter went away. Default 200…5000 ms. */
  readonly retryInitialMs?: number;
  readonly retryMaxMs?: number;
  /**
   * Reconnect to the bus when idle after this many sessions: frees node-ble's leaked match rules
   * and signal listeners (Node warns past 10 listeners on one object path). Default 10.
   */
  readonly recycleAfterSessions?: number;
}

export interface BleCandidate {
  /** AA:BB:CC:DD:EE:FF (phones use rotating random addresses). */
  readonly address: string;
  readonly name: string | undefined;
  readonly rssi: number;
}

export type BleCloseReason =
  | 'closed'
  | 'failed'
  | 'disconnected'
  | 'vanished'
  | 'adapter-off'
  | 'bluez-lost'
  | 'bus-lost'
  | 'session-timeout'
  /** Ended after its turn so that a waiting device could have the slot (it had proved nothing). */
  | 'evicted'
  /** Proved nothing within ble.unprovenDeadlineMs. */
  | 'unproven-timeout'
  | 'stopped';

/** A session with one device: protocol bytes out (writes with response), notifications in. */
export interface BleChannel {
  readonly address: string;
  readonly closed: boolean;
  /** The negotiated ATT MTU when BlueZ reports it (GattCharacteristic1.MTU), else undefined. */
  readonly mtu: number | undefined;
  /** One ATT write with response of up to MAX_WRITE_BYTES. Rejects with a coded AgentError. */
  write(bytes: Uint8Array): Promise<void>;
  /** Each notification, as one chunk. Chunks that came before the first listener are replayed. */
  onData(listener: (chunk: Uint8Array) => void): () => void;
  /** Called once when the session ends, whichever side ended it. */
  onClose(listener: (reason: BleCloseReason) => void): () => void;
  /** Ends the session: always disconnects. `cooldownMs` holds the device back (after a grant). */
  close(options?: { readonly cooldownMs?: number }): Promise<void>;
  /** The peer showed a signature-checked answer: no more unproven deadline, never evicted. */
  markProven(): void;
  /**
   * Gives this unproven session `ms` more (an owner approving an enrollment takes a human's time);
   * false when another session has such a turn already.
   */
  extendTurn(ms: number): boolean;
}

export interface BleLinkStats {
  readonly candidates: number;
  readonly sessionsOpened: number;
  readonly sessionsFailed: number;
  readonly gattRetries: number;
  readonly initialisations: number;
  readonly busConnections: number;
  readonly activeSessions: number;
  /** Sessions now without a signature-checked answer. */
  readonly unprovenSessions: number;
  /** Sightings that found every slot taken and had to wait for a turn. */
  readonly sightingsDeferred: number;
  /** Unproven sessions ended after their turn to let a waiting device in. */
  readonly sessionsEvicted: number;
  /** Unproven sessions dropped at ble.unprovenDeadlineMs. */
  readonly unprovenTimeouts: number;
  /** Devices waiting for a slot now, and those forgotten because too many waited. */
  readonly waitingDevices: number;
  readonly waitingDropped: number;
  /** Connects made (Connect calls sent). */
  readonly connects: number;
  /** Sightings that found the connect budget spent and waited for a turn. */
  readonly connectsDeferred: number;
  /** Remote devices tracked now, and those forgotten because too many were tracked. */
  readonly trackedDevices: number;
  readonly trackedDevicesEvicted: number;
  /** Forgotten devices heard again and looked up (Device1 properties) to be tracked anew. */
  readonly devicesLookedUp: number;
  /** Sizes of the link's other per-address and per-path tables (bounded; for tests and status). */
  readonly tables: {
    readonly gattObjects: number;
    readonly holds: number;
    readonly pathWaiters: number;
    readonly notifyPaths: number;
    readonly lookups: number;
  };
}

interface BusConnection {
  readonly bluetooth: NodeBle.Bluetooth;
  readonly destroy: () => void;
  readonly dbus: MessageBus;
  readonly daemon: ClientInterface;
  readonly detach: () => void;
  /** Sessions that resolved GATT through node-ble (each leaks match rules until a reconnect). */
  sessionsServed: number;
  /** The daemon refused a match rule: reconnect as soon as idle. */
  exhausted: boolean;
}

interface AdapterState {
  readonly name: string;
  readonly path: string;
  readonly adapter: NodeBle.Adapter;
  readonly iface: ClientInterface;
  readonly table: DeviceTable;
}

type Counters = {
  -readonly [K in keyof Omit<
    BleLinkStats,
    | 'activeSessions'
    | 'unprovenSessions'
    | 'sightingsDeferred'
    | 'sessionsEvicted'
    | 'waitingDevices'
    | 'waitingDropped'
    | 'connects'
    | 'connectsDeferred'
    | 'trackedDevices'
    | 'tables'
  >]: number;
};

export class BleLink {
  private readonly options: Required<
    Omit<
      BleLinkOptions,
      'busAddress' | 'adapter' | 'clock' | 'logger' | 'maxWaiting' | 'random' | 'maxConnectsPerSecond'
    >
  >;
  private readonly busAddress: string | undefined;
  private readonly adapterName: string | undefined;
  private readonly log: Logger;
  private readonly clock: Pick<Clock, 'now' | 'monotonic'>;
  private readonly gate: SessionGate;
  private readonly backoff: Backoff;
  private readonly sessions = new Map<string, Session>();
  private readonly candidateListeners = new Set<(candidate: BleCandidate) => void>();
  private readonly pathWaiters = new Map<string, Set<() => void>>();
  /** Notify characteristic path → the session subscribed to it. */
  private readonly notifyPaths = new Map<string, Session>();
  private readonly counters: Counters = {
    candidates: 0,
    sessionsOpened: 0,
    sessionsFailed: 0,
    gattRetries: 0,
    initialisations: 0,
    busConnections: 0,
    unprovenTimeouts: 0,
    trackedDevicesEvicted: 0,
    devicesLookedUp: 0,
  };
  /** Device paths heard while untracked, being looked up (bounded by maxSessions). */
  private readonly lookups = new Set<string>();
  /** Lookups of forgotten devices: a few per connect the budget allows, so a spray cannot busy the bus. */
  private readonly lookupBudget: ConnectBudget;
  /** Serves a waiting device when the connect budget allows the next connect. */
  private budgetTimer: NodeJS.Timeout | undefined;
  private running = false;
  private conn: BusConnection | undefined;
  private bluezOwner: string | undefined;
  private adapter: AdapterState | undefined;
  /** Adapter powered and our discovery session running: candidates may be offered. */
  private ready = false;
  /** Bumped on every loss (BlueZ, adapter, bus): an initialisation in flight then gives up. */
  private epoch = 0;
  private initRunning = false;
  private initAgain = false;
  private initTimer: NodeJS.Timeout | undefined;
  private state: Health;

  constructor(options: BleLinkOptions) {
    this.options = {
      serviceUuid: options.serviceUuid.toLowerCase(),
      writeUuid: options.writeUuid.toLowerCase(),
      notifyUuid: options.notifyUuid.toLowerCase(),
      rssiThreshold: options.rssiThreshold ?? -80,
      maxSessions: options.maxSessions ?? 4,
      unprovenTurnMs: options.unprovenTurnMs ?? 1000,
      unprovenDeadlineMs: options.unprovenDeadlineMs ?? 4000,
      sessionSpacingMs: options.sessionSpacingMs ?? 1000,
      connectTimeoutMs: options.connectTimeoutMs ?? 5000,
      servicesTimeoutMs: options.servicesTimeoutMs ?? 5000,
      gattTimeoutMs: options.gattTimeoutMs ?? 1000,
      gattAttempts: Math.max(1, options.gattAttempts ?? 3),
      callTimeoutMs: options.callTimeoutMs ?? 3000,
      sessionTimeoutMs: options.sessionTimeoutMs ?? 15_000,
      retryInitialMs: options.retryInitialMs ?? 200,
      retryMaxMs: options.retryMaxMs ?? 5000,
      recycleAfterSessions: Math.max(1, options.recycleAfterSessions ?? 10),
      maxTrackedDevices: Math.max(1, options.maxTrackedDevices ?? 256),
    };
    this.busAddress = options.busAddress;
    this.adapterName = options.adapter;
    this.log = options.logger.child({ module: 'ble-link' });
    this.clock = options.clock ?? { now: () => Date.now(), monotonic: () => performance.now() };
    this.gate = new SessionGate({
      maxSessions: this.options.maxSessions,
      spacingMs: this.options.sessionSpacingMs,
      unprovenTurnMs: this.options.unprovenTurnMs,
      ...(options.maxWaiting === undefined ? {} : { maxWaiting: options.maxWaiting }),
      ...(options.random === undefined ? {} : { random: options.random }),
      connectBudget: {
        perSecond: options.maxConnectsPerSecond ?? DEFAULT_CONNECTS_PER_SECOND,
        burst: this.options.maxSessions,
      },
    });
    this.lookupBudget = new ConnectBudget({
      perSecond: LOOKUPS_PER_CONNECT * (options.maxConnectsPerSecond ?? DEFAULT_CONNECTS_PER_SECOND),
      burst: this.options.maxSessions,
    });
    this.backoff = new Backoff(this.options.retryInitialMs, this.options.retryMaxMs);
    this.state = { state: 'down', detail: 'not started', since: this.clock.now() };
  }

  // ── public API ─────────────────────────────────────────────────────────────────

  /**
   * Connects to the bus and BlueZ and starts discovery. Resolves after the first attempt
   * whatever its outcome: a missing BlueZ or adapter shows in health() and is retried.
   */
  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    await this.initialise();
  }

  /** Ends every session (disconnecting), stops discovery and closes the bus connection. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    clearTimeout(this.initTimer);
    clearTimeout(this.budgetTimer);
    this.budgetTimer = undefined;
    this.epoch += 1;
    await Promise.all([...this.sessions.values()].map((s) => this.endSession(s, 'stopped', 0)));
    const adapter = this.adapter;
    if (this.ready && adapter !== undefined) {
      await settle(this.call(adapter.iface, 'StopDiscovery'));
    }
    this.ready = false;
    this.dropBus();
    this.setHealth('down', 'stopped');
  }

  health(): Health {
    return this.state;
  }

  stats(): BleLinkStats {
    const gate = this.gate.stats();
    const table = this.adapter?.table;
    return {
      ...this.counters,
      activeSessions: this.sessions.size,
      unprovenSessions: gate.unproven,
      sightingsDeferred: gate.deferred,
      sessionsEvicted: gate.evicted,
      waitingDevices: gate.waiting,
      waitingDropped: gate.waitingDropped,
      connects: gate.connects,
      connectsDeferred: gate.budgetDeferred,
      trackedDevices: table?.size ?? 0,
      tables: {
        gattObjects: table?.attributes ?? 0,
        holds: gate.holds,
        pathWaiters: this.pathWaiters.size,
        notifyPaths: this.notifyPaths.size,
        lookups: this.lookups.size,
      },
    };
  }

  /**
   * Called on every fresh sighting (advertisement) of a device that advertises the service,
   * is loud enough, and may have a session now. Returns an unsubscribe function.
   */
  onCandidate(listener: (candidate: BleCandidate) => void): () => void {
    this.candidateListeners.add(listener);
    return () => this.candidateListeners.delete(listener);
  }

  /** Holds a device back for `ms` (e.g. after a grant), whether or not a session is open. */
  setCooldown(address: string, ms: number): void {
    this.gate.setCooldown(normaliseAddress(address), this.clock.monotonic(), ms);
  }

  /**
   * Opens a session: connect, resolve GATT, subscribe. Rejects with AgentError `busy` (device
   * busy, bound reached, cooling down), `reader_timeout` or `reader_error`; always leaves the
   * device disconnected when it rejects.
   */
  async openSession(address: string): Promise<BleChannel> {
    const addr = normaliseAddress(address);
    const conn = this.conn;
    const adapter = this.adapter;
    if (!this.ready || conn === undefined || adapter === undefined) {
      throw new AgentError('reader_error', `BLE link not ready: ${this.state.detail ?? this.state.state}`);
    }
    const refusal = this.gate.acquire(addr, this.clock.monotonic());
    if (refusal !== undefined) {
      throw new AgentError('busy', `no BLE session with ${addr} now: ${refusal}`, { reason: refusal });
    }
    const session = new Session(addr, devicePath(adapter.path, addr), this.options.callTimeoutMs, {
      end: (s, reason, cooldownMs) => this.endSession(s, reason, cooldownMs),
      cooldown: (ms) => this.setCooldown(addr, ms),
      proven: () => this.gate.markProven(addr),
      extend: () => this.gate.extend(addr),
    });
    this.sessions.set(addr, session);
    // Until the reader marks it proven, the whole session (connect included) has this long.
    session.armUnproven(this.options.unprovenDeadlineMs, () => {
      this.counters.unprovenTimeouts += 1;
    });
    try {
      await this.establish(session, adapter, conn);
      this.counters.sessionsOpened += 1;
      session.armTimeout(this.options.sessionTimeoutMs);
      return session;
    } catch (err) {
      this.counters.sessionsFailed += 1;
      const error = toAgentError(err, 'reader_error');
      this.log.info({ address: addr, code: error.code, err: error.message }, 'BLE session failed');
      await this.endSession(session, 'failed', 0);
      throw error;
    }
  }

  // ── sessions ───────────────────────────────────────────────────────────────────

  private async establish(session: Session, adapter: AdapterState, conn: BusConnection): Promise<void> {
    const { callTimeoutMs, connectTimeoutMs, serviceUuid, writeUuid, notifyUuid } = this.options;
    if (adapter.table.get(session.path) === undefined) {
      throw new AgentError('reader_error', `BlueZ lists no device ${session.address}`);
    }
    session.connectSent = true;
    await session.guard(
      this.bluez(conn, session.path, DEVICE_IFACE, 'Connect'),
      connectTimeoutMs,
      'connect',
      'reader_timeout',
    );
    await this.servicesResolved(session, adapter.table);
    const gatt =
      adapter.table.gatt(session.path, serviceUuid, writeUuid, notifyUuid) ??
      (await this.resolveWithNodeBle(session, adapter, conn));
    session.mtu = gatt.mtu;
    session.notifyPath = gatt.notifyPath;
    this.notifyPaths.set(gatt.notifyPath, session);
    session.writer = (bytes) =>
      this.bluez(conn, gatt.writePath, GATT_CHARACTERISTIC_IFACE, 'WriteValue', 'aya{sv}', [
        Buffer.from(bytes),
        // A write request (with response); node-ble's default would be a reliable write.
        { type: new Variant('s', 'request') },
      ]);
    await session.guard(
      this.bluez(conn, gatt.notifyPath, GATT_CHARACTERISTIC_IFACE, 'StartNotify'),
      callTimeoutMs,
      'StartNotify',
    );
  }

  /** The fallback when BlueZ's GATT objects were not announced: node-ble's gatt(), bounded and retried. */
  private async resolveWithNodeBle(
    session: Session,
    adapter: AdapterState,
    conn: BusConnection,
  ): Promise<ResolvedGatt> {
    const { callTimeoutMs, serviceUuid, writeUuid, notifyUuid } = this.options;
    conn.sessionsServed += 1;
    const device = await session.guard(
      adapter.adapter.getDevice(session.address),
      callTimeoutMs,
      'find device',
    );
    const gatt = await this.gattWithRetry(session, device, adapter.table);
    const service = await session.guard(gatt.getPrimaryService(serviceUuid), callTimeoutMs, 'service');
    const write = await session.guard(service.getCharacteristic(writeUuid), callTimeoutMs, 'write');
    const notify = await session.guard(service.getCharacteristic(notifyUuid), callTimeoutMs, 'notify');
    const writePath = characteristicPath(write);
    const notifyPath = characteristicPath(notify);
    return { servicePath: parentPath(writePath), writePath, notifyPath, mtu: undefined };
  }

  /**
   * Waits for ServicesResolved from the link's own signal subscription, which exists before
   * Connect is sent and so cannot miss the flip (node-ble's gatt() subscribes after its Get).
   */
  private servicesResolved(session: Session, table: DeviceTable): Promise<void> {
    const resolved = (): boolean => table.get(session.path)?.servicesResolved === true;
    if (resolved()) return Promise.resolve();
    const waiting = new Promise<void>((resolve, reject) => {
      const check = (): void => {
        const known = table.get(session.path);
        if (known?.servicesResolved === true) {
          done();
          resolve();
        } else if (known !== undefined && !known.connected) {
          done();
          reject(new AgentError('reader_error', 'the device disconnected before its services resolved'));
        }
      };
      const done = (): void => {
        const waiters = this.pathWaiters.get(session.path);
        waiters?.delete(check);
        if (waiters?.size === 0) this.pathWaiters.delete(session.path);
      };
      const waiters = this.pathWaiters.get(session.path) ?? new Set<() => void>();
      waiters.add(check);
      this.pathWaiters.set(session.path, waiters);
      session.onEnd(done);
    });
    return session.guard(waiting, this.options.servicesTimeoutMs, 'ServicesResolved', 'reader_timeout');
  }

  private async gattWithRetry(
    session: Session,
    device: NodeBle.Device,
    table: DeviceTable,
  ): Promise<NodeBle.GattServer> {
    const { gattAttempts, gattTimeoutMs } = this.options;
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await session.guard(device.gatt(), gattTimeoutMs, 'gatt()', 'reader_timeout');
      } catch (err) {
        const timedOut = err instanceof AgentError && err.code === 'reader_timeout' && !session.closed;
        if (!timedOut || attempt >= gattAttempts) throw err;
        if (table.get(session.path)?.connected !== true) {
          throw new AgentError('reader_error', 'the device disconnected while resolving GATT');
        }
        this.counters.gattRetries += 1;
        this.log.warn({ address: session.address, attempt }, 'gatt() did not complete; retrying');
      }
    }
  }

  /** Ends a session once: listeners told, writes rejected, device disconnected, slot freed. */
  private endSession(session: Session, reason: BleCloseReason, cooldownMs: number): Promise<void> {
    session.ending ??= (async () => {
      session.finish(reason);
      if (session.notifyPath !== undefined && this.notifyPaths.get(session.notifyPath) === session) {
        this.notifyPaths.delete(session.notifyPath);
      }
      // The slot is free from here (a slow Disconnect must not hold it); a waiting device gets it.
      this.gate.beginClose(session.address);
      this.serveWaiting();
      const conn = this.conn;
      if (session.connectSent && conn !== undefined) {
        // Always, even after a failed or aborted connect: it also cancels a pending Connect.
        const result = await settle(
          withTimeout(
            this.bluez(conn, session.path, DEVICE_IFACE, 'Disconnect'),
            this.options.callTimeoutMs,
            'Disconnect',
          ),
        );
        if (result !== undefined)
          this.log.debug({ address: session.address, err: errorText(result) }, 'disconnect');
      }
      this.gate.release(session.address, this.clock.monotonic(), cooldownMs);
      this.sessions.delete(session.address);
      this.log.debug({ address: session.address, reason }, 'BLE session ended');
      this.serveWaiting();
      this.maybeRecycle();
    })();
    return session.ending;
  }

  private abortSessions(reason: BleCloseReason): void {
    for (const session of this.sessions.values()) void this.endSession(session, reason, 0);
  }

  // ── initialisation and recovery ───────────────────────────────────────────────

  private async initialise(): Promise<void> {
    if (!this.running) return;
    if (this.initRunning) {
      this.initAgain = true;
      return;
    }
    this.initRunning = true;
    clearTimeout(this.initTimer);
    this.counters.initialisations += 1;
    try {
      const retryIn = await this.tryInitialise(this.epoch);
      if (retryIn === undefined) this.backoff.reset();
      else this.scheduleInit(retryIn);
    } catch (err) {
      const error = toAgentError(err, 'reader_error');
      this.log.warn({ code: error.code, err: error.message }, 'BLE link initialisation failed');
      if (this.running && !this.ready)
        this.setHealth(this.conn === undefined ? 'down' : 'degraded', error.message);
      this.scheduleInit(this.backoff.next());
    } finally {
      this.initRunning = false;
      if (this.initAgain) {
        this.initAgain = false;
        void this.initialise();
      }
    }
  }

  /** One attempt; resolves with a retry delay, or undefined once discovering. */
  private async tryInitialise(epoch: number): Promise<number | undefined> {
    const timeout = this.options.callTimeoutMs;
    const conn = await this.ensureBus();
    const stale = (): boolean => epoch !== this.epoch || !this.running;
    const owner = await withTimeout(this.nameOwner(conn), timeout, 'GetNameOwner');
    if (stale()) return undefined;
    this.bluezOwner = owner;
    if (owner === undefined) {
      this.setHealth('down', 'org.bluez is not on the bus (is bluetoothd running?)');
      return this.options.retryMaxMs; // NameOwnerChanged brings it back sooner
    }
    const names = await withTimeout(conn.bluetooth.adapters(), timeout, 'list adapters');
    const name = this.adapterName ?? names[0];
    if (name === undefined || !names.includes(name)) {
      this.setHealth(
        'down',
        `no Bluetooth adapter${this.adapterName === undefined ? '' : ` ${this.adapterName}`}`,
      );
      return this.backoff.next();
    }
    const adapter = await withTimeout(conn.bluetooth.getAdapter(name), timeout, 'adapter');
    const path = `/org/bluez/${name}`;
    const iface = (
      await withTimeout(conn.dbus.getProxyObject(BLUEZ, path), timeout, 'adapter proxy')
    ).getInterface(ADAPTER_IFACE);
    const table = new DeviceTable(path);
    if (stale()) return undefined;
    this.adapter = { name, path, adapter, iface, table };
    const powered = await withTimeout(adapter.isPowered(), timeout, 'Powered');
    if (stale()) return undefined;
    if (!powered) {
      this.setHealth('degraded', `adapter ${name} is powered off`);
      return this.options.retryMaxMs; // PropertiesChanged(Powered) brings it back sooner
    }
    const root = await withTimeout(conn.dbus.getProxyObject(BLUEZ, '/'), timeout, 'object manager');
    table.seed(await this.call(root.getInterface(OBJECT_MANAGER), 'GetManagedObjects'));
    if (stale()) return undefined;
    await this.call(iface, 'SetDiscoveryFilter', {
      UUIDs: new Variant('as', [this.options.serviceUuid]),
      Transport: new Variant('s', 'le'),
    });
    try {
      await this.call(iface, 'StartDiscovery');
    } catch (err) {
      // InProgress: this connection already has a discovery session (kept across a re-init).
      if (dbusErrorName(err) !== 'org.bluez.Error.InProgress') throw err;
    }
    if (stale()) return undefined;
    this.ready = true;
    this.setHealth('ok', `discovering on ${name}`);
    this.log.info({ adapter: name }, 'BLE link discovering');
    return undefined;
  }

  private scheduleInit(delayMs: number): void {
    if (!this.running) return;
    clearTimeout(this.initTimer);
    this.initTimer = setTimeout(() => void this.initialise(), delayMs);
  }

  private async ensureBus(): Promise<BusConnection> {
    if (this.conn !== undefined) return this.conn;
    const { bluetooth, destroy } = this.openBluetooth();
    const dbus: unknown = Reflect.get(bluetooth, 'dbus');
    if (!isMessageBus(dbus)) {
      destroy();
      throw new AgentError('internal', 'node-ble exposes no D-Bus connection');
    }
    let conn: BusConnection | undefined;
    const onMessage = (msg: Message): void => {
      if (conn !== undefined && conn === this.conn) this.onSignal(msg);
    };
    const onError = (err: unknown): void => {
      if (conn !== undefined) this.onBusError(conn, err);
    };
    dbus.on('message', onMessage);
    dbus.on('error', onError);
    const detach = (): void => {
      dbus.off('message', onMessage);
      dbus.off('error', onError);
      // Late errors from a closed connection must not become unhandled 'error' events.
      dbus.on('error', () => {});
    };
    try {
      const daemonObject = await withTimeout(
        dbus.getProxyObject(DAEMON, '/org/freedesktop/DBus'),
        this.options.callTimeoutMs,
        'D-Bus',
      );
      const daemon = daemonObject.getInterface(DAEMON);
      for (const rule of MATCH_RULES) await this.call(daemon, 'AddMatch', rule);
      conn = { bluetooth, destroy, dbus, daemon, detach, sessionsServed: 0, exhausted: false };
    } catch (err) {
      detach();
      destroy();
      throw new AgentError(
        'reader_error',
        `cannot use the D-Bus system bus: ${errorText(err)}`,
        {},
        { cause: err },
      );
    }
    this.conn = conn;
    this.counters.busConnections += 1;
    return conn;
  }

  /** node-ble reads DBUS_SYSTEM_BUS_ADDRESS when createBluetooth() runs (synchronously). */
  private openBluetooth(): { bluetooth: NodeBle.Bluetooth; destroy: () => void } {
    const address = this.busAddress;
    if (address === undefined) return NodeBle.createBluetooth();
    const saved = process.env.DBUS_SYSTEM_BUS_ADDRESS;
    process.env.DBUS_SYSTEM_BUS_ADDRESS = address;
    try {
      return NodeBle.createBluetooth();
    } finally {
      if (saved === undefined) Reflect.deleteProperty(process.env, 'DBUS_SYSTEM_BUS_ADDRESS');
      else process.env.DBUS_SYSTEM_BUS_ADDRESS = saved;
    }
  }

  private async nameOwner(conn: BusConnection): Promise<string | undefined> {
    try {
      const owner = await this.call(conn.daemon, 'GetNameOwner', BLUEZ);
      return typeof owner === 'string' ? owner : undefined;
    } catch (err) {
      if (dbusErrorName(err) === 'org.freedesktop.DBus.Error.NameHasNoOwner') return undefined;
      throw err;
    }
  }

  private dropBus(): void {
    const conn = this.conn;
    this.conn = undefined;
    this.adapter = undefined;
    this.bluezOwner = undefined;
    this.ready = false;
    if (conn === undefined) return;
    conn.detach();
    conn.destroy();
  }

  /** Reconnects to the bus when idle and due (node-ble's match rules only go with the connection). */
  private maybeRecycle(): void {
    const conn = this.conn;
    if (conn === undefined || !this.running || this.sessions.size > 0) return;
    if (!conn.exhausted && conn.sessionsServed < this.options.recycleAfterSessions) return;
    this.log.info({ sessions: conn.sessionsServed, exhausted: conn.exhausted }, 'reconnecting to D-Bus');
    this.epoch += 1;
    this.dropBus();
    this.setHealth('degraded', 'reconnecting to D-Bus');
    void this.initialise();
  }

  private onBusError(conn: BusConnection, err: unknown): void {
    if (conn !== this.conn) return;
    const name = dbusErrorName(err);
    if (name === 'org.freedesktop.DBus.Error.LimitsExceeded') {
      // node-ble's leaked rules hit the daemon's limit: free them at the next idle moment.
      this.log.warn({ err: errorText(err) }, 'D-Bus refused a match rule; reconnecting when idle');
      conn.exhausted = true;
      this.maybeRecycle();
      return;
    }
    if (name !== undefined) {
      this.log.debug({ err: errorText(err) }, 'D-Bus error');
      return;
    }
    this.log.warn({ err: errorText(err) }, 'D-Bus connection lost');
    this.lose('bus-lost', 'down', `D-Bus connection lost: ${errorText(err)}`);
    this.dropBus();
    this.scheduleInit(this.backoff.next());
  }

  /** Something the link relied on went away: sessions end, candidates stop, init waits. */
  private lose(reason: BleCloseReason, state: HealthState, detail: string): void {
    this.epoch += 1;
    this.ready = false;
    this.abortSessions(reason);
    this.setHealth(state, detail);
  }

  // ── signals ──────────────────────────────────────────────────────────────────

  private onSignal(msg: Message): void {
    if (msg.type !== MessageType.SIGNAL) return;
    if (msg.interface === DAEMON && msg.member === 'NameOwnerChanged') {
      const [name, oldOwner, newOwner] = msg.body;
      if (name === BLUEZ) this.onBluezOwner(String(oldOwner ?? ''), String(newOwner ?? ''));
      return;
    }
    if (this.bluezOwner === undefined || msg.sender !== this.bluezOwner) return;
    const adapter = this.adapter;
    if (msg.interface === OBJECT_MANAGER) {
      const [path, second] = msg.body;
      if (typeof path !== 'string') return;
      if (msg.member === 'InterfacesAdded') this.onInterfacesAdded(path, second);
      else if (msg.member === 'InterfacesRemoved' && Array.isArray(second))
        this.onInterfacesRemoved(path, second);
      return;
    }
    if (msg.interface === PROPERTIES && msg.member === 'PropertiesChanged' && adapter !== undefined) {
      const [iface, changed, invalidated] = msg.body;
      if (typeof iface !== 'string') return;
      if (msg.path === adapter.path && iface === ADAPTER_IFACE) {
        this.onAdapterChanged(adapter, changed);
        return;
      }
      if (iface === GATT_CHARACTERISTIC_IFACE) {
        this.onCharacteristicChanged(msg.path, changed);
        return;
      }
      const change = adapter.table.changed(
        msg.path,
        iface,
        changed,
        Array.isArray(invalidated) ? invalidated : [],
      );
      if (change === undefined) {
        const rssi = iface === DEVICE_IFACE ? changedNumber(changed, 'RSSI') : undefined;
        if (rssi !== undefined && rssi >= this.options.rssiThreshold) this.lookUp(adapter, msg.path);
        return;
      }
      if (change.connected === false) this.sessions.get(change.device.address)?.abort('disconnected');
      this.wakePath(msg.path);
      if (change.sighted) this.sighted(change.device);
    }
  }

  private onBluezOwner(oldOwner: string, newOwner: string): void {
    if (!this.running) return;
    if (oldOwner !== '') {
      // bluetoothd exited or restarted: every object it exported is gone with it.
      this.log.warn('org.bluez left the bus');
      this.adapter = undefined;
      this.bluezOwner = undefined;
      this.lose('bluez-lost', 'down', 'org.bluez left the bus; waiting for bluetoothd');
    }
    if (newOwner !== '') {
      this.log.info('org.bluez is on the bus');
      // Accept its signals at once: the adapter's InterfacesAdded may come before init asks.
      this.bluezOwner = newOwner;
      this.backoff.reset();
      this.scheduleInit(0);
    }
  }

  private onInterfacesAdded(path: string, interfaces: unknown): void {
    const adapter = this.adapter;
    if (hasAdapter(interfaces)) {
      if (!this.ready) this.scheduleInit(0);
      return;
    }
    if (adapter === undefined) return;
    const device = adapter.table.added(path, interfaces);
    if (device === undefined) return;
    this.trimDevices(adapter);
    this.wakePath(path);
    if (device.rssi !== undefined) this.sighted(device);
  }

  /**
   * Keeps the device table within maxTrackedDevices: BlueZ keeps every address it heard for a
   * while (30 s for a temporary device), and addresses cost an attacker nothing. The least
   * recently heard devices without a session go first; one heard again is looked up anew.
   */
  private trimDevices(adapter: AdapterState): void {
    const table = adapter.table;
    if (table.size <= this.options.maxTrackedDevices) return;
    const victims: KnownDevice[] = [];
    for (const device of table.stalestFirst()) {
      if (table.size - victims.length <= this.options.maxTrackedDevices) break;
      if (this.gate.isBusy(device.address) || this.sessions.has(device.address)) continue;
      victims.push(device);
    }
    for (const device of victims) {
      table.forget(device.path);
      this.gate.forget(device.address);
      this.counters.trackedDevicesEvicted += 1;
    }
  }

  /**
   * A device the link does not track was heard (it was forgotten when the table was full): its
   * properties are fetched once, a few lookups at a time; one heard while those run is dropped
   * until its next advertisement.
   */
  private lookUp(adapter: AdapterState, path: string): void {
    const conn = this.conn;
    if (conn === undefined || this.lookups.has(path) || this.lookups.size >= this.options.maxSessions) return;
    if (addressFromPath(adapter.path, path) === undefined) return;
    if (!this.lookupBudget.take(this.clock.monotonic())) return;
    this.lookups.add(path);
    this.counters.devicesLookedUp += 1;
    withTimeout(
      this.bluez(conn, path, PROPERTIES, 'GetAll', 's', [DEVICE_IFACE]),
      this.options.callTimeoutMs,
      'GetAll',
    ).then(
      ([props]) => {
        this.lookups.delete(path);
        if (this.adapter !== adapter || this.conn !== conn || adapter.table.get(path) !== undefined) return;
        const device = adapter.table.added(path, { [DEVICE_IFACE]: props });
        if (device === undefined) return;
        this.trimDevices(adapter);
        if (device.rssi !== undefined) this.sighted(device);
      },
      (err: unknown) => {
        this.lookups.delete(path);
        this.log.debug({ path, err: errorText(err) }, 'device lookup failed');
      },
    );
  }

  private onInterfacesRemoved(path: string, interfaces: readonly unknown[]): void {
    const adapter = this.adapter;
    if (adapter === undefined) return;
    if (path === adapter.path && interfaces.includes(ADAPTER_IFACE)) {
      this.adapter = undefined;
      this.lose('adapter-off', 'down', `adapter ${adapter.name} was removed`);
      this.scheduleInit(this.backoff.next());
      return;
    }
    const device = adapter.table.removed(path, interfaces);
    if (device === undefined) return;
    this.sessions.get(device.address)?.abort('vanished');
    this.gate.forget(device.address);
    this.wakePath(path);
    this.pathWaiters.delete(path);
  }

  private onAdapterChanged(adapter: AdapterState, changed: unknown): void {
    const powered = changedBoolean(changed, 'Powered');
    if (powered === false) {
      this.log.warn({ adapter: adapter.name }, 'adapter powered off');
      this.lose('adapter-off', 'degraded', `adapter ${adapter.name} is powered off`);
      return;
    }
    if (powered === true && !this.ready) {
      this.log.info({ adapter: adapter.name }, 'adapter powered on');
      this.backoff.reset();
      this.scheduleInit(0);
      return;
    }
    if (changedBoolean(changed, 'Discovering') === false && this.ready) {
      // Discovery is shared: false means our session is gone too.
      this.ready = false;
      this.setHealth('degraded', `discovery stopped on ${adapter.name}; restarting it`);
      this.scheduleInit(0);
    }
  }

  /** A notification: PropertiesChanged(Value) on a notify characteristic a session subscribed to. */
  private onCharacteristicChanged(path: string, changed: unknown): void {
    const session = this.notifyPaths.get(path);
    if (session === undefined || typeof changed !== 'object' || changed === null) return;
    const value: unknown = Reflect.get(Reflect.get(changed, 'Value') ?? {}, 'value');
    if (value instanceof Uint8Array) session.deliver(Buffer.from(value));
  }

  private wakePath(path: string): void {
    const waiters = this.pathWaiters.get(path);
    if (waiters === undefined) return;
    for (const wake of [...waiters]) wake();
    if (waiters.size === 0) this.pathWaiters.delete(path);
  }

  private sighted(device: KnownDevice): void {
    if (!this.offerable(device)) return;
    const turn = this.gate.offer(device.address, this.clock.monotonic());
    if (turn === undefined) {
      this.armBudgetTimer();
      return;
    }
    // The gate has freed the victim's slot already: the device admitted takes it first, so the
    // victim's tear-down does not hand it to someone else.
    if (turn.admit === device.address) this.emitCandidate(device);
    else this.serveWaiting(turn.admit);
    if (turn.evict !== undefined) {
      this.log.debug({ address: turn.evict, for: turn.admit }, 'unproven BLE session evicted after its turn');
      this.sessions.get(turn.evict)?.abort('evicted');
    }
  }

  private offerable(device: KnownDevice | undefined): device is KnownDevice & { rssi: number } {
    if (!this.ready || device === undefined || device.rssi === undefined) return false;
    if (!device.uuids.includes(this.options.serviceUuid)) return false;
    return device.rssi >= this.options.rssiThreshold;
  }

  /** Offers a free slot to a waiting device (`first`, else one the gate picks) that is still around. */
  private serveWaiting(first?: string): void {
    const adapter = this.adapter;
    if (!this.running || !this.ready || adapter === undefined) return;
    const now = this.clock.monotonic();
    let address = first ?? this.gate.next(now);
    if (address === undefined) this.armBudgetTimer();
    // A few tries: a waiting device may have left since it was sighted.
    for (let tries = 0; address !== undefined && tries < this.options.maxSessions; tries += 1) {
      const device = adapter.table.get(devicePath(adapter.path, address));
      if (this.offerable(device) && this.gate.check(address, now) === undefined) {
        this.emitCandidate(device);
        return;
      }
      address = this.gate.next(now);
    }
  }

  /** When devices wait only for the connect budget, serves one as soon as it allows a connect. */
  private armBudgetTimer(): void {
    if (this.budgetTimer !== undefined || !this.running || this.gate.waitingCount === 0) return;
    const wait = this.gate.budgetWaitMs(this.clock.monotonic());
    if (wait <= 0) return;
    this.budgetTimer = setTimeout(() => {
      this.budgetTimer = undefined;
      this.serveWaiting();
    }, wait);
  }

  private emitCandidate(device: KnownDevice & { rssi: number }): void {
    this.counters.candidates += 1;
    const candidate: BleCandidate = { address: device.address, name: device.name, rssi: device.rssi };
    for (const listener of this.candidateListeners) {
      try {
        listener(candidate);
      } catch (err) {
        this.log.error({ err: errorText(err) }, 'candidate listener threw');
      }
    }
  }

  // ── helpers ───────────────────────────────────────────────────────────────────

  private setHealth(state: HealthState, detail: string): void {
    if (this.state.state === state && this.state.detail === detail) return;
    const since = this.state.state === state ? this.state.since : this.clock.now();
    this.state = { state, detail, since };
  }

  /**
   * One method call to org.bluez as a raw message: no proxy, hence no introspection round trip
   * and no match rule. Rejects with the D-Bus error (its `type` is the error name).
   */
  private async bluez(
    conn: BusConnection,
    path: string,
    iface: string,
    member: string,
    signature?: string,
    body?: unknown[],
  ): Promise<unknown[]> {
    const reply = await conn.dbus.call(
      new Message({
        destination: BLUEZ,
        path,
        interface: iface,
        member,
        ...(signature === undefined || body === undefined ? {} : { signature, body }),
      }),
    );
    return reply?.body ?? [];
  }

  /** Calls a method on a dbus-next proxy interface, bounded by the call timeout. */
  private call(iface: ClientInterface, member: string, ...args: unknown[]): Promise<unknown> {
    const method = iface[member];
    if (typeof method !== 'function') {
      return Promise.reject(new AgentError('reader_error', `BlueZ has no ${member} here`));
    }
    const result: Promise<unknown> = Promise.resolve(Reflect.apply(method, iface, args));
    return withTimeout(result, this.options.callTimeoutMs, member);
  }
}

/** What a session needs from the link that opened it. */
interface SessionOwner {
  end(session: Session, reason: BleCloseReason, cooldownMs: number): Promise<void>;
  cooldown(ms: number): void;
  proven(): void;
  extend(): boolean;
}

/** One session's state; the channel the reader holds. */
class Session implements BleChannel {
  readonly address: string;
  readonly path: string;
  closed = false;
  ending: Promise<void> | undefined;
  /** Connect was sent: Disconnect must follow, whatever happened. */
  connectSent = false;
  mtu: number | undefined;
  notifyPath: string | undefined;
  /** One write request to the write characteristic, once resolved. */
  writer: ((bytes: Uint8Array) => Promise<unknown>) | undefined;
  private readonly owner: SessionOwner;
  private readonly writeTimeoutMs: number;
  private readonly dataListeners = new Set<(chunk: Uint8Array) => void>();
  private readonly closeListeners = new Set<(reason: BleCloseReason) => void>();
  private readonly endCallbacks = new Set<() => void>();
  private readonly queued: Uint8Array[] = [];
  private reason: BleCloseReason | undefined;
  private timer: NodeJS.Timeout | undefined;
  private unprovenTimer: NodeJS.Timeout | undefined;
  private proven = false;
  private unprovenExpiry: (() => void) | undefined;
  private rejectClosed: ((err: AgentError) => void) | undefined;
  /** Rejects when the session ends: every pending step races it. */
  private readonly closedSignal: Promise<never>;

  constructor(address: string, path: string, writeTimeoutMs: number, owner: SessionOwner) {
    this.address = address;
    this.path = path;
    this.owner = owner;
    this.writeTimeoutMs = writeTimeoutMs;
    this.closedSignal = new Promise<never>((_, reject) => {
      this.rejectClosed = reject;
    });
    this.closedSignal.catch(() => {});
  }

  /** Arrow so it can be passed to node-ble's emitter and removed again. */
  readonly deliver = (value: Buffer): void => {
    if (this.closed) return;
    const chunk = Uint8Array.from(value);
    if (this.dataListeners.size === 0) {
      if (this.queued.length < MAX_QUEUED_CHUNKS) this.queued.push(chunk);
      return;
    }
    for (const listener of this.dataListeners) listener(chunk);
  };

  async write(bytes: Uint8Array): Promise<void> {
    const writer = this.writer;
    if (this.closed || writer === undefined) {
      throw new AgentError('reader_error', `BLE session closed (${this.reason ?? 'not open'})`);
    }
    if (bytes.length === 0 || bytes.length > MAX_WRITE_BYTES) {
      throw new AgentError('frame_too_large', `a BLE write carries 1…${MAX_WRITE_BYTES} bytes`, {
        bytes: bytes.length,
      });
    }
    await this.guard(writer(bytes), this.writeTimeoutMs, 'write');
  }

  onData(listener: (chunk: Uint8Array) => void): () => void {
    this.dataListeners.add(listener);
    for (const chunk of this.queued.splice(0)) listener(chunk);
    return () => this.dataListeners.delete(listener);
  }

  onClose(listener: (reason: BleCloseReason) => void): () => void {
    if (this.reason !== undefined) {
      listener(this.reason);
      return () => {};
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  close(options: { readonly cooldownMs?: number } = {}): Promise<void> {
    const cooldownMs = options.cooldownMs ?? 0;
    // The phone may have dropped the link already (the session then ended on its own): the
    // caller's cooldown after a grant must hold all the same.
    if (cooldownMs > 0) this.owner.cooldown(cooldownMs);
    return this.owner.end(this, 'closed', cooldownMs);
  }

  abort(reason: BleCloseReason): void {
    void this.owner.end(this, reason, 0);
  }

  armTimeout(ms: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.abort('session-timeout'), ms);
  }

  /** Drops the session `ms` from now unless it is marked proven first. */
  armUnproven(ms: number, onExpiry: () => void): void {
    clearTimeout(this.unprovenTimer);
    if (this.proven || this.closed) return;
    this.unprovenTimer = setTimeout(() => {
      if (this.proven || this.closed) return;
      onExpiry();
      this.abort('unproven-timeout');
    }, ms);
    this.unprovenExpiry = onExpiry;
  }

  markProven(): void {
    if (this.proven || this.closed) return;
    this.proven = true;
    clearTimeout(this.unprovenTimer);
    this.owner.proven();
  }

  extendTurn(ms: number): boolean {
    if (this.closed) return false;
    if (this.proven) return true;
    if (!this.owner.extend()) return false;
    const onExpiry = this.unprovenExpiry ?? (() => {});
    this.armUnproven(ms, onExpiry);
    // The overall session bound must not cut it short either (room for the last writes).
    this.armTimeout(ms + this.writeTimeoutMs);
    return true;
  }

  onEnd(callback: () => void): void {
    this.endCallbacks.add(callback);
  }

  /** Marks the session ended and tells everyone waiting on it, once. */
  finish(reason: BleCloseReason): void {
    if (this.reason !== undefined) return;
    this.reason = reason;
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.unprovenTimer);
    this.rejectClosed?.(new AgentError('reader_error', `BLE session ended: ${reason}`, { reason }));
    for (const callback of this.endCallbacks) callback();
    this.endCallbacks.clear();
    for (const listener of this.closeListeners) {
      try {
        listener(reason);
      } catch {
        // a listener's failure must not keep the device connected
      }
    }
    this.closeListeners.clear();
    this.dataListeners.clear();
    this.queued.length = 0;
  }

  /** Bounds a step by a timeout and by the session ending; maps failures to coded errors. */
  async guard<T>(
    promise: Promise<T>,
    ms: number,
    what: string,
    timeoutCode: Code = 'reader_timeout',
  ): Promise<T> {
    if (this.closed) {
      promise.catch(() => {});
      throw new AgentError('reader_error', `BLE session ended: ${this.reason ?? 'closed'}`);
    }
    try {
      return await Promise.race([withTimeout(promise, ms, what, timeoutCode), this.closedSignal]);
    } catch (err) {
      if (err instanceof AgentError) throw err;
      throw new AgentError('reader_error', `${what} failed: ${errorText(err)}`, {}, { cause: err });
    }
  }
}

// ── module helpers ──────────────────────────────────────────────────────────────

/** The object path of a characteristic node-ble resolved (its fields name each path element). */
function characteristicPath(characteristic: NodeBle.GattCharacteristic): string {
  const parts = ['adapter', 'device', 'service', 'characteristic'].map((k) => Reflect.get(characteristic, k));
  if (!parts.every((p): p is string => typeof p === 'string' && p.length > 0)) {
    throw new AgentError('internal', 'node-ble characteristic without its object path');
  }
  return `/org/bluez/${parts.join('/')}`;
}

function parentPath(path: string): string {
  return path.slice(0, Math.max(0, path.lastIndexOf('/')));
}

function normaliseAddress(address: string): string {
  const upper = address.toUpperCase();
  if (!ADDRESS.test(upper)) throw new AgentError('bad_arguments', `not a Bluetooth address: ${address}`);
  return upper;
}

/** Resolves or rejects like `promise`, or rejects with a coded timeout; never leaves it unhandled. */
function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
  code: Code = 'reader_timeout',
): Promise<T> {
  promise.catch(() => {});
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new AgentError(code, `${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Waits for a promise and returns its error (or undefined), never throwing. */
async function settle(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
    return undefined;
  } catch (err) {
    return err ?? new Error('rejected');
  }
}

function dbusErrorName(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const type: unknown = Reflect.get(err, 'type');
  return typeof type === 'string' ? type : undefined;
}

function errorText(err: unknown): string {
  const name = dbusErrorName(err);
  const message = err instanceof Error ? err.message : String(err);
  return name === undefined ? message : `${name}: ${message}`;
}

function isMessageBus(value: unknown): value is MessageBus {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof Reflect.get(value, 'getProxyObject') === 'function' &&
    typeof Reflect.get(value, 'on') === 'function'
  );
}
