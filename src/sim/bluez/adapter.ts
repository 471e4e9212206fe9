import { bluezError, type Variant } from './dbus.js';
import { BluezInterface, configure } from './interfaces.js';

/** A client's discovery filter (Adapter1.SetDiscoveryFilter), parsed. */
export interface DiscoveryFilter {
  readonly uuids: readonly string[];
  readonly rssi: number | undefined;
  readonly transport: 'auto' | 'bredr' | 'le';
}

/** What Adapter1 and AgentManager1 delegate to (the stand-in). */
export interface AdapterHost {
  readonly address: string;
  readonly name: string;
  alias: string;
  readonly discovering: boolean;
  powered: boolean;
  /** Calls act for the client that made the D-Bus call being handled (its unique name). */
  setDiscoveryFilter(filter: DiscoveryFilter | undefined): void;
  startDiscovery(): void;
  stopDiscovery(): void;
  removeDeviceObject(path: string): void;
  registerAgent(path: string): void;
  unregisterAgent(path: string): void;
}

const FILTER_KEYS = ['UUIDs', 'RSSI', 'Pathloss', 'Transport', 'DuplicateData', 'Discoverable', 'Pattern'];

/** Parses SetDiscoveryFilter's a{sv}; undefined for an empty dict (filter removed). */
export function parseDiscoveryFilter(dict: Record<string, Variant>): DiscoveryFilter | undefined {
  const keys = Object.keys(dict);
  if (keys.length === 0) return undefined;
  let uuids: string[] = [];
  let rssi: number | undefined;
  let transport: DiscoveryFilter['transport'] = 'auto';
  for (const key of keys) {
    if (!FILTER_KEYS.includes(key)) throw bluezError('InvalidArguments', `Invalid filter key: ${key}`);
    const value: unknown = dict[key]?.value;
    if (key === 'UUIDs') {
      if (!Array.isArray(value) || !value.every((u): u is string => typeof u === 'string')) {
        throw bluezError('InvalidArguments', 'Invalid UUIDs');
      }
      uuids = value.map((u) => u.toLowerCase());
    } else if (key === 'RSSI') {
      if (typeof value !== 'number') throw bluezError('InvalidArguments', 'Invalid RSSI');
      rssi = value;
    } else if (key === 'Transport') {
      if (value !== 'auto' && value !== 'bredr' && value !== 'le') {
        throw bluezError('InvalidArguments', 'Invalid Transport');
      }
      transport = value;
    }
  }
  return { uuids, rssi, transport };
}

/** org.bluez.Adapter1 (doc/org.bluez.Adapter.rst, BlueZ 5.66). */
export class Adapter1 extends BluezInterface {
  private readonly host: AdapterHost;
  private discoverable = false;

  constructor(host: AdapterHost) {
    super('org.bluez.Adapter1');
    this.host = host;
  }

  get Address(): string {
    return this.host.address;
  }
  get AddressType(): string {
    return 'public';
  }
  get Name(): string {
    return this.host.name;
  }
  get Alias(): string {
    return this.host.alias;
  }
  set Alias(value: string) {
    this.host.alias = value;
    this.changed({ Alias: value });
  }
  get Class(): number {
    return 0;
  }
  get Powered(): boolean {
    return this.host.powered;
  }
  set Powered(value: boolean) {
    this.host.powered = value;
  }
  get PowerState(): string {
    return this.host.powered ? 'on' : 'off';
  }
  get Discoverable(): boolean {
    return this.discoverable;
  }
  set Discoverable(value: boolean) {
    this.discoverable = value;
    this.changed({ Discoverable: value });
  }
  get DiscoverableTimeout(): number {
    return 180;
  }
  get Pairable(): boolean {
    return false;
  }
  get PairableTimeout(): number {
    return 0;
  }
  get Discovering(): boolean {
    return this.host.discovering;
  }
  get UUIDs(): string[] {
    return [];
  }
  get Modalias(): string {
    return 'usb:v1D6Bp0246d0542';
  }
  get Roles(): string[] {
    return ['central', 'peripheral'];
  }

  SetDiscoveryFilter(filter: Record<string, Variant>): void {
    this.host.setDiscoveryFilter(parseDiscoveryFilter(filter));
  }
  StartDiscovery(): void {
    this.host.startDiscovery();
  }
  StopDiscovery(): void {
    this.host.stopDiscovery();
  }
  RemoveDevice(path: string): void {
    this.host.removeDeviceObject(path);
  }
  GetDiscoveryFilters(): string[] {
    return [...FILTER_KEYS];
  }
}

configure(Adapter1, {
  properties: {
    Address: { signature: 's' },
    AddressType: { signature: 's' },
    Name: { signature: 's' },
    Alias: { signature: 's', access: 'readwrite' },
    Class: { signature: 'u' },
    Powered: { signature: 'b', access: 'readwrite' },
    PowerState: { signature: 's' },
    Discoverable: { signature: 'b', access: 'readwrite' },
    DiscoverableTimeout: { signature: 'u' },
    Pairable: { signature: 'b' },
    PairableTimeout: { signature: 'u' },
    Discovering: { signature: 'b' },
    UUIDs: { signature: 'as' },
    Modalias: { signature: 's' },
    Roles: { signature: 'as' },
  },
  methods: {
    SetDiscoveryFilter: { inSignature: 'a{sv}' },
    StartDiscovery: {},
    StopDiscovery: {},
    RemoveDevice: { inSignature: 'o' },
    GetDiscoveryFilters: { outSignature: 'as' },
  },
});

/** org.bluez.AgentManager1 at /org/bluez: node-ble needs it to exist; bluetoothctl registers. */
export class AgentManager1 extends BluezInterface {
  private readonly host: AdapterHost;

  constructor(host: AdapterHost) {
    super('org.bluez.AgentManager1');
    this.host = host;
  }

  RegisterAgent(agent: string, _capability: string): void {
    this.host.registerAgent(agent);
  }
  UnregisterAgent(agent: string): void {
    this.host.unregisterAgent(agent);
  }
  RequestDefaultAgent(_agent: string): void {}
}

configure(AgentManager1, {
  methods: {
    RegisterAgent: { inSignature: 'os' },
    UnregisterAgent: { inSignature: 'o' },
    RequestDefaultAgent: { inSignature: 'o' },
  },
});
