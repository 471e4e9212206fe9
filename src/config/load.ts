import { closeSync, openSync, readSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { AgentError } from '../core/errors.js';
import type { Field } from './fields.js';
import { CONFIG_SCHEMA, type Config } from './schema.js';
import { type ConfigProblem, coerceEnv, envNameFor, leafPaths, validateSection } from './validate.js';

export interface LoadedConfig {
  readonly config: Config;
  /** The file read, or undefined when running on defaults (simulated hardware). */
  readonly file: string | undefined;
  /** Resolved state directory. */
  readonly stateDir: string;
  /** Resolved control socket path. */
  readonly socketPath: string;
}

export interface LoadOptions {
  /** Config file path; else $VEHICLE_AGENT_CONFIG; else none (defaults only). */
  readonly file?: string | undefined;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
}

export function formatProblems(problems: readonly ConfigProblem[]): string {
  return problems.map((p) => `  ${p.source}: ${p.field} ${p.problem}; allowed: ${p.allowed}`).join('\n');
}

/** Largest config file read; the documented example is under 20 KiB. */
export const MAX_CONFIG_BYTES = 256 * 1024;
/**
 * Aliases a config may expand (`<<: *defaults` and the like need a few); an alias bomb (a
 * "billion laughs" document) needs far more and is refused before it grows.
 */
const MAX_ALIAS_COUNT = 100;

/** Reads at most MAX_CONFIG_BYTES (a device or a runaway file must not fill the memory). */
function readCapped(file: string): string {
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    const buffer = Buffer.alloc(MAX_CONFIG_BYTES + 1);
    let size = 0;
    for (;;) {
      const n = readSync(fd, buffer, size, buffer.length - size, null);
      if (n === 0) break;
      size += n;
      if (size > MAX_CONFIG_BYTES) {
        throw new AgentError(
          'config_unreadable',
          `${file}: the config file is larger than ${MAX_CONFIG_BYTES} bytes`,
          { file, limit: MAX_CONFIG_BYTES },
        );
      }
    }
    return buffer.subarray(0, size).toString('utf8');
  } catch (err) {
    if (err instanceof AgentError) throw err;
    throw new AgentError(
      'config_unreadable',
      `${file}: cannot read the config file (${(err as Error).message})`,
      { file },
    );
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function readYaml(file: string): unknown {
  const text = readCapped(file);
  // Loaded only when there is a file to parse: the simulated default runs without it (faster start).
  const { parseDocument } = createRequire(import.meta.url)('yaml') as typeof import('yaml');
  try {
    const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true });
    if (doc.errors.length > 0) {
      const first = doc.errors[0];
      throw new AgentError(
        'config_unreadable',
        `${file}: not valid YAML: ${first?.message ?? 'parse error'}`,
        { file },
      );
    }
    return doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT }) as unknown;
  } catch (err) {
    if (err instanceof AgentError) throw err;
    // The yaml package throws plain errors for an alias bomb ("Excessive alias count") and for
    // documents nested too deep for the stack.
    const excessive = /alias/i.test((err as Error).message);
    throw new AgentError(
      'config_unreadable',
      excessive
        ? `${file}: not accepted: YAML aliases expand to more than ${MAX_ALIAS_COUNT} nodes (an alias bomb?)`
        : `${file}: not valid YAML: ${(err as Error).message}`,
      { file },
    );
  }
}

/** Writes `value` at `path` into a nested plain object, creating sections on the way. */
function setPath(target: Record<string, unknown>, path: readonly string[], value: unknown): void {
  let node = target;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) {
      const created: Record<string, unknown> = {};
      node[key] = created;
      node = created;
    } else {
      node = next as Record<string, unknown>;
    }
  }
  const last = path[path.length - 1];
  if (last !== undefined) node[last] = value;
}

/**
 * Loads, merges environment overrides (VEHICLE_AGENT_<SECTION>__<FIELD>, e.g.
 * VEHICLE_AGENT_LOCK__PULSE_MS=400) and validates. Throws one AgentError 'config_invalid' listing
 * every problem with the file or variable, the field, what was wrong and what is allowed.
 */
/** The configuration for a command line's --config and --state-dir (which beats the file and the environment). */
export function loadConfigFor(options: {
  readonly file?: string | undefined;
  readonly stateDir?: string | undefined;
}): LoadedConfig {
  if (options.stateDir === undefined) return loadConfig({ file: options.file });
  return loadConfig({
    file: options.file,
    env: { ...process.env, VEHICLE_AGENT_STATE_DIR: options.stateDir },
  });
}

export function loadConfig(options: LoadOptions = {}): LoadedConfig {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const fileOption = options.file ?? env.VEHICLE_AGENT_CONFIG;
  const file = fileOption ? resolve(cwd, fileOption) : undefined;
  const raw = file ? readYaml(file) : {};
  const input: Record<string, unknown> =
    typeof raw === 'object' && raw !== null && !Array.isArray(raw)
      ? structuredClone(raw as Record<string, unknown>)
      : {};
  const problems: ConfigProblem[] = [];
  if (
    file &&
    (typeof raw !== 'object' || raw === null || Array.isArray(raw)) &&
    raw !== undefined &&
    raw !== null
  ) {
    problems.push({
      field: '(top level)',
      source: file,
      problem: 'is not a mapping',
      allowed: 'a YAML mapping of sections',
    });
  }
  const fromEnv = new Map<string, string>();
  for (const [path, field] of leafPaths(CONFIG_SCHEMA) as [readonly string[], Field][]) {
    const name = envNameFor(path);
    const value = env[name];
    if (value !== undefined && value !== '') {
      setPath(input, path, coerceEnv(field, value));
      fromEnv.set(path.join('.'), name);
    }
  }
  const sourceOf = (path: readonly string[]) => fromEnv.get(path.join('.')) ?? file ?? 'defaults';
  const config = validateSection(CONFIG_SCHEMA, input, [], sourceOf, problems) as unknown as Config;
  problems.push(...crossFieldProblems(config, sourceOf));
  if (problems.length > 0) {
    throw new AgentError('config_invalid', `invalid configuration:\n${formatProblems(problems)}`, {
      file,
      problems,
    });
  }
  const stateDir = resolve(cwd, config.stateDir ?? env.STATE_DIRECTORY?.split(':')[0] ?? '.state');
  const socketPath = resolve(cwd, config.control.socketPath ?? `${stateDir}/control.sock`);
  return { config, file, stateDir, socketPath };
}

function crossFieldProblems(config: Config, sourceOf: (path: readonly string[]) => string): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const name = config.ble.peripheral.advertisedName;
  if (name !== undefined && !/^[\x20-\x7e]{1,8}$/.test(name)) {
    problems.push({
      field: 'ble.peripheral.advertisedName',
      source: sourceOf(['ble', 'peripheral', 'advertisedName']),
      problem: `is ${JSON.stringify(name)}: it does not fit beside the service UUID in 31 advertising bytes`,
      allowed: 'at most 8 printable ASCII characters, or unset for no name',
    });
  }
  const { lock, relay } = config;
  const longest = lock.wiring === 'pulse' ? lock.pulseMs : lock.holdMs;
  if (lock.maxOnMs <= longest) {
    const other = lock.wiring === 'pulse' ? 'pulseMs' : 'holdMs';
    problems.push({
      field: 'lock.maxOnMs',
      source: sourceOf(['lock', 'maxOnMs']),
      problem: `is ${lock.maxOnMs}, not above lock.${other} (${longest}): the watchdog would cut every grant`,
      allowed: `an integer above lock.${other}`,
    });
  }
  if (
    lock.wiring === 'pulse' &&
    relay.driver === 'lcus' &&
    relay.lcus.unlockChannel === relay.lcus.lockChannel
  ) {
    problems.push({
      field: 'relay.lcus.lockChannel',
      source: sourceOf(['relay', 'lcus', 'lockChannel']),
      problem: 'is the same channel as relay.lcus.unlockChannel',
      allowed: 'a different board channel',
    });
  }
  if (lock.wiring === 'pulse' && relay.driver === 'gpio' && relay.gpio.unlockLine === relay.gpio.lockLine) {
    problems.push({
      field: 'relay.gpio.lockLine',
      source: sourceOf(['relay', 'gpio', 'lockLine']),
      problem: 'is the same line as relay.gpio.unlockLine',
      allowed: 'a different GPIO line',
    });
  }
  return problems;
}
