import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { requireTool, stopProcess } from './processes.js';
import { waitFor } from './wait.js';

/**
 * A stand-in for systemd's notify socket: `socat -u UNIX-RECV:<path> -` receives the datagrams
 * and prints them. Every message the agent sends is newline-terminated, so the printed stream
 * splits back into assignments in arrival order (systemd would split each datagram the same way).
 */
export interface NotifyReceiver {
  readonly path: string;
  /** Every assignment received so far, in order. */
  readonly lines: string[];
  /** Resolves with the index of the next line (at or after `from`) that matches. */
  waitFor(match: (line: string) => boolean, from?: number, timeoutMs?: number): Promise<number>;
  stop(): Promise<void>;
}

export async function startNotifyReceiver(path: string): Promise<NotifyReceiver> {
  const socat = requireTool('socat', 'apt-get install socat');
  const child: ChildProcess = spawn(socat, ['-u', `UNIX-RECV:${path}`, '-'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const waiters = new Set<() => void>();
  let pending = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    pending += chunk;
    let nl = pending.indexOf('\n');
    while (nl >= 0) {
      lines.push(pending.slice(0, nl));
      pending = pending.slice(nl + 1);
      nl = pending.indexOf('\n');
    }
    for (const w of [...waiters]) w();
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  try {
    await waitFor(() => existsSync(path), `socat to create the notify socket ${path}`, {
      timeoutMs: 5000,
      intervalMs: 10,
      detail: () => stderr,
    });
  } catch (error) {
    await stopProcess(child);
    throw error;
  }
  return {
    path,
    lines,
    waitFor: (match, from = 0, timeoutMs = 15_000) =>
      new Promise((resolve, reject) => {
        let timer: NodeJS.Timeout | undefined;
        const check = () => {
          const index = lines.findIndex((l, i) => i >= from && match(l));
          if (index < 0) return false;
          waiters.delete(check);
          clearTimeout(timer);
          resolve(index);
          return true;
        };
        timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no matching notification; got ${JSON.stringify(lines.slice(from))} ${stderr}`));
        }, timeoutMs);
        if (!check()) waiters.add(check);
      }),
    stop: () => stopProcess(child),
  };
}
