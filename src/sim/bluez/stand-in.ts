import { AgentError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import { Adapter1, type AdapterHost, AgentManager1, type DiscoveryFilter } from './adapter.js';
import {
  addMatch,
  bluezError,
  connectBus,
  Message,
  type MessageBus,
  MessageType,
  ownName,
  Variant,
} from './dbus.js';
import { type DeviceHost, SimDevice } from './device.js';
import { ObjectTree } from './object-tree.js';
import { type PeripheralHost, PeripheralSide } from './peripheral-side.js';
import type {
  BluezStandIn,
  BluezStandInOptions,
  DeviceSpec,
  PeripheralFaults,
  RegisteredAdvertisement,
  RegisteredApplication,
  StandInCentral,
  StandInCentralOptions,
  StandInDevice,
  StandInEvent,
} from './types.js';

const BLUEZ = 'org.bluez';
const NAME_OWNER_CHANGED =
  "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged'";

/**
 * Starts the BlueZ stand-in: owns org.bluez on `busAddress` and exports /org/bluez
 * (AgentManager1), /org/bluez/<hci> (Adapter1) and the ObjectManager at /. Devices appear while
 * a discovery session runs and they are in range.
 */
export async function startBluezStandIn(options: BluezStandInOptions): Promise<BluezStandIn> {
  const standIn = new StandIn(options);
  await standIn.acquire();
  return standIn;
}

class StandIn implements BluezStandIn, AdapterHost, DeviceHost, PeripheralHost {
  readonly adapterPath: string;
  readonly address: string;
  readonly name: string;
  alias: string;
  readonly tree = new ObjectTree();
  readonly log: Logger;
  private readonly busAddress: string;
  private bus: MessageBus | undefined;
  private isPowered: boolean;
  private stopped = false;
  /** Clients (unique names) holding a discovery session, and their filters. */
  private readonly sessions = new Set<string>();
  private readonly filters = new Map<string, DiscoveryFilter>();
  private readonly agents = new Map<string, string>();
  private readonly devices = new Map<string, SimDevice>();
  private readonly reappearTimers = new Set<NodeJS.Timeout>();
  private readonly adapterCallCounts = new Map<string, number>();
  private readonly listeners = new Set<(event: StandInEvent) => void>();
  /** Sender of the method call being handled (dbus-next does not pass it to methods). */
  private currentSender = '';
  private readonly adapter1: Adapter1;
  private readonly peripheral: PeripheralSide;
  /** Clients whose PropertiesChanged signals the bus routes here (GATT applications). */
  private readonly watched = new Set<string>();

  constructor(options: BluezStandInOptions) {
    const spec = options.adapter ?? {};
    this.busAddress = options.busAddress;
    this.log = options.logger.child({ module: 'bluez-stand-in' });
    this.adapterPath = `/org/bluez/${spec.id ?? 'hci0'}`;
    this.address = (spec.address ?? 'B8:27:EB:00:00:01').toUpperCase();
    this.name = spec.name ?? 'vehicle-agent';
    this.alias = spec.alias ?? this.name;
    this.isPowered = spec.powered ?? true;
    this.adapter1 = new Adapter1(this);
    this.peripheral = new PeripheralSide(this);
    this.tree.add('/org/bluez', [new AgentManager1(this)]);
  }

  // ── lifecycle ────────────────────────────────────────────────────────────────

  /** Connects, takes org.bluez, then (as bluetoothd does) registers the adapter. */
  async acquire(): Promise<void> {
    if (this.bus !== undefined) return;
    const bus = connectBus(this.busAddress);
    bus.on('error', (err: unknown) => {
      this.log.warn({ err: String(err) }, 'stand-in bus error');
    });
    bus.on('message', (msg: Message) => this.onMessage(msg));
    bus.addMethodHandler((msg: Message) => this.intercept(bus, msg));
    this.bus = bus;
    this.tree.attach(bus);
    try {
      await addMatch(bus, NAME_OWNER_CHANGED);
      if (!(await ownName(bus, BLUEZ))) {
        throw new AgentError('busy', 'org.bluez is already owned on this bus');
      }
    } catch (err) {
      this.tree.detach();
      this.bus = undefined;
      bus.disconnect();
      throw err;
    }
    this.tree.add(this.adapterPath, [
      this.adapter1,
      this.peripheral.gattManager,
      this.peripheral.advertisingManager,
    ]);
    this.emit({ type: 'name', owned: true });
    this.log.debug({ adapter: this.adapterPath }, 'org.bluez acquired');
  }

  async releaseName(): Promise<void> {
    const bus = this.bus;
    if (bus === undefined) return;
    // Like bluetoothd dying: the connection goes, nothing is announced; clients see only
    // NameOwnerChanged. Links drop on the phone side.
    this.tree.detach();
    this.bus = undefined;
    this.forgetClients();
    for (const device of this.devices.values()) device.forget();
    this.peripheral.forgetAll();
    this.watched.clear();
    this.clearReappearTimers();
    this.tree.remove(this.adapterPath);
    try {
      await bus.releaseName(BLUEZ);
    } catch (err) {
      this.log.debug({ err: String(err) }, 'releaseName failed (connection already gone?)');
    }
    bus.disconnect();
    this.emit({ type: 'name', owned: false });
  }

  reacquireName(): Promise<void> {
    return this.acquire();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.clearReappearTimers();
    for (const device of this.devices.values()) device.dispose();
    this.devices.clear();
    const bus = this.bus;
    this.tree.detach();
    this.bus = undefined;
    if (bus !== undefined) {
      try {
        await bus.releaseName(BLUEZ);
      } catch {
        // the daemon may already be gone
      }
      bus.disconnect();
    }
    this.listeners.clear();
  }

  // ── BluezStandIn ─────────────────────────────────────────────────────────────

  get nameOwned(): boolean {
    return this.bus !== undefined;
  }

  get discovering(): boolean {
    return this.isPowered && this.sessions.size > 0;
  }

  get powered(): boolean {
    return this.isPowered;
  }

  /** Adapter1.Powered set over D-Bus (bluetoothctl power on/off) or by the test. */
  set powered(value: boolean) {
    this.setPowered(value);
  }

  setPowered(powered: boolean): void {
    if (this.isPowered === powered) return;
    const wasDiscovering = this.discovering;
    this.isPowered = powered;
    if (!powered) {
      // BlueZ drops every discovery session and filter when the adapter powers off.
      this.sessions.clear();
      this.filters.clear();
      this.clearReappearTimers();
      for (const device of this.devices.values()) device.forget();
      this.peripheral.poweredOff();
    }
    const changed: Record<string, unknown> = { Powered: powered, PowerState: powered ? 'on' : 'off' };
    if (wasDiscovering !== this.discovering) changed.Discovering = this.discovering;
    this.adapter1.changed(changed);
    this.emit({ type: 'powered', powered });
    if (wasDiscovering !== this.discovering)
      this.emit({ type: 'discovering', discovering: this.discovering });
  }

  addDevice(spec: DeviceSpec): StandInDevice {
    const address = spec.address.toUpperCase();
    if (!/^([0-9A-F]{2}:){5}[0-9A-F]{2}$/.test(address)) {
      throw new AgentError('bad_arguments', `not a Bluetooth address: ${spec.address}`);
    }
    if (this.devices.has(address)) throw new AgentError('bad_arguments', `device ${address} exists`);
    const device = new SimDevice(this, spec);
    this.devices.set(address, device);
    device.refreshDiscovery();
    return device;
  }

  removeDevice(address: string): void {
    const device = this.devices.get(address.toUpperCase());
    if (device === undefined) return;
    device.dispose();
    this.devices.delete(device.address);
  }

  device(address: string): StandInDevice | undefined {
    return this.devices.get(address.toUpperCase());
  }

  connectCentral(options?: StandInCentralOptions): StandInCentral {
    return this.peripheral.connectCentral(options);
  }

  central(device: string): StandInCentral | undefined {
    return this.peripheral.central(device);
  }

  centralCount(): number {
    return this.peripheral.centralCount();
  }

  applications(): readonly RegisteredApplication[] {
    return this.peripheral.applications();
  }

  advertisements(): readonly RegisteredAdvertisement[] {
    return this.peripheral.advertisements();
  }

  setPeripheralFaults(faults: PeripheralFaults): void {
    this.peripheral.setFaults(faults);
  }

  releaseAdvertisements(): Promise<void> {
    return this.peripheral.releaseAdvertisements();
  }

  // ── PeripheralHost ───────────────────────────────────────────────────────────

  sender(): string {
    return this.currentSender;
  }

  async callClient(
    destination: string,
    path: string,
    iface: string,
    member: string,
    signature: string,
    body: unknown[],
  ): Promise<unknown[]> {
    const bus = this.bus;
    if (bus === undefined) throw bluezError('NotReady', 'Resource Not Ready');
    const reply = await bus.call(
      new Message({
        destination,
        path,
        interface: iface,
        member,
        ...(signature === '' ? {} : { signature, body }),
      }),
    );
    return reply?.body ?? [];
  }

  async watchClient(client: string): Promise<void> {
    const bus = this.bus;
    if (bus === undefined || this.watched.has(client)) return;
    this.watched.add(client);
    await addMatch(
      bus,
      `type='signal',sender='${client}',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged'`,
    );
  }

  adapterCalls(): Readonly<Record<string, number>> {
    return Object.fromEntries(this.adapterCallCounts);
  }

  onEvent(listener: (event: StandInEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(event: StandInEvent): void {
    for (const listener of this.listeners) listener(event);
  }

  // ── AdapterHost (Adapter1 / AgentManager1 calls) ───────────────────────────────

  setDiscoveryFilter(filter: DiscoveryFilter | undefined): void {
    if (!this.isPowered) throw bluezError('NotReady', 'Resource Not Ready');
    if (filter === undefined) this.filters.delete(this.currentSender);
    else this.filters.set(this.currentSender, filter);
    this.refreshDevices();
  }

  startDiscovery(): void {
    if (!this.isPowered) throw bluezError('NotReady', 'Resource Not Ready');
    if (this.sessions.has(this.currentSender))
      throw bluezError('InProgress', 'Operation already in progress');
    const was = this.discovering;
    this.sessions.add(this.currentSender);
    this.discoveringChanged(was);
    this.refreshDevices();
  }

  stopDiscovery(): void {
    if (!this.isPowered) throw bluezError('NotReady', 'Resource Not Ready');
    if (!this.sessions.has(this.currentSender)) throw bluezError('Failed', 'No discovery started');
    const was = this.discovering;
    this.sessions.delete(this.currentSender);
    this.discoveringChanged(was);
    this.refreshDevices();
  }

  removeDeviceObject(path: string): void {
    const device = [...this.devices.values()].find((d) => d.path === path && d.exported);
    if (device === undefined) throw bluezError('DoesNotExist', 'Does Not Exist');
    device.forget();
    // Still advertising: BlueZ creates the object again on the next advertisement it sees.
    const timer = setTimeout(() => {
      this.reappearTimers.delete(timer);
      device.refreshDiscovery();
    }, device.advertisingIntervalMs);
    this.reappearTimers.add(timer);
  }

  registerAgent(path: string): void {
    if (this.agents.has(this.currentSender)) throw bluezError('AlreadyExists', 'Already Exists');
    this.agents.set(this.currentSender, path);
  }

  unregisterAgent(path: string): void {
    if (this.agents.get(this.currentSender) !== path) throw bluezError('DoesNotExist', 'Does Not Exist');
    this.agents.delete(this.currentSender);
  }

  // ── DeviceHost ─────────────────────────────────────────────────────────────────

  adapterPowered(): boolean {
    return this.isPowered;
  }

  discovery(device: SimDevice): { reports: boolean; streams: boolean } {
    let reports = false;
    let streams = false;
    if (!this.isPowered || this.bus === undefined) return { reports, streams };
    for (const client of this.sessions) {
      const filter = this.filters.get(client);
      if (filter === undefined) {
        reports = true;
      } else if (matches(filter, device)) {
        reports = true;
        streams = true;
      }
    }
    return { reports, streams };
  }

  // ── internals ────────────────────────────────────────────────────────────────

  private discoveringChanged(was: boolean): void {
    if (was === this.discovering) return;
    this.adapter1.changed({ Discovering: this.discovering });
    this.emit({ type: 'discovering', discovering: this.discovering });
  }

  private refreshDevices(): void {
    for (const device of this.devices.values()) device.refreshDiscovery();
  }

  private forgetClients(): void {
    this.sessions.clear();
    this.filters.clear();
    this.agents.clear();
  }

  private clearReappearTimers(): void {
    for (const timer of this.reappearTimers) clearTimeout(timer);
    this.reappearTimers.clear();
  }

  /** Runs before dbus-next dispatches: records the sender, counts calls, tracks clients. */
  private onMessage(msg: Message): void {
    if (msg.type === MessageType.METHOD_CALL) {
      this.currentSender = msg.sender;
      const key = `${msg.interface}.${msg.member}`;
      const device = this.deviceFor(msg);
      if (device !== undefined) device.countCall(key);
      else this.adapterCallCounts.set(key, (this.adapterCallCounts.get(key) ?? 0) + 1);
      return;
    }
    if (
      msg.type === MessageType.SIGNAL &&
      msg.member === 'NameOwnerChanged' &&
      msg.interface === 'org.freedesktop.DBus'
    ) {
      const [name, , newOwner] = msg.body;
      if (typeof name === 'string' && name.startsWith(':') && newOwner === '') this.clientGone(name);
      return;
    }
    if (
      msg.type === MessageType.SIGNAL &&
      msg.member === 'PropertiesChanged' &&
      this.watched.has(msg.sender) &&
      msg.body[0] === 'org.bluez.GattCharacteristic1'
    ) {
      const changed: unknown = msg.body[1];
      const value: unknown =
        typeof changed === 'object' && changed !== null ? Reflect.get(changed, 'Value') : undefined;
      if (value instanceof Variant) this.peripheral.valueChanged(msg.sender, msg.path ?? '', value.value);
    }
  }

  private deviceFor(msg: Message): SimDevice | undefined {
    const path =
      msg.member === 'RemoveDevice' && typeof msg.body[0] === 'string' ? msg.body[0] : (msg.path ?? '');
    for (const device of this.devices.values()) {
      if (path === device.path || path.startsWith(`${device.path}/`)) return device;
    }
    return undefined;
  }

  /** A client left the bus: BlueZ ends its discovery session and drops its filter and agent. */
  private clientGone(client: string): void {
    this.peripheral.clientGone(client);
    this.watched.delete(client);
    const was = this.discovering;
    const hadSession = this.sessions.delete(client);
    const hadFilter = this.filters.delete(client);
    this.agents.delete(client);
    if (!hadSession && !hadFilter) return;
    this.discoveringChanged(was);
    this.refreshDevices();
  }

  /** Answers a stale ServicesResolved Get when a device's 'missed-once' fault asks for it. */
  private intercept(bus: MessageBus, msg: Message): boolean {
    if (
      msg.interface !== 'org.freedesktop.DBus.Properties' ||
      msg.member !== 'Get' ||
      msg.body[0] !== 'org.bluez.Device1' ||
      msg.body[1] !== 'ServicesResolved'
    ) {
      return false;
    }
    const device = [...this.devices.values()].find((d) => d.path === msg.path);
    if (device === undefined || !device.takeStaleServicesResolved()) return false;
    bus.send(Message.newMethodReturn(msg, 'v', [new Variant('b', false)]));
    return true;
  }
}

function matches(filter: DiscoveryFilter, device: SimDevice): boolean {
  if (filter.transport === 'bredr') return false;
  if (filter.rssi !== undefined && device.rssi <= filter.rssi) return false;
  if (filter.uuids.length === 0) return true;
  return device.advertisedUuids.some((u) => filter.uuids.includes(u));
}
