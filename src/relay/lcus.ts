import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Health } from '../core/types.js';
import { HealthTracker } from './health.js';
import type { SerialLink, SerialLinkFactory } from './serial-link.js';
import { type CancelTimer, systemTimers, type Timers } from './timers.js';
import type { RelayChannel, RelayDriver } from './types.js';

const HEADER = 0xa0;

/**
 * The 4-byte command of LCUS-type USB relay boards (CH340 at 9600 baud): A0, channel (1-based),
 * state (1 on, 0 off), and the sum of the three bytes modulo 256. E.g. A0 01 01 A2 = relay 1 on.
 */
export function lcusCommand(channel: number, energised: boolean): Uint8Array {
  if (!Number.isInteger(channel) || channel < 1 || channel > 0xff) {
    throw new AgentError('relay_failed', `LCUS board channel must be 1-255, got ${channel}`, { channel });
  }
  const state = energised ? 1 : 0;
  return Uint8Array.of(HEADER, channel, state, (HEADER + channel + state) & 0xff);
}

export interface LcusRelayOptions {
  /** Serial device, e.g. /dev/ttyUSB0 (or a stable /dev/serial/by-id/ path). */
  readonly path: string;
  readonly baudRate?: number;
  /** Board channel (1-based) of each logical relay. */
  readonly channels: Partial<Readonly<Record<RelayChannel, number>>>;
  readonly openLink: SerialLinkFactory;
  readonly logger: Logger;
  readonly timers?: Timers;
  readonly wallNow?: () => number;
  /** A write not drained within this is a failure (a wedged USB adapter). */
  readonly writeTimeoutMs?: number;
  readonly reopenBackoffMs?: { readonly initialMs: number; readonly maxMs: number };
}

/**
 * LCUS-type USB-serial relay board. The boards never answer, so the driver can only see a
 * failing port: a write error, a drain that does not finish, or the device closing. Any of these
 * rejects with relay_failed, marks health down and closes the port; the port is then reopened in
 * the background with backoff (and at once when a command needs it), and every channel is sent
 * its wanted state again once it is back.
 */
export class LcusRelay implements RelayDriver {
  readonly kind = 'lcus';
  readonly channels: readonly RelayChannel[];
  private readonly boardChannel = new Map<RelayChannel, number>();
  private readonly desired = new Map<RelayChannel, boolean>();
  private readonly path: string;
  private readonly baudRate: number;
  private readonly openLink: SerialLinkFactory;
  private readonly log: Logger;
  private readonly timers: Timers;
  private readonly writeTimeoutMs: number;
  private readonly backoff: { readonly initialMs: number; readonly maxMs: number };
  private readonly healthTracker: HealthTracker;
  private link: SerialLink | undefined;
  private opening: Promise<SerialLink> | undefined;
  private queue: Promise<void> = Promise.resolve();
  private reopenTimer: CancelTimer | undefined;
  private failures = 0;
  private closed = true;

  constructor(options: LcusRelayOptions) {
    this.path = options.path;
    this.baudRate = options.baudRate ?? 9600;
    this.openLink = options.openLink;
    this.log = options.logger;
    this.timers = options.timers ?? systemTimers;
    this.writeTimeoutMs = options.writeTimeoutMs ?? 1000;
    this.backoff = options.reopenBackoffMs ?? { initialMs: 250, maxMs: 10_000 };
    this.healthTracker = new HealthTracker('disabled', options.wallNow, 'not initialised');
    for (const [name, channel] of Object.entries(options.channels) as [RelayChannel, number | undefined][]) {
      if (channel === undefined) continue;
      lcusCommand(channel, false); // validates the channel number
      const clash = [...this.boardChannel].find(([, used]) => used === channel);
      if (clash) {
        throw new AgentError(
          'config_invalid',
          `relays ${clash[0]} and ${name} are on the same board channel ${channel}`,
          {
            field: 'relay.lcus',
          },
        );
      }
      this.boardChannel.set(name, channel);
      this.desired.set(name, false);
    }
    this.channels = [...this.boardChannel.keys()];
  }

  /** Opens the port and switches every channel off. Rejects with relay_failed (and keeps retrying). */
  init(): Promise<void> {
    this.closed = false;
    for (const name of this.channels) this.desired.set(name, false);
    return this.enqueue(async () => {
      const link = await this.ensureOpen();
      await this.writeFrames(
        link,
        this.channels.map((name) => this.frame(name)),
      );
    });
  }

  set(channel: RelayChannel, energised: boolean): Promise<void> {
    if (!this.boardChannel.has(channel)) {
      return Promise.reject(
        new AgentError('relay_failed', `relay channel ${channel} is not wired`, { channel }),
      );
    }
    if (this.closed)
      return Promise.reject(new AgentError('relay_failed', 'the USB relay is not open', { channel }));
    this.desired.set(channel, energised);
    return this.enqueue(async () => {
      try {
        const link = await this.ensureOpen();
        await this.writeFrames(link, [this.frame(channel)]);
      } catch (err) {
        // The caller learns that energising failed; a reopen must not replay it on its own.
        if (energised) this.desired.set(channel, false);
        throw err;
      }
    });
  }

  async allOff(): Promise<void> {
    if (this.closed) return;
    for (const name of this.channels) this.desired.set(name, false);
    await this.enqueue(async () => {
      const link = await this.ensureOpen();
      await this.writeFrames(
        link,
        this.channels.map((name) => this.frame(name)),
      );
    }).catch((err: unknown) => {
      const e = toAgentError(err, 'relay_failed');
      this.log.error({ code: e.code, err: e.message }, 'cannot switch the USB relays off');
    });
  }

  async close(): Promise<void> {
    await this.allOff();
    this.closed = true;
    this.reopenTimer?.();
    this.reopenTimer = undefined;
    await this.queue;
    const link = this.link;
    this.link = undefined;
    if (link) await link.close().catch(() => {});
    this.healthTracker.set('disabled', 'closed');
  }

  /** Writes the off commands straight to the device from the process 'exit' handler. */
  allOffSync(): void {
    const link = this.link;
    if (link?.writeSync === undefined) return;
    for (const name of this.channels) {
      try {
        link.writeSync(lcusCommand(this.boardChannel.get(name) ?? 0, false));
      } catch {
        // best effort: the process is ending
      }
    }
  }

  health(): Health {
    return this.healthTracker.get();
  }

  private frame(name: RelayChannel): Uint8Array {
    return lcusCommand(this.boardChannel.get(name) ?? 0, this.desired.get(name) ?? false);
  }

  private enqueue(job: () => Promise<void>): Promise<void> {
    const run = this.queue.then(job);
    this.queue = run.catch(() => {});
    return run;
  }

  private async ensureOpen(): Promise<SerialLink> {
    if (this.link) return this.link;
    this.opening ??= this.open().finally(() => {
      this.opening = undefined;
    });
    return this.opening;
  }

  private async open(): Promise<SerialLink> {
    let link: SerialLink;
    try {
      link = await this.openLink(this.path, this.baudRate);
    } catch (err) {
      throw this.linkFailed(err, 'open');
    }
    if (this.closed) {
      await link.close().catch(() => {});
      throw new AgentError('relay_failed', 'the USB relay was closed while opening');
    }
    this.link = link;
    link.onClose((err) => {
      if (this.link !== link) return;
      this.link = undefined;
      this.linkFailed(err ?? new Error('device closed'), 'close');
    });
    this.reopenTimer?.();
    this.reopenTimer = undefined;
    if (this.failures > 0) {
      // After a failure the board's state is unknown: every channel gets its wanted state again.
      await this.writeFrames(
        link,
        this.channels.map((name) => this.frame(name)),
      );
      this.log.info({ path: this.path, after: this.failures }, 'USB relay board back');
    }
    this.failures = 0;
    this.healthTracker.set('ok');
    return link;
  }

  private async writeFrames(link: SerialLink, frames: readonly Uint8Array[]): Promise<void> {
    const bytes = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
    let offset = 0;
    for (const f of frames) {
      bytes.set(f, offset);
      offset += f.length;
    }
    let cancelTimeout: CancelTimer = () => {};
    const timeout = new Promise<never>((_, reject) => {
      cancelTimeout = this.timers.schedule(this.writeTimeoutMs, () =>
        reject(new Error(`write not drained within ${this.writeTimeoutMs} ms`)),
      );
    });
    try {
      await Promise.race([link.write(bytes), timeout]);
    } catch (err) {
      if (this.link === link) {
        this.link = undefined;
        void link.close().catch(() => {});
      }
      throw this.linkFailed(err, 'write');
    } finally {
      cancelTimeout();
    }
  }

  /** Marks the board down, schedules a reopen, and returns the error to throw. */
  private linkFailed(err: unknown, during: 'open' | 'write' | 'close'): AgentError {
    const message = err instanceof Error ? err.message : String(err);
    this.failures += 1;
    const detail = `${during} ${this.path}: ${message}`;
    this.healthTracker.set('down', detail);
    if (this.failures === 1 || during !== 'open') {
      this.log.error(
        { code: 'relay_failed', path: this.path, during, err: message },
        'USB relay board failed',
      );
    }
    this.scheduleReopen();
    return new AgentError(
      'relay_failed',
      `USB relay board: ${detail}`,
      { path: this.path, during },
      { cause: err },
    );
  }

  private scheduleReopen(): void {
    if (this.closed || this.reopenTimer !== undefined) return;
    const delay = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** Math.max(0, this.failures - 1));
    this.reopenTimer = this.timers.schedule(delay, () => {
      this.reopenTimer = undefined;
      if (this.closed || this.link) return;
      this.enqueue(async () => {
        await this.ensureOpen();
      }).catch(() => {}); // logged by linkFailed, which schedules the next attempt
    });
  }
}
