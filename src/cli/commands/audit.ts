import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { AgentError } from '../../core/errors.js';
import { readAuditLog, verifyAuditLog } from '../../store/audit-log.js';
import { STATE_FILES } from '../../store/provision.js';
import { COMMON_OPTIONS, loadFor, out, parse } from '../args.js';

export const AUDIT_HELP = `vehicle-agent audit verify [--json]     walk the hash chain and check its anchored head; report breaks (exit 1)
vehicle-agent audit tail [-n N] [--json]  print the last N records (default 20), one line each; --json: a JSON array`;

export async function audit(argv: readonly string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values } = parse(rest, { ...COMMON_OPTIONS, lines: { type: 'string', short: 'n', default: '20' } });
  const stateDir = loadFor(values).stateDir;
  const dir = join(stateDir, STATE_FILES.audit);
  if (sub === 'verify') {
    // The agent has run here if its trusted-time floor exists: then the log cannot be empty.
    const expectHistory = [STATE_FILES.clock, STATE_FILES.clockMirror].some((f) =>
      existsSync(join(stateDir, f)),
    );
    const result = await verifyAuditLog(dir, { expectHistory });
    if (values.json) out(JSON.stringify(result));
    else if (result.ok) {
      out(
        `audit chain ok: ${result.records} records in ${result.files} file(s)${result.lastSeq !== undefined ? `, seq ${result.firstSeq}..${result.lastSeq}` : ''}`,
      );
      for (const n of result.notes) out(`  note: ${n}`);
    } else {
      const b = result.broken;
      const where =
        b.line > 0 ? `${b.file} line ${b.line}${b.seq !== undefined ? ` (seq ${b.seq})` : ''}` : b.file;
      out(`audit chain BROKEN [audit_chain_broken] at ${where}: ${b.reason}: ${b.message}`);
      const more = result.breaks.filter(
        (x) => x !== b && x.acknowledgedBy === undefined && x.recordedBy === undefined,
      );
      for (const x of more.slice(0, 20)) {
        out(`  also: ${x.line > 0 ? `${x.file} line ${x.line}` : x.file}: ${x.reason}: ${x.message}`);
      }
      out(
        `  ${result.records} valid records; \`vehicle-agent state repair --accept-loss\` acknowledges what cannot be rebuilt`,
      );
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
    if (values.json) out(JSON.stringify(records));
    else for (const r of records) out(describeRecord(r));
    return 0;
  }
  throw new AgentError('bad_arguments', `audit needs verify or tail\n\n${AUDIT_HELP}`);
}

/** One line per record for a terminal: sequence, time, type, then its other fields as key=value. */
function describeRecord(record: unknown): string {
  if (typeof record !== 'object' || record === null) return String(record);
  const { seq, ts, type, prev: _prev, hash: _hash, ...rest } = record as Record<string, unknown>;
  const fields = Object.entries(rest).map(
    ([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`,
  );
  return [`#${String(seq)}`, String(ts), String(type), ...fields].join('  ');
}
