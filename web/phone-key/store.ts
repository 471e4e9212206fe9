/**
 * What the page keeps, in IndexedDB (CryptoKey objects are stored as they are, still
 * non-extractable): the phone's key, the vehicle pin, an enrollment in progress.
 */
import type { PhoneKey, VehiclePin } from './keys.js';

const DB = 'vehicle-agent-phone-key';
const STORE = 'state';

export interface Enrolling {
  readonly name: string;
}

interface Shape {
  key: PhoneKey;
  pin: VehiclePin;
  enrolling: Enrolling;
}

function open(): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function run<T>(mode: IDBTransactionMode, op: (s: IDBObjectStore) => IDBRequest): Promise<T> {
  const db = await open();
  try {
    return await new Promise<T>((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const req = op(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(req.result as T);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

export function load<K extends keyof Shape>(name: K): Promise<Shape[K] | undefined> {
  return run<Shape[K] | undefined>('readonly', (s) => s.get(name));
}

export async function save<K extends keyof Shape>(name: K, value: Shape[K]): Promise<void> {
  await run('readwrite', (s) => s.put(value, name));
}

export async function remove(name: keyof Shape): Promise<void> {
  await run('readwrite', (s) => s.delete(name));
}

/** Asks the browser not to evict the key under storage pressure; false when it declines. */
export async function persist(): Promise<boolean> {
  try {
    return (await navigator.storage?.persist?.()) ?? false;
  } catch {
    return false;
  }
}
