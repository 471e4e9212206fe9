import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { controlRequest } from '../../src/cli/control-client.js';
import { type AgentProcess, CLI, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import {
  energisedPeriods,
  lineChanges,
  live,
  readRuns,
  STANDIN_V1,
  STANDIN_V2,
  wallMicros,
} from '../helpers/gpioset-standin.js';
import { requireTool, spawn, stopProcess } from '../helpers/processes.js';
import { waitFor, waitForRead } from '../helpers/wait.js';

/**
 * The real agent driving GPIO relays through its relay guard and a stand-in gpioset (first on
 * PATH) that records what it was asked to hold: lines are held inactive from start, energised for a
 * grant, and released to inactive on SIGTERM and on an uncaught error. The line is watched from
 * outside the agent, through the stand-in's record: a stopped, stalled or killed agent, or a
 * killed relay guard, never leaves it energised past its limit.
 */
let dir: string;
let logPath: string;
let env: NodeJS.ProcessEnv;

const holding = () =>
  live(readRuns(logPath))
    .map((r) => r.args)
    .sort();

beforeEach(() => {
  requireTool('sh', 'a POSIX shell runs the stand-in gpioset');
  dir = mkdtempSync(join(tmpdir(), 'va-agent-gpio-'));
  logPath = join(dir, 'gpioset.log');
  writeFileSync(join(dir, 'gpioset'), STANDIN_V1);
  chmodSync(join(dir, 'gpioset'), 0o755);
  env = {
    PATH: `${dir}:${process.env.PATH ?? '/usr/bin:/bin'}`,
    GPIOSET_STANDIN_LOG: logPath,
    VEHICLE_AGENT_RELAY__DRIVER: 'gpio',
    VEHICLE_AGENT_RELAY__GPIO__UNLOCK_LINE: '17',
    VEHICLE_AGENT_RELAY__GPIO__LOCK_LINE: '27',
    VEHICLE_AGENT_RELAY__GPIO__LOCK_ACTIVE_LOW: 'true',
    // a long pulse so the test can see the line energised
    VEHICLE_AGENT_LOCK__PULSE_MS: '4000',
    VEHICLE_AGENT_LOCK__AUTO_RELOCK_MS: '0',
    VEHICLE_AGENT_SIM__READER: 'on',
    VEHICLE_AGENT_TEST_HOOKS: '1',
  };
});

const agents: AgentProcess[] = [];
/** Relay guards the agents started (from their status): a failed test must not leave one behind. */
const guards: number[] = [];

afterEach(async () => {
  for (const agent of agents.splice(0)) {
    agent.child.kill('SIGCONT');
    await agent.stop('SIGKILL');
  }
  for (const pid of guards.splice(0)) {
    // Only if that pid is still this test's guard (a pid is reused once its process is gone).
    try {
      const ours =
        readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('guard-main.js') &&
        readFileSync(`/proc/${pid}/environ`, 'utf8').includes(logPath);
      if (ours) process.kill(pid, 'SIGKILL');
    } catch {
      // gone, as it should be
    }
  }
  for (const run of live(readRuns(logPath))) {
    try {
      process.kill(run.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

const IDLE = ['--mode=wait --bias=pull-down gpiochip0 17=0', '--mode=wait --bias=pull-up gpiochip0 27=1'];
const UNLOCKING = [
  '--mode=wait --bias=pull-down gpiochip0 17=1',
  '--mode=wait --bias=pull-up gpiochip0 27=1',
];

describe('agent with GPIO relays', () => {
  it('holds lines inactive from start, energises for a grant and releases on SIGTERM', async () => {
    // gpio means real hardware: the demo is not provisioned by itself, so init first.
    const state = join(dir, 'state');
    expect(runCliJson(['init', '--demo', '--state-dir', state]).code).toBe(0);
    const agent = await startAgentProcess(['--state-dir', state], env);
    try {
      await waitFor(() => JSON.stringify(holding()) === JSON.stringify(IDLE), 'idle holders', {
        detail: holding,
      });
      const r = runCliJson(['sim', 'present', 'driver', '--state-dir', state], env);
      expect(r.value).toMatchObject({ granted: true });
      await waitFor(
        () => JSON.stringify(holding()) === JSON.stringify(UNLOCKING),
        'the unlock line energised',
        { detail: holding },
      );
    } finally {
      expect(await agent.stop('SIGTERM')).toBe(0);
    }
    expect(holding()).toEqual([]);
    // the last level each line was driven to before release was its inactive level
    const runs = readRuns(logPath);
    const lastFor = (line: string) => runs.filter((x) => x.args.includes(` ${line}=`)).at(-1)?.args;
    expect(lastFor('gpiochip0 17')).toContain('17=0');
    expect(lastFor('gpiochip0 27')).toContain('27=1');
  });

  it('de-energises every relay on an uncaught error and exits non-zero', async () => {
    const state = join(dir, 'state');
    expect(runCliJson(['init', '--demo', '--state-dir', state]).code).toBe(0);
    const agent = await startAgentProcess(['--state-dir', state], env);
    expect(runCliJson(['sim', 'present', 'driver', '--state-dir', state], env).value).toMatchObject({
      granted: true,
    });
    await waitFor(
      () => JSON.stringify(holding()) === JSON.stringify(UNLOCKING),
      'the unlock line energised',
      { detail: holding },
    );
    const exited = new Promise<number | null>((resolve) => agent.child.once('exit', (code) => resolve(code)));
    // an error nothing catches, thrown inside the agent (a test-only hook, on with VEHICLE_AGENT_TEST_HOOKS=1)
    const { controlRequest } = await import('../../src/cli/control-client.js');
    await controlRequest(join(state, 'control.sock'), 'test.crash', {}).catch(() => {});
    expect(await exited).toBe(1);
    expect(agent.stderr()).toContain('fatal');
    // holders exit on end of file once the agent is gone; give the stand-in a moment to log it
    await waitFor(() => holding().length === 0, 'every holder gone', { detail: holding });
    const runs = readRuns(logPath);
    expect(runs.filter((x) => x.args.includes('17=')).at(-1)?.args).toContain('17=0');
  });

  it('refuses to start unprovisioned on real hardware', async () => {
    const agent = await startAgentProcess(['--state-dir', join(dir, 'empty')], env, false);
    const code = await new Promise<number | null>((resolve) => agent.child.once('exit', (c) => resolve(c)));
    expect(code).toBe(1);
    expect(agent.stderr()).toContain('[not_provisioned]');
    expect(holding()).toEqual([]);
  });
});

// ── the relay line timed outside the agent's event loop ─────────────────────────────────────

const PULSE_MS = 2000;
const HOLD_MS = 2000;
const MAX_ON_MS = 4000;
/** The longest pulse the configuration takes, for tests where the pulse must outlast the event. */
const LONG_PULSE = { VEHICLE_AGENT_LOCK__PULSE_MS: '5000', VEHICLE_AGENT_LOCK__MAX_ON_MS: '6000' };

/** Periods the unlock line (17, active-high) was energised, from the stand-in's record, in ms. */
function unlockPeriods(): { fromMs: number; ms: number | undefined }[] {
  return energisedPeriods(lineChanges(logPath, 17), 1).map((p) => ({
    fromMs: p.fromUs / 1000,
    ms: p.toUs === undefined ? undefined : (p.toUs - p.fromUs) / 1000,
  }));
}

function processState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}
const gone = (pid: number) => {
  const state = processState(pid);
  return state === undefined || state === 'Z';
};

interface Status {
  lock: string;
  relay: { health: { state: string; detail?: string }; guard: { pid?: number; restarts: number } };
}

async function startGpioAgent(
  standIn: string,
  overrides: NodeJS.ProcessEnv,
  state = join(dir, 'state'),
): Promise<{ agent: AgentProcess; state: string; socket: string }> {
  writeFileSync(join(dir, 'gpioset'), standIn);
  expect(runCliJson(['init', '--demo', '--state-dir', state]).code).toBe(0);
  const agent = await startAgentProcess(['--state-dir', state], {
    ...env,
    VEHICLE_AGENT_LOCK__MAX_ON_MS: String(MAX_ON_MS),
    ...overrides,
  });
  agents.push(agent);
  const socket = join(state, 'control.sock');
  await statusOf(socket); // notes the guard's pid
  return { agent, state, socket };
}

/**
 * A grant at the simulated reader (`vehicle-agent sim present`, run without waiting for it);
 * resolves as soon as the stand-in shows the unlock line energised, with the CLI's answer to come.
 */
async function grantAndSeeLineOn(
  state: string,
  periodsBefore: number,
): Promise<{ answer: Promise<Record<string, unknown>> }> {
  const cli = spawn(process.execPath, [CLI, 'sim', 'present', 'driver', '--state-dir', state, '--json'], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  cli.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk;
  });
  const answer = new Promise<Record<string, unknown>>((resolve, reject) => {
    cli.once('close', () => {
      try {
        resolve(JSON.parse(out) as Record<string, unknown>);
      } catch {
        reject(new Error(`not JSON from sim present: ${out}`));
      }
    });
  });
  answer.catch(() => {}); // awaited by the caller
  await waitFor(() => unlockPeriods().length > periodsBefore, 'the unlock line energised', {
    detail: holding,
  });
  return { answer };
}

async function auditRecords(socket: string): Promise<Record<string, unknown>[]> {
  return (await controlRequest(socket, 'audit.tail', { n: 50 })) as Record<string, unknown>[];
}

const statusOf = async (socket: string) => {
  const status = (await controlRequest(socket, 'status', {})) as Status;
  const pid = status.relay.guard.pid;
  if (pid !== undefined && !guards.includes(pid)) guards.push(pid);
  return status;
};

const watchdogRecords = (records: Record<string, unknown>[]) =>
  records.filter((r) => r.type === 'relay.watchdog');

describe.each([
  ['1.x (a holder per level)', STANDIN_V1],
  ['2.x (interactive holder)', STANDIN_V2],
])('agent with GPIO relays, gpioset %s: the line is timed outside the agent', (_name, standIn) => {
  it('a pulse ends within max-on while the agent is stopped (SIGSTOP), and the agent carries on', async () => {
    const { agent, state, socket } = await startGpioAgent(standIn, {
      VEHICLE_AGENT_LOCK__PULSE_MS: String(PULSE_MS),
    });
    const pid = agent.child.pid ?? 0;
    const { answer } = await grantAndSeeLineOn(state, 0);
    agent.child.kill('SIGSTOP');
    const stoppedUs = wallMicros();
    try {
      await waitFor(() => unlockPeriods()[0]?.ms !== undefined, 'the unlock line released');
      // Released by the guard while the agent could do nothing at all.
      expect(processState(pid)).toBe('T');
    } finally {
      agent.child.kill('SIGCONT');
    }
    const [period] = unlockPeriods();
    expect((period?.fromMs ?? 0) + (period?.ms ?? 0)).toBeGreaterThan(stoppedUs / 1000);
    expect(period?.ms).toBeGreaterThanOrEqual(PULSE_MS - 50); // a whole pulse, not cut short
    expect(period?.ms).toBeLessThanOrEqual(MAX_ON_MS + 100);
    expect(await answer).toMatchObject({ granted: true });

    // The agent carries on: its overdue timer ends the pulse in its own state, the guard's
    // release is audited, and the next grant pulses again.
    const records = await waitForRead(
      () => auditRecords(socket),
      (r) => watchdogRecords(r).length > 0,
      'the release in the audit log',
    );
    expect(watchdogRecords(records)).toEqual([
      expect.objectContaining({
        code: 'relay_guard_released',
        cause: 'limit',
        by: 'guard',
        channel: 'unlock',
      }),
    ]);
    const status = await waitForRead(
      () => statusOf(socket),
      (s) => s.lock === 'unlocked',
      'the lock state',
    );
    expect(status.lock).toBe('unlocked');
    expect(status.relay.health.state).toBe('ok');
    await grantAndSeeLineOn(state, 1);
    await waitFor(() => unlockPeriods()[1]?.ms !== undefined, 'the second pulse to end');
    expect(unlockPeriods()[1]?.ms).toBeGreaterThanOrEqual(PULSE_MS - 50);
    expect(await agent.stop('SIGTERM')).toBe(0);
  });

  it('kill -9 of the agent: the line is released at once, the guard exits, no holder is left', async () => {
    const { agent, state, socket } = await startGpioAgent(standIn, LONG_PULSE);
    const guardPid = (await statusOf(socket)).relay.guard.pid ?? 0;
    expect(gone(guardPid)).toBe(false);
    await grantAndSeeLineOn(state, 0);
    const holders = live(readRuns(logPath)).map((r) => r.pid);
    agent.child.kill('SIGKILL');
    await waitFor(() => unlockPeriods()[0]?.ms !== undefined, 'the unlock line released');
    await waitFor(() => gone(guardPid), 'the relay guard to exit');
    await waitFor(() => live(readRuns(logPath)).length === 0 && holders.every(gone), 'every holder to end');
    // Released long before the 5 s pulse would have ended.
    expect(unlockPeriods()[0]?.ms).toBeLessThan(5000);
  });
});

describe('agent with GPIO relays: the line is timed outside the agent', () => {
  it('a held door strike ends within max-on while the agent is stopped, and the agent carries on', async () => {
    const { agent, state, socket } = await startGpioAgent(STANDIN_V2, {
      VEHICLE_AGENT_LOCK__WIRING: 'hold',
      VEHICLE_AGENT_LOCK__HOLD_MS: String(HOLD_MS),
    });
    await grantAndSeeLineOn(state, 0);
    agent.child.kill('SIGSTOP');
    const stoppedUs = wallMicros();
    try {
      await waitFor(() => unlockPeriods()[0]?.ms !== undefined, 'the strike released');
      expect(processState(agent.child.pid ?? 0)).toBe('T');
    } finally {
      agent.child.kill('SIGCONT');
    }
    const [period] = unlockPeriods();
    expect((period?.fromMs ?? 0) + (period?.ms ?? 0)).toBeGreaterThan(stoppedUs / 1000);
    expect(period?.ms).toBeGreaterThanOrEqual(HOLD_MS - 50);
    expect(period?.ms).toBeLessThanOrEqual(MAX_ON_MS + 100);
    const status = await waitForRead(
      () => statusOf(socket),
      (s) => s.lock === 'locked',
      'the strike locked again',
    );
    expect(status.lock).toBe('locked');
    const records = await waitForRead(
      () => auditRecords(socket),
      (r) => watchdogRecords(r).length > 0,
      'the release in the audit log',
    );
    expect(watchdogRecords(records)).toEqual([
      expect.objectContaining({ code: 'relay_guard_released', channel: 'unlock' }),
    ]);
    expect(await agent.stop('SIGTERM')).toBe(0);
  });

  it('a busy main thread (test.stall) does not extend the pulse', async () => {
    const { agent, state, socket } = await startGpioAgent(STANDIN_V1, {
      VEHICLE_AGENT_LOCK__PULSE_MS: String(PULSE_MS),
    });
    await grantAndSeeLineOn(state, 0);
    const stalled = controlRequest(socket, 'test.stall', { ms: 6000 });
    await waitFor(() => unlockPeriods()[0]?.ms !== undefined, 'the unlock line released');
    expect(await stalled).toEqual({ stalledMs: 6000 });
    const [period] = unlockPeriods();
    expect(period?.ms).toBeGreaterThanOrEqual(PULSE_MS - 50);
    // The loop was stuck for 6 s from (about) the moment the line came on; max-on is 4 s.
    expect(period?.ms).toBeLessThanOrEqual(MAX_ON_MS + 100);
    const records = await waitForRead(
      () => auditRecords(socket),
      (r) => watchdogRecords(r).length > 0,
      'the release in the audit log',
    );
    expect(watchdogRecords(records)).toEqual([
      expect.objectContaining({ code: 'relay_guard_released', channel: 'unlock' }),
    ]);
    expect(await agent.stop('SIGTERM')).toBe(0);
  });

  it('a relay guard that dies is seen: line released, health says so, lock resynced, guard back', async () => {
    const { agent, state, socket } = await startGpioAgent(STANDIN_V2, LONG_PULSE);
    const first = (await statusOf(socket)).relay.guard.pid ?? 0;
    await grantAndSeeLineOn(state, 0);
    // The agent has heard that the strike is on (else the loss is a failed energising instead).
    await waitForRead(
      () => statusOf(socket),
      (s) => s.lock === 'unlocking',
      'the pulse under way',
    );
    process.kill(first, 'SIGKILL');
    await waitFor(() => unlockPeriods()[0]?.ms !== undefined, 'the unlock line released');
    const status = await waitForRead(
      () => statusOf(socket),
      (s) => s.relay.guard.restarts >= 1,
      'a new guard',
    );
    expect(status.relay.guard.restarts).toBe(1);
    expect(status.relay.guard.pid).not.toBe(first);
    // Until the new guard has lived a while, health says what happened.
    expect(status.relay.health.state).toBe('degraded');
    expect(status.relay.health.detail).toContain('[relay_guard_lost]');
    // The loss ended the pulse and the lock moved on: 'unlocked' once the agent had the guard's
    // answer, 'locked' (a failed energising) when the loss overtook that answer (a loaded machine);
    // never left 'unlocking'.
    expect(['unlocked', 'locked']).toContain(status.lock);
    const records = await waitForRead(
      () => auditRecords(socket),
      (r) => watchdogRecords(r).length > 0,
      'the loss in the audit log',
    );
    expect(watchdogRecords(records)).toEqual([
      expect.objectContaining({ code: 'relay_guard_lost', channel: 'unlock', cause: 'lost' }),
    ]);
    // The new guard holds the lines inactive and drives them for the next grant.
    expect(
      live(readRuns(logPath))
        .map((r) => r.args)
        .sort(),
    ).toEqual([
      '--interactive --consumer=vehicle-agent --bias=pull-down --chip=gpiochip0 17=0',
      '--interactive --consumer=vehicle-agent --bias=pull-up --chip=gpiochip0 27=1',
    ]);
    await grantAndSeeLineOn(state, 1);
    expect(await agent.stop('SIGTERM')).toBe(0);
    expect(live(readRuns(logPath))).toEqual([]);
  });
});

describe('agent with GPIO relays on a frozen state disk', () => {
  let mnt: string | undefined;
  const run = (tool: string, args: string[]) => {
    const r = spawnSync(tool, args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${tool} ${args.join(' ')}: ${r.stderr || r.error?.message}`);
  };

  afterEach(() => {
    // Before anything else: a process writing to a frozen filesystem cannot even be killed.
    if (mnt === undefined) return;
    spawnSync('fsfreeze', ['-u', mnt]);
  });

  it('a held door strike ends within max-on while the agent is stuck on the frozen disk (fsfreeze)', async () => {
    for (const tool of ['mkfs.ext4', 'fsfreeze', 'mount', 'umount'])
      requireTool(tool, 'util-linux and e2fsprogs, run as root: the test freezes a loop-mounted ext4');
    const image = join(dir, 'state.img');
    mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    run('truncate', ['-s', '64M', image]);
    run('mkfs.ext4', ['-q', '-F', image]);
    run('mount', ['-o', 'loop', image, mnt]);
    try {
      const { agent, state, socket } = await startGpioAgent(
        STANDIN_V2,
        { VEHICLE_AGENT_LOCK__WIRING: 'hold', VEHICLE_AGENT_LOCK__HOLD_MS: String(HOLD_MS) },
        join(mnt, 'state'),
      );
      run('fsfreeze', ['-f', mnt]);
      let frozen = true;
      let keyGrant: ReturnType<typeof spawn> | undefined;
      try {
        // The grant energises the strike; then a keyring change comes in, whose write to the
        // frozen state disk holds up the agent (the finding of issue 13: 15 s on a strike).
        const { answer } = await grantAndSeeLineOn(state, 0);
        keyGrant = spawn(
          process.execPath,
          [
            CLI,
            ...[
              'keys',
              'grant',
              '--key',
              join(state, 'demo', 'owner.pem'),
              '--kind',
              'uid',
              '--uid',
              '0A0B0C0D',
            ],
            ...['--role', 'driver', '--insecure-uid', '--state-dir', state],
          ],
          { env: { ...process.env, ...env }, stdio: 'ignore' },
        );
        await waitFor(() => unlockPeriods()[0]?.ms !== undefined, 'the strike released');
        const [period] = unlockPeriods();
        expect(period?.ms).toBeGreaterThanOrEqual(HOLD_MS - 50);
        expect(period?.ms).toBeLessThanOrEqual(MAX_ON_MS + 100);
        run('fsfreeze', ['-u', mnt]);
        frozen = false;
        expect(await answer).toMatchObject({ granted: true });
      } finally {
        if (frozen) spawnSync('fsfreeze', ['-u', mnt]);
        if (keyGrant !== undefined) await stopProcess(keyGrant);
      }
      // With the disk back, the agent catches up: the strike locked, the release audited.
      await waitForRead(
        () => statusOf(socket),
        (s) => s.lock === 'locked',
        'the strike locked again',
      );
      expect(await agent.stop('SIGTERM')).toBe(0);
      agents.splice(agents.indexOf(agent), 1);
    } finally {
      for (const agent of agents.splice(0)) await agent.stop('SIGKILL');
      spawnSync('umount', [mnt]);
    }
  });
});
