import { benchCore } from './core.js';

/**
 * `npm run bench [-- --json] [-- --only core,store,...]`: prints figures, never asserts. Each
 * suite is a module exporting an async function returning named numbers.
 */
type Suite = () => Promise<Record<string, number>>;

const SUITES: Record<string, () => Promise<Suite>> = {
  core: async () => () => benchCore(),
  store: async () => () => import('./store.js').then((m) => m.benchStore()),
  nfc: async () => () => import('./nfc.js').then((m) => m.benchNfc()),
  ble: async () => () => import('./ble.js').then((m) => m.benchBle()),
  cloud: async () => () => import('./cloud.js').then((m) => m.benchCloud()),
  'status-page': async () => () => import('./status-page.js').then((m) => m.benchStatusPage()),
  flood: async () => () => import('./flood.js').then((m) => m.benchFlood()),
  scale: async () => () => import('./scale.js').then((m) => m.benchScale()),
  fleet: async () => () => import('./fleet.js').then((m) => m.benchFleet()),
};

/**
 * Suites that run only when named in --only (minutes long: scale builds 100 000 keys; fleet runs
 * a 2-node ejabberd cluster and --vehicles N clients).
 */
const OPT_IN = new Set(['scale', 'fleet']);

/** NFC end-to-end figures that carry the rig's serial transit; the target is on agent_own. */
const RIG_INCLUDED = /^(fido|ntag424|uid)_overhead_p99_ms$/;

function label(key: string): string {
  const target = TARGETS[key] ?? floodTarget(key);
  if (target !== undefined) return `   (target ${target})`;
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
  fido_agent_own_p99_ms: '≤ 5',
  ntag424_agent_own_p99_ms: '≤ 5',
  uid_agent_own_p99_ms: '≤ 5',
  ble_agent_overhead_p99_ms: '≤ 10',
  ble_agent_own_p99_ms: '≤ 10',
  outbox_flush_acked_ms: '< 10000',
  outbox_lost: '= 0',
  unlock_refused_p99_ratio: '≤ 1.05',
  unlock_hung_p99_ratio: '≤ 1.05',
  unlock_flapping_p99_ratio: '≤ 1.05',
};

/** The flood suite's figures: every flood's p99 ratio, denials and RSS growth (issue 12). */
function floodTarget(key: string): string | undefined {
  if (key.endsWith('_p99_ratio') && !key.startsWith('unlock_')) return '≤ 1.5';
  if (key.endsWith('_denied')) return '= 0';
  if (key.endsWith('_rss_growth_mb')) return '< 30';
  return undefined;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const json = args.includes('--json');
  const onlyArg = args.find((a) => a.startsWith('--only='))?.slice(7);
  const only = onlyArg ? new Set(onlyArg.split(',')) : undefined;
  const results: Record<string, Record<string, number>> = {};
  for (const [name, load] of Object.entries(SUITES)) {
    if (only ? !only.has(name) : OPT_IN.has(name)) continue;
    if (!json) process.stdout.write(`\n== ${name}\n`);
    const figures = await (await load())();
    results[name] = figures;
    if (!json) {
      for (const [k, v] of Object.entries(figures))
        process.stdout.write(`  ${k.padEnd(34)} ${String(v).padStart(12)}${label(k)}\n`);
    }
  }
  if (json)
    process.stdout.write(
      `${JSON.stringify({ machine: { node: process.version, cpus: (await import('node:os')).cpus().length }, results }, null, 2)}\n`,
    );
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
