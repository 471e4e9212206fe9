/**
 * The stand-in's one import of dbus-next (the service side). Everything else in src/sim/bluez
 * takes D-Bus types from here.
 */
import { Socket } from 'node:net';
import {
  DBusError,
  interface as dbusInterface,
  Message,
  type MessageBus,
  MessageType,
  NameFlag,
  RequestNameReply,
  sessionBus,
  Variant,
} from 'dbus-next';

export { DBusError, Message, type MessageBus, MessageType, Variant };

export const ServiceInterface = dbusInterface.Interface;
export type ServiceInterface = InstanceType<typeof dbusInterface.Interface>;
export type PropertyOptions = dbusInterface.PropertyOptions;
export type MethodOptions = dbusInterface.MethodOptions;
export type SignalOptions = dbusInterface.SignalOptions;

/** BlueZ's error names (doc/*-api.txt "Possible errors"). */
export function bluezError(name: BluezErrorName, text: string): DBusError {
  return new DBusError(`org.bluez.Error.${name}`, text);
}

export type BluezErrorName =
  | 'Failed'
  | 'NotReady'
  | 'InProgress'
  | 'InvalidArguments'
  | 'NotConnected'
  | 'AlreadyConnected'
  | 'NotSupported'
  | 'NotPermitted'
  | 'InvalidOffset'
  | 'InvalidValueLength'
  | 'InvalidLength'
  | 'DoesNotExist'
  | 'AlreadyExists';

/** Connects to the bus at `address` as a plain client that can also own names and export objects. */
export function connectBus(address: string): MessageBus {
  const bus = sessionBus({ busAddress: address });
  coalesceWrites(bus);
  return bus;
}

/** The socket under a dbus-next connection (its private `_connection.stream`), if it has one. */
export function busSocket(bus: MessageBus): Socket | undefined {
  const connection: unknown = Reflect.get(bus, '_connection');
  const stream: unknown = connection === undefined ? undefined : Reflect.get(connection as object, 'stream');
  return stream instanceof Socket ? stream : undefined;
}

/**
 * Messages sent in one turn of the event loop leave in one socket write. A connect makes the
 * stand-in send six messages at once (objects added, properties changed, the reply), and one
 * write per message costs the machine a wake-up of the bus daemon each; bluetoothd, written in
 * C, would not make the agent wait that long. Reaches into dbus-next's connection (its stream),
 * which this file alone may do.
 */
function coalesceWrites(bus: MessageBus): void {
  const stream = busSocket(bus);
  if (stream === undefined) return;
  const original = stream.write;
  let corked = false;
  stream.write = function (this: Socket, ...args: Parameters<Socket['write']>) {
    if (!corked && this.writable) {
      corked = true;
      this.cork();
      process.nextTick(() => {
        corked = false;
        this.uncork();
      });
    }
    return Reflect.apply(original, this, args) as boolean;
  } as Socket['write'];
}

/** Requests a well-known name without queueing; true when this connection became its owner. */
export async function ownName(bus: MessageBus, name: string): Promise<boolean> {
  const reply = await bus.requestName(name, NameFlag.DO_NOT_QUEUE);
  return reply === RequestNameReply.PRIMARY_OWNER || reply === RequestNameReply.ALREADY_OWNER;
}

/** Adds a match rule for this connection (the bus daemon routes matching signals to it). */
export async function addMatch(bus: MessageBus, rule: string): Promise<void> {
  await bus.call(
    new Message({
      destination: 'org.freedesktop.DBus',
      path: '/org/freedesktop/DBus',
      interface: 'org.freedesktop.DBus',
      member: 'AddMatch',
      signature: 's',
      body: [rule],
    }),
  );
}

/** Removes every interface exported at `path` (dbus-next's typings demand an interface). */
export function unexportObject(bus: MessageBus, path: string): void {
  Reflect.apply(bus.unexport, bus, [path]);
}
