/**
 * The audit log's chain on disk, its head anchor, and `verifyAuditLog` (see audit-log.ts for the
 * writer, docs/storage.md "Corruption, detection and repair" for the why).
 *
 * A hash chain shows an edited or removed record in the middle, but not a record removed at
 * the END (the shorter chain is still a valid chain), nor files removed at the start or all of
 * them. So the writer keeps the chain's HEAD (seq and hash of the last durable record) in two
 * small files beside the audit directory, `<dir>.head` and `<dir>.mirror.head`, each one
 * checksummed line replaced atomically, written shortly after each batch of records is durable
 * (never ahead of the disk) and at rotation and close. They also name what ROTATION removed on
 * purpose (`rotated`: the last seq deleted, its hash, and how many files and records), so the
 * oldest remaining record must follow exactly that, and deleting more than policy did shows.
 *
 * When the writer finds damage at open (a record missing at the end, a damaged last record,
 * files missing at the start, an anchor missing or damaged), it records it in the chain itself:
 * an `audit.damage` record (code audit_chain_broken) that continues the chain after the loss.
 * `verifyAuditLog` fails for every break, recorded or not, until an `audit.repair` record
 * (`vehicle-agent state repair`) acknowledges it; then it passes and lists what was lost.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { AgentError } from '../core/errors.js';
import { canonicalJson } from '../crypto/canonical.js';
import { readFileIfExists } from './atomic.js';
import { decodeChecksummedJson, encodeChecksummedJson } from './checksummed.js';
import { errnoOf, ioError } from './fs-util.js';

export interface AuditRecord {
  readonly seq: number;
  readonly ts: string;
  readonly type: string;
  readonly prev: string;
  readonly hash: string;
  readonly [field: string]: unknown;
}

export const GENESIS_PREV = '0'.repeat(64);
/** Record types the log writes about itself. */
export const AUDIT_DAMAGE_TYPE = 'audit.damage';
export const AUDIT_REPAIR_TYPE = 'audit.repair';
export const AUDIT_ANCHORED_TYPE = 'audit.anchored';

const FILE_PATTERN = /^audit-(\d{12,})\.jsonl$/;
const HASH_PATTERN = /^[0-9a-f]{64}$/;

export function auditFileName(firstSeq: number): string {
  return `audit-${String(firstSeq).padStart(12, '0')}.jsonl`;
}

/** hex(SHA-256(prev ‖ canonicalJson(body))); body is the record without prev and hash. */
export function hashAuditRecord(prev: string, body: Readonly<Record<string, unknown>>): string {
  return createHash('sha256')
    .update(prev + canonicalJson(body), 'utf8')
    .digest('hex');
}

export interface AuditFile {
  readonly name: string;
  readonly firstSeq: number;
}

export async function listAuditFiles(dir: string): Promise<AuditFile[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw ioError(err, dir, 'list');
  }
  const files: AuditFile[] = [];
  for (const name of names) {
    const match = FILE_PATTERN.exec(name);
    if (match?.[1] !== undefined) files.push({ name, firstSeq: Number(match[1]) });
  }
  return files.sort((a, b) => a.firstSeq - b.firstSeq);
}

export async function readAuditFile(path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    throw ioError(err, path, 'read');
  }
}

/** Decodes and self-checks one line; throws with the problem. Links are not checked here. */
export function decodeAuditLine(line: Buffer): AuditRecord {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line.toString('utf8'));
  } catch {
    throw new AgentError('state_corrupt', 'not valid JSON');
  }
  const shape = checkShape(parsed);
  if (typeof shape === 'string') throw new AgentError('state_corrupt', shape);
  const { prev, hash, ...body } = shape;
  if (hashAuditRecord(prev, body) !== hash) throw new AgentError('state_corrupt', 'hash mismatch');
  return shape;
}

/** The record typed, or what is wrong with its shape. */
function checkShape(value: unknown): AuditRecord | string {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    return 'the record is not an object';
  const record = value as Record<string, unknown>;
  if (typeof record.seq !== 'number' || !Number.isSafeInteger(record.seq) || record.seq < 1)
    return 'seq is not a positive integer';
  if (typeof record.ts !== 'string') return 'ts is not a string';
  if (typeof record.type !== 'string') return 'type is not a string';
  if (typeof record.prev !== 'string' || !HASH_PATTERN.test(record.prev))
    return 'prev is not a SHA-256 hex digest';
  if (typeof record.hash !== 'string' || !HASH_PATTERN.test(record.hash))
    return 'hash is not a SHA-256 hex digest';
  return record as AuditRecord;
}

/** The seq a damaged line still claims, if its JSON parses. */
export function salvageSeq(line: Buffer): number | undefined {
  try {
    const seq = (JSON.parse(line.toString('utf8')) as { seq?: unknown } | null)?.seq;
    return typeof seq === 'number' && Number.isSafeInteger(seq) && seq > 0 ? seq : undefined;
  } catch {
    return undefined;
  }
}

// ── head anchor ────────────────────────────────────────────────────────────────

export interface AnchorHead {
  readonly seq: number;
  readonly hash: string;
}

/** What rotation deleted on purpose, cumulatively. */
export interface AnchorRotated {
  /** The last seq deleted: the oldest kept record must be throughSeq + 1. */
  readonly throughSeq: number;
  /** Its hash (the oldest kept record's prev), when it could be read. */
  readonly hash: string | null;
  readonly files: number;
  readonly records: number;
  /** Records deleted that a reader (the outbox) still needed, because of the hard cap. */
  readonly unsentRecords: number;
}

export interface Anchor {
  readonly head: AnchorHead | null;
  readonly rotated: AnchorRotated | null;
}

const ANCHOR_FORMAT = 'audit-head/1';

/** `<dir>.head` and `<dir>.mirror.head`: beside the directory, so removing it does not remove them. */
export function anchorPaths(dir: string): readonly [string, string] {
  const base = dir.replace(/\/+$/, '');
  return [`${base}.head`, `${base}.mirror.head`];
}

export function encodeAnchor(anchor: Anchor): Buffer {
  return encodeChecksummedJson({ format: ANCHOR_FORMAT, ...anchor });
}

export type AnchorRead =
  | { readonly state: 'ok'; readonly anchor: Anchor; readonly bytes: Buffer }
  | { readonly state: 'missing' }
  | { readonly state: 'damaged'; readonly problem: string; readonly bytes: Buffer };

function isHead(v: unknown): v is AnchorHead {
  const h = v as Partial<AnchorHead> | null;
  return (
    typeof h === 'object' &&
    h !== null &&
    Number.isSafeInteger(h.seq) &&
    (h.seq ?? 0) >= 1 &&
    typeof h.hash === 'string' &&
    HASH_PATTERN.test(h.hash)
  );
}

function isRotated(v: unknown): v is AnchorRotated {
  const r = v as Partial<AnchorRotated> | null;
  return (
    typeof r === 'object' &&
    r !== null &&
    Number.isSafeInteger(r.throughSeq) &&
    (r.hash === null || (typeof r.hash === 'string' && HASH_PATTERN.test(r.hash))) &&
    Number.isSafeInteger(r.files) &&
    Number.isSafeInteger(r.records) &&
    Number.isSafeInteger(r.unsentRecords)
  );
}

export function decodeAnchor(bytes: Buffer): Anchor {
  const value = decodeChecksummedJson(bytes) as {
    format?: unknown;
    head?: unknown;
    rotated?: unknown;
  } | null;
  if (typeof value !== 'object' || value === null) throw new Error('not an object');
  if (value.format !== ANCHOR_FORMAT) throw new Error(`format is not ${ANCHOR_FORMAT}`);
  if (value.head !== null && !isHead(value.head)) throw new Error('head is not {seq, hash}');
  if (value.rotated !== null && !isRotated(value.rotated)) throw new Error('rotated is malformed');
  return { head: value.head, rotated: value.rotated };
}

export async function readAnchor(path: string): Promise<AnchorRead> {
  const bytes = await readFileIfExists(path);
  if (bytes === undefined) return { state: 'missing' };
  try {
    return { state: 'ok', anchor: decodeAnchor(bytes), bytes };
  } catch (err) {
    return { state: 'damaged', problem: err instanceof Error ? err.message : String(err), bytes };
  }
}

export interface AnchorProblem {
  readonly file: string;
  readonly problem: string;
}

export interface ChosenAnchor {
  /** The newer of the readable copies, if any. */
  readonly anchor: Anchor | undefined;
  /** Copies missing or damaged while the other is not (or both damaged). */
  readonly problems: readonly AnchorProblem[];
  /** Neither copy exists (a new log, or one from before anchors). */
  readonly none: boolean;
}

function anchorOrder(a: Anchor): number {
  return Math.max(a.head?.seq ?? 0, a.rotated?.throughSeq ?? 0);
}

/** Reads both copies; a crash between their two writes leaves them one step apart: the newer wins. */
export async function readAnchors(dir: string): Promise<ChosenAnchor> {
  const paths = anchorPaths(dir);
  const reads = await Promise.all(paths.map((p) => readAnchor(p)));
  const ok = reads.flatMap((r) => (r.state === 'ok' ? [r.anchor] : []));
  const none = reads.every((r) => r.state === 'missing');
  const problems: AnchorProblem[] = [];
  if (!none) {
    reads.forEach((r, i) => {
      const file = paths[i] ?? '';
      if (r.state === 'damaged') problems.push({ file, problem: r.problem });
      else if (r.state === 'missing') problems.push({ file, problem: 'missing (its copy exists)' });
    });
  }
  const anchor = ok.sort((a, b) => anchorOrder(b) - anchorOrder(a))[0];
  return { anchor, problems, none };
}

// ── verify ─────────────────────────────────────────────────────────────────────

export type AuditBreakReason =
  | 'bad_json'
  | 'bad_record'
  | 'bad_hash'
  | 'prev_mismatch'
  | 'seq_gap'
  | 'file_name_mismatch'
  | 'truncated_record'
  | 'head_missing'
  | 'head_mismatch'
  | 'records_missing_at_start'
  | 'anchor_damaged'
  | 'anchor_missing'
  | 'log_missing'
  | 'damage_recorded';

export interface AuditBreak {
  readonly file: string;
  /** 1-based line in that file (0 for a break that is about the whole log). */
  readonly line: number;
  /** The seq the broken line claims, when it could be read. */
  readonly seq?: number;
  readonly reason: AuditBreakReason;
  readonly message: string;
  /** Stable id an `audit.repair` record acknowledges it by. */
  readonly id: string;
  /** Seq of the `audit.damage` record that recorded it, if one did. */
  readonly recordedBy?: number;
  /** Seq of the `audit.repair` record that acknowledged it, if one did. */
  readonly acknowledgedBy?: number;
}

interface AuditVerifyCommon {
  /** Valid records. */
  readonly records: number;
  readonly files: number;
  /** Files holding bytes set aside at recovery (`*.corrupt-*`), for a human to inspect. */
  readonly quarantined: readonly string[];
  /** Facts that are not errors (rotation, a write in progress, acknowledged losses). */
  readonly notes: readonly string[];
  /** Every break found, acknowledged ones included. */
  readonly breaks: readonly AuditBreak[];
  readonly firstSeq?: number;
  readonly lastSeq?: number;
  /** False when the oldest record's prev could not be checked (rotated away before anchors). */
  readonly oldestPrevChecked: boolean;
  /** What rotation deleted on purpose (from the anchor). */
  readonly rotated?: AnchorRotated;
}

export type AuditVerifyResult =
  | (AuditVerifyCommon & { readonly ok: true })
  | (AuditVerifyCommon & { readonly ok: false; readonly broken: AuditBreak });

function lineId(file: string, line: number, reason: string, raw: Buffer | string): string {
  const digest = createHash('sha256').update(raw).digest('hex').slice(0, 16);
  return `${file}:${line}:${reason}:${digest}`;
}

/**
 * Walks every audit file in order and checks the chain, its anchored head and what rotation
 * removed. Reads only. ok when every break is acknowledged by an `audit.repair` record.
 */
export interface VerifyOptions {
  /**
   * The agent has run on this state directory before (its trusted-time files exist), so the
   * log cannot be empty: an empty log without anchors means the whole log was removed.
   */
  readonly expectHistory?: boolean;
}

export async function verifyAuditLog(dir: string, options: VerifyOptions = {}): Promise<AuditVerifyResult> {
  // The anchors first: a record appended after this read cannot make the head look missing.
  const anchors = await readAnchors(dir);
  const anchor = anchors.anchor;
  const files = await listAuditFiles(dir);
  let quarantined: string[] = [];
  try {
    quarantined = (await readdir(dir)).filter(
      (name) => name.startsWith('audit-') && name.includes('.corrupt-'),
    );
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw ioError(err, dir, 'list');
  }
  const notes: string[] = [];
  const breaks: AuditBreak[] = [];
  /** Breaks since the last valid record: an `audit.damage` record right after them records them. */
  let open: AuditBreak[] = [];
  const acknowledged = new Map<string, number>();
  let records = 0;
  let firstSeq: number | undefined;
  let lastSeq: number | undefined;
  let lastHash: string | undefined;
  let anchoredMarker = false;
  let oldestPrevChecked = true;
  let headSeen: AuditRecord | undefined;
  const rotated = anchor?.rotated ?? undefined;
  const addBreak = (b: Omit<AuditBreak, 'id'> & { id?: string }): void => {
    const full: AuditBreak = { ...b, id: b.id ?? `${b.reason}:${b.file}:${b.line}` };
    breaks.push(full);
    open.push(full);
  };

  for (const [fileIndex, file] of files.entries()) {
    let content: Buffer;
    try {
      content = await readAuditFile(`${dir}/${file.name}`);
    } catch (err) {
      if (errnoOf((err as { cause?: unknown }).cause) === 'ENOENT') continue; // rotated meanwhile
      throw err;
    }
    const isLastFile = fileIndex === files.length - 1;
    if (content.length === 0) {
      notes.push(`${file.name} is empty`);
      continue;
    }
    let lineNo = 0;
    let offset = 0;
    let firstInFile = true;
    while (offset < content.length) {
      lineNo += 1;
      const newline = content.indexOf(0x0a, offset);
      if (newline === -1) {
        const raw = content.subarray(offset);
        offset = content.length;
        if (isLastFile) {
          notes.push(
            `${file.name} ends in a partial record (a write in progress or a crash); the agent cuts it off when it opens the log`,
          );
          break;
        }
        addBreak({
          file: file.name,
          line: lineNo,
          reason: 'truncated_record',
          message: 'the line has no end (the file was cut short)',
          id: lineId(file.name, lineNo, 'truncated_record', raw),
        });
        continue;
      }
      const raw = content.subarray(offset, newline);
      offset = newline + 1;
      let record: AuditRecord;
      try {
        record = decodeAuditLine(raw);
      } catch (err) {
        const problem = err instanceof Error ? err.message : String(err);
        const seq = salvageSeq(raw);
        const reason: AuditBreakReason =
          problem === 'not valid JSON' ? 'bad_json' : problem === 'hash mismatch' ? 'bad_hash' : 'bad_record';
        addBreak({
          file: file.name,
          line: lineNo,
          ...(seq === undefined ? {} : { seq }),
          reason,
          message:
            reason === 'bad_hash'
              ? 'the record does not match its hash (it was altered or damaged)'
              : reason === 'bad_json'
                ? 'the line is not valid JSON (damaged)'
                : problem,
          id: lineId(file.name, lineNo, reason, raw),
        });
        lastHash = undefined;
        if (seq !== undefined) lastSeq = seq;
        firstInFile = false;
        continue;
      }
      const at = { file: file.name, line: lineNo, seq: record.seq };
      if (record.type === AUDIT_DAMAGE_TYPE) {
        // Continues the chain after a loss the writer found: what came right before is recorded.
        for (const b of open) breaks[breaks.indexOf(b)] = { ...b, recordedBy: record.seq };
        const problems = Array.isArray(record.problems) ? record.problems : [];
        const described = problems
          .map((p) =>
            typeof p === 'object' && p !== null ? String((p as { message?: unknown }).message ?? '') : '',
          )
          .filter(Boolean)
          .join('; ');
        breaks.push({
          ...at,
          reason: 'damage_recorded',
          message: `the agent found the log damaged when it opened it${described ? `: ${described}` : ''}`,
          id: `seq:${record.seq}`,
        });
      } else if (lastSeq === undefined && lastHash === undefined && records === 0) {
        // The oldest record: it must follow what rotation removed (or be the first ever).
        firstSeq = record.seq;
        if (rotated !== undefined) {
          if (record.seq > rotated.throughSeq + 1) {
            addBreak({
              ...at,
              reason: 'records_missing_at_start',
              message: `the oldest record is seq ${record.seq}, but rotation removed only up to seq ${rotated.throughSeq}: records ${rotated.throughSeq + 1}..${record.seq - 1} are missing`,
              id: `records_missing_at_start:${rotated.throughSeq}:${record.seq}`,
            });
          } else if (
            record.seq === rotated.throughSeq + 1 &&
            rotated.hash !== null &&
            record.prev !== rotated.hash
          ) {
            addBreak({
              ...at,
              reason: 'prev_mismatch',
              message: `the oldest record does not follow the last one rotation removed (seq ${rotated.throughSeq})`,
            });
          }
        } else if (record.seq !== 1) {
          if (anchor !== undefined) {
            addBreak({
              ...at,
              reason: 'records_missing_at_start',
              message: `the oldest record is seq ${record.seq} and rotation removed nothing: records 1..${record.seq - 1} are missing`,
              id: `records_missing_at_start:0:${record.seq}`,
            });
          } else {
            oldestPrevChecked = false;
            notes.push(
              `the oldest remaining record is seq ${record.seq}; records before it were rotated away, so its prev cannot be checked`,
            );
          }
        } else if (record.prev !== GENESIS_PREV) {
          addBreak({ ...at, reason: 'prev_mismatch', message: 'seq 1 must have the all-zero prev' });
        }
      } else if (lastHash === undefined) {
        // Right after a damaged line: the link cannot be checked; the order still can.
        if (lastSeq !== undefined && record.seq <= lastSeq) {
          addBreak({
            ...at,
            reason: 'seq_gap',
            message: `seq ${record.seq} after seq ${lastSeq} (reordered)`,
          });
        }
      } else if (record.seq !== (lastSeq ?? 0) + 1) {
        addBreak({
          ...at,
          reason: 'seq_gap',
          message: `expected seq ${(lastSeq ?? 0) + 1} after ${lastSeq}, found ${record.seq} (records removed or reordered)`,
        });
      } else if (record.prev !== lastHash) {
        addBreak({
          ...at,
          reason: 'prev_mismatch',
          message: `prev does not match the hash of seq ${lastSeq}`,
        });
      }
      if (firstInFile && record.seq !== file.firstSeq) {
        addBreak({
          ...at,
          reason: 'file_name_mismatch',
          message: `the file is named for seq ${file.firstSeq} but starts at seq ${record.seq}`,
        });
      }
      if (
        rotated !== undefined &&
        rotated.hash !== null &&
        record.seq === rotated.throughSeq &&
        record.hash !== rotated.hash
      ) {
        addBreak({
          ...at,
          reason: 'head_mismatch',
          message: 'this record does not match the hash rotation recorded for it',
        });
      }
      if (record.type === AUDIT_REPAIR_TYPE && Array.isArray(record.acknowledged)) {
        for (const id of record.acknowledged) if (typeof id === 'string') acknowledged.set(id, record.seq);
      }
      if (record.type === AUDIT_ANCHORED_TYPE || record.type === AUDIT_DAMAGE_TYPE) anchoredMarker = true;
      if (anchor?.head && record.seq === anchor.head.seq) headSeen = record;
      firstInFile = false;
      open = [];
      records += 1;
      firstSeq ??= record.seq;
      lastSeq = record.seq;
      lastHash = record.hash;
    }
  }

  const lastName = files.at(-1)?.name ?? '(no audit files)';
  const head = anchor?.head;
  if (head) {
    if (headSeen === undefined && (lastSeq ?? 0) < head.seq) {
      addBreak({
        file: lastName,
        line: 0,
        reason: 'head_missing',
        message: `the log ends at ${lastSeq === undefined ? 'nothing' : `seq ${lastSeq}`}, but seq ${head.seq} was written: records at the end (or whole files) were removed`,
        id: `head_missing:${head.seq}:${lastSeq ?? 0}`,
      });
    } else if (headSeen === undefined || headSeen.hash !== head.hash) {
      addBreak({
        file: lastName,
        line: 0,
        reason: 'head_mismatch',
        message: `record seq ${head.seq} is not the one that was written (replaced or damaged)`,
        id: `head_mismatch:${head.seq}`,
      });
    }
  }
  for (const p of anchors.problems) {
    addBreak({
      file: p.file,
      line: 0,
      reason: 'anchor_damaged',
      message: `the head anchor is ${p.problem}`,
      id: `anchor:${p.file}:${p.problem}`,
    });
  }
  if (anchors.none && anchoredMarker) {
    addBreak({
      file: anchorPaths(dir)[0],
      line: 0,
      reason: 'anchor_missing',
      message: 'both head anchors were removed (the log had them)',
      id: 'anchor_missing',
    });
  } else if (anchors.none && records > 0) {
    notes.push('no head anchor (a log from before anchors): the agent creates it when it opens the log');
  } else if (anchors.none && records === 0 && breaks.length === 0 && options.expectHistory === true) {
    addBreak({
      file: dir,
      line: 0,
      reason: 'log_missing',
      message: 'the agent has run here, but the audit log and both its head anchors are gone',
      id: 'log_missing',
    });
  }
  if (rotated !== undefined && rotated.files > 0) {
    notes.push(
      `rotation removed ${rotated.files} file(s), ${rotated.records} record(s) through seq ${rotated.throughSeq}` +
        (rotated.unsentRecords > 0 ? `, ${rotated.unsentRecords} of them not yet sent to the cloud` : ''),
    );
  }

  const final: AuditBreak[] = breaks.map((b) => {
    const ack = acknowledged.get(b.recordedBy !== undefined ? `seq:${b.recordedBy}` : b.id);
    return ack === undefined ? b : { ...b, acknowledgedBy: ack };
  });
  for (const b of final) {
    if (b.acknowledgedBy !== undefined && b.recordedBy === undefined) {
      notes.push(`acknowledged by repair (seq ${b.acknowledgedBy}): ${b.file} line ${b.line}: ${b.message}`);
    }
  }
  // A break recorded by a damage record is resolved with it; the damage record stands for it.
  const unresolved = final.filter((b) => b.acknowledgedBy === undefined && b.recordedBy === undefined);
  const common = {
    records,
    files: files.length,
    quarantined,
    notes,
    breaks: final,
    ...(firstSeq === undefined ? {} : { firstSeq }),
    ...(lastSeq === undefined ? {} : { lastSeq }),
    oldestPrevChecked,
    ...(rotated === undefined ? {} : { rotated }),
  };
  const first = unresolved[0];
  return first === undefined ? { ok: true, ...common } : { ok: false, ...common, broken: first };
}
