/**
 * The stand-in's peripheral side, as bluetoothd 5.66 provides it: GattManager1 and
 * LEAdvertisingManager1 on the adapter, and remote centrals (phones) that connect to the local
 * GATT database and call the registered application's ReadValue / WriteValue / StartNotify
 * exactly as bluetoothd does for an ATT request: options.device, options.mtu, options.offset,
 * Read Blob continuations for values longer than MTU - 1, long writes handed over whole.
 */
import { randomBytes } from 'node:crypto';
import { AgentError } from '../../core/errors.js';
import {
  type Advertisement,
  type ManagedObjects,
  validateAdvertisement,
  validateApplication,
} from './app-validation.js';
import { bluezError, Variant } from './dbus.js';
import { devicePath } from './device.js';
import { BluezInterface, configure } from './interfaces.js';
import type { ObjectTree } from './object-tree.js';
import type {
  PeripheralFaults,
  RegisteredAdvertisement,
  RegisteredApplication,
  StandInCentral,
  StandInCentralOptions,
} from './types.js';

/** What the peripheral side needs from the stand-in. */
export interface PeripheralHost {
  readonly adapterPath: string;
  readonly alias: string;
  readonly tree: ObjectTree;
  /** Unique name of the client whose method call is being handled. */
  sender(): string;
  adapterPowered(): boolean;
  /** A method call from bluetoothd to a client's object. */
  callClient(
    destination: string,
    path: string,
    iface: string,
    member: string,
    signature: string,
    body: unknown[],
  ): Promise<unknown[]>;
  /** Makes the bus route this client's PropertiesChanged signals to the stand-in. */
  watchClient(client: string): Promise<void>;
}

/** ATT's attribute value limit. */
const MAX_ATTRIBUTE_BYTES = 512;
/** Controllers hold a few LE links; more than this many centrals is a test bug. */
const MAX_CENTRALS = 64;
/** Advertising sets the simulated controller offers (LEAdvertisingManager1.SupportedInstances). */
const SUPPORTED_INSTANCES = 4;
/** Notifications a central keeps for the test to look at. */
const KEPT_NOTIFICATIONS = 32;

interface AppEntry extends RegisteredApplication {
  readonly characteristicsByPath: ReadonlyMap<string, { uuid: string; flags: readonly string[] }>;
}

export class PeripheralSide {
  private readonly apps = new Map<string, AppEntry>();
  private readonly ads = new Map<string, RegisteredAdvertisement>();
  private readonly centrals = new Map<string, SimCentral>();
  /** Subscribed centrals per characteristic (owner + path): StartNotify on the first, StopNotify after the last. */
  private readonly subscribers = new Map<string, Set<SimCentral>>();
  private faultSet: PeripheralFaults = {};
  readonly gattManager: GattManager1;
  readonly advertisingManager: LEAdvertisingManager1;

  constructor(private readonly host: PeripheralHost) {
    this.gattManager = new GattManager1(this);
    this.advertisingManager = new LEAdvertisingManager1(this);
  }

  get adapterPath(): string {
    return this.host.adapterPath;
  }

  setFaults(faults: PeripheralFaults): void {
    this.faultSet = { ...faults };
  }

  applications(): readonly RegisteredApplication[] {
    return [...this.apps.values()].map(({ owner, root, services }) => ({ owner, root, services }));
  }

  advertisements(): readonly RegisteredAdvertisement[] {
    return [...this.ads.values()];
  }

  // ── GattManager1 ─────────────────────────────────────────────────────────────

  async registerApplication(root: string): Promise<void> {
    const owner = this.host.sender();
    const key = `${owner} ${root}`;
    if (this.apps.has(key)) throw bluezError('AlreadyExists', 'Already Exists');
    if (this.faultSet.refuseApplications === true)
      throw bluezError('Failed', 'Failed to register application');
    let objects: unknown;
    try {
      [objects] = await this.host.callClient(
        owner,
        root,
        'org.freedesktop.DBus.ObjectManager',
        'GetManagedObjects',
        '',
        [],
      );
    } catch (err) {
      throw bluezError('Failed', `Failed to read the application's objects: ${String(err)}`);
    }
    if (typeof objects !== 'object' || objects === null) throw bluezError('Failed', 'No object received');
    const services = validateApplication(root, objects as ManagedObjects);
    if (this.apps.has(key)) throw bluezError('AlreadyExists', 'Already Exists');
    await this.host.watchClient(owner);
    const characteristicsByPath = new Map<string, { uuid: string; flags: readonly string[] }>();
    for (const s of services) for (const c of s.characteristics) characteristicsByPath.set(c.path, c);
    this.apps.set(key, { owner, root, services, characteristicsByPath });
  }

  unregisterApplication(root: string): void {
    const key = `${this.host.sender()} ${root}`;
    const app = this.apps.get(key);
    if (app === undefined) throw bluezError('DoesNotExist', 'Does Not Exist');
    this.dropApp(key, app);
  }

  // ── LEAdvertisingManager1 ────────────────────────────────────────────────────

  async registerAdvertisement(path: string): Promise<void> {
    const owner = this.host.sender();
    const key = `${owner} ${path}`;
    if (this.ads.has(key)) throw bluezError('AlreadyExists', 'Already Exists');
    if (this.faultSet.refuseAdvertisements === true)
      throw bluezError('Failed', 'Failed to register advertisement');
    if (this.ads.size >= SUPPORTED_INSTANCES)
      throw bluezError('NotPermitted', 'Maximum advertisements reached');
    let props: unknown;
    try {
      [props] = await this.host.callClient(owner, path, 'org.freedesktop.DBus.Properties', 'GetAll', 's', [
        'org.bluez.LEAdvertisement1',
      ]);
    } catch (err) {
      throw bluezError('Failed', `Failed to read the advertisement: ${String(err)}`);
    }
    if (typeof props !== 'object' || props === null) throw bluezError('InvalidArguments', 'No properties');
    const advertisement: Advertisement = validateAdvertisement(
      props as Readonly<Record<string, { value: unknown }>>,
      this.host.alias,
    );
    if (this.ads.has(key)) throw bluezError('AlreadyExists', 'Already Exists');
    this.ads.set(key, { owner, path, ...advertisement });
    this.advertisingManager.changed({
      ActiveInstances: this.ads.size,
      SupportedInstances: this.freeInstances(),
    });
  }

  unregisterAdvertisement(path: string): void {
    const key = `${this.host.sender()} ${path}`;
    if (!this.ads.delete(key)) throw bluezError('DoesNotExist', 'Does Not Exist');
    this.advertisingManager.changed({
      ActiveInstances: this.ads.size,
      SupportedInstances: this.freeInstances(),
    });
  }

  get activeInstances(): number {
    return this.ads.size;
  }

  freeInstances(): number {
    return SUPPORTED_INSTANCES - this.ads.size;
  }

  /** bluetoothd drops every advertisement, telling each client (LEAdvertisement1.Release). */
  async releaseAdvertisements(): Promise<void> {
    const released = [...this.ads.values()];
    this.ads.clear();
    this.advertisingManager.changed({ ActiveInstances: 0, SupportedInstances: this.freeInstances() });
    await Promise.allSettled(
      released.map((ad) =>
        this.host.callClient(ad.owner, ad.path, 'org.bluez.LEAdvertisement1', 'Release', '', []),
      ),
    );
  }

  // ── clients and the adapter ──────────────────────────────────────────────────

  /** A client left the bus: bluetoothd drops what it registered. */
  clientGone(client: string): void {
    for (const [key, app] of this.apps) if (app.owner === client) this.dropApp(key, app);
    let changed = false;
    for (const [key, ad] of this.ads) {
      if (ad.owner === client) {
        this.ads.delete(key);
        changed = true;
      }
    }
    if (changed)
      this.advertisingManager.changed({
        ActiveInstances: this.ads.size,
        SupportedInstances: this.freeInstances(),
      });
  }

  /** The adapter powered off: every link drops (registrations stay, as in bluetoothd). */
  poweredOff(): void {
    for (const central of [...this.centrals.values()]) central.disconnect();
  }

  /** bluetoothd went away: everything it knew goes, and nobody is told. */
  forgetAll(): void {
    for (const central of [...this.centrals.values()]) central.vanish();
    this.centrals.clear();
    this.subscribers.clear();
    this.apps.clear();
    this.ads.clear();
  }

  // ── centrals ─────────────────────────────────────────────────────────────────

  connectCentral(options: StandInCentralOptions = {}): StandInCentral {
    if (!this.host.adapterPowered()) throw new AgentError('reader_error', 'the adapter is powered off');
    if (this.centrals.size >= MAX_CENTRALS)
      throw new AgentError('busy', `at most ${MAX_CENTRALS} centrals connect at once`);
    const address = (options.address ?? randomAddress()).toUpperCase();
    const path = devicePath(this.host.adapterPath, address);
    if (this.centrals.has(path))
      throw new AgentError('bad_arguments', `central ${address} is already connected`);
    const central = new SimCentral(this, path, address, options.mtu ?? 247);
    this.centrals.set(path, central);
    this.host.tree.add(path, [central.device1]);
    central.device1.changed({ Connected: true });
    return central;
  }

  central(device: string): StandInCentral | undefined {
    return this.centrals.get(device);
  }

  centralCount(): number {
    return this.centrals.size;
  }

  /** The registered characteristic with this UUID (the first application that has it). */
  characteristic(uuid: string): { owner: string; path: string; flags: readonly string[] } {
    const wanted = uuid.toLowerCase();
    for (const app of this.apps.values()) {
      for (const [path, c] of app.characteristicsByPath) {
        if (c.uuid === wanted) return { owner: app.owner, path, flags: c.flags };
      }
    }
    throw new AgentError('not_found', `no registered application has characteristic ${uuid}`);
  }

  callApp(
    owner: string,
    path: string,
    member: string,
    signature: string,
    body: unknown[],
  ): Promise<unknown[]> {
    return this.host.callClient(owner, path, 'org.bluez.GattCharacteristic1', member, signature, body);
  }

  async subscribe(central: SimCentral, uuid: string): Promise<void> {
    const c = this.characteristic(uuid);
    if (!c.flags.includes('notify') && !c.flags.includes('indicate'))
      throw bluezError('NotPermitted', 'Notify Not Permitted');
    const key = `${c.owner} ${c.path}`;
    let set = this.subscribers.get(key);
    if (set === undefined) {
      set = new Set();
      this.subscribers.set(key, set);
    }
    if (set.has(central)) return;
    set.add(central);
    if (set.size === 1) await this.callApp(c.owner, c.path, 'StartNotify', '', []);
  }

  async unsubscribe(central: SimCentral, uuid: string): Promise<void> {
    const c = this.characteristic(uuid);
    await this.leave(central, `${c.owner} ${c.path}`);
  }

  /** A client's PropertiesChanged on one of its characteristics: a notification to its subscribers. */
  valueChanged(owner: string, path: string, value: unknown): void {
    const set = this.subscribers.get(`${owner} ${path}`);
    if (set === undefined || !(value instanceof Uint8Array)) return;
    // bluetoothd has no per-device notification: every subscribed central gets it.
    for (const central of set) central.deliver(Uint8Array.from(value));
  }

  centralLeft(central: SimCentral): void {
    this.centrals.delete(central.device);
    for (const key of [...this.subscribers.keys()]) void this.leave(central, key).catch(() => {});
    this.host.tree.remove(central.device);
  }

  private async leave(central: SimCentral, key: string): Promise<void> {
    const set = this.subscribers.get(key);
    if (set === undefined || !set.delete(central)) return;
    if (set.size > 0) return;
    this.subscribers.delete(key);
    const [owner, path] = key.split(' ');
    if (owner !== undefined && path !== undefined) await this.callApp(owner, path, 'StopNotify', '', []);
  }

  private dropApp(key: string, app: AppEntry): void {
    this.apps.delete(key);
    for (const path of app.characteristicsByPath.keys()) this.subscribers.delete(`${app.owner} ${path}`);
  }
}

function randomAddress(): string {
  const bytes = randomBytes(6);
  bytes[0] = ((bytes[0] ?? 0) & 0x3f) | 0x40; // a resolvable private address (top bits 01), as phones use
  return [...bytes].map((b) => b.toString(16).padStart(2, '0').toUpperCase()).join(':');
}

/** One remote central connected to the simulated adapter. */
class SimCentral implements StandInCentral {
  readonly device1: CentralDevice1;
  private isConnected = true;
  private readonly kept: Uint8Array[] = [];
  private readonly listeners = new Set<(bytes: Uint8Array) => void>();

  constructor(
    private readonly side: PeripheralSide,
    readonly device: string,
    readonly address: string,
    readonly mtu: number,
  ) {
    this.device1 = new CentralDevice1(address, side.adapterPath, () => this.isConnected);
  }

  get connected(): boolean {
    return this.isConnected;
  }

  get notifications(): readonly Uint8Array[] {
    return [...this.kept];
  }

  private options(offset: number, extra: Record<string, Variant> = {}): Record<string, Variant> {
    return {
      device: new Variant('o', this.device),
      mtu: new Variant('q', this.mtu),
      link: new Variant('s', 'LE'),
      offset: new Variant('q', offset),
      ...extra,
    };
  }

  private live(): void {
    if (!this.isConnected) throw bluezError('NotConnected', 'Not Connected');
  }

  /** A Read Request, then Read Blob Requests while a response fills MTU - 1 bytes. */
  async read(uuid: string): Promise<Uint8Array> {
    this.live();
    const c = this.side.characteristic(uuid);
    if (!c.flags.includes('read')) throw bluezError('NotPermitted', 'Read Not Permitted');
    const chunks: Uint8Array[] = [];
    let total = 0;
    const room = this.mtu - 1;
    for (;;) {
      const [value] = await this.side.callApp(c.owner, c.path, 'ReadValue', 'a{sv}', [this.options(total)]);
      this.live();
      if (!(value instanceof Uint8Array)) throw bluezError('Failed', 'ReadValue returned no bytes');
      const chunk = value.subarray(0, room);
      chunks.push(Uint8Array.from(chunk));
      total += chunk.length;
      if (chunk.length < room || total >= MAX_ATTRIBUTE_BYTES) break;
    }
    return Buffer.concat(chunks);
  }

  /** A Write Request (prepare + execute when longer than MTU - 3: BlueZ hands it over whole). */
  async write(uuid: string, bytes: Uint8Array, options: { withoutResponse?: boolean } = {}): Promise<void> {
    this.live();
    const c = this.side.characteristic(uuid);
    const withoutResponse = options.withoutResponse === true;
    if (withoutResponse ? !c.flags.includes('write-without-response') : !c.flags.includes('write')) {
      throw bluezError('NotPermitted', 'Write Not Permitted');
    }
    if (bytes.length > MAX_ATTRIBUTE_BYTES || (withoutResponse && bytes.length > this.mtu - 3)) {
      throw bluezError('InvalidValueLength', 'Invalid Value Length');
    }
    const type = new Variant('s', withoutResponse ? 'command' : 'request');
    await this.side.callApp(c.owner, c.path, 'WriteValue', 'aya{sv}', [
      Buffer.from(bytes),
      this.options(0, { type }),
    ]);
  }

  async subscribe(uuid: string): Promise<void> {
    this.live();
    await this.side.subscribe(this, uuid);
  }

  async unsubscribe(uuid: string): Promise<void> {
    this.live();
    await this.side.unsubscribe(this, uuid);
  }

  onNotification(listener: (bytes: Uint8Array) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  deliver(bytes: Uint8Array): void {
    this.kept.push(bytes);
    if (this.kept.length > KEPT_NOTIFICATIONS) this.kept.shift();
    for (const listener of this.listeners) listener(bytes);
  }

  /** The phone drops the link: Connected goes false, then the device object goes (unbonded). */
  disconnect(): void {
    if (!this.isConnected) return;
    this.isConnected = false;
    this.device1.changed({ Connected: false });
    this.side.centralLeft(this);
  }

  /** bluetoothd died: the object is gone with it, and nothing is announced. */
  vanish(): void {
    this.isConnected = false;
    this.listeners.clear();
  }
}

/** org.bluez.Device1 of a remote central (what bluetoothctl and the agent see of a phone). */
class CentralDevice1 extends BluezInterface {
  constructor(
    private readonly address: string,
    private readonly adapterPath: string,
    private readonly isConnected: () => boolean,
  ) {
    super('org.bluez.Device1');
  }
  get Address(): string {
    return this.address;
  }
  get AddressType(): string {
    return 'random';
  }
  get Alias(): string {
    return this.address.replaceAll(':', '-');
  }
  get Connected(): boolean {
    return this.isConnected();
  }
  get Paired(): boolean {
    return false;
  }
  get Bonded(): boolean {
    return false;
  }
  get Trusted(): boolean {
    return false;
  }
  get Blocked(): boolean {
    return false;
  }
  get LegacyPairing(): boolean {
    return false;
  }
  get ServicesResolved(): boolean {
    return false;
  }
  get UUIDs(): string[] {
    return [];
  }
  get Adapter(): string {
    return this.adapterPath;
  }
}

configure(CentralDevice1, {
  properties: {
    Address: { signature: 's' },
    AddressType: { signature: 's' },
    Alias: { signature: 's' },
    Connected: { signature: 'b' },
    Paired: { signature: 'b' },
    Bonded: { signature: 'b' },
    Trusted: { signature: 'b' },
    Blocked: { signature: 'b' },
    LegacyPairing: { signature: 'b' },
    ServicesResolved: { signature: 'b' },
    UUIDs: { signature: 'as' },
    Adapter: { signature: 'o' },
  },
});

/** org.bluez.GattManager1 on the adapter. */
class GattManager1 extends BluezInterface {
  constructor(private readonly side: PeripheralSide) {
    super('org.bluez.GattManager1');
  }
  RegisterApplication(application: string, _options: Record<string, Variant>): Promise<void> {
    return this.side.registerApplication(application);
  }
  UnregisterApplication(application: string): void {
    this.side.unregisterApplication(application);
  }
}

configure(GattManager1, {
  methods: {
    RegisterApplication: { inSignature: 'oa{sv}' },
    UnregisterApplication: { inSignature: 'o' },
  },
});

/** org.bluez.LEAdvertisingManager1 on the adapter. */
class LEAdvertisingManager1 extends BluezInterface {
  constructor(private readonly side: PeripheralSide) {
    super('org.bluez.LEAdvertisingManager1');
  }
  get ActiveInstances(): number {
    return this.side.activeInstances;
  }
  get SupportedInstances(): number {
    return this.side.freeInstances();
  }
  get SupportedIncludes(): string[] {
    return ['tx-power', 'appearance', 'local-name'];
  }
  get SupportedSecondaryChannels(): string[] {
    return [];
  }
  RegisterAdvertisement(advertisement: string, _options: Record<string, Variant>): Promise<void> {
    return this.side.registerAdvertisement(advertisement);
  }
  UnregisterAdvertisement(advertisement: string): void {
    this.side.unregisterAdvertisement(advertisement);
  }
}

configure(LEAdvertisingManager1, {
  properties: {
    ActiveInstances: { signature: 'y' },
    SupportedInstances: { signature: 'y' },
    SupportedIncludes: { signature: 'as' },
    SupportedSecondaryChannels: { signature: 'as' },
  },
  methods: {
    RegisterAdvertisement: { inSignature: 'oa{sv}' },
    UnregisterAdvertisement: { inSignature: 'o' },
  },
});
