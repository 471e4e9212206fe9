import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { AUDIT_REPAIR_TYPE, AuditLog, type AuditVerifyResult, verifyAuditLog } from './audit-log.js';
import { inspectTrustedClock, openTrustedClock } from './clock-store.js';
import { errnoOf } from './fs-util.js';
import { acquireInstanceLock } from './instance-lock.js';
import type { IntegrityFinding } from './integrity.js';
import { COUNTER_MAP_OPTIONS, inspectJournaledMap, JournaledMap } from './journaled-map.js';
import { inspectKeyringFiles } from './keyring-store.js';
import { loadIdentity, STATE_FILES } from './provision.js';
import { openVehicleState } from './vehicle-state.js';

/**
 * `vehicle-agent state check` and `state repair` (docs/storage.md "Corruption, detection and
 * repair"): every state file the agent keeps, read the way the agent reads it at start.
 * check changes nothing and may run beside the agent; repair needs the agent stopped.
 */

const counterValue = (v: unknown): number => {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
    throw new Error('counter must be a non-negative integer');
  return v;
};

/** The journaled maps in a state directory, with the options their owners open them with. */
function maps(stateDir: string) {
  return [
    { path: join(stateDir, STATE_FILES.counters), counters: true },
    { path: join(stateDir, STATE_FILES.cloud, 'command-counters'), counters: true },
    { path: join(stateDir, STATE_FILES.cloud, 'command-results'), counters: false },
  ];
}

function mapOptions(counters: boolean) {
  return counters ? { ...COUNTER_MAP_OPTIONS, parseValue: counterValue } : {};
}

export interface StateCheck {
  /** Nothing found (acknowledged audit losses do not count). */
  readonly ok: boolean;
  /** Paths relative to the state directory. */
  readonly findings: readonly IntegrityFinding[];
  readonly audit: AuditVerifyResult;
  /** Damaged bytes set aside by earlier repairs (`*.corrupt-*`), for a human to inspect. */
  readonly quarantined: readonly string[];
}

async function quarantinedFiles(stateDir: string): Promise<string[]> {
  const found: string[] = [];
  for (const dir of [stateDir, join(stateDir, STATE_FILES.cloud), join(stateDir, STATE_FILES.audit)]) {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') continue;
      throw err;
    }
    for (const name of names) if (name.includes('.corrupt-')) found.push(relative(stateDir, join(dir, name)));
  }
  return found.sort();
}

/** Reads every state file without changing anything and reports what the agent would find. */
export async function checkState(stateDir: string): Promise<StateCheck> {
  const findings: IntegrityFinding[] = [];
  try {
    await loadIdentity(stateDir, findings, false);
  } catch (err) {
    const e = toAgentError(err);
    findings.push({
      file: String(e.details.file ?? join(stateDir, STATE_FILES.vehicle)),
      code: e.code,
      problem: e.message,
      action: e.code === 'not_provisioned' ? 'run `vehicle-agent init`' : 'the agent cannot start',
    });
  }
  findings.push(...(await inspectKeyringFiles(stateDir)).findings);
  for (const m of maps(stateDir))
    findings.push(...(await inspectJournaledMap(m.path, mapOptions(m.counters))).findings);
  const clock = await inspectTrustedClock(stateDir);
  findings.push(...clock.findings);
  const auditDir = join(stateDir, STATE_FILES.audit);
  const audit = await verifyAuditLog(auditDir, { expectHistory: clock.exists });
  for (const b of audit.breaks) {
    if (b.acknowledgedBy !== undefined || b.recordedBy !== undefined) continue;
    findings.push({
      file: b.line > 0 ? join(auditDir, b.file) : b.file.startsWith('/') ? b.file : join(auditDir, b.file),
      code: 'audit_chain_broken',
      problem: `${b.line > 0 ? `line ${b.line}${b.seq === undefined ? '' : ` (seq ${b.seq})`}: ` : ''}${b.reason}: ${b.message}`,
      action:
        'history lost or altered; `vehicle-agent state repair --accept-loss` acknowledges it in the log',
    });
  }
  const relativeFindings = findings.map((f) => ({ ...f, file: relative(stateDir, f.file) || f.file }));
  return {
    ok: relativeFindings.length === 0,
    findings: relativeFindings,
    audit,
    quarantined: await quarantinedFiles(stateDir),
  };
}

export interface RepairOptions {
  /** Keyring operations to merge (the cloud's signed set): each is verified like any other. */
  readonly opsFile?: string;
  /** Accept what no copy holds: undeny suspects, acknowledge audit breaks. */
  readonly acceptLoss?: boolean;
  readonly log: Logger;
}

export interface RepairResult {
  readonly before: StateCheck;
  readonly actions: readonly string[];
  readonly after: StateCheck;
}

const MAX_OPS_FILE_BYTES = 16 * 1024 * 1024;

/** Reads keyring operations from a file: a keyring set message, {ops: [...]}, a JSON array, or one JWS per line. */
export async function readOpsFile(path: string): Promise<string[]> {
  let text: string;
  try {
    const bytes = await readFile(path);
    if (bytes.length > MAX_OPS_FILE_BYTES)
      throw new AgentError('bad_arguments', `${path} is larger than 16 MiB`);
    text = bytes.toString('utf8');
  } catch (err) {
    if (err instanceof AgentError) throw err;
    throw new AgentError('bad_arguments', `cannot read ${path}: ${(err as Error).message}`);
  }
  const trimmed = text.trim();
  if (trimmed.startsWith('{') || trimmed.startsWith('[')) {
    let value: unknown;
    try {
      value = JSON.parse(trimmed);
    } catch {
      throw new AgentError('bad_arguments', `${path} is not valid JSON`);
    }
    const ops = Array.isArray(value) ? value : (value as { ops?: unknown } | null)?.ops;
    if (!Array.isArray(ops) || !ops.every((o) => typeof o === 'string')) {
      throw new AgentError('bad_arguments', `${path} holds no list of operations ("ops": [JWS, ...])`);
    }
    return ops as string[];
  }
  return trimmed
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
}

/**
 * Rebuilds what can be rebuilt (every damaged copy from its good copy, the keyring summary from
 * the operations, audit anchors), merges verified operations from `opsFile`, and with
 * `acceptLoss` accepts what no copy holds. The agent must be stopped.
 */
export async function repairState(stateDir: string, options: RepairOptions): Promise<RepairResult> {
  const { log } = options;
  const lock = await acquireInstanceLock(stateDir, 'vehicle-agent state repair');
  try {
    const before = await checkState(stateDir);
    const actions: string[] = [];
    const ops = options.opsFile === undefined ? undefined : await readOpsFile(options.opsFile);

    const state = await openVehicleState(stateDir, log);
    try {
      await state.keyring.materializeInBackground();
      if (ops !== undefined) {
        // Stored first, then applied (as the agent does): the keyring never holds an op the disk does not.
        const prepared = state.keyring.prepare(ops);
        await state.keyringStore.persist(prepared.added);
        const result = state.keyring.apply(prepared);
        actions.push(
          `merged ${options.opsFile}: ${result.added.length} operation(s) added, ${result.duplicates} already held, ${result.rejected.length} refused`,
        );
        for (const r of result.rejected.slice(0, 10))
          actions.push(`  refused [${r.code}] #${r.index}: ${r.message}`);
      }
      // A revoke lost earlier and issued again (or merged back) explains its suspicion.
      const explained = await state.keyringStore.settleExplained();
      if (explained.length > 0)
        actions.push(`no longer suspect (their revoke is back): ${explained.join(', ')}`);
      const lost = state.keyringStore.lostCredentials();
      if (lost.size > 0 && options.acceptLoss) {
        const cleared = await state.keyringStore.acceptLoss();
        actions.push(
          `accepted the loss: ${cleared.length} credential(s) judged by the operations left: ${cleared.join(', ')}`,
        );
      } else if (lost.size > 0) {
        actions.push(
          `${lost.size} credential(s) stay denied (keyring state about them was lost): merge the cloud's operations with --ops FILE, or --accept-loss`,
        );
      }
      await state.keyringStore.compact();
    } finally {
      await state.close();
    }

    for (const m of maps(stateDir)) {
      const exists = (await inspectJournaledMap(m.path, mapOptions(m.counters))).exists;
      if (!exists) continue;
      const map = await JournaledMap.open(m.path, { ...mapOptions(m.counters), logger: log });
      try {
        if (map.suspects().size > 0 && options.acceptLoss) {
          actions.push(
            `accepted the loss in ${relative(stateDir, m.path)}: ${[...map.suspects().keys()].join(', ')}`,
          );
          await map.clearSuspects();
        } else if (map.suspects().size > 0) {
          actions.push(
            `${relative(stateDir, m.path)}: ${map.suspects().size} key(s) stay denied (lost in every copy): --accept-loss`,
          );
        }
      } finally {
        await map.close();
      }
    }

    const clock = await openTrustedClock(stateDir, log);
    await clock.close();
    const ranBefore = clock.existedBefore;

    const auditDir = join(stateDir, STATE_FILES.audit);
    await (await AuditLog.open(auditDir, { logger: log, expectHistory: ranBefore })).close();
    const verified = await verifyAuditLog(auditDir, { expectHistory: ranBefore });
    const open = verified.breaks.filter((b) => b.acknowledgedBy === undefined && b.recordedBy === undefined);
    if (open.length > 0 && options.acceptLoss) {
      const log2 = await AuditLog.open(auditDir, { logger: log });
      try {
        const record = await log2.append({
          type: AUDIT_REPAIR_TYPE,
          acknowledged: open.map((b) => b.id),
          breaks: open.map((b) => ({ file: b.file, line: b.line, reason: b.reason, message: b.message })),
        });
        actions.push(`audit: acknowledged ${open.length} break(s) in the log (seq ${record.seq})`);
      } finally {
        await log2.close();
      }
    } else if (open.length > 0) {
      actions.push(
        `audit: ${open.length} break(s) cannot be rebuilt (history is lost): --accept-loss acknowledges them in the log`,
      );
    }
    for (const f of before.findings)
      if (f.code === 'state_repaired') actions.push(`rebuilt ${f.file} (${f.problem})`);
    return { before, actions, after: await checkState(stateDir) };
  } finally {
    await lock.release();
  }
}
