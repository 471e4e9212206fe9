import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import { live, readRuns, STANDIN_V1 } from '../helpers/gpioset-standin.js';
import { requireTool } from '../helpers/processes.js';

/**
 * The real agent driving GPIO relays through a stand-in gpioset (first on PATH) that records what
 * it was asked to hold: lines are held inactive from start, energised for a grant, and released to
 * inactive on SIGTERM and on an uncaught error.
 */
let dir: string;
let logPath: string;
let env: NodeJS.ProcessEnv;

const holding = () =>
  live(readRuns(logPath))
    .map((r) => r.args)
    .sort();

async function waitUntil(condition: () => boolean, what: string, timeoutMs = 8000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}; holding ${JSON.stringify(holding())}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

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

afterEach(() => {
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
      await waitUntil(() => JSON.stringify(holding()) === JSON.stringify(IDLE), 'idle holders');
      const r = runCliJson(['sim', 'present', 'driver', '--state-dir', state], env);
      expect(r.value).toMatchObject({ granted: true });
      await waitUntil(
        () => JSON.stringify(holding()) === JSON.stringify(UNLOCKING),
        'the unlock line energised',
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
    await waitUntil(
      () => JSON.stringify(holding()) === JSON.stringify(UNLOCKING),
      'the unlock line energised',
    );
    const exited = new Promise<number | null>((resolve) => agent.child.once('exit', (code) => resolve(code)));
    // an error nothing catches, thrown inside the agent (a test-only hook, on with VEHICLE_AGENT_TEST_HOOKS=1)
    const { controlRequest } = await import('../../src/cli/control-client.js');
    await controlRequest(join(state, 'control.sock'), 'test.crash', {}).catch(() => {});
    expect(await exited).toBe(1);
    expect(agent.stderr()).toContain('fatal');
    // holders exit on end of file once the agent is gone; give the stand-in a moment to log it
    await waitUntil(() => holding().length === 0, 'every holder gone');
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
