import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';

/**
 * Runs a suite in a process of its own with a deadline, for a suite whose hang would otherwise
 * hang the whole run: a deadlock on the main thread (as bench/scale.ts once had, inside Node)
 * cannot be timed out from the same thread. The suite's script prints `<tag>: ` progress lines on
 * stderr (`<tag>: pid N …` for each process it starts, `<tag>: tmpdir D` for each folder it makes)
 * and its figures as a JSON line on stdout. Past the deadline the script is killed, then every
 * process it announced that still runs the same command line, and its folders are removed; the
 * error names the last step.
 */
export async function runSuiteProcess(options: {
  readonly script: string;
  readonly tag: string;
  readonly env: NodeJS.ProcessEnv;
  readonly deadlineMs: number;
  readonly log: (text: string) => void;
}): Promise<Record<string, number>> {
  const { tag } = options;
  const child = spawn(process.execPath, [options.script], {
    env: options.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const announced = new Map<number, string>();
  const dirs: string[] = [];
  let lastStep = 'starting';
  let failure = '';
  let stdout = '';
  let partial = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    const lines = (partial + d).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      options.log(`  ${line}\n`);
      if (!line.startsWith(`${tag}: `)) continue;
      const step = line.slice(tag.length + 2);
      const pid = /\bpid (\d+)\b/.exec(step)?.[1];
      if (pid !== undefined && !announced.has(Number(pid)))
        announced.set(Number(pid), commandLine(Number(pid)));
      if (step.startsWith('tmpdir ')) dirs.push(step.slice('tmpdir '.length));
      else if (step.startsWith('failed: ')) failure = step.slice('failed: '.length);
      else lastStep = step;
    }
  });
  const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal })),
  );
  let timer: NodeJS.Timeout | undefined;
  const overran = new Promise<'overran'>((resolve) => {
    timer = setTimeout(() => resolve('overran'), options.deadlineMs);
  });
  const outcome = await Promise.race([closed, overran]);
  clearTimeout(timer);
  if (outcome === 'overran') {
    child.kill('SIGKILL');
    await closed;
    for (const [pid, cmdline] of announced) {
      // Only a process still running what was announced: a PID may have been reused since.
      if (cmdline !== '' && commandLine(pid) === cmdline) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
    }
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
    throw new Error(
      `${tag} did not finish in ${options.deadlineMs / 1000} s (last step: ${lastStep}); it and the processes it started were killed`,
    );
  }
  if (outcome.code !== 0)
    throw new Error(
      `${tag} failed (${outcome.code ?? outcome.signal}): ${failure || `last step: ${lastStep}`}`,
    );
  const line = stdout.trim().split('\n').pop() ?? '';
  const figures = JSON.parse(line) as Record<string, unknown>;
  return Object.fromEntries(
    Object.entries(figures).map(([k, v]) => [k, typeof v === 'number' ? v : Number.NaN]),
  );
}

function commandLine(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return '';
  }
}
