import { mkdtempSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { controlRequest } from '../../src/cli/control-client.js';
import { type AgentProcess, startAgentProcess } from '../helpers/agent-process.js';
import { type NotifyReceiver, startNotifyReceiver } from '../helpers/notify-receiver.js';

/**
 * The real agent process under a stand-in for systemd's notify socket (socat receiving the
 * datagrams): READY=1 once readers and relays are up, WATCHDOG=1 every WatchdogSec/2 while
 * healthy and never while not, STOPPING=1 on SIGTERM. The simulated BLE reader runs a
 * dbus-daemon child that speaks sd_notify itself: it must not be heard.
 */
describe('sd_notify with the real agent', () => {
  let dir: string;
  let stateDir: string;
  let receiver: NotifyReceiver;
  let agent: AgentProcess;
  const isPing = (l: string) => l === 'WATCHDOG=1';

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'va-notify-'));
    stateDir = join(dir, 'state');
    receiver = await startNotifyReceiver(join(dir, 'notify.sock'));
    agent = await startAgentProcess(['--state-dir', stateDir], {
      NOTIFY_SOCKET: receiver.path,
      // WatchdogSec=1s: a ping every 500 ms; a stall over 250 ms counts.
      WATCHDOG_USEC: '1000000',
      VEHICLE_AGENT_TEST_HOOKS: '1',
    });
  });

  afterAll(async () => {
    if (agent) await agent.stop('SIGKILL');
    await receiver?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('sends READY=1 first, once, after the readers and relays are initialised', async () => {
    const ready = await receiver.waitFor((l) => l === 'READY=1');
    expect(ready).toBe(0); // nothing before it: no child spoke for the unit
    const status = receiver.lines[1] ?? '';
    expect(status).toMatch(/^STATUS=ready(, but .+ not up)?: relay ok, .*; lock locked$/);
    // Every reader had started (and reported its health) when READY went out.
    const readers = (agent.logs.find((r) => r.msg === 'ready')?.readers as string[] | undefined) ?? [];
    expect(readers).toEqual(expect.arrayContaining(['sim', 'ble0']));
    for (const reader of readers) expect(status).toMatch(new RegExp(`${reader} (ok|starting|degraded|down)`));
  });

  it('pings WATCHDOG=1 while healthy', async () => {
    const from = receiver.lines.length;
    const first = await receiver.waitFor(isPing, from);
    await receiver.waitFor(isPing, first + 1);
    await receiver.waitFor(isPing, receiver.lines.length);
  });

  it('keeps pinging while the state directory cannot be written (degraded: a restart cannot cure it), and says why', async () => {
    const from = receiver.lines.length;
    const moved = `${stateDir}.moved`;
    renameSync(stateDir, moved);
    let degraded: number;
    let pingsMeanwhile: number;
    try {
      degraded = await receiver.waitFor((l) => l.startsWith('STATUS=degraded'), from);
      // Several ping periods with the directory gone: the watchdog is still fed.
      const first = await receiver.waitFor(isPing, degraded);
      await receiver.waitFor(isPing, first + 1);
      pingsMeanwhile = receiver.lines.slice(degraded).filter(isPing).length;
    } finally {
      renameSync(moved, stateDir);
    }
    expect(receiver.lines[degraded]).toBe('STATUS=degraded: state: state directory not writable: ENOENT');
    expect(pingsMeanwhile).toBeGreaterThanOrEqual(2);
    expect(receiver.lines.slice(from)).not.toContainEqual(expect.stringMatching(/^STATUS=unhealthy/));
    await receiver.waitFor((l) => l === 'STATUS=healthy', degraded);
  });

  it('stops pinging after the event loop stalled, then resumes', async () => {
    const from = receiver.lines.length;
    expect(await controlRequest(join(stateDir, 'control.sock'), 'test.stall', { ms: 1500 }, 10_000)).toEqual({
      stalledMs: 1500,
    });
    const unhealthy = await receiver.waitFor((l) => l.startsWith('STATUS=unhealthy'), from);
    expect(receiver.lines[unhealthy]).toMatch(
      /^STATUS=unhealthy: eventLoop: event loop stalled \d+ ms \(limit 250 ms\)$/,
    );
    const healthyAgain = await receiver.waitFor((l) => l === 'STATUS=healthy', unhealthy);
    expect(receiver.lines.slice(unhealthy, healthyAgain).filter(isPing)).toEqual([]);
    await receiver.waitFor(isPing, healthyAgain);
  });

  it('sends STOPPING=1 once on SIGTERM, pings no more, and exits cleanly', async () => {
    const code = await agent.stop('SIGTERM');
    expect(code).toBe(0);
    const stopping = await receiver.waitFor((l) => l === 'STOPPING=1');
    expect(receiver.lines[stopping + 1]).toBe('STATUS=stopping: relays de-energising');
    expect(receiver.lines.filter((l) => l === 'STOPPING=1')).toHaveLength(1);
    expect(receiver.lines.filter((l) => l === 'READY=1')).toHaveLength(1);
    expect(receiver.lines.slice(stopping).filter(isPing)).toEqual([]);
    const stopped = agent.logs.find((r) => r.msg === 'stopped');
    expect(stopped?.relays).toBe('de-energised');
  });
});
