import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Health } from '../core/types.js';
import {
  decodeEvent,
  encodeCommand,
  type GuardCommand,
  type GuardEvent,
  type GuardSpec,
  guardLimitMs,
  LineSplitter,
} from './guard-protocol.js';
import { HealthTracker } from './health.js';
import { type CancelTimer, systemTimers, type Timers } from './timers.js';
import type { EnergiseOptions, RelayChannel, RelayDriver, SelfRelease } from './types.js';

export interface GuardedRelayOptions {
  /** What the guard drives, and its max-on limit. */
  readonly spec: GuardSpec;
  readonly logger: Logger;
  /** Environment of the guard (and of the gpioset it runs: PATH). */
  readonly env?: NodeJS.ProcessEnv;
  /** The guard's entry point (default: guard-main.js beside this file). */
  readonly guardScript?: string;
  /**
   * The guard releases a channel this long after the caller's stated on-time (see
   * EnergiseOptions) when the caller has not released it by then.
   */
  readonly marginMs?: number;
  /** How long the guard gets to start and open its driver (node starts in about 1 s on a Pi Zero 2 W). */
  readonly readyTimeoutMs?: number;
  /** A command not answered in this time fails with relay_failed (the guard keeps its own timing). */
  readonly commandTimeoutMs?: number;
  /** The guard is pinged this often; one that does not answer within pingTimeoutMs is killed. */
  readonly pingIntervalMs?: number;
  readonly pingTimeoutMs?: number;
  /** Backoff between restarts of a guard that died. */
  readonly restartBackoffMs?: { readonly initialMs: number; readonly maxMs: number };
  /** A restarted guard that lived this long makes health ok again. */
  readonly stableMs?: number;
  readonly timers?: Timers;
  readonly wallNow?: () => number;
  /** Transitions kept for status. */
  readonly timelineLimit?: number;
}

export interface RelayTransition {
  readonly channel: RelayChannel;
  readonly energised: boolean;
  /** Wall time the guard saw the change, ms since the epoch. */
  readonly atMs: number;
}

interface Guard {
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
  ready: boolean;
  dead: boolean;
  /** close() asked it to go. */
  expected: boolean;
  /** Why it was killed, when this side killed it. */
  killedFor: string | undefined;
}

interface Pending {
  readonly resolve: () => void;
  readonly reject: (err: AgentError) => void;
  readonly channel: RelayChannel | undefined;
}

/** Memory-lean flags for the guard's own V8: it holds a few timers and a few child processes. */
const GUARD_NODE_FLAGS = ['--max-old-space-size=32', '--max-semi-space-size=1'];
/** After this many restarts in a row without a stable guard, health says down, not degraded. */
const DOWN_AFTER = 3;

/**
 * The agent's side of the relay guard (src/relay/guard-main.ts): a RelayDriver whose outputs are
 * owned and timed by a separate, long-lived process, so that no relay stays energised past its
 * pulse, hold or max-on limit whatever happens to the agent's main thread (a frozen disk, a busy
 * loop, SIGSTOP) or to the agent (SIGKILL: the guard sees end of file on its stdin, releases
 * everything and exits).
 *
 * Every energising command carries its deadline (the caller's on-time plus a margin, at most
 * max-on); the caller still releases the channel itself at the normal time. A channel the guard
 * released by itself is reported through onSelfRelease. A guard that dies (or stops answering
 * pings, and is then killed) takes its outputs with it (gpioset holders die with their owner; a
 * restarted guard switches an LCUS board off first); this side reports relay health down with
 * relay_guard_lost, reports every channel it had energised as released, and restarts the guard
 * with backoff. Writes to the guard never block; nothing here waits on the guard to keep time.
 */
export class GuardedRelay implements RelayDriver {
  readonly kind: string;
  readonly channels: readonly RelayChannel[];
  private readonly spec: GuardSpec;
  private readonly log: Logger;
  private readonly env: NodeJS.ProcessEnv;
  private readonly script: string;
  private readonly marginMs: number;
  private readonly readyTimeoutMs: number;
  private readonly commandTimeoutMs: number;
  private readonly pingIntervalMs: number;
  private readonly pingTimeoutMs: number;
  private readonly backoff: { readonly initialMs: number; readonly maxMs: number };
  private readonly stableMs: number;
  private readonly timers: Timers;
  private readonly timelineLimit: number;
  private readonly tracker: HealthTracker;
  private readonly pending = new Map<number, Pending>();
  /** The energising each channel is in, as this side asked it (id of its last `on`). */
  private readonly energised = new Map<RelayChannel, { readonly id: number; readonly since: number }>();
  private readonly listeners = new Set<(release: SelfRelease) => void>();
  private readonly transitions: RelayTransition[] = [];
  private guard: Guard | undefined;
  private inner: Health = { state: 'disabled', since: 0 };
  private seq = 0;
  private restarts = 0;
  private failures = 0;
  private lastLoss: string | undefined;
  private closed = false;
  private restartTimer: CancelTimer | undefined;
  private stableTimer: CancelTimer | undefined;
  private pingTimer: CancelTimer | undefined;

  constructor(options: GuardedRelayOptions) {
    this.spec = options.spec;
    this.kind = options.spec.driver.kind;
    const driver = options.spec.driver;
    this.channels =
      driver.kind === 'sim' ? [...driver.channels] : (Object.keys(driver.channels) as RelayChannel[]);
    this.log = options.logger;
    this.env = options.env ?? process.env;
    this.script = options.guardScript ?? fileURLToPath(new URL('./guard-main.js', import.meta.url));
    this.marginMs = options.marginMs ?? 250;
    this.readyTimeoutMs = options.readyTimeoutMs ?? 20_000;
    this.commandTimeoutMs = options.commandTimeoutMs ?? 10_000;
    this.pingIntervalMs = options.pingIntervalMs ?? 2000;
    this.pingTimeoutMs = options.pingTimeoutMs ?? 5000;
    this.backoff = options.restartBackoffMs ?? { initialMs: 100, maxMs: 5000 };
    this.stableMs = options.stableMs ?? 5000;
    this.timers = options.timers ?? systemTimers;
    this.timelineLimit = options.timelineLimit ?? 1000;
    this.tracker = new HealthTracker('disabled', options.wallNow, 'not initialised');
  }

  /** Starts the guard, which opens the driver with every channel off. Rejects with relay_failed. */
  async init(): Promise<void> {
    this.closed = false;
    try {
      await this.startGuard();
    } catch (err) {
      const e = err instanceof AgentError ? err : new AgentError('relay_failed', String(err));
      this.tracker.set('down', e.message);
      throw e;
    }
    this.updateHealth();
  }

  set(channel: RelayChannel, energised: boolean, options?: EnergiseOptions): Promise<void> {
    if (!this.channels.includes(channel)) {
      return Promise.reject(
        new AgentError('relay_failed', `relay channel ${channel} is not wired`, { channel }),
      );
    }
    const guard = this.running();
    if (guard === undefined) return Promise.reject(this.notRunning(channel));
    const id = this.nextId();
    if (energised) {
      const previous = this.energised.get(channel);
      this.energised.set(channel, { id, since: previous?.since ?? this.timers.now() });
      const limitMs = guardLimitMs(options?.releaseAfterMs, this.marginMs, this.spec.maxOnMs);
      return this.request(guard, { type: 'on', id, channel, limitMs }, channel).catch((err: unknown) => {
        // The guard switched it off again (or never on): nothing of this energising remains.
        if (this.energised.get(channel)?.id === id) this.energised.delete(channel);
        throw err;
      });
    }
    this.energised.delete(channel);
    return this.request(guard, { type: 'off', id, channel }, channel);
  }

  async allOff(): Promise<void> {
    this.energised.clear();
    const guard = this.running();
    // No guard: its outputs went with it (or the restarted one switched them off first).
    if (guard === undefined) return;
    await this.request(guard, { type: 'alloff', id: this.nextId() }, undefined).catch((err: unknown) => {
      this.log.error(
        { code: 'relay_failed', err: err instanceof Error ? err.message : String(err) },
        'the relay guard could not switch every relay off',
      );
    });
  }

  /** Every channel off, then the guard ends (it releases the hardware). Never rejects. */
  async close(): Promise<void> {
    this.closed = true;
    this.cancelTimers();
    this.energised.clear();
    const guard = this.guard;
    if (guard !== undefined && !guard.dead) {
      guard.expected = true;
      if (guard.ready) {
        await this.request(guard, { type: 'close', id: this.nextId() }, undefined).catch(() => {});
      }
      guard.child.stdin?.end();
      const gone = await Promise.race([
        guard.exited.then(() => true),
        new Promise<boolean>((resolve) => this.timers.schedule(3000, () => resolve(false))),
      ]);
      if (!gone) {
        this.log.warn({ guardPid: guard.child.pid }, 'relay guard did not exit: SIGKILL');
        killGroup(guard.child, 'SIGKILL');
        await guard.exited;
      }
    }
    this.tracker.set('disabled', 'closed');
  }

  /**
   * From the process 'exit' handler: the guard releases every channel at once on SIGTERM (and
   * exits when this process's end closes its stdin).
   */
  allOffSync(): void {
    const guard = this.guard;
    if (guard === undefined || guard.dead || guard.child.pid === undefined) return;
    try {
      process.kill(guard.child.pid, 'SIGTERM');
    } catch {
      // already gone
    }
  }

  onSelfRelease(listener: (release: SelfRelease) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  health(): Health {
    return this.tracker.get();
  }

  /** Transitions the guard confirmed (changes only), oldest first. */
  timeline(): readonly RelayTransition[] {
    return [...this.transitions];
  }

  /** The guard process, for status and tests. */
  guardStatus(): { readonly pid: number | undefined; readonly restarts: number } {
    const guard = this.guard;
    return { pid: guard !== undefined && !guard.dead ? guard.child.pid : undefined, restarts: this.restarts };
  }

  private nextId(): number {
    this.seq = this.seq >= Number.MAX_SAFE_INTEGER ? 1 : this.seq + 1;
    return this.seq;
  }

  private running(): Guard | undefined {
    const guard = this.guard;
    return !this.closed && guard?.ready === true && !guard.dead ? guard : undefined;
  }

  private notRunning(channel: RelayChannel): AgentError {
    const why = this.closed
      ? 'the relay guard is closed'
      : `the relay guard is not running${this.lastLoss !== undefined ? ` (${this.lastLoss}; restarting)` : ''}`;
    return new AgentError('relay_failed', why, { channel });
  }

  private request(guard: Guard, command: GuardCommand, channel: RelayChannel | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timeoutMs = command.type === 'ping' ? this.pingTimeoutMs : this.commandTimeoutMs;
      const cancel = this.timers.schedule(timeoutMs, () => {
        // Answers that came while this process was stopped or stalled are read in this loop
        // turn's poll phase, after the timers: look again after it before calling it a timeout.
        setImmediate(() => {
          const entry = this.pending.get(command.id);
          if (entry === undefined) return;
          this.pending.delete(command.id);
          if (command.type === 'ping') {
            this.killGuard(guard, `did not answer a ping within ${timeoutMs} ms`);
          }
          entry.reject(
            new AgentError(
              'relay_failed',
              `the relay guard did not answer ${command.type} within ${timeoutMs} ms`,
              {
                ...(channel !== undefined ? { channel } : {}),
              },
            ),
          );
        });
      });
      this.pending.set(command.id, {
        resolve: () => {
          cancel();
          resolve();
        },
        reject: (err) => {
          cancel();
          reject(err);
        },
        channel,
      });
      guard.child.stdin?.write(encodeCommand(command));
    });
  }

  private startGuard(): Promise<void> {
    const child = spawn(process.execPath, [...GUARD_NODE_FLAGS, this.script, JSON.stringify(this.spec)], {
      // stderr is shared: the guard writes there only as it crashes. A session of its own: a
      // Ctrl-C on the agent's terminal must reach the agent, which then closes the guard.
      stdio: ['pipe', 'pipe', 'inherit'],
      detached: true,
      env: this.env,
      cwd: '/',
    });
    let markExited: () => void = () => {};
    const guard: Guard = {
      child,
      exited: new Promise<void>((resolve) => {
        markExited = resolve;
      }),
      ready: false,
      dead: false,
      expected: false,
      killedFor: undefined,
    };
    this.guard = guard;
    child.stdin?.on('error', () => {}); // EPIPE when it is gone; its exit says the rest
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      let startError: string | undefined;
      const settle = (err: AgentError | undefined) => {
        if (settled) return;
        settled = true;
        cancelTimeout();
        if (err === undefined) resolve();
        else reject(err);
      };
      const cancelTimeout = this.timers.schedule(this.readyTimeoutMs, () => {
        this.killGuard(guard, `did not start within ${this.readyTimeoutMs} ms`);
        settle(
          new AgentError('relay_failed', `the relay guard did not start within ${this.readyTimeoutMs} ms`),
        );
      });
      const splitter = new LineSplitter();
      child.stdout?.setEncoding('utf8');
      child.stdout?.on('data', (chunk: string) => {
        for (const line of splitter.push(chunk)) {
          const decoded = decodeEvent(line);
          if (!decoded.ok) {
            this.log.warn(
              { code: 'relay_failed', reason: decoded.reason },
              'unreadable line from the relay guard',
            );
            continue;
          }
          const event = decoded.value;
          if (event.type === 'ready') {
            guard.ready = true;
            this.log.info({ guardPid: event.pid, detail: event.detail }, 'relay guard ready');
            this.schedulePing(guard);
            settle(undefined);
          } else if (event.type === 'err' && event.id === 0) {
            startError = event.message;
          } else {
            this.onEvent(event);
          }
        }
      });
      child.on('error', (err) => {
        startError ??= `cannot run the relay guard: ${err.message}`;
        // A process that never started emits no 'exit'.
        if (child.pid === undefined && !guard.dead) {
          guard.dead = true;
          markExited();
          settle(new AgentError('relay_failed', startError));
        }
      });
      child.on('exit', (code, signal) => {
        guard.dead = true;
        markExited();
        const how =
          guard.killedFor ?? `exited (${signal !== null ? `signal ${signal}` : `code ${code ?? '?'}`})`;
        this.onGuardExit(guard, how);
        settle(
          new AgentError('relay_failed', `the relay guard ${startError ?? how} before it was ready`, {
            ...(code !== null ? { exitCode: code } : {}),
          }),
        );
      });
    });
  }

  private onEvent(event: Exclude<GuardEvent, { type: 'ready' }>): void {
    switch (event.type) {
      case 'ok':
      case 'err': {
        const entry = this.pending.get(event.id);
        if (entry === undefined) return;
        this.pending.delete(event.id);
        if (event.type === 'ok') entry.resolve();
        else
          entry.reject(
            new AgentError('relay_failed', event.message, {
              ...(entry.channel !== undefined ? { channel: entry.channel } : {}),
            }),
          );
        return;
      }
      case 'level':
        this.transitions.push({ channel: event.channel, energised: event.energised, atMs: event.atMs });
        if (this.transitions.length > this.timelineLimit)
          this.transitions.splice(0, this.transitions.length - this.timelineLimit);
        return;
      case 'expired': {
        const current = this.energised.get(event.channel)?.id === event.onId;
        if (current) this.energised.delete(event.channel);
        const code =
          event.cause === 'max-on' ? ('relay_watchdog' as const) : ('relay_guard_released' as const);
        this.emitRelease({ channel: event.channel, heldMs: event.heldMs, code, cause: event.cause, current });
        return;
      }
      case 'health':
        this.inner = {
          state: event.state,
          ...(event.detail !== undefined ? { detail: event.detail } : {}),
          since: 0,
        };
        this.updateHealth();
        return;
      case 'log':
        this.log[event.level]({ ...event.fields, from: 'relay-guard' }, event.message);
        return;
    }
  }

  private onGuardExit(guard: Guard, how: string): void {
    this.pingTimer?.();
    this.pingTimer = undefined;
    for (const [id, entry] of this.pending) {
      this.pending.delete(id);
      entry.reject(
        new AgentError('relay_failed', `the relay guard ${how}`, {
          ...(entry.channel !== undefined ? { channel: entry.channel } : {}),
        }),
      );
    }
    if (guard !== this.guard || guard.expected || this.closed || !guard.ready) return;
    // Its outputs went with it: every channel it held is off (gpioset holders die with their
    // owner; the next guard switches an LCUS board off first).
    this.lastLoss = `relay guard ${how}`;
    this.failures += 1;
    this.log.error(
      { code: 'relay_guard_lost', guardPid: guard.child.pid, how, failures: this.failures },
      'relay guard lost: its relays are released; restarting it',
    );
    const now = this.timers.now();
    const held = [...this.energised];
    this.energised.clear();
    for (const [channel, { since }] of held) {
      this.emitRelease({
        channel,
        heldMs: Math.round(now - since),
        code: 'relay_guard_lost',
        cause: 'lost',
        current: true,
      });
    }
    this.stableTimer?.();
    this.stableTimer = undefined;
    this.updateHealth();
    this.scheduleRestart();
  }

  private scheduleRestart(): void {
    if (this.closed) return;
    const delay =
      this.failures <= 1
        ? 0
        : Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** (this.failures - 2));
    this.restartTimer?.();
    this.restartTimer = this.timers.schedule(delay, () => {
      this.restartTimer = undefined;
      if (this.closed) return;
      this.startGuard().then(
        () => {
          this.restarts += 1;
          this.log.warn(
            { restarts: this.restarts, guardPid: this.guard?.child.pid },
            'relay guard restarted',
          );
          if (this.closed) {
            void this.close();
            return;
          }
          this.updateHealth();
          const guard = this.guard;
          this.stableTimer = this.timers.schedule(this.stableMs, () => {
            this.stableTimer = undefined;
            if (this.guard !== guard || guard?.dead !== false) return;
            this.failures = 0;
            this.lastLoss = undefined;
            this.updateHealth();
          });
        },
        (err: unknown) => {
          this.failures += 1;
          this.lastLoss = err instanceof Error ? err.message : String(err);
          this.log.error(
            { code: 'relay_guard_lost', err: this.lastLoss, failures: this.failures },
            'relay guard did not restart; trying again',
          );
          this.updateHealth();
          this.scheduleRestart();
        },
      );
    });
  }

  private schedulePing(guard: Guard): void {
    this.pingTimer?.();
    this.pingTimer = this.timers.schedule(this.pingIntervalMs, () => {
      this.pingTimer = undefined;
      if (guard !== this.guard || guard.dead || this.closed) return;
      this.request(guard, { type: 'ping', id: this.nextId() }, undefined).then(
        () => this.schedulePing(guard),
        () => {}, // a ping that times out kills the guard; its exit restarts it
      );
    });
  }

  /** Kills a guard that does not answer (its process group: it and the holders it runs). */
  private killGuard(guard: Guard, why: string): void {
    if (guard.dead) return;
    guard.killedFor ??= why;
    this.log.error({ code: 'relay_guard_lost', guardPid: guard.child.pid, why }, 'killing the relay guard');
    killGroup(guard.child, 'SIGKILL');
  }

  private emitRelease(release: SelfRelease): void {
    for (const listener of this.listeners) {
      try {
        listener(release);
      } catch (err) {
        this.log.error({ code: 'internal', err: String(err) }, 'relay release listener threw');
      }
    }
  }

  private updateHealth(): void {
    if (this.closed) return;
    const guard = this.guard;
    const up = guard?.ready === true && !guard.dead;
    if (!up) {
      if (this.lastLoss === undefined) this.tracker.set('disabled', 'the relay guard is not running');
      else this.tracker.set('down', `[relay_guard_lost] ${this.lastLoss}; restarting`);
      return;
    }
    if (this.failures > 0) {
      const state = this.inner.state === 'down' || this.failures >= DOWN_AFTER ? 'down' : 'degraded';
      this.tracker.set(state, `[relay_guard_lost] ${this.lastLoss ?? 'relay guard restarted'}; restarted`);
      return;
    }
    this.tracker.set(this.inner.state, this.inner.detail);
  }

  private cancelTimers(): void {
    this.restartTimer?.();
    this.restartTimer = undefined;
    this.stableTimer?.();
    this.stableTimer = undefined;
    this.pingTimer?.();
    this.pingTimer = undefined;
  }
}

/** Signals the guard's process group (its holders have groups of their own and die with it). */
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
