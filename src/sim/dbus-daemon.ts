import { type ChildProcess, spawn } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentError } from '../core/errors.js';

/** A private system-type dbus-daemon for sim mode and tests. */
export interface PrivateDbus {
  /** The bus address, e.g. `unix:path=/tmp/dbus-XXXX,guid=…` (use as DBUS_SYSTEM_BUS_ADDRESS). */
  readonly address: string;
  readonly pid: number;
  /** Ends the daemon by its PID and removes its temp dir. Safe to call twice. */
  stop(): Promise<void>;
}

export interface PrivateDbusOptions {
  /**
   * Limits the daemon enforces, as in `<limit name="…">` (e.g. max_match_rules_per_connection,
   * which real system buses set to 512 by default: tests use a low one to prove the BLE link
   * does not leak match rules).
   */
  readonly limits?: Readonly<Record<string, number>>;
  /** How long to wait for the daemon to print its address. */
  readonly startTimeoutMs?: number;
  /**
   * Policy elements replacing the allow-everything default (tests of a real policy file such
   * as hw/dbus-vehicle-agent-bluez.conf).
   */
  readonly policies?: string;
  /** Let other local users reach the socket (tests that run a client as another uid). */
  readonly worldAccessible?: boolean;
}

/**
 * A system-type bus that lets anything own and call anything: for tests and sim mode only,
 * never a production policy (that is hw/dbus-vehicle-agent-bluez.conf).
 */
const ALLOW_ALL = `  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
  </policy>`;

function busConfig(dir: string, limits: Readonly<Record<string, number>>, policies: string): string {
  const limitLines = Object.entries(limits)
    .map(([name, value]) => `  <limit name="${name}">${Math.trunc(value)}</limit>`)
    .join('\n');
  return `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:dir=${dir}</listen>
  <auth>EXTERNAL</auth>
${policies}
${limitLines}
</busconfig>
`;
}

const LIMIT_NAME = /^[a-z_]+$/;

/** Starts `dbus-daemon --nofork` on a socket in a fresh temp dir and returns its address. */
export async function startPrivateDbus(options: PrivateDbusOptions = {}): Promise<PrivateDbus> {
  const limits = options.limits ?? {};
  for (const name of Object.keys(limits)) {
    if (!LIMIT_NAME.test(name))
      throw new AgentError('bad_arguments', `invalid dbus-daemon limit name: ${name}`);
  }
  const dir = await mkdtemp(join(tmpdir(), 'vehicle-agent-dbus-'));
  if (options.worldAccessible === true) await chmod(dir, 0o755);
  const configPath = join(dir, 'bus.conf');
  await writeFile(configPath, busConfig(dir, limits, options.policies ?? ALLOW_ALL));

  const child = spawn('dbus-daemon', [`--config-file=${configPath}`, '--nofork', '--print-address=1'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (text: string) => {
    // "Failed to set fd limit" is harmless when not root; keep the rest for error messages.
    if (stderr.length < 4000) stderr += text;
  });

  const stop = stopper(child, dir);
  try {
    const address = await readAddress(child, options.startTimeoutMs ?? 5000, () => stderr);
    const pid = child.pid;
    if (pid === undefined) throw new AgentError('internal', 'dbus-daemon has no pid');
    return { address, pid, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

function readAddress(child: ChildProcess, timeoutMs: number, stderr: () => string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    const done = (err: Error | undefined, address?: string): void => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.off('error', onError);
      child.off('exit', onExit);
      if (err !== undefined) reject(err);
      else if (address !== undefined) resolve(address);
    };
    const onData = (chunk: Buffer): void => {
      out += chunk.toString('utf8');
      const newline = out.indexOf('\n');
      if (newline >= 0) done(undefined, out.slice(0, newline).trim());
    };
    const onError = (err: Error): void =>
      done(new AgentError('internal', `cannot start dbus-daemon: ${err.message}`, {}, { cause: err }));
    const onExit = (code: number | null): void =>
      done(new AgentError('internal', `dbus-daemon exited with ${code}: ${stderr().trim()}`));
    const timer = setTimeout(
      () => done(new AgentError('internal', `dbus-daemon printed no address in ${timeoutMs} ms`)),
      timeoutMs,
    );
    child.stdout?.on('data', onData);
    child.once('error', onError);
    child.once('exit', onExit);
  });
}

function stopper(child: ChildProcess, dir: string): () => Promise<void> {
  let stopping: Promise<void> | undefined;
  return () => {
    stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
        const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
        child.kill('SIGTERM');
        const force = setTimeout(() => child.kill('SIGKILL'), 2000);
        await exited;
        clearTimeout(force);
      }
      await rm(dir, { recursive: true, force: true });
    })();
    return stopping;
  };
}
