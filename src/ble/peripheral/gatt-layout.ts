/**
 * The vehicle's GATT application and LE advertisement as data: object paths, UUIDs, flags, the
 * advertisement's legacy size, and the options BlueZ passes to ReadValue / WriteValue. No I/O and
 * no D-Bus library: src/ble/peripheral/dbus-objects.ts exports what this describes.
 */
import { AgentError } from '../../core/errors.js';

// The same values as src/ble/protocol/peripheral-constants.ts (issue 14's shared spec); repeated
// here so the D-Bus side stands alone. Keep them equal (test/unit/ble-peripheral-layout.test.ts).
export const PERIPHERAL_SERVICE_UUID = '16b4a5e5-1d72-4bb6-8dc9-8377e988aae2';
export const CHALLENGE_CHAR_UUID = 'b808ae76-22bb-4b4f-945f-cae656d66142';
export const ANSWER_CHAR_UUID = '4055a9af-e75f-47a0-9537-b5af92636544';
export const RESULT_CHAR_UUID = 'f3ffc6a0-648c-4d18-9bd2-0b9e12474ef1';

export type CharacteristicName = 'challenge' | 'answer' | 'result';

export interface CharacteristicLayout {
  readonly name: CharacteristicName;
  readonly uuid: string;
  /** GattCharacteristic1.Flags. No `write-without-response`: an answer needs its ATT result. */
  readonly flags: readonly string[];
  readonly path: string;
}

export interface AppLayout {
  /** The application root (ObjectManager), as passed to RegisterApplication. */
  readonly root: string;
  readonly servicePath: string;
  readonly characteristics: readonly CharacteristicLayout[];
  /** The LEAdvertisement1 object. */
  readonly advertisementPath: string;
}

/** Where the agent exports its objects on its own connection (any path will do; this one says whose). */
export const APP_ROOT = '/org/vehicle_agent/peripheral';

export function appLayout(root: string = APP_ROOT): AppLayout {
  const servicePath = `${root}/service0`;
  return {
    root,
    servicePath,
    characteristics: [
      { name: 'challenge', uuid: CHALLENGE_CHAR_UUID, flags: ['read'], path: `${servicePath}/char0` },
      { name: 'answer', uuid: ANSWER_CHAR_UUID, flags: ['write'], path: `${servicePath}/char1` },
      { name: 'result', uuid: RESULT_CHAR_UUID, flags: ['read', 'notify'], path: `${servicePath}/char2` },
    ],
    advertisementPath: `${root}/advertisement0`,
  };
}

// ── the advertisement ───────────────────────────────────────────────────────────

/** Legacy (BLE 4.x) advertising data: 31 bytes. */
export const LEGACY_ADVERTISING_BYTES = 31;

export interface AdvertisementContent {
  readonly serviceUuids: readonly string[];
  /** Absent or empty: no name at all (a constant name lets a passer-by follow the vehicle). */
  readonly localName?: string;
}

/**
 * Bytes the advertising data takes as BlueZ lays it out for a peripheral advertisement: the flags
 * (3), the complete list of 128-bit service UUIDs (2 + 16 each) and the local name (2 + length).
 */
export function advertisementBytes(content: AdvertisementContent): number {
  let bytes = 3;
  if (content.serviceUuids.length > 0) bytes += 2 + 16 * content.serviceUuids.length;
  const name = content.localName ?? '';
  if (name.length > 0) bytes += 2 + Buffer.byteLength(name, 'utf8');
  return bytes;
}

/** The longest name that fits beside the flags and one 128-bit service UUID. */
export const MAX_ADVERTISED_NAME_BYTES =
  LEGACY_ADVERTISING_BYTES - advertisementBytes({ serviceUuids: [PERIPHERAL_SERVICE_UUID] }) - 2;

/** The vehicle's advertisement; throws config_invalid when it would not fit in 31 bytes. */
export function vehicleAdvertisement(advertisedName: string): AdvertisementContent {
  const content: AdvertisementContent =
    advertisedName.length === 0
      ? { serviceUuids: [PERIPHERAL_SERVICE_UUID] }
      : { serviceUuids: [PERIPHERAL_SERVICE_UUID], localName: advertisedName };
  const bytes = advertisementBytes(content);
  if (bytes > LEGACY_ADVERTISING_BYTES) {
    throw new AgentError(
      'config_invalid',
      `ble.peripheral.advertisedName takes ${bytes} of ${LEGACY_ADVERTISING_BYTES} advertising bytes: at most ${MAX_ADVERTISED_NAME_BYTES} bytes fit beside the service UUID`,
    );
  }
  return content;
}

// ── BlueZ's call options ────────────────────────────────────────────────────────

/** A value as dbus-next hands over an `a{sv}` entry. */
export interface VariantLike {
  readonly value: unknown;
}

export interface CallOptions {
  /** The central's object, /org/bluez/hciN/dev_XX_XX_XX_XX_XX_XX. */
  readonly device: string;
  /** AA:BB:CC:DD:EE:FF, from the device path. */
  readonly address: string;
  readonly offset: number;
  readonly mtu: number | undefined;
  /** WriteValue's `type`: request, command or reliable. */
  readonly type: string | undefined;
}

const DEVICE_PATH = /^\/org\/bluez\/hci[0-9]{1,3}\/dev_([0-9A-F]{2}(?:_[0-9A-F]{2}){5})$/;

/** The Bluetooth address a BlueZ device path names, or undefined when it is not one. */
export function addressOfDevicePath(path: string): string | undefined {
  const match = DEVICE_PATH.exec(path);
  return match?.[1]?.replaceAll('_', ':');
}

/**
 * Parses ReadValue / WriteValue options. BlueZ always names the device; a call without one (or
 * with a path that is no device of an adapter) did not come from a connection and is refused.
 * Returns a BlueZ error name on refusal, for the D-Bus layer to throw.
 */
export function parseCallOptions(
  options: Readonly<Record<string, VariantLike | undefined>>,
): CallOptions | { readonly refused: 'InvalidArguments'; readonly reason: string } {
  const device = options.device?.value;
  if (typeof device !== 'string') return { refused: 'InvalidArguments', reason: 'no device option' };
  const address = addressOfDevicePath(device);
  if (address === undefined)
    return { refused: 'InvalidArguments', reason: 'device is not a BlueZ device path' };
  const offset = options.offset?.value ?? 0;
  if (typeof offset !== 'number' || !Number.isInteger(offset) || offset < 0 || offset > 0xffff) {
    return { refused: 'InvalidArguments', reason: 'bad offset' };
  }
  const mtu = options.mtu?.value;
  const type = options.type?.value;
  return {
    device,
    address,
    offset,
    mtu: typeof mtu === 'number' && Number.isInteger(mtu) && mtu >= 23 && mtu <= 517 ? mtu : undefined,
    type: typeof type === 'string' ? type : undefined,
  };
}

/** The longest attribute value ATT carries (one long write of the answer). */
export const MAX_ATTRIBUTE_BYTES = 512;
