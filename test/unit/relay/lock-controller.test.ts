import { describe, expect, it } from 'vitest';
import { type LockConfig, LockController } from '../../../src/agent/lock-controller.js';
import { AgentError } from '../../../src/core/errors.js';
import { type Logger, silentLogger } from '../../../src/core/logger.js';
import type { LockState } from '../../../src/core/types.js';
import { SimRelay } from '../../../src/relay/sim.js';
import type { EnergiseOptions, RelayChannel, SelfRelease } from '../../../src/relay/types.js';
import type { WatchdogRelease } from '../../../src/relay/watchdog.js';
import { ManualTimers, settle } from '../../helpers/manual-timers.js';

const PULSE: LockConfig = {
  wiring: 'pulse',
  pulseMs: 350,
  holdMs: 5000,
  autoRelockMs: 30_000,
  maxOnMs: 10_000,
};
const HOLD: LockConfig = { wiring: 'hold', pulseMs: 350, holdMs: 5000, autoRelockMs: 0, maxOnMs: 10_000 };

interface LogLine {
  readonly level: string;
  readonly fields: Record<string, unknown>;
  readonly message: string | undefined;
}

function capturingLogger(lines: LogLine[]): Logger {
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

interface Rig {
  readonly timers: ManualTimers;
  readonly relay: SimRelay;
  readonly lock: LockController;
  readonly changes: { state: LockState; cause: string; at: number }[];
  readonly watchdog: WatchdogRelease[];
  readonly logs: LogLine[];
  /** Transitions as [channel, energised, at] for compact assertions. */
  timeline(): [RelayChannel, boolean, number][];
  /** Instants at which both channels were energised (must stay empty). */
  readonly overlaps: number[];
}

async function rig(
  config: LockConfig,
  options: { latencyMs?: number; channels?: readonly RelayChannel[] } = {},
): Promise<Rig> {
  const timers = new ManualTimers();
  const logs: LogLine[] = [];
  const logger = capturingLogger(logs);
  const relay = new SimRelay({
    logger,
    wallNow: () => timers.now(),
    timers,
    ...(options.latencyMs !== undefined ? { latencyMs: options.latencyMs } : {}),
    ...(options.channels !== undefined ? { channels: options.channels } : {}),
  });
  await relay.init();
  const overlaps: number[] = [];
  relay.onTransition((t) => {
    if (relay.energised('unlock') && relay.energised('lock')) overlaps.push(t.atMs);
  });
  const lock = new LockController({ relay, config, logger, timers });
  const changes: Rig['changes'] = [];
  lock.onChange((state, cause) => changes.push({ state, cause, at: timers.now() }));
  const watchdog: WatchdogRelease[] = [];
  lock.onWatchdog((release) => watchdog.push(release));
  return {
    timers,
    relay,
    lock,
    changes,
    watchdog,
    logs,
    overlaps,
    timeline: () => relay.timeline().map((t) => [t.channel, t.energised, t.atMs]),
  };
}

/** Tracks a promise so a test can see whether it settled yet. */
function track<T>(promise: Promise<T>): {
  settled: boolean;
  value?: T;
  error?: unknown;
  promise: Promise<T>;
} {
  const box: { settled: boolean; value?: T; error?: unknown; promise: Promise<T> } = {
    settled: false,
    promise,
  };
  promise.then(
    (value) => {
      box.settled = true;
      box.value = value;
    },
    (error: unknown) => {
      box.settled = true;
      box.error = error;
    },
  );
  return box;
}

function codeOf(error: unknown): string | undefined {
  return error instanceof AgentError ? error.code : undefined;
}

describe('LockController, pulse wiring', () => {
  it('start de-energises whatever a crash left on and reports locked', async () => {
    const r = await rig(PULSE);
    await r.relay.set('unlock', true);
    await r.lock.start();
    expect(r.relay.energised('unlock')).toBe(false);
    expect(r.relay.energised('lock')).toBe(false);
    expect(r.lock.state()).toBe('locked');
  });

  it('pulses unlock for pulseMs, is unlocked after the pulse, and relocks after autoRelockMs', async () => {
    const r = await rig(PULSE);
    await r.lock.start();
    const grant = track(r.lock.unlock('nfc0:alice'));
    await settle();
    expect(grant.settled).toBe(true);
    expect(grant.value).toBe('unlocking');
    expect(r.relay.energised('unlock')).toBe(true);
    await r.timers.advance(350);
    expect(r.lock.state()).toBe('unlocked');
    await r.timers.advanceTo(350 + 30_000 - 1);
    expect(r.relay.energised('lock')).toBe(false);
    await r.timers.advanceTo(350 + 30_000 + 350 + 1);
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 350],
      ['lock', true, 30_350],
      ['lock', false, 30_700],
    ]);
    expect(r.changes).toEqual([
      { state: 'unlocking', cause: 'nfc0:alice', at: 0 },
      { state: 'unlocked', cause: 'nfc0:alice', at: 350 },
      { state: 'locking', cause: 'auto-relock', at: 30_350 },
      { state: 'locked', cause: 'auto-relock', at: 30_700 },
    ]);
    expect(r.overlaps).toEqual([]);
  });

  it('never relocks by itself when autoRelockMs is 0', async () => {
    const r = await rig({ ...PULSE, autoRelockMs: 0 });
    await r.lock.start();
    await r.lock.unlock('ble0:bob');
    await r.timers.advance(3_600_000);
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 350],
    ]);
    expect(r.lock.state()).toBe('unlocked');
    expect(r.timers.pending()).toBe(0);
  });

  it('an unlock during the unlock pulse joins it: one pulse, not cut short, and the relock moves back', async () => {
    const r = await rig(PULSE);
    await r.lock.start();
    await r.lock.unlock('nfc0:alice');
    await r.timers.advance(200);
    const second = track(r.lock.unlock('ble0:bob'));
    await settle();
    expect(second.value).toBe('unlocking');
    await r.timers.advanceTo(200 + 350 + 30_000 - 1);
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 350],
    ]);
    await r.timers.advanceTo(200 + 350 + 30_000 + 350);
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 350],
      ['lock', true, 30_550],
      ['lock', false, 30_900],
    ]);
  });

  it('an unlock while unlocked pulses again and restarts the relock timer', async () => {
    const r = await rig(PULSE);
    await r.lock.start();
    await r.lock.unlock('a');
    await r.timers.advanceTo(10_000);
    await r.lock.unlock('b');
    await r.timers.advanceTo(10_000 + 350 + 30_000 + 350);
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 350],
      ['unlock', true, 10_000],
      ['unlock', false, 10_350],
      ['lock', true, 40_350],
      ['lock', false, 40_700],
    ]);
  });

  it('an unlock during a lock pulse waits for that pulse to end, then pulses unlock', async () => {
    const r = await rig(PULSE);
    await r.lock.start();
    await r.lock.lock('owner-app');
    await r.timers.advance(100);
    const grant = track(r.lock.unlock('nfc0:alice'));
    await r.timers.advanceTo(349);
    expect(grant.settled).toBe(false);
    expect(r.relay.energised('unlock')).toBe(false);
    await r.timers.advanceTo(350);
    expect(grant.value).toBe('unlocking');
    expect(r.relay.energised('unlock')).toBe(true);
    await r.timers.advanceTo(700);
    expect(r.timeline()).toEqual([
      ['lock', true, 0],
      ['lock', false, 350],
      ['unlock', true, 350],
      ['unlock', false, 700],
    ]);
    expect(r.lock.state()).toBe('unlocked');
    expect(r.overlaps).toEqual([]);
  });

  it('a lock during the unlock pulse waits for it, pulses lock, and cancels the relock', async () => {
    const r = await rig(PULSE);
    await r.lock.start();
    await r.lock.unlock('nfc0:alice');
    await r.timers.advance(100);
    const lockReq = track(r.lock.lock('nfc0:alice'));
    await r.timers.advanceTo(350);
    expect(lockReq.value).toBe('locking');
    await r.timers.advanceTo(100_000);
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 350],
      ['lock', true, 350],
      ['lock', false, 700],
    ]);
    expect(r.lock.state()).toBe('locked');
    expect(r.overlaps).toEqual([]);
  });

  it('the latest request wins over one still waiting: unlock, lock, unlock again gives one unlock pulse', async () => {
    const r = await rig(PULSE);
    await r.lock.start();
    await r.lock.unlock('a');
    await r.timers.advance(50);
    const waitingLock = track(r.lock.lock('b'));
    await r.timers.advance(50);
    const again = track(r.lock.unlock('c'));
    await settle();
    expect(waitingLock.value).toBe('unlocking');
    expect(again.value).toBe('unlocking');
    await r.timers.advanceTo(1000);
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 350],
    ]);
  });

  it('a retracted unlock is cut at once and locked, without ever reporting unlocked', async () => {
    const r = await rig(PULSE);
    await r.lock.start();
    await r.lock.unlock('nfc0:alice');
    await r.timers.advance(2);
    const retracted = track(r.lock.retract('nfc0:alice:retracted'));
    await r.timers.advanceTo(100_000);
    expect(retracted.value).toBe('locking');
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 2],
      ['lock', true, 2],
      ['lock', false, 352],
    ]);
    expect(r.changes.map((c) => c.state)).toEqual(['unlocking', 'locking', 'locked']);
    expect(r.overlaps).toEqual([]);
  });

  it('a retraction while the unlock relay is still switching on ends the pulse as soon as it is on', async () => {
    const r = await rig(PULSE, { latencyMs: 10 });
    await r.lock.start();
    const grant = track(r.lock.unlock('a'));
    await r.timers.advance(4);
    const retracted = track(r.lock.retract('a:retracted'));
    await r.timers.advanceTo(100_000);
    expect(grant.value).toBe('unlocking');
    expect(retracted.value).toBe('locking');
    expect(r.timeline()).toEqual([
      ['unlock', true, 10],
      ['unlock', false, 20],
      ['lock', true, 30],
      ['lock', false, 390],
    ]);
    expect(r.lock.state()).toBe('locked');
  });

  it('a new grant for the pulse still switching on outranks an earlier retraction', async () => {
    const r = await rig(PULSE, { latencyMs: 10 });
    await r.lock.start();
    void r.lock.unlock('a');
    await r.timers.advance(2);
    void r.lock.retract('a:retracted');
    await r.timers.advance(2);
    const second = track(r.lock.unlock('b'));
    await r.timers.advanceTo(1000);
    expect(second.value).toBe('unlocking');
    expect(r.timeline()).toEqual([
      ['unlock', true, 10],
      ['unlock', false, 370],
    ]);
    expect(r.lock.state()).toBe('unlocked');
  });

  it('a retraction after the pulse ended locks now and cancels the relock', async () => {
    const r = await rig(PULSE);
    await r.lock.start();
    await r.lock.unlock('a');
    await r.timers.advanceTo(500);
    expect(r.lock.state()).toBe('unlocked');
    await r.lock.retract('a:retracted');
    await r.timers.advanceTo(100_000);
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 350],
      ['lock', true, 500],
      ['lock', false, 850],
    ]);
  });

  it('the relay is never told to energise one channel while the other is on', async () => {
    const r = await rig(PULSE, { latencyMs: 5 });
    await r.lock.start();
    const requests: Promise<LockState>[] = [];
    for (let i = 0; i < 40; i++) {
      requests.push(
        (i % 3 === 0 ? r.lock.lock(`x${i}`) : r.lock.unlock(`x${i}`)).catch(() => r.lock.state()),
      );
      await r.timers.advance(37 * (i % 5));
    }
    await r.timers.advance(200_000);
    await Promise.all(requests);
    expect(r.overlaps).toEqual([]);
    expect(r.relay.energised('unlock') || r.relay.energised('lock')).toBe(false);
    // Every pulse lasted exactly pulseMs: none stacked, none cut short.
    const t = r.timeline();
    expect(t.length % 2).toBe(0);
    for (let i = 0; i < t.length; i += 2) {
      const on = t[i];
      const off = t[i + 1];
      expect(on?.[1]).toBe(true);
      expect(off?.[0]).toBe(on?.[0]);
      expect(off?.[1]).toBe(false);
      // The board's latency delays the release by 5 ms after the pulse timer fires.
      expect((off?.[2] ?? 0) - (on?.[2] ?? 0)).toBe(355);
    }
  });

  it('the watchdog cuts a pulse longer than maxOnMs and the controller resyncs', async () => {
    const r = await rig({ ...PULSE, pulseMs: 350, maxOnMs: 200 });
    expect(r.logs.some((l) => l.level === 'warn' && l.fields.code === 'config_invalid')).toBe(true);
    await r.lock.start();
    await r.lock.unlock('a');
    await r.timers.advance(1000);
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 200],
    ]);
    expect(r.watchdog).toEqual([
      { channel: 'unlock', heldMs: 200, code: 'relay_watchdog', cause: 'max-on', current: true, by: 'agent' },
    ]);
    expect(r.lock.state()).toBe('unlocked');
    expect(r.logs.some((l) => l.level === 'error' && l.fields.code === 'relay_watchdog')).toBe(true);
  });

  it('a relay that fails to energise rejects the grant with relay_failed and leaves everything off', async () => {
    const r = await rig(PULSE);
    await r.lock.start();
    r.relay.failNext({ channel: 'unlock', energised: true });
    const grant = track(r.lock.unlock('nfc0:alice'));
    await r.timers.advance(10);
    expect(codeOf(grant.error)).toBe('relay_failed');
    expect(r.lock.state()).toBe('locked');
    expect(r.relay.energised('unlock')).toBe(false);
    expect(r.relay.energised('lock')).toBe(false);
    expect(r.logs.some((l) => l.level === 'error' && l.fields.code === 'relay_failed')).toBe(true);
    expect(r.changes.map((c) => c.state)).toEqual(['unlocking', 'locked']);
    // The controller keeps working once the relay does.
    await expect(r.lock.unlock('nfc0:alice')).resolves.toBe('unlocking');
  });

  it('a relay that fails to release ends de-energised through allOff, and is logged', async () => {
    const r = await rig(PULSE);
    await r.lock.start();
    r.relay.failNext({ channel: 'unlock', energised: false });
    await r.lock.unlock('a');
    await r.timers.advance(350);
    expect(r.relay.energised('unlock')).toBe(false);
    expect(r.lock.state()).toBe('unlocked');
    expect(r.logs.filter((l) => l.fields.code === 'relay_failed')).toHaveLength(1);
  });

  it('a waiting request still runs when the pulse before it failed', async () => {
    const r = await rig(PULSE);
    await r.lock.start();
    r.relay.failNext({ channel: 'lock', energised: true });
    const lockReq = track(r.lock.lock('a'));
    const grant = track(r.lock.unlock('b'));
    await r.timers.advance(1);
    expect(codeOf(lockReq.error)).toBe('relay_failed');
    expect(grant.value).toBe('unlocking');
    expect(r.relay.energised('unlock')).toBe(true);
  });

  it('stop de-energises mid-pulse, cancels timers and refuses waiting and later requests', async () => {
    const r = await rig(PULSE);
    await r.lock.start();
    await r.lock.unlock('a');
    await r.timers.advance(100);
    const waiting = track(r.lock.lock('b'));
    await r.lock.stop();
    await settle();
    expect(r.relay.energised('unlock')).toBe(false);
    expect(codeOf(waiting.error)).toBe('busy');
    await r.timers.advance(100_000);
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 100],
    ]);
    await expect(r.lock.unlock('c')).rejects.toMatchObject({ code: 'busy' });
    expect(r.timers.pending()).toBe(0);
  });

  it('refuses pulse wiring without both channels', async () => {
    const timers = new ManualTimers();
    const relay = new SimRelay({ logger: capturingLogger([]), channels: ['unlock'], timers });
    expect(() => new LockController({ relay, config: PULSE, logger: capturingLogger([]), timers })).toThrow(
      expect.objectContaining({ code: 'config_invalid' }),
    );
  });
});

describe('LockController, hold wiring', () => {
  it('holds the strike for holdMs: unlocked while held, locked on release', async () => {
    const r = await rig(HOLD, { channels: ['unlock'] });
    await r.lock.start();
    await expect(r.lock.unlock('nfc0:alice')).resolves.toBe('unlocked');
    expect(r.relay.energised('unlock')).toBe(true);
    await r.timers.advanceTo(4999);
    expect(r.lock.state()).toBe('unlocked');
    await r.timers.advanceTo(5000);
    expect(r.lock.state()).toBe('locked');
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 5000],
    ]);
    expect(r.changes.map((c) => [c.state, c.cause])).toEqual([
      ['unlocking', 'nfc0:alice'],
      ['unlocked', 'nfc0:alice'],
      ['locking', 'hold-expired'],
      ['locked', 'hold-expired'],
    ]);
  });

  it('an unlock during the hold extends it without switching the relay', async () => {
    const r = await rig(HOLD, { channels: ['unlock'] });
    await r.lock.start();
    await r.lock.unlock('a');
    await r.timers.advanceTo(3000);
    await expect(r.lock.unlock('b')).resolves.toBe('unlocked');
    await r.timers.advanceTo(7999);
    expect(r.relay.energised('unlock')).toBe(true);
    await r.timers.advanceTo(8000);
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 8000],
    ]);
  });

  it('a lock during the hold releases the strike at once and resolves locked', async () => {
    const r = await rig(HOLD, { channels: ['unlock'] });
    await r.lock.start();
    await r.lock.unlock('a');
    await r.timers.advanceTo(1000);
    await expect(r.lock.lock('b')).resolves.toBe('locked');
    expect(r.relay.energised('unlock')).toBe(false);
    await r.timers.advanceTo(20_000);
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 1000],
    ]);
  });

  it('a retraction releases the strike at once', async () => {
    const r = await rig(HOLD, { channels: ['unlock'] });
    await r.lock.start();
    await r.lock.unlock('a');
    await r.timers.advance(3);
    await expect(r.lock.retract('a:retracted')).resolves.toBe('locked');
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 3],
    ]);
  });

  it('a lock in the same turn as the grant resolves leaves no stale hold timer behind', async () => {
    const r = await rig(HOLD, { channels: ['unlock'] });
    await r.lock.start();
    await r.lock.unlock('a');
    await r.lock.lock('b');
    await r.timers.advanceTo(1000);
    await r.lock.unlock('c');
    // A hold timer left over from the first grant would release this hold at 5000.
    await r.timers.advanceTo(5999);
    expect(r.relay.energised('unlock')).toBe(true);
    await r.timers.advanceTo(6000);
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 0],
      ['unlock', true, 1000],
      ['unlock', false, 6000],
    ]);
  });

  it('a lock while the strike is still switching on waits for it, then releases', async () => {
    const r = await rig(HOLD, { channels: ['unlock'], latencyMs: 10 });
    await r.lock.start();
    const grant = track(r.lock.unlock('a'));
    await r.timers.advance(5);
    const joined = track(r.lock.unlock('b'));
    const lockReq = track(r.lock.lock('c'));
    await r.timers.advance(5);
    expect(grant.value).toBe('unlocked');
    expect(joined.value).toBe('unlocked');
    expect(lockReq.settled).toBe(false);
    await r.timers.advance(10);
    expect(lockReq.value).toBe('locked');
    expect(r.timeline()).toEqual([
      ['unlock', true, 10],
      ['unlock', false, 20],
    ]);
  });

  it('the watchdog bounds a hold that keeps being extended', async () => {
    const r = await rig({ ...HOLD, holdMs: 5000, maxOnMs: 6000 }, { channels: ['unlock'] });
    await r.lock.start();
    for (let t = 0; t <= 5000; t += 1000) {
      await r.timers.advanceTo(t);
      await r.lock.unlock(`t${t}`);
    }
    await r.timers.advanceTo(6000);
    expect(r.relay.energised('unlock')).toBe(false);
    expect(r.lock.state()).toBe('locked');
    expect(r.watchdog).toEqual([
      {
        channel: 'unlock',
        heldMs: 6000,
        code: 'relay_watchdog',
        cause: 'max-on',
        current: true,
        by: 'agent',
      },
    ]);
    expect(r.changes.at(-1)).toEqual({ state: 'locked', cause: 'watchdog', at: 6000 });
    // The hold timer of the last extension must not switch anything later.
    await r.timers.advanceTo(60_000);
    expect(r.timeline()).toEqual([
      ['unlock', true, 0],
      ['unlock', false, 6000],
    ]);
  });

  it('a strike that fails to release rejects the lock with relay_failed and ends off', async () => {
    const r = await rig(HOLD, { channels: ['unlock'] });
    await r.lock.start();
    await r.lock.unlock('a');
    r.relay.failNext({ channel: 'unlock', energised: false });
    await expect(r.lock.lock('b')).rejects.toMatchObject({ code: 'relay_failed' });
    expect(r.relay.energised('unlock')).toBe(false);
    expect(r.lock.state()).toBe('locked');
  });

  it('stop releases a held strike', async () => {
    const r = await rig(HOLD, { channels: ['unlock'] });
    await r.lock.start();
    await r.lock.unlock('a');
    await r.lock.stop();
    expect(r.relay.energised('unlock')).toBe(false);
    expect(r.lock.state()).toBe('locked');
    expect(r.timers.pending()).toBe(0);
  });

  it('hold wiring refuses a board without the unlock channel', async () => {
    const timers = new ManualTimers();
    const relay = new SimRelay({ logger: capturingLogger([]), channels: ['lock'], timers });
    expect(() => new LockController({ relay, config: HOLD, logger: capturingLogger([]), timers })).toThrow(
      expect.objectContaining({ code: 'config_invalid' }),
    );
  });
});

/**
 * A simulated board that stands for the relay guard: it records the on-time passed with each
 * energising, and can release a channel by itself and say so, as the guard does.
 */
class GuardLikeRelay extends SimRelay {
  readonly energisings: { channel: RelayChannel; releaseAfterMs: number | undefined }[] = [];
  private readonly releaseListeners = new Set<(release: SelfRelease) => void>();

  override set(channel: RelayChannel, energised: boolean, options?: EnergiseOptions): Promise<void> {
    if (energised) this.energisings.push({ channel, releaseAfterMs: options?.releaseAfterMs });
    return super.set(channel, energised);
  }

  onSelfRelease(listener: (release: SelfRelease) => void): () => void {
    this.releaseListeners.add(listener);
    return () => this.releaseListeners.delete(listener);
  }

  /** The guard's deadline passed: the channel goes off, then the release is reported. */
  async releaseByItself(channel: RelayChannel): Promise<void> {
    await super.set(channel, false);
    this.report(channel, true);
  }

  /** Reports a release, as the guard does; `current: false` names an earlier energising. */
  report(channel: RelayChannel, current: boolean): void {
    for (const listener of this.releaseListeners)
      listener({ channel, heldMs: 600, code: 'relay_guard_released', cause: 'limit', current });
  }
}

describe('LockController with a relay that times itself (the relay guard)', () => {
  async function guardRig(config: LockConfig) {
    const timers = new ManualTimers();
    const relay = new GuardLikeRelay({ logger: silentLogger, timers, wallNow: () => timers.now() });
    await relay.init();
    const lock = new LockController({ relay, config, logger: silentLogger, timers });
    const releases: WatchdogRelease[] = [];
    lock.onWatchdog((r) => releases.push(r));
    await lock.start();
    return { timers, relay, lock, releases };
  }

  it('tells the relay the on-time with every energising, and again when a hold is extended', async () => {
    const pulse = await guardRig(PULSE);
    await pulse.lock.unlock('a');
    await pulse.timers.advance(1000);
    await pulse.lock.lock('b');
    expect(pulse.relay.energisings).toEqual([
      { channel: 'unlock', releaseAfterMs: 350 },
      { channel: 'lock', releaseAfterMs: 350 },
    ]);

    const hold = await guardRig(HOLD);
    await hold.lock.unlock('a');
    await hold.timers.advance(3000);
    await hold.lock.unlock('b'); // extends the hold from now
    expect(hold.relay.energisings).toEqual([
      { channel: 'unlock', releaseAfterMs: 5000 },
      { channel: 'unlock', releaseAfterMs: 5000 },
    ]);
  });

  it('a release by the guard of the pulse under way ends it here too, and is reported', async () => {
    const r = await guardRig(PULSE);
    await r.lock.unlock('a');
    await r.relay.releaseByItself('unlock');
    await r.timers.advance(0);
    expect(r.lock.state()).toBe('unlocked');
    expect(r.releases).toEqual([
      {
        channel: 'unlock',
        heldMs: 600,
        code: 'relay_guard_released',
        cause: 'limit',
        current: true,
        by: 'guard',
      },
    ]);
    // The controller is idle: the next grant pulses again.
    await r.lock.unlock('b');
    expect(r.relay.energised('unlock')).toBe(true);
  });

  it('a report of an earlier energising, already ended here, is reported but cuts nothing', async () => {
    const r = await guardRig(PULSE);
    await r.lock.unlock('a');
    r.relay.report('unlock', false);
    await r.timers.advance(0);
    expect(r.releases).toEqual([expect.objectContaining({ current: false, by: 'guard' })]);
    expect(r.relay.energised('unlock')).toBe(true);
    expect(r.lock.state()).toBe('unlocking');
    await r.timers.advance(350); // the pulse ends at its own time
    expect(r.relay.energised('unlock')).toBe(false);
    expect(r.lock.state()).toBe('unlocked');
  });
});
