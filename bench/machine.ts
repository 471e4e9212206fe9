import { readdir, readFile } from 'node:fs/promises';
import os from 'node:os';

/** What the figures were measured on: they mean little without it. */
export interface Machine {
  readonly host: string;
  readonly cpuModel: string;
  readonly cores: number;
  readonly ramMb: number;
  readonly node: string;
  readonly os: string;
  readonly loadAvgStart: readonly number[];
  loadAvgEnd?: readonly number[];
  readonly busyAtStart?: Busy;
  busyAtEnd?: Busy;
}

/** How busy the machine was over a short window, apart from this process (Linux /proc only). */
export interface Busy {
  readonly windowMs: number;
  /** Share of all cores busy over the window, percent. */
  readonly cpuBusyPercent: number;
  /** Other processes that used at least 5 % of one core over the window. */
  readonly busyProcesses: readonly { pid: number; command: string; cpuPercent: number }[];
}

function round1(value: number): number {
  return Math.round(value * 10) / 10;
}

export function loadAverage(): number[] {
  return os.loadavg().map(round1);
}

export async function describeMachine(sampleMs: number): Promise<Machine> {
  const cpus = os.cpus();
  const busy = await sampleBusy(sampleMs);
  return {
    host: os.hostname(),
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    cores: cpus.length,
    ramMb: Math.round(os.totalmem() / 1024 / 1024),
    node: process.version,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    loadAvgStart: loadAverage(),
    ...(busy ? { busyAtStart: busy } : {}),
  };
}

async function cpuTimes(): Promise<{ busy: number; total: number } | undefined> {
  try {
    const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0] ?? '';
    const fields = line.trim().split(/\s+/).slice(1).map(Number);
    const total = fields.reduce((a, b) => a + b, 0);
    const idle = (fields[3] ?? 0) + (fields[4] ?? 0); // idle + iowait
    return { busy: total - idle, total };
  } catch {
    return undefined;
  }
}

/** utime + stime in clock ticks of every process we may read, with its command name. */
async function processTicks(): Promise<Map<number, { ticks: number; command: string }>> {
  const out = new Map<number, { ticks: number; command: string }>();
  let entries: string[];
  try {
    entries = await readdir('/proc');
  } catch {
    return out;
  }
  await Promise.all(
    entries
      .filter((e) => /^\d+$/.test(e) && Number(e) !== process.pid)
      .map(async (e) => {
        try {
          const stat = await readFile(`/proc/${e}/stat`, 'utf8');
          // pid (comm) state ...: comm may hold spaces and parentheses, so split at the last ')'.
          const close = stat.lastIndexOf(')');
          const command = stat.slice(stat.indexOf('(') + 1, close);
          const rest = stat
            .slice(close + 2)
            .split(' ')
            .map(Number);
          out.set(Number(e), { ticks: (rest[11] ?? 0) + (rest[12] ?? 0), command });
        } catch {
          // gone, or not ours to read
        }
      }),
  );
  return out;
}

/** Samples CPU use over `windowMs`; undefined where /proc is not there. */
export async function sampleBusy(windowMs: number): Promise<Busy | undefined> {
  const cpu0 = await cpuTimes();
  if (!cpu0) return undefined;
  const procs0 = await processTicks();
  await new Promise((resolve) => setTimeout(resolve, windowMs));
  const cpu1 = await cpuTimes();
  const procs1 = await processTicks();
  if (!cpu1) return undefined;
  const ticksPerSecond = 100; // USER_HZ on Linux
  const busyProcesses = [...procs1]
    .map(([pid, p]) => ({
      pid,
      command: p.command,
      cpuPercent: round1(
        ((p.ticks - (procs0.get(pid)?.ticks ?? p.ticks)) / ticksPerSecond / (windowMs / 1000)) * 100,
      ),
    }))
    .filter((p) => p.cpuPercent >= 5)
    .sort((a, b) => b.cpuPercent - a.cpuPercent)
    .slice(0, 8);
  const total = cpu1.total - cpu0.total;
  return {
    windowMs,
    cpuBusyPercent: total > 0 ? round1(((cpu1.busy - cpu0.busy) / total) * 100) : 0,
    busyProcesses,
  };
}
