/**
 * Prometheus text exposition format 0.0.4, rendered from plain values (no client library):
 *   # HELP name text
 *   # TYPE name counter|gauge
 *   name{label="value",...} 42
 * Label values escape \, " and newline; HELP text escapes \ and newline. Names are checked.
 */

export type MetricType = 'counter' | 'gauge';

export interface Sample {
  readonly labels?: Readonly<Record<string, string>>;
  readonly value: number;
}

export interface MetricFamily {
  readonly name: string;
  readonly help: string;
  readonly type: MetricType;
  readonly samples: readonly Sample[];
}

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

export function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function escapeHelp(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

export function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Number.POSITIVE_INFINITY) return '+Inf';
  if (value === Number.NEGATIVE_INFINITY) return '-Inf';
  return String(value);
}

function renderLabels(labels: Readonly<Record<string, string>> | undefined): string {
  if (labels === undefined) return '';
  const entries = Object.entries(labels);
  if (entries.length === 0) return '';
  for (const [name] of entries) {
    if (!LABEL_NAME.test(name) || name.startsWith('__')) throw new Error(`bad label name ${name}`);
  }
  return `{${entries.map(([name, value]) => `${name}="${escapeLabelValue(value)}"`).join(',')}}`;
}

/** Renders families in order; a family without samples still gets its HELP and TYPE lines. */
export function renderMetrics(families: readonly MetricFamily[]): string {
  const seen = new Set<string>();
  const lines: string[] = [];
  for (const family of families) {
    if (!METRIC_NAME.test(family.name)) throw new Error(`bad metric name ${family.name}`);
    if (seen.has(family.name)) throw new Error(`metric ${family.name} rendered twice`);
    seen.add(family.name);
    lines.push(`# HELP ${family.name} ${escapeHelp(family.help)}`);
    lines.push(`# TYPE ${family.name} ${family.type}`);
    for (const sample of family.samples) {
      lines.push(`${family.name}${renderLabels(sample.labels)} ${formatValue(sample.value)}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

/** One sample per possible value, 1 for the current one (a Prometheus "enum" gauge). */
export function oneHot(
  label: string,
  values: readonly string[],
  current: string | undefined,
  extra: Readonly<Record<string, string>> = {},
): Sample[] {
  return values.map((v) => ({ labels: { ...extra, [label]: v }, value: v === current ? 1 : 0 }));
}
