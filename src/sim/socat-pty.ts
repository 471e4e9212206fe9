import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { AgentError } from '../core/errors.js';

/**
 * Two linked pseudo-terminals made by socat, for running the PN532 emulator behind a real serial
 * path (serialport on one end, the emulator on the other). socat runs under a tiny sh wrapper that
 * kills it when our end of its stdin closes, so socat never outlives the agent, even after
 * kill -9.
 */

export interface SocatPtyPair {
  /** The end the driver opens. */
  readonly host: string;
  /** The end the emulator opens. */
  readonly device: string;
  /** Ends socat (by closing the wrapper's stdin, then by PID) and waits for it. */
  stop(): Promise<void>;
}

/** The path of an executable on PATH, or undefined (no shell involved). */
export function findExecutable(name: string, path = process.env.PATH ?? ''): string | undefined {
  for (const dir of path.split(delimiter)) {
    if (dir === '') continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

const WRAPPER = 'socat "$@" & echo $!; read _; kill $! 2>/dev/null; wait';

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.stdin?.end();
  });
}

/** Starts socat with ptys linked at <dir>/<name>-host and <dir>/<name>-dev. */
export async function startSocatPtyPair(
  dir: string,
  name = 'pn532',
  timeoutMs = 5000,
): Promise<SocatPtyPair> {
  const socat = findExecutable('socat');
  if (!socat) throw new AgentError('unsupported', 'socat is not installed (apt-get install socat)');
  const host = join(dir, `${name}-host`);
  const device = join(dir, `${name}-dev`);
  // Links left by a socat that has not yet gone (an agent killed a moment ago) would point at
  // dead ptys: remove them so the wait below sees this socat's own.
  await Promise.all([rm(host, { force: true }), rm(device, { force: true })]);
  const child = spawn(
    'sh',
    ['-c', WRAPPER, 'sh', `pty,raw,echo=0,link=${host}`, `pty,raw,echo=0,link=${device}`],
    { stdio: ['pipe', 'ignore', 'ignore'] },
  );
  child.stdin.on('error', () => {});
  const started = performance.now();
  while (!(existsSync(host) && existsSync(device))) {
    if (child.exitCode !== null || performance.now() - started > timeoutMs) {
      await stopChild(child);
      throw new AgentError('reader_error', `socat did not create its ptys in ${dir}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return { host, device, stop: () => stopChild(child) };
}
