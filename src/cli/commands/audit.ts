import { join } from 'node:path';
import { STATE_FILES } from '../../agent/provision.js';
import { AgentError } from '../../core/errors.js';
import { readAuditLog, verifyAuditLog } from '../../store/audit-log.js';
import { COMMON_OPTIONS, loadFor, out, parse } from '../args.js';

export const AUDIT_HELP = `vehicle-agent audit verify [--json]     walk the hash chain; report the first broken link (exit 1)
vehicle-agent audit tail [-n N] [--json]  print the last N records (default 20)`;

export async function audit(argv: readonly string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values } = parse(rest, { ...COMMON_OPTIONS, lines: { type: 'string', short: 'n', default: '20' } });
  const dir = join(loadFor(values).stateDir, STATE_FILES.audit);
  if (sub === 'verify') {
    const result = await verifyAuditLog(dir);
    if (values.json) out(JSON.stringify(result));
    else if (result.ok) {
      out(
        `audit chain ok: ${result.records} records in ${result.files} file(s)${result.lastSeq !== undefined ? `, seq ${result.firstSeq}..${result.lastSeq}` : ''}`,
      );
      for (const n of result.notes) out(`  note: ${n}`);
    } else {
      out(
        `audit chain BROKEN [audit_chain_broken] at ${result.broken.file} line ${result.broken.line}${result.broken.seq !== undefined ? ` (seq ${result.broken.seq})` : ''}: ${result.broken.reason}: ${result.broken.message}`,
      );
      out(`  ${result.records} records verified before the break`);
    }
    return result.ok ? 0 : 1;
  }
  if (sub === 'tail') {
    const n = Number(values.lines);
    if (!Number.isInteger(n) || n < 1) throw new AgentError('bad_arguments', '-n must be a positive integer');
    const records: unknown[] = [];
    for await (const r of readAuditLog(dir, 0)) {
      records.push(r);
      if (records.length > n) records.shift();
    }
    for (const r of records) out(JSON.stringify(r));
    return 0;
  }
  throw new AgentError('bad_arguments', `audit needs verify or tail\n\n${AUDIT_HELP}`);
}
