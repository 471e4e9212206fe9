import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The command's entry as installed (package.json bin): it sizes libuv's pool, then loads main.js. */
export const CLI = fileURLToPath(new URL('../../dist/src/cli/launch.cjs', import.meta.url));

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the real CLI from dist/ to completion. */
export function runCli(args: readonly string[], env: NodeJS.ProcessEnv = {}): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 30_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

export function runCliJson<T = Record<string, unknown>>(
  args: readonly string[],
  env: NodeJS.ProcessEnv = {},
): { code: number | null; value: T; stderr: string } {
  const r = runCli([...args, '--json'], env);
  let value: T;
  try {
    value = JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`not JSON from ${args.join(' ')} (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
  }
  return { code: r.code, value, stderr: r.stderr };
}

export interface AgentProcess {
  readonly child: ChildProcess;
  /** Every JSON log record so far. */
  readonly logs: Record<string, unknown>[];
  readonly stderr: () => string;
  waitForLog(
    match: (r: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
  /** Sends a signal and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Starts `vehicle-agent start` from dist/ with JSON logs and waits for `ready`. */
export async function startAgentProcess(
  args: readonly string[],
  env: NodeJS.ProcessEnv = {},
  waitReady = true,
): Promise<AgentProcess> {
  const child = spawn(process.execPath, [CLI, 'start', ...args], {
    env: { ...process.env, VEHICLE_AGENT_LOG__FORMAT: 'json', VEHICLE_AGENT_LOG__LEVEL: 'debug', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  const waiters: {
    match: (r: Record<string, unknown>) => boolean;
    resolve: (r: Record<string, unknown>) => void;
  }[] = [];
  let pending = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    pending += chunk;
    let nl = pending.indexOf('\n');
    while (nl >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      nl = pending.indexOf('\n');
      try {
        const record = JSON.parse(line) as Record<string, unknown>;
        logs.push(record);
        for (const w of [...waiters]) {
          if (w.match(record)) {
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve(record);
          }
        }
      } catch {
        err += `non-JSON stdout: ${line}\n`;
      }
    }
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    err += chunk;
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const handle: AgentProcess = {
    child,
    logs,
    stderr: () => err,
    waitForLog: (match, timeoutMs = 15_000) => {
      const found = logs.find(match);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () =>
            reject(
              new Error(
                `timed out after ${timeoutMs} ms waiting for the log line ${describeMatch(match)}; stderr: ${err}`,
              ),
            ),
          timeoutMs,
        );
        const w = {
          match,
          resolve: (r: Record<string, unknown>) => {
            clearTimeout(timer);
            resolve(r);
          },
        };
        waiters.push(w);
        void exited.then((code) => {
          if (waiters.includes(w)) {
            clearTimeout(timer);
            reject(
              new Error(`agent exited (${code}) before the log line ${describeMatch(match)}; stderr: ${err}`),
            );
          }
        });
      });
    },
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  if (waitReady) {
    try {
      await handle.waitForLog((r) => r.msg === 'ready');
    } catch (e) {
      await handle.stop('SIGKILL');
      throw e;
    }
  }
  return handle;
}

/** The awaited line's matcher as source text, cut short, so a timeout says what it waited for. */
function describeMatch(match: (line: Record<string, unknown>) => boolean): string {
  const source = match.toString().replace(/\s+/g, ' ');
  return source.length > 160 ? `${source.slice(0, 157)}...` : source;
}
