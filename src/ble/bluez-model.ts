/**
 * Pure bookkeeping of what BlueZ says about remote devices, fed from ObjectManager and
 * PropertiesChanged signal bodies (values arrive as D-Bus variants: `{ value }`). No I/O.
 */

export const DEVICE_IFACE = 'org.bluez.Device1';
export const ADAPTER_IFACE = 'org.bluez.Adapter1';
export const GATT_SERVICE_IFACE = 'org.bluez.GattService1';
export const GATT_CHARACTERISTIC_IFACE = 'org.bluez.GattCharacteristic1';

/** A remote GATT service or characteristic BlueZ exported (while the device is connected). */
interface KnownAttribute {
  readonly path: string;
  readonly uuid: string;
  /** Service: its device's path. Characteristic: its service's path. */
  readonly parent: string;
  /** Characteristic: the negotiated ATT MTU (GattCharacteristic1.MTU, BlueZ >= 5.62), if reported. */
  readonly mtu: number | undefined;
}

/** Where the vehicle-key characteristics of one connected device live, from BlueZ's objects. */
export interface ResolvedGatt {
  readonly servicePath: string;
  readonly writePath: string;
  readonly notifyPath: string;
  readonly mtu: number | undefined;
}

export interface KnownDevice {
  readonly path: string;
  readonly address: string;
  name: string | undefined;
  /** Last RSSI BlueZ reported (dBm), if any. */
  rssi: number | undefined;
  /** Advertised service UUIDs, lower case. */
  uuids: readonly string[];
  connected: boolean;
  servicesResolved: boolean;
}

/** What one PropertiesChanged on a Device1 meant. */
export interface DeviceChange {
  readonly device: KnownDevice;
  /** An advertisement was seen (RSSI reported): the device is in range now. */
  readonly sighted: boolean;
  readonly connected: boolean | undefined;
  readonly servicesResolved: boolean | undefined;
}

type VariantDict = Readonly<Record<string, unknown>>;

/** /org/bluez/hci0 + AA:BB:… → /org/bluez/hci0/dev_AA_BB_… */
export function devicePath(adapterPath: string, address: string): string {
  return `${adapterPath}/dev_${address.toUpperCase().replace(/:/g, '_')}`;
}

const DEVICE_NODE = /^dev_([0-9A-F]{2}(?:_[0-9A-F]{2}){5})$/;

/** The address of a device object directly under the adapter, else undefined. */
export function addressFromPath(adapterPath: string, path: string): string | undefined {
  if (!path.startsWith(`${adapterPath}/`)) return undefined;
  const node = path.slice(adapterPath.length + 1);
  const match = DEVICE_NODE.exec(node);
  return match?.[1]?.replace(/_/g, ':');
}

function unwrap(v: unknown): unknown {
  return typeof v === 'object' && v !== null && 'value' in v ? v.value : v;
}

function asString(v: unknown): string | undefined {
  const value = unwrap(v);
  return typeof value === 'string' ? value : undefined;
}

function asNumber(v: unknown): number | undefined {
  const value = unwrap(v);
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

function asBoolean(v: unknown): boolean | undefined {
  const value = unwrap(v);
  return typeof value === 'boolean' ? value : undefined;
}

function asStrings(v: unknown): string[] | undefined {
  const value = unwrap(v);
  if (!Array.isArray(value)) return undefined;
  return value.filter((x): x is string => typeof x === 'string').map((x) => x.toLowerCase());
}

function isDict(v: unknown): v is VariantDict {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The remote devices under one adapter, as BlueZ last described them. */
export class DeviceTable {
  readonly adapterPath: string;
  private readonly byPath = new Map<string, KnownDevice>();
  private readonly services = new Map<string, KnownAttribute>();
  private readonly characteristics = new Map<string, KnownAttribute>();

  constructor(adapterPath: string) {
    this.adapterPath = adapterPath;
  }

  get size(): number {
    return this.byPath.size;
  }

  /** GATT services and characteristics known. */
  get attributes(): number {
    return this.services.size + this.characteristics.size;
  }

  /** Devices from the least to the most recently added or heard. */
  stalestFirst(): IterableIterator<KnownDevice> {
    return this.byPath.values();
  }

  /**
   * Forgets a device and its GATT objects (the table was full; BlueZ still has it). Returns it,
   * or undefined when it was not tracked.
   */
  forget(path: string): KnownDevice | undefined {
    const device = this.byPath.get(path);
    if (device === undefined) return undefined;
    this.byPath.delete(path);
    this.forgetAttributes(path);
    return device;
  }

  get(path: string): KnownDevice | undefined {
    return this.byPath.get(path);
  }

  byAddress(address: string): KnownDevice | undefined {
    return this.byPath.get(devicePath(this.adapterPath, address));
  }

  clear(): void {
    this.byPath.clear();
    this.services.clear();
    this.characteristics.clear();
  }

  /** Loads GetManagedObjects' a{oa{sa{sv}}}. */
  seed(objects: unknown): void {
    this.clear();
    if (!isDict(objects)) return;
    for (const [path, interfaces] of Object.entries(objects)) this.added(path, interfaces);
  }

  /** InterfacesAdded(o, a{sa{sv}}): the new or updated device, if it is one of ours. */
  added(path: string, interfaces: unknown): KnownDevice | undefined {
    if (!isDict(interfaces)) return undefined;
    this.addedAttribute(path, interfaces);
    const props = interfaces[DEVICE_IFACE];
    const address = addressFromPath(this.adapterPath, path);
    if (address === undefined || !isDict(props)) return undefined;
    const device: KnownDevice = {
      path,
      address: asString(props.Address)?.toUpperCase() ?? address,
      name: asString(props.Name),
      rssi: asNumber(props.RSSI),
      uuids: asStrings(props.UUIDs) ?? [],
      connected: asBoolean(props.Connected) ?? false,
      servicesResolved: asBoolean(props.ServicesResolved) ?? false,
    };
    this.byPath.delete(path);
    this.byPath.set(path, device);
    return device;
  }

  /** InterfacesRemoved(o, as): the device that went, if Device1 was removed. */
  removed(path: string, interfaces: readonly unknown[]): KnownDevice | undefined {
    if (interfaces.includes(GATT_SERVICE_IFACE)) this.services.delete(path);
    if (interfaces.includes(GATT_CHARACTERISTIC_IFACE)) this.characteristics.delete(path);
    if (!interfaces.includes(DEVICE_IFACE)) return undefined;
    const device = this.byPath.get(path);
    this.byPath.delete(path);
    // Its GATT objects went with it, whether or not BlueZ said so one by one.
    this.forgetAttributes(path);
    return device;
  }

  /** PropertiesChanged(s, a{sv}, as) on a device path. */
  changed(
    path: string,
    iface: string,
    changed: unknown,
    invalidated: readonly unknown[] = [],
  ): DeviceChange | undefined {
    if (iface !== DEVICE_IFACE || !isDict(changed)) return undefined;
    const device = this.byPath.get(path);
    if (device === undefined) return undefined;
    const rssi = asNumber(changed.RSSI);
    if (rssi !== undefined) {
      device.rssi = rssi;
      // Heard now: the most recent device (the table is kept in the order devices were last heard).
      this.byPath.delete(path);
      this.byPath.set(path, device);
    }
    if (invalidated.includes('RSSI')) device.rssi = undefined;
    const name = asString(changed.Name);
    if (name !== undefined) device.name = name;
    const uuids = asStrings(changed.UUIDs);
    if (uuids !== undefined) device.uuids = uuids;
    const connected = asBoolean(changed.Connected);
    if (connected !== undefined) device.connected = connected;
    const servicesResolved = asBoolean(changed.ServicesResolved);
    if (servicesResolved !== undefined) device.servicesResolved = servicesResolved;
    return { device, sighted: rssi !== undefined, connected, servicesResolved };
  }

  /**
   * The service `serviceUuid` of the device at `devicePath` and its write and notify
   * characteristics, from the objects BlueZ announced (InterfacesAdded) or listed
   * (GetManagedObjects); undefined while any of them is unknown.
   */
  gatt(
    devicePath: string,
    serviceUuid: string,
    writeUuid: string,
    notifyUuid: string,
  ): ResolvedGatt | undefined {
    const want = (uuid: string) => uuid.toLowerCase();
    for (const service of this.services.values()) {
      if (service.parent !== devicePath || service.uuid !== want(serviceUuid)) continue;
      let write: KnownAttribute | undefined;
      let notify: KnownAttribute | undefined;
      for (const c of this.characteristics.values()) {
        if (c.parent !== service.path) continue;
        if (c.uuid === want(writeUuid)) write = c;
        if (c.uuid === want(notifyUuid)) notify = c;
      }
      if (write !== undefined && notify !== undefined) {
        return { servicePath: service.path, writePath: write.path, notifyPath: notify.path, mtu: write.mtu };
      }
    }
    return undefined;
  }

  private forgetAttributes(devicePath: string): void {
    const prefix = `${devicePath}/`;
    for (const key of this.services.keys()) if (key.startsWith(prefix)) this.services.delete(key);
    for (const key of this.characteristics.keys())
      if (key.startsWith(prefix)) this.characteristics.delete(key);
  }

  private addedAttribute(path: string, interfaces: VariantDict): void {
    const service = interfaces[GATT_SERVICE_IFACE];
    if (isDict(service)) {
      const uuid = asString(service.UUID)?.toLowerCase();
      const device = asString(service.Device) ?? parentOf(path);
      if (uuid !== undefined) this.services.set(path, { path, uuid, parent: device, mtu: undefined });
    }
    const characteristic = interfaces[GATT_CHARACTERISTIC_IFACE];
    if (isDict(characteristic)) {
      const uuid = asString(characteristic.UUID)?.toLowerCase();
      const parent = asString(characteristic.Service) ?? parentOf(path);
      if (uuid !== undefined) {
        this.characteristics.set(path, { path, uuid, parent, mtu: asNumber(characteristic.MTU) });
      }
    }
  }
}

function parentOf(path: string): string {
  return path.slice(0, Math.max(0, path.lastIndexOf('/')));
}

/** Reads one boolean out of a PropertiesChanged dict (e.g. Adapter1.Powered). */
export function changedBoolean(changed: unknown, name: string): boolean | undefined {
  return isDict(changed) ? asBoolean(changed[name]) : undefined;
}

/** Reads one number out of a PropertiesChanged dict (e.g. Device1.RSSI). */
export function changedNumber(changed: unknown, name: string): number | undefined {
  return isDict(changed) ? asNumber(changed[name]) : undefined;
}

/** Whether an InterfacesAdded/GetManagedObjects entry carries Adapter1. */
export function hasAdapter(interfaces: unknown): boolean {
  return isDict(interfaces) && isDict(interfaces[ADAPTER_IFACE]);
}
