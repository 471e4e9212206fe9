import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { startGarbageFlood, startIdleFlood } from '../../bench/floods/control-socket.js';
import { startRequestFlood, startSlowloris } from '../../bench/floods/status-page.js';
import { controlRequest } from '../../src/cli/control-client.js';
import type { AgentProcess } from '../helpers/agent-process.js';
import { useAgentRig } from '../helpers/agent-rig.js';
import { runCliAsync } from '../helpers/cli-async.js';
import { letTimePass, waitForRead } from '../helpers/wait.js';

/**
 * Issue 12, findings 5 and 6, on the real agent (simulated readers, the real control socket and
 * status page): while the local interfaces are flooded, valid presentations are granted, the CLI
 * gets in and says what it sees, and the admin and /healthz get answers. Latency under these
 * floods is the flood bench's business (bench/flood.ts), not asserted here.
 */
const TOKEN = 'local-floods-admin-token-0123';

describe('the unlock path while the local interfaces are flooded', () => {
  const rig = useAgentRig('va-local-floods-');
  let dir: string;
  let socket: string;
  let url: string;
  let agent: AgentProcess;
  const sd = () => ['--state-dir', dir];

  beforeAll(async () => {
    dir = rig.stateDir();
    socket = join(dir, 'control.sock');
    agent = await rig.startAgent('state', {
      VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
      VEHICLE_AGENT_STATUS_PAGE__PORT: '0',
      VEHICLE_AGENT_STATUS_PAGE__ADMIN_TOKEN: TOKEN,
      VEHICLE_AGENT_LOCK__AUTO_RELOCK_MS: '0',
    });
    url = String((await agent.waitForLog((r) => r.msg === 'status page listening')).url).replace(/\/$/, '');
    await agent.waitForLog((r) => r.msg === 'PN532 ready');
  });

  async function present(name: string): Promise<Record<string, unknown>> {
    const r = await runCliAsync(['sim', 'present', name, '--json', ...sd()]);
    expect(r.stderr).toBe('');
    return JSON.parse(r.stdout) as Record<string, unknown>;
  }

  async function controlStats(): Promise<{ closed: Record<string, number>; connections: number }> {
    return (await controlRequest(socket, 'control.status')) as {
      closed: Record<string, number>;
      connections: number;
    };
  }

  it('control socket: every slot held idle and garbage pouring in; the CLI gets in and presentations are granted', async () => {
    const idle = await startIdleFlood({ socketPath: socket, connections: 16 });
    const garbage = await startGarbageFlood({ socketPath: socket, connections: 4 });
    let counts: Record<string, number>[] = [];
    try {
      // The floods are running: the agent has closed garbage connections and holds idle ones.
      await waitForRead(
        controlStats,
        (stats) => (stats.closed.garbage ?? 0) >= 4 && stats.connections >= 12,
        'garbage connections closed and idle ones held',
        { timeoutMs: 60_000, intervalMs: 10 },
      );
      // Past the eviction grace (500 ms), the idle ones are fair game: the CLI evicts them.
      await letTimePass(600, 'the idle connections outlive the eviction grace of 500 ms');
      for (let i = 0; i < 3; i++) expect(await present('driver')).toMatchObject({ granted: true });
      const tap = await runCliAsync(['sim', 'tap', 'fido-driver', '--json', ...sd()]);
      expect(tap.code, tap.stderr).toBe(0);
      expect(JSON.parse(tap.stdout)).toMatchObject({ granted: true });
      const status = await runCliAsync(['status', ...sd()]);
      expect(status.code, status.stderr).toBe(0);
      expect(status.stdout).toMatch(/^vehicle VA-\w+: lock /);
      expect(status.stdout).toMatch(/^control +\d+ connected, .*closed: .*\d+ garbage/m);
    } finally {
      counts = [await idle.stop(), await garbage.stop()];
    }
    const [idleCounts, garbageCounts] = counts;
    // Every presentation made during the floods was granted; none was denied.
    expect(await controlRequest(socket, 'status')).toMatchObject({ decisions: { granted: 4, denied: 0 } });
    expect(idleCounts?.busy).toBeGreaterThan(0); // idle ones evicted to let the CLI in
    expect(garbageCounts?.refused).toBeGreaterThan(0);
    // (The agent's close of garbage connections is its closed.garbage count, awaited above; the
    // flood sees it only a second later, as the agent holds a flooder's connection that long.)
    const metrics = await (
      await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })
    ).text();
    expect(metrics).toMatch(/^vehicle_agent_control_closed_total\{reason="garbage"\} [1-9]\d*$/m);
    expect(metrics).toMatch(/^vehicle_agent_control_closed_total\{reason="evicted"\} [1-9]\d*$/m);
  });

  it('status page: 200 slowloris connections and a request flood; the admin, /healthz and presentations get through', async () => {
    const slow = await startSlowloris({ url, connections: 200 });
    const requests = await startRequestFlood({ url, concurrency: 8 });
    const admin = { authorization: `Bearer ${TOKEN}` };
    let counts: Record<string, number>[] = [];
    try {
      await waitForRead(
        () =>
          controlRequest(socket, 'status-page.status') as Promise<{
            closed: { evicted: number };
            refused: { anonymous: number };
          }>,
        (page) => page.closed.evicted >= 150 && page.refused.anonymous > 0,
        'slowloris connections evicted and anonymous requests refused',
        { timeoutMs: 60_000, intervalMs: 10 },
      );
      expect((await fetch(`${url}/healthz`)).status).toBe(200);
      const state = await fetch(`${url}/api/state`, { headers: admin });
      expect(state.status).toBe(200);
      expect(await state.json()).toMatchObject({ lock: expect.any(String) });
      const action = await fetch(`${url}/api/sim/present`, {
        method: 'POST',
        headers: { ...admin, 'content-type': 'application/json' },
        body: JSON.stringify({ key: 'driver' }),
      });
      expect(await action.json()).toMatchObject({ ok: true, result: { granted: true } });
      expect(await present('driver')).toMatchObject({ granted: true });
    } finally {
      counts = [await slow.stop(), await requests.stop()];
    }
    const [slowCounts, requestCounts] = counts;
    expect(slowCounts?.closed).toBeGreaterThan(0);
    // Refusals are answered a second late (so a flood costs one parse a second per connection).
    expect(requestCounts?.sent).toBeGreaterThan(0);
    const status = await runCliAsync(['status', ...sd()]);
    expect(status.stdout).toMatch(/^page +\d+ connected; .*refused: .*\d+ anonymous.*closed: .*\d+ evicted/m);
  });
});
