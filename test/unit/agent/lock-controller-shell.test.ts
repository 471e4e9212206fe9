import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { type LockConfig, LockController } from '../../../src/agent/lock-controller.js';
import { AgentError } from '../../../src/core/errors.js';
import { type Logger, silentLogger } from '../../../src/core/logger.js';
import type { Health, LockState } from '../../../src/core/types.js';
import { SimRelay } from '../../../src/relay/sim.js';
import type { EnergiseOptions, RelayChannel, RelayDriver } from '../../../src/relay/types.js';
import type { WatchdogRelease } from '../../../src/relay/watchdog.js';

/**
 * The shell around the pure lock machine (src/agent/lock-machine.ts), on the system timers under
 * vi.useFakeTimers: it performs the machine's effects in order, feeds back relay results, timers
 * and watchdog releases, and keeps going whatever its listeners and drivers do.
 */
const PULSE: LockConfig = {
  wiring: 'pulse',
  pulseMs: 350,
  holdMs: 5000,
  autoRelockMs: 30_000,
  maxOnMs: 2000,
};
const HOLD: LockConfig = { wiring: 'hold', pulseMs: 350, holdMs: 5000, autoRelockMs: 0, maxOnMs: 20_000 };

interface Logged {
  readonly level: string;
  readonly fields: Record<string, unknown>;
  readonly message: string | undefined;
}

function capturingLogger(lines: Logged[]): Logger {
  const at =
    (level: string) =>
    (fieldsOrMessage: Record<string, unknown> | string, message?: string): void => {
      if (typeof fieldsOrMessage === 'string') lines.push({ level, fields: {}, message: fieldsOrMessage });
      else lines.push({ level, fields: fieldsOrMessage, message });
    };
  const logger: Logger = {
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    fatal: at('fatal'),
    child: () => logger,
  };
  return logger;
}

type SetHandler = (channel: RelayChannel, energised: boolean, call: number) => Promise<void> | undefined;

/**
 * A board whose set() does what the test says for its nth call (undefined: switch at once),
 * recording every call.
 */
class ScriptedRelay implements RelayDriver {
  readonly kind = 'scripted';
  readonly channels: readonly RelayChannel[] = ['unlock', 'lock'];
  readonly calls: string[] = [];
  readonly energised = new Set<RelayChannel>();
  allOffs = 0;
  private sets = 0;
  constructor(private readonly handler: SetHandler) {}

  init(): Promise<void> {
    return Promise.resolve();
  }
  async set(channel: RelayChannel, energised: boolean, _options?: EnergiseOptions): Promise<void> {
    this.calls.push(`${channel} ${energised ? 'on' : 'off'} @${Date.now()}`);
    await this.handler(channel, energised, ++this.sets);
    if (energised) this.energised.add(channel);
    else this.energised.delete(channel);
  }
  async allOff(): Promise<void> {
    this.allOffs++;
    this.calls.push(`all off @${Date.now()}`);
    this.energised.clear();
  }
  close(): Promise<void> {
    return this.allOff();
  }
  health(): Health {
    return { state: 'ok', since: 0 };
  }
}

/** Resolves after `ms` of (fake) time, or rejects with `error`. */
function inMs(ms: number, error?: unknown): Promise<void> {
  return new Promise((resolve, reject) =>
    setTimeout(() => (error === undefined ? resolve() : reject(error)), ms),
  );
}

function track<T>(promise: Promise<T>): { settled: boolean; value?: T; error?: unknown } {
  const box: { settled: boolean; value?: T; error?: unknown } = { settled: false };
  promise.then(
    (value) => Object.assign(box, { settled: true, value }),
    (error: unknown) => Object.assign(box, { settled: true, error }),
  );
  return box;
}

const T0 = 1_000_000;

beforeEach(() => {
  vi.useFakeTimers({ now: T0 });
});
afterEach(() => {
  vi.useRealTimers();
});

describe('LockController shell, on the system timers', () => {
  it('runs a pulse and its relock to the millisecond, and leaves no timer behind', async () => {
    const relay = new SimRelay({ logger: silentLogger });
    await relay.init();
    const lock = new LockController({ relay, config: PULSE, logger: silentLogger });
    await lock.start();
    await expect(lock.unlock('nfc0:alice')).resolves.toBe('unlocking');
    await vi.advanceTimersByTimeAsync(349);
    expect(relay.energised('unlock')).toBe(true);
    await vi.advanceTimersByTimeAsync(1);
    expect(lock.state()).toBe('unlocked');
    await vi.advanceTimersByTimeAsync(30_000 + 350);
    expect(relay.timeline().map((t) => [t.channel, t.energised, t.atMs - T0])).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 350],
      ['lock', true, 30_350],
      ['lock', false, 30_700],
    ]);
    expect(lock.state()).toBe('locked');
    expect(vi.getTimerCount()).toBe(0);
  });

  it('a listener that calls back in runs after the step it heard: one lock pulse, right after', async () => {
    const relay = new SimRelay({ logger: silentLogger });
    await relay.init();
    const lock = new LockController({ relay, config: PULSE, logger: silentLogger });
    const heard: LockState[] = [];
    let relocked: Promise<LockState> | undefined;
    lock.onChange((state) => {
      heard.push(state);
      if (state === 'unlocked') relocked = lock.lock('listener');
    });
    await lock.start();
    await lock.unlock('a');
    await vi.advanceTimersByTimeAsync(350);
    await expect(relocked).resolves.toBe('locking');
    await vi.advanceTimersByTimeAsync(350);
    expect(heard).toEqual(['unlocking', 'unlocked', 'locking', 'locked']);
    expect(
      relay
        .timeline()
        .filter((t) => t.energised)
        .map((t) => [t.channel, t.atMs - T0]),
    ).toEqual([
      ['unlock', 0],
      ['lock', 350],
    ]);
    // The relock the first pulse would have armed was cancelled by the listener's lock.
    expect(vi.getTimerCount()).toBe(0);
  });

  it('a listener that throws is logged; the others hear every change and the pulse runs on', async () => {
    const logs: Logged[] = [];
    const relay = new SimRelay({ logger: silentLogger });
    await relay.init();
    const lock = new LockController({ relay, config: PULSE, logger: capturingLogger(logs) });
    lock.onChange(() => {
      throw new Error('listener bug');
    });
    const heard: LockState[] = [];
    lock.onChange((state) => heard.push(state));
    await lock.start();
    await lock.unlock('a');
    await vi.advanceTimersByTimeAsync(350);
    expect(heard).toEqual(['unlocking', 'unlocked']);
    expect(relay.energised('unlock')).toBe(false);
    expect(logs.filter((l) => l.message === 'lock state listener threw')).toHaveLength(2);
  });

  it('a driver that throws a plain error: the caller gets an AgentError relay_failed, all off', async () => {
    const relay = new ScriptedRelay((channel, energised) =>
      channel === 'unlock' && energised ? Promise.reject(new Error('i2c nack')) : undefined,
    );
    const lock = new LockController({ relay, config: PULSE, logger: silentLogger });
    await lock.start();
    const error = await lock.unlock('a').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AgentError);
    expect(error).toMatchObject({
      code: 'relay_failed',
      message: 'i2c nack',
    });
    expect(relay.allOffs).toBe(2); // start, then after the failure
    expect(lock.state()).toBe('locked');
  });

  it('a relay command that hangs until the driver gives up: grant refused, all off, the next request runs', async () => {
    // As the relay guard's client does: a command not answered within its timeout fails.
    const relay = new ScriptedRelay((channel, energised, call) =>
      channel === 'unlock' && energised && call === 1
        ? inMs(10_000, new AgentError('relay_failed', 'no answer within 10000 ms'))
        : undefined,
    );
    const releases: WatchdogRelease[] = [];
    const lock = new LockController({ relay, config: PULSE, logger: silentLogger });
    lock.onWatchdog((r) => releases.push(r));
    await lock.start();
    const grant = track(lock.unlock('a'));
    const lockReq = track(lock.lock('b'));
    await vi.advanceTimersByTimeAsync(9_999);
    // The watchdog switched the channel off at maxOnMs, in case the command half-succeeded; the
    // controller still waits for the command's answer and answers nobody yet.
    expect(releases).toEqual([expect.objectContaining({ channel: 'unlock', current: true, by: 'agent' })]);
    expect(grant.settled).toBe(false);
    expect(lockReq.settled).toBe(false);
    expect(lock.state()).toBe('unlocking');
    await vi.advanceTimersByTimeAsync(1);
    expect(grant.error).toMatchObject({ code: 'relay_failed' });
    expect(lockReq.value).toBe('locking');
    await vi.advanceTimersByTimeAsync(350);
    expect(lock.state()).toBe('locked');
    expect(relay.calls).toEqual([
      `all off @${T0}`,
      `unlock on @${T0}`,
      `unlock off @${T0 + 2000}`,
      `all off @${T0 + 10_000}`,
      `lock on @${T0 + 10_000}`,
      `lock off @${T0 + 10_350}`,
    ]);
  });

  it('stop while a relay command hangs waits for it, then switches all off and cancels every timer', async () => {
    const relay = new ScriptedRelay((channel, energised) =>
      channel === 'unlock' && energised ? inMs(1000) : undefined,
    );
    const lock = new LockController({ relay, config: PULSE, logger: silentLogger });
    await lock.start();
    const grant = track(lock.unlock('a'));
    await vi.advanceTimersByTimeAsync(10);
    const stopped = track(lock.stop());
    await expect(lock.unlock('b')).rejects.toMatchObject({ code: 'busy' });
    await vi.advanceTimersByTimeAsync(989);
    expect(stopped.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(grant.value).toBe('unlocking');
    expect(stopped.settled).toBe(true);
    expect(relay.energised.size).toBe(0);
    expect(relay.calls.at(-1)).toBe(`all off @${T0 + 1000}`);
    expect(lock.state()).toBe('unlocked');
    expect(vi.getTimerCount()).toBe(0);
    // And it starts again.
    await lock.start();
    expect(lock.state()).toBe('locked');
    const again = track(lock.unlock('c'));
    await vi.advanceTimersByTimeAsync(1000);
    expect(again.value).toBe('unlocking');
  });

  it('a hold extension the relay refuses is logged, and the hold still ends holdMs after it', async () => {
    const logs: Logged[] = [];
    const relay = new ScriptedRelay((channel, energised, call) =>
      channel === 'unlock' && energised && call === 2 ? Promise.reject(new Error('guard busy')) : undefined,
    );
    const lock = new LockController({ relay, config: HOLD, logger: capturingLogger(logs) });
    await lock.start();
    await lock.unlock('a');
    await vi.advanceTimersByTimeAsync(3000);
    await expect(lock.unlock('b')).resolves.toBe('unlocked');
    await vi.advanceTimersByTimeAsync(0);
    expect(logs).toContainEqual({
      level: 'warn',
      fields: { code: 'relay_failed', err: 'guard busy' },
      message: 'could not extend the hold in the relay guard',
    });
    await vi.advanceTimersByTimeAsync(4999);
    expect(relay.energised.has('unlock')).toBe(true);
    await vi.advanceTimersByTimeAsync(1);
    expect(relay.energised.has('unlock')).toBe(false);
    expect(lock.state()).toBe('locked');
  });
});
