import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type AgentProcess, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import { waitFor } from '../helpers/wait.js';

/**
 * The agent's stdout is its log. When whatever reads it goes away (`npm start | head`, a log
 * shipper that died), writes fail with EPIPE: the agent must go on opening the door.
 */
describe('the log reader goes away', () => {
  let dir: string;
  let agent: AgentProcess | undefined;

  afterAll(async () => {
    if (agent) await agent.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps granting after its stdout pipe is closed, and says once on stderr that logging stopped', async () => {
    dir = mkdtempSync(join(tmpdir(), 'va-logpipe-'));
    const state = join(dir, 'state');
    agent = await startAgentProcess(['--state-dir', state], { VEHICLE_AGENT_BLE__ENABLED: 'false' });
    const running = agent;
    running.child.stdout?.destroy();
    for (let i = 0; i < 3; i++) {
      const r = runCliJson(['sim', 'present', 'driver', '--state-dir', state]);
      expect(r.value).toMatchObject({ granted: true });
    }
    await waitFor(() => running.stderr().includes('the log output failed [EPIPE]'), 'the EPIPE notice');
    expect(running.child.exitCode).toBeNull();
    expect(running.stderr().match(/the log output failed/g)).toHaveLength(1);
    expect(running.stderr()).not.toMatch(/fatal/);
  });
});
