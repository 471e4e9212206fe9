import { type RunningAgent, startAgent } from '../../app/start.js';
import { toAgentError } from '../../core/errors.js';
import { COMMON_OPTIONS, parse } from '../args.js';

/** `vehicle-agent start`: runs until SIGINT/SIGTERM; relays are released on every way out. */
export async function runAgentCli(argv: readonly string[]): Promise<number> {
  const { values } = parse(argv, COMMON_OPTIONS);
  // Handlers go in before start-up, so a signal that arrives while the agent starts (or right
  // after `ready`) still ends in an orderly stop with the relays released, never a default kill.
  let running: RunningAgent | undefined;
  let stopRequested: string | undefined;
  let finish: (code: number) => void = () => {};
  const finished = new Promise<number>((resolve) => {
    finish = resolve;
  });
  const stopWith = (reason: string, code: number) => {
    if (!running) {
      stopRequested ??= reason;
      return;
    }
    void running.stop(reason).then(() => finish(code));
  };
  const onSignal = (signal: NodeJS.Signals) => stopWith(signal, 0);
  const onFatal = (err: unknown) => {
    const e = toAgentError(err);
    process.stderr.write(`vehicle-agent: fatal [${e.code}] ${e.stack ?? e.message}\n`);
    setTimeout(() => process.exit(1), 5000).unref();
    if (!running) process.exit(1);
    void running.stop('fatal error').finally(() => process.exit(1));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('uncaughtException', onFatal);
  process.once('unhandledRejection', onFatal);
  try {
    running = await startAgent({ config: values.config, stateDir: values['state-dir'] });
  } catch (err) {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    throw err;
  }
  if (stopRequested !== undefined) stopWith(stopRequested, 0);
  return await finished;
}
