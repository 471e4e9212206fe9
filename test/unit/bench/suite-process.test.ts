import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runSuiteProcess } from '../../../bench/suite-process.js';

/**
 * The guard a bench suite runs under (bench/scale.ts hung for ever on a deadlock inside Node):
 * past its deadline the suite's process, every process it announced and its folders are gone, and
 * the error names the last step. Real processes; the stand-in suites are small scripts.
 */

/** Gone, or a zombie waiting for its (dead) parent's reaper: either way it runs nothing. */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z /.test(stat);
  } catch {
    return false;
  }
}

describe('runSuiteProcess', () => {
  let dir: string;
  const started: number[] = [];
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'va-suite-process-'));
  });
  afterEach(async () => {
    // Whatever a failed assertion left, by PID.
    for (const pid of started.splice(0)) if (running(pid)) process.kill(pid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  async function script(name: string, body: string): Promise<string> {
    const file = join(dir, name);
    await writeFile(file, body);
    return file;
  }

  it('ends a suite whose main thread is blocked for ever, the process it started, and removes its folder', async () => {
    const work = join(dir, 'work');
    const file = await script(
      'blocked.mjs',
      `import { spawn } from 'node:child_process';
       import { mkdirSync } from 'node:fs';
       mkdirSync(${JSON.stringify(work)});
       process.stderr.write('t: tmpdir ${work}\\n');
       const helper = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
       process.stderr.write('t: helper pid ' + helper.pid + '\\n');
       process.stderr.write('t: self pid ' + process.pid + '\\n');
       process.stderr.write('t: blocked\\n');
       // A wait no timer can end, like a deadlock on the main thread.
       setTimeout(() => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0), 50);`,
    );
    const logged: string[] = [];
    const run = runSuiteProcess({
      script: file,
      tag: 't',
      env: process.env,
      deadlineMs: 3000,
      log: (t) => logged.push(t),
    });
    await expect(run).rejects.toThrow(
      't did not finish in 3 s (last step: blocked); it and the processes it started were killed',
    );
    const pids =
      logged
        .join('')
        .match(/pid (\d+)/g)
        ?.map((m) => Number(m.slice(4))) ?? [];
    started.push(...pids);
    expect(pids).toHaveLength(2);
    for (const pid of pids) expect(running(pid)).toBe(false);
    expect(existsSync(work)).toBe(false);
    expect(logged.join('')).toContain('  t: blocked\n');
  });

  it('gives the figures a suite printed', async () => {
    const file = await script(
      'ok.mjs',
      `process.stdout.write(JSON.stringify({ a_ms: 1.5, b: null }) + '\\n');`,
    );
    const figures = await runSuiteProcess({
      script: file,
      tag: 't',
      env: process.env,
      deadlineMs: 30_000,
      log: () => {},
    });
    expect(figures.a_ms).toBe(1.5);
    expect(figures.b).toBeNaN();
  });

  it('fails with the message of a suite that failed', async () => {
    const file = await script(
      'fails.mjs',
      `process.stderr.write('t: step one\\nt: failed: import refused\\n'); process.exitCode = 1;`,
    );
    await expect(
      runSuiteProcess({ script: file, tag: 't', env: process.env, deadlineMs: 30_000, log: () => {} }),
    ).rejects.toThrow('t failed (1): import refused');
  });
});
