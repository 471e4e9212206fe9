/**
 * The relay guard: a small process of its own, started once by the agent (src/relay/guarded.ts)
 * with `process.execPath guard-main.js SPEC`, that owns the relay outputs and times them on its
 * own event loop (src/relay/guard.ts). It speaks the line protocol of src/relay/guard-protocol.ts:
 * commands on stdin, events on stdout.
 *
 * What it must never do, whatever the agent does:
 * - block on the agent: its stdout is written without blocking and what a stopped agent does not
 *   read is queued up to a bound, then dropped (the timing never waits on a write);
 * - outlive the agent with a relay on: end of file on stdin (the kernel's word that the agent is
 *   gone, even by SIGKILL) releases everything and exits;
 * - touch the state disk: it reads no file after start, writes none, and runs in `/`.
 * SIGTERM, SIGINT and SIGHUP release every channel at once (systemd stopping the unit, an operator)
 * and the guard then waits for the agent's `close` or end of file.
 */
import { Socket } from 'node:net';
import type { LogFn, Logger } from '../core/logger.js';
import { RelayGuard } from './guard.js';
import {
  decodeCommand,
  encodeEvent,
  type GuardDriverSpec,
  type GuardEvent,
  type GuardLogLevel,
  LineSplitter,
  parseGuardSpec,
} from './guard-protocol.js';
import type { RelayDriver } from './types.js';

/** What a stopped agent has not read is kept up to this much; beyond it events are dropped. */
const OUTPUT_LIMIT_BYTES = 256 * 1024;

const out = new Socket({ fd: 1, readable: false, writable: true });
out.on('error', () => {}); // the agent gone: end of file on stdin follows
let droppedEvents = 0;
let reportArmed = false;

function reportDropped(): void {
  if (droppedEvents === 0 || out.destroyed) return;
  const dropped = droppedEvents;
  droppedEvents = 0;
  out.write(encodeEvent({ type: 'log', level: 'warn', message: 'events dropped', fields: { dropped } }));
}

function send(event: GuardEvent): void {
  if (out.destroyed) return;
  if (out.writableLength > OUTPUT_LIMIT_BYTES) {
    // Said once the agent reads again, even if no other event follows to carry it.
    if (!reportArmed) {
      reportArmed = true;
      out.once('drain', () => {
        reportArmed = false;
        reportDropped();
      });
    }
    droppedEvents += 1;
    return;
  }
  reportDropped();
  out.write(encodeEvent(event));
}

const RANK: Readonly<Record<GuardLogLevel, number>> = { debug: 0, info: 1, warn: 2, error: 3 };

/** A Logger whose records travel to the agent as `log` events (the agent logs them). */
function forwardingLogger(threshold: GuardLogLevel, bindings: Record<string, unknown> = {}): Logger {
  const at =
    (level: GuardLogLevel): LogFn =>
    (fieldsOrMessage: Record<string, unknown> | string, message?: string): void => {
      if (RANK[level] < RANK[threshold]) return;
      const fields = typeof fieldsOrMessage === 'string' ? {} : fieldsOrMessage;
      const text = typeof fieldsOrMessage === 'string' ? fieldsOrMessage : (message ?? '');
      send({ type: 'log', level, message: text, fields: { ...bindings, ...fields } });
    };
  return {
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    fatal: at('error'),
    child: (more) => forwardingLogger(threshold, { ...bindings, ...more }),
  };
}

async function createDriver(spec: GuardDriverSpec, logger: Logger): Promise<RelayDriver> {
  switch (spec.kind) {
    case 'sim': {
      const { SimRelay } = await import('./sim.js');
      return new SimRelay({ logger, channels: spec.channels });
    }
    case 'gpio': {
      const { GpioRelay } = await import('./gpio.js');
      return new GpioRelay({
        logger,
        gpiosetPath: spec.gpiosetPath,
        consumer: spec.consumer,
        interactive: spec.interactive,
        channels: spec.channels,
      });
    }
    case 'lcus': {
      const [{ LcusRelay }, { openSerialLink }] = await Promise.all([
        import('./lcus.js'),
        import('./serial-link.js'),
      ]);
      return new LcusRelay({
        logger,
        path: spec.path,
        baudRate: spec.baudRate,
        openLink: openSerialLink,
        channels: spec.channels,
      });
    }
  }
}

function fatal(message: string): never {
  process.stderr.write(`vehicle-agent relay guard: ${message}\n`);
  process.exit(1);
}

async function main(): Promise<void> {
  process.chdir('/');
  let spec: ReturnType<typeof parseGuardSpec>;
  try {
    spec = parseGuardSpec(process.argv[2] ?? '');
  } catch (err) {
    send({ type: 'err', id: 0, message: err instanceof Error ? err.message : String(err) });
    out.end(() => process.exit(2));
    return;
  }
  const logger = forwardingLogger(spec.logLevel);
  const driver = await createDriver(spec.driver, logger);
  const guard = new RelayGuard({ driver, maxOnMs: spec.maxOnMs, emit: send, logger });

  // Last resort: whatever ends this process, energised outputs are released first.
  process.on('exit', () => driver.allOffSync?.());
  const onCrash = (err: unknown) => {
    try {
      driver.allOffSync?.();
    } finally {
      fatal(err instanceof Error ? (err.stack ?? err.message) : String(err));
    }
  };
  process.on('uncaughtException', onCrash);
  process.on('unhandledRejection', onCrash);
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.on(signal, () => {
      logger.warn({ signal }, 'relay guard signalled: every relay off');
      void guard.releaseAll('signal');
    });
  }

  let finishing: Promise<void> | undefined;
  const finish = (code: number) => {
    finishing ??= guard
      .close()
      .catch(() => {})
      .then(() => new Promise<void>((resolve) => out.end(resolve)))
      .then(() => process.exit(code));
    return finishing;
  };

  // Commands are read from the start: they wait (in order) behind start-up.
  const splitter = new LineSplitter();
  let started: Promise<void> = Promise.resolve();
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk: string) => {
    for (const line of splitter.push(chunk)) {
      const decoded = decodeCommand(line);
      if (!decoded.ok) {
        logger.warn({ code: 'relay_failed', reason: decoded.reason }, 'relay guard ignored a bad command');
        continue;
      }
      const command = decoded.value;
      void started.then(async () => {
        await guard.handle(command);
        if (command.type === 'close') await finish(0);
      });
    }
  });
  // The agent is gone (or closed the pipe): everything off, then exit.
  process.stdin.on('end', () => void finish(0));
  process.stdin.on('error', () => void finish(0));

  const describe = () => {
    const gpio = driver as { dialect?: unknown; interactive?: unknown };
    const how =
      spec.driver.kind !== 'gpio'
        ? spec.driver.kind
        : `gpio (gpioset ${String(gpio.dialect)}.x, ${gpio.interactive === true ? 'interactive: one holder per line' : 'a holder per level'})`;
    return `${how}, max-on ${spec.maxOnMs} ms`;
  };
  started = guard.start(process.pid, describe).catch((err: unknown) => {
    send({ type: 'err', id: 0, message: err instanceof Error ? err.message : String(err) });
    void finish(1);
    throw err;
  });
  await started.catch(() => {});
}

void main().catch((err: unknown) => fatal(err instanceof Error ? (err.stack ?? err.message) : String(err)));
