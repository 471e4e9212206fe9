import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type AgentProcess, startAgentProcess } from '../helpers/agent-process.js';

/**
 * `ready` names every part and its state: a reader that is down at start does not hold the agent
 * back (the other readers must work), but the owner is told, with a warning, which part is not up.
 * A reader whose driver still loads says `starting`, and a later line says how its start went.
 */
describe('ready says which parts are up', () => {
  let dir: string;
  let agent: AgentProcess | undefined;
  const isStartedLine = (r: Record<string, unknown>) =>
    typeof r.msg === 'string' && r.msg.startsWith('parts started');

  afterEach(async () => {
    if (agent) await agent.stop('SIGKILL');
    agent = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  it('all up: every part ok or off (or starting, then ok), and no warning', async () => {
    dir = mkdtempSync(join(tmpdir(), 'va-ready-'));
    agent = await startAgentProcess(['--state-dir', join(dir, 'state')], {
      VEHICLE_AGENT_BLE__ENABLED: 'false',
    });
    const ready = agent.logs.find((r) => r.msg === 'ready');
    const readers = (ready?.readers ?? []) as string[];
    expect(readers.length).toBeGreaterThan(0);
    const parts = (ready?.parts ?? {}) as Record<string, string>;
    const expected: Record<string, string> = { relay: 'ok', state: 'ok', cloud: 'off', 'status page': 'off' };
    // The in-agent PN532 emulator may still be loading at `ready`: it says so, and is no fault.
    for (const reader of readers) expected[reader] = parts[reader] === 'starting' ? 'starting' : 'ok';
    expect(parts).toEqual(expected);
    if (Object.values(parts).includes('starting')) {
      const started = await agent.waitForLog(isStartedLine);
      expect(started.level).toBe(30);
      const after = Object.values(started.parts as Record<string, string>);
      expect(after.every((v) => v === 'ok' || v === 'off')).toBe(true);
    }
    expect(agent.logs.some((r) => r.level === 40 && Array.isArray(r.notUp))).toBe(false);
  });

  it('a PN532 that is not there: ready, and a warning naming the NFC reader as not up', async () => {
    dir = mkdtempSync(join(tmpdir(), 'va-ready-'));
    agent = await startAgentProcess(['--state-dir', join(dir, 'state')], {
      VEHICLE_AGENT_BLE__ENABLED: 'false',
      VEHICLE_AGENT_NFC__DRIVER: 'pn532',
      VEHICLE_AGENT_NFC__PATH: join(dir, 'no-such-port'),
    });
    const ready = agent.logs.find((r) => r.msg === 'ready');
    const parts = (ready?.parts ?? {}) as Record<string, string>;
    // The PN532 reader is the one that is not the in-process simulated reader.
    const nfc = ((ready?.readers ?? []) as string[]).find((id) => id !== 'sim') ?? 'none';
    expect(parts[nfc]).toMatch(/^(starting|down: |degraded: )/);
    expect(parts.relay).toBe('ok');
    expect(parts.sim).toBe('ok');
    // Not up at `ready`, or starting then and not up after its first attempt: a warning either way.
    const warning = await agent.waitForLog((r) => r.level === 40 && Array.isArray(r.notUp));
    expect(warning.notUp).toEqual([nfc]);
    expect(warning.msg).toMatch(
      new RegExp(
        `^(ready|parts started), but ${nfc} not up: relay ok, .*${nfc} (down|degraded) \\(cannot open `,
      ),
    );
  });
});
