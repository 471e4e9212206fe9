/**
 * Bounding a step of the BLE central in time, and naming its failure: timeouts always end in a
 * coded AgentError, D-Bus errors show their name. No I/O, no D-Bus library.
 */
import type { Code } from '../core/codes.js';
import { AgentError } from '../core/errors.js';

/** Resolves or rejects like `promise`, or rejects with a coded timeout; never leaves it unhandled. */
export function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
  code: Code = 'reader_timeout',
): Promise<T> {
  promise.catch(() => {});
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new AgentError(code, `${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Waits for a promise and returns its error (or undefined), never throwing. */
export async function settle(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
    return undefined;
  } catch (err) {
    return err ?? new Error('rejected');
  }
}

export function dbusErrorName(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const type: unknown = Reflect.get(err, 'type');
  return typeof type === 'string' ? type : undefined;
}

export function errorText(err: unknown): string {
  const name = dbusErrorName(err);
  const message = err instanceof Error ? err.message : String(err);
  return name === undefined ? message : `${name}: ${message}`;
}
