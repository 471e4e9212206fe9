/**
 * Connecting one session of the BLE central: Connect, wait for ServicesResolved, find the
 * vehicle-key characteristics, StartNotify; deliver its notifications; Disconnect. The GATT object
 * paths come from the ObjectManager data the link already follows (BlueZ announces the service
 * and characteristics with InterfacesAdded before it sets ServicesResolved), and notifications
 * from the link's own PropertiesChanged match rule; node-ble's gatt() walks the tree by
 * introspection (ten round trips) and is only the fallback when those objects were not announced.
 * - gatt() waits for a ServicesResolved signal it can miss when the flip lands right after its
 *   Get; this waits for ServicesResolved itself first, then bounds gatt() by a timeout and
 *   retries it.
 * - node-ble's writeValue() defaults to a reliable write, which BlueZ refuses on ordinary
 *   characteristics; writes are write requests (type "request", with response).
 */
import { Variant } from 'dbus-next';
import type NodeBle from 'node-ble';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import {
  DEVICE_IFACE,
  type DeviceTable,
  GATT_CHARACTERISTIC_IFACE,
  type ResolvedGatt,
} from './bluez-model.js';
import { settle, withTimeout } from './bounded-calls.js';
import type { AdapterState, BusConnection } from './bus-connection.js';
import { bluezCall } from './dbus-calls.js';
import type { ResolvedLinkOptions } from './link-options.js';
import type { Session } from './link-session.js';

type ConnectOptions = Pick<
  ResolvedLinkOptions,
  | 'serviceUuid'
  | 'writeUuid'
  | 'notifyUuid'
  | 'connectTimeoutMs'
  | 'servicesTimeoutMs'
  | 'gattTimeoutMs'
  | 'gattAttempts'
  | 'callTimeoutMs'
>;

export class GattConnector {
  private readonly options: ConnectOptions;
  private readonly log: Logger;
  private readonly onGattRetry: () => void;
  /** Device path → what waits for its next change (ServicesResolved, Connected). */
  private readonly pathWaiters = new Map<string, Set<() => void>>();
  /** Notify characteristic path → the session subscribed to it. */
  private readonly notifyPaths = new Map<string, Session>();

  constructor(options: ConnectOptions, log: Logger, onGattRetry: () => void) {
    this.options = options;
    this.log = log;
    this.onGattRetry = onGattRetry;
  }

  get waitingPaths(): number {
    return this.pathWaiters.size;
  }

  get subscribedPaths(): number {
    return this.notifyPaths.size;
  }

  /** Connect, resolve GATT, subscribe. Rejects with a coded AgentError; the caller disconnects. */
  async establish(session: Session, adapter: AdapterState, conn: BusConnection): Promise<void> {
    const { callTimeoutMs, connectTimeoutMs, serviceUuid, writeUuid, notifyUuid } = this.options;
    if (adapter.table.get(session.path) === undefined) {
      throw new AgentError('reader_error', `BlueZ lists no device ${session.address}`);
    }
    session.connectSent = true;
    await session.guard(
      bluezCall(conn.dbus, session.path, DEVICE_IFACE, 'Connect'),
      connectTimeoutMs,
      'connect',
      'reader_timeout',
    );
    await this.servicesResolved(session, adapter.table);
    const gatt =
      adapter.table.gatt(session.path, serviceUuid, writeUuid, notifyUuid) ??
      (await this.resolveWithNodeBle(session, adapter, conn));
    session.mtu = gatt.mtu;
    session.notifyPath = gatt.notifyPath;
    this.notifyPaths.set(gatt.notifyPath, session);
    session.writer = (bytes) =>
      bluezCall(conn.dbus, gatt.writePath, GATT_CHARACTERISTIC_IFACE, 'WriteValue', 'aya{sv}', [
        Buffer.from(bytes),
        // A write request (with response); node-ble's default would be a reliable write.
        { type: new Variant('s', 'request') },
      ]);
    await session.guard(
      bluezCall(conn.dbus, gatt.notifyPath, GATT_CHARACTERISTIC_IFACE, 'StartNotify'),
      callTimeoutMs,
      'StartNotify',
    );
  }

  /** Stops delivering to an ended session. */
  unsubscribe(session: Session): void {
    if (session.notifyPath !== undefined && this.notifyPaths.get(session.notifyPath) === session) {
      this.notifyPaths.delete(session.notifyPath);
    }
  }

  /** Disconnect, bounded; resolves with its error or undefined, never rejects. */
  disconnect(session: Session, conn: BusConnection): Promise<unknown> {
    return settle(
      withTimeout(
        bluezCall(conn.dbus, session.path, DEVICE_IFACE, 'Disconnect'),
        this.options.callTimeoutMs,
        'Disconnect',
      ),
    );
  }

  /** A notification: PropertiesChanged(Value) on a notify characteristic a session subscribed to. */
  characteristicChanged(path: string, changed: unknown): void {
    const session = this.notifyPaths.get(path);
    if (session === undefined || typeof changed !== 'object' || changed === null) return;
    const value: unknown = Reflect.get(Reflect.get(changed, 'Value') ?? {}, 'value');
    if (value instanceof Uint8Array) session.deliver(Buffer.from(value));
  }

  /** Something changed about the device at `path`: whoever waits on it looks again. */
  wakePath(path: string): void {
    const waiters = this.pathWaiters.get(path);
    if (waiters === undefined) return;
    for (const wake of [...waiters]) wake();
    if (waiters.size === 0) this.pathWaiters.delete(path);
  }

  /** The device at `path` is gone: its waiters look a last time and are dropped. */
  forgetPath(path: string): void {
    this.wakePath(path);
    this.pathWaiters.delete(path);
  }

  /** The fallback when BlueZ's GATT objects were not announced: node-ble's gatt(), bounded and retried. */
  private async resolveWithNodeBle(
    session: Session,
    adapter: AdapterState,
    conn: BusConnection,
  ): Promise<ResolvedGatt> {
    const { callTimeoutMs, serviceUuid, writeUuid, notifyUuid } = this.options;
    conn.sessionsServed += 1;
    const device = await session.guard(
      adapter.adapter.getDevice(session.address),
      callTimeoutMs,
      'find device',
    );
    const gatt = await this.gattWithRetry(session, device, adapter.table);
    const service = await session.guard(gatt.getPrimaryService(serviceUuid), callTimeoutMs, 'service');
    const write = await session.guard(service.getCharacteristic(writeUuid), callTimeoutMs, 'write');
    const notify = await session.guard(service.getCharacteristic(notifyUuid), callTimeoutMs, 'notify');
    const writePath = characteristicPath(write);
    const notifyPath = characteristicPath(notify);
    return { servicePath: parentPath(writePath), writePath, notifyPath, mtu: undefined };
  }

  /**
   * Waits for ServicesResolved from the link's own signal subscription, which exists before
   * Connect is sent and so cannot miss the flip (node-ble's gatt() subscribes after its Get).
   */
  private servicesResolved(session: Session, table: DeviceTable): Promise<void> {
    const resolved = (): boolean => table.get(session.path)?.servicesResolved === true;
    if (resolved()) return Promise.resolve();
    const waiting = new Promise<void>((resolve, reject) => {
      const check = (): void => {
        const known = table.get(session.path);
        if (known?.servicesResolved === true) {
          done();
          resolve();
        } else if (known !== undefined && !known.connected) {
          done();
          reject(new AgentError('reader_error', 'the device disconnected before its services resolved'));
        }
      };
      const done = (): void => {
        const waiters = this.pathWaiters.get(session.path);
        waiters?.delete(check);
        if (waiters?.size === 0) this.pathWaiters.delete(session.path);
      };
      const waiters = this.pathWaiters.get(session.path) ?? new Set<() => void>();
      waiters.add(check);
      this.pathWaiters.set(session.path, waiters);
      session.onEnd(done);
    });
    return session.guard(waiting, this.options.servicesTimeoutMs, 'ServicesResolved', 'reader_timeout');
  }

  private async gattWithRetry(
    session: Session,
    device: NodeBle.Device,
    table: DeviceTable,
  ): Promise<NodeBle.GattServer> {
    const { gattAttempts, gattTimeoutMs } = this.options;
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await session.guard(device.gatt(), gattTimeoutMs, 'gatt()', 'reader_timeout');
      } catch (err) {
        const timedOut = err instanceof AgentError && err.code === 'reader_timeout' && !session.closed;
        if (!timedOut || attempt >= gattAttempts) throw err;
        if (table.get(session.path)?.connected !== true) {
          throw new AgentError('reader_error', 'the device disconnected while resolving GATT');
        }
        this.onGattRetry();
        this.log.warn({ address: session.address, attempt }, 'gatt() did not complete; retrying');
      }
    }
  }
}

/** The object path of a characteristic node-ble resolved (its fields name each path element). */
function characteristicPath(characteristic: NodeBle.GattCharacteristic): string {
  const parts = ['adapter', 'device', 'service', 'characteristic'].map((k) => Reflect.get(characteristic, k));
  if (!parts.every((p): p is string => typeof p === 'string' && p.length > 0)) {
    throw new AgentError('internal', 'node-ble characteristic without its object path');
  }
  return `/org/bluez/${parts.join('/')}`;
}

function parentPath(path: string): string {
  return path.slice(0, Math.max(0, path.lastIndexOf('/')));
}
