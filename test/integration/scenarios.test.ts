import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../src/scenario/managed-broker.js';
import { CLI, type CliResult } from '../helpers/agent-process.js';
import { useAgentRig } from '../helpers/agent-rig.js';
import { agentCloudEnv } from '../helpers/cloud-side.js';

/**
 * Every shipped scenario played by the real CLI against a real agent on simulated hardware, with
 * the Mosquitto the runner starts for the outage scenarios; and the exit codes a rig's CI reads.
 */
const SCENARIOS = fileURLToPath(new URL('../../scenarios/', import.meta.url));
const FIXTURES = fileURLToPath(new URL('../fixtures/scenarios/', import.meta.url));
/** Played last: its clock jump stays in the agent's state folder (the trusted clock never goes back). */
const LAST = 'guest-expiry.yaml';
const shipped = readdirSync(SCENARIOS)
  .filter((f) => f.endsWith('.yaml'))
  .sort((a, b) => Number(a === LAST) - Number(b === LAST) || a.localeCompare(b));

function runScenarioCli(args: readonly string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'scenario', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => {
      stdout += c;
    });
    child.stderr.setEncoding('utf8').on('data', (c: string) => {
      stderr += c;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 170_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('vehicle-agent scenario run', () => {
  const rig = useAgentRig('va-scenarios-');
  let port = 0;

  beforeAll(async () => {
    port = await freePort();
    // The agent looks for the broker the runner starts on this port (plain MQTT on loopback).
    await rig.startAgent('state', agentCloudEnv(`mqtt://127.0.0.1:${port}`, undefined, undefined));
  }, 60_000);

  const run = (file: string) => runScenarioCli(['run', file, ...rig.sd(), '--broker-port', String(port)]);

  it('ships the three outages of the README story', () => {
    expect(shipped).toEqual(
      expect.arrayContaining(['cloud-down.yaml', 'network-down.yaml', 'broker-hung.yaml']),
    );
  });

  for (const file of shipped) {
    it(`${file} passes`, { timeout: 180_000 }, async () => {
      const r = await run(`${SCENARIOS}${file}`);
      expect(r.stdout, r.stderr).toMatch(/^PASS: \d+ passed, 0 failed$/m);
      expect(r.stdout).not.toMatch(/^FAIL/m);
      expect(r.code).toBe(0);
    });
  }

  it('a scenario whose expectation is wrong fails with exit 1 and names the step', {
    timeout: 60_000,
  }, async () => {
    const r = await run(`${FIXTURES}wrong-expectation.yaml`);
    expect(r.stdout).toMatch(/^pass +1 +present driver: granted \(driver\)/m);
    expect(r.stdout).toMatch(/^FAIL +2 +an expired guest expected to get in: denied: expired/m);
    expect(r.stdout).toMatch(/expected granted, got denied: expired/);
    expect(r.stdout).toMatch(/^FAIL: 1 passed, 1 failed$/m);
    expect(r.code).toBe(1);
  });

  it('a scenario file that is not valid exits 2 with a coded error and plays nothing', async () => {
    const r = await run(`${FIXTURES}not-a-scenario.yaml`);
    expect(r.stderr).toMatch(/\[scenario_invalid\] .*step 1 \(line 3\): expect has no field "grantd"/);
    expect(r.stdout).toBe('');
    expect(r.code).toBe(2);
    const missing = await run(`${FIXTURES}no-such-file.yaml`);
    expect(missing.stderr).toMatch(/\[scenario_invalid\] .*cannot read/);
    expect(missing.code).toBe(2);
  });

  it('a machine-readable report with --json', { timeout: 60_000 }, async () => {
    const r = await runScenarioCli(['run', `${FIXTURES}wrong-expectation.yaml`, ...rig.sd(), '--json']);
    const report = JSON.parse(r.stdout) as { passed: number; failed: number; steps: { passed: boolean }[] };
    expect(report).toMatchObject({ passed: 1, failed: 1 });
    expect(report.steps.map((s) => s.passed)).toEqual([true, false]);
    expect(r.code).toBe(1);
  });
});
