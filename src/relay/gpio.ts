import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Health } from '../core/types.js';
import {
  GPIOSET_V2_GUARD,
  GPIOSET_V2_INTERACTIVE_GUARD,
  type GpioLine,
  type GpiosetMajor,
  hasInteractiveMode,
  holderArgs,
  interactiveHolderArgs,
  levelFor,
  parseGpiosetVersion,
  setLevelCommand,
  splitAtPrompts,
} from './gpioset-syntax.js';
import { HealthTracker } from './health.js';
import { type CancelTimer, systemTimers, type Timers } from './timers.js';
import type { RelayChannel, RelayDriver } from './types.js';

export interface GpioRelayOptions {
  readonly channels: Partial<Readonly<Record<RelayChannel, GpioLine>>>;
  readonly logger: Logger;
  /** gpioset executable, looked up on PATH. */
  readonly gpiosetPath?: string;
  /** Consumer label of the requested lines (2.x only; 1.x always says "gpioset"). */
  readonly consumer?: string;
  /** Environment of the gpioset processes (and the PATH they are found on). */
  readonly env?: NodeJS.ProcessEnv;
  readonly timers?: Timers;
  readonly wallNow?: () => number;
  /** How long a holder gets to confirm the line (2.x banner) or to start (1.x). */
  readonly readyTimeoutMs?: number;
  /** 1.x prints nothing on success: init() waits this long to see that no holder died. */
  readonly settleMs?: number;
  /** A holder that lived this long resets the failure count. */
  readonly stableMs?: number;
  /** Backoff between attempts to re-drive a line whose holder failed. */
  readonly retryBackoffMs?: { readonly initialMs: number; readonly maxMs: number };
  /**
   * Use gpioset 2.x's interactive mode when it has one (default): one holder per line for good, a
   * level change is a line on its stdin. false: a holder per level, as with 1.x (for comparison).
   */
  readonly interactive?: boolean;
}

interface ExitInfo {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

interface Holder {
  readonly child: ChildProcess;
  /** The level it drives; an interactive holder changes it in place. */
  level: 0 | 1;
  /** gpioset 2.x in interactive mode: takes `set` commands on stdin, answers with its prompt. */
  readonly interactive: boolean;
  readonly exited: Promise<ExitInfo>;
  /** The driver asked it to exit (a level change or close); any other exit is a failure. */
  expected: boolean;
  dead: boolean;
  stderr: string;
  /** Interactive: what it printed since its last prompt. */
  stdout: string;
  /** It confirmed its line (1.x: it started; 2.x: its banner or first prompt). */
  ready: boolean;
  /** Interactive: callers waiting for the end of a command, oldest first (its output, or an error). */
  readonly replies: ((reply: string | Error) => void)[];
}

interface Channel {
  readonly name: RelayChannel;
  readonly line: GpioLine;
  desired: boolean;
  holder: Holder | undefined;
  /** Commands on one line run one after the other. */
  queue: Promise<void>;
  failures: number;
  lastProblem: string | undefined;
  retryTimer: CancelTimer | undefined;
  stableTimer: CancelTimer | undefined;
}

const STDERR_TAIL = 400;
/** After this many consecutive failures on a line the driver reports itself down, not degraded. */
const DOWN_AFTER = 3;
/** An interactive holder's output is kept up to this much (it prints nothing but prompts when well). */
const STDOUT_LIMIT = 4096;

/**
 * Relays on GPIO lines through libgpiod's gpioset, 1.x or 2.x (detected by init()).
 *
 * A line is only driven while a process holds it, so every channel has a holder process at all
 * times, driving the energised level or, just as important, the inactive one: a released line of
 * an active-low board can float to the energising level. With a gpioset 2.x that has its
 * interactive mode, each line has one holder for good and a level change is a `set` line on its
 * stdin (about a millisecond); otherwise (1.x, or 2.x built without it) a level change ends the
 * holder and starts another (kill, wait, spawn: several milliseconds). Holders die with their
 * owner: a pipe from the owner whose end of file (which the kernel delivers when the owner dies,
 * even by SIGKILL) ends them, so no orphan keeps a relay energised. A holder that dies by itself
 * is logged, health goes degraded (down after repeated failures) and the line is driven again
 * with backoff.
 */
export class GpioRelay implements RelayDriver {
  readonly kind = 'gpio';
  readonly channels: readonly RelayChannel[];
  private readonly lines = new Map<RelayChannel, Channel>();
  private readonly log: Logger;
  private readonly gpiosetPath: string;
  private readonly consumer: string;
  private readonly env: NodeJS.ProcessEnv;
  private readonly timers: Timers;
  private readonly readyTimeoutMs: number;
  private readonly settleMs: number;
  private readonly stableMs: number;
  private readonly backoff: { readonly initialMs: number; readonly maxMs: number };
  private readonly healthTracker: HealthTracker;
  private major: GpiosetMajor | undefined;
  private readonly allowInteractive: boolean;
  private interactiveMode = false;
  private closing = false;

  constructor(options: GpioRelayOptions) {
    this.log = options.logger;
    this.gpiosetPath = options.gpiosetPath ?? 'gpioset';
    this.consumer = options.consumer ?? 'vehicle-agent';
    this.env = options.env ?? process.env;
    this.timers = options.timers ?? systemTimers;
    this.readyTimeoutMs = options.readyTimeoutMs ?? 2000;
    this.settleMs = options.settleMs ?? 50;
    this.stableMs = options.stableMs ?? 2000;
    this.backoff = options.retryBackoffMs ?? { initialMs: 100, maxMs: 5000 };
    this.allowInteractive = options.interactive ?? true;
    this.healthTracker = new HealthTracker('disabled', options.wallNow, 'not initialised');
    for (const [name, line] of Object.entries(options.channels) as [RelayChannel, GpioLine | undefined][]) {
      if (line === undefined) continue;
      const clash = [...this.lines.values()].find(
        (ch) => ch.line.chip === line.chip && ch.line.line === line.line,
      );
      if (clash) {
        throw new AgentError(
          'config_invalid',
          `relays ${clash.name} and ${name} are on the same GPIO line ${line.chip}:${line.line}`,
          {
            field: 'relay.gpio',
          },
        );
      }
      this.lines.set(name, {
        name,
        line,
        desired: false,
        holder: undefined,
        queue: Promise.resolve(),
        failures: 0,
        lastProblem: undefined,
        retryTimer: undefined,
        stableTimer: undefined,
      });
    }
    this.channels = [...this.lines.keys()];
  }

  /** The detected gpioset major version (after init()). */
  get dialect(): GpiosetMajor | undefined {
    return this.major;
  }

  /** True when each line has one interactive holder (gpioset 2.x with --interactive). */
  get interactive(): boolean {
    return this.interactiveMode;
  }

  async init(): Promise<void> {
    this.closing = false;
    if (this.major === undefined) {
      const major = await this.detectVersion();
      this.interactiveMode = major === 2 && this.allowInteractive && (await this.detectInteractive());
      this.major = major;
    }
    const results = await Promise.allSettled([...this.lines.values()].map((ch) => this.command(ch, false)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw toAgentError(failed.reason, 'relay_failed');
    if (this.major === 1 && this.settleMs > 0) {
      // 1.x says nothing when it holds a line: give a failing request the time to exit.
      await new Promise<void>((resolve) => this.timers.schedule(this.settleMs, resolve));
      // A holder that failed in that time may already have been restarted by the retry: count failures.
      const dead = [...this.lines.values()].find(
        (ch) => ch.failures > 0 || ch.holder === undefined || ch.holder.dead,
      );
      if (dead) {
        throw new AgentError(
          'relay_failed',
          `gpioset could not hold ${dead.name}: ${dead.lastProblem ?? 'exited'}`,
          {
            channel: dead.name,
          },
        );
      }
    }
    this.log.info(
      {
        gpioset: this.major,
        interactive: this.interactiveMode,
        lines: [...this.lines.values()].map((ch) => ({ channel: ch.name, ...ch.line })),
      },
      'GPIO relays held de-energised',
    );
    this.updateHealth();
  }

  set(channel: RelayChannel, energised: boolean): Promise<void> {
    const ch = this.lines.get(channel);
    if (ch === undefined) {
      return Promise.reject(
        new AgentError('relay_failed', `relay channel ${channel} is not wired`, { channel }),
      );
    }
    if (this.major === undefined || this.closing) {
      return Promise.reject(new AgentError('relay_failed', 'the GPIO relay is not initialised', { channel }));
    }
    return this.command(ch, energised);
  }

  async allOff(): Promise<void> {
    if (this.major === undefined) return;
    await Promise.all(
      [...this.lines.values()].map((ch) =>
        this.command(ch, false).catch((err: unknown) => {
          const e = toAgentError(err, 'relay_failed');
          this.log.error(
            { code: e.code, channel: ch.name, err: e.message },
            'cannot de-energise a GPIO relay',
          );
        }),
      ),
    );
  }

  /** Drives every line inactive, then ends the holders (the lines are released). */
  async close(): Promise<void> {
    await this.allOff();
    this.closing = true;
    await Promise.all(
      [...this.lines.values()].map((ch) =>
        this.enqueue(ch, async () => {
          this.cancelTimers(ch);
          await this.endHolder(ch);
        }),
      ),
    );
    this.healthTracker.set('disabled', 'closed');
  }

  /**
   * From the process 'exit' handler: ends every holder that drives an energised level, so those
   * lines are released at once. Lines held inactive are left to end with the process.
   */
  allOffSync(): void {
    for (const ch of this.lines.values()) {
      ch.desired = false;
      const holder = ch.holder;
      if (holder === undefined || holder.dead || holder.level === levelFor(ch.line, false)) continue;
      holder.expected = true;
      killGroup(holder.child, 'SIGTERM');
    }
  }

  health(): Health {
    return this.healthTracker.get();
  }

  /** PIDs of the running holders (for status and tests). */
  holderPids(): Partial<Record<RelayChannel, number>> {
    const pids: Partial<Record<RelayChannel, number>> = {};
    for (const ch of this.lines.values()) {
      const pid = ch.holder?.dead === false ? ch.holder.child.pid : undefined;
      if (pid !== undefined) pids[ch.name] = pid;
    }
    return pids;
  }

  private command(ch: Channel, energised: boolean): Promise<void> {
    ch.desired = energised;
    return this.enqueue(ch, () => this.drive(ch));
  }

  private enqueue(ch: Channel, job: () => Promise<void>): Promise<void> {
    const run = ch.queue.then(job);
    ch.queue = run.catch(() => {});
    return run;
  }

  /** Makes the holder of `ch` drive the level of `ch.desired` (the latest wish wins). */
  private async drive(ch: Channel): Promise<void> {
    ch.retryTimer?.();
    ch.retryTimer = undefined;
    const level = levelFor(ch.line, ch.desired);
    const current = ch.holder;
    if (current !== undefined && !current.dead) {
      if (current.level === level) return;
      if (current.interactive) {
        await this.setLevel(ch, current, level);
        return;
      }
    }
    await this.endHolder(ch);
    try {
      ch.holder = await this.startHolder(ch, level);
    } catch (err) {
      const e = toAgentError(err, 'relay_failed');
      // The caller learns that energising failed; what gets retried is the inactive level only.
      ch.desired = false;
      this.failure(ch, e.message);
      throw e.code === 'relay_failed' ? e : new AgentError('relay_failed', e.message, { channel: ch.name });
    }
    this.log.debug({ channel: ch.name, level, pid: ch.holder.child.pid }, 'GPIO line held');
    ch.stableTimer?.();
    const holder = ch.holder;
    ch.stableTimer = this.timers.schedule(this.stableMs, () => {
      ch.stableTimer = undefined;
      if (ch.holder === holder && !holder.dead) {
        ch.failures = 0;
        ch.lastProblem = undefined;
        this.updateHealth();
      }
    });
    this.updateHealth();
  }

  /** Drives an interactive holder to `level`: one `set` command, done when its next prompt comes. */
  private async setLevel(ch: Channel, holder: Holder, level: 0 | 1): Promise<void> {
    try {
      const command = setLevelCommand(ch.line, level);
      const reply = (await this.ask(holder, command)).trim();
      // A set that works prints nothing but the next prompt (a line editor may echo the command);
      // anything else ("unknown line", "invalid line value") is a refusal.
      if (reply !== '' && reply !== command.trim())
        throw new Error(`gpioset refused the level: ${reply.slice(0, 200)}`);
      holder.level = level;
    } catch (err) {
      const e = new AgentError(
        'relay_failed',
        `gpioset could not drive ${ch.name}: ${err instanceof Error ? err.message : String(err)}`,
        { channel: ch.name, chip: ch.line.chip, line: ch.line.line },
      );
      // Its level is now unknown: end it (its line falls to the bias) and drive the line afresh.
      if (ch.holder === holder) ch.holder = undefined;
      holder.expected = true;
      killGroup(holder.child, 'SIGKILL');
      ch.desired = false;
      this.failure(ch, e.message);
      throw e;
    }
    this.log.debug({ channel: ch.name, level, pid: holder.child.pid }, 'GPIO line set');
  }

  /** Writes one command to an interactive holder; resolves with what it printed before its next prompt. */
  private ask(holder: Holder, command: string): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      if (holder.dead) {
        reject(new Error('the holder exited'));
        return;
      }
      let done = false;
      const cancel = this.timers.schedule(this.readyTimeoutMs, () => {
        if (done) return;
        done = true;
        const index = holder.replies.indexOf(answer);
        if (index >= 0) holder.replies.splice(index, 1);
        reject(new Error(`no answer within ${this.readyTimeoutMs} ms`));
      });
      const answer = (reply: string | Error) => {
        if (done) return;
        done = true;
        cancel();
        if (reply instanceof Error) reject(reply);
        else resolve(reply);
      };
      holder.replies.push(answer);
      holder.child.stdin?.write(command);
    });
  }

  private startHolder(ch: Channel, level: 0 | 1): Promise<Holder> {
    const major = this.major ?? 1;
    const interactive = major === 2 && this.interactiveMode;
    const args = interactive
      ? interactiveHolderArgs(ch.line, level, this.consumer)
      : holderArgs(major, ch.line, level, this.consumer);
    const [file, argv] =
      major === 1
        ? [this.gpiosetPath, args]
        : [
            '/bin/sh',
            [
              '-c',
              interactive ? GPIOSET_V2_INTERACTIVE_GUARD : GPIOSET_V2_GUARD,
              'vehicle-agent-gpioset-guard',
              this.gpiosetPath,
              ...args,
            ],
          ];
    // A session of its own: a Ctrl-C on the agent's terminal must not release the lines before
    // the agent has driven them inactive. The interactive guard watches fd 3 for its owner's end.
    const child = spawn(file, argv, {
      stdio: interactive ? ['pipe', 'pipe', 'pipe', 'pipe'] : ['pipe', 'pipe', 'pipe'],
      detached: true,
      env: this.env,
    });
    let resolveExit: (info: ExitInfo) => void = () => {};
    const holder: Holder = {
      child,
      level,
      interactive,
      exited: new Promise<ExitInfo>((resolve) => {
        resolveExit = resolve;
      }),
      expected: false,
      dead: false,
      stderr: '',
      stdout: '',
      replies: [],
      ready: false,
    };
    child.stdin?.on('error', () => {}); // EPIPE when the holder is already gone
    const ownerPipe = child.stdio[3];
    if (ownerPipe !== undefined && ownerPipe !== null && 'on' in ownerPipe) ownerPipe.on('error', () => {});
    child.stderr?.on('data', (chunk: Buffer) => {
      holder.stderr = (holder.stderr + chunk.toString('utf8')).slice(-STDERR_TAIL);
      // A running interactive gpioset writes to stderr only when it could not set a level: the
      // line's level is then unknown, so it is ended (the line falls to its bias) and driven anew.
      if (holder.interactive && holder.ready && !holder.dead && !holder.expected) {
        this.log.error(
          { code: 'relay_failed', channel: ch.name, pid: child.pid, err: holder.stderr.trim() },
          'gpioset reported an error: ending it',
        );
        killGroup(child, 'SIGKILL');
      }
    });
    return new Promise<Holder>((resolve, reject) => {
      let settled = false;
      let stdout = '';
      const fail = (message: string) => {
        if (settled) return;
        settled = true;
        cancelTimeout();
        holder.expected = true;
        killGroup(child, 'SIGKILL');
        reject(
          new AgentError('relay_failed', message, {
            channel: ch.name,
            chip: ch.line.chip,
            line: ch.line.line,
          }),
        );
      };
      const ready = () => {
        if (settled) return;
        settled = true;
        holder.ready = true;
        cancelTimeout();
        resolve(holder);
      };
      const cancelTimeout = this.timers.schedule(this.readyTimeoutMs, () =>
        fail(`gpioset did not confirm ${ch.name} within ${this.readyTimeoutMs} ms`),
      );
      child.on('error', (err) => {
        holder.dead = true;
        resolveExit({ code: null, signal: null });
        fail(`cannot run ${this.gpiosetPath}: ${err.message}`);
      });
      const stderrClosed = new Promise<void>((resolve) => {
        if (child.stderr === null) resolve();
        else child.stderr.once('close', () => resolve());
      });
      child.on('exit', (code, signal) => {
        holder.dead = true;
        for (const reply of holder.replies.splice(0))
          reply(new Error(`the holder exited (${describeExit(code, signal)})`));
        if (holder.expected) {
          resolveExit({ code, signal });
          return;
        }
        // Its last words (e.g. "Device or resource busy") may still be in the pipe.
        const grace = new Promise<void>((resolve) => this.timers.schedule(100, resolve));
        void Promise.race([stderrClosed, grace]).then(() => {
          resolveExit({ code, signal });
          if (!settled)
            fail(
              `gpioset exited before holding ${ch.name} (${describeExit(code, signal)}): ${holder.stderr.trim()}`,
            );
          else this.onHolderExit(ch, holder, code, signal);
        });
      });
      if (major === 1) {
        child.on('spawn', ready);
      }
      child.stdout?.on('data', (chunk: Buffer) => {
        if (major === 1) return;
        if (interactive) {
          // The first prompt: the line is held. Each later one: the command before it is done.
          const { done, pending } = splitAtPrompts(holder.stdout + chunk.toString('utf8'));
          holder.stdout = pending.slice(-STDOUT_LIMIT);
          for (const [index, output] of done.entries()) {
            if (!settled && index === 0) ready();
            else holder.replies.shift()?.(output);
          }
          return;
        }
        if (settled) return;
        stdout = (stdout + chunk.toString('utf8')).slice(-STDERR_TAIL);
        if (stdout.includes('Setting line')) ready();
      });
    });
  }

  /** Asks the holder to exit (end of file on its stdin), escalating to signals if it lingers. */
  private async endHolder(ch: Channel): Promise<void> {
    const holder = ch.holder;
    ch.holder = undefined;
    if (holder === undefined || holder.dead) return;
    holder.expected = true;
    if (holder.interactive) {
      holder.child.stdin?.write('exit\n');
      const ownerPipe = holder.child.stdio[3];
      if (ownerPipe !== undefined && ownerPipe !== null && 'destroy' in ownerPipe) ownerPipe.destroy();
    }
    holder.child.stdin?.end();
    if (await exitsWithin(holder, this.timers, 1000)) return;
    this.log.warn({ channel: ch.name, pid: holder.child.pid }, 'gpioset holder ignored end of file: SIGTERM');
    killGroup(holder.child, 'SIGTERM');
    if (await exitsWithin(holder, this.timers, 1000)) return;
    killGroup(holder.child, 'SIGKILL');
    await holder.exited;
  }

  private onHolderExit(
    ch: Channel,
    holder: Holder,
    code: number | null,
    signal: NodeJS.Signals | null,
  ): void {
    if (holder.expected || this.closing) return;
    if (ch.holder === holder) ch.holder = undefined;
    const problem = `gpioset holding ${ch.name} exited (${describeExit(code, signal)})${holder.stderr.trim() ? `: ${holder.stderr.trim()}` : ''}`;
    this.log.error(
      { code: 'relay_failed', channel: ch.name, exitCode: code, signal, pid: holder.child.pid },
      `${problem}; driving the line again`,
    );
    this.failure(ch, problem);
  }

  /** Records a failure on a line and schedules it to be driven again. */
  private failure(ch: Channel, problem: string): void {
    ch.failures += 1;
    ch.lastProblem = problem;
    this.updateHealth();
    if (this.closing) return;
    const delay =
      ch.failures <= 1 ? 0 : Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** (ch.failures - 2));
    ch.retryTimer?.();
    ch.retryTimer = this.timers.schedule(delay, () => {
      ch.retryTimer = undefined;
      if (this.closing) return;
      this.enqueue(ch, () => this.drive(ch)).catch(() => {}); // drive() logged and rescheduled
    });
  }

  private updateHealth(): void {
    if (this.closing) return;
    const troubled = [...this.lines.values()].filter((ch) => ch.failures > 0);
    const worst = troubled.sort((a, b) => b.failures - a.failures)[0];
    if (worst === undefined) {
      this.healthTracker.set('ok');
      return;
    }
    const held = worst.holder !== undefined && !worst.holder.dead;
    const state = !held && worst.failures >= DOWN_AFTER ? 'down' : 'degraded';
    this.healthTracker.set(state, worst.lastProblem);
  }

  private cancelTimers(ch: Channel): void {
    ch.retryTimer?.();
    ch.retryTimer = undefined;
    ch.stableTimer?.();
    ch.stableTimer = undefined;
  }

  /** gpioset 2.x: whether this build has the interactive mode (its --help says so). */
  private detectInteractive(): Promise<boolean> {
    return new Promise((resolve) => {
      execFile(
        this.gpiosetPath,
        ['--help'],
        { env: this.env, timeout: this.readyTimeoutMs },
        (err, stdout) => {
          // A help that fails to run is no reason to fail: the holder-per-level way works everywhere.
          resolve(err === null && hasInteractiveMode(stdout));
        },
      );
    });
  }

  private detectVersion(): Promise<GpiosetMajor> {
    return new Promise((resolve, reject) => {
      execFile(
        this.gpiosetPath,
        ['--version'],
        { env: this.env, timeout: this.readyTimeoutMs },
        (err, stdout) => {
          if (err) {
            this.healthTracker.set('down', `cannot run ${this.gpiosetPath} --version: ${err.message}`);
            reject(
              new AgentError('relay_failed', `cannot run ${this.gpiosetPath} --version: ${err.message}`, {
                path: this.gpiosetPath,
              }),
            );
            return;
          }
          try {
            resolve(parseGpiosetVersion(stdout));
          } catch (parseErr) {
            reject(parseErr);
          }
        },
      );
    });
  }
}

function describeExit(code: number | null, signal: NodeJS.Signals | null): string {
  return signal !== null ? `signal ${signal}` : `code ${code ?? '?'}`;
}

/** Signals the holder's whole process group (the 2.x guard, gpioset and the guard's reader). */
function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      // already gone
    }
  }
}

function exitsWithin(holder: Holder, timers: Timers, ms: number): Promise<boolean> {
  if (holder.dead) return Promise.resolve(true);
  return new Promise((resolve) => {
    const cancel = timers.schedule(ms, () => resolve(false));
    void holder.exited.then(() => {
      cancel();
      resolve(true);
    });
  });
}
