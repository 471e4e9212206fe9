/**
 * The BLE central's D-Bus calls: well-known names, raw method calls to BlueZ, proxy calls bounded
 * in time.
 */
import { type ClientInterface, Message, type MessageBus } from 'dbus-next';
import { AgentError } from '../core/errors.js';
import { withTimeout } from './bounded-calls.js';

export const BLUEZ = 'org.bluez';
export const DAEMON = 'org.freedesktop.DBus';
export const OBJECT_MANAGER = 'org.freedesktop.DBus.ObjectManager';
export const PROPERTIES = 'org.freedesktop.DBus.Properties';

/**
 * One method call to org.bluez as a raw message: no proxy, hence no introspection round trip
 * and no match rule. Rejects with the D-Bus error (its `type` is the error name).
 */
export async function bluezCall(
  dbus: MessageBus,
  path: string,
  iface: string,
  member: string,
  signature?: string,
  body?: unknown[],
): Promise<unknown[]> {
  const reply = await dbus.call(
    new Message({
      destination: BLUEZ,
      path,
      interface: iface,
      member,
      ...(signature === undefined || body === undefined ? {} : { signature, body }),
    }),
  );
  return reply?.body ?? [];
}

/** Calls a method on a dbus-next proxy interface, bounded by `timeoutMs`. */
export function proxyCall(
  iface: ClientInterface,
  timeoutMs: number,
  member: string,
  ...args: unknown[]
): Promise<unknown> {
  const method = iface[member];
  if (typeof method !== 'function') {
    return Promise.reject(new AgentError('reader_error', `BlueZ has no ${member} here`));
  }
  const result: Promise<unknown> = Promise.resolve(Reflect.apply(method, iface, args));
  return withTimeout(result, timeoutMs, member);
}

export function isMessageBus(value: unknown): value is MessageBus {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof Reflect.get(value, 'getProxyObject') === 'function' &&
    typeof Reflect.get(value, 'on') === 'function'
  );
}
