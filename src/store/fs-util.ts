import * as fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import type { Code } from '../core/codes.js';
import { AgentError } from '../core/errors.js';

/** The errno code of a Node fs error, if any. */
export function errnoOf(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    const code = (err as { code: unknown }).code;
    if (typeof code === 'string') return code;
  }
  return undefined;
}

/** Wraps a raw fs error into a coded one that names the file and what was being done. */
export function ioError(err: unknown, file: string, action: string, code: Code = 'state_io'): AgentError {
  if (err instanceof AgentError) return err;
  const errno = errnoOf(err);
  const reason = err instanceof Error ? err.message : String(err);
  return new AgentError(
    code,
    `cannot ${action} ${file}: ${reason}`,
    errno === undefined ? { file, action } : { file, action, errno },
    { cause: err },
  );
}

/**
 * Makes a directory's entries (a create, a rename, an unlink) durable. Without this a file that
 * was fsynced can still vanish on a power cut because its name was never written.
 */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export function syncDirectorySync(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes all of `data` at `position` (a single write may be short). */
export async function writeAll(handle: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await handle.write(data, done, data.length - done, position + done);
    if (bytesWritten <= 0) throw new Error('write made no progress');
    done += bytesWritten;
  }
}

/** A file name suffix that sorts by time and does not collide within one process. */
export function uniqueStamp(): string {
  stampCounter = (stampCounter + 1) % 1_000_000;
  return `${new Date().toISOString().replace(/[:.]/g, '')}-${process.pid}-${stampCounter}`;
}
let stampCounter = 0;
