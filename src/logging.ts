import { Writable } from 'node:stream';
import { pino } from 'pino';
import type { Logger } from './core/logger.js';

/**
 * The one home of pino: JSON lines by default (journald, log shippers), a compact human format on
 * a TTY. Modules get child loggers (`log.child({ module: 'nfc' })`) and never import pino.
 */
export type LogFormat = 'auto' | 'json' | 'pretty';
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

const LEVEL_NAMES: Readonly<Record<number, string>> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO ',
  40: 'WARN ',
  50: 'ERROR',
  60: 'FATAL',
};
const LEVEL_COLOURS: Readonly<Record<number, string>> = {
  10: '90',
  20: '36',
  30: '32',
  40: '33',
  50: '31',
  60: '35',
};
const HIDDEN = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'module']);

function formatValue(value: unknown): string {
  if (typeof value === 'string') return /\s/.test(value) ? JSON.stringify(value) : value;
  return JSON.stringify(value);
}

/** Turns one pino JSON line into `12:00:01.234 INFO  module: message key=value`. */
export function prettyLine(line: string, colour: boolean): string {
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  const level = typeof record.level === 'number' ? record.level : 30;
  const time = typeof record.time === 'number' ? new Date(record.time).toISOString().slice(11, 23) : '';
  const name = LEVEL_NAMES[level] ?? String(level);
  const tag = colour ? `\x1b[${LEVEL_COLOURS[level] ?? '0'}m${name}\x1b[0m` : name;
  const module = typeof record.module === 'string' ? `${record.module}: ` : '';
  const extras = Object.entries(record)
    .filter(([k]) => !HIDDEN.has(k))
    .map(([k, v]) => `${k}=${formatValue(v)}`)
    .join(' ');
  return `${time} ${tag} ${module}${String(record.msg ?? '')}${extras ? ` ${extras}` : ''}\n`;
}

class PrettyStream extends Writable {
  private pending = '';
  constructor(
    private readonly out: NodeJS.WritableStream,
    private readonly colour: boolean,
  ) {
    super();
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, done: (error?: Error | null) => void): void {
    this.pending += chunk.toString('utf8');
    let nl = this.pending.indexOf('\n');
    while (nl >= 0) {
      this.out.write(prettyLine(this.pending.slice(0, nl), this.colour));
      this.pending = this.pending.slice(nl + 1);
      nl = this.pending.indexOf('\n');
    }
    done();
  }
}

export interface LoggerOptions {
  readonly level: LogLevel;
  readonly format: LogFormat;
  /** Defaults to stdout. */
  readonly stream?: NodeJS.WritableStream & { isTTY?: boolean };
}

/**
 * A log whose reader went away (`npm start | head`, a log shipper that died: EPIPE) must not stop
 * the agent: the door matters more than the log. The first write error is said once on stderr,
 * and later lines are dropped by the closed stream.
 */
function surviveWriteErrors(out: NodeJS.WritableStream): void {
  if ((out as { vaGuarded?: boolean }).vaGuarded) return;
  (out as { vaGuarded?: boolean }).vaGuarded = true;
  let said = false;
  out.on('error', (err: NodeJS.ErrnoException) => {
    if (said) return;
    said = true;
    try {
      process.stderr.write(
        `vehicle-agent: the log output failed [${err.code ?? 'error'}]: logging there stops; the agent goes on\n`,
      );
    } catch {
      // stderr gone too: nothing left to tell
    }
  });
}

export function createLogger(options: LoggerOptions): Logger {
  const out = options.stream ?? process.stdout;
  surviveWriteErrors(out);
  const pretty = options.format === 'pretty' || (options.format === 'auto' && out.isTTY === true);
  const destination = pretty ? new PrettyStream(out, out.isTTY === true) : out;
  return pino(
    {
      level: options.level,
      base: { pid: process.pid },
      // Keys and secrets must never reach a log, even by accident in an error object.
      redact: {
        paths: ['privateKey', 'secret', 'siteKey', 'd', '*.privateKey', '*.secret', '*.siteKey'],
        censor: '[redacted]',
      },
    },
    destination,
  ) as unknown as Logger;
}
