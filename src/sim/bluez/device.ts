import type { Logger } from '../../core/logger.js';
import type { GattPeer } from '../ble/gatt-peer.js';
import { bluezError, type Variant } from './dbus.js';
import { BluezInterface, configure } from './interfaces.js';
import type { ObjectTree } from './object-tree.js';
import type {
  DeviceFaults,
  DeviceSpec,
  DeviceStats,
  LinkDelays,
  StandInDevice,
  StandInEvent,
} from './types.js';

/** What a simulated device needs from the stand-in that hosts it. */
export interface DeviceHost {
  readonly adapterPath: string;
  readonly tree: ObjectTree;
  readonly log: Logger;
  adapterPowered(): boolean;
  /** Whether a discovery session currently reports this device, and streams its adverts. */
  discovery(device: SimDevice): { readonly reports: boolean; readonly streams: boolean };
  emit(event: StandInEvent): void;
}

/** BlueZ's attribute value limit (ATT): longer writes are refused. */
const MAX_ATTRIBUTE_BYTES = 512;
/** BlueZ reports RSSI changes of at least this much when no discovery filter is set. */
const RSSI_DELTA_THRESHOLD = 8;

export function devicePath(adapterPath: string, address: string): string {
  return `${adapterPath}/dev_${address.toUpperCase().replace(/:/g, '_')}`;
}

/**
 * One simulated phone or fob: its Device1 object (exported while BlueZ "has seen" it), and,
 * while connected, a GattService1 with a write and a notify GattCharacteristic1 wired to a
 * GattPeer.
 */
export class SimDevice implements StandInDevice {
  readonly address: string;
  readonly path: string;
  private readonly spec: DeviceSpec;
  private readonly host: DeviceHost;
  private readonly peer: GattPeer;
  private readonly device1: Device1;
  private readonly gatt: { service: GattService1; write: GattCharacteristic1; notify: GattCharacteristic1 };

  inRange = true;
  connected = false;
  servicesResolved = false;
  notifying = false;
  paired = false;
  rssi: number;
  lastWriteType: string | undefined;
  faults: DeviceFaults;
  private delays: LinkDelays;
  private connecting = false;
  /** Bumped whenever the link drops or a pending Connect is aborted: in-flight calls see it. */
  private linkEpoch = 0;
  private readonly aborters = new Set<() => void>();
  private staleServicesResolvedGet = false;
  private resolveTimer: NodeJS.Timeout | undefined;
  private advertTimer: NodeJS.Timeout | undefined;
  private notifyChain: Promise<void> = Promise.resolve();
  /** Set by the vanish fault: the device is going, and sends nothing more. */
  private leaving = false;
  private readonly callCounts = new Map<string, number>();
  private readonly counters = {
    connects: 0,
    connectFailures: 0,
    disconnects: 0,
    writes: 0,
    notificationsSent: 0,
    notificationsDropped: 0,
    modelledDelayMs: 0,
    waitedMs: 0,
  };

  constructor(host: DeviceHost, spec: DeviceSpec) {
    this.host = host;
    this.spec = spec;
    this.address = spec.address.toUpperCase();
    this.path = devicePath(host.adapterPath, this.address);
    this.peer = spec.peer;
    this.rssi = spec.rssi ?? -50;
    this.faults = { ...(spec.faults ?? {}) };
    const base = spec.linkDelayMs ?? 0;
    this.delays = {
      connectMs: base,
      startNotifyMs: base,
      writeMs: base,
      notifyMs: base,
      disconnectMs: base,
      ...(spec.delays ?? {}),
    };
    this.device1 = new Device1(this);
    const servicePath = `${this.path}/service000a`;
    const mtu = spec.mtu ?? 247;
    this.gatt = {
      service: new GattService1(
        spec.gattServiceUuid ?? spec.serviceUuids[0] ?? spec.writeUuid,
        this.path,
        0x0a,
      ),
      write: new GattCharacteristic1(this, {
        role: 'write',
        uuid: spec.writeUuid,
        servicePath,
        handle: 0x0b,
        flags: ['write', 'write-without-response'],
        mtu,
      }),
      notify: new GattCharacteristic1(this, {
        role: 'notify',
        uuid: spec.notifyUuid,
        servicePath,
        handle: 0x0d,
        flags: ['notify'],
        mtu,
      }),
    };
    this.peer.notify = (bytes) => this.queueNotification(bytes);
  }

  // ── StandInDevice ─────────────────────────────────────────────────────────────

  get exported(): boolean {
    return this.host.tree.has(this.path);
  }

  get stats(): DeviceStats {
    return { ...this.counters };
  }

  get name(): string {
    return this.spec.name ?? 'Vehicle key';
  }

  get addressType(): string {
    return this.spec.addressType ?? 'random';
  }

  get txPower(): number {
    return this.spec.txPower ?? 0;
  }

  get advertisingIntervalMs(): number {
    return this.spec.advertisingIntervalMs ?? 100;
  }

  get advertisedUuids(): readonly string[] {
    return this.spec.serviceUuids.map((u) => u.toLowerCase());
  }

  setFaults(faults: DeviceFaults): void {
    this.faults = { ...this.faults, ...faults };
  }

  setDelays(delays: Partial<LinkDelays>): void {
    this.delays = { ...this.delays, ...delays };
  }

  setRssi(rssi: number): void {
    const before = this.rssi;
    this.rssi = rssi;
    if (this.exported && Math.abs(rssi - before) >= RSSI_DELTA_THRESHOLD)
      this.device1.changed({ RSSI: rssi });
  }

  setInRange(inRange: boolean): void {
    if (inRange) this.leaving = false;
    if (this.inRange === inRange) return;
    this.inRange = inRange;
    if (inRange) {
      this.refreshDiscovery();
    } else {
      this.vanish();
    }
  }

  dropLink(): void {
    this.abortPending();
    if (this.connected) this.linkDown();
  }

  calls(): Readonly<Record<string, number>> {
    return Object.fromEntries(this.callCounts);
  }

  callCount(): number {
    let n = 0;
    for (const v of this.callCounts.values()) n += v;
    return n;
  }

  resetCalls(): void {
    this.callCounts.clear();
  }

  // ── driven by the stand-in ───────────────────────────────────────────────────

  countCall(key: string): void {
    this.callCounts.set(key, (this.callCounts.get(key) ?? 0) + 1);
  }

  /** Discovery sessions or filters changed, or the device came into range: appear or stream. */
  refreshDiscovery(): void {
    const { reports, streams } = this.host.discovery(this);
    if (!this.inRange || !reports) {
      this.stopAdvertising();
      return;
    }
    if (!this.exported) {
      this.host.tree.add(this.path, [this.device1]);
      this.host.emit({ type: 'device-seen', address: this.address });
    }
    if (streams) this.startAdvertising();
    else this.stopAdvertising();
  }

  /** Adapter1.RemoveDevice, power-off or out of range: drop the link and the object. */
  forget(): void {
    this.abortPending();
    if (this.connected) this.linkDown();
    this.stopAdvertising();
    if (this.exported) {
      this.host.tree.remove(this.path);
      this.host.emit({ type: 'device-gone', address: this.address });
    }
  }

  /** Answers a Properties.Get of Device1.ServicesResolved when it must be stale (fault). */
  takeStaleServicesResolved(): boolean {
    if (!this.staleServicesResolvedGet) return false;
    this.staleServicesResolvedGet = false;
    return true;
  }

  dispose(): void {
    this.forget();
    clearTimeout(this.resolveTimer);
    this.peer.notify = () => {};
  }

  // ── Device1 ──────────────────────────────────────────────────────────────────

  async connect(): Promise<void> {
    if (!this.host.adapterPowered()) throw bluezError('NotReady', 'Resource Not Ready');
    if (this.connected) return;
    if (this.connecting) throw bluezError('InProgress', 'In Progress');
    this.connecting = true;
    try {
      const epoch = this.linkEpoch;
      if (!(await this.delay(this.delays.connectMs, epoch))) throw aborted();
      const failures = this.faults.connectFailures;
      if (failures === 'always' || (typeof failures === 'number' && failures > 0)) {
        if (typeof failures === 'number') this.faults = { ...this.faults, connectFailures: failures - 1 };
        this.counters.connectFailures += 1;
        throw bluezError('Failed', 'le-connection-abort-by-local');
      }
      if (this.faults.connectHangs === true) {
        await this.untilAborted();
        throw aborted();
      }
      this.linkUp();
    } finally {
      this.connecting = false;
    }
  }

  async disconnect(): Promise<void> {
    if (this.connecting) {
      // A Disconnect while connecting cancels the attempt, as in BlueZ.
      this.abortPending();
      return;
    }
    if (!this.connected) throw bluezError('NotConnected', 'Not Connected');
    const epoch = this.linkEpoch;
    await this.delay(this.delays.disconnectMs, epoch);
    if (this.connected) this.linkDown();
  }

  async pair(): Promise<void> {
    if (!this.host.adapterPowered()) throw bluezError('NotReady', 'Resource Not Ready');
    if (this.paired) throw bluezError('AlreadyExists', 'Already Exists');
    this.paired = true;
    this.device1.changed({ Paired: true });
  }

  // ── GATT ─────────────────────────────────────────────────────────────────────

  async writeValue(value: Uint8Array, options: Record<string, Variant>): Promise<void> {
    const type = stringOption(options, 'type') ?? 'request';
    const offset = numberOption(options, 'offset') ?? 0;
    if (type !== 'request' && type !== 'command' && type !== 'reliable') {
      throw bluezError('InvalidArguments', `Invalid write type: ${type}`);
    }
    // BlueZ refuses a reliable write unless the characteristic has the reliable-write extended
    // property; node-ble's writeValue() asks for exactly that by default.
    if (type === 'reliable') throw bluezError('NotSupported', 'Reliable write not supported');
    if (offset !== 0) throw bluezError('InvalidOffset', 'Invalid offset');
    if (value.length > MAX_ATTRIBUTE_BYTES) throw bluezError('InvalidValueLength', 'Invalid Length');
    if (!this.connected) throw bluezError('Failed', 'Not connected');
    const epoch = this.linkEpoch;
    if (!(await this.delay(this.delays.writeMs, epoch)) || !this.connected) {
      throw bluezError('Failed', 'Not connected');
    }
    this.lastWriteType = type;
    this.counters.writes += 1;
    this.host.emit({ type: 'write', address: this.address, bytes: value.length });
    this.peer.onWrite(Uint8Array.from(value));
    const vanishAfter = this.faults.vanishAfterWrites;
    if (vanishAfter !== undefined) {
      if (vanishAfter <= 1) {
        const { vanishAfterWrites: _, ...rest } = this.faults;
        this.faults = rest;
        // After the write response: the device leaves while the central waits for an answer.
        // From this moment nothing it would still send reaches the central (no race with its reply).
        this.leaving = true;
        setImmediate(() => this.setInRange(false));
      } else {
        this.faults = { ...this.faults, vanishAfterWrites: vanishAfter - 1 };
      }
    }
  }

  async startNotify(): Promise<void> {
    if (!this.connected) throw bluezError('Failed', 'Not connected');
    if (this.notifying) return;
    const epoch = this.linkEpoch;
    if (!(await this.delay(this.delays.startNotifyMs, epoch)) || !this.connected) {
      throw bluezError('Failed', 'Not connected');
    }
    this.notifying = true;
    this.gatt.notify.changed({ Notifying: true });
    this.peer.onSubscribe?.(true);
  }

  async stopNotify(): Promise<void> {
    if (!this.notifying) throw bluezError('Failed', 'No notify session started');
    this.notifying = false;
    this.gatt.notify.changed({ Notifying: false });
    this.peer.onSubscribe?.(false);
  }

  // ── internals ────────────────────────────────────────────────────────────────

  private linkUp(): void {
    this.connected = true;
    this.counters.connects += 1;
    const { service, write, notify } = this.gatt;
    const servicePath = `${this.path}/service000a`;
    const announce = this.faults.gattUnannounced !== true;
    this.host.tree.add(servicePath, [service], announce);
    this.host.tree.add(`${servicePath}/char000b`, [write], announce);
    this.host.tree.add(`${servicePath}/char000d`, [notify], announce);
    // The ATT MTU exchange happens as the link comes up.
    this.peer.setMtu?.(this.spec.mtu ?? 247);
    this.device1.changed({ Connected: true });
    this.host.emit({ type: 'connected', address: this.address });
    const mode = this.faults.servicesResolved ?? 'with-connect';
    if (mode === 'never') return;
    if (mode === 'with-connect' || mode === 'missed-once') {
      this.servicesResolved = true;
      this.device1.changed({ ServicesResolved: true });
      this.staleServicesResolvedGet = mode === 'missed-once';
      return;
    }
    const epoch = this.linkEpoch;
    this.resolveTimer = setTimeout(() => {
      if (this.linkEpoch !== epoch || !this.connected) return;
      this.servicesResolved = true;
      this.device1.changed({ ServicesResolved: true });
    }, mode.afterMs);
  }

  /** The link is gone (either side): GATT objects vanish, as BlueZ clears an unbonded device's db. */
  private linkDown(): void {
    this.linkEpoch += 1;
    clearTimeout(this.resolveTimer);
    this.staleServicesResolvedGet = false;
    const wasNotifying = this.notifying;
    this.notifying = false;
    if (this.servicesResolved) {
      this.servicesResolved = false;
      this.device1.changed({ ServicesResolved: false });
    }
    this.connected = false;
    this.counters.disconnects += 1;
    this.host.tree.remove(`${this.path}/service000a`);
    if (this.exported) this.device1.changed({ Connected: false });
    this.host.emit({ type: 'disconnected', address: this.address });
    if (wasNotifying) this.peer.onSubscribe?.(false);
    this.peer.onDisconnect?.();
  }

  private vanish(): void {
    this.forget();
  }

  private abortPending(): void {
    this.linkEpoch += 1;
    for (const abort of [...this.aborters]) abort();
  }

  /** Waits a modelled delay; false when the link dropped (or the attempt was aborted) meanwhile. */
  private async delay(ms: number, epoch: number): Promise<boolean> {
    if (ms > 0) {
      this.counters.modelledDelayMs += ms;
      const started = performance.now();
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          this.aborters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, ms);
        this.aborters.add(done);
      });
      this.counters.waitedMs += performance.now() - started;
    }
    return this.linkEpoch === epoch;
  }

  private untilAborted(): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        this.aborters.delete(done);
        resolve();
      };
      this.aborters.add(done);
    });
  }

  private queueNotification(bytes: Uint8Array): void {
    const copy = Uint8Array.from(bytes);
    const epoch = this.linkEpoch;
    if (this.leaving) {
      this.counters.notificationsDropped += 1;
      return;
    }
    this.notifyChain = this.notifyChain.then(async () => {
      if (
        !(await this.delay(this.delays.notifyMs, epoch)) ||
        this.leaving ||
        !this.connected ||
        !this.notifying
      ) {
        this.counters.notificationsDropped += 1;
        return;
      }
      const drop = this.faults.dropNotifications ?? 0;
      if (drop > 0) {
        this.faults = { ...this.faults, dropNotifications: drop - 1 };
        this.counters.notificationsDropped += 1;
        return;
      }
      this.counters.notificationsSent += 1;
      this.gatt.notify.value = Buffer.from(copy);
      this.gatt.notify.changed({ Value: this.gatt.notify.value });
      this.host.emit({ type: 'notify', address: this.address, bytes: copy.length });
    });
  }

  private startAdvertising(): void {
    if (this.advertTimer !== undefined) return;
    const interval = this.advertisingIntervalMs;
    this.advertTimer = setInterval(() => {
      if (this.exported && this.inRange) this.device1.changed({ RSSI: this.rssi });
    }, interval);
    this.advertTimer.unref();
  }

  private stopAdvertising(): void {
    clearInterval(this.advertTimer);
    this.advertTimer = undefined;
  }
}

function aborted(): Error {
  return bluezError('Failed', 'le-connection-abort-by-local');
}

function stringOption(options: Record<string, Variant>, key: string): string | undefined {
  const value: unknown = options[key]?.value;
  return typeof value === 'string' ? value : undefined;
}

function numberOption(options: Record<string, Variant>, key: string): number | undefined {
  const value: unknown = options[key]?.value;
  return typeof value === 'number' ? value : undefined;
}

// ── D-Bus interfaces ─────────────────────────────────────────────────────────────

/** org.bluez.Device1 (doc/org.bluez.Device.rst, BlueZ 5.66). */
class Device1 extends BluezInterface {
  private readonly device: SimDevice;
  private trusted = false;
  private blocked = false;

  constructor(device: SimDevice) {
    super('org.bluez.Device1');
    this.device = device;
  }

  get Address(): string {
    return this.device.address;
  }
  get AddressType(): string {
    return this.device.addressType;
  }
  get Name(): string {
    return this.device.name;
  }
  get Alias(): string {
    return this.device.name;
  }
  get Paired(): boolean {
    return this.device.paired;
  }
  get Trusted(): boolean {
    return this.trusted;
  }
  set Trusted(value: boolean) {
    this.trusted = value;
  }
  get Blocked(): boolean {
    return this.blocked;
  }
  set Blocked(value: boolean) {
    this.blocked = value;
  }
  get LegacyPairing(): boolean {
    return false;
  }
  get Connected(): boolean {
    return this.device.connected;
  }
  get ServicesResolved(): boolean {
    return this.device.servicesResolved;
  }
  get UUIDs(): string[] {
    return [...this.device.advertisedUuids];
  }
  get Adapter(): string {
    return this.device.path.slice(0, this.device.path.lastIndexOf('/'));
  }
  get RSSI(): number {
    return this.device.rssi;
  }
  get TxPower(): number {
    return this.device.txPower;
  }
  /** Always empty: dbus-next cannot marshal a non-empty a{qv} from the service side. */
  get ManufacturerData(): Record<string, Variant> {
    return {};
  }
  get ServiceData(): Record<string, Variant> {
    return {};
  }

  Connect(): Promise<void> {
    return this.device.connect();
  }
  Disconnect(): Promise<void> {
    return this.device.disconnect();
  }
  Pair(): Promise<void> {
    return this.device.pair();
  }
  CancelPairing(): void {
    throw bluezError('DoesNotExist', 'Does Not Exist');
  }
  ConnectProfile(_uuid: string): void {
    throw bluezError('NotSupported', 'Not Supported');
  }
  DisconnectProfile(_uuid: string): void {
    throw bluezError('NotSupported', 'Not Supported');
  }
}

configure(Device1, {
  properties: {
    Address: { signature: 's' },
    AddressType: { signature: 's' },
    Name: { signature: 's' },
    Alias: { signature: 's' },
    Paired: { signature: 'b' },
    Trusted: { signature: 'b', access: 'readwrite' },
    Blocked: { signature: 'b', access: 'readwrite' },
    LegacyPairing: { signature: 'b' },
    Connected: { signature: 'b' },
    ServicesResolved: { signature: 'b' },
    UUIDs: { signature: 'as' },
    Adapter: { signature: 'o' },
    RSSI: { signature: 'n' },
    TxPower: { signature: 'n' },
    ManufacturerData: { signature: 'a{qv}' },
    ServiceData: { signature: 'a{sv}' },
  },
  methods: {
    Connect: {},
    Disconnect: {},
    Pair: {},
    CancelPairing: {},
    ConnectProfile: { inSignature: 's' },
    DisconnectProfile: { inSignature: 's' },
  },
});

/** org.bluez.GattService1 (remote service). */
class GattService1 extends BluezInterface {
  private readonly uuid: string;
  private readonly devicePath: string;
  private readonly handle: number;

  constructor(uuid: string, devicePath: string, handle: number) {
    super('org.bluez.GattService1');
    this.uuid = uuid.toLowerCase();
    this.devicePath = devicePath;
    this.handle = handle;
  }

  get Handle(): number {
    return this.handle;
  }

  get UUID(): string {
    return this.uuid;
  }
  get Device(): string {
    return this.devicePath;
  }
  get Primary(): boolean {
    return true;
  }
  get Includes(): string[] {
    return [];
  }
}

configure(GattService1, {
  properties: {
    UUID: { signature: 's' },
    Device: { signature: 'o' },
    Primary: { signature: 'b' },
    Includes: { signature: 'ao' },
    Handle: { signature: 'q' },
  },
});

interface CharacteristicSpec {
  readonly role: 'write' | 'notify';
  readonly uuid: string;
  readonly servicePath: string;
  readonly handle: number;
  readonly flags: readonly string[];
  readonly mtu: number;
}

/** org.bluez.GattCharacteristic1 (remote characteristic). */
class GattCharacteristic1 extends BluezInterface {
  private readonly device: SimDevice;
  private readonly spec: CharacteristicSpec;
  private readonly role: 'write' | 'notify';
  value: Buffer = Buffer.alloc(0);

  constructor(device: SimDevice, spec: CharacteristicSpec) {
    super('org.bluez.GattCharacteristic1');
    this.device = device;
    this.spec = spec;
    this.role = spec.role;
  }

  get UUID(): string {
    return this.spec.uuid.toLowerCase();
  }
  get Service(): string {
    return this.spec.servicePath;
  }
  get Handle(): number {
    return this.spec.handle;
  }
  get Value(): Buffer {
    return this.value;
  }
  get Notifying(): boolean {
    return this.role === 'notify' && this.device.notifying;
  }
  get Flags(): string[] {
    return [...this.spec.flags];
  }
  get MTU(): number {
    return this.spec.mtu;
  }

  ReadValue(_options: Record<string, Variant>): Buffer {
    throw bluezError('NotPermitted', 'Read not permitted');
  }
  WriteValue(value: Buffer, options: Record<string, Variant>): Promise<void> {
    if (this.role !== 'write') throw bluezError('NotPermitted', 'Write not permitted');
    return this.device.writeValue(value, options);
  }
  StartNotify(): Promise<void> {
    if (this.role !== 'notify') throw bluezError('NotSupported', 'Notify not supported');
    return this.device.startNotify();
  }
  StopNotify(): Promise<void> {
    if (this.role !== 'notify') throw bluezError('NotSupported', 'Notify not supported');
    return this.device.stopNotify();
  }
}

configure(GattCharacteristic1, {
  properties: {
    UUID: { signature: 's' },
    Service: { signature: 'o' },
    Handle: { signature: 'q' },
    Value: { signature: 'ay' },
    Notifying: { signature: 'b' },
    Flags: { signature: 'as' },
    MTU: { signature: 'q' },
  },
  methods: {
    ReadValue: { inSignature: 'a{sv}', outSignature: 'ay' },
    WriteValue: { inSignature: 'aya{sv}' },
    StartNotify: {},
    StopNotify: {},
  },
});
