/**
 * The stand-in's one import of dbus-next (the service side). Everything else in src/sim/bluez
 * takes D-Bus types from here.
 */
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

/** A property value as dbus-next marshals it from a plain JS value and a signature. */
export type PropertyValue =
  | string
  | number
  | boolean
  | readonly string[]
  | Uint8Array
  | Record<string, unknown>;

/** Property table of one interface: name → signature, access, and a getter of its current value. */
export interface PropertySpec {
  readonly signature: string;
  readonly access: 'read' | 'readwrite';
}

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
  | 'DoesNotExist'
  | 'AlreadyExists';

/** Connects to the bus at `address` as a plain client that can also own names and export objects. */
export function connectBus(address: string): MessageBus {
  return sessionBus({ busAddress: address });
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
