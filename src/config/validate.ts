import type { Field, SectionField } from './fields.js';

/** One problem found in the configuration: where, what, and what is allowed. */
export interface ConfigProblem {
  /** Dotted field path, e.g. `lock.pulseMs`. */
  readonly field: string;
  /** Where the value came from: the file name or the environment variable. */
  readonly source: string;
  readonly problem: string;
  readonly allowed: string;
}

export function envNameFor(path: readonly string[]): string {
  return `VEHICLE_AGENT_${path.map((p) => p.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('__')}`;
}

function allowedText(field: Field): string {
  switch (field.type) {
    case 'int':
      return `an integer from ${field.min} to ${field.max}`;
    case 'bool':
      return 'true or false';
    case 'enum':
      return `one of ${field.values.join(', ')}`;
    case 'string':
      return field.patternHint ?? 'a string';
    case 'string-list':
      return `${field.patternHint}, or a list of 1 to ${field.maxItems} of them`;
    case 'optional-string':
      return 'a string';
    case 'section':
      return `a mapping with keys ${Object.keys(field.fields).join(', ')}`;
  }
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'string') return `"${value.length > 40 ? `${value.slice(0, 40)}…` : value}"`;
  if (typeof value === 'object') return 'a mapping';
  return String(value);
}

/** Closest key by edit distance, for "did you mean" hints on typos. */
function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0] ?? 0;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const temp = row[j] ?? 0;
      row[j] = Math.min((row[j] ?? 0) + 1, (row[j - 1] ?? 0) + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = temp;
    }
  }
  return row[b.length] ?? 0;
}

/** Coerces a value from the environment (always a string) to the field's type. */
export function coerceEnv(field: Field, raw: string): unknown {
  switch (field.type) {
    case 'int':
      return /^-?\d+$/.test(raw.trim()) ? Number(raw.trim()) : raw;
    case 'bool':
      return raw === 'true' || raw === '1' ? true : raw === 'false' || raw === '0' ? false : raw;
    case 'string-list':
      return raw.split(',').map((item) => item.trim());
    default:
      return raw;
  }
}

/**
 * Validates `input` against `schema`, filling defaults. Returns the value and every problem found
 * (not just the first), so one run of the agent shows everything to fix.
 */
export function validateSection(
  schema: SectionField,
  input: unknown,
  path: readonly string[],
  sourceOf: (path: readonly string[]) => string,
  problems: ConfigProblem[],
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const here = path.join('.') || '(top level)';
  let record: Record<string, unknown> = {};
  if (input === undefined || input === null) {
    record = {};
  } else if (typeof input !== 'object' || Array.isArray(input)) {
    problems.push({
      field: here,
      source: sourceOf(path),
      problem: `is ${describe(input)}`,
      allowed: allowedText(schema),
    });
  } else {
    record = input as Record<string, unknown>;
  }
  const known = Object.keys(schema.fields);
  for (const key of Object.keys(record)) {
    if (!known.includes(key)) {
      const hint = closest(key, known);
      problems.push({
        // An empty or blank key is shown quoted, so the problem still names something.
        field: [...path, key.trim() === '' ? JSON.stringify(key) : key].join('.'),
        source: sourceOf([...path, key]),
        problem: `is not a known option${hint ? ` (did you mean ${[...path, hint].join('.')}?)` : ''}`,
        allowed: `keys of ${here}: ${known.join(', ')}`,
      });
    }
  }
  for (const [key, field] of Object.entries(schema.fields) as [string, Field][]) {
    const fieldPath = [...path, key];
    const value = record[key];
    if (field.type === 'section') {
      out[key] = validateSection(field, value, fieldPath, sourceOf, problems);
      continue;
    }
    if (value === undefined || value === null) {
      out[key] = field.default;
      continue;
    }
    const problem =
      field.type === 'optional-string' && field.secret ? checkSecret(value) : checkLeaf(field, value);
    if (problem === undefined) {
      out[key] = field.type === 'string-list' && typeof value === 'string' ? [value] : value;
    } else {
      problems.push({
        field: fieldPath.join('.'),
        source: sourceOf(fieldPath),
        problem,
        allowed: allowedText(field),
      });
      out[key] = field.default;
    }
  }
  return out;
}

/** Like checkLeaf for an optional string, without ever quoting the value. */
function checkSecret(value: unknown): string | undefined {
  return typeof value === 'string' && value.length > 0 ? undefined : 'is not a non-empty string';
}

/** A copy of a validated config with every secret field masked, for printing. */
export function maskSecrets(schema: SectionField, value: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) {
    const field = schema.fields[key] as Field | undefined;
    if (field?.type === 'section' && typeof v === 'object' && v !== null) {
      out[key] = maskSecrets(field, v as Record<string, unknown>);
    } else if (field?.type === 'optional-string' && field.secret && v !== undefined) {
      out[key] = SECRET_MASK;
    } else {
      out[key] = v;
    }
  }
  return out;
}

export const SECRET_MASK = '(set; not shown)';

function checkLeaf(field: Exclude<Field, SectionField>, value: unknown): string | undefined {
  switch (field.type) {
    case 'int':
      if (typeof value !== 'number' || !Number.isInteger(value))
        return `is ${describe(value)}, not an integer`;
      if (value < field.min || value > field.max) return `is ${value}, out of range`;
      return undefined;
    case 'bool':
      return typeof value === 'boolean' ? undefined : `is ${describe(value)}, not true or false`;
    case 'enum':
      return typeof value === 'string' && field.values.includes(value) ? undefined : `is ${describe(value)}`;
    case 'string-list': {
      const items: unknown[] = Array.isArray(value) ? value : [value];
      if (items.length === 0 || items.length > field.maxItems)
        return `is a list of ${items.length}, not 1 to ${field.maxItems}`;
      for (const item of items) {
        if (typeof item !== 'string' || !field.pattern.test(item)) return `has ${describe(item)}`;
      }
      return undefined;
    }
    case 'string':
    case 'optional-string':
      if (typeof value !== 'string' || value.length === 0)
        return `is ${describe(value)}, not a non-empty string`;
      if (field.type === 'string' && field.pattern && !field.pattern.test(value))
        return `is ${describe(value)}`;
      return undefined;
  }
}

/** Every leaf path of the schema, for env overrides and the example config. */
export function leafPaths(schema: SectionField, path: readonly string[] = []): [readonly string[], Field][] {
  const out: [readonly string[], Field][] = [];
  for (const [key, field] of Object.entries(schema.fields) as [string, Field][]) {
    if (field.type === 'section') out.push(...leafPaths(field, [...path, key]));
    else out.push([[...path, key], field]);
  }
  return out;
}
