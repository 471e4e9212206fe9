import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { benchCore } from './core.js';
import { describeMachine, loadAverage, sampleBusy } from './machine.js';
import {
  type BenchReport,
  buildReport,
  nextBaseline,
  parseBaseline,
  renderMarkdown,
  type SuiteResult,
} from './report.js';
import { scaleSizes } from './scale.js';
import { runSuiteProcess } from './suite-process.js';

/**
 * `npm run bench [-- --only=core,store,...] [--quick] [--json] [--update-baseline]`: runs the
 * suites and writes one report, Markdown and JSON, to bench/reports/ (`<date>-<host>.*` and
 * `latest.*`; `--out=DIR` elsewhere), each figure beside its target and bench/baseline.json's
 * figure (`--baseline=FILE`). `--update-baseline` writes this run's figures into the baseline.
 * Figures only: never asserted, and the exit code says only whether every suite ran.
 * A suite is one line below: an async function of the run's options returning named numbers
 * (the name's suffix gives the unit: _ms, _us, _s, _mb, _per_s, _ratio; else a count).
 */
export interface SuiteOptions {
  /** A short run (for the harness test): suites that honour it measure for milliseconds. */
  readonly quick: boolean;
  /** The suite was named in --only (a suite may do more when asked for by name). */
  readonly named: boolean;
  /** Progress lines for the console (a suite in its own process passes its own on). */
  readonly log: (text: string) => void;
}
type Suite = (options: SuiteOptions) => Promise<Record<string, number>>;

const SUITES: Record<string, Suite> = {
  crypto: (o) => import('./crypto.js').then((m) => m.benchCrypto(o)),
  core: () => benchCore(),
  store: () => import('./store.js').then((m) => m.benchStore()),
  nfc: () => import('./nfc.js').then((m) => m.benchNfc()),
  // The central mode (the vehicle scans for keys), then mode P (the vehicle as peripheral).
  ble: async () => ({
    ...(await import('./ble.js').then((m) => m.benchBle())),
    ...(await import('./ble-peripheral.js').then((m) => m.benchBlePeripheral())),
  }),
  cloud: () => import('./cloud.js').then((m) => m.benchCloud()),
  'status-page': () => import('./status-page.js').then((m) => m.benchStatusPage()),
  flood: () => import('./flood.js').then((m) => m.benchFlood()),
  // In a process of its own with a deadline (bench/suite-process.ts): 100 000 keys in the default
  // run, 10 000 with --quick, 10 000 and 100 000 when named (BENCH_SCALE_SIZES sets others).
  scale: (o) => benchScaleInProcess(o),
  // Opt-in: a 2-node ejabberd cluster and --vehicles N light clients.
  fleet: () => import('./fleet.js').then((m) => m.benchFleet()),
};

/** Suites that run only when named in --only. */
const OPT_IN = new Set<string>(['fleet']);
/** Suites that `--quick` runs when none is named (they honour `quick`). */
const QUICK = new Set(['crypto', 'scale']);

/** Shown first in the report, in this order: the figures issue 17 asks for (those measured). */
const HEADLINE = [
  'fido_tap_to_relay_p99_ms',
  'fido_floor_p50_ms',
  'ntag424_tap_to_relay_p99_ms',
  'ntag424_floor_p50_ms',
  'uid_tap_to_relay_p99_ms',
  'uid_floor_p50_ms',
  'ble_unlock_p99_ms',
  'ble_modelled_link_p50_ms',
  'ble_p_tap_to_relay_p99_ms',
  'ble_p_agent_own_p99_ms',
  'ble_p_link_model_ms',
  'ble_p_passkey_agent_own_p99_ms',
  'unlock_up_p99_ms',
  'unlock_refused_p99_ratio',
  'unlock_hung_p99_ratio',
  'unlock_flapping_p99_ratio',
  'keyring_load_ms',
  'decision_p99_us',
  'keys_100k_ready_ms',
  'keys_100k_decision_p99_us',
  'keys_100k_idle_rss_mb',
  'outbox_flush_acked_ms',
  'outbox_lost',
  'start_to_ready_ms',
  'idle_rss_mb',
  'p256_verify_node_per_s',
  'p256_verify_noble_per_s',
  'ed25519_verify_node_per_s',
  'ed25519_verify_noble_per_s',
];

/**
 * Issue 19's figures (bench/scale.ts), each beside its target: idle RSS and bytes per credential,
 * ready time, one grant at each size against one on the demo keyring (flat), bulk import, decision
 * p99. `*` is a size (10k, 100k).
 */
const ISSUE_19 = {
  title: 'Keyring at scale (issue 19)',
  names: [
    'demo_idle_rss_mb',
    'keys_*_idle_rss_mb',
    'keys_*_bytes_per_credential',
    'demo_ready_ms',
    'keys_*_ready_ms',
    'keys_small_grant_p50_ms',
    'keys_*_grant_p50_ms',
    'keys_*_grant_over_small_ratio',
    'keys_*_bulk_import_s',
    'keys_*_decision_p99_us',
  ],
};

/** The scale suite's sizes: BENCH_SCALE_SIZES, else by how the run was asked for. */
export function scaleSizesFor(options: SuiteOptions, env: NodeJS.ProcessEnv): number[] {
  const fallback = options.named ? [10_000, 100_000] : options.quick ? [10_000] : [100_000];
  return scaleSizes(env.BENCH_SCALE_SIZES, fallback);
}

/**
 * The deadline past which the scale process is ended: BENCH_SCALE_DEADLINE_S, else 10 min plus
 * 6 ms per credential (a hang guard, not a bound: 100 000 keys take about two minutes when the
 * machine is quiet, and much longer under load).
 */
export function scaleDeadlineMs(sizes: readonly number[], env: NodeJS.ProcessEnv): number {
  const given = Number(env.BENCH_SCALE_DEADLINE_S);
  if (env.BENCH_SCALE_DEADLINE_S !== undefined && Number.isFinite(given) && given > 0) return given * 1000;
  return 600_000 + 6 * sizes.reduce((a, b) => a + b, 0);
}

async function benchScaleInProcess(options: SuiteOptions): Promise<Record<string, number>> {
  const sizes = scaleSizesFor(options, process.env);
  return runSuiteProcess({
    script: fileURLToPath(new URL('./scale.js', import.meta.url)),
    tag: 'scale',
    env: { ...process.env, BENCH_SCALE_SIZES: sizes.join(',') },
    deadlineMs: scaleDeadlineMs(sizes, process.env),
    log: options.log,
  });
}

/** NFC end-to-end figures that carry the rig's serial transit; the issue's target is on agent_own. */
const RIG_INCLUDED = /^(fido|ntag424|uid)_overhead_p99_ms$/;

/** Mode P's radio time is modelled, not measured (bench/ble-link-model.ts). */
const LINK_MODELLED = /^ble_p_(passkey_)?(link_model_ms|with_link_model_p\d+_ms)$/;

function label(key: string): string {
  const target = targetOf(key);
  if (target !== undefined) return `   (target ${target})`;
  if (LINK_MODELLED.test(key)) return '   (modelled radio: connection interval × events)';
  return RIG_INCLUDED.test(key) ? '   (with the rig: socat, ptys)' : '';
}

const TARGETS: Record<string, string> = {
  decision_p99_us: '< 50',
  keyring_load_ms: '< 1000',
  start_to_ready_ms: '< 500',
  idle_rss_mb: '< 80',
  demo_idle_rss_mb: '< 80',
  keys_100k_idle_rss_mb: '< 150',
  keys_100k_ready_ms: '< 1000',
  keys_100k_bulk_import_s: '< 60',
  // Issue 19's 150 MB at 100 000 keys less the demo keyring's 80 MB: (150 - 80) MiB / 100 000.
  keys_100k_bytes_per_credential: '< 734',
  fido_agent_own_p99_ms: '≤ 5',
  ntag424_agent_own_p99_ms: '≤ 5',
  uid_agent_own_p99_ms: '≤ 5',
  ble_agent_overhead_p99_ms: '≤ 10',
  ble_agent_own_p99_ms: '≤ 10',
  // Issue 14: mode P, the agent's own share of a tap (answer write in → relay called).
  ble_p_agent_own_p99_ms: '< 5',
  ble_p_passkey_agent_own_p99_ms: '< 5',
  outbox_flush_acked_ms: '< 10000',
  outbox_lost: '= 0',
  unlock_refused_p99_ratio: '≤ 1.05',
  unlock_hung_p99_ratio: '≤ 1.05',
  unlock_flapping_p99_ratio: '≤ 1.05',
  // The unlock path verifies with node:crypto (src/crypto/verify.ts): it must stay the faster.
  p256_node_over_noble_ratio: '≥ 1',
  ed25519_node_over_noble_ratio: '≥ 1',
};

/** The flood suite's figures: every flood's p99 ratio, denials and RSS growth (issue 12). */
function floodTarget(key: string): string | undefined {
  if (key.endsWith('_p99_ratio') && !key.startsWith('unlock_')) return '≤ 1.5';
  if (key.endsWith('_denied')) return '= 0';
  if (key.endsWith('_rss_growth_mb')) return '< 30';
  return undefined;
}

/** The scale suite's figures at any size: a change as quick as on the demo keyring, decisions as core's. */
function scaleTarget(key: string): string | undefined {
  if (/^keys_[^_]+_grant_over_small_ratio$/.test(key)) return '≤ 2';
  if (/^keys_[^_]+_decision_p99_us$/.test(key)) return '< 50';
  return undefined;
}

export function targetOf(key: string): string | undefined {
  return TARGETS[key] ?? floodTarget(key) ?? scaleTarget(key);
}

function option(args: readonly string[], name: string): string | undefined {
  return args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
}

/** Runs the suites `args` pick and writes the report (and the baseline when asked). */
export async function runBench(
  args: readonly string[],
  log: (text: string) => void,
): Promise<{ report: BenchReport; files: string[] }> {
  const quick = args.includes('--quick');
  const onlyArg = option(args, 'only');
  const only = onlyArg ? new Set(onlyArg.split(',')) : undefined;
  for (const name of only ?? []) if (!(name in SUITES)) throw new Error(`no bench suite named ${name}`);
  const outDir = resolve(option(args, 'out') ?? join('bench', 'reports'));
  const baselineFile = resolve(option(args, 'baseline') ?? join('bench', 'baseline.json'));
  const baseline = parseBaseline(await readFile(baselineFile, 'utf8').catch(() => ''));
  const sampleMs = quick ? 200 : 2000;
  const startedAt = new Date();
  const machine = await describeMachine(sampleMs);
  const suites: Record<string, SuiteResult> = {};
  const stem = `${startedAt.toISOString().slice(0, 16).replace(':', '')}Z-${hostname().replace(/[^\w.-]/g, '_')}`;
  /** Writes the report as it stands: after every suite (a long run cut short keeps what it measured) and at the end. */
  const write = async (complete: boolean) => {
    const report = buildReport({
      startedAt,
      finishedAt: new Date(),
      argv: args,
      machine,
      suites,
      targetOf,
      headline: HEADLINE,
      groups: [ISSUE_19],
      complete,
      ...(baseline ? { baseline } : {}),
    });
    await mkdir(outDir, { recursive: true });
    const files: string[] = [];
    for (const [ext, text] of [
      ['json', `${JSON.stringify(report, null, 2)}\n`],
      ['md', renderMarkdown(report)],
    ] as const) {
      for (const base of [stem, 'latest']) {
        const file = join(outDir, `${base}.${ext}`);
        await writeFile(file, text);
        files.push(file);
      }
    }
    return { report, files };
  };
  for (const [name, suite] of Object.entries(SUITES)) {
    if (only ? !only.has(name) : quick ? !QUICK.has(name) : OPT_IN.has(name)) continue;
    log(`\n== ${name}\n`);
    const t0 = performance.now();
    try {
      const figures = await suite({ quick, named: only?.has(name) ?? false, log });
      suites[name] = { durationS: Math.round((performance.now() - t0) / 100) / 10, figures };
      for (const [k, v] of Object.entries(figures))
        log(`  ${k.padEnd(34)} ${String(v).padStart(12)}${label(k)}\n`);
    } catch (err) {
      // The other suites still run and the report is still written; the exit code says it.
      const error = err instanceof Error ? err.message : String(err);
      suites[name] = { durationS: Math.round((performance.now() - t0) / 100) / 10, figures: {}, error };
      log(`  FAILED: ${err instanceof Error ? err.stack : error}\n`);
    }
    await write(false);
  }
  machine.loadAvgEnd = loadAverage();
  const busyAtEnd = await sampleBusy(sampleMs);
  if (busyAtEnd) machine.busyAtEnd = busyAtEnd;
  const { report, files } = await write(true);
  if (args.includes('--update-baseline')) {
    await writeFile(baselineFile, `${JSON.stringify(nextBaseline(report, baseline), null, 2)}\n`);
    files.push(baselineFile);
  }
  return { report, files };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const json = args.includes('--json');
  // With --json stdout carries the report alone; progress goes to stderr.
  const log = (text: string) => (json ? process.stderr : process.stdout).write(text);
  const { report, files } = await runBench(args, log);
  if (json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  const { failing, regressed, suitesFailed } = report.summary;
  log(
    `\n${report.figures.length} figures; below target: ${failing.join(', ') || 'none'}; ` +
      `worse than the baseline: ${regressed.join(', ') || 'none'}\nreport: ${files.join(' ')}\n`,
  );
  if (suitesFailed.length > 0) {
    log(`suites that failed: ${suitesFailed.join(', ')}\n`);
    process.exitCode = 1;
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exitCode = 1;
  });
}
