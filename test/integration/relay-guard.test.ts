import type { ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/logger.js';
import type { GuardSpec } from '../../src/relay/guard-protocol.js';
import { GuardedRelay, type GuardedRelayOptions } from '../../src/relay/guarded.js';
import type { SelfRelease } from '../../src/relay/types.js';
import {
  energisedPeriods,
  lineChanges,
  live,
  readRuns,
  STANDIN_V1,
  STANDIN_V2,
} from '../helpers/gpioset-standin.js';
import { requireTool, spawn, stopProcess } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

/**
 * The relay guard as a real process (dist/src/relay/guard-main.js) driving the stand-in gpioset,
 * with the line watched from outside through the stand-in's record: it ends what its owner does
 * not end, even while the owner's loop is blocked, and its death or hang is seen and recovered.
 */
const GUARD = fileURLToPath(new URL('../../dist/src/relay/guard-main.js', import.meta.url));
const UNLOCK_LINE = 17;
const LOCK_LINE = 27;

let dir: string;
let logPath: string;
let env: NodeJS.ProcessEnv;
const relays: GuardedRelay[] = [];
const children: ChildProcess[] = [];

function installStandIn(script: string): void {
  writeFileSync(join(dir, 'gpioset'), script);
  chmodSync(join(dir, 'gpioset'), 0o755);
}

function spec(maxOnMs: number): GuardSpec {
  return {
    maxOnMs,
    logLevel: 'debug',
    driver: {
      kind: 'gpio',
      gpiosetPath: 'gpioset',
      consumer: 'vehicle-agent',
      interactive: true,
      channels: {
        unlock: { chip: 'gpiochip0', line: UNLOCK_LINE, activeLow: false, bias: 'pull-down' },
        lock: { chip: 'gpiochip0', line: LOCK_LINE, activeLow: true, bias: 'pull-up' },
      },
    },
  };
}

function guarded(maxOnMs: number, options: Partial<GuardedRelayOptions> = {}) {
  const releases: SelfRelease[] = [];
  const relay = new GuardedRelay({
    spec: spec(maxOnMs),
    logger: silentLogger,
    env,
    guardScript: GUARD,
    marginMs: 100,
    stableMs: 300,
    restartBackoffMs: { initialMs: 50, maxMs: 200 },
    ...options,
  });
  relay.onSelfRelease((r) => releases.push(r));
  relays.push(relay);
  return { relay, releases };
}

/** The periods the unlock line was energised, in ms from the stand-in's record. */
function unlockPeriods(): { ms: number | undefined }[] {
  return energisedPeriods(lineChanges(logPath, UNLOCK_LINE), 1).map((p) => ({
    ms: p.toUs === undefined ? undefined : (p.toUs - p.fromUs) / 1000,
  }));
}

function lockPeriods(): { ms: number | undefined }[] {
  // The lock channel is active-low: energised is level 0.
  return energisedPeriods(lineChanges(logPath, LOCK_LINE), 0).map((p) => ({
    ms: p.toUs === undefined ? undefined : (p.toUs - p.fromUs) / 1000,
  }));
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]); // utime + stime
}

/** Until the process has used no CPU for 200 ms: it has nothing left to do. */
async function waitForIdle(pid: number): Promise<void> {
  let last = cpuTicks(pid);
  let quietSince = Date.now();
  await waitFor(
    () => {
      const now = cpuTicks(pid);
      if (now !== last) {
        last = now;
        quietSince = Date.now();
      }
      return Date.now() - quietSince >= 200;
    },
    'the process to be idle',
    { timeoutMs: 30_000 },
  );
}

function processGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

beforeEach(() => {
  requireTool('bash', 'the stand-in gpioset is a bash script');
  dir = mkdtempSync(join(tmpdir(), 'va-guard-'));
  logPath = join(dir, 'gpioset.log');
  env = {
    ...process.env,
    PATH: `${dir}:${process.env.PATH ?? '/usr/bin:/bin'}`,
    GPIOSET_STANDIN_LOG: logPath,
  };
});

afterEach(async () => {
  for (const relay of relays.splice(0)) await relay.close();
  for (const child of children.splice(0)) await stopProcess(child, 'SIGKILL');
  for (const run of live(readRuns(logPath))) {
    try {
      process.kill(run.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

describe('relay guard process', () => {
  it('ends a channel its owner leaves on, at the stated on-time plus the margin', async () => {
    installStandIn(STANDIN_V2);
    const { relay, releases } = guarded(10_000);
    await relay.init();
    expect(relay.health().state).toBe('ok');
    await relay.set('unlock', true, { releaseAfterMs: 300 });
    await waitFor(() => releases.length > 0, 'the guard to release the channel');
    expect(releases).toEqual([
      {
        channel: 'unlock',
        heldMs: expect.any(Number),
        code: 'relay_guard_released',
        cause: 'limit',
        current: true,
      },
    ]);
    const [period] = unlockPeriods();
    // Not cut before the on-time; ended by the guard, far inside max-on.
    expect(period?.ms).toBeGreaterThanOrEqual(300);
    expect(period?.ms).toBeLessThan(10_000);
    // The guard reports the expiry as it acts on it; the line's change follows.
    await waitFor(() => relay.timeline().length >= 2, 'the release in the timeline');
    expect(relay.timeline().map((t) => [t.channel, t.energised])).toEqual([
      ['unlock', true],
      ['unlock', false],
    ]);
  });

  it('ends it at max-on when the stated on-time is longer', async () => {
    installStandIn(STANDIN_V2);
    const { relay, releases } = guarded(800);
    await relay.init();
    await relay.set('unlock', true, { releaseAfterMs: 60_000 });
    await waitFor(() => releases.length > 0, 'the guard to release the channel');
    expect(releases[0]).toMatchObject({ code: 'relay_watchdog', cause: 'max-on', current: true });
    const [period] = unlockPeriods();
    expect(period?.ms).toBeLessThanOrEqual(800 + 100);
  });

  it("does not let its owner's blocked event loop extend a pulse (holder per level, gpioset 1.x)", async () => {
    installStandIn(STANDIN_V1);
    const { relay, releases } = guarded(10_000);
    await relay.init();
    await relay.set('unlock', true, { releaseAfterMs: 200 });
    // The owner's loop is stuck for 1.5 s right after switching on (a frozen disk, a busy loop).
    const until = performance.now() + 1500;
    while (performance.now() < until) {
      // busy
    }
    // Its own timer would end the pulse now, too late; the guard ended it long before.
    await relay.set('unlock', false);
    await waitFor(() => releases.length > 0, 'the report of the release');
    // The report is of an energising this side has since ended: nothing to resync.
    expect(releases).toEqual([
      {
        channel: 'unlock',
        heldMs: expect.any(Number),
        code: 'relay_guard_released',
        cause: 'limit',
        current: false,
      },
    ]);
    const [period] = unlockPeriods();
    expect(period?.ms).toBeGreaterThanOrEqual(200);
    expect(period?.ms).toBeLessThan(1500);
  });

  it('sees its guard killed: the line is released, health says so, the guard comes back', async () => {
    installStandIn(STANDIN_V2);
    const { relay, releases } = guarded(10_000);
    await relay.init();
    await relay.set('unlock', true, { releaseAfterMs: 5000 });
    const first = relay.guardStatus().pid ?? 0;
    process.kill(first, 'SIGKILL');
    await waitFor(() => releases.length > 0, 'the loss to be reported');
    expect(releases).toEqual([
      {
        channel: 'unlock',
        heldMs: expect.any(Number),
        code: 'relay_guard_lost',
        cause: 'lost',
        current: true,
      },
    ]);
    // The holders die with their owner: the energised line was let go (its bias holds it off).
    await waitFor(() => unlockPeriods()[0]?.ms !== undefined, 'the unlock line to be released');
    expect(relay.health().state).not.toBe('ok');
    expect(relay.health().detail).toContain('[relay_guard_lost]');
    await waitFor(() => relay.guardStatus().restarts === 1, 'a new guard');
    expect(relay.guardStatus().pid).not.toBe(first);
    await waitFor(() => relay.health().state === 'ok', 'health to recover once the new guard is stable');
    // The new guard holds the lines inactive and takes commands.
    await relay.set('unlock', true, { releaseAfterMs: 5000 });
    await relay.set('unlock', false);
    expect(unlockPeriods()).toHaveLength(2);
    expect(processGone(first)).toBe(true);
  });

  it('kills a guard that stops answering (SIGSTOP) and starts another; its holders end with it', async () => {
    installStandIn(STANDIN_V2);
    const { relay, releases } = guarded(10_000, { pingIntervalMs: 100, pingTimeoutMs: 400 });
    await relay.init();
    await relay.set('unlock', true, { releaseAfterMs: 5000 });
    const first = relay.guardStatus().pid ?? 0;
    const holdersBefore = live(readRuns(logPath)).map((r) => r.pid);
    process.kill(first, 'SIGSTOP');
    await waitFor(() => relay.guardStatus().restarts === 1, 'the guard to be replaced');
    expect(releases[0]).toMatchObject({ code: 'relay_guard_lost', current: true });
    await waitFor(() => processGone(first), 'the stopped guard to be gone');
    await waitFor(() => holdersBefore.every(processGone), 'its holders to be gone');
    expect(unlockPeriods()[0]?.ms).toBeDefined();
  });

  it('does not take its own stalled loop for a silent guard: answers that came meanwhile count', async () => {
    installStandIn(STANDIN_V2);
    const { relay } = guarded(10_000, { commandTimeoutMs: 300, pingTimeoutMs: 300 });
    await relay.init();
    const pid = relay.guardStatus().pid;
    // A command goes out, then this loop is stuck well past its timeout (the answer comes meanwhile).
    const on = relay.set('unlock', true, { releaseAfterMs: 5000 });
    const until = performance.now() + 1200;
    while (performance.now() < until) {
      // busy
    }
    await expect(on).resolves.toBeUndefined();
    expect(relay.guardStatus()).toEqual({ pid, restarts: 0 });
    expect(relay.health().state).toBe('ok');
  });

  it('keeps its time while its owner reads nothing: its output never blocks it, and is bounded', async () => {
    installStandIn(STANDIN_V2);
    const guard = spawn(process.execPath, [GUARD, JSON.stringify(spec(10_000))], {
      env,
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    children.push(guard);
    guard.stdin?.on('error', () => {}); // EPIPE once it is gone
    let out = '';
    guard.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
    });
    await waitFor(() => out.includes('\nready ') || out.startsWith('ready '), 'the guard to be ready');
    // The owner stops reading (as a stopped agent does) and floods it with commands, each answered.
    // The last is a short lock pulse: once it has ended, the guard has done everything and has
    // nothing more to say, so the report of what it dropped cannot ride on a later event.
    guard.stdout?.pause();
    const flood: string[] = ['on 1 unlock 300'];
    for (let id = 2; id < 300_000; id++) flood.push(`ping ${id}`);
    flood.push('on 300000 lock 50');
    guard.stdin?.write(`${flood.join('\n')}\n`);
    await waitFor(() => unlockPeriods()[0]?.ms !== undefined, 'the guard to release the channel');
    expect(unlockPeriods()[0]?.ms).toBeLessThan(2000);
    // On a loaded machine working through 300 000 commands takes a while.
    await waitFor(() => lockPeriods()[0]?.ms !== undefined, 'the last command to be done', {
      timeoutMs: 60_000,
    });
    await waitForIdle(guard.pid ?? 0);
    expect(out).not.toContain('"msg":"events dropped"');
    // What it could not write was dropped, not queued without bound, and it says so when read.
    guard.stdout?.resume();
    await waitFor(() => out.includes('"msg":"events dropped"'), 'the report of dropped events');
    expect(out.length).toBeLessThan(2_000_000);
  }, 90_000);

  it('ends every holder on close', async () => {
    installStandIn(STANDIN_V2);
    const { relay } = guarded(10_000);
    await relay.init();
    const pid = relay.guardStatus().pid ?? 0;
    await relay.set('unlock', true, { releaseAfterMs: 5000 });
    await relay.close();
    expect(live(readRuns(logPath))).toEqual([]);
    expect(lineChanges(logPath, UNLOCK_LINE).map((c) => c.level)).toEqual([0, 1, 0, null]);
    await waitFor(() => processGone(pid), 'the guard to exit');
    expect(relay.health().state).toBe('disabled');
  });

  it('fails init with relay_failed, saying why, when gpioset cannot run', async () => {
    const { relay } = guarded(10_000, {
      spec: {
        ...spec(10_000),
        driver: { ...spec(10_000).driver, gpiosetPath: join(dir, 'none') } as GuardSpec['driver'],
      },
    });
    await expect(relay.init()).rejects.toMatchObject({
      code: 'relay_failed',
      message: expect.stringContaining('cannot run'),
    });
    expect(relay.health().state).toBe('down');
    await expect(relay.set('unlock', true)).rejects.toMatchObject({ code: 'relay_failed' });
  });
});
