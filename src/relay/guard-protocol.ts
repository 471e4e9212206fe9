import { AgentError } from '../core/errors.js';
import type { HealthState } from '../core/types.js';
import type { GpioBias, GpioLine } from './gpioset-syntax.js';
import { RELAY_CHANNELS, type RelayChannel } from './types.js';

/**
 * The line protocol between the agent and its relay guard (src/relay/guard-main.ts), one message
 * a line of ASCII, fields separated by single spaces; a free-text field comes last and holds no
 * newline. Pure: encoders, decoders that never throw on what the other side sends, and the
 * guard's deadline rule.
 *
 * agent → guard                       guard → agent
 *   on ID CHANNEL LIMIT_MS              ready PID DETAIL
 *   off ID CHANNEL                      ok ID
 *   alloff ID                           err ID MESSAGE
 *   ping ID                             level CHANNEL 0|1 WALL_MS
 *   close ID                            expired CHANNEL ON_ID HELD_MS limit|max-on|signal
 *                                       health STATE [DETAIL]
 *                                       log LEVEL {"msg":...,...fields}
 *
 * `on` energises CHANNEL and tells the guard to release it LIMIT_MS after it is on unless an
 * `off` comes first; the guard never lets it stay on past its max-on limit counted from the first
 * `on` since the channel was last off, so a later `on` (a hold extended) moves the release but
 * never past that limit. `expired` says the guard released a channel by itself, naming the `on`.
 */

export type GuardCommand =
  | { readonly type: 'on'; readonly id: number; readonly channel: RelayChannel; readonly limitMs: number }
  | { readonly type: 'off'; readonly id: number; readonly channel: RelayChannel }
  | { readonly type: 'alloff'; readonly id: number }
  | { readonly type: 'ping'; readonly id: number }
  | { readonly type: 'close'; readonly id: number };

export type ExpiryCause = 'limit' | 'max-on' | 'signal';
export type GuardLogLevel = 'debug' | 'info' | 'warn' | 'error';

export type GuardEvent =
  | { readonly type: 'ready'; readonly pid: number; readonly detail: string }
  | { readonly type: 'ok'; readonly id: number }
  | { readonly type: 'err'; readonly id: number; readonly message: string }
  | {
      readonly type: 'level';
      readonly channel: RelayChannel;
      readonly energised: boolean;
      readonly atMs: number;
    }
  | {
      readonly type: 'expired';
      readonly channel: RelayChannel;
      readonly onId: number;
      readonly heldMs: number;
      readonly cause: ExpiryCause;
    }
  | { readonly type: 'health'; readonly state: HealthState; readonly detail?: string }
  | {
      readonly type: 'log';
      readonly level: GuardLogLevel;
      readonly message: string;
      readonly fields: Readonly<Record<string, unknown>>;
    };

export type Decoded<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly reason: string };

/** Longest line either side accepts; a longer one is dropped whole (garbage or a runaway log). */
export const MAX_LINE_BYTES = 16 * 1024;
/** The longest LIMIT_MS an `on` may carry (a day); the max-on limit is far shorter in practice. */
export const MAX_LIMIT_MS = 86_400_000;

const HEALTH_STATES: readonly HealthState[] = ['ok', 'degraded', 'down', 'disabled'];
const LOG_LEVELS: readonly GuardLogLevel[] = ['debug', 'info', 'warn', 'error'];
const CAUSES: readonly ExpiryCause[] = ['limit', 'max-on', 'signal'];

/** Free text on one line: newlines and other control characters become spaces. */
function oneLine(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is replaced
  return text.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
}

export function encodeCommand(command: GuardCommand): string {
  switch (command.type) {
    case 'on':
      return `on ${command.id} ${command.channel} ${command.limitMs}\n`;
    case 'off':
      return `off ${command.id} ${command.channel}\n`;
    default:
      return `${command.type} ${command.id}\n`;
  }
}

export function encodeEvent(event: GuardEvent): string {
  switch (event.type) {
    case 'ready':
      return `ready ${event.pid} ${oneLine(event.detail)}\n`;
    case 'ok':
      return `ok ${event.id}\n`;
    case 'err':
      return `err ${event.id} ${oneLine(event.message)}\n`;
    case 'level':
      return `level ${event.channel} ${event.energised ? 1 : 0} ${event.atMs}\n`;
    case 'expired':
      return `expired ${event.channel} ${event.onId} ${event.heldMs} ${event.cause}\n`;
    case 'health':
      return `health ${event.state}${event.detail !== undefined ? ` ${oneLine(event.detail)}` : ''}\n`;
    case 'log':
      return `log ${event.level} ${JSON.stringify({ ...event.fields, msg: oneLine(event.message) })}\n`;
  }
}

const fail = (reason: string): Decoded<never> => ({ ok: false, reason });

/** A non-negative safe integer written in plain decimal digits (no sign, exponent or spaces). */
function count(token: string | undefined): number | undefined {
  if (token === undefined || !/^\d{1,15}$/.test(token)) return undefined;
  return Number(token);
}

function channelOf(token: string | undefined): RelayChannel | undefined {
  return RELAY_CHANNELS.find((c) => c === token);
}

export function decodeCommand(line: string): Decoded<GuardCommand> {
  if (line.length > MAX_LINE_BYTES) return fail('line too long');
  const [verb, idText, ...rest] = line.split(' ');
  const id = count(idText);
  if (id === undefined) return fail('missing or bad id');
  switch (verb) {
    case 'on': {
      const channel = channelOf(rest[0]);
      const limitMs = count(rest[1]);
      if (rest.length !== 2 || channel === undefined) return fail('on needs a channel and a limit');
      if (limitMs === undefined || limitMs < 1 || limitMs > MAX_LIMIT_MS) return fail('bad limit');
      return { ok: true, value: { type: 'on', id, channel, limitMs } };
    }
    case 'off': {
      const channel = channelOf(rest[0]);
      if (rest.length !== 1 || channel === undefined) return fail('off needs a channel');
      return { ok: true, value: { type: 'off', id, channel } };
    }
    case 'alloff':
    case 'ping':
    case 'close':
      if (rest.length !== 0) return fail(`${verb} takes no arguments`);
      return { ok: true, value: { type: verb, id } };
    default:
      return fail('unknown command');
  }
}

export function decodeEvent(line: string): Decoded<GuardEvent> {
  if (line.length > MAX_LINE_BYTES) return fail('line too long');
  const space = line.indexOf(' ');
  const verb = space < 0 ? line : line.slice(0, space);
  const tail = space < 0 ? '' : line.slice(space + 1);
  const words = tail === '' ? [] : tail.split(' ');
  const textAfter = (n: number): string => words.slice(n).join(' ');
  switch (verb) {
    case 'ready': {
      const pid = count(words[0]);
      if (pid === undefined) return fail('ready needs a pid');
      return { ok: true, value: { type: 'ready', pid, detail: textAfter(1) } };
    }
    case 'ok': {
      const id = count(words[0]);
      if (id === undefined || words.length !== 1) return fail('ok needs an id');
      return { ok: true, value: { type: 'ok', id } };
    }
    case 'err': {
      const id = count(words[0]);
      if (id === undefined) return fail('err needs an id');
      return { ok: true, value: { type: 'err', id, message: textAfter(1) } };
    }
    case 'level': {
      const channel = channelOf(words[0]);
      const atMs = Number(words[2]);
      if (words.length !== 3 || channel === undefined || (words[1] !== '0' && words[1] !== '1'))
        return fail('level needs a channel and 0 or 1');
      if (!/^\d{1,16}(\.\d{1,6})?$/.test(words[2] ?? '')) return fail('level needs a time');
      return { ok: true, value: { type: 'level', channel, energised: words[1] === '1', atMs } };
    }
    case 'expired': {
      const channel = channelOf(words[0]);
      const onId = count(words[1]);
      const heldMs = count(words[2]);
      const cause = CAUSES.find((c) => c === words[3]);
      if (words.length !== 4 || channel === undefined || onId === undefined || heldMs === undefined || !cause)
        return fail('expired needs a channel, an id, a time and a cause');
      return { ok: true, value: { type: 'expired', channel, onId, heldMs, cause } };
    }
    case 'health': {
      const state = HEALTH_STATES.find((s) => s === words[0]);
      if (state === undefined) return fail('unknown health state');
      const detail = textAfter(1);
      return {
        ok: true,
        value: detail === '' ? { type: 'health', state } : { type: 'health', state, detail },
      };
    }
    case 'log': {
      const level = LOG_LEVELS.find((l) => l === words[0]);
      if (level === undefined) return fail('unknown log level');
      let parsed: unknown;
      try {
        parsed = JSON.parse(textAfter(1));
      } catch {
        return fail('log fields are not JSON');
      }
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return fail('log fields');
      const { msg, ...fields } = parsed as Record<string, unknown>;
      return { ok: true, value: { type: 'log', level, message: typeof msg === 'string' ? msg : '', fields } };
    }
    default:
      return fail('unknown event');
  }
}

/**
 * Splits a byte stream into lines: feed chunks, get whole lines (without the newline). A line
 * longer than MAX_LINE_BYTES is dropped whole, up to its newline, and counted.
 */
export class LineSplitter {
  private pending = '';
  private skipping = false;
  dropped = 0;

  push(chunk: string): string[] {
    const lines: string[] = [];
    let text = this.pending + chunk;
    this.pending = '';
    for (;;) {
      const nl = text.indexOf('\n');
      if (nl < 0) break;
      const line = text.slice(0, nl);
      text = text.slice(nl + 1);
      if (this.skipping) this.skipping = false;
      else if (line.length > MAX_LINE_BYTES) this.dropped += 1;
      else lines.push(line);
    }
    if (text.length > MAX_LINE_BYTES) {
      if (!this.skipping) this.dropped += 1;
      this.skipping = true;
    } else if (!this.skipping) {
      this.pending = text;
    }
    return lines;
  }
}

/**
 * When the guard must release a channel, given the time now, when the channel was first energised
 * since it was last off (`since`), the caller's limit from now and the max-on limit: the earlier of
 * now + limit and since + max-on, and which one it is.
 */
export function releaseDeadline(args: {
  readonly now: number;
  readonly since: number;
  readonly limitMs: number;
  readonly maxOnMs: number;
}): { readonly at: number; readonly cause: 'limit' | 'max-on' } {
  const wanted = args.now + args.limitMs;
  const cap = args.since + args.maxOnMs;
  return wanted < cap ? { at: wanted, cause: 'limit' } : { at: cap, cause: 'max-on' };
}

/**
 * The LIMIT_MS the agent sends with an `on`: the time it means to release the channel after, plus
 * the guard's margin (the agent's own timer normally ends it first; the guard ends it when the
 * agent cannot), at most max-on. Without a stated time, max-on.
 */
export function guardLimitMs(releaseAfterMs: number | undefined, marginMs: number, maxOnMs: number): number {
  if (releaseAfterMs === undefined) return maxOnMs;
  return Math.max(1, Math.min(Math.round(releaseAfterMs + marginMs), maxOnMs));
}

/** What the guard process is to drive: handed to it as one JSON argument. */
export type GuardDriverSpec =
  | { readonly kind: 'sim'; readonly channels: readonly RelayChannel[] }
  | {
      readonly kind: 'gpio';
      readonly gpiosetPath: string;
      readonly consumer: string;
      readonly interactive: boolean;
      readonly channels: Partial<Readonly<Record<RelayChannel, GpioLine>>>;
    }
  | {
      readonly kind: 'lcus';
      readonly path: string;
      readonly baudRate: number;
      readonly channels: Partial<Readonly<Record<RelayChannel, number>>>;
    };

export interface GuardSpec {
  readonly maxOnMs: number;
  readonly logLevel: GuardLogLevel;
  readonly driver: GuardDriverSpec;
}

const BIASES: readonly GpioBias[] = ['pull-up', 'pull-down', 'disable'];

/** Reads the guard's spec from its JSON argument; anything unexpected is config_invalid. */
export function parseGuardSpec(json: string): GuardSpec {
  const bad = (what: string) => new AgentError('config_invalid', `relay guard spec: ${what}`);
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch {
    throw bad('not JSON');
  }
  const obj = (v: unknown, what: string): Record<string, unknown> => {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw bad(`${what} must be an object`);
    return v as Record<string, unknown>;
  };
  const int = (v: unknown, what: string, min: number, max: number): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
      throw bad(`${what} out of range`);
    return v;
  };
  const str = (v: unknown, what: string): string => {
    if (typeof v !== 'string' || v === '' || v.length > 4096) throw bad(`${what} must be a string`);
    return v;
  };
  const channelMap = <T>(
    v: unknown,
    each: (x: unknown, what: string) => T,
  ): Partial<Record<RelayChannel, T>> => {
    const map = obj(v, 'channels');
    const out: Partial<Record<RelayChannel, T>> = {};
    for (const [key, value] of Object.entries(map)) {
      const channel = channelOf(key);
      if (channel === undefined) throw bad(`unknown channel ${JSON.stringify(key).slice(0, 40)}`);
      out[channel] = each(value, `channels.${channel}`);
    }
    if (Object.keys(out).length === 0) throw bad('no channels');
    return out;
  };
  const top = obj(raw, 'spec');
  const maxOnMs = int(top.maxOnMs, 'maxOnMs', 1, MAX_LIMIT_MS);
  const logLevel = LOG_LEVELS.find((l) => l === top.logLevel);
  if (logLevel === undefined) throw bad('logLevel');
  const d = obj(top.driver, 'driver');
  let driver: GuardDriverSpec;
  switch (d.kind) {
    case 'sim': {
      if (!Array.isArray(d.channels) || d.channels.length === 0) throw bad('sim channels');
      const channels = d.channels.map((c) => {
        const channel = channelOf(typeof c === 'string' ? c : undefined);
        if (channel === undefined) throw bad('sim channels');
        return channel;
      });
      driver = { kind: 'sim', channels: [...new Set(channels)] };
      break;
    }
    case 'gpio': {
      if (typeof d.interactive !== 'boolean') throw bad('gpio interactive');
      driver = {
        kind: 'gpio',
        gpiosetPath: str(d.gpiosetPath, 'gpiosetPath'),
        consumer: str(d.consumer, 'consumer'),
        interactive: d.interactive,
        channels: channelMap(d.channels, (v, what) => {
          const line = obj(v, what);
          if (typeof line.activeLow !== 'boolean') throw bad(`${what}.activeLow`);
          const bias = BIASES.find((b) => b === line.bias);
          if (line.bias !== undefined && bias === undefined) throw bad(`${what}.bias`);
          return {
            chip: str(line.chip, `${what}.chip`),
            line: int(line.line, `${what}.line`, 0, 65_535),
            activeLow: line.activeLow,
            ...(bias !== undefined ? { bias } : {}),
          };
        }),
      };
      break;
    }
    case 'lcus':
      driver = {
        kind: 'lcus',
        path: str(d.path, 'path'),
        baudRate: int(d.baudRate, 'baudRate', 1, 4_000_000),
        channels: channelMap(d.channels, (v, what) => int(v, what, 1, 255)),
      };
      break;
    default:
      throw bad('unknown driver kind');
  }
  return { maxOnMs, logLevel, driver };
}
