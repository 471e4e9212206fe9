/**
 * One writer per store: a journal or an audit log appended to by two processes (the agent and
 * a CLI run beside it) would interleave and corrupt. `acquireOwnerLock` creates `<path>.lock`
 * exclusively, naming the owner by pid, boot id and process start time; a lock whose owner is
 * gone (killed, or from before a reboot, even if its pid was reused since) is taken over.
 * Two processes taking over the same stale lock at the same instant can both succeed; that
 * window is a few microseconds after a crash and is accepted.
 */
import { readFileSync } from 'node:fs';
import { open, readFile, unlink } from 'node:fs/promises';
import { AgentError } from '../core/errors.js';
import { errnoOf, ioError } from './fs-util.js';

interface Owner {
  readonly pid: number;
  readonly boot: string;
  readonly start: string;
  /** Who holds it, for the message a second process gets (e.g. `agent`, `vehicle-agent keys`). */
  readonly holder?: string;
}

export interface OwnerLockOptions {
  /** The lock file; default `<target>.lock`. */
  readonly path?: string;
  /** Named in the lock file and in the `busy` message another process gets. */
  readonly holder?: string;
}

export interface OwnerLock {
  readonly path: string;
  release(): Promise<void>;
}

export async function acquireOwnerLock(target: string, options: OwnerLockOptions = {}): Promise<OwnerLock> {
  const path = options.path ?? `${target}.lock`;
  const me: Owner = {
    pid: process.pid,
    boot: bootId(),
    start: startTime(process.pid),
    ...(options.holder === undefined ? {} : { holder: options.holder }),
  };
  for (let attempt = 0; attempt < 3; attempt += 1) {
    try {
      const handle = await open(path, 'wx', 0o600);
      try {
        await handle.writeFile(JSON.stringify(me));
      } finally {
        await handle.close();
      }
      return { path, release: () => release(path, me) };
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw ioError(err, path, 'create');
    }
    const holder = await readOwner(path);
    if (holder !== undefined && alive(holder)) {
      throw new AgentError(
        'busy',
        holder.holder === undefined
          ? `${target} is in use by process ${holder.pid}`
          : `${target} is in use by ${holder.holder} (pid ${holder.pid})`,
        { file: target, pid: holder.pid },
      );
    }
    await unlink(path).catch(() => {}); // stale: its owner is gone
  }
  throw new AgentError('busy', `${target}: could not take the lock ${path}`, { file: target });
}

async function release(path: string, me: Owner): Promise<void> {
  const holder = await readOwner(path);
  if (holder?.pid === me.pid && holder.start === me.start && holder.boot === me.boot) {
    await unlink(path).catch(() => {});
  }
}

async function readOwner(path: string): Promise<Owner | undefined> {
  try {
    const value = JSON.parse(await readFile(path, 'utf8')) as Partial<Owner>;
    if (typeof value.pid !== 'number' || typeof value.boot !== 'string' || typeof value.start !== 'string')
      return undefined;
    return {
      pid: value.pid,
      boot: value.boot,
      start: value.start,
      ...(typeof value.holder === 'string' ? { holder: value.holder.slice(0, 100) } : {}),
    };
  } catch {
    // Unreadable, half-written by a crashed owner, or an older format that named only a pid
    // (which may belong to another process by now): treat as stale.
    return undefined;
  }
}

function alive(owner: Owner): boolean {
  if (owner.boot !== bootId()) return false;
  try {
    process.kill(owner.pid, 0);
  } catch (err) {
    if (errnoOf(err) !== 'EPERM') return false;
  }
  return owner.start === startTime(owner.pid);
}

/** Changes at every boot (Linux); '' elsewhere. */
function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

/** The process start time in clock ticks since boot (field 22 of /proc/<pid>/stat); '' if unknown. */
function startTime(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '';
  } catch {
    return '';
  }
}
