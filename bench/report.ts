import type { Machine } from './machine.js';

/**
 * The benchmark report: every figure with its unit, its target and whether it met it, and the
 * baseline's figure beside it with the ratio new / baseline, so a regression reads as a ratio.
 * Pure: run.ts measures and writes files; this only shapes data and Markdown.
 */

export const REPORT_SCHEMA = 1;

export interface SuiteResult {
  readonly durationS: number;
  readonly figures: Readonly<Record<string, number>>;
  /** Set when the suite threw: its figures are missing and the run fails. */
  readonly error?: string;
}

export interface Figure {
  readonly suite: string;
  readonly name: string;
  readonly value: number;
  readonly unit: string;
  readonly target?: string;
  /** Against the target; absent without a target. */
  readonly pass?: boolean;
  readonly baseline?: number;
  /** value / baseline. */
  readonly ratio?: number;
  /** True when the ratio moved more than REGRESSION_MARGIN the bad way (for units with a direction). */
  readonly regressed?: boolean;
}

export interface Baseline {
  readonly recordedAt: string;
  readonly machine: Pick<Machine, 'host' | 'cpuModel' | 'cores' | 'node'> & {
    /** Load average (1, 5, 15 min) when the run that recorded it started: a busy machine's figures are worse. */
    readonly loadAvgStart?: readonly number[];
  };
  /** `suite.figure` → value. */
  readonly figures: Readonly<Record<string, number>>;
}

export interface BenchReport {
  readonly schema: number;
  /** False while the run is still going (the report is rewritten after every suite). */
  readonly complete: boolean;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly durationS: number;
  readonly argv: readonly string[];
  readonly machine: Machine;
  readonly baseline?: {
    readonly recordedAt: string;
    readonly host: string;
    readonly cpuModel: string;
    readonly loadAvgStart?: readonly number[];
  };
  readonly suites: Readonly<Record<string, SuiteResult>>;
  readonly figures: readonly Figure[];
  /** `suite.figure` keys of the figures shown first (the ones the README quotes), as measured. */
  readonly headline: readonly string[];
  /** Figures gathered under a title after the key figures (an issue's rows), as measured. */
  readonly groups: readonly { readonly title: string; readonly figures: readonly string[] }[];
  readonly summary: {
    readonly figures: number;
    readonly withTarget: number;
    readonly failing: readonly string[];
    readonly regressed: readonly string[];
    readonly suitesFailed: readonly string[];
  };
}

/** A figure more than this far from its baseline, the bad way, is flagged (machines are noisy). */
export const REGRESSION_MARGIN = 0.2;

/** Unit from the figure's name suffix (the suites' naming convention). */
export function unitOf(name: string): string {
  if (name.endsWith('_per_s')) return '/s';
  if (name.endsWith('_us')) return 'µs';
  if (name.endsWith('_ms')) return 'ms';
  if (name.endsWith('_s')) return 's';
  if (name.endsWith('_mb')) return 'MB';
  if (name.endsWith('_ratio')) return '×';
  if (name.endsWith('_bytes') || name.endsWith('_per_credential')) return 'B';
  return 'count';
}

/** Whether a bigger value is better (+1), worse (-1) or neither (0), from the unit. */
function direction(unit: string): number {
  if (unit === '/s') return 1;
  if (unit === 'ms' || unit === 'µs' || unit === 's' || unit === 'MB' || unit === 'B') return -1;
  return 0;
}

/** Checks `value` against a target such as '< 50', '≤ 5', '= 0', '≥ 1' (undefined if unparsable). */
export function meetsTarget(value: number, target: string): boolean | undefined {
  const m = /^\s*(<=|>=|≤|≥|<|>|=)\s*(-?[\d.]+)\s*$/.exec(target);
  if (!m || !Number.isFinite(value)) return m ? false : undefined;
  const bound = Number(m[2]);
  switch (m[1]) {
    case '<':
      return value < bound;
    case '>':
      return value > bound;
    case '<=':
    case '≤':
      return value <= bound;
    case '>=':
    case '≥':
      return value >= bound;
    default:
      return value === bound;
  }
}

export function buildReport(input: {
  readonly startedAt: Date;
  readonly finishedAt: Date;
  readonly argv: readonly string[];
  readonly machine: Machine;
  readonly suites: Readonly<Record<string, SuiteResult>>;
  readonly targetOf: (name: string) => string | undefined;
  readonly baseline?: Baseline;
  /** Figure names to show first, in this order (those the run measured). */
  readonly headline?: readonly string[];
  /** False for the report written after each suite, before the run ends. */
  readonly complete?: boolean;
  /**
   * Tables after the key figures, each a title and figure names in order; `*` in a name stands
   * for one size label (`keys_*_ready_ms`: keys_10k_ready_ms, keys_100k_ready_ms, in suite order).
   */
  readonly groups?: readonly { readonly title: string; readonly names: readonly string[] }[];
}): BenchReport {
  const figures: Figure[] = [];
  for (const [suite, result] of Object.entries(input.suites)) {
    for (const [name, value] of Object.entries(result.figures)) {
      const unit = unitOf(name);
      const target = input.targetOf(name);
      const pass = target === undefined ? undefined : meetsTarget(value, target);
      const baseline = input.baseline?.figures[`${suite}.${name}`];
      const ratio =
        baseline === undefined || baseline === 0 || !Number.isFinite(value)
          ? undefined
          : Math.round((value / baseline) * 100) / 100;
      const dir = direction(unit);
      const regressed =
        ratio === undefined || dir === 0
          ? undefined
          : dir > 0
            ? ratio < 1 - REGRESSION_MARGIN
            : ratio > 1 + REGRESSION_MARGIN;
      figures.push({
        suite,
        name,
        value,
        unit,
        ...(target === undefined ? {} : { target }),
        ...(pass === undefined ? {} : { pass }),
        ...(baseline === undefined ? {} : { baseline }),
        ...(ratio === undefined ? {} : { ratio }),
        ...(regressed === undefined ? {} : { regressed }),
      });
    }
  }
  const key = (f: Figure) => `${f.suite}.${f.name}`;
  return {
    schema: REPORT_SCHEMA,
    complete: input.complete ?? true,
    startedAt: input.startedAt.toISOString(),
    finishedAt: input.finishedAt.toISOString(),
    durationS: Math.round((input.finishedAt.getTime() - input.startedAt.getTime()) / 100) / 10,
    argv: input.argv,
    machine: input.machine,
    ...(input.baseline
      ? {
          baseline: {
            recordedAt: input.baseline.recordedAt,
            host: input.baseline.machine.host,
            cpuModel: input.baseline.machine.cpuModel,
            ...(input.baseline.machine.loadAvgStart
              ? { loadAvgStart: input.baseline.machine.loadAvgStart }
              : {}),
          },
        }
      : {}),
    suites: input.suites,
    figures,
    headline: (input.headline ?? []).flatMap((name) => figures.filter((f) => f.name === name).map(key)),
    groups: (input.groups ?? []).map((g) => ({
      title: g.title,
      // A figure once, at the first name that matches it (keys_small_… also fits keys_*_…).
      figures: [
        ...new Set(g.names.flatMap((name) => figures.filter((f) => nameMatches(name, f.name)).map(key))),
      ],
    })),
    summary: {
      figures: figures.length,
      withTarget: figures.filter((f) => f.target !== undefined).length,
      failing: figures.filter((f) => f.pass === false).map(key),
      regressed: figures.filter((f) => f.regressed === true).map(key),
      suitesFailed: Object.entries(input.suites)
        .filter(([, r]) => r.error !== undefined)
        .map(([name]) => name),
    },
  };
}

/** Whether `name` matches `pattern`, where `*` stands for one part of a name (no `_`). */
export function nameMatches(pattern: string, name: string): boolean {
  if (!pattern.includes('*')) return pattern === name;
  const parts = pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&'));
  return new RegExp(`^${parts.join('[^_]+')}$`).test(name);
}

/**
 * The baseline after this run: each figure this run measured replaces the one of the same name;
 * every other figure is kept, from suites that did not run, from a suite that failed, and those a
 * partial run of a suite did not produce (the scale suite at 100 000 keys only keeps the 10 000
 * figures a full run recorded).
 */
export function nextBaseline(report: BenchReport, previous: Baseline | undefined): Baseline {
  const figures: Record<string, number> = { ...(previous?.figures ?? {}) };
  const ran = new Set(
    Object.entries(report.suites)
      .filter(([, r]) => r.error === undefined)
      .map(([s]) => s),
  );
  for (const f of report.figures)
    if (ran.has(f.suite) && Number.isFinite(f.value)) figures[`${f.suite}.${f.name}`] = f.value;
  const { host, cpuModel, cores, node, loadAvgStart } = report.machine;
  return {
    recordedAt: report.finishedAt,
    machine: { host, cpuModel, cores, node, loadAvgStart },
    figures: Object.fromEntries(Object.entries(figures).sort(([a], [b]) => a.localeCompare(b))),
  };
}

/** Reads a baseline JSON; undefined for anything that is not one (a report then has no ratios). */
export function parseBaseline(text: string): Baseline | undefined {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof data !== 'object' || data === null) return undefined;
  const { recordedAt, machine, figures } = data as Record<string, unknown>;
  if (typeof recordedAt !== 'string' || typeof machine !== 'object' || machine === null) return undefined;
  if (typeof figures !== 'object' || figures === null) return undefined;
  const clean: Record<string, number> = {};
  for (const [k, v] of Object.entries(figures)) if (typeof v === 'number') clean[k] = v;
  return { recordedAt, machine: machine as Baseline['machine'], figures: clean };
}

const TABLE_HEAD = [
  '| figure | value | unit | target | met | baseline | ratio |',
  '|---|--:|---|---|---|--:|--:|',
];

function row(f: Figure, name = f.name): string {
  const met = f.pass === undefined ? '' : f.pass ? 'yes' : '**NO**';
  const ratio = f.ratio === undefined ? '' : f.regressed ? `**${f.ratio}**` : String(f.ratio);
  return `| ${name} | ${cell(f.value)} | ${f.unit} | ${cell(f.target)} | ${met} | ${cell(f.baseline)} | ${ratio} |`;
}

function cell(value: number | string | undefined): string {
  if (value === undefined) return '';
  return typeof value === 'number' ? String(value) : value.replaceAll('|', '\\|');
}

export function renderMarkdown(report: BenchReport): string {
  const m = report.machine;
  const busy = (b: Machine['busyAtStart']) =>
    b === undefined
      ? 'not measured'
      : `${b.cpuBusyPercent} % of all cores over ${b.windowMs} ms` +
        (b.busyProcesses.length === 0
          ? '; no other process above 5 % of a core'
          : `; busy: ${b.busyProcesses.map((p) => `${p.command} (pid ${p.pid}) ${p.cpuPercent} %`).join(', ')}`);
  const lines = [
    `# Benchmark report ${report.startedAt}${report.complete ? '' : ' (partial: written while the run was still going)'}`,
    '',
    `\`${['npm run bench --', ...report.argv].join(' ')}\`: ${report.durationS} s. ` +
      `${report.summary.figures} figures, ${report.summary.withTarget} with a target, ` +
      `${report.summary.failing.length} failing it; ${report.summary.regressed.length} more than ` +
      `${REGRESSION_MARGIN * 100} % worse than the baseline` +
      (report.summary.suitesFailed.length > 0
        ? `; suites that failed: ${report.summary.suitesFailed.join(', ')}`
        : '') +
      '.',
    '',
    '## Machine',
    '',
    '| | |',
    '|---|---|',
    `| host | ${cell(m.host)} |`,
    `| CPU | ${cell(m.cpuModel)}, ${m.cores} cores |`,
    `| RAM | ${m.ramMb} MB |`,
    `| OS | ${cell(m.os)} |`,
    `| Node | ${m.node} |`,
    `| load average (1, 5, 15 min) | start ${m.loadAvgStart.join(', ')}; end ${m.loadAvgEnd?.join(', ') ?? '?'} |`,
    `| CPU use at start | ${cell(busy(m.busyAtStart))} |`,
    `| CPU use at end | ${cell(busy(m.busyAtEnd))} |`,
    `| baseline | ${report.baseline ? cell(`${report.baseline.recordedAt} on ${report.baseline.host} (${report.baseline.cpuModel}), load average at its start ${report.baseline.loadAvgStart?.join(', ') ?? '?'}`) : 'none'} |`,
    '',
  ];
  const headline = report.headline.flatMap((k) => report.figures.filter((f) => `${f.suite}.${f.name}` === k));
  if (headline.length > 0) {
    lines.push('## Key figures', '', ...TABLE_HEAD);
    for (const f of headline) lines.push(row(f, `${f.suite}: ${f.name}`));
    lines.push('');
  }
  for (const group of report.groups) {
    const rows = group.figures.flatMap((k) => report.figures.filter((f) => `${f.suite}.${f.name}` === k));
    if (rows.length === 0) continue;
    lines.push(`## ${cell(group.title)}`, '', ...TABLE_HEAD);
    for (const f of rows) lines.push(row(f, `${f.suite}: ${f.name}`));
    lines.push('');
  }
  for (const [suite, result] of Object.entries(report.suites)) {
    lines.push(`## ${suite}`, '', `${result.durationS} s.`, '');
    if (result.error !== undefined) lines.push(`**Failed:** ${cell(result.error)}`, '');
    const rows = report.figures.filter((f) => f.suite === suite);
    if (rows.length === 0) continue;
    lines.push(
      '| figure | value | unit | target | met | baseline | ratio |',
      '|---|--:|---|---|---|--:|--:|',
    );
    for (const f of rows) {
      const met = f.pass === undefined ? '' : f.pass ? 'yes' : '**NO**';
      const ratio = f.ratio === undefined ? '' : f.regressed ? `**${f.ratio}**` : String(f.ratio);
      lines.push(
        `| ${f.name} | ${cell(f.value)} | ${f.unit} | ${cell(f.target)} | ${met} | ${cell(f.baseline)} | ${ratio} |`,
      );
    }
    lines.push('');
  }
  lines.push(
    'Ratio: this run ÷ baseline; bold when more than ' +
      `${REGRESSION_MARGIN * 100} % worse (for times, sizes and rates). Figures only: the machine ` +
      'may have been shared, see CPU use above.',
    '',
  );
  return lines.join('\n');
}
