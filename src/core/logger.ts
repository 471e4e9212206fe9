/**
 * The logging surface every module receives (a pino child logger satisfies it). Modules never
 * create loggers of their own: main.ts sets pino up once and hands children down.
 * Convention: the first argument is an object of structured fields; errors carry `code`.
 */
export interface LogFn {
  (fields: Record<string, unknown>, message?: string): void;
  (message: string): void;
}

export interface Logger {
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  fatal: LogFn;
  child(bindings: Record<string, unknown>): Logger;
}

const noop: LogFn = () => {};

/** A logger that drops everything, for tests and pure code paths. */
export const silentLogger: Logger = {
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  fatal: noop,
  child: () => silentLogger,
};
