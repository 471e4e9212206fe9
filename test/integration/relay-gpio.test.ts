import { type ChildProcess, spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/logger.js';
import { GpioRelay, type GpioRelayOptions } from '../../src/relay/gpio.js';
import {
  lineChanges,
  live,
  type Run,
  readRuns,
  STANDIN_V1,
  STANDIN_V2,
  STANDIN_V2_PLAIN,
} from '../helpers/gpioset-standin.js';
import { requireTool, stopProcess } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

/**
 * set() resolves once gpioset was started; the stand-in logs a moment later. Waits until the
 * running stand-ins hold exactly `expected`, then asserts it (so a mismatch shows as a diff).
 */
async function expectHolding(expected: string[]): Promise<Run[]> {
  const args = () =>
    live(readRuns(logPath))
      .map((r) => r.args)
      .sort();
  await waitFor(
    () => JSON.stringify(args()) === JSON.stringify([...expected].sort()),
    'the expected holders',
  ).catch(() => {});
  expect(args()).toEqual([...expected].sort());
  return live(readRuns(logPath));
}

/** True when the process no longer runs (gone, or a zombie nobody reaped yet). */
function processGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

const root = fileURLToPath(new URL('../..', import.meta.url));

let dir: string;
let logPath: string;
let env: NodeJS.ProcessEnv;
const drivers: GpioRelay[] = [];
const children: ChildProcess[] = [];

function installStandIn(script: string): void {
  const path = join(dir, 'gpioset');
  writeFileSync(path, script);
  chmodSync(path, 0o755);
}

function driver(options: Partial<GpioRelayOptions> = {}): GpioRelay {
  const relay = new GpioRelay({
    channels: {
      unlock: { chip: 'gpiochip0', line: 17, activeLow: false },
      lock: { chip: 'gpiochip0', line: 27, activeLow: true, bias: 'pull-up' },
    },
    logger: silentLogger,
    env,
    stableMs: 300,
    retryBackoffMs: { initialMs: 50, maxMs: 200 },
    ...options,
  });
  drivers.push(relay);
  return relay;
}

beforeEach(() => {
  requireTool('sh', 'a POSIX shell runs the stand-in gpioset');
  dir = mkdtempSync(join(tmpdir(), 'gpioset-standin-'));
  logPath = join(dir, 'gpioset.log');
  env = {
    ...process.env,
    PATH: `${dir}:${process.env.PATH ?? '/usr/bin:/bin'}`,
    GPIOSET_STANDIN_LOG: logPath,
  };
});

afterEach(async () => {
  for (const child of children.splice(0)) await stopProcess(child, 'SIGKILL');
  for (const relay of drivers.splice(0)) await relay.close();
  // Whatever a failed test left behind: end the stand-ins this test started, by PID.
  for (const run of live(readRuns(logPath))) {
    try {
      process.kill(run.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

describe('GPIO relay through gpioset 1.x', () => {
  it('holds every line at its inactive level from init, with active-low inverted', async () => {
    installStandIn(STANDIN_V1);
    const relay = driver();
    await relay.init();
    expect(relay.dialect).toBe(1);
    expect(relay.health().state).toBe('ok');
    await expectHolding(['--mode=wait --bias=pull-up gpiochip0 27=1', '--mode=wait gpiochip0 17=0']);
    const runs = readRuns(logPath);
    expect(runs).toHaveLength(2);
    const pids = relay.holderPids();
    expect(Object.values(pids).sort()).toEqual(runs.map((r) => r.pid).sort());
  });

  it('switches a line by replacing its holder, the old one ending before the new one starts', async () => {
    installStandIn(STANDIN_V1);
    const relay = driver();
    await relay.init();
    const idleUnlock = relay.holderPids().unlock;
    await relay.set('unlock', true);
    await relay.set('lock', true);
    await expectHolding(['--mode=wait --bias=pull-up gpiochip0 27=0', '--mode=wait gpiochip0 17=1']);
    let runs = readRuns(logPath);
    const old = runs.find((r) => r.pid === idleUnlock);
    const energised = runs.find((r) => r.args === '--mode=wait gpiochip0 17=1');
    expect(old?.endMs).toBeDefined();
    expect(energised?.startMs).toBeGreaterThanOrEqual(old?.endMs ?? Number.POSITIVE_INFINITY);

    // Asking for the level a line already has starts nothing.
    await relay.set('unlock', true);
    expect(readRuns(logPath)).toHaveLength(runs.length);

    await relay.set('lock', false);
    await relay.allOff();
    await expectHolding(['--mode=wait --bias=pull-up gpiochip0 27=1', '--mode=wait gpiochip0 17=0']);
    runs = readRuns(logPath);
    expect(runs.map((r) => r.args).slice(0, 4)).toEqual([
      expect.any(String),
      expect.any(String),
      '--mode=wait gpiochip0 17=1',
      '--mode=wait --bias=pull-up gpiochip0 27=0',
    ]);
    // set() resolves once gpioset was started, so the lock line's holder (asked first) and the
    // unlock line's (asked right after, by allOff) may log their start in either order.
    expect(
      runs
        .slice(4)
        .map((r) => r.args)
        .sort(),
    ).toEqual(['--mode=wait --bias=pull-up gpiochip0 27=1', '--mode=wait gpiochip0 17=0']);
  });

  it('ends every holder on close, after driving the lines inactive', async () => {
    installStandIn(STANDIN_V1);
    const relay = driver();
    await relay.init();
    await relay.set('unlock', true);
    await relay.close();
    const runs = readRuns(logPath);
    expect(live(runs)).toEqual([]);
    expect(runs.at(-1)?.args).toBe('--mode=wait gpiochip0 17=0');
    expect(relay.holderPids()).toEqual({});
    expect(relay.health().state).toBe('disabled');
  });

  it('sees a holder that dies, reports degraded and drives the line again', async () => {
    installStandIn(STANDIN_V1);
    const relay = driver();
    await relay.init();
    await relay.set('unlock', true);
    const victim = relay.holderPids().unlock;
    expect(victim).toBeDefined();
    process.kill(victim ?? 0, 'SIGKILL');
    await waitFor(() => relay.health().state !== 'ok', 'health to leave ok');
    expect(relay.health().state).toBe('degraded');
    expect(relay.health().detail).toContain('unlock');
    await waitFor(
      () => live(readRuns(logPath)).some((r) => r.args === '--mode=wait gpiochip0 17=1' && r.pid !== victim),
      'the line to be driven again',
    );
    await waitFor(() => relay.health().state === 'ok', 'health to recover once the new holder is stable');
  });

  it('fails init with relay_failed when a line cannot be held, and reports down', async () => {
    installStandIn(STANDIN_V1);
    // 1.x reports success by saying nothing: init waits settleMs for a failing request to exit.
    // The stand-in is a shell script on a loaded machine, so give it far longer than gpioset needs.
    const relay = driver({ env: { ...env, GPIOSET_STANDIN_BUSY: '27' }, settleMs: 1000 });
    await expect(relay.init()).rejects.toMatchObject({
      code: 'relay_failed',
      message: expect.stringContaining('busy'),
    });
    await waitFor(() => relay.health().state === 'down', 'health down after repeated failures');
  });

  it('fails init with relay_failed when gpioset is missing', async () => {
    const relay = driver({ gpiosetPath: join(dir, 'no-such-gpioset') });
    await expect(relay.init()).rejects.toMatchObject({ code: 'relay_failed' });
    expect(relay.health().state).toBe('down');
  });

  it('holders die when the process driving them is killed with SIGKILL', async () => {
    installStandIn(STANDIN_V1);
    await killedParentLeavesNoHolder(1);
  });
});

describe('GPIO relay through gpioset 2.x without its interactive mode', () => {
  it('detects 2.x and uses its syntax, confirming each line by the banner', async () => {
    installStandIn(STANDIN_V2_PLAIN);
    const relay = driver();
    await relay.init();
    expect(relay.dialect).toBe(2);
    expect(relay.interactive).toBe(false);
    // The banner comes after the stand-in logged its start: no waiting needed with 2.x.
    expect(
      live(readRuns(logPath))
        .map((r) => r.args)
        .sort(),
    ).toEqual([
      '--banner --consumer=vehicle-agent --bias=pull-up --chip=gpiochip0 27=1',
      '--banner --consumer=vehicle-agent --chip=gpiochip0 17=0',
    ]);
    await relay.set('unlock', true);
    await relay.set('lock', true);
    expect(
      live(readRuns(logPath))
        .map((r) => r.args)
        .sort(),
    ).toEqual([
      '--banner --consumer=vehicle-agent --bias=pull-up --chip=gpiochip0 27=0',
      '--banner --consumer=vehicle-agent --chip=gpiochip0 17=1',
    ]);
    await relay.close();
    expect(live(readRuns(logPath))).toEqual([]);
  });

  it('holders die when the process driving them is killed with SIGKILL', async () => {
    installStandIn(STANDIN_V2_PLAIN);
    await killedParentLeavesNoHolder(2);
  });
});

const INTERACTIVE_IDLE = [
  '--interactive --consumer=vehicle-agent --bias=pull-up --chip=gpiochip0 27=1',
  '--interactive --consumer=vehicle-agent --chip=gpiochip0 17=0',
];

describe('GPIO relay through gpioset 2.x in interactive mode', () => {
  it('holds each line with one interactive holder, confirmed by its prompt', async () => {
    installStandIn(STANDIN_V2);
    const relay = driver();
    await relay.init();
    expect(relay.dialect).toBe(2);
    expect(relay.interactive).toBe(true);
    // The prompt comes after the stand-in logged its start: no waiting needed.
    expect(
      live(readRuns(logPath))
        .map((r) => r.args)
        .sort(),
    ).toEqual(INTERACTIVE_IDLE);
    expect(relay.health().state).toBe('ok');
  });

  it('changes a level with a set command to the same holder, starting no process', async () => {
    installStandIn(STANDIN_V2);
    const relay = driver();
    await relay.init();
    const pids = relay.holderPids();
    await relay.set('unlock', true);
    await relay.set('lock', true);
    // set() resolves on the prompt after the command: the stand-in has applied it by then.
    expect(lineChanges(logPath, 17).map((c) => c.level)).toEqual([0, 1]);
    expect(lineChanges(logPath, 27).map((c) => c.level)).toEqual([1, 0]);
    await relay.set('unlock', true); // already there: nothing sent
    await relay.set('unlock', false);
    await relay.allOff();
    expect(lineChanges(logPath, 17).map((c) => c.level)).toEqual([0, 1, 0]);
    expect(lineChanges(logPath, 27).map((c) => c.level)).toEqual([1, 0, 1]);
    expect(readRuns(logPath)).toHaveLength(2);
    expect(relay.holderPids()).toEqual(pids);
  });

  it('can be told not to use the interactive mode: a holder per level, as without it', async () => {
    installStandIn(STANDIN_V2);
    const relay = driver({ interactive: false });
    await relay.init();
    expect(relay.interactive).toBe(false);
    await relay.set('unlock', true);
    expect(readRuns(logPath).map((r) => r.args)).toContain(
      '--banner --consumer=vehicle-agent --chip=gpiochip0 17=1',
    );
  });

  it('ends every holder on close, after driving the lines inactive', async () => {
    installStandIn(STANDIN_V2);
    const relay = driver();
    await relay.init();
    await relay.set('unlock', true);
    await relay.close();
    expect(live(readRuns(logPath))).toEqual([]);
    const changes = lineChanges(logPath, 17);
    expect(changes.map((c) => c.level)).toEqual([0, 1, 0, null]);
    expect(relay.health().state).toBe('disabled');
  });

  it('sees a holder that dies, reports degraded and holds the line again', async () => {
    installStandIn(STANDIN_V2);
    const relay = driver();
    await relay.init();
    await relay.set('unlock', true);
    const victim = relay.holderPids().unlock;
    expect(victim).toBeDefined();
    process.kill(victim ?? 0, 'SIGKILL');
    await waitFor(() => relay.health().state !== 'ok', 'health to leave ok');
    expect(relay.health().state).toBe('degraded');
    expect(relay.health().detail).toContain('unlock');
    await waitFor(
      () => live(readRuns(logPath)).some((r) => r.args.endsWith('17=1') && r.pid !== relay.holderPids().lock),
      'the line to be held again',
    );
    await waitFor(() => relay.health().state === 'ok', 'health to recover once the new holder is stable');
    // The new holder takes commands as the first did.
    await relay.set('unlock', false);
    expect(lineChanges(logPath, 17).at(-1)?.level).toBe(0);
  });

  it('ends a holder that reports an error on a set (its level is unknown) and holds the line afresh', async () => {
    installStandIn(STANDIN_V2);
    const relay = driver({ env: { ...env, GPIOSET_STANDIN_SET_FAIL: '1' } });
    await relay.init();
    const victim = relay.holderPids().unlock ?? 0;
    // The prompt may come before the error (the set resolves, and the line is wanted on) or after
    // it (the set is refused, and the line is wanted off): either way, the new holder holds it so.
    const wanted = await relay.set('unlock', true).then(
      () => 1,
      () => 0,
    );
    await waitFor(() => relay.health().state === 'degraded', 'health degraded');
    expect(relay.health().detail).toContain('unlock');
    await waitFor(() => processGone(victim), 'the failed holder to be ended');
    // Driven afresh by a new holder that requests the line at the wanted level from the start.
    await waitFor(
      () => live(readRuns(logPath)).some((r) => r.pid !== victim && r.args.endsWith(`17=${wanted}`)),
      'a new holder',
      {
        detail: () => readRuns(logPath).map((r) => [r.pid, r.args, r.endMs === undefined ? 'live' : 'ended']),
      },
    );
  });

  it('holders die when the process driving them is killed with SIGKILL', async () => {
    installStandIn(STANDIN_V2);
    await killedParentLeavesNoHolder(2, true);
  });
});

async function killedParentLeavesNoHolder(dialect: 1 | 2, interactive = false): Promise<void> {
  const child = spawn(process.execPath, [join(root, 'test/fixtures/gpio-relay-child.mjs')], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(child);
  const ready = await new Promise<{ dialect: number; pids: Record<string, number> }>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
      const line = out.split('\n')[0];
      if (out.includes('\n') && line !== undefined)
        resolve(JSON.parse(line) as { dialect: number; pids: Record<string, number> });
    });
    child.once('exit', (code) => reject(new Error(`driver process exited early (${code})`)));
  });
  expect(ready.dialect).toBe(dialect);
  const holding = await expectHolding(
    interactive
      ? [
          '--interactive --consumer=vehicle-agent --chip=gpiochip0 17=0',
          '--interactive --consumer=vehicle-agent --chip=gpiochip0 27=1',
        ]
      : dialect === 1
        ? ['--mode=wait gpiochip0 17=1', '--mode=wait gpiochip0 27=1']
        : [
            '--banner --consumer=vehicle-agent --chip=gpiochip0 17=1',
            '--banner --consumer=vehicle-agent --chip=gpiochip0 27=1',
          ],
  );
  if (interactive) expect(lineChanges(logPath, 17).at(-1)?.level).toBe(1);
  await stopProcess(child, 'SIGKILL');
  await waitFor(() => live(readRuns(logPath)).length === 0, 'every stand-in gpioset to stop holding');
  const holderPids = [...Object.values(ready.pids), ...holding.map((r) => r.pid)];
  await waitFor(() => holderPids.every(processGone), 'every holder process to exit');
}
