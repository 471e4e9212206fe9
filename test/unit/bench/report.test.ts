import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Machine } from '../../../bench/machine.js';
import {
  type Baseline,
  type BenchReport,
  buildReport,
  meetsTarget,
  nameMatches,
  nextBaseline,
  parseBaseline,
  renderMarkdown,
  unitOf,
} from '../../../bench/report.js';
import { runBench, scaleDeadlineMs, scaleSizesFor, targetOf } from '../../../bench/run.js';

/**
 * The bench harness and its report format, run for real on the crypto suite in quick mode (a
 * fraction of a second of measuring), so `npm run bench` cannot break unseen. No figure is judged.
 */

const machine: Machine = {
  host: 'rig',
  cpuModel: 'Cortex-A72',
  cores: 4,
  ramMb: 4096,
  node: 'v20.19.0',
  os: 'Linux 6.6 arm64',
  loadAvgStart: [0.1, 0.2, 0.3],
  loadAvgEnd: [0.4, 0.5, 0.6],
};

function report(
  suites: BenchReport['suites'],
  baseline?: Baseline,
  targets: Record<string, string> = {},
  headline: string[] = [],
): BenchReport {
  return buildReport({
    startedAt: new Date('2026-01-01T00:00:00Z'),
    finishedAt: new Date('2026-01-01T00:01:30Z'),
    argv: [],
    machine,
    suites,
    targetOf: (name) => targets[name],
    headline,
    ...(baseline ? { baseline } : {}),
  });
}

describe('runBench (crypto suite, --quick)', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'va-bench-harness-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes the dated and latest report in JSON and Markdown, then compares a second run with the baseline it wrote', async () => {
    const args = [
      '--only=crypto',
      '--quick',
      `--out=${join(dir, 'reports')}`,
      `--baseline=${join(dir, 'baseline.json')}`,
    ];
    const logged: string[] = [];
    const first = await runBench([...args, '--update-baseline'], (t) => logged.push(t));
    const names = (await readdir(join(dir, 'reports'))).sort();
    expect(names.filter((n) => n.startsWith('latest'))).toEqual(['latest.json', 'latest.md']);
    expect(names.filter((n) => /^\d{4}-\d\d-\d\dT\d{4}Z-.+\.(json|md)$/.test(n))).toHaveLength(2);
    expect(logged.join('')).toContain('== crypto');

    const json = JSON.parse(await readFile(join(dir, 'reports', 'latest.json'), 'utf8')) as BenchReport;
    expect(json).toEqual(first.report);
    expect(json.complete).toBe(true);
    expect(json.machine.node).toBe(process.version);
    expect(json.machine.cores).toBeGreaterThan(0);
    expect(json.machine.cpuModel).not.toBe('');
    expect(json.machine.loadAvgStart).toHaveLength(3);
    expect(json.machine.loadAvgEnd).toHaveLength(3);
    expect(json.machine.busyAtStart?.cpuBusyPercent).toBeGreaterThanOrEqual(0);
    expect(json.summary.suitesFailed).toEqual([]);
    const byName = new Map(json.figures.map((f) => [f.name, f]));
    for (const alg of ['p256', 'ed25519']) {
      for (const impl of ['node', 'noble']) {
        const f = byName.get(`${alg}_verify_${impl}_per_s`);
        expect(f?.unit).toBe('/s');
        expect(f?.value).toBeGreaterThan(0);
      }
      const ratio = byName.get(`${alg}_node_over_noble_ratio`);
      expect(ratio?.target).toBe('≥ 1');
      expect(typeof ratio?.pass).toBe('boolean');
      expect(ratio?.baseline).toBeUndefined();
    }

    const baseline = parseBaseline(await readFile(join(dir, 'baseline.json'), 'utf8'));
    expect(Object.keys(baseline?.figures ?? {}).sort()).toEqual(
      json.figures.map((f) => `crypto.${f.name}`).sort(),
    );

    const second = await runBench(args, () => {});
    for (const f of second.report.figures) {
      const before = baseline?.figures[`crypto.${f.name}`] ?? Number.NaN;
      expect(f.baseline).toBe(before);
      expect(f.ratio).toBe(Math.round((f.value / before) * 100) / 100);
    }
    const markdown = await readFile(join(dir, 'reports', 'latest.md'), 'utf8');
    expect(markdown).toContain('## Machine');
    expect(markdown).toContain('| figure | value | unit | target | met | baseline | ratio |');
    const row = markdown.split('\n').find((l) => l.startsWith('| p256_verify_node_per_s |'));
    const f = second.report.figures.find((x) => x.name === 'p256_verify_node_per_s');
    expect(row).toBe(`| p256_verify_node_per_s | ${f?.value} | /s |  |  | ${f?.baseline} | ${f?.ratio} |`);
  });

  it('refuses a suite name it does not know, before measuring anything', async () => {
    await expect(runBench(['--only=nope', `--out=${dir}`], () => {})).rejects.toThrow(
      /no bench suite named nope/,
    );
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('report shaping', () => {
  it.each([
    ['decision_p99_us', 'µs'],
    ['keyring_load_ms', 'ms'],
    ['keys_100k_bulk_import_s', 's'],
    ['idle_rss_mb', 'MB'],
    ['p256_verify_node_per_s', '/s'],
    ['unlock_hung_p99_ratio', '×'],
    ['outbox_lost', 'count'],
  ])('%s is in %s', (name, unit) => {
    expect(unitOf(name)).toBe(unit);
  });

  it.each([
    [49, '< 50', true],
    [50, '< 50', false],
    [5, '≤ 5', true],
    [5.01, '≤ 5', false],
    [0, '= 0', true],
    [1, '= 0', false],
    [1, '≥ 1', true],
    [0.99, '≥ 1', false],
    [Number.NaN, '< 50', false],
    [3, 'fast', undefined],
  ])('%s against "%s" is %s', (value, target, met) => {
    expect(meetsTarget(value, target)).toBe(met);
  });

  it('flags a regression by its direction: slower times and lower rates, past the margin', () => {
    const baseline: Baseline = {
      recordedAt: '2025-12-31T00:00:00Z',
      machine: { host: 'rig', cpuModel: 'Cortex-A72', cores: 4, node: 'v20.19.0' },
      figures: { 'a.t_ms': 10, 'a.slow_ms': 10, 'a.r_per_s': 100, 'a.low_per_s': 100, 'a.n': 5 },
    };
    const r = report(
      {
        a: { durationS: 1, figures: { t_ms: 11, slow_ms: 13, r_per_s: 90, low_per_s: 70, n: 50, new_ms: 1 } },
      },
      baseline,
      { t_ms: '< 12', slow_ms: '< 12' },
      ['slow_ms', 'absent_ms', 'r_per_s'],
    );
    const f = Object.fromEntries(r.figures.map((x) => [x.name, x]));
    expect(f.t_ms).toMatchObject({ ratio: 1.1, regressed: false, pass: true, unit: 'ms' });
    expect(f.slow_ms).toMatchObject({ ratio: 1.3, regressed: true, pass: false });
    expect(f.r_per_s).toMatchObject({ ratio: 0.9, regressed: false });
    expect(f.low_per_s).toMatchObject({ ratio: 0.7, regressed: true });
    expect(f.n).toMatchObject({ ratio: 10 });
    expect(f.n?.regressed).toBeUndefined();
    expect(f.new_ms?.baseline).toBeUndefined();
    expect(r.summary).toMatchObject({ failing: ['a.slow_ms'], regressed: ['a.slow_ms', 'a.low_per_s'] });
    const markdown = renderMarkdown(r);
    expect(markdown).toContain('| slow_ms | 13 | ms | < 12 | **NO** | 10 | **1.3** |');
    // Key figures first, in the order asked, those measured only.
    expect(r.headline).toEqual(['a.slow_ms', 'a.r_per_s']);
    const keyFigures = markdown.slice(markdown.indexOf('## Key figures'), markdown.indexOf('## a'));
    expect(keyFigures.split('\n').filter((l) => l.startsWith('| a: '))).toEqual([
      '| a: slow_ms | 13 | ms | < 12 | **NO** | 10 | **1.3** |',
      '| a: r_per_s | 90 | /s |  |  | 100 | 0.9 |',
    ]);
  });

  it('a suite that failed is named in the summary and the Markdown, and keeps its baseline figures', () => {
    const previous: Baseline = {
      recordedAt: '2025-12-31T00:00:00Z',
      machine: { host: 'rig', cpuModel: 'x', cores: 4, node: 'v20' },
      figures: { 'ok.x_ms': 1, 'ok.gone_ms': 2, 'broken.y_ms': 3, 'other.z_ms': 4 },
    };
    const r = report(
      {
        ok: { durationS: 1, figures: { x_ms: 2 } },
        broken: { durationS: 2, figures: {}, error: 'rig | missing' },
      },
      previous,
    );
    expect(r.summary.suitesFailed).toEqual(['broken']);
    expect(renderMarkdown(r).split('\n')[0]).not.toContain('partial');
    const partial = buildReport({
      argv: [],
      suites: r.suites,
      startedAt: new Date(),
      finishedAt: new Date(),
      machine,
      targetOf: () => undefined,
      complete: false,
    });
    expect(partial.complete).toBe(false);
    expect(renderMarkdown(partial).split('\n')[0]).toContain(
      '(partial: written while the run was still going)',
    );
    expect(renderMarkdown(r)).toContain('**Failed:** rig \\| missing');
    // The rerun suite's figures replace its old ones; the failed and the unrun suites keep theirs,
    // and so does a figure the rerun suite did not produce this time (a partial run).
    expect(nextBaseline(r, previous).figures).toEqual({
      'broken.y_ms': 3,
      'ok.gone_ms': 2,
      'ok.x_ms': 2,
      'other.z_ms': 4,
    });
  });

  it('--update-baseline after a partial scale run keeps the sizes it did not measure', () => {
    const previous: Baseline = {
      recordedAt: '2025-12-31T00:00:00Z',
      machine: { host: 'rig', cpuModel: 'x', cores: 4, node: 'v20' },
      figures: { 'scale.keys_10k_ready_ms': 700, 'scale.keys_100k_ready_ms': 900, 'core.decision_p99_us': 3 },
    };
    const r = report(
      { scale: { durationS: 90, figures: { keys_100k_ready_ms: 950, keys_100k_start_ms: Number.NaN } } },
      previous,
    );
    expect(nextBaseline(r, previous).figures).toEqual({
      'core.decision_p99_us': 3,
      'scale.keys_100k_ready_ms': 950,
      'scale.keys_10k_ready_ms': 700,
    });
  });

  it.each([
    ['keys_*_ready_ms', 'keys_100k_ready_ms', true],
    ['keys_*_ready_ms', 'keys_10k_ready_ms', true],
    ['keys_*_ready_ms', 'keys_10k_start_ms', false],
    ['keys_*_ready_ms', 'keys_small_extra_ready_ms', false],
    ['keys_*_ready_ms', 'keys__ready_ms', false],
    ['demo_ready_ms', 'demo_ready_ms', true],
    ['demo_ready_ms', 'demo_ready_ms_x', false],
  ])('the group name %s matches %s: %s', (pattern, name, matches) => {
    expect(nameMatches(pattern, name)).toBe(matches);
  });

  it('a group lists its figures in its own order, sizes in suite order, with targets, those measured only', () => {
    const r = buildReport({
      startedAt: new Date('2026-01-01T00:00:00Z'),
      finishedAt: new Date('2026-01-01T00:01:30Z'),
      argv: [],
      machine,
      suites: {
        scale: {
          durationS: 90,
          figures: {
            demo_idle_rss_mb: 70,
            keys_10k_ready_ms: 500,
            keys_10k_idle_rss_mb: 90,
            keys_100k_ready_ms: 1200,
            keys_100k_idle_rss_mb: 140,
            keys_small_grant_p50_ms: 1,
            keys_10k_grant_p50_ms: 1.1,
          },
        },
      },
      targetOf: (name) => ({ keys_100k_idle_rss_mb: '< 150', keys_100k_ready_ms: '< 1000' })[name],
      groups: [
        {
          title: 'Keyring at scale (issue 19)',
          names: [
            'demo_idle_rss_mb',
            'keys_*_idle_rss_mb',
            'keys_*_ready_ms',
            'keys_small_grant_p50_ms',
            'keys_*_grant_p50_ms',
            'keys_*_bulk_import_s',
          ],
        },
      ],
    });
    expect(r.groups).toEqual([
      {
        title: 'Keyring at scale (issue 19)',
        figures: [
          'scale.demo_idle_rss_mb',
          'scale.keys_10k_idle_rss_mb',
          'scale.keys_100k_idle_rss_mb',
          'scale.keys_10k_ready_ms',
          'scale.keys_100k_ready_ms',
          'scale.keys_small_grant_p50_ms',
          'scale.keys_10k_grant_p50_ms',
        ],
      },
    ]);
    const markdown = renderMarkdown(r);
    const group = markdown.slice(
      markdown.indexOf('## Keyring at scale (issue 19)'),
      markdown.indexOf('## scale'),
    );
    expect(group.split('\n').filter((l) => l.startsWith('| scale: '))).toEqual([
      '| scale: demo_idle_rss_mb | 70 | MB |  |  |  |  |',
      '| scale: keys_10k_idle_rss_mb | 90 | MB |  |  |  |  |',
      '| scale: keys_100k_idle_rss_mb | 140 | MB | < 150 | yes |  |  |',
      '| scale: keys_10k_ready_ms | 500 | ms |  |  |  |  |',
      '| scale: keys_100k_ready_ms | 1200 | ms | < 1000 | **NO** |  |  |',
      '| scale: keys_small_grant_p50_ms | 1 | ms |  |  |  |  |',
      '| scale: keys_10k_grant_p50_ms | 1.1 | ms |  |  |  |  |',
    ]);
  });

  it.each(['', 'not json', '[]', '{"recordedAt":1}', '{"recordedAt":"x","machine":{},"figures":null}'])(
    'a baseline file %j that is not one gives no baseline',
    (text) => {
      expect(parseBaseline(text)).toBeUndefined();
    },
  );
});

describe('scale suite in the run', () => {
  it.each([
    [{ quick: false, named: false }, {}, [100_000]],
    [{ quick: true, named: false }, {}, [10_000]],
    [{ quick: false, named: true }, {}, [10_000, 100_000]],
    [{ quick: true, named: true }, {}, [10_000, 100_000]],
    [{ quick: false, named: false }, { BENCH_SCALE_SIZES: '1000, 5000' }, [1000, 5000]],
  ])('run %j with %j measures %j credentials', (options, env, sizes) => {
    expect(scaleSizesFor({ ...options, log: () => {} }, env)).toEqual(sizes);
  });

  it.each(['10k', '0', '-5', '1.5', '1000,,2000'])(
    'BENCH_SCALE_SIZES=%s is refused before anything runs',
    (text) => {
      expect(() =>
        scaleSizesFor({ quick: false, named: false, log: () => {} }, { BENCH_SCALE_SIZES: text }),
      ).toThrow(/BENCH_SCALE_SIZES must be whole numbers/);
    },
  );

  it.each([
    [[100_000], {}, 1_200_000],
    [[10_000, 100_000], {}, 1_260_000],
    [[100_000], { BENCH_SCALE_DEADLINE_S: '90' }, 90_000],
    [[100_000], { BENCH_SCALE_DEADLINE_S: 'soon' }, 1_200_000],
  ])('sizes %j with %j: the scale process is ended after %d ms', (sizes, env, ms) => {
    expect(scaleDeadlineMs(sizes, env)).toBe(ms);
  });

  it.each([
    ['keys_100k_idle_rss_mb', '< 150'],
    ['demo_idle_rss_mb', '< 80'],
    ['keys_100k_bytes_per_credential', '< 734'],
    ['keys_100k_ready_ms', '< 1000'],
    ['keys_100k_bulk_import_s', '< 60'],
    ['keys_10k_grant_over_small_ratio', '≤ 2'],
    ['keys_100k_grant_over_small_ratio', '≤ 2'],
    ['keys_10k_decision_p99_us', '< 50'],
    ['keys_100k_decision_p99_us', '< 50'],
    ['keys_10k_idle_rss_mb', undefined],
  ])("issue 19's %s has the target %s", (name, target) => {
    expect(targetOf(name)).toBe(target);
  });
});
