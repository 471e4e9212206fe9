import { type ParseArgsConfig, parseArgs } from 'node:util';
import { type LoadedConfig, loadConfigFor } from '../config/load.js';
import { AgentError } from '../core/errors.js';

type Options = NonNullable<ParseArgsConfig['options']>;

/** Options every command that touches the agent's state accepts. */
export const COMMON_OPTIONS = {
  config: { type: 'string', short: 'c' },
  'state-dir': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies Options;

export interface Parsed<V> {
  readonly values: V;
  readonly positionals: string[];
}

/** util.parseArgs with errors turned into coded AgentErrors. */
export function parse<O extends Options>(argv: readonly string[], options: O, allowPositionals = true) {
  try {
    return parseArgs({ args: [...argv], options, allowPositionals, strict: true });
  } catch (err) {
    throw new AgentError('bad_arguments', (err as Error).message);
  }
}

export function loadFor(values: {
  config?: string | undefined;
  'state-dir'?: string | undefined;
}): LoadedConfig {
  return loadConfigFor({ file: values.config, stateDir: values['state-dir'] });
}

export function requireString(value: string | undefined, name: string): string {
  if (value === undefined || value === '') throw new AgentError('bad_arguments', `--${name} is required`);
  return value;
}

/** Parses an ISO 8601 date-time or a relative duration like +2h, +7d. */
export function parseTime(text: string, name: string, now = Date.now()): number {
  const rel = /^\+(\d+)([smhd])$/.exec(text);
  if (rel) {
    const unit = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[rel[2] as 's' | 'm' | 'h' | 'd'];
    return now + Number(rel[1]) * unit;
  }
  const ms = Date.parse(text);
  if (Number.isNaN(ms) || !/\d{4}-\d{2}-\d{2}/.test(text)) {
    throw new AgentError(
      'bad_arguments',
      `--${name} must be an ISO 8601 date-time (2026-12-24T18:00:00Z) or +N[smhd]`,
    );
  }
  return ms;
}

export function out(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}
