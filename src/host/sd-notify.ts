import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, isAbsolute, join } from 'node:path';
import type { Logger } from '../core/logger.js';

/**
 * sd_notify(3) for a Node process. The protocol is one AF_UNIX datagram per notification, sent to
 * $NOTIFY_SOCKET, holding newline-separated assignments (READY=1, WATCHDOG=1, STOPPING=1,
 * STATUS=…). Node cannot send unix datagrams (node:dgram is UDP only, node:net is streams only)
 * and the project takes no native addon, so a helper process sends them:
 *
 * - socat (preferred): one `socat -u STDIN UNIX-SENDTO:$NOTIFY_SOCKET` child for the agent's
 *   whole life. Each newline-terminated message written to its stdin leaves as a datagram (two
 *   writes that socat reads at once leave as one datagram with both assignments, which the
 *   protocol allows). Because the helper stays alive, systemd can always attribute its messages
 *   to the unit through the sender's cgroup; a short-lived sender that exits before PID 1 reads
 *   the datagram can lose it (sd_notify(3), "attributed to units correctly only if ... the
 *   sending process is still around"). It ends by itself at end of file, so it dies with the agent.
 * - systemd-notify (fallback when socat is missing): one process per message, run one at a time.
 *   systemd ≥ 246 makes it wait until PID 1 has processed the message (a BARRIER=1 round trip)
 *   unless --no-block, which closes the same race at the cost of a fork per ping.
 *
 * Either way the sender is not the main PID, so the unit needs NotifyAccess=all.
 */

export interface NotifyTransport {
  /** What sends the datagrams, for logs: `socat` or `systemd-notify`. */
  readonly kind: string;
  /** Queues one notification (newline-separated assignments). Never throws. */
  send(message: string): void;
  /** Sends what is queued (bounded wait), then ends the helper. Never rejects. */
  close(): Promise<void>;
}

const NOTIFY_VARIABLES = ['NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID'] as const;

/**
 * Moves the notify variables out of `env` (process.env) into the returned object, before any
 * child process starts: children inherit the environment, and a child that speaks sd_notify
 * (dbus-daemon of the BLE simulator does) would otherwise send READY=1 or STOPPING=1 for the
 * whole unit under NotifyAccess=all. sd_notify(3)'s unset_environment does the same.
 */
export function takeNotifyEnvironment(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const taken: NodeJS.ProcessEnv = {};
  for (const name of NOTIFY_VARIABLES) {
    const value = env[name];
    if (value !== undefined) taken[name] = value;
    delete env[name];
  }
  return taken;
}

/** $NOTIFY_SOCKET when it names something a datagram can be sent to: an absolute path or @abstract. */
export function notifySocketFrom(env: NodeJS.ProcessEnv): string | undefined {
  const value = env.NOTIFY_SOCKET;
  if (value === undefined || value === '') return undefined;
  if (value.startsWith('@') ? value.length > 1 : isAbsolute(value)) return value;
  return undefined;
}

/**
 * How often to send WATCHDOG=1: half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises.
 * Undefined when the watchdog is off, malformed, or meant for another process ($WATCHDOG_PID).
 */
export function watchdogPingIntervalMs(env: NodeJS.ProcessEnv, pid: number): number | undefined {
  const usecText = env.WATCHDOG_USEC;
  if (usecText === undefined || !/^\d{1,15}$/.test(usecText)) return undefined;
  const usec = Number(usecText);
  if (usec <= 0) return undefined;
  const pidText = env.WATCHDOG_PID;
  if (pidText !== undefined && pidText !== '' && (!/^\d+$/.test(pidText) || Number(pidText) !== pid)) {
    return undefined;
  }
  return Math.max(1, Math.floor(usec / 2000));
}

/**
 * One notification: assignments in order, each on its own line, newline-terminated. Values are
 * single-line (a STATUS text with a newline would inject an assignment) and capped in length.
 */
export function formatNotification(fields: readonly (readonly [string, string])[]): string {
  const lines: string[] = [];
  for (const [name, value] of fields) {
    if (!/^[A-Z][A-Z0-9_]*$/.test(name)) throw new Error(`bad notification variable ${name}`);
    const clean = value.replace(/[\r\n\0]+/g, ' ').slice(0, 512);
    lines.push(`${name}=${clean}`);
  }
  return `${lines.join('\n')}\n`;
}

/** The socat address that sends datagrams to the notify socket, or undefined for odd paths. */
export function socatAddressFor(socket: string): string | undefined {
  // socat's address syntax gives , : ! and spaces meaning; systemd's sockets never use them.
  if (!/^@?[A-Za-z0-9_./-]+$/.test(socket)) return undefined;
  return socket.startsWith('@') ? `ABSTRACT-SENDTO:${socket.slice(1)}` : `UNIX-SENDTO:${socket}`;
}

/** First executable called `name` on PATH (or `name` itself when it is a path). */
export function findExecutable(name: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const candidates = name.includes('/')
    ? [name]
    : (env.PATH ?? '')
        .split(delimiter)
        .filter((dir) => dir !== '')
        .map((dir) => join(dir, name));
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

const RESPAWN_MIN_MS = 1000;
const CLOSE_WAIT_MS = 2000;

/** A long-lived socat child that turns each write into a datagram (see the file comment). */
export class SocatNotifyTransport implements NotifyTransport {
  readonly kind = 'socat';
  private child: ChildProcess | undefined;
  private lastSpawn = Number.NEGATIVE_INFINITY;
  private closed = false;

  constructor(
    private readonly socatPath: string,
    private readonly address: string,
    private readonly log: Logger,
  ) {}

  send(message: string): void {
    if (this.closed) return;
    const child = this.ensureChild();
    if (child?.stdin === null || child?.stdin === undefined) return;
    child.stdin.write(message);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.stdin?.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), CLOSE_WAIT_MS);
    await exited;
    clearTimeout(timer);
  }

  private ensureChild(): ChildProcess | undefined {
    const current = this.child;
    if (current && current.exitCode === null && current.signalCode === null && !current.killed)
      return current;
    // A helper that died (the socket vanished during a daemon-reexec, say) is restarted, but not
    // in a tight loop: a ping lost meanwhile is what the watchdog margin is for.
    const now = performance.now();
    if (now - this.lastSpawn < RESPAWN_MIN_MS) return undefined;
    this.lastSpawn = now;
    const child = spawn(this.socatPath, ['-u', 'STDIN', this.address], {
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-400);
    });
    child.stdin?.on('error', () => {});
    child.on('error', (err) => {
      this.log.error({ code: 'internal', err: err.message }, 'sd_notify helper (socat) failed to start');
    });
    child.on('exit', (code, signal) => {
      if (!this.closed) {
        this.log.warn(
          { code: 'internal', exit: code, signal, err: stderr.trim() },
          'sd_notify helper (socat) exited; restarting it on the next notification',
        );
      }
    });
    this.child = child;
    return child;
  }
}

const NOTIFY_TIMEOUT_MS = 10_000;
const MAX_QUEUED = 16;
const WATCHDOG_MESSAGE = 'WATCHDOG=1\n';

/** One systemd-notify per message, strictly in order (see the file comment). */
export class SystemdNotifyTransport implements NotifyTransport {
  readonly kind = 'systemd-notify';
  private readonly queue: string[] = [];
  private running: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly binary: string,
    private readonly socket: string,
    private readonly log: Logger,
  ) {}

  send(message: string): void {
    if (this.closed) return;
    // A stuck manager must not grow the queue without bound: old pings are worth nothing.
    if (this.queue.length >= MAX_QUEUED) {
      const ping = this.queue.indexOf(WATCHDOG_MESSAGE);
      this.queue.splice(Math.max(ping, 0), 1);
    }
    this.queue.push(message);
    this.running ??= this.drain().finally(() => {
      this.running = undefined;
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    const running = this.running;
    if (running === undefined) return;
    await Promise.race([running, new Promise((resolve) => setTimeout(resolve, CLOSE_WAIT_MS).unref())]);
  }

  private async drain(): Promise<void> {
    for (let message = this.queue.shift(); message !== undefined; message = this.queue.shift()) {
      const args = message.split('\n').filter((line) => line !== '');
      await new Promise<void>((resolve) => {
        const child = spawn(this.binary, args, {
          stdio: ['ignore', 'ignore', 'pipe'],
          env: { ...process.env, NOTIFY_SOCKET: this.socket },
        });
        let stderr = '';
        child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
          stderr = (stderr + chunk).slice(-400);
        });
        const timer = setTimeout(() => child.kill('SIGKILL'), NOTIFY_TIMEOUT_MS);
        child.on('error', (err) => {
          clearTimeout(timer);
          this.log.error({ code: 'internal', err: err.message }, 'systemd-notify failed to start');
          resolve();
        });
        child.on('exit', (code) => {
          clearTimeout(timer);
          if (code !== 0) {
            this.log.warn({ code: 'internal', exit: code, err: stderr.trim() }, 'systemd-notify failed');
          }
          resolve();
        });
      });
    }
  }
}

/**
 * The transport for this process, or undefined when not started by systemd (no $NOTIFY_SOCKET) or
 * when no helper is installed (logged: systemd will then time out the start and say why).
 * `notifyEnv` holds the notify variables (takeNotifyEnvironment); helpers are found on $PATH.
 */
export function createNotifyTransport(options: {
  readonly notifyEnv: NodeJS.ProcessEnv;
  readonly log: Logger;
  readonly pathEnv?: NodeJS.ProcessEnv;
}): NotifyTransport | undefined {
  const { log } = options;
  const pathEnv = options.pathEnv ?? process.env;
  const socket = notifySocketFrom(options.notifyEnv);
  if (socket === undefined) return undefined;
  const socat = findExecutable('socat', pathEnv);
  const address = socatAddressFor(socket);
  if (socat !== undefined && address !== undefined) return new SocatNotifyTransport(socat, address, log);
  const notify = findExecutable('systemd-notify', pathEnv);
  if (notify !== undefined) return new SystemdNotifyTransport(notify, socket, log);
  log.error(
    { code: 'internal', notifySocket: socket },
    'NOTIFY_SOCKET is set but neither socat nor systemd-notify is installed: systemd never hears READY=1 (apt-get install socat)',
  );
  return undefined;
}
