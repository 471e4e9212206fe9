import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';

/**
 * File handles with injected faults, for what a real filesystem here cannot be made to do on
 * demand (an fdatasync that fails with EIO, a write cut short by ENOSPC after some bytes). Each
 * fault is used once, in order; everything else goes to the real file.
 */
export type Fault =
  | { readonly on: 'open'; readonly errno: string }
  | { readonly on: 'datasync' | 'sync' | 'truncate'; readonly errno: string }
  /** Writes `bytes` of the requested bytes for real, then fails. */
  | { readonly on: 'write'; readonly errno: string; readonly bytes: number };

export interface FaultyFiles {
  /** For JournalOptions.openFile. */
  readonly open: (path: string, flags: string, mode?: number) => Promise<FileHandle>;
  /** Faults not used yet; push to add. */
  readonly faults: Fault[];
  /** Calls seen, as `<method>` strings, in order. */
  readonly calls: string[];
}

function errnoError(errno: string, syscall: string): NodeJS.ErrnoException {
  const err: NodeJS.ErrnoException = new Error(`${errno}: injected fault, ${syscall}`);
  err.code = errno;
  err.syscall = syscall;
  return err;
}

export function faultyFiles(): FaultyFiles {
  const faults: Fault[] = [];
  const calls: string[] = [];
  const take = (on: Fault['on']): Fault | undefined => {
    const index = faults.findIndex((f) => f.on === on);
    return index < 0 ? undefined : faults.splice(index, 1)[0];
  };
  const wrap = (real: FileHandle): FileHandle =>
    new Proxy(real, {
      get(target, prop) {
        const value: unknown = Reflect.get(target, prop, target);
        if (typeof value !== 'function') return value;
        const method = value as (...args: unknown[]) => unknown;
        const name = String(prop);
        if (name === 'datasync' || name === 'sync' || name === 'truncate') {
          return async (...args: unknown[]) => {
            calls.push(name);
            const fault = take(name);
            if (fault) throw errnoError(fault.errno, name);
            return await method.apply(target, args);
          };
        }
        if (name === 'write') {
          return async (data: Uint8Array, offset: number, length: number, position: number) => {
            calls.push('write');
            const fault = take('write');
            if (fault && fault.on === 'write') {
              const part = Math.min(length, fault.bytes);
              if (part > 0) await target.write(data, offset, part, position);
              throw errnoError(fault.errno, 'write');
            }
            return await target.write(data, offset, length, position);
          };
        }
        return method.bind(target);
      },
    });
  return {
    faults,
    calls,
    open: async (path, flags, mode) => {
      calls.push('open');
      const fault = take('open');
      if (fault) throw errnoError(fault.errno, 'open');
      return wrap(await open(path, flags, mode));
    },
  };
}
