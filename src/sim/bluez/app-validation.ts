/**
 * How bluetoothd (5.66, src/gatt-database.c and src/advertising.c) judges what an application
 * registers: the GATT objects under the application's ObjectManager, and an advertisement's
 * properties and size. Pure: the stand-in's managers call these on what they read from the client.
 */
import { bluezError } from './dbus.js';

interface VariantLike {
  readonly value: unknown;
}
type InterfaceTable = Readonly<Record<string, Readonly<Record<string, VariantLike>>>>;
export type ManagedObjects = Readonly<Record<string, InterfaceTable>>;

export interface AppCharacteristic {
  readonly path: string;
  readonly uuid: string;
  readonly flags: readonly string[];
}

export interface AppService {
  readonly path: string;
  readonly uuid: string;
  readonly primary: boolean;
  readonly characteristics: readonly AppCharacteristic[];
}

/** Flags gatt-database.c's parse_chrc_flags accepts. */
const CHARACTERISTIC_FLAGS = new Set([
  'broadcast',
  'read',
  'write-without-response',
  'write',
  'notify',
  'indicate',
  'authenticated-signed-writes',
  'extended-properties',
  'reliable-write',
  'writable-auxiliaries',
  'encrypt-read',
  'encrypt-write',
  'encrypt-notify',
  'encrypt-indicate',
  'encrypt-authenticated-read',
  'encrypt-authenticated-write',
  'encrypt-authenticated-notify',
  'encrypt-authenticated-indicate',
  'secure-read',
  'secure-write',
  'secure-notify',
  'secure-indicate',
  'authorize',
]);

/** What bt_string_to_uuid takes: 128-bit, 32- or 16-bit hex (bluetoothctl passes `0x180d` as typed). */
const UUID =
  /^(?:0x[0-9a-f]{1,4}|[0-9a-f]{4}|[0-9a-f]{8}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/i;

/** A 16- or 32-bit UUID in BlueZ's full form, lower case. */
export function fullUuid(uuid: string): string {
  const lower = uuid.toLowerCase();
  const u = lower.startsWith('0x') ? lower.slice(2).padStart(4, '0') : lower;
  if (u.length === 4) return `0000${u}-0000-1000-8000-00805f9b34fb`;
  if (u.length === 8) return `${u}-0000-1000-8000-00805f9b34fb`;
  return u;
}

function isUnder(path: string, root: string): boolean {
  return root === '/' ? path.startsWith('/') : path === root || path.startsWith(`${root}/`);
}

function stringList(value: unknown): readonly string[] | undefined {
  return Array.isArray(value) && value.every((v): v is string => typeof v === 'string') ? value : undefined;
}

/**
 * The services an application registers, as bluetoothd reads them from its GetManagedObjects.
 * Objects outside the application's root are ignored, as bluetoothd's proxy client does; a bad
 * service or characteristic fails the whole registration (org.bluez.Error.Failed).
 */
export function validateApplication(root: string, objects: ManagedObjects): readonly AppService[] {
  const services = new Map<
    string,
    { uuid: string; primary: boolean; characteristics: AppCharacteristic[] }
  >();
  for (const [path, interfaces] of Object.entries(objects)) {
    const service = interfaces['org.bluez.GattService1'];
    if (service === undefined || !isUnder(path, root)) continue;
    const uuid = service.UUID?.value;
    if (typeof uuid !== 'string' || !UUID.test(uuid))
      throw bluezError('Failed', `Invalid service UUID at ${path}`);
    const primary = service.Primary?.value;
    if (typeof primary !== 'boolean')
      throw bluezError('Failed', `Failed to read "Primary" property of service ${path}`);
    services.set(path, { uuid: fullUuid(uuid), primary, characteristics: [] });
  }
  for (const [path, interfaces] of Object.entries(objects)) {
    const chrc = interfaces['org.bluez.GattCharacteristic1'];
    if (chrc === undefined || !isUnder(path, root)) continue;
    const uuid = chrc.UUID?.value;
    if (typeof uuid !== 'string' || !UUID.test(uuid))
      throw bluezError('Failed', `Invalid characteristic UUID at ${path}`);
    const servicePath = chrc.Service?.value;
    const service = typeof servicePath === 'string' ? services.get(servicePath) : undefined;
    if (service === undefined)
      throw bluezError('Failed', `Characteristic ${path} names no service of the application`);
    const flags = stringList(chrc.Flags?.value);
    if (flags === undefined || flags.length === 0 || flags.some((f) => !CHARACTERISTIC_FLAGS.has(f))) {
      throw bluezError('Failed', `Invalid characteristic flags at ${path}`);
    }
    service.characteristics.push({ path, uuid: fullUuid(uuid), flags });
  }
  if (services.size === 0) throw bluezError('Failed', 'No valid service object found');
  return [...services].map(([path, s]) => ({ path, ...s }));
}

export interface Advertisement {
  readonly type: 'broadcast' | 'peripheral';
  readonly serviceUuids: readonly string[];
  readonly localName: string | undefined;
  /** Legacy advertising data bytes, as bluetoothd would lay them out. */
  readonly bytes: number;
}

export const LEGACY_ADVERTISING_BYTES = 31;

function uuidBytes(uuids: readonly string[]): number {
  // One AD structure per UUID size: 16-bit ones take 2 bytes each, 32-bit 4, 128-bit 16.
  const sizes = new Map<number, number>();
  for (const u of uuids) {
    const size = u.length <= 6 ? 2 : u.length === 8 ? 4 : 16;
    sizes.set(size, (sizes.get(size) ?? 0) + 1);
  }
  let bytes = 0;
  for (const [size, count] of sizes) bytes += 2 + size * count;
  return bytes;
}

/**
 * An advertisement's properties (Properties.GetAll of org.bluez.LEAdvertisement1) as bluetoothd
 * parses them; `adapterName` is what `Includes: local-name` adds. Too long for legacy advertising
 * data: org.bluez.Error.InvalidLength.
 */
export function validateAdvertisement(
  props: Readonly<Record<string, VariantLike>>,
  adapterName: string,
): Advertisement {
  const type = props.Type?.value;
  if (type !== 'broadcast' && type !== 'peripheral') throw bluezError('InvalidArguments', 'Invalid Type');
  const uuids = props.ServiceUUIDs === undefined ? [] : stringList(props.ServiceUUIDs.value);
  if (uuids === undefined || uuids.some((u) => !UUID.test(u)))
    throw bluezError('InvalidArguments', 'Invalid ServiceUUIDs');
  const includes = props.Includes === undefined ? [] : stringList(props.Includes.value);
  if (includes === undefined) throw bluezError('InvalidArguments', 'Invalid Includes');
  const name = props.LocalName?.value;
  if (name !== undefined && typeof name !== 'string')
    throw bluezError('InvalidArguments', 'Invalid LocalName');
  const localName =
    name !== undefined && name.length > 0 ? name : includes.includes('local-name') ? adapterName : undefined;
  let bytes = 3 + (uuids.length > 0 ? uuidBytes(uuids) : 0);
  if (localName !== undefined) bytes += 2 + Buffer.byteLength(localName, 'utf8');
  if (includes.includes('tx-power')) bytes += 3;
  if (includes.includes('appearance')) bytes += 4;
  if (bytes > LEGACY_ADVERTISING_BYTES) throw bluezError('InvalidLength', 'Advertising data too long');
  return { type, serviceUuids: uuids.map(fullUuid), localName, bytes };
}
