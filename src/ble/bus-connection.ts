/**
 * The BLE central's connection to the D-Bus system bus, through node-ble (which opens it and
 * finds the adapters): the link's own match rules, its signal and error listeners, the adapter
 * it uses, and closing it all again. node-ble's leaked match rules and listeners go only with
 * the connection, hence `sessionsServed` and `exhausted` (src/ble/discovery.ts recycles it).
 */
import type { ClientInterface, Message, MessageBus } from 'dbus-next';
import NodeBle from 'node-ble';
import { AgentError } from '../core/errors.js';
import type { DeviceTable } from './bluez-model.js';
import { dbusErrorName, errorText, withTimeout } from './bounded-calls.js';
import { BLUEZ, DAEMON, isMessageBus, OBJECT_MANAGER, PROPERTIES, proxyCall } from './dbus-calls.js';

const MATCH_RULES = [
  `type='signal',sender='${DAEMON}',interface='${DAEMON}',member='NameOwnerChanged',arg0='${BLUEZ}'`,
  `type='signal',sender='${BLUEZ}',interface='${OBJECT_MANAGER}'`,
  `type='signal',sender='${BLUEZ}',interface='${PROPERTIES}',member='PropertiesChanged',path_namespace='/org/bluez'`,
];

export interface BusConnection {
  readonly bluetooth: NodeBle.Bluetooth;
  readonly destroy: () => void;
  readonly dbus: MessageBus;
  readonly daemon: ClientInterface;
  readonly detach: () => void;
  /** Sessions that resolved GATT through node-ble (each leaks match rules until a reconnect). */
  sessionsServed: number;
  /** The daemon refused a match rule: reconnect as soon as idle. */
  exhausted: boolean;
}

export interface AdapterState {
  readonly name: string;
  readonly path: string;
  readonly adapter: NodeBle.Adapter;
  readonly iface: ClientInterface;
  readonly table: DeviceTable;
}

export interface BusConnectionOptions {
  /** D-Bus system bus address; default DBUS_SYSTEM_BUS_ADDRESS or the system socket. */
  readonly busAddress: string | undefined;
  readonly callTimeoutMs: number;
  /** Every message on the connection once it is set up (signals of the link's match rules). */
  readonly onMessage: (conn: BusConnection, msg: Message) => void;
  readonly onError: (conn: BusConnection, err: unknown) => void;
}

/** Opens the bus through node-ble and adds the link's match rules. Rejects with a coded error. */
export async function openBusConnection(options: BusConnectionOptions): Promise<BusConnection> {
  const { bluetooth, destroy } = openBluetooth(options.busAddress);
  const dbus: unknown = Reflect.get(bluetooth, 'dbus');
  if (!isMessageBus(dbus)) {
    destroy();
    throw new AgentError('internal', 'node-ble exposes no D-Bus connection');
  }
  let conn: BusConnection | undefined;
  const onMessage = (msg: Message): void => {
    if (conn !== undefined) options.onMessage(conn, msg);
  };
  const onError = (err: unknown): void => {
    if (conn !== undefined) options.onError(conn, err);
  };
  dbus.on('message', onMessage);
  dbus.on('error', onError);
  const detach = (): void => {
    dbus.off('message', onMessage);
    dbus.off('error', onError);
    // Late errors from a closed connection must not become unhandled 'error' events.
    dbus.on('error', () => {});
  };
  try {
    const daemonObject = await withTimeout(
      dbus.getProxyObject(DAEMON, '/org/freedesktop/DBus'),
      options.callTimeoutMs,
      'D-Bus',
    );
    const daemon = daemonObject.getInterface(DAEMON);
    for (const rule of MATCH_RULES) await proxyCall(daemon, options.callTimeoutMs, 'AddMatch', rule);
    conn = { bluetooth, destroy, dbus, daemon, detach, sessionsServed: 0, exhausted: false };
  } catch (err) {
    detach();
    destroy();
    throw new AgentError(
      'reader_error',
      `cannot use the D-Bus system bus: ${errorText(err)}`,
      {},
      { cause: err },
    );
  }
  return conn;
}

/** Stops listening and closes the connection (node-ble's rules and listeners go with it). */
export function closeBusConnection(conn: BusConnection): void {
  conn.detach();
  conn.destroy();
}

/** The unique name of org.bluez's owner, or undefined when bluetoothd is not on the bus. */
export async function bluezOwner(conn: BusConnection, timeoutMs: number): Promise<string | undefined> {
  try {
    const owner = await proxyCall(conn.daemon, timeoutMs, 'GetNameOwner', BLUEZ);
    return typeof owner === 'string' ? owner : undefined;
  } catch (err) {
    if (dbusErrorName(err) === 'org.freedesktop.DBus.Error.NameHasNoOwner') return undefined;
    throw err;
  }
}

/** node-ble reads DBUS_SYSTEM_BUS_ADDRESS when createBluetooth() runs (synchronously). */
function openBluetooth(address: string | undefined): { bluetooth: NodeBle.Bluetooth; destroy: () => void } {
  if (address === undefined) return NodeBle.createBluetooth();
  const saved = process.env.DBUS_SYSTEM_BUS_ADDRESS;
  process.env.DBUS_SYSTEM_BUS_ADDRESS = address;
  try {
    return NodeBle.createBluetooth();
  } finally {
    if (saved === undefined) Reflect.deleteProperty(process.env, 'DBUS_SYSTEM_BUS_ADDRESS');
    else process.env.DBUS_SYSTEM_BUS_ADDRESS = saved;
  }
}
