import { execFileSync } from 'node:child_process';
import {
  closeSync,
  fstatSync,
  ftruncateSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Real filesystems for storage-fault tests (root only): a tmpfs with a size limit (a disk that
 * fills up) and an ext4 image on a loop device (a disk that can be frozen with fsfreeze). Each
 * is mounted on a fresh temp directory; `dispose` unfreezes, unmounts and removes what it made.
 * A process writing to a frozen filesystem sits in D state until it is thawed: always dispose in
 * a finally / afterAll.
 */
export interface ScratchFs {
  /** The mount point. */
  readonly dir: string;
  dispose(): void;
}

/** These tests mount filesystems: they need root, and say so rather than skip. */
function requireRoot(): void {
  if (process.getuid?.() !== 0) {
    throw new Error('this test mounts a tmpfs or a loop device: run it as root (CI does)');
  }
}

/** A tmpfs of `sizeBytes` (rounded up to pages by the kernel), on a new temp directory or `at`. */
export function mountTmpfs(sizeBytes: number, at?: string): ScratchFs {
  requireRoot();
  const dir = at ?? mkdtempSync(join(tmpdir(), 'va-tmpfs-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeBytes},mode=0700`, 'tmpfs', dir]);
  let disposed = false;
  return {
    dir,
    dispose: () => {
      if (disposed) return;
      disposed = true;
      execFileSync('umount', ['-l', dir]);
      if (at === undefined) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Threads of `pid` in uninterruptible sleep (D): blocked on a disk that does not answer. */
export function threadsInDiskSleep(pid: number): number {
  let count = 0;
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${task}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'D') count += 1;
    } catch {
      // the thread ended
    }
  }
  return count;
}

export interface FreezableFs extends ScratchFs {
  /** fsfreeze -f: writes (and syncs) block until thaw. */
  freeze(): void;
  thaw(): void;
}

/** An ext4 image of `sizeMiB` on a loop device, mounted on a temp directory. */
export function mountExt4(sizeMiB: number): FreezableFs {
  requireRoot();
  const base = mkdtempSync(join(tmpdir(), 'va-ext4-'));
  const image = join(base, 'disk.img');
  const dir = join(base, 'mnt');
  execFileSync('mkdir', [dir]);
  execFileSync('truncate', ['-s', `${sizeMiB}M`, image]);
  execFileSync('mkfs.ext4', ['-q', '-F', image]);
  execFileSync('mount', ['-o', 'loop', image, dir]);
  execFileSync('chmod', ['0700', dir]);
  let frozen = false;
  let disposed = false;
  const thaw = () => {
    if (!frozen) return;
    execFileSync('fsfreeze', ['-u', dir]);
    frozen = false;
  };
  return {
    dir,
    freeze: () => {
      execFileSync('fsfreeze', ['-f', dir]);
      frozen = true;
    },
    thaw,
    dispose: () => {
      if (disposed) return;
      disposed = true;
      try {
        thaw();
      } finally {
        // The loop device is detached with the last unmount (mount -o loop sets autoclear).
        execFileSync('umount', [dir]);
        rmSync(base, { recursive: true, force: true });
      }
    },
  };
}

/**
 * Writes a file that takes every free byte of `dir`'s filesystem, then gives back `leavePages`
 * whole 4 KiB pages (tmpfs hands out pages: a file needs one to hold its first byte); returns its
 * path.
 */
export function fillUp(dir: string, leavePages = 0): string {
  const path = join(dir, 'filler');
  const fd = openSync(path, 'w');
  const chunk = Buffer.alloc(64 * 1024, 0x55);
  try {
    for (;;) {
      try {
        writeSync(fd, chunk);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
        throw err;
      }
    }
    // The last partial page or block: byte by byte until nothing fits.
    for (;;) {
      try {
        if (writeSync(fd, chunk, 0, 512) === 0) break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
        throw err;
      }
    }
    if (leavePages > 0) {
      const size = fstatSync(fd).size;
      ftruncateSync(fd, Math.max(0, Math.floor(size / 4096) * 4096 - leavePages * 4096));
    }
  } finally {
    closeSync(fd);
  }
  return path;
}

export function freeUp(filler: string): void {
  unlinkSync(filler);
}
