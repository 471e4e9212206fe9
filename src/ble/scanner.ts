/**
 * Scanning for the BLE central: which of the devices BlueZ hears are offered as candidates, and
 * when. A sighting of a loud enough device advertising the service asks the session gate
 * (src/ble/link-policy.ts) for a turn; a device that must wait is served when a slot or the
 * connect budget frees up. It keeps the device table bounded (addresses cost an attacker
 * nothing) and looks forgotten devices up again, a few at a time. The link feeds it the devices
 * from its signals and tells it what state it is in (ScanHost).
 */
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import { addressFromPath, DEVICE_IFACE, devicePath, type KnownDevice } from './bluez-model.js';
import { errorText, withTimeout } from './bounded-calls.js';
import type { AdapterState, BusConnection } from './bus-connection.js';
import { bluezCall, PROPERTIES } from './dbus-calls.js';
import { type BleCandidate, DEFAULT_CONNECTS_PER_SECOND, type ResolvedLinkOptions } from './link-options.js';
import { ConnectBudget, type SessionGate } from './link-policy.js';

const LOOKUPS_PER_CONNECT = 4;

/** What the scanner needs to know of the link. */
export interface ScanHost {
  readonly running: boolean;
  /** Adapter powered and our discovery session running: candidates may be offered. */
  readonly ready: boolean;
  readonly adapter: AdapterState | undefined;
  readonly conn: BusConnection | undefined;
  hasSession(address: string): boolean;
  /** Ends an unproven session after its turn, for a waiting device. */
  evict(address: string): void;
}

type ScanOptions = Pick<
  ResolvedLinkOptions,
  'serviceUuid' | 'rssiThreshold' | 'maxSessions' | 'maxTrackedDevices' | 'callTimeoutMs'
>;

export interface ScanStats {
  readonly candidates: number;
  readonly trackedDevicesEvicted: number;
  readonly devicesLookedUp: number;
}

export class CandidateScanner {
  private readonly options: ScanOptions;
  private readonly host: ScanHost;
  private readonly gate: SessionGate;
  private readonly clock: Pick<Clock, 'monotonic'>;
  private readonly log: Logger;
  private readonly listeners = new Set<(candidate: BleCandidate) => void>();
  /** Device paths heard while untracked, being looked up (bounded by maxSessions). */
  private readonly lookups = new Set<string>();
  /** Lookups of forgotten devices: a few per connect the budget allows, so a spray cannot busy the bus. */
  private readonly lookupBudget: ConnectBudget;
  /** Serves a waiting device when the connect budget allows the next connect. */
  private budgetTimer: NodeJS.Timeout | undefined;
  private readonly counters = { candidates: 0, trackedDevicesEvicted: 0, devicesLookedUp: 0 };

  constructor(init: {
    readonly options: ScanOptions;
    readonly maxConnectsPerSecond: number | undefined;
    readonly host: ScanHost;
    readonly gate: SessionGate;
    readonly clock: Pick<Clock, 'monotonic'>;
    readonly log: Logger;
  }) {
    this.options = init.options;
    this.host = init.host;
    this.gate = init.gate;
    this.clock = init.clock;
    this.log = init.log;
    this.lookupBudget = new ConnectBudget({
      perSecond: LOOKUPS_PER_CONNECT * (init.maxConnectsPerSecond ?? DEFAULT_CONNECTS_PER_SECOND),
      burst: init.options.maxSessions,
    });
  }

  get lookupsRunning(): number {
    return this.lookups.size;
  }

  stats(): ScanStats {
    return { ...this.counters };
  }

  onCandidate(listener: (candidate: BleCandidate) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  stop(): void {
    clearTimeout(this.budgetTimer);
    this.budgetTimer = undefined;
  }

  /** A device BlueZ announced, or one looked up again: tracked, and offered if it was heard. */
  added(adapter: AdapterState, device: KnownDevice): void {
    this.trimDevices(adapter);
    if (device.rssi !== undefined) this.sighted(device);
  }

  sighted(device: KnownDevice): void {
    if (!this.offerable(device)) return;
    const turn = this.gate.offer(device.address, this.clock.monotonic());
    if (turn === undefined) {
      this.armBudgetTimer();
      return;
    }
    // The gate has freed the victim's slot already: the device admitted takes it first, so the
    // victim's tear-down does not hand it to someone else.
    if (turn.admit === device.address) this.emitCandidate(device);
    else this.serveWaiting(turn.admit);
    if (turn.evict !== undefined) {
      this.log.debug({ address: turn.evict, for: turn.admit }, 'unproven BLE session evicted after its turn');
      this.host.evict(turn.evict);
    }
  }

  /** Offers a free slot to a waiting device (`first`, else one the gate picks) that is still around. */
  serveWaiting(first?: string): void {
    const adapter = this.host.adapter;
    if (!this.host.running || !this.host.ready || adapter === undefined) return;
    const now = this.clock.monotonic();
    let address = first ?? this.gate.next(now);
    if (address === undefined) this.armBudgetTimer();
    // A few tries: a waiting device may have left since it was sighted.
    for (let tries = 0; address !== undefined && tries < this.options.maxSessions; tries += 1) {
      const device = adapter.table.get(devicePath(adapter.path, address));
      if (this.offerable(device) && this.gate.check(address, now) === undefined) {
        this.emitCandidate(device);
        return;
      }
      address = this.gate.next(now);
    }
  }

  /**
   * A device the link does not track was heard (it was forgotten when the table was full): its
   * properties are fetched once, a few lookups at a time; one heard while those run is dropped
   * until its next advertisement.
   */
  lookUp(adapter: AdapterState, path: string): void {
    const conn = this.host.conn;
    if (conn === undefined || this.lookups.has(path) || this.lookups.size >= this.options.maxSessions) return;
    if (addressFromPath(adapter.path, path) === undefined) return;
    if (!this.lookupBudget.take(this.clock.monotonic())) return;
    this.lookups.add(path);
    this.counters.devicesLookedUp += 1;
    withTimeout(
      bluezCall(conn.dbus, path, PROPERTIES, 'GetAll', 's', [DEVICE_IFACE]),
      this.options.callTimeoutMs,
      'GetAll',
    ).then(
      ([props]) => {
        this.lookups.delete(path);
        if (this.host.adapter !== adapter || this.host.conn !== conn || adapter.table.get(path) !== undefined)
          return;
        const device = adapter.table.added(path, { [DEVICE_IFACE]: props });
        if (device !== undefined) this.added(adapter, device);
      },
      (err: unknown) => {
        this.lookups.delete(path);
        this.log.debug({ path, err: errorText(err) }, 'device lookup failed');
      },
    );
  }

  private offerable(device: KnownDevice | undefined): device is KnownDevice & { rssi: number } {
    if (!this.host.ready || device === undefined || device.rssi === undefined) return false;
    if (!device.uuids.includes(this.options.serviceUuid)) return false;
    return device.rssi >= this.options.rssiThreshold;
  }

  /**
   * Keeps the device table within maxTrackedDevices: BlueZ keeps every address it heard for a
   * while (30 s for a temporary device), and addresses cost an attacker nothing. The least
   * recently heard devices without a session go first; one heard again is looked up anew.
   */
  private trimDevices(adapter: AdapterState): void {
    const table = adapter.table;
    if (table.size <= this.options.maxTrackedDevices) return;
    const victims: KnownDevice[] = [];
    for (const device of table.stalestFirst()) {
      if (table.size - victims.length <= this.options.maxTrackedDevices) break;
      if (this.gate.isBusy(device.address) || this.host.hasSession(device.address)) continue;
      victims.push(device);
    }
    for (const device of victims) {
      table.forget(device.path);
      this.gate.forget(device.address);
      this.counters.trackedDevicesEvicted += 1;
    }
  }

  /** When devices wait only for the connect budget, serves one as soon as it allows a connect. */
  private armBudgetTimer(): void {
    if (this.budgetTimer !== undefined || !this.host.running || this.gate.waitingCount === 0) return;
    const wait = this.gate.budgetWaitMs(this.clock.monotonic());
    if (wait <= 0) return;
    this.budgetTimer = setTimeout(() => {
      this.budgetTimer = undefined;
      this.serveWaiting();
    }, wait);
  }

  private emitCandidate(device: KnownDevice & { rssi: number }): void {
    this.counters.candidates += 1;
    const candidate: BleCandidate = { address: device.address, name: device.name, rssi: device.rssi };
    for (const listener of this.listeners) {
      try {
        listener(candidate);
      } catch (err) {
        this.log.error({ err: errorText(err) }, 'candidate listener threw');
      }
    }
  }
}
