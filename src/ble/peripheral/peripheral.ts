/**
 * The vehicle as a BLE GATT peripheral through BlueZ: exports the phone-key GATT application and
 * the advertisement on the agent's own D-Bus connection, registers them with GattManager1 and
 * LEAdvertisingManager1, registers them again whenever bluetoothd comes back (NameOwnerChanged)
 * or the adapter powers on or reappears, and turns BlueZ's ReadValue / WriteValue calls into calls
 * of a PhoneKeyServicePort, one central (options.device) at a time, with bounded state.
 */
import { DBusError, Message, type MessageBus, sessionBus, systemBus, Variant } from 'dbus-next';
import type { Code } from '../../core/codes.js';
import { AgentError, toAgentError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import type { Health } from '../../core/types.js';
import { dbusErrorName, errorText, withTimeout } from '../bounded-calls.js';
import { BLUEZ, bluezCall, DAEMON, OBJECT_MANAGER, PROPERTIES } from '../dbus-calls.js';
import { CentralTable } from './central-table.js';
import { bluezError, type ExportedApp, exportApp, type GattCalls } from './dbus-objects.js';
import {
  type AppLayout,
  appLayout,
  type CharacteristicName,
  MAX_ATTRIBUTE_BYTES,
  parseCallOptions,
  type VariantLike,
  vehicleAdvertisement,
} from './gatt-layout.js';
import type { CentralRef, PhoneKeyServicePort } from './service-port.js';

export interface BlePeripheralOptions {
  readonly service: PhoneKeyServicePort;
  readonly logger: Logger;
  /** D-Bus system bus address; default DBUS_SYSTEM_BUS_ADDRESS or the system socket. */
  readonly busAddress?: string;
  /** Adapter name; default hci0. */
  readonly adapter?: string;
  /** Empty: the advertisement carries no name (config ble.peripheral.advertisedName). */
  readonly advertisedName?: string;
  /** One call to BlueZ (register, unregister, a property) gives up after this long. */
  readonly callTimeoutMs?: number;
  /** One call into the phone-key service gives up after this long (BlueZ's ATT timeout is 30 s). */
  readonly serviceTimeoutMs?: number;
  /** Centrals with state at once (see CentralTable). */
  readonly maxCentrals?: number;
  /** First retry of a failed registration; doubles up to maxRetryMs. */
  readonly retryMs?: number;
  readonly maxRetryMs?: number;
}

export interface PeripheralStats {
  readonly registrations: number;
  readonly centrals: number;
  readonly inFlight: number;
  readonly reads: number;
  readonly writes: number;
  /** Calls refused because the central (or every slot) was busy. */
  readonly refusedBusy: number;
  /** Calls refused as malformed (no device, bad offset, wrong length, not from BlueZ). */
  readonly refusedInvalid: number;
  readonly notificationsSent: number;
  /** Notifications not sent because BlueZ would have sent them to other centrals too. */
  readonly notificationsWithheld: number;
}

const GATT_MANAGER = 'org.bluez.GattManager1';
const ADVERTISING_MANAGER = 'org.bluez.LEAdvertisingManager1';
const ADAPTER = 'org.bluez.Adapter1';
const DEVICE = 'org.bluez.Device1';
/** Bounds the set of devices seen connected (only used to decide whether a notification is private). */
const MAX_CONNECTED_TRACKED = 256;

/** dbus-next's Message.newError takes the call (its typings say a string). */
const errorReply = Message.newError as unknown as (call: Message, name: string, text: string) => Message;

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

export class BlePeripheral {
  private readonly options: BlePeripheralOptions;
  private readonly log: Logger;
  private readonly layout: AppLayout;
  private readonly adapterPath: string;
  private readonly callTimeoutMs: number;
  private readonly serviceTimeoutMs: number;
  private readonly centrals: CentralTable;
  private readonly connected = new Set<string>();
  private bus: MessageBus | undefined;
  private app: ExportedApp | undefined;
  private bluezOwner: string | undefined;
  private appRegistered = false;
  private advertising = false;
  private notifying = false;
  private lastError: AgentError | undefined;
  private state: Health = { state: 'down', detail: 'not started', since: Date.now() };
  private reconciling: Promise<void> | undefined;
  private again = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryMs: number;
  private stopped = false;
  private offNotify: (() => void) | undefined;
  private readonly counts: Mutable<Omit<PeripheralStats, 'centrals' | 'inFlight'>> = {
    registrations: 0,
    reads: 0,
    writes: 0,
    refusedBusy: 0,
    refusedInvalid: 0,
    notificationsSent: 0,
    notificationsWithheld: 0,
  };
  private readonly registeredListeners = new Set<() => void>();

  constructor(options: BlePeripheralOptions) {
    this.options = options;
    this.log = options.logger.child({ module: 'ble-peripheral' });
    this.layout = appLayout();
    this.adapterPath = `/org/bluez/${options.adapter ?? 'hci0'}`;
    this.callTimeoutMs = options.callTimeoutMs ?? 5000;
    this.serviceTimeoutMs = options.serviceTimeoutMs ?? 5000;
    this.retryMs = options.retryMs ?? 1000;
    this.centrals = new CentralTable({ maxCentrals: options.maxCentrals ?? 16, maxInFlightPerCentral: 2 });
    // Validated here so a bad name is a config error at start, not a refusal from BlueZ later.
    vehicleAdvertisement(options.advertisedName ?? '');
  }

  /**
   * Connects to the bus, exports the objects and makes the first registration attempt. Resolves
   * whether or not BlueZ took them (health() and error() say); registration is retried by itself.
   * Rejects only when the bus itself cannot be used.
   */
  async start(): Promise<void> {
    if (this.bus !== undefined) return;
    this.stopped = false;
    let bus: MessageBus;
    try {
      bus =
        this.options.busAddress === undefined
          ? systemBus()
          : sessionBus({ busAddress: this.options.busAddress });
    } catch (err) {
      throw new AgentError(
        'reader_error',
        `cannot open the D-Bus system bus: ${errorText(err)}`,
        {},
        { cause: err },
      );
    }
    bus.on('error', (err: unknown) => this.log.warn({ err: errorText(err) }, 'D-Bus connection error'));
    this.bus = bus;
    bus.addMethodHandler((msg: Message) => this.guard(bus, msg));
    bus.on('message', (msg: Message) => this.onSignal(msg));
    const advertisement = vehicleAdvertisement(this.options.advertisedName ?? '');
    this.app = exportApp(bus, this.layout, advertisement, this.gattCalls());
    this.offNotify = this.options.service.onNotify((central, _c, bytes) => this.notify(central, bytes));
    try {
      for (const rule of [
        `type='signal',sender='${DAEMON}',interface='${DAEMON}',member='NameOwnerChanged',arg0='${BLUEZ}'`,
        `type='signal',sender='${BLUEZ}',interface='${PROPERTIES}',member='PropertiesChanged',path_namespace='${this.adapterPath}'`,
        `type='signal',sender='${BLUEZ}',interface='${OBJECT_MANAGER}'`,
      ]) {
        await withTimeout(this.daemonCall('AddMatch', 's', [rule]), this.callTimeoutMs, 'AddMatch');
      }
      this.bluezOwner = await this.currentOwner();
    } catch (err) {
      await this.stop();
      throw new AgentError(
        'reader_error',
        `cannot use the D-Bus system bus: ${errorText(err)}`,
        {},
        { cause: err },
      );
    }
    await this.reconcile();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    await this.reconciling;
    const bus = this.bus;
    if (bus === undefined) return;
    if (this.bluezOwner !== undefined) {
      // Best effort: bluetoothd also drops both when this connection closes.
      if (this.advertising)
        await this.quietly(ADVERTISING_MANAGER, 'UnregisterAdvertisement', this.layout.advertisementPath);
      if (this.appRegistered) await this.quietly(GATT_MANAGER, 'UnregisterApplication', this.layout.root);
    }
    this.appRegistered = false;
    this.advertising = false;
    this.forgetCentrals();
    this.offNotify?.();
    this.app?.unexport();
    this.app = undefined;
    this.bus = undefined;
    bus.disconnect();
    this.setHealth({ state: 'down', detail: 'stopped' });
  }

  health(): Health {
    return this.state;
  }

  /** Why the last registration attempt failed (adapter_missing, adapter_off, bluez_refused, …). */
  error(): AgentError | undefined {
    return this.lastError;
  }

  get registered(): boolean {
    return this.appRegistered && this.advertising;
  }

  /** Called each time both objects become registered (tests wait on it). */
  onRegistered(listener: () => void): () => void {
    this.registeredListeners.add(listener);
    return () => this.registeredListeners.delete(listener);
  }

  stats(): PeripheralStats {
    return { ...this.counts, centrals: this.centrals.size, inFlight: this.centrals.inFlight() };
  }

  // ── registration ─────────────────────────────────────────────────────────────

  /** Brings the registrations up to date; one run at a time, a request meanwhile runs it again. */
  private reconcile(): Promise<void> {
    if (this.reconciling !== undefined) {
      this.again = true;
      return this.reconciling;
    }
    this.reconciling = (async () => {
      do {
        this.again = false;
        await this.registerOnce();
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.reconciling = undefined;
    });
    return this.reconciling;
  }

  private async registerOnce(): Promise<void> {
    if (this.stopped || this.bus === undefined) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    try {
      if (this.bluezOwner === undefined) {
        throw new AgentError('adapter_missing', 'org.bluez has no owner on the bus (is bluetoothd running?)');
      }
      const powered = await this.adapterPowered();
      if (!powered) throw new AgentError('adapter_off', `adapter ${this.adapterPath} is powered off`);
      const wasRegistered = this.registered;
      if (!this.appRegistered) {
        await this.register(GATT_MANAGER, 'RegisterApplication', this.layout.root, 'the GATT application');
        this.appRegistered = true;
      }
      if (!this.advertising) {
        await this.register(
          ADVERTISING_MANAGER,
          'RegisterAdvertisement',
          this.layout.advertisementPath,
          'the advertisement',
        );
        this.advertising = true;
      }
      this.lastError = undefined;
      this.retryMs = this.options.retryMs ?? 1000;
      this.setHealth({
        state: 'ok',
        detail: `advertising on ${this.adapterPath.slice('/org/bluez/'.length)}`,
      });
      if (wasRegistered) return;
      this.counts.registrations += 1;
      this.log.info({ adapter: this.adapterPath }, 'GATT application and advertisement registered');
      for (const listener of this.registeredListeners) listener();
    } catch (err) {
      const e = toAgentError(err, 'bluez_refused');
      this.lastError = e;
      this.setHealth({
        state: this.appRegistered ? 'degraded' : 'down',
        detail: `${e.code}: ${e.message}`,
      });
      this.log.warn({ code: e.code, err: e.message }, 'BLE peripheral not registered');
      // A powered-off adapter or an absent bluetoothd announce their return; retry slowly anyway.
      this.scheduleRetry();
    }
  }

  private scheduleRetry(): void {
    if (this.stopped || this.retryTimer !== undefined) return;
    const delay = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, this.options.maxRetryMs ?? 30_000);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.reconcile();
    }, delay);
    this.retryTimer.unref();
  }

  private async adapterPowered(): Promise<boolean> {
    try {
      const [value] = await withTimeout(
        this.call(this.adapterPath, PROPERTIES, 'Get', 'ss', [ADAPTER, 'Powered']),
        this.callTimeoutMs,
        'Adapter1.Powered',
      );
      return value instanceof Variant && value.value === true;
    } catch (err) {
      const name = dbusErrorName(err);
      if (
        name !== undefined &&
        name !== 'org.freedesktop.DBus.Error.NoReply' &&
        name !== 'org.freedesktop.DBus.Error.AccessDenied'
      ) {
        throw new AgentError(
          'adapter_missing',
          `no adapter ${this.adapterPath}: ${errorText(err)}`,
          {},
          { cause: err },
        );
      }
      throw err;
    }
  }

  private async register(iface: string, member: string, path: string, what: string): Promise<void> {
    try {
      await withTimeout(
        this.call(this.adapterPath, iface, member, 'oa{sv}', [path, {}]),
        this.callTimeoutMs,
        member,
      );
    } catch (err) {
      const name = dbusErrorName(err);
      if (name === 'org.bluez.Error.AlreadyExists') return;
      if (
        name === 'org.freedesktop.DBus.Error.UnknownObject' ||
        name === 'org.freedesktop.DBus.Error.UnknownMethod'
      ) {
        throw new AgentError(
          'adapter_missing',
          `adapter ${this.adapterPath} cannot take ${what}: ${errorText(err)}`,
          {},
          { cause: err },
        );
      }
      throw new AgentError('bluez_refused', `BlueZ refused ${what}: ${errorText(err)}`, {}, { cause: err });
    }
  }

  private async quietly(iface: string, member: string, path: string): Promise<void> {
    try {
      await withTimeout(this.call(this.adapterPath, iface, member, 'o', [path]), this.callTimeoutMs, member);
    } catch (err) {
      this.log.debug({ err: errorText(err) }, `${member} failed`);
    }
  }

  private call(
    path: string,
    iface: string,
    member: string,
    signature: string,
    body: unknown[],
  ): Promise<unknown[]> {
    const bus = this.bus;
    if (bus === undefined) return Promise.reject(new AgentError('reader_error', 'the peripheral is stopped'));
    return bluezCall(bus, path, iface, member, signature, body);
  }

  private async daemonCall(member: string, signature: string, body: unknown[]): Promise<unknown[]> {
    const bus = this.bus;
    if (bus === undefined) throw new AgentError('reader_error', 'the peripheral is stopped');
    const reply = await bus.call(
      new Message({
        destination: DAEMON,
        path: '/org/freedesktop/DBus',
        interface: DAEMON,
        member,
        signature,
        body,
      }),
    );
    return reply?.body ?? [];
  }

  private async currentOwner(): Promise<string | undefined> {
    try {
      const [owner] = await withTimeout(
        this.daemonCall('GetNameOwner', 's', [BLUEZ]),
        this.callTimeoutMs,
        'GetNameOwner',
      );
      return typeof owner === 'string' ? owner : undefined;
    } catch (err) {
      if (dbusErrorName(err) === 'org.freedesktop.DBus.Error.NameHasNoOwner') return undefined;
      throw err;
    }
  }

  // ── BlueZ's signals ──────────────────────────────────────────────────────────

  private onSignal(msg: Message): void {
    if (msg.type !== 4 /* SIGNAL */ || this.stopped) return;
    if (msg.interface === DAEMON && msg.member === 'NameOwnerChanged' && msg.body[0] === BLUEZ) {
      const owner = msg.body[2];
      this.bluezLost();
      this.bluezOwner = typeof owner === 'string' && owner !== '' ? owner : undefined;
      void this.reconcile();
      return;
    }
    if (msg.sender !== this.bluezOwner) return;
    if (msg.interface === PROPERTIES && msg.member === 'PropertiesChanged') {
      const [iface, changed] = msg.body as [unknown, Record<string, VariantLike> | undefined];
      const path = msg.path ?? '';
      if (iface === ADAPTER && path === this.adapterPath && changed?.Powered !== undefined) {
        if (changed.Powered.value === true) {
          void this.reconcile();
        } else {
          // Powered off: links drop and BlueZ stops advertising; register again on power-on.
          this.bluezLost();
          this.lastError = new AgentError('adapter_off', `adapter ${this.adapterPath} is powered off`);
          this.setHealth({ state: 'down', detail: `adapter_off: ${this.lastError.message}` });
        }
      } else if (iface === DEVICE && changed?.Connected !== undefined) {
        if (changed.Connected.value === true) {
          if (this.connected.size < MAX_CONNECTED_TRACKED) this.connected.add(path);
        } else {
          this.centralGone(path);
        }
      }
      return;
    }
    if (msg.interface === OBJECT_MANAGER) {
      const path = msg.body[0];
      if (typeof path !== 'string') return;
      if (msg.member === 'InterfacesRemoved') {
        const removed = msg.body[1];
        if (!Array.isArray(removed)) return;
        if (path === this.adapterPath && removed.includes(ADAPTER)) {
          this.bluezLost();
          this.lastError = new AgentError('adapter_missing', `adapter ${this.adapterPath} went away`);
          this.setHealth({ state: 'down', detail: `adapter_missing: ${this.lastError.message}` });
        } else if (removed.includes(DEVICE)) {
          this.centralGone(path);
        }
      } else if (msg.member === 'InterfacesAdded' && path === this.adapterPath) {
        void this.reconcile();
      }
    }
  }

  /** BlueZ forgot us (restart, adapter off or gone): registrations, links and subscriptions go. */
  private bluezLost(): void {
    this.appRegistered = false;
    this.advertising = false;
    this.notifying = false;
    for (const c of this.app?.characteristics.values() ?? []) c.resetNotifying();
    this.forgetCentrals();
  }

  private forgetCentrals(): void {
    this.connected.clear();
    for (const central of this.centrals.clear()) this.tellDisconnected(central);
  }

  private centralGone(device: string): void {
    this.connected.delete(device);
    const central = this.centrals.remove(device);
    if (central !== undefined) this.tellDisconnected(central);
  }

  private tellDisconnected(central: CentralRef): void {
    try {
      this.options.service.disconnected(central);
    } catch (err) {
      this.log.warn({ err: errorText(err) }, 'phone-key service failed on a disconnect');
    }
  }

  private setHealth(next: Omit<Health, 'since'>): void {
    if (this.state.state === next.state && this.state.detail === next.detail) return;
    this.state = { ...next, since: Date.now() };
  }

  /**
   * Calls on the application's objects from anyone but bluetoothd are refused before dbus-next
   * dispatches them: options.device is only to be believed from BlueZ.
   */
  private guard(bus: MessageBus, msg: Message): boolean {
    const path = msg.path ?? '';
    if (path !== this.layout.root && !path.startsWith(`${this.layout.root}/`)) return false;
    if (this.bluezOwner !== undefined && msg.sender === this.bluezOwner) return false;
    if (msg.interface === 'org.freedesktop.DBus.Introspectable') return false;
    this.counts.refusedInvalid += 1;
    bus.send(
      errorReply(
        msg,
        'org.freedesktop.DBus.Error.AccessDenied',
        'only bluetoothd may call the GATT application',
      ),
    );
    return true;
  }

  // ── GATT calls from BlueZ ─────────────────────────────────────────────────────

  private gattCalls(): GattCalls {
    return {
      readValue: (name, options) => this.readValue(name, options),
      writeValue: (name, value, options) => this.writeValue(name, value, options),
      startNotify: (name) => {
        if (name === 'result') this.notifying = true;
      },
      stopNotify: (name) => {
        if (name === 'result') this.notifying = false;
      },
      released: () => {
        this.advertising = false;
        if (!this.stopped) this.scheduleRetry();
      },
    };
  }

  private admit(options: Readonly<Record<string, VariantLike | undefined>>): {
    central: CentralRef;
    offset: number;
    type: string | undefined;
  } {
    const parsed = parseCallOptions(options);
    if ('refused' in parsed) {
      this.counts.refusedInvalid += 1;
      throw bluezError(parsed.refused, parsed.reason);
    }
    const admission = this.centrals.begin(parsed.device, parsed.address, parsed.mtu);
    if (!admission.admitted) {
      this.counts.refusedBusy += 1;
      throw bluezError(
        'InProgress',
        admission.reason === 'central_busy' ? 'Operation already in progress' : 'Too many centrals',
      );
    }
    if (this.connected.size < MAX_CONNECTED_TRACKED) this.connected.add(parsed.device);
    for (const evicted of admission.evicted) this.tellDisconnected(evicted);
    return { central: admission.central, offset: parsed.offset, type: parsed.type };
  }

  private async readValue(
    name: CharacteristicName,
    options: Readonly<Record<string, VariantLike | undefined>>,
  ): Promise<Buffer> {
    if (name === 'answer') throw bluezError('NotPermitted', 'Read Not Permitted');
    const { central, offset } = this.admit(options);
    try {
      this.counts.reads += 1;
      let value: Uint8Array | undefined;
      if (offset === 0) {
        // A read from the start is a new read (a fresh challenge); an offset continues the last.
        value = await withTimeout(
          this.options.service.read(central, name),
          this.serviceTimeoutMs,
          `read ${name}`,
        );
        if (value.length > MAX_ATTRIBUTE_BYTES) throw bluezError('Failed', 'value too long');
        if (this.centrals.has(central.device)) this.centrals.remember(central.device, name, value);
      } else {
        value = this.centrals.recalled(central.device, name);
      }
      if (value === undefined || offset > value.length) throw bluezError('InvalidOffset', 'Invalid Offset');
      return Buffer.from(value.subarray(offset));
    } catch (err) {
      throw this.asBluezError(err);
    } finally {
      this.centrals.finish(central.device);
    }
  }

  private async writeValue(
    name: CharacteristicName,
    value: Buffer,
    options: Readonly<Record<string, VariantLike | undefined>>,
  ): Promise<void> {
    if (name !== 'answer') throw bluezError('NotPermitted', 'Write Not Permitted');
    const parsed = parseCallOptions(options);
    if (!('refused' in parsed)) {
      if (parsed.type === 'command') {
        this.counts.refusedInvalid += 1;
        throw bluezError('NotPermitted', 'Write Without Response Not Permitted');
      }
      if (parsed.offset !== 0) {
        this.counts.refusedInvalid += 1;
        throw bluezError('InvalidOffset', 'Invalid Offset');
      }
      if (value.length === 0 || value.length > MAX_ATTRIBUTE_BYTES) {
        this.counts.refusedInvalid += 1;
        throw bluezError('InvalidValueLength', 'Invalid Value Length');
      }
    }
    const { central } = this.admit(options);
    try {
      this.counts.writes += 1;
      await withTimeout(
        this.options.service.write(central, 'answer', Uint8Array.from(value)),
        this.serviceTimeoutMs,
        'write answer',
      );
    } catch (err) {
      throw this.asBluezError(err);
    } finally {
      this.centrals.finish(central.device);
    }
  }

  /** The service's refusals as the ATT errors BlueZ maps them to; nothing else leaks. */
  private asBluezError(err: unknown): DBusError {
    if (err instanceof DBusError) return err;
    const e = toAgentError(err);
    const code: Code = e.code;
    if (code === 'malformed' || code === 'frame_too_large') return bluezError('InvalidValueLength', code);
    if (code === 'reader_timeout') return bluezError('Failed', code);
    if (code === 'internal') {
      this.log.error({ err: e.message }, 'phone-key service failed');
      return bluezError('Failed', 'internal');
    }
    return bluezError('NotPermitted', code);
  }

  /**
   * BlueZ's D-Bus API has no per-device notification: a Value change goes to every central that
   * enabled the result's CCCD. So a result is notified only while its central is the only one
   * connected; otherwise the page reads it (it always can).
   */
  private notify(central: CentralRef, bytes: Uint8Array): void {
    const result = this.app?.characteristics.get('result');
    if (result === undefined || !this.notifying) return;
    if (this.connected.size !== 1 || !this.connected.has(central.device)) {
      this.counts.notificationsWithheld += 1;
      return;
    }
    this.counts.notificationsSent += 1;
    result.notify(bytes);
  }
}
