import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { AgentError, toAgentError } from '../../core/errors.js';
import { ManagedBroker } from '../../scenario/managed-broker.js';
import { runScenario, stepLine } from '../../scenario/runner.js';
import { parseScenario, type Scenario } from '../../scenario/schema.js';
import { COMMON_OPTIONS, loadFor, out, parse } from '../args.js';
import { AgentDriver } from '../scenario-driver.js';

export const SCENARIO_HELP = `vehicle-agent scenario run FILE [--broker-port N] [--json]
vehicle-agent scenario check FILE

run plays a YAML scenario (docs/scenarios.md) against the running agent, through its control
socket: taps of named cards, phone approaches, signed cloud commands, broker and network
outages, clock jumps, waits; and checks each step's expectations (granted, denied with a code,
lock and relay state, audit records, the cloud link). Prints pass or FAIL per step.
--broker-port overrides the port of a broker the scenario has the runner start (broker.managed;
ignored by a scenario without a broker).
check only parses the file.
Exit: 0 every step passed, 1 a step failed, 2 the scenario file is not valid, 3 agent not running.`;

async function load(file: string | undefined): Promise<Scenario> {
  if (file === undefined) throw new AgentError('bad_arguments', `name a scenario file\n\n${SCENARIO_HELP}`);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new AgentError('scenario_invalid', `cannot read ${file}: ${(err as Error).message}`);
  }
  return parseScenario(text);
}

export async function scenario(argv: readonly string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'run' && sub !== 'check')
    throw new AgentError('bad_arguments', `scenario needs run or check\n\n${SCENARIO_HELP}`);
  const { values, positionals } = parse(rest, { ...COMMON_OPTIONS, 'broker-port': { type: 'string' } });
  const file = positionals[0];
  let parsed: Scenario;
  try {
    parsed = await load(file);
  } catch (err) {
    const e = toAgentError(err);
    if (e.code !== 'scenario_invalid') throw e;
    process.stderr.write(`vehicle-agent scenario: [${e.code}] ${file ?? ''}: ${e.message}\n`);
    return 2;
  }
  if (sub === 'check') {
    out(`${file}: ${parsed.name}: ${parsed.steps.length} step(s), valid`);
    return 0;
  }
  let broker = parsed.broker;
  if (values['broker-port'] !== undefined) {
    const port = Number(values['broker-port']);
    if (!Number.isInteger(port) || port < 1024 || port > 65535)
      throw new AgentError('bad_arguments', '--broker-port must be a port 1024..65535');
    // Ignored by a scenario without a broker, so one command line can play a whole folder.
    if (broker?.kind === 'external')
      throw new AgentError(
        'bad_arguments',
        '--broker-port is for a broker the runner starts (broker.managed)',
      );
    if (broker !== undefined) broker = { ...broker, port };
  }
  const loaded = loadFor(values);
  const managed = broker?.kind === 'managed' ? new ManagedBroker(broker.port) : undefined;
  try {
    if (managed !== undefined) await managed.start();
    const driver = new AgentDriver({
      socketPath: loaded.socketPath,
      stateDir: loaded.stateDir,
      baseDir: dirname(resolve(file ?? '.')),
      ...(broker === undefined ? {} : { broker }),
      ...(managed === undefined ? {} : { managed }),
    });
    // The agent must be there before any step: a missing agent is not a failed expectation.
    await driver.auditHead();
    if (!values.json) out(`scenario: ${parsed.name} (${parsed.steps.length} steps)`);
    const report = await runScenario(parsed, driver, (step) => {
      if (!values.json) out(stepLine(step));
    });
    if (values.json) out(JSON.stringify(report));
    else out(`${report.failed === 0 ? 'PASS' : 'FAIL'}: ${report.passed} passed, ${report.failed} failed`);
    return report.failed === 0 ? 0 : 1;
  } finally {
    await managed?.close();
  }
}
