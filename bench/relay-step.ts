import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { silentLogger } from '../src/core/logger.js';
import { GpioRelay } from '../src/relay/gpio.js';
import { GuardedRelay } from '../src/relay/guarded.js';
import type { RelayDriver } from '../src/relay/types.js';
import { STANDIN_V1, STANDIN_V2 } from '../test/helpers/gpioset-standin.js';
import { GpiosetRig, msBetween } from './line-timing.js';
import { round, summarise } from './stats.js';

/**
 * The relay step: from a relay command (set() called) to the line changing, as the stand-in
 * gpioset records it from outside, switching on (`on`: what a grant waits for) and off, for each
 * way of holding a line, in one run so the ratios hold on a noisy machine:
 *   spawn_v1      gpioset 1.x: every change ends the holder and spawns another (before)
 *   spawn_v2      gpioset 2.x without its interactive mode: the same, through a guard script
 *   interactive   gpioset 2.x interactive: one holder per line, a change is a `set` line (after)
 * each through the relay guard process (as the agent runs it), and the interactive one also with
 * the driver in this process, for the cost of the guard's hop. Also the guard's start time and
 * memory. The stand-in is a bash script where gpioset is C: a spawn costs more here than on a Pi
 * relative to a line written to a pipe, but both are dominated by process start.
 * Figures only; no assertions.
 */

const LINE = 17;

interface Variant {
  readonly name: string;
  readonly standIn: string;
  readonly interactive: boolean;
  readonly guarded: boolean;
}

const VARIANTS: readonly Variant[] = [
  { name: 'spawn_v1', standIn: STANDIN_V1, interactive: false, guarded: true },
  { name: 'spawn_v2', standIn: STANDIN_V2, interactive: false, guarded: true },
  { name: 'interactive', standIn: STANDIN_V2, interactive: true, guarded: true },
  { name: 'interactive_in_process', standIn: STANDIN_V2, interactive: true, guarded: false },
];

/** Resident and private memory of a process, MB (private: what it does not share with the agent). */
function memoryOf(pid: number): { rssMb: number; privateMb: number } {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(rollup)?.[1] ?? Number.NaN);
  return {
    rssMb: round(kb('Rss') / 1024, 1),
    privateMb: round((kb('Private_Clean') + kb('Private_Dirty')) / 1024, 1),
  };
}

export async function benchRelayStep(
  options: { changes?: number; warmup?: number } = {},
): Promise<Record<string, number>> {
  const changes = options.changes ?? 200;
  const warmup = options.warmup ?? 10;
  const figures: Record<string, number> = {};
  for (const variant of VARIANTS) {
    const rig = new GpiosetRig(variant.standIn);
    const channels = {
      unlock: { chip: 'gpiochip0', line: LINE, activeLow: false, bias: 'pull-down' as const },
    };
    const driver: RelayDriver & { guardStatus?: () => { pid: number | undefined } } = variant.guarded
      ? new GuardedRelay({
          spec: {
            maxOnMs: 60_000,
            logLevel: 'error',
            driver: {
              kind: 'gpio',
              gpiosetPath: 'gpioset',
              consumer: 'vehicle-agent',
              interactive: variant.interactive,
              channels,
            },
          },
          logger: silentLogger,
          env: rig.env,
        })
      : new GpioRelay({ channels, logger: silentLogger, env: rig.env, interactive: variant.interactive });
    try {
      const startedAt = process.hrtime.bigint();
      await driver.init();
      const startMs = msBetween(startedAt, process.hrtime.bigint());
      const steps: { on: number[]; off: number[] } = { on: [], off: [] };
      for (let i = 0; i < warmup + changes; i++) {
        const energised = i % 2 === 0;
        const from = rig.changeCount(LINE);
        const at = process.hrtime.bigint();
        await driver.set('unlock', energised, { releaseAfterMs: 50_000 });
        const lineAt = await rig.waitChange(LINE, from, energised);
        if (i >= warmup) steps[energised ? 'on' : 'off'].push(msBetween(at, lineAt));
        await new Promise((resolve) => setTimeout(resolve, 3));
      }
      for (const way of ['on', 'off'] as const) {
        const s = summarise(steps[way]);
        figures[`relay_step_${variant.name}_${way}_p50_ms`] = round(s.p50, 2);
        figures[`relay_step_${variant.name}_${way}_p99_ms`] = round(s.p99, 2);
      }
      const guardPid = driver.guardStatus?.().pid;
      if (variant.name === 'interactive' && guardPid !== undefined) {
        const memory = memoryOf(guardPid);
        figures.guard_start_ms = round(startMs, 1);
        figures.guard_rss_mb = memory.rssMb;
        figures.guard_private_mb = memory.privateMb;
      }
    } finally {
      await driver.close();
      rig.close();
    }
  }
  const ratio = (a: string, b: string) => round((figures[a] ?? Number.NaN) / (figures[b] ?? Number.NaN), 1);
  for (const p of ['p50', 'p99'])
    figures[`relay_step_on_spawn_v1_over_interactive_${p}`] = ratio(
      `relay_step_spawn_v1_on_${p}_ms`,
      `relay_step_interactive_on_${p}_ms`,
    );
  return figures;
}

// `node dist/bench/relay-step.js [--json]`: the suite alone.
if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const figures = await benchRelayStep();
  if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify({ relay: figures })}\n`);
  else
    for (const [k, v] of Object.entries(figures))
      process.stdout.write(`  ${k.padEnd(44)} ${String(v).padStart(10)}\n`);
}
