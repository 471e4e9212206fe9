import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startAgentProcess } from '../helpers/agent-process.js';
import { stopProcess } from '../helpers/processes.js';

/**
 * Issue 13, finding 6: a stale agent.lock whose pid now belongs to another process blocked
 * start forever. The lock names its owner by pid, boot id and process start time; these tests
 * plant locks naming a live process this test started (`sleep`), which is not an agent.
 */
const bootId = () => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
const startTimeOf = (pid: number) => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '';
};

describe('instance lock: a stale agent.lock is taken over, a live one is not', () => {
  let root: string;
  let dir: string;
  let lock: string;
  let unrelated: ChildProcess;
  let pid: number;
  const sd = () => ['--state-dir', dir];

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'va-instance-lock-'));
    dir = join(root, 'state');
    lock = join(dir, 'agent.lock');
    expect(runCli(['init', '--demo', ...sd()]).code).toBe(0);
    unrelated = spawn('sleep', ['600'], { stdio: 'ignore' });
    await new Promise<void>((resolve) => unrelated.once('spawn', () => resolve()));
    pid = unrelated.pid as number;
  });

  afterAll(async () => {
    await stopProcess(unrelated);
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it('starts the agent when agent.lock names a live process that is not its owner (a reused pid)', async () => {
    // What a crashed agent of an earlier version left, its pid since taken by `sleep`.
    writeFileSync(lock, `${pid} agent\n`);
    const agent = await startAgentProcess(sd());
    const held = JSON.parse(readFileSync(lock, 'utf8')) as Record<string, unknown>;
    expect(held).toMatchObject({ pid: agent.child.pid, boot: bootId(), holder: 'agent' });
    expect(await agent.stop()).toBe(0);
    expect(existsSync(lock)).toBe(false);
  });

  it('takes over a lock naming that pid with another start time, or from an earlier boot', () => {
    const start = startTimeOf(pid);
    for (const owner of [
      { pid, boot: bootId(), start: String(Number(start) - 1), holder: 'agent' },
      { pid, boot: 'an-earlier-boot', start, holder: 'agent' },
    ]) {
      writeFileSync(lock, JSON.stringify(owner));
      const r = runCli(['keys', 'list', ...sd()]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain('owner root');
      expect(existsSync(lock)).toBe(false);
    }
  });

  it('refuses, with a coded busy naming the holder, while the named process really holds it', () => {
    writeFileSync(lock, JSON.stringify({ pid, boot: bootId(), start: startTimeOf(pid), holder: 'agent' }));
    const list = runCli(['keys', 'list', ...sd()]);
    expect(list.code).toBe(1);
    expect(list.stderr).toMatch(new RegExp(`\\[busy\\] .* is in use by agent \\(pid ${pid}\\)`));
    const start = runCli(['start', ...sd()], { VEHICLE_AGENT_LOG__FORMAT: 'json' });
    expect(start.code).toBe(1);
    expect(start.stderr + start.stdout).toMatch(/busy/);
    expect(JSON.parse(readFileSync(lock, 'utf8'))).toMatchObject({ pid }); // left alone
    rmSync(lock);
  });
});
