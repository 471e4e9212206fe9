/**
 * Atomic file replacement: a reader (or the agent after `kill -9` or a power cut) sees either
 * the old complete file or the new complete file, never a mix or an empty file.
 *
 * Steps: write a temp file in the same directory (same filesystem, so rename is atomic), fsync
 * it, rename it over the target, fsync the directory (so the rename itself survives power loss).
 * Temp files are named `.<target>.tmp-<pid>-<random>`; ones left by a crashed process are removed
 * by the next write to the same target.
 *
 * Writes to one path from this process are serialised in call order, so the last call wins.
 * Do not mix `writeFileAtomicSync` with an in-flight async write of the same path.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { open, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { AgentError } from '../core/errors.js';
import { errnoOf, ioError, syncDirectory, syncDirectorySync } from './fs-util.js';

export interface AtomicWriteOptions {
  /** File mode of the result; default 0o600 (state files hold keys and counters). */
  readonly mode?: number;
}

export interface ReadJsonOptions<T> {
  /** Validates the parsed value and returns it typed; a throw marks the file corrupt. */
  readonly parse?: (value: unknown) => T;
}

const DEFAULT_MODE = 0o600;
const TEMP_INFIX = '.tmp-';

/** Temp files this process is writing right now (never cleaned up from under itself). */
const tempsInFlight = new Set<string>();
/** Per-target chain of writes, so concurrent writes land in call order. */
const writeChains = new Map<string, Promise<void>>();

export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  options: AtomicWriteOptions = {},
): Promise<void> {
  const target = resolve(path);
  const mode = options.mode ?? DEFAULT_MODE;
  const previous = writeChains.get(target) ?? Promise.resolve();
  const write = previous.then(() => replaceFile(target, data, mode));
  const settled = write.then(
    () => {},
    () => {},
  );
  writeChains.set(target, settled);
  try {
    await write;
  } finally {
    if (writeChains.get(target) === settled) writeChains.delete(target);
  }
}

export function writeFileAtomicSync(
  path: string,
  data: string | Uint8Array,
  options: AtomicWriteOptions = {},
): void {
  const target = resolve(path);
  const mode = options.mode ?? DEFAULT_MODE;
  const dir = dirname(target);
  const temp = tempPathFor(target);
  tempsInFlight.add(temp);
  try {
    removeStaleTempsSync(dir, basename(target));
    const fd = fs.openSync(temp, 'wx', mode);
    try {
      fs.fchmodSync(fd, mode);
      fs.writeFileSync(fd, data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temp, target);
    syncDirectorySync(dir);
  } catch (err) {
    try {
      fs.unlinkSync(temp);
    } catch {
      // already renamed or never created
    }
    throw ioError(err, target, 'write');
  } finally {
    tempsInFlight.delete(temp);
  }
}

/** The file's bytes, or undefined when it does not exist. Other failures are 'state_io'. */
export async function readFileIfExists(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return undefined;
    throw ioError(err, path, 'read');
  }
}

/** Reads and validates a JSON file; missing is 'state_io', unparsable or invalid is 'state_corrupt'. */
export async function readJsonFile<T = unknown>(path: string, options: ReadJsonOptions<T> = {}): Promise<T> {
  const bytes = await readFileIfExists(path);
  if (bytes === undefined) {
    throw new AgentError('state_io', `cannot read ${path}: the file does not exist`, {
      file: path,
      errno: 'ENOENT',
    });
  }
  return parseJsonBytes(path, bytes, options);
}

/** Like readJsonFile, but undefined when the file does not exist. */
export async function readJsonFileIfExists<T = unknown>(
  path: string,
  options: ReadJsonOptions<T> = {},
): Promise<T | undefined> {
  const bytes = await readFileIfExists(path);
  return bytes === undefined ? undefined : parseJsonBytes(path, bytes, options);
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Decodes, parses and validates JSON file content; every failure is 'state_corrupt' naming the file. */
export function parseJsonBytes<T = unknown>(
  path: string,
  bytes: Uint8Array,
  options: ReadJsonOptions<T> = {},
): T {
  const corrupt = (what: string, cause?: unknown): AgentError =>
    new AgentError('state_corrupt', `${path} is corrupt: ${what}`, { file: path, problem: what }, { cause });
  if (bytes.length === 0) throw corrupt('the file is empty');
  let text: string;
  try {
    text = strictUtf8.decode(bytes);
  } catch (err) {
    throw corrupt('not valid UTF-8', err);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw corrupt(`not valid JSON (${err instanceof Error ? err.message : String(err)})`, err);
  }
  if (options.parse === undefined) return value as T;
  try {
    return options.parse(value);
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw corrupt(`unexpected content (${reason})`, err);
  }
}

async function replaceFile(target: string, data: string | Uint8Array, mode: number): Promise<void> {
  const dir = dirname(target);
  const temp = tempPathFor(target);
  tempsInFlight.add(temp);
  try {
    await removeStaleTemps(dir, basename(target));
    const handle = await open(temp, 'wx', mode);
    try {
      await handle.chmod(mode); // the umask may have narrowed or the caller may want wider
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, target);
    await syncDirectory(dir);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw ioError(err, target, 'write');
  } finally {
    tempsInFlight.delete(temp);
  }
}

function tempPathFor(target: string): string {
  return join(
    dirname(target),
    `.${basename(target)}${TEMP_INFIX}${process.pid}-${randomBytes(6).toString('hex')}`,
  );
}

/** Which temp files in `names` were left behind by a crash (their writer is gone). */
function staleTemps(dir: string, base: string, names: readonly string[]): string[] {
  const prefix = `.${base}${TEMP_INFIX}`;
  const stale: string[] = [];
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const pid = Number.parseInt(name.slice(prefix.length), 10);
    const full = join(dir, name);
    if (pid === process.pid ? !tempsInFlight.has(full) : !processAlive(pid)) stale.push(full);
  }
  return stale;
}

async function removeStaleTemps(dir: string, base: string): Promise<void> {
  const names = await readdir(dir);
  // Best effort: a temp that cannot be removed only costs disk space.
  await Promise.all(staleTemps(dir, base, names).map((file) => unlink(file).catch(() => {})));
}

function removeStaleTempsSync(dir: string, base: string): void {
  const names = fs.readdirSync(dir);
  for (const file of staleTemps(dir, base, names)) {
    try {
      fs.unlinkSync(file);
    } catch {
      // best effort
    }
  }
}

function processAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoOf(err) === 'EPERM'; // exists, owned by someone else
  }
}
