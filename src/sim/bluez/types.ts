import type { Logger } from '../../core/logger.js';
import type { GattPeer } from '../ble/gatt-peer.js';
import type { Advertisement, AppService } from './app-validation.js';

/** The stand-in adapter (org.bluez.Adapter1 at /org/bluez/<id>). */
export interface AdapterSpec {
  /** hciN; default hci0. */
  readonly id?: string;
  readonly address?: string;
  readonly name?: string;
  readonly alias?: string;
  /** Powered at start; default true. */
  readonly powered?: boolean;
}

export interface BluezStandInOptions {
  /** Address of the bus to own org.bluez on (a private dbus-daemon). */
  readonly busAddress: string;
  readonly adapter?: AdapterSpec;
  readonly logger: Logger;
}

/**
 * Modelled radio delays, applied per D-Bus call that crosses the air in a real BlueZ. Kept
 * explicit (and summed in `stats.modelledDelayMs`) so a benchmark can subtract them.
 */
export interface LinkDelays {
  /** Connect: LE connection set-up until Connected. */
  readonly connectMs: number;
  /** StartNotify: writing the CCCD. */
  readonly startNotifyMs: number;
  /** WriteValue: ATT write request → write response. */
  readonly writeMs: number;
  /** One notification from the peer until PropertiesChanged(Value). */
  readonly notifyMs: number;
  /** Disconnect until Connected false. */
  readonly disconnectMs: number;
}

/** What happens to ServicesResolved after a Connect. */
export type ServicesResolvedMode =
  /** True before Connect answers (GATT cache hit): the fast, common case. */
  | 'with-connect'
  /** Never becomes true: gatt() waits forever. */
  | 'never'
  /**
   * True before Connect answers, but the first Properties.Get of ServicesResolved after it
   * answers a stale false and no further signal follows: node-ble's gatt() then waits forever,
   * exactly as when it misses the flip (the race below). A deterministic reproduction.
   */
  | 'missed-once'
  /** Flips true this long after Connect answered: 1–5 ms is the window where gatt() can hang. */
  | { readonly afterMs: number };

/** Injected faults, per device. Mutable through StandInDevice.setFaults. */
export interface DeviceFaults {
  /** Connect calls to fail with org.bluez.Error.Failed: a count, or 'always'. */
  readonly connectFailures?: number | 'always';
  /** Connect never answers until Disconnect, power-off or the device leaving aborts it. */
  readonly connectHangs?: boolean;
  readonly servicesResolved?: ServicesResolvedMode;
  /** Drop the next N notifications the peer sends. */
  readonly dropNotifications?: number;
  /** The device leaves range right after this many more writes were answered. */
  readonly vanishAfterWrites?: number;
  /**
   * GATT objects are exported on connect without InterfacesAdded, as for a client that missed
   * those signals: it can only find them by walking the tree (node-ble's gatt()).
   */
  readonly gattUnannounced?: boolean;
}

export interface DeviceSpec {
  /** AA:BB:CC:DD:EE:FF */
  readonly address: string;
  readonly addressType?: 'public' | 'random';
  readonly name?: string;
  /** dBm; default -50. */
  readonly rssi?: number;
  /** Advertised TX power in dBm; default 0. */
  readonly txPower?: number;
  /** Service UUIDs the device advertises (Device1.UUIDs), lower case 128-bit. */
  readonly serviceUuids: readonly string[];
  /** The GATT service exported when connected; default serviceUuids[0]. */
  readonly gattServiceUuid?: string;
  /** Characteristic the central writes (flags write, write-without-response). */
  readonly writeUuid: string;
  /** Characteristic the peer notifies on (flags notify). */
  readonly notifyUuid: string;
  readonly peer: GattPeer;
  /** Shorthand: the same delay for every modelled call (see LinkDelays). Default 0. */
  readonly linkDelayMs?: number;
  readonly delays?: Partial<LinkDelays>;
  /**
   * While discovery runs with a filter, BlueZ reports every advertisement as a PropertiesChanged
   * of RSSI (no delta threshold); this is the advertising interval. Default 100 ms.
   */
  readonly advertisingIntervalMs?: number;
  /** ATT MTU the link negotiates (GattCharacteristic1.MTU); default 247. */
  readonly mtu?: number;
  readonly faults?: DeviceFaults;
}

export interface DeviceStats {
  readonly connects: number;
  readonly connectFailures: number;
  readonly disconnects: number;
  readonly writes: number;
  readonly notificationsSent: number;
  readonly notificationsDropped: number;
  /** Sum of modelled delays actually applied (ms). */
  readonly modelledDelayMs: number;
  /** Wall time actually spent waiting in those delays (ms): the nominal sum plus timer lateness. */
  readonly waitedMs: number;
}

/** A simulated phone or fob as the test or benchmark drives it. */
export interface StandInDevice {
  readonly address: string;
  /** /org/bluez/hci0/dev_AA_BB_… */
  readonly path: string;
  /** Advertising and within reach. */
  readonly inRange: boolean;
  /** The Device1 object exists on the bus (BlueZ has seen it). */
  readonly exported: boolean;
  readonly connected: boolean;
  readonly servicesResolved: boolean;
  readonly notifying: boolean;
  /** Write type of the last WriteValue ('request', 'command' or 'reliable'). */
  readonly lastWriteType: string | undefined;
  readonly stats: DeviceStats;
  readonly faults: DeviceFaults;
  setFaults(faults: DeviceFaults): void;
  setDelays(delays: Partial<LinkDelays>): void;
  setRssi(rssi: number): void;
  /** Out of range (vanishes, dropping any link) or back in range. */
  setInRange(inRange: boolean): void;
  /** The phone drops the link (remote disconnect). */
  dropLink(): void;
  /** D-Bus method calls on this device's objects (and RemoveDevice of it): "iface.Member" → n. */
  calls(): Readonly<Record<string, number>>;
  callCount(): number;
  resetCalls(): void;
}

/** Refusals the stand-in's peripheral side can be told to make (bluetoothd saying no). */
export interface PeripheralFaults {
  /** GattManager1.RegisterApplication fails with org.bluez.Error.Failed. */
  readonly refuseApplications?: boolean;
  /** LEAdvertisingManager1.RegisterAdvertisement fails with org.bluez.Error.Failed. */
  readonly refuseAdvertisements?: boolean;
}

/** A GATT application a client registered (GattManager1.RegisterApplication), as validated. */
export interface RegisteredApplication {
  /** The client's unique bus name. */
  readonly owner: string;
  readonly root: string;
  readonly services: readonly AppService[];
}

/** An advertisement a client registered, as bluetoothd parsed it. */
export interface RegisteredAdvertisement extends Advertisement {
  readonly owner: string;
  readonly path: string;
}

export interface StandInCentralOptions {
  /** Default: a fresh random private address. */
  readonly address?: string;
  /** ATT MTU of the link; default 247. 23 makes every value longer than 22 bytes a blob read. */
  readonly mtu?: number;
}

/**
 * A remote central (a phone) connected to the simulated adapter: its calls reach the registered
 * application as bluetoothd's would. Rejections are the application's D-Bus errors (or BlueZ's own,
 * for what bluetoothd refuses itself at the ATT level).
 */
export interface StandInCentral {
  /** /org/bluez/hci0/dev_XX_… (options.device in the application's calls). */
  readonly device: string;
  readonly address: string;
  readonly mtu: number;
  readonly connected: boolean;
  /** The last notifications received (at most 32). */
  readonly notifications: readonly Uint8Array[];
  read(uuid: string): Promise<Uint8Array>;
  write(uuid: string, bytes: Uint8Array, options?: { readonly withoutResponse?: boolean }): Promise<void>;
  subscribe(uuid: string): Promise<void>;
  unsubscribe(uuid: string): Promise<void>;
  onNotification(listener: (bytes: Uint8Array) => void): () => void;
  disconnect(): void;
}

export type StandInEvent =
  | { readonly type: 'device-seen'; readonly address: string }
  | { readonly type: 'device-gone'; readonly address: string }
  | { readonly type: 'connected'; readonly address: string }
  | { readonly type: 'disconnected'; readonly address: string }
  | { readonly type: 'write'; readonly address: string; readonly bytes: number }
  | { readonly type: 'notify'; readonly address: string; readonly bytes: number }
  | { readonly type: 'powered'; readonly powered: boolean }
  | { readonly type: 'discovering'; readonly discovering: boolean }
  | { readonly type: 'name'; readonly owned: boolean };

export interface BluezStandIn {
  readonly adapterPath: string;
  readonly powered: boolean;
  readonly discovering: boolean;
  /** org.bluez is owned by the stand-in right now. */
  readonly nameOwned: boolean;
  addDevice(spec: DeviceSpec): StandInDevice;
  /** The device leaves for good (out of range and forgotten). */
  removeDevice(address: string): void;
  device(address: string): StandInDevice | undefined;
  setPowered(powered: boolean): void;
  /** bluetoothd goes away: links drop, objects vanish, org.bluez loses its owner. */
  releaseName(): Promise<void>;
  /** bluetoothd comes back on a new connection: adapter returns, devices on the next discovery. */
  reacquireName(): Promise<void>;
  /** A remote central connects to the adapter (the vehicle is the peripheral). */
  connectCentral(options?: StandInCentralOptions): StandInCentral;
  central(device: string): StandInCentral | undefined;
  /** Centrals connected now. */
  centralCount(): number;
  applications(): readonly RegisteredApplication[];
  advertisements(): readonly RegisteredAdvertisement[];
  setPeripheralFaults(faults: PeripheralFaults): void;
  /** bluetoothd drops every advertisement and calls their Release. */
  releaseAdvertisements(): Promise<void>;
  /** Method calls on the adapter, /org/bluez and / (not on devices): "iface.Member" → n. */
  adapterCalls(): Readonly<Record<string, number>>;
  onEvent(listener: (event: StandInEvent) => void): () => void;
  stop(): Promise<void>;
}
