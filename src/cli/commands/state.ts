import { AgentError } from '../../core/errors.js';
import type { IntegrityStatus } from '../../host/state-integrity.js';
import { createLogger } from '../../logging.js';
import { describeFinding } from '../../store/integrity.js';
import { COMMON_OPTIONS, loadFor, out, parse } from '../args.js';
import { controlCall } from '../control-client.js';

export const STATE_HELP = `vehicle-agent state check [--json]
vehicle-agent state repair [--ops FILE] [--accept-loss] [--json]

check reads every state file (identity, keyring, counters, clock, cloud journals, audit log and
its head anchors) the way the agent reads them and reports, per file, what is damaged and what the
agent does about it. It changes nothing and may run beside the agent. Exit 0 when all is well,
1 when anything was found.

repair (agent stopped) rebuilds every damaged copy from its good copy, the keyring summary from
the operations, and the audit head anchors; damaged bytes are kept as <file>.corrupt-<stamp>.
--ops FILE merges keyring operations (a keyring set as the cloud publishes it, {"ops": [...]},
a JSON list, or one JWS per line); each is verified like any other, so any copy will do.
--accept-loss accepts what no copy holds: credentials denied because a record about them was
lost are judged by what is left, and audit breaks are acknowledged in the log. Exit 0 when the
state checks clean afterwards.`;

export async function state(argv: readonly string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values } = parse(rest, {
    ...COMMON_OPTIONS,
    ops: { type: 'string' },
    'accept-loss': { type: 'boolean' },
  });
  const loaded = loadFor(values);
  const { checkState, repairState } = await import('../../store/state-check.js');
  if (sub === 'check') {
    if (values.ops !== undefined || values['accept-loss'])
      throw new AgentError('bad_arguments', '--ops and --accept-loss belong to state repair');
    const result = await checkState(loaded.stateDir);
    let agent: IntegrityStatus | undefined;
    try {
      agent = await controlCall(loaded.socketPath, 'state.findings', {});
    } catch (err) {
      if (
        !(err instanceof AgentError) ||
        (err.code !== 'control_unavailable' && err.code !== 'unknown_command')
      )
        throw err;
    }
    if (values.json) {
      out(JSON.stringify({ ...result, ...(agent ? { agent } : {}) }));
    } else {
      printCheck(result);
      if (agent !== undefined) {
        out(
          `running agent: ${agent.state}${agent.denied.length > 0 ? `, ${agent.denied.length} denied` : ''}`,
        );
        for (const f of agent.findings) out(`  at start: ${describeFinding(f)}`);
      }
    }
    return result.ok ? 0 : 1;
  }
  if (sub === 'repair') {
    const log = createLogger({ level: 'warn', format: 'auto', stream: process.stderr });
    const result = await repairState(loaded.stateDir, {
      ...(values.ops === undefined ? {} : { opsFile: values.ops }),
      acceptLoss: values['accept-loss'] === true,
      log,
    });
    if (values.json) {
      out(JSON.stringify(result));
    } else {
      out(`before: ${result.before.findings.length} finding(s)`);
      for (const a of result.actions) out(`  ${a}`);
      out('after:');
      printCheck(result.after);
    }
    return result.after.ok ? 0 : 1;
  }
  throw new AgentError('bad_arguments', `state needs check or repair\n\n${STATE_HELP}`);
}

function printCheck(
  result: Awaited<ReturnType<typeof import('../../store/state-check.js').checkState>>,
): void {
  if (result.ok) out('state ok: every file reads clean');
  else out(`found ${result.findings.length} problem(s), each with what the agent does about it:`);
  for (const f of result.findings) out(`  ${describeFinding(f)}`);
  const a = result.audit;
  out(
    `audit: ${a.ok ? 'ok' : 'BROKEN'}, ${a.records} records${a.lastSeq !== undefined ? ` (seq ${a.firstSeq}..${a.lastSeq})` : ''}`,
  );
  for (const n of a.notes) out(`  note: ${n}`);
  if (result.quarantined.length > 0)
    out(`kept aside (damaged bytes, for inspection): ${result.quarantined.join(', ')}`);
}
