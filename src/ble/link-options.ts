/**
 * What the BLE central (src/ble/link.ts) is configured with and reports: its options and their
 * defaults, the candidates it offers, its counters. Types and defaults only.
 */
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';

/** Connects per second, on average, when ble.maxConnectsPerSecond is not set. */
export const DEFAULT_CONNECTS_PER_SECOND = 8;

export interface BleLinkOptions {
  /** The vehicle-key GATT service the devices advertise (128-bit UUID). */
  readonly serviceUuid: string;
  /** Characteristic the agent writes. */
  readonly writeUuid: string;
  /** Characteristic the device notifies on. */
  readonly notifyUuid: string;
  readonly logger: Logger;
  readonly clock?: Pick<Clock, 'now' | 'monotonic'>;
  /** D-Bus system bus address; default DBUS_SYSTEM_BUS_ADDRESS or the system socket. */
  readonly busAddress?: string;
  /** Adapter name (hci0…); default the first adapter BlueZ lists. */
  readonly adapter?: string;
  /** Devices heard weaker than this (dBm) are not offered. Default -80. */
  readonly rssiThreshold?: number;
  /** Concurrent sessions. Default 4. */
  readonly maxSessions?: number;
  /**
   * A session that has not shown a signature-checked answer (the reader marks it proven) keeps
   * its slot this long from its start; after that a waiting device may take the slot. Default 1000 ms.
   */
  readonly unprovenTurnMs?: number;
  /** ... and is dropped this long after its start whether or not anyone waits. Default 4000 ms. */
  readonly unprovenDeadlineMs?: number;
  /** Devices remembered as waiting for a slot (a random one is forgotten past it). Default 64. */
  readonly maxWaiting?: number;
  /**
   * Connects per second, on average, with bursts of up to `maxSessions`; sighted devices wait for a
   * turn beyond it. Default 8 (a real adapter makes one LE connection at a time, each with GATT
   * discovery taking tens to hundreds of ms).
   */
  readonly maxConnectsPerSecond?: number;
  /**
   * Remote devices the link keeps track of; past it the least recently heard one without a session
   * is forgotten (it is looked up again when next heard). Default 256.
   */
  readonly maxTrackedDevices?: number;
  /** Random integer in [0, n), for picking among waiting devices. Default Math.random. */
  readonly random?: (n: number) => number;
  /** After any session a device is not offered again for this long. Default 1000 ms. */
  readonly sessionSpacingMs?: number;
  /** Connect until Connected. Default 5000 ms. */
  readonly connectTimeoutMs?: number;
  /** Connected until ServicesResolved. Default 5000 ms. */
  readonly servicesTimeoutMs?: number;
  /** One gatt() attempt. Default 1000 ms. */
  readonly gattTimeoutMs?: number;
  /** gatt() attempts before giving up. Default 3. */
  readonly gattAttempts?: number;
  /** Any other D-Bus call (write, StartNotify, Disconnect…). Default 3000 ms. */
  readonly callTimeoutMs?: number;
  /** A session left open longer is closed by the link. Default 15000 ms. */
  readonly sessionTimeoutMs?: number;
  /** Re-initialisation backoff after BlueZ or the adapter went away. Default 200…5000 ms. */
  readonly retryInitialMs?: number;
  readonly retryMaxMs?: number;
  /**
   * Reconnect to the bus when idle after this many sessions: frees node-ble's leaked match rules
   * and signal listeners (Node warns past 10 listeners on one object path). Default 10.
   */
  readonly recycleAfterSessions?: number;
}

export interface BleCandidate {
  /** AA:BB:CC:DD:EE:FF (phones use rotating random addresses). */
  readonly address: string;
  readonly name: string | undefined;
  readonly rssi: number;
}

export interface BleLinkStats {
  readonly candidates: number;
  readonly sessionsOpened: number;
  readonly sessionsFailed: number;
  readonly gattRetries: number;
  readonly initialisations: number;
  readonly busConnections: number;
  readonly activeSessions: number;
  /** Sessions now without a signature-checked answer. */
  readonly unprovenSessions: number;
  /** Sightings that found every slot taken and had to wait for a turn. */
  readonly sightingsDeferred: number;
  /** Unproven sessions ended after their turn to let a waiting device in. */
  readonly sessionsEvicted: number;
  /** Unproven sessions dropped at ble.unprovenDeadlineMs. */
  readonly unprovenTimeouts: number;
  /** Devices waiting for a slot now, and those forgotten because too many waited. */
  readonly waitingDevices: number;
  readonly waitingDropped: number;
  /** Connects made (Connect calls sent). */
  readonly connects: number;
  /** Sightings that found the connect budget spent and waited for a turn. */
  readonly connectsDeferred: number;
  /** Remote devices tracked now, and those forgotten because too many were tracked. */
  readonly trackedDevices: number;
  readonly trackedDevicesEvicted: number;
  /** Forgotten devices heard again and looked up (Device1 properties) to be tracked anew. */
  readonly devicesLookedUp: number;
  /** Sizes of the link's other per-address and per-path tables (bounded; for tests and status). */
  readonly tables: {
    readonly gattObjects: number;
    readonly holds: number;
    readonly pathWaiters: number;
    readonly notifyPaths: number;
    readonly lookups: number;
  };
}

/** The options with their defaults filled in (UUIDs lower case). */
export type ResolvedLinkOptions = Required<
  Omit<
    BleLinkOptions,
    'busAddress' | 'adapter' | 'clock' | 'logger' | 'maxWaiting' | 'random' | 'maxConnectsPerSecond'
  >
>;

export function resolveLinkOptions(options: BleLinkOptions): ResolvedLinkOptions {
  return {
    serviceUuid: options.serviceUuid.toLowerCase(),
    writeUuid: options.writeUuid.toLowerCase(),
    notifyUuid: options.notifyUuid.toLowerCase(),
    rssiThreshold: options.rssiThreshold ?? -80,
    maxSessions: options.maxSessions ?? 4,
    unprovenTurnMs: options.unprovenTurnMs ?? 1000,
    unprovenDeadlineMs: options.unprovenDeadlineMs ?? 4000,
    sessionSpacingMs: options.sessionSpacingMs ?? 1000,
    connectTimeoutMs: options.connectTimeoutMs ?? 5000,
    servicesTimeoutMs: options.servicesTimeoutMs ?? 5000,
    gattTimeoutMs: options.gattTimeoutMs ?? 1000,
    gattAttempts: Math.max(1, options.gattAttempts ?? 3),
    callTimeoutMs: options.callTimeoutMs ?? 3000,
    sessionTimeoutMs: options.sessionTimeoutMs ?? 15_000,
    retryInitialMs: options.retryInitialMs ?? 200,
    retryMaxMs: options.retryMaxMs ?? 5000,
    recycleAfterSessions: Math.max(1, options.recycleAfterSessions ?? 10),
    maxTrackedDevices: Math.max(1, options.maxTrackedDevices ?? 256),
  };
}
