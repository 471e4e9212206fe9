/**
 * Keeps the BLE central discovering: the bus connection (bus-connection.ts), BlueZ on it, the
 * adapter powered and our discovery session running, with a backoff when one of them is missing
 * and recovery when one goes away (bluetoothd restarts, the adapter is removed or powered off,
 * the bus connection drops or is recycled). It dispatches BlueZ's signals: devices to the device
 * table and the scanner, GATT news to the connector, losses to the link's sessions (host).
 */
import { type ClientInterface, type Message, MessageType, Variant } from 'dbus-next';
import type { Clock } from '../core/clock.js';
import { toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Health, HealthState } from '../core/types.js';
import {
  ADAPTER_IFACE,
  changedBoolean,
  changedNumber,
  DEVICE_IFACE,
  DeviceTable,
  GATT_CHARACTERISTIC_IFACE,
  hasAdapter,
} from './bluez-model.js';
import { dbusErrorName, errorText, settle, withTimeout } from './bounded-calls.js';
import {
  type AdapterState,
  type BusConnection,
  bluezOwner,
  closeBusConnection,
  openBusConnection,
} from './bus-connection.js';
import type { BleCloseReason } from './channel.js';
import { BLUEZ, DAEMON, OBJECT_MANAGER, PROPERTIES, proxyCall } from './dbus-calls.js';
import type { GattConnector } from './gatt-connect.js';
import type { ResolvedLinkOptions } from './link-options.js';
import { Backoff } from './link-policy.js';
import type { CandidateScanner } from './scanner.js';

/** What discovery tells the link about its sessions. */
export interface DiscoveryHost {
  /** Sessions open now (the bus is recycled only when there are none). */
  readonly sessionCount: number;
  /** Something every session relied on went away. */
  abortSessions(reason: BleCloseReason): void;
  abortSession(address: string, reason: BleCloseReason): void;
  /** BlueZ removed the device: its session ends, the gate forgets it. */
  vanished(address: string): void;
}

export interface DiscoveryOptions {
  readonly options: ResolvedLinkOptions;
  readonly busAddress: string | undefined;
  /** Adapter name (hci0…); default the first adapter BlueZ lists. */
  readonly adapterName: string | undefined;
  readonly log: Logger;
  readonly clock: Pick<Clock, 'now'>;
  readonly connector: GattConnector;
  readonly scanner: CandidateScanner;
  readonly host: DiscoveryHost;
}

export class Discovery {
  private readonly options: ResolvedLinkOptions;
  private readonly busAddress: string | undefined;
  private readonly adapterName: string | undefined;
  private readonly log: Logger;
  private readonly clock: Pick<Clock, 'now'>;
  private readonly connector: GattConnector;
  private readonly scanner: CandidateScanner;
  private readonly host: DiscoveryHost;
  private readonly backoff: Backoff;
  private readonly counters = { initialisations: 0, busConnections: 0 };
  private runningNow = false;
  private connNow: BusConnection | undefined;
  private bluezOwner: string | undefined;
  private adapterNow: AdapterState | undefined;
  /** Adapter powered and our discovery session running: candidates may be offered. */
  private readyNow = false;
  /** Bumped on every loss (BlueZ, adapter, bus): an initialisation in flight then gives up. */
  private epoch = 0;
  private initRunning = false;
  private initAgain = false;
  private initTimer: NodeJS.Timeout | undefined;
  private state: Health;

  constructor(init: DiscoveryOptions) {
    this.options = init.options;
    this.busAddress = init.busAddress;
    this.adapterName = init.adapterName;
    this.log = init.log;
    this.clock = init.clock;
    this.connector = init.connector;
    this.scanner = init.scanner;
    this.host = init.host;
    this.backoff = new Backoff(this.options.retryInitialMs, this.options.retryMaxMs);
    this.state = { state: 'down', detail: 'not started', since: this.clock.now() };
  }

  get running(): boolean {
    return this.runningNow;
  }

  get ready(): boolean {
    return this.readyNow;
  }

  get adapter(): AdapterState | undefined {
    return this.adapterNow;
  }

  get conn(): BusConnection | undefined {
    return this.connNow;
  }

  health(): Health {
    return this.state;
  }

  stats(): { readonly initialisations: number; readonly busConnections: number } {
    return { ...this.counters };
  }

  /** Resolves after the first attempt whatever its outcome; a failure is retried. */
  async start(): Promise<void> {
    if (this.runningNow) return;
    this.runningNow = true;
    await this.initialise();
  }

  /** First half of stopping: nothing is retried any more, an initialisation in flight gives up. */
  halt(): void {
    this.runningNow = false;
    clearTimeout(this.initTimer);
    this.epoch += 1;
  }

  /** Second half, once the sessions have ended: stops our discovery and closes the bus. */
  async close(): Promise<void> {
    const adapter = this.adapterNow;
    if (this.readyNow && adapter !== undefined) {
      await settle(this.call(adapter.iface, 'StopDiscovery'));
    }
    this.readyNow = false;
    this.dropBus();
    this.setHealth('down', 'stopped');
  }

  private async initialise(): Promise<void> {
    if (!this.runningNow) return;
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
      if (this.runningNow && !this.readyNow)
        this.setHealth(this.connNow === undefined ? 'down' : 'degraded', error.message);
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
    const stale = (): boolean => epoch !== this.epoch || !this.runningNow;
    const owner = await withTimeout(bluezOwner(conn, timeout), timeout, 'GetNameOwner');
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
    this.adapterNow = { name, path, adapter, iface, table };
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
    this.readyNow = true;
    this.setHealth('ok', `discovering on ${name}`);
    this.log.info({ adapter: name }, 'BLE link discovering');
    return undefined;
  }

  private scheduleInit(delayMs: number): void {
    if (!this.runningNow) return;
    clearTimeout(this.initTimer);
    this.initTimer = setTimeout(() => void this.initialise(), delayMs);
  }

  private async ensureBus(): Promise<BusConnection> {
    if (this.connNow !== undefined) return this.connNow;
    const conn = await openBusConnection({
      busAddress: this.busAddress,
      callTimeoutMs: this.options.callTimeoutMs,
      onMessage: (from, msg) => {
        if (from === this.connNow) this.onSignal(msg);
      },
      onError: (from, err) => this.onBusError(from, err),
    });
    this.connNow = conn;
    this.counters.busConnections += 1;
    return conn;
  }

  private dropBus(): void {
    const conn = this.connNow;
    this.connNow = undefined;
    this.adapterNow = undefined;
    this.bluezOwner = undefined;
    this.readyNow = false;
    if (conn === undefined) return;
    closeBusConnection(conn);
  }

  /** Reconnects to the bus when idle and due (node-ble's match rules only go with the connection). */
  maybeRecycle(): void {
    const conn = this.connNow;
    if (conn === undefined || !this.runningNow || this.host.sessionCount > 0) return;
    if (!conn.exhausted && conn.sessionsServed < this.options.recycleAfterSessions) return;
    this.log.info({ sessions: conn.sessionsServed, exhausted: conn.exhausted }, 'reconnecting to D-Bus');
    this.epoch += 1;
    this.dropBus();
    this.setHealth('degraded', 'reconnecting to D-Bus');
    void this.initialise();
  }

  private onBusError(conn: BusConnection, err: unknown): void {
    if (conn !== this.connNow) return;
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
    this.readyNow = false;
    this.host.abortSessions(reason);
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
    const adapter = this.adapterNow;
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
        this.connector.characteristicChanged(msg.path, changed);
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
        if (rssi !== undefined && rssi >= this.options.rssiThreshold) this.scanner.lookUp(adapter, msg.path);
        return;
      }
      if (change.connected === false) this.host.abortSession(change.device.address, 'disconnected');
      this.connector.wakePath(msg.path);
      if (change.sighted) this.scanner.sighted(change.device);
    }
  }

  private onBluezOwner(oldOwner: string, newOwner: string): void {
    if (!this.runningNow) return;
    if (oldOwner !== '') {
      // bluetoothd exited or restarted: every object it exported is gone with it.
      this.log.warn('org.bluez left the bus');
      this.adapterNow = undefined;
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
    const adapter = this.adapterNow;
    if (hasAdapter(interfaces)) {
      if (!this.readyNow) this.scheduleInit(0);
      return;
    }
    if (adapter === undefined) return;
    const device = adapter.table.added(path, interfaces);
    if (device === undefined) return;
    this.connector.wakePath(path);
    this.scanner.added(adapter, device);
  }

  private onInterfacesRemoved(path: string, interfaces: readonly unknown[]): void {
    const adapter = this.adapterNow;
    if (adapter === undefined) return;
    if (path === adapter.path && interfaces.includes(ADAPTER_IFACE)) {
      this.adapterNow = undefined;
      this.lose('adapter-off', 'down', `adapter ${adapter.name} was removed`);
      this.scheduleInit(this.backoff.next());
      return;
    }
    const device = adapter.table.removed(path, interfaces);
    if (device === undefined) return;
    this.host.vanished(device.address);
    this.connector.forgetPath(path);
  }

  private onAdapterChanged(adapter: AdapterState, changed: unknown): void {
    const powered = changedBoolean(changed, 'Powered');
    if (powered === false) {
      this.log.warn({ adapter: adapter.name }, 'adapter powered off');
      this.lose('adapter-off', 'degraded', `adapter ${adapter.name} is powered off`);
      return;
    }
    if (powered === true && !this.readyNow) {
      this.log.info({ adapter: adapter.name }, 'adapter powered on');
      this.backoff.reset();
      this.scheduleInit(0);
      return;
    }
    if (changedBoolean(changed, 'Discovering') === false && this.readyNow) {
      // Discovery is shared: false means our session is gone too.
      this.readyNow = false;
      this.setHealth('degraded', `discovery stopped on ${adapter.name}; restarting it`);
      this.scheduleInit(0);
    }
  }

  private setHealth(state: HealthState, detail: string): void {
    if (this.state.state === state && this.state.detail === detail) return;
    const since = this.state.state === state ? this.state.since : this.clock.now();
    this.state = { state, detail, since };
  }

  private call(iface: ClientInterface, member: string, ...args: unknown[]): Promise<unknown> {
    return proxyCall(iface, this.options.callTimeoutMs, member, ...args);
  }
}
