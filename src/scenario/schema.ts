import { isMap, isSeq, LineCounter, parseDocument } from 'yaml';
import { COMMAND_NAMES as CLOUD_COMMANDS, type CommandName as CloudCommand } from '../cloud/command.js';
import { type Code, isCode } from '../core/codes.js';
import { AgentError } from '../core/errors.js';
import { INTENTS, type Intent, LOCK_STATES, type LockState } from '../core/types.js';
import {
  APPROACH_FAULTS,
  type ApproachFault,
  EMULATOR_FAULTS,
  type EmulatorFaultName,
  MAX_CLOCK_ADVANCE_MS,
} from '../host/control-api.js';

/**
 * The scenario file format (docs/scenarios.md), parsed strictly: every unknown field, wrong type
 * or unknown value is a `scenario_invalid` error naming the step and field, so a typo in a rig's
 * scenario fails before anything is played. Pure: text in, a typed scenario out.
 */

/** The largest scenario file read (a rig's scenario is a page, not a data set). */
export const MAX_SCENARIO_BYTES = 256 * 1024;
export const MAX_STEPS = 1000;
/** The longest single wait or expectation window. */
export const MAX_WAIT_MS = 600_000;
/** How long a state expectation (lock, relay, audit, link) may take to come true unless told. */
export const DEFAULT_WITHIN_MS = 5000;

export const BROKER_ACTIONS = ['down', 'up', 'hang', 'resume'] as const;
export type BrokerAction = (typeof BROKER_ACTIONS)[number];
export const NETWORK_ACTIONS = ['down', 'up'] as const;
export type NetworkAction = (typeof NETWORK_ACTIONS)[number];
export const RELAY_EXPECTATIONS = ['pulsed', 'energised', 'released', 'untouched'] as const;
export type RelayExpectation = (typeof RELAY_EXPECTATIONS)[number];
export const LINK_STATES = ['connected', 'disconnected'] as const;
export type LinkState = (typeof LINK_STATES)[number];

/** Where the scenario's broker is and how its outages are made. */
export type ScenarioBroker =
  | {
      /** The runner starts Mosquitto itself behind a loopback port the agent connects to. */
      readonly kind: 'managed';
      readonly port: number;
      readonly prefix: string;
    }
  | {
      /** A broker the rig runs: the runner connects to it, and runs the named commands for outages. */
      readonly kind: 'external';
      readonly urls: readonly string[];
      readonly ca?: string;
      readonly cert?: string;
      readonly key?: string;
      readonly prefix: string;
      readonly commands: Readonly<
        Partial<Record<`broker ${BrokerAction}` | `network ${NetworkAction}`, string>>
      >;
    };

/** An audit record the step must have caused: fields to equal (`credential` by name or id). */
export type AuditMatch = Readonly<Record<string, string | number | boolean>>;

export interface Expectation {
  readonly granted?: boolean;
  readonly denied?: Code;
  readonly role?: string;
  /** A cloud command's result: `ok` or the refusal's code. */
  readonly result?: 'ok' | Code;
  readonly lock?: LockState;
  readonly relay?: Readonly<Record<string, RelayExpectation>>;
  readonly audit?: readonly AuditMatch[];
  readonly link?: LinkState;
  /** How long lock, relay, audit and link may take to come true. */
  readonly withinMs: number;
}

export type StepAction =
  | {
      readonly kind: 'present';
      readonly key: string;
      readonly intent: Intent;
      readonly passive: boolean;
      readonly tamper: boolean;
      readonly delayMs: number;
    }
  | { readonly kind: 'present-uid'; readonly uid: string; readonly intent: Intent }
  | {
      readonly kind: 'tap';
      readonly card: string;
      readonly slowMs?: number;
      readonly removeAfterMs?: number;
      readonly fault?: EmulatorFaultName;
      readonly cloneOf?: string;
      readonly counter?: number;
    }
  | {
      readonly kind: 'approach';
      readonly key: string;
      readonly intent: Intent;
      readonly passive: boolean;
      readonly fault?: ApproachFault;
      readonly slowMs: number;
    }
  | {
      readonly kind: 'cloud';
      readonly command: CloudCommand;
      readonly args: Readonly<Record<string, unknown>>;
      /** A demo key name or a key file (relative to the scenario file). */
      readonly key: string;
      readonly ttlS: number;
      readonly counter?: number;
      readonly timeoutMs: number;
    }
  /** The previous cloud step's signed command once more, byte for byte (a replay). */
  | { readonly kind: 'cloud-again'; readonly timeoutMs: number }
  | { readonly kind: 'broker'; readonly action: BrokerAction }
  | { readonly kind: 'network'; readonly action: NetworkAction }
  | { readonly kind: 'clock'; readonly advanceMs: number }
  | { readonly kind: 'clear-limits' }
  | { readonly kind: 'wait'; readonly ms: number }
  | { readonly kind: 'check' };

export interface Step {
  /** 1-based, as a person counts the list. */
  readonly index: number;
  readonly name: string;
  readonly action: StepAction;
  readonly expect?: Expectation;
  /** The file's line the step starts on. */
  readonly line?: number;
}

export interface Scenario {
  readonly name: string;
  readonly description?: string;
  readonly broker?: ScenarioBroker;
  readonly steps: readonly Step[];
}

/** The steps that drive the simulator (they need an agent in sim mode). */
export const SIM_STEPS: ReadonlySet<StepAction['kind']> = new Set([
  'present',
  'present-uid',
  'tap',
  'approach',
  'clock',
  'clear-limits',
]);

type Obj = Readonly<Record<string, unknown>>;

function isObj(value: unknown): value is Obj {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function oneOf<T extends string>(values: readonly T[], value: unknown): value is T {
  return values.some((v) => v === value);
}

const UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `500ms`, `2s`, `1.5m`, `8d` or a whole number of milliseconds; undefined when it is neither. */
export function parseDuration(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  if (typeof value !== 'string') return undefined;
  const m = /^\+?(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/.exec(value.trim());
  if (!m) return undefined;
  const ms = Math.round(Number(m[1]) * (UNITS[m[2] ?? ''] ?? Number.NaN));
  return Number.isSafeInteger(ms) ? ms : undefined;
}

/** Collects the problems of one step or section, with where they are. */
class Where {
  constructor(
    readonly label: string,
    readonly line: number | undefined,
  ) {}

  fail(message: string): never {
    const at = this.line === undefined ? '' : ` (line ${this.line})`;
    throw new AgentError('scenario_invalid', `${this.label}${at}: ${message}`, {
      ...(this.line === undefined ? {} : { line: this.line }),
    });
  }

  fields(obj: Obj, allowed: readonly string[], what: string): void {
    for (const k of Object.keys(obj))
      if (!allowed.includes(k)) this.fail(`${what} has no field "${k}" (allowed: ${allowed.join(', ')})`);
  }

  string(value: unknown, name: string): string {
    if (typeof value !== 'string' || value.length === 0 || value.length > 512)
      this.fail(`${name} must be a non-empty string`);
    return value;
  }

  optString(value: unknown, name: string): string | undefined {
    return value === undefined ? undefined : this.string(value, name);
  }

  bool(value: unknown, name: string, fallback: boolean): boolean {
    if (value === undefined) return fallback;
    if (typeof value !== 'boolean') this.fail(`${name} must be true or false`);
    return value;
  }

  integer(value: unknown, name: string, min: number, max: number): number | undefined {
    if (value === undefined) return undefined;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max)
      this.fail(`${name} must be a whole number ${min}..${max}`);
    return value;
  }

  duration(value: unknown, name: string, max: number): number | undefined {
    if (value === undefined) return undefined;
    const ms = parseDuration(value);
    if (ms === undefined)
      this.fail(`${name} must be a duration such as 500ms, 2s, 5m, 8d (got ${String(value)})`);
    if (ms > max) this.fail(`${name} must be at most ${max} ms`);
    return ms;
  }

  intent(value: unknown): Intent {
    if (value === undefined) return 'unlock';
    if (!oneOf(INTENTS, value)) this.fail(`intent must be one of ${INTENTS.join(', ')}`);
    return value;
  }

  code(value: unknown, name: string): Code {
    if (!isCode(value))
      this.fail(`${name} must be an error code of src/core/codes.ts (got ${String(value)})`);
    return value;
  }
}

const ACTIONS = [
  'present',
  'tap',
  'approach',
  'cloud',
  'broker',
  'network',
  'clock',
  'clear-limits',
  'wait',
] as const;

/** A step's action: its key's value as a shorthand string or a mapping of options. */
function parseAction(where: Where, key: (typeof ACTIONS)[number], value: unknown): StepAction {
  const opts: Obj = isObj(value) ? value : {};
  const shorthand = isObj(value) ? undefined : value;
  switch (key) {
    case 'present': {
      if (isObj(value) && value.uid !== undefined) {
        where.fields(opts, ['uid', 'intent'], 'present (a UID tag)');
        const uid = where.string(opts.uid, 'present.uid');
        if (!/^(?:[0-9A-Fa-f]{2}){4,10}$/.test(uid)) where.fail('present.uid must be 4 to 10 bytes of hex');
        return { kind: 'present-uid', uid, intent: where.intent(opts.intent) };
      }
      where.fields(opts, ['key', 'intent', 'passive', 'tamper', 'delay'], 'present');
      return {
        kind: 'present',
        key: where.string(shorthand ?? opts.key, 'present (a demo key name or key file)'),
        intent: where.intent(opts.intent),
        passive: where.bool(opts.passive, 'present.passive', false),
        tamper: where.bool(opts.tamper, 'present.tamper', false),
        delayMs: where.duration(opts.delay, 'present.delay', 60_000) ?? 0,
      };
    }
    case 'tap': {
      where.fields(opts, ['card', 'slow', 'remove-after', 'fault', 'clone-of', 'counter'], 'tap');
      const fault = opts.fault;
      if (fault !== undefined && !oneOf(EMULATOR_FAULTS, fault))
        where.fail(`tap.fault must be one of ${EMULATOR_FAULTS.join(', ')}`);
      const slowMs = where.duration(opts.slow, 'tap.slow', 60_000);
      const removeAfterMs = where.duration(opts['remove-after'], 'tap.remove-after', 60_000);
      const cloneOf = where.optString(opts['clone-of'], 'tap.clone-of');
      const counter = where.integer(opts.counter, 'tap.counter', 0, 0xffffffff);
      return {
        kind: 'tap',
        card: where.string(shorthand ?? opts.card, 'tap (a simulated card label)'),
        ...(slowMs === undefined ? {} : { slowMs }),
        ...(removeAfterMs === undefined ? {} : { removeAfterMs }),
        ...(fault === undefined ? {} : { fault }),
        ...(cloneOf === undefined ? {} : { cloneOf }),
        ...(counter === undefined ? {} : { counter }),
      };
    }
    case 'approach': {
      where.fields(opts, ['key', 'intent', 'passive', 'fault', 'slow'], 'approach');
      const fault = opts.fault;
      if (fault !== undefined && !oneOf(APPROACH_FAULTS, fault))
        where.fail(`approach.fault must be one of ${APPROACH_FAULTS.join(', ')}`);
      return {
        kind: 'approach',
        key: where.string(shorthand ?? opts.key, 'approach (a demo key name or key file)'),
        intent: where.intent(opts.intent),
        passive: where.bool(opts.passive, 'approach.passive', false),
        ...(fault === undefined ? {} : { fault }),
        slowMs: where.duration(opts.slow, 'approach.slow', 60_000) ?? 0,
      };
    }
    case 'cloud': {
      if (value === 'again') return { kind: 'cloud-again', timeoutMs: 15_000 };
      where.fields(opts, ['command', 'args', 'key', 'ttl', 'counter', 'timeout'], 'cloud');
      const command = shorthand ?? opts.command;
      if (!oneOf(CLOUD_COMMANDS, command))
        where.fail(`cloud must name a command: ${CLOUD_COMMANDS.join(', ')}`);
      if (opts.args !== undefined && !isObj(opts.args)) where.fail('cloud.args must be a mapping');
      const ttl = where.duration(opts.ttl, 'cloud.ttl', 86_400_000) ?? 30_000;
      if (ttl < 1000) where.fail('cloud.ttl must be at least 1s');
      const counter = where.integer(opts.counter, 'cloud.counter', 0, Number.MAX_SAFE_INTEGER);
      return {
        kind: 'cloud',
        command,
        args: isObj(opts.args) ? opts.args : {},
        key: opts.key === undefined ? 'owner' : where.string(opts.key, 'cloud.key'),
        ttlS: Math.floor(ttl / 1000),
        ...(counter === undefined ? {} : { counter }),
        timeoutMs: where.duration(opts.timeout, 'cloud.timeout', MAX_WAIT_MS) ?? 15_000,
      };
    }
    case 'broker':
      if (!oneOf(BROKER_ACTIONS, value)) where.fail(`broker must be one of ${BROKER_ACTIONS.join(', ')}`);
      return { kind: 'broker', action: value };
    case 'network':
      if (!oneOf(NETWORK_ACTIONS, value)) where.fail(`network must be one of ${NETWORK_ACTIONS.join(', ')}`);
      return { kind: 'network', action: value };
    case 'clock': {
      where.fields(opts, ['advance'], 'clock');
      const advanceMs = where.duration(shorthand ?? opts.advance, 'clock (advance)', MAX_CLOCK_ADVANCE_MS);
      if (advanceMs === undefined || advanceMs < 1)
        where.fail(
          'clock must move forward by a duration, e.g. clock: 8d (the trusted clock never goes back)',
        );
      return { kind: 'clock', advanceMs };
    }
    case 'clear-limits':
      if (value !== true && value !== null)
        where.fail('clear-limits takes no options (write clear-limits: true)');
      return { kind: 'clear-limits' };
    case 'wait': {
      const ms = where.duration(value, 'wait', MAX_WAIT_MS);
      if (ms === undefined) where.fail('wait must be a duration such as 2s');
      return { kind: 'wait', ms };
    }
  }
}

const EXPECT_FIELDS = ['granted', 'denied', 'role', 'result', 'lock', 'relay', 'audit', 'link', 'within'];

function parseExpect(where: Where, value: unknown, action: StepAction): Expectation {
  if (!isObj(value)) where.fail('expect must be a mapping');
  where.fields(value, EXPECT_FIELDS, 'expect');
  const decision =
    action.kind === 'present' ||
    action.kind === 'present-uid' ||
    action.kind === 'tap' ||
    action.kind === 'approach';
  if (!decision && (value.granted !== undefined || value.denied !== undefined || value.role !== undefined))
    where.fail('granted, denied and role are expected of a present, tap or approach step');
  if (action.kind !== 'cloud' && action.kind !== 'cloud-again' && value.result !== undefined)
    where.fail('result is expected of a cloud step');
  if (value.granted === true && value.denied !== undefined)
    where.fail('expect either granted: true or denied');
  const granted =
    value.granted === undefined ? undefined : where.bool(value.granted, 'expect.granted', false);
  const denied = value.denied === undefined ? undefined : where.code(value.denied, 'expect.denied');
  const role = where.optString(value.role, 'expect.role');
  let result: 'ok' | Code | undefined;
  if (value.result !== undefined)
    result = value.result === 'ok' ? 'ok' : where.code(value.result, 'expect.result');
  const lock = value.lock;
  if (lock !== undefined && !oneOf(LOCK_STATES, lock))
    where.fail(`expect.lock must be one of ${LOCK_STATES.join(', ')}`);
  let relay: Record<string, RelayExpectation> | undefined;
  if (value.relay !== undefined) {
    if (!isObj(value.relay) || Object.keys(value.relay).length === 0)
      where.fail('expect.relay must map channels to pulsed, energised, released or untouched');
    relay = {};
    for (const [channel, state] of Object.entries(value.relay)) {
      if (!/^[a-z][a-z0-9_-]{0,31}$/.test(channel))
        where.fail(`expect.relay: "${channel}" is not a channel name`);
      if (!oneOf(RELAY_EXPECTATIONS, state))
        where.fail(`expect.relay.${channel} must be one of ${RELAY_EXPECTATIONS.join(', ')}`);
      relay[channel] = state;
    }
  }
  let audit: AuditMatch[] | undefined;
  if (value.audit !== undefined) {
    const list: unknown[] = Array.isArray(value.audit) ? value.audit : [value.audit];
    if (list.length === 0 || list.length > 20) where.fail('expect.audit must be 1 to 20 records');
    audit = list.map((record, i) => {
      if (!isObj(record) || Object.keys(record).length === 0)
        where.fail(`expect.audit[${i}] must be a mapping of fields to values`);
      for (const [field, v] of Object.entries(record)) {
        if (!['string', 'number', 'boolean'].includes(typeof v))
          where.fail(`expect.audit[${i}].${field} must be a string, number or boolean`);
      }
      return record as AuditMatch;
    });
  }
  const link = value.link;
  if (link !== undefined && !oneOf(LINK_STATES, link))
    where.fail(`expect.link must be one of ${LINK_STATES.join(', ')}`);
  return {
    ...(granted === undefined ? {} : { granted }),
    ...(denied === undefined ? {} : { denied }),
    ...(role === undefined ? {} : { role }),
    ...(result === undefined ? {} : { result }),
    ...(lock === undefined ? {} : { lock }),
    ...(relay === undefined ? {} : { relay }),
    ...(audit === undefined ? {} : { audit }),
    ...(link === undefined ? {} : { link }),
    withinMs: where.duration(value.within, 'expect.within', MAX_WAIT_MS) ?? DEFAULT_WITHIN_MS,
  };
}

function parseStep(raw: unknown, index: number, line: number | undefined): Step {
  const where: Where = new Where(`step ${index}`, line);
  if (!isObj(raw)) where.fail('a step must be a mapping such as {tap: ntag-driver, expect: {granted: true}}');
  const actions = ACTIONS.filter((a) => raw[a] !== undefined);
  where.fields(raw, [...ACTIONS, 'expect', 'name'], 'a step');
  if (actions.length > 1) where.fail(`a step does one thing; this one has ${actions.join(' and ')}`);
  const key = actions[0];
  if (key === undefined && raw.expect === undefined)
    where.fail(`a step needs one of ${ACTIONS.join(', ')}, or expect`);
  const action: StepAction = key === undefined ? { kind: 'check' } : parseAction(where, key, raw[key]);
  const name = raw.name === undefined ? describeAction(action) : where.string(raw.name, 'name');
  const expect = raw.expect === undefined ? undefined : parseExpect(where, raw.expect, action);
  return {
    index,
    name,
    action,
    ...(expect === undefined ? {} : { expect }),
    ...(line === undefined ? {} : { line }),
  };
}

/** A step's default name: what it does, in the file's words. */
export function describeAction(action: StepAction): string {
  switch (action.kind) {
    case 'present':
      return `present ${action.key}${action.tamper ? ' (tampered)' : ''}`;
    case 'present-uid':
      return `present UID ${action.uid}`;
    case 'tap':
      return `tap ${action.card}${action.fault ? ` (${action.fault})` : ''}`;
    case 'approach':
      return `approach ${action.key}${action.fault ? ` (${action.fault})` : ''}`;
    case 'cloud':
      return `cloud ${action.command}`;
    case 'cloud-again':
      return 'cloud: the previous command again';
    case 'broker':
      return `broker ${action.action}`;
    case 'network':
      return `network ${action.action}`;
    case 'clock':
      return `clock +${action.advanceMs} ms`;
    case 'clear-limits':
      return 'clear rate limits';
    case 'wait':
      return `wait ${action.ms} ms`;
    case 'check':
      return 'check';
  }
}

function parseBroker(raw: unknown, line: number | undefined): ScenarioBroker {
  const where: Where = new Where('broker', line);
  if (!isObj(raw)) where.fail('broker must be a mapping');
  const prefix = raw.prefix === undefined ? 'vehicle-agent' : where.string(raw.prefix, 'broker.prefix');
  if (!/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(prefix))
    where.fail('broker.prefix must be topic levels without wildcards');
  if (raw.managed !== undefined) {
    where.fields(raw, ['managed', 'prefix'], 'broker (managed)');
    if (!isObj(raw.managed)) where.fail('broker.managed must be {port: N}');
    where.fields(raw.managed, ['port'], 'broker.managed');
    const port = where.integer(raw.managed.port, 'broker.managed.port', 1024, 65535);
    if (port === undefined) where.fail('broker.managed.port is required');
    return { kind: 'managed', port, prefix };
  }
  const commandKeys = ['down', 'up', 'hang', 'resume', 'network-down', 'network-up'];
  where.fields(raw, ['url', 'ca', 'cert', 'key', 'prefix', ...commandKeys], 'broker');
  const urlList: unknown[] = Array.isArray(raw.url) ? raw.url : [raw.url];
  const urls = urlList.map((u) => where.string(u, 'broker.url'));
  for (const url of urls)
    if (!/^mqtts?:\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?\/?$/.test(url))
      where.fail(`broker.url must be mqtts://HOST[:PORT] or mqtt://HOST[:PORT] (got ${url})`);
  const commands: Partial<Record<`broker ${BrokerAction}` | `network ${NetworkAction}`, string>> = {};
  for (const action of BROKER_ACTIONS) {
    const cmd = where.optString(raw[action], `broker.${action}`);
    if (cmd !== undefined) commands[`broker ${action}`] = cmd;
  }
  for (const action of NETWORK_ACTIONS) {
    const cmd = where.optString(raw[`network-${action}`], `broker.network-${action}`);
    if (cmd !== undefined) commands[`network ${action}`] = cmd;
  }
  const ca = where.optString(raw.ca, 'broker.ca');
  const cert = where.optString(raw.cert, 'broker.cert');
  const key = where.optString(raw.key, 'broker.key');
  if ((cert === undefined) !== (key === undefined)) where.fail('broker.cert and broker.key go together');
  return {
    kind: 'external',
    urls,
    prefix,
    commands,
    ...(ca === undefined ? {} : { ca }),
    ...(cert === undefined ? {} : { cert }),
    ...(key === undefined ? {} : { key }),
  };
}

/** Parses a scenario file's text; `scenario_invalid` (with the line where known) on any problem. */
export function parseScenario(text: string): Scenario {
  const top: Where = new Where('scenario', undefined);
  if (Buffer.byteLength(text, 'utf8') > MAX_SCENARIO_BYTES)
    top.fail(`the file is larger than ${MAX_SCENARIO_BYTES} bytes`);
  const lines = new LineCounter();
  const doc = parseDocument(text, {
    lineCounter: lines,
    uniqueKeys: true,
    prettyErrors: true,
    strict: true,
  });
  const first = doc.errors[0];
  if (first !== undefined) {
    const line = first.linePos?.[0].line;
    new Where('scenario', line).fail(`not valid YAML: ${first.message.split('\n')[0]}`);
  }
  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: 50 });
  } catch (err) {
    top.fail(`not usable YAML: ${(err as Error).message}`);
  }
  if (!isObj(raw)) top.fail('the file must be a mapping with name and steps');
  top.fields(raw, ['name', 'description', 'broker', 'steps'], 'a scenario');
  const name = top.string(raw.name, 'name');
  const description = top.optString(raw.description, 'description');
  const contents = isMap(doc.contents) ? doc.contents : undefined;
  const lineOf = (node: unknown): number | undefined => {
    const range = (node as { range?: [number, number, number] } | null)?.range;
    return range === undefined ? undefined : lines.linePos(range[0]).line;
  };
  const brokerNode = contents?.get('broker', true);
  const broker = raw.broker === undefined ? undefined : parseBroker(raw.broker, lineOf(brokerNode));
  if (!Array.isArray(raw.steps) || raw.steps.length === 0) top.fail('steps must be a non-empty list');
  if (raw.steps.length > MAX_STEPS) top.fail(`a scenario has at most ${MAX_STEPS} steps`);
  const stepsNode = contents?.get('steps', true);
  const stepNodes = isSeq(stepsNode) ? stepsNode.items : [];
  const steps = raw.steps.map((s: unknown, i: number) => parseStep(s, i + 1, lineOf(stepNodes[i])));
  for (const step of steps) {
    const kind = step.action.kind;
    if (
      (kind === 'cloud' || kind === 'cloud-again' || kind === 'broker' || kind === 'network') &&
      broker === undefined
    )
      new Where(`step ${step.index}`, step.line).fail(`a ${kind} step needs the scenario's broker section`);
    if (step.expect?.link !== undefined && broker === undefined)
      new Where(`step ${step.index}`, step.line).fail("expect.link needs the scenario's broker section");
    if (broker?.kind === 'external' && (kind === 'broker' || kind === 'network')) {
      const action =
        step.action.kind === 'broker' || step.action.kind === 'network' ? step.action.action : '';
      if (broker.commands[`${kind} ${action}` as keyof typeof broker.commands] === undefined)
        new Where(`step ${step.index}`, step.line).fail(
          `${kind} ${action} needs a command in the broker section (${kind === 'broker' ? action : `network-${action}`}: ...)`,
        );
    }
  }
  return {
    name,
    ...(description === undefined ? {} : { description }),
    ...(broker === undefined ? {} : { broker }),
    steps,
  };
}
