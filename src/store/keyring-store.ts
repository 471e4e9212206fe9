import { readFileSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { CredentialWire } from '../access/credential-wire.js';
import { credentialToWire } from '../access/credential-wire.js';
import {
  decodeTrustedOp,
  digestOfOps,
  digestOfOpsV1,
  digestWithOps,
  journalOverlay,
  type Keyring,
  type KeyringOp,
  type MergeResult,
  type OpTextSource,
  type PendingOpsSource,
  type PreparedOps,
  type StoredOp,
} from '../access/keyring.js';
import type { JournalOverlay, SnapshotCredentials } from '../access/snapshot-credentials.js';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { readFileIfExists, writeFileAtomic } from './atomic.js';
import {
  checksummedBody,
  crcHex,
  decodeChecksummedJson,
  encodeChecksummedJson,
  looksChecksummed,
} from './checksummed.js';
import { uniqueStamp } from './fs-util.js';
import type { WriteHealth } from './group-commit.js';
import { type IntegrityFinding, lineProblem } from './integrity.js';
import { type CorruptLine, decodeLine, inspectJournal, Journal, type JournalInspection } from './journal.js';
import { JournalPair } from './journal-pair.js';
import { decodeSummaryV4, encodeSummary, isSummaryV4 } from './keyring-summary.js';
import { planRecovery, type ScannedLine, scanLines, scanLinesAsync } from './line-scan.js';
import { STATE_FILES } from './provision.js';
import { rebuildFromBoth } from './salvage.js';

/**
 * The keyring on disk (docs/keyring.md "On disk", docs/storage.md "Corruption, detection and
 * repair"): every operation is kept in two files at all times, so no single damaged or deleted
 * file can lose one (and with it, say, a revoke).
 *
 * - keyring.ops and keyring.mirror.ops: every operation folded in so far, one checksummed line
 *   each, `<crc32 hex> <signer> <jws>\n`; the same bytes in both, replaced atomically.
 * - keyring.json: the summary (format 4, keyring-summary.ts): the effective credentials, the op
 *   count and the digest, checksummed. Written after both ops files, so it never names ops that
 *   are not on disk. With empty journals, start-up reads only this file and decides at once (each
 *   credential decoded on its first lookup); the ops are read, checked and decoded in the
 *   background. So it does after a kill, when both journals agree and this file shows what their
 *   ops change (journalOverlay: revokes count at once, grants once the ops are decoded).
 * - keyring.journal and keyring.mirror.journal: operations added since, one fsynced, checksummed
 *   record each, appended to both (journal.ts). Compaction folds them into the files above (when
 *   they grow, and at stop); a crash in between only leaves duplicates, which load ignores.
 *
 * Opening reads both copies of each. A torn journal tail is cut silently. Damage in one copy
 * (a bad line, a deleted file) is repaired from the other: the good copy is used, the damaged
 * one rewritten (its bytes kept as `<file>.corrupt-<stamp>`) and the repair reported
 * (`findings`, code state_repaired). An operation present in only one journal with the other
 * undamaged was never acknowledged (the agent died between the two writes): a revoke in it is
 * kept (revoking is always safe), a grant is dropped and reported. An operation damaged in BOTH
 * copies is rebuilt from the two damaged copies when their differences allow it, else it is
 * lost: the summary's revocations still stand (a revoked credential whose revoke was lost is
 * denied as `credential_suspect`); a lost journal operation whose credential cannot be told
 * makes every credential suspect until `vehicle-agent state repair`, which also merges the
 * cloud's signed operations (any verified copy of an op is as good as the original).
 * Formats 1 and 2 (before checksums and mirrors) and 3 (one JSON line, slow to parse at 100 000
 * credentials) are read and rewritten as format 4 at once.
 *
 * `persist` only appends (to both journals); the caller applies the ops to the keyring once they
 * are durable, and compaction (`compactIfDue`, after applying) writes the ops files and summary
 * from the keyring inside the journals' rewrite, keeping any journal record the keyring does not
 * hold yet. So a snapshot never holds an op whose own write failed, and a compaction never drops
 * one that was written. An op whose write failed in one journal only stays there until the next
 * compaction; if the agent stops first, the next open treats it as never acknowledged (above).
 */
interface StoredRecord {
  readonly jws: string;
  readonly signer: string;
}

interface SnapshotV3 {
  readonly format: 3;
  readonly digest: string;
  readonly opCount: number;
  /** [credential, revoked] for every credential with a grant (the root excluded). */
  readonly credentials: readonly (readonly [CredentialWire, boolean])[];
}

/** What a readable summary (format 3 or 4) says. */
interface Summary {
  readonly format: 3 | 4;
  readonly digest: string;
  readonly opCount: number;
  /** Ids of the credentials it holds revoked. */
  revoked(): string[];
  /** Format 4: the credentials, indexed (the fast path decides from these). */
  readonly credentials?: SnapshotCredentials;
  /** Format 4, when the file holds them: what a start with ops in the journal needs (keyring-summary.ts). */
  readonly owners?: ReadonlySet<string> | undefined;
  readonly sum?: string | undefined;
  readonly folded?: string | undefined;
}

type SummaryRead =
  | { readonly state: 'ok'; readonly summary: Summary }
  | {
      readonly state: 'legacy';
      readonly format: 1 | 2;
      readonly ops?: readonly StoredRecord[];
      readonly opCount?: number;
    }
  | { readonly state: 'missing' }
  | { readonly state: 'damaged'; readonly problem: string };

/**
 * Journal records that make a compaction due: at least this many, and at least an eighth of the
 * keyring, so that rewriting the whole keyring costs each op a constant share however large it is.
 */
const COMPACT_AFTER = 1000;
const COMPACT_FRACTION = 8;
/** Ops one import stores at once (the journal refuses more than 10 000 waiting writes). */
const IMPORT_CHUNK = 4096;
const LOST_REVOKE = 'revoked, but its revoke operation was lost in every copy';
const LOST_OP = 'a keyring operation about it was lost in every copy';
const LOST_UNKNOWN_OP =
  'a keyring operation was lost in every copy, and which credential it named cannot be told';
const LOST_OPS_NO_SUMMARY = 'keyring operations were lost in every copy and the summary is unreadable';

function parseRecord(value: unknown): StoredRecord {
  const r = value as Partial<StoredRecord> | null;
  if (typeof r !== 'object' || r === null || typeof r.jws !== 'string' || typeof r.signer !== 'string') {
    throw new Error('a keyring record needs jws and signer strings');
  }
  return { jws: r.jws, signer: r.signer };
}

export function keyringPaths(stateDir: string) {
  return {
    summary: join(stateDir, STATE_FILES.keyringSnapshot),
    ops: join(stateDir, STATE_FILES.keyringOps),
    opsMirror: join(stateDir, STATE_FILES.keyringOpsMirror),
    journal: join(stateDir, STATE_FILES.keyringJournal),
    journalMirror: join(stateDir, STATE_FILES.keyringJournalMirror),
    suspects: join(stateDir, STATE_FILES.keyringSuspects),
    suspectsMirror: join(stateDir, STATE_FILES.keyringSuspectsMirror),
  };
}

// ── keyring.json ───────────────────────────────────────────────────────────────

function checkCredentials(credentials: unknown): void {
  if (!Array.isArray(credentials)) throw new Error('credentials must be an array');
  for (const c of credentials as unknown[]) {
    const [wire, revoked] = Array.isArray(c) ? c : [];
    const w = wire as Partial<CredentialWire> | undefined;
    if (
      typeof w?.id !== 'string' ||
      typeof w.kind !== 'string' ||
      typeof w.role !== 'string' ||
      typeof revoked !== 'boolean'
    ) {
      throw new Error('a credential entry must be [credential, revoked]');
    }
  }
}

function decodeSummary(bytes: Buffer): SummaryRead {
  if (isSummaryV4(bytes)) {
    const { digest, opCount, credentials, owners, sum, folded } = decodeSummaryV4(bytes);
    const revoked = () => [...credentials.ids()].filter((id) => credentials.revoked(id) === true);
    return {
      state: 'ok',
      summary: { format: 4, digest, opCount, credentials, owners, sum, folded, revoked },
    };
  }
  const checksummed = looksChecksummed(bytes);
  const json = checksummed ? checksummedBody(bytes) : bytes;
  let file: Record<string, unknown>;
  try {
    // Plain toString, not a strict decoder: this file is ours, checksummed, and large.
    file = JSON.parse(json.toString('utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`not valid JSON (${(err as Error).message})`);
  }
  if (typeof file !== 'object' || file === null) throw new Error('expected an object');
  if (file.format === 3 && checksummed) {
    const { digest, credentials, opCount } = file;
    if (typeof digest !== 'string' || !Number.isSafeInteger(opCount))
      throw new Error('format 3 needs digest and opCount');
    checkCredentials(credentials);
    const v3 = file as unknown as SnapshotV3;
    const revoked = () => v3.credentials.filter(([, r]) => r).map(([w]) => w.id);
    return { state: 'ok', summary: { format: 3, digest: v3.digest, opCount: v3.opCount, revoked } };
  }
  if (file.format === 1 && !checksummed) {
    if (!Array.isArray(file.ops)) throw new Error('format 1 needs ops');
    return { state: 'legacy', format: 1, ops: (file.ops as unknown[]).map(parseRecord) };
  }
  if (file.format === 2 && !checksummed) {
    if (typeof file.digest !== 'string' || !Number.isSafeInteger(file.opCount)) {
      throw new Error('format 2 needs digest, opCount and credentials');
    }
    checkCredentials(file.credentials);
    return { state: 'legacy', format: 2, opCount: file.opCount as number };
  }
  throw new Error('format must be 4 or 3 (or 1 or 2, unchecksummed)');
}

async function readSummary(path: string): Promise<SummaryRead> {
  const bytes = await readFileIfExists(path);
  if (bytes === undefined) return { state: 'missing' };
  try {
    return decodeSummary(bytes);
  } catch (err) {
    return { state: 'damaged', problem: (err as Error).message };
  }
}

// ── keyring.ops ────────────────────────────────────────────────────────────────

function encodeOpLine(o: StoredRecord): string {
  const body = `${o.signer} ${o.jws}`;
  return `${crcHex(body)} ${body}\n`;
}

function decodeOpLine(line: Buffer): StoredRecord {
  if (line.length < 12 || line[8] !== 0x20)
    throw new AgentError('state_corrupt', 'not "<crc32> <signer> <jws>"');
  const body = line.subarray(9);
  if (crcHex(body) !== line.toString('latin1', 0, 8))
    throw new AgentError('state_corrupt', 'checksum mismatch');
  const text = body.toString('utf8');
  const space = text.indexOf(' ');
  if (space <= 0) throw new AgentError('state_corrupt', 'not "<crc32> <signer> <jws>"');
  return { signer: text.slice(0, space), jws: text.slice(space + 1) };
}

interface OpsRead {
  readonly path: string;
  readonly exists: boolean;
  readonly ops: StoredRecord[];
  /** Damaged lines; for this atomically written file an incomplete last line is damage too. */
  readonly corrupt: CorruptLine[];
}

function parseOpsBytes(path: string, bytes: Buffer | undefined): OpsRead {
  if (bytes === undefined) return { path, exists: false, ops: [], corrupt: [] };
  return opsReadOf(path, bytes, scanLines(bytes, decodeOpLine));
}

/** parseOpsBytes in slices between other work (the background read on the agent's loop). */
async function parseOpsBytesAsync(path: string, bytes: Buffer | undefined): Promise<OpsRead> {
  if (bytes === undefined) return { path, exists: false, ops: [], corrupt: [] };
  return opsReadOf(path, bytes, await scanLinesAsync(bytes, decodeOpLine));
}

function opsReadOf(path: string, bytes: Buffer, lines: readonly ScannedLine<StoredRecord>[]): OpsRead {
  const plan = planRecovery(lines, bytes.length);
  const corrupt: CorruptLine[] = plan.corrupt.map((l) => ({
    line: l.line,
    offset: l.offset,
    problem: l.problem ?? '',
    raw: bytes.subarray(l.offset, l.end - 1),
  }));
  if (plan.tornBytes > 0) {
    corrupt.push({
      line: plan.valid.length + plan.corrupt.length + 1,
      offset: plan.completeEnd,
      problem: 'incomplete last line (the file is written whole: it was cut short)',
      raw: bytes.subarray(plan.completeEnd),
    });
  }
  return { path, exists: true, ops: plan.valid.map((l) => l.value as StoredRecord), corrupt };
}

/** The id of the op a stored record holds, or undefined when it does not decode. */
/** Ops decoded between two turns of the event loop when a running agent reads them back. */
const DECODE_SLICE = 2000;
const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

function opIdOf(r: StoredRecord): string | undefined {
  try {
    return decodeTrustedOp(r.jws, r.signer).op.id;
  } catch {
    return undefined;
  }
}

interface Loss {
  /** Credentials what was lost named, when that can be trusted. */
  readonly credentials: string[];
  /** Something was lost that names nothing we can trust. */
  unknown: boolean;
}

interface OpsAnalysis {
  readonly ops: StoredRecord[];
  readonly findings: IntegrityFinding[];
  /** Copies to rewrite from `ops`. */
  readonly rewrite: string[];
  readonly lostLines: number;
}

/** Reconciles keyring.ops and its mirror (same content, same order when intact). */
function analyseOps(a: OpsRead, b: OpsRead, expected: number | undefined): OpsAnalysis {
  // Two intact, identical copies holding at least what the summary counts: nothing to reconcile.
  if (a.ops === b.ops && a.corrupt.length === 0 && (expected === undefined || a.ops.length >= expected)) {
    return { ops: a.ops, findings: [], rewrite: [], lostLines: 0 };
  }
  const findings: IntegrityFinding[] = [];
  const rewrite: string[] = [];
  const byId = new Map<string, StoredRecord>();
  const add = (r: StoredRecord) => {
    const id = opIdOf(r);
    if (id !== undefined && !byId.has(id)) byId.set(id, r);
  };
  // The intact copy first, so a repaired file comes out as it was written.
  const [first, second] =
    b.exists && b.corrupt.length === 0 && (a.corrupt.length > 0 || !a.exists) ? [b, a] : [a, b];
  for (const r of first.ops) add(r);
  for (const r of second.ops) add(r);
  const { rebuilt, lost } =
    a.corrupt.length > 0 && b.corrupt.length > 0
      ? rebuildFromBoth(a.corrupt, b.corrupt, decodeOpLine)
      : { rebuilt: [], lost: [] };
  for (const r of rebuilt) add(r);
  const ops = [...byId.values()];
  // Fewer ops than the summary counts, with no damaged line to show for it: lines were removed.
  const short = expected !== undefined && ops.length < expected && lost.length === 0;
  const lostLines = lost.length + (short ? (expected as number) - ops.length : 0);
  for (const read of [a, b]) {
    const other = read === a ? b : a;
    const problems: string[] = read.corrupt.map(lineProblem);
    if (!read.exists && other.exists) problems.push('missing');
    else if (read.exists && read.ops.length < ops.length && read.corrupt.length === 0) {
      problems.push(`${ops.length - read.ops.length} operation(s) fewer than its copy (lines removed)`);
    }
    if (problems.length === 0) continue;
    rewrite.push(read.path);
    for (const problem of problems) {
      findings.push(
        lostLines > 0
          ? {
              file: read.path,
              code: 'state_corrupt',
              problem,
              action: `${lostLines} operation(s) lost in both copies; the summary's revocations still stand`,
            }
          : { file: read.path, code: 'state_repaired', problem, action: 'rebuilt from the other copy' },
      );
    }
  }
  if (short && findings.length === 0) {
    findings.push({
      file: a.path,
      code: 'state_corrupt',
      problem: `${ops.length} operations where the summary counts ${expected}`,
      action: "lines removed from both copies; the summary's revocations still stand",
    });
  }
  return { ops, findings, rewrite, lostLines };
}

/**
 * Both copies of the ops. The common case, two identical intact files, costs one parse: equal
 * bytes beside an intact main copy are an intact mirror.
 */
function parseOpsPair(
  p: ReturnType<typeof keyringPaths>,
  main: Buffer | undefined,
  mirror: Buffer | undefined,
): [OpsRead, OpsRead] {
  const a = parseOpsBytes(p.ops, main);
  if (main !== undefined && mirror !== undefined && a.corrupt.length === 0 && main.equals(mirror)) {
    return [a, { ...a, path: p.opsMirror }];
  }
  return [a, parseOpsBytes(p.opsMirror, mirror)];
}

async function readOpsPair(stateDir: string): Promise<[OpsRead, OpsRead]> {
  const p = keyringPaths(stateDir);
  return parseOpsPair(p, await readFileIfExists(p.ops), await readFileIfExists(p.opsMirror));
}

/**
 * readOpsPair without holding the event loop for the whole parse (see scanLinesAsync): the
 * background read of a running agent's ops.
 */
async function readOpsPairInSlices(stateDir: string): Promise<[OpsRead, OpsRead]> {
  const p = keyringPaths(stateDir);
  const main = await readFileIfExists(p.ops);
  const mirror = await readFileIfExists(p.opsMirror);
  const a = await parseOpsBytesAsync(p.ops, main);
  if (main !== undefined && mirror !== undefined && a.corrupt.length === 0 && main.equals(mirror)) {
    return [a, { ...a, path: p.opsMirror }];
  }
  return [a, await parseOpsBytesAsync(p.opsMirror, mirror)];
}

function readOpsPairSync(stateDir: string): [OpsRead, OpsRead] {
  const p = keyringPaths(stateDir);
  const read = (path: string): Buffer | undefined => {
    try {
      return readFileSync(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new AgentError('state_io', `cannot read ${path}: ${(err as Error).message}`, { file: path });
    }
  };
  return parseOpsPair(p, read(p.ops), read(p.opsMirror));
}

// ── journals ───────────────────────────────────────────────────────────────────

interface JournalSide {
  readonly path: string;
  /** The file existed before this open (a missing one is created empty). */
  readonly existed: boolean;
  readonly records: readonly StoredRecord[];
  readonly corrupt: readonly CorruptLine[];
}

interface JournalAnalysis {
  readonly records: StoredRecord[];
  readonly findings: IntegrityFinding[];
  readonly rewrite: boolean;
  readonly loss: Loss;
}

/**
 * The journals' records and ops when the two copies agree: both files there, no damaged line,
 * the same records in the same order, every op decodes. Anything else is left to the full
 * reconciliation (analyseJournals), which knows what to repair, keep or drop.
 */
function agreeingJournals(
  a: JournalSide,
  b: JournalSide,
): { records: readonly StoredRecord[]; ops: KeyringOp[] } | undefined {
  if (!a.existed || !b.existed || a.corrupt.length + b.corrupt.length > 0) return undefined;
  if (a.records.length !== b.records.length) return undefined;
  const ops: KeyringOp[] = [];
  for (let i = 0; i < a.records.length; i++) {
    const ra = a.records[i] as StoredRecord;
    const rb = b.records[i] as StoredRecord;
    if (ra.jws !== rb.jws || ra.signer !== rb.signer) return undefined;
    try {
      ops.push(decodeTrustedOp(ra.jws, ra.signer).op);
    } catch {
      return undefined;
    }
  }
  return { records: a.records, ops };
}

/**
 * The journal's ops as laid over the summary, with the digest of the summary's ops and them, or
 * undefined when the summary cannot tell what they change (see journalOverlay), was written by
 * a version that did not keep `owners` and `sum`, or already counts some of them (`folded`: the
 * agent stopped inside a compaction, before the journal was rewritten).
 */
function overJournal(
  summary: Summary,
  journal: { records: readonly StoredRecord[]; ops: KeyringOp[] } | undefined,
): { texts: ReadonlyMap<string, StoredRecord>; overlay: JournalOverlay; digest: string } | undefined {
  if (journal === undefined || summary.sum === undefined) return undefined;
  const byId = new Map<string, StoredRecord>();
  journal.ops.forEach((op, i) => {
    const r = journal.records[i];
    if (r !== undefined && !byId.has(op.id)) byId.set(op.id, r);
  });
  if (summary.folded !== undefined && byId.has(summary.folded)) return undefined;
  const overlay = journalOverlay(journal.ops, summary.owners);
  if (overlay === undefined) return undefined;
  const digest = digestWithOps(
    summary.sum,
    summary.opCount,
    [...byId.values()].map((r) => r.jws),
  );
  return { texts: byId, overlay, digest };
}

/**
 * Reconciles keyring.journal and its mirror. `known` holds the op ids already in the ops files
 * (a crash between compaction's steps leaves one journal still holding them).
 */
function analyseJournals(
  a: JournalSide,
  b: JournalSide,
  known: ReadonlySet<string>,
  credentialIds: ReadonlySet<string>,
): JournalAnalysis {
  const findings: IntegrityFinding[] = [];
  const loss: Loss = { credentials: [], unknown: false };
  const ids = (side: JournalSide) =>
    new Map(
      side.records.flatMap((r) => {
        const id = opIdOf(r);
        return id === undefined ? [] : [[id, r] as const];
      }),
    );
  const inA = ids(a);
  const inB = ids(b);
  // A journal that did not exist while the other did (deleted, or from before mirrors) is no
  // witness: the other one is taken as it is.
  const aWitness = a.existed || !b.existed;
  const bWitness = b.existed || !a.existed;
  const { rebuilt, lost } =
    a.corrupt.length > 0 && b.corrupt.length > 0
      ? rebuildFromBoth(a.corrupt, b.corrupt, (line) => decodeLine(line, parseRecord))
      : { rebuilt: [], lost: [] };
  const merged = new Map<string, StoredRecord>();
  const dropped: StoredRecord[] = [];
  const consider = (
    id: string,
    r: StoredRecord,
    otherHas: boolean,
    other: JournalSide,
    otherWitness: boolean,
  ) => {
    if (merged.has(id) || known.has(id)) {
      if (!merged.has(id)) merged.set(id, r);
      return;
    }
    if (otherHas || !otherWitness || other.corrupt.length > 0) {
      merged.set(id, r);
      return;
    }
    // In one journal only, the other intact: never acknowledged. Revoking is always safe.
    const op = decodeTrustedOp(r.jws, r.signer).op;
    if (op.op === 'revoke') merged.set(id, r);
    else dropped.push(r);
  };
  for (const [id, r] of inA) consider(id, r, inB.has(id), b, bWitness);
  for (const [id, r] of inB) consider(id, r, inA.has(id), a, aWitness);
  for (const r of rebuilt) {
    const id = opIdOf(r);
    if (id !== undefined && !merged.has(id)) merged.set(id, r);
  }
  // What a line lost in both copies named, if it still says it and names a credential we hold.
  for (const line of lost) {
    const named = salvageCredential(line.raw, credentialIds);
    if (named === undefined) loss.unknown = true;
    else if (!loss.credentials.includes(named)) loss.credentials.push(named);
  }
  const lostNote =
    lost.length === 0
      ? undefined
      : loss.unknown
        ? 'an operation lost in both copies names no credential that can be trusted: every credential is denied until `vehicle-agent state repair`'
        : `an operation lost in both copies named ${loss.credentials.join(', ')}: denied until \`vehicle-agent state repair\``;
  const report = (side: JournalSide, other: JournalSide) => {
    for (const line of side.corrupt) {
      findings.push(
        lostNote !== undefined
          ? {
              file: side.path,
              code: 'credential_suspect',
              problem: lineProblem(line),
              action: lostNote,
              denied: loss.unknown ? ['*'] : loss.credentials,
            }
          : {
              file: side.path,
              code: 'state_repaired',
              problem: lineProblem(line),
              action: 'rebuilt from the other copy',
            },
      );
    }
    if (!side.existed && other.existed && other.records.length + other.corrupt.length > 0) {
      findings.push({
        file: side.path,
        code: 'state_repaired',
        problem: 'missing',
        action: 'rebuilt from the other copy',
      });
    }
  };
  report(a, b);
  report(b, a);
  for (const r of dropped) {
    const op = decodeTrustedOp(r.jws, r.signer).op;
    findings.push({
      file: a.path,
      code: 'state_corrupt',
      problem: `grant ${op.id} (${op.op === 'grant' ? op.cred.id : ''}) is in one journal only and the other is intact`,
      action:
        'dropped: it was never acknowledged (the agent stopped between the two writes) or one copy was cut short; grant it again if it is wanted',
    });
  }
  const records = [...merged.values()];
  const differs =
    records.length !== inA.size || records.length !== inB.size || a.corrupt.length + b.corrupt.length > 0;
  return { records, findings, rewrite: differs || a.existed !== b.existed, loss };
}

/** The credential a damaged journal line names, if its JSON and op still parse and name one we hold. */
function salvageCredential(raw: Buffer, credentialIds: ReadonlySet<string>): string | undefined {
  const space = raw.indexOf(0x20);
  if (space < 0) return undefined;
  try {
    const r = parseRecord(JSON.parse(raw.subarray(space + 1).toString('utf8')));
    const op = decodeTrustedOp(r.jws, r.signer).op;
    const id = op.op === 'grant' ? op.cred.id : op.credId;
    // A flipped bit can rename the credential: trust the name only if it is one we hold.
    return credentialIds.has(id) ? id : undefined;
  } catch {
    return undefined;
  }
}

// ── keyring.suspects ─────────────────────────────────────────────────────────

const SUSPECTS_FORMAT = 'keyring-suspects/1';

interface SuspectsRead {
  readonly suspects: Map<string, string>;
  readonly findings: IntegrityFinding[];
  /** Both copies exist and neither reads: which credentials were suspect is lost. */
  readonly unreadable: boolean;
}

function decodeSuspects(bytes: Buffer): Map<string, string> {
  const value = decodeChecksummedJson(bytes) as { format?: unknown; suspects?: unknown } | null;
  if (value?.format !== SUSPECTS_FORMAT || !Array.isArray(value.suspects))
    throw new Error(`format is not ${SUSPECTS_FORMAT}`);
  const suspects = new Map<string, string>();
  for (const entry of value.suspects as unknown[]) {
    if (!Array.isArray(entry) || typeof entry[0] !== 'string' || typeof entry[1] !== 'string') {
      throw new Error('a suspect is not [credential id, reason]');
    }
    suspects.set(entry[0], entry[1]);
  }
  return suspects;
}

async function readSuspects(stateDir: string): Promise<SuspectsRead> {
  const p = keyringPaths(stateDir);
  const findings: IntegrityFinding[] = [];
  const suspects = new Map<string, string>();
  const reads: { path: string; bytes: Buffer | undefined; value?: Map<string, string>; problem?: string }[] =
    [];
  for (const path of [p.suspects, p.suspectsMirror]) {
    const bytes = await readFileIfExists(path);
    if (bytes === undefined) {
      reads.push({ path, bytes });
      continue;
    }
    try {
      reads.push({ path, bytes, value: decodeSuspects(bytes) });
    } catch (err) {
      reads.push({ path, bytes, problem: (err as Error).message });
    }
  }
  for (const r of reads) for (const [id, why] of r.value ?? []) suspects.set(id, why);
  const readable = reads.some((r) => r.value !== undefined);
  for (const r of reads) {
    const other = reads.find((o) => o !== r);
    if (r.problem !== undefined || (r.bytes === undefined && other?.bytes !== undefined)) {
      findings.push(
        readable
          ? {
              file: r.path,
              code: 'state_repaired',
              problem: r.problem ?? 'missing',
              action: 'rebuilt from the other copy',
            }
          : {
              file: r.path,
              code: 'credential_suspect',
              problem: r.problem ?? 'missing',
              action:
                'which credentials were suspect is lost: every credential is denied until `vehicle-agent state repair`',
              denied: ['*'],
            },
      );
    }
  }
  return { suspects, findings, unreadable: !readable && reads.every((r) => r.bytes !== undefined) };
}

async function writeSuspects(stateDir: string, suspects: ReadonlyMap<string, string>): Promise<void> {
  const p = keyringPaths(stateDir);
  if (suspects.size === 0) {
    for (const path of [p.suspects, p.suspectsMirror]) await unlink(path).catch(() => {});
    return;
  }
  const bytes = encodeChecksummedJson({ format: SUSPECTS_FORMAT, suspects: [...suspects.entries()] });
  for (const path of [p.suspects, p.suspectsMirror]) await writeFileAtomic(path, bytes, { mode: 0o600 });
}

// ── writing ────────────────────────────────────────────────────────────────────

/**
 * Writes both ops files, then keyring.json (the commit point). `opsText` is the ops files' content
 * (every op the keyring holds) when the keyring does not hold the texts itself.
 */
async function writeSnapshotFiles(
  stateDir: string,
  keyring: Keyring,
  opsText?: { readonly text: string; readonly count: number },
  /** The id of a journal op this compaction folds in (keyring-summary.ts `folded`). */
  folded?: string,
): Promise<void> {
  const p = keyringPaths(stateDir);
  const lines: string[] = [];
  if (opsText === undefined) {
    for (const o of keyring.storedOps()) {
      if (o.jws === undefined)
        throw new AgentError('state_io', 'keyring op text not held; pass the ops text');
      lines.push(encodeOpLine({ jws: o.jws, signer: o.signer }));
    }
  }
  const credentials: [CredentialWire, boolean][] = [];
  for (const s of keyring.list()) {
    if (s.credential.id !== keyring.rootId) credentials.push([credentialToWire(s.credential), s.revoked]);
  }
  const opCount = opsText?.count ?? lines.length;
  const summary = encodeSummary(keyring.digest(), opCount, credentials, {
    owners: keyring.liveOwnerIds(),
    sum: keyring.digestSum(),
    folded,
  });
  const ops = opsText?.text ?? lines.join('');
  await writeFileAtomic(p.ops, ops, { mode: 0o600 });
  await writeFileAtomic(p.opsMirror, ops, { mode: 0o600 });
  await writeFileAtomic(p.summary, summary, { mode: 0o600 });
}

function decodeAll(records: readonly StoredRecord[], file: string): StoredOp[] {
  try {
    return records.map((r) => decodeTrustedOp(r.jws, r.signer));
  } catch (err) {
    throw new AgentError(
      'state_corrupt',
      `${file} holds a damaged keyring operation: ${(err as Error).message}`,
      { file },
    );
  }
}

async function quarantine(paths: readonly string[]): Promise<void> {
  for (const path of paths) {
    const bytes = await readFileIfExists(path);
    if (bytes !== undefined && bytes.length > 0)
      await writeFileAtomic(`${path}.corrupt-${uniqueStamp()}`, bytes);
  }
}

/** What the summary says is revoked, minus what the surviving ops still revoke. */
function revocationsOnlyInSummary(summary: Summary | undefined, ops: readonly StoredRecord[]): string[] {
  if (summary === undefined) return [];
  const revokedByOps = new Set<string>();
  for (const r of ops) {
    try {
      const op = decodeTrustedOp(r.jws, r.signer).op;
      if (op.op === 'revoke') revokedByOps.add(op.credId);
    } catch {
      // counted as lost elsewhere
    }
  }
  return summary.revoked().filter((id) => !revokedByOps.has(id));
}

export class KeyringStore {
  private readonly found: IntegrityFinding[];
  /** Credentials this store denies because keyring state about them was lost (persisted). */
  private readonly lost = new Map<string, string>();
  private readonly listeners: ((f: IntegrityFinding) => void)[] = [];
  /** The ops files were repaired in the background: the summary is rewritten at close. */
  private summaryStale = false;
  private opened = false;

  private constructor(
    private readonly stateDir: string,
    private readonly journal: JournalPair<StoredRecord>,
    private readonly keyring: Keyring,
    private readonly log: Logger,
    findings: IntegrityFinding[],
  ) {
    this.found = findings;
  }

  /**
   * Loads the stored ops into `keyring` (trusted: they were verified when added), repairing a
   * damaged copy from the other and failing secure for what both lost (see the file comment).
   */
  static async open(stateDir: string, keyring: Keyring, log: Logger): Promise<KeyringStore> {
    const p = keyringPaths(stateDir);
    const summaryRead = await readSummary(p.summary);
    const openJournal = (path: string) =>
      Journal.open<StoredRecord>(path, { parse: parseRecord, logger: log, onCorrupt: 'report' });
    const openedA = await openJournal(p.journal);
    let openedB: Awaited<ReturnType<typeof openJournal>>;
    try {
      openedB = await openJournal(p.journalMirror);
    } catch (err) {
      await openedA.journal.close();
      throw err;
    }
    const pair = new JournalPair(openedA.journal, openedB.journal);
    const findings: IntegrityFinding[] = [];
    let store: KeyringStore | undefined;
    try {
      const sideA: JournalSide = {
        path: p.journal,
        existed: !openedA.recovery.created,
        records: openedA.records,
        corrupt: openedA.recovery.corrupt,
      };
      const sideB: JournalSide = {
        path: p.journalMirror,
        existed: !openedB.recovery.created,
        records: openedB.records,
        corrupt: openedB.recovery.corrupt,
      };
      const journalsClean =
        sideA.corrupt.length + sideB.corrupt.length === 0 &&
        sideA.records.length + sideB.records.length === 0;
      store = new KeyringStore(stateDir, pair, keyring, log, findings);
      const credentials = summaryRead.state === 'ok' ? summaryRead.summary.credentials : undefined;
      // Ops the journals hold (after a kill): laid over the summary when both copies agree and
      // the summary alone shows what they change (journalOverlay), else the slow path decides.
      const journal =
        journalsClean || summaryRead.state !== 'ok'
          ? undefined
          : overJournal(summaryRead.summary, agreeingJournals(sideA, sideB));
      if (
        summaryRead.state === 'ok' &&
        credentials !== undefined &&
        (journalsClean || journal !== undefined)
      ) {
        // Fast path: decide from the summary now (with the journal's revokes, its grants denied
        // until then); read, check and decode the ops afterwards, the journal's after the rest.
        const texts = journal?.texts ?? new Map<string, StoredRecord>();
        for (const [id, r] of texts) store.journalTexts.set(id, r);
        const records = [...texts.values()];
        keyring.loadSnapshot({
          digest: journal?.digest ?? summaryRead.summary.digest,
          opCount: summaryRead.summary.opCount + records.length,
          credentials,
          ops: store.opsSource(summaryRead.summary, records),
          ...(journal === undefined ? {} : { overlay: journal.overlay }),
          liveOwners: summaryRead.summary.owners,
        });
        if (sideA.existed !== sideB.existed) {
          findings.push({
            file: sideA.existed ? p.journalMirror : p.journal,
            code: 'state_repaired',
            problem: 'missing',
            action: 'created empty (both journals were empty)',
          });
        }
      } else {
        await store.loadEverything(summaryRead, sideA, sideB);
      }
      await store.applyPersistedSuspects();
    } catch (err) {
      await pair.close();
      throw err;
    }
    for (const f of findings) store.report(f);
    store.opened = true;
    // From here the op texts are read back from disk when needed (sync, export, compaction).
    // Only texts read from disk are dropped: ops merged in memory before open stay until a
    // compaction writes them.
    const read = store.readAtOpen;
    keyring.keepTextsIn(store.textSource, (id) => read.has(id) || store.journalTexts.has(id));
    store.readAtOpen = new Set();
    store.textsOnDisk = true;
    if (store.compactionDue()) await store.compact();
    return store;
  }

  /** Calls `listener` for findings made after open (the ops are checked in the background). */
  onFinding(listener: (f: IntegrityFinding) => void): void {
    this.listeners.push(listener);
  }

  /** Credentials denied because keyring state about them was lost in every copy. */
  lostCredentials(): ReadonlyMap<string, string> {
    return this.lost;
  }

  /**
   * Accepts the loss (`state repair --accept-loss`): the credentials denied because keyring
   * state about them was lost are judged by the operations that are left.
   */
  async acceptLoss(): Promise<string[]> {
    const cleared = [...this.lost.keys()];
    this.lost.clear();
    this.keyring.clearSuspects();
    await this.serial(() => writeSuspects(this.stateDir, this.lost));
    return cleared;
  }

  /** Drops suspicions the operations now explain (a lost revoke merged back from the cloud). */
  async settleExplained(): Promise<string[]> {
    const revoked = new Set<string>();
    for (const s of this.keyring.heldOps()) if (s.op === 'revoke') revoked.add(s.credId);
    const explained = [...this.lost.entries()]
      .filter(([id, why]) => why === LOST_REVOKE && revoked.has(id))
      .map(([id]) => id);
    if (explained.length === 0) return [];
    for (const id of explained) this.lost.delete(id);
    this.keyring.clearSuspects();
    this.keyring.markSuspects(this.lost);
    await this.serial(() => writeSuspects(this.stateDir, this.lost));
    return explained;
  }

  /** Denies credentials whose keyring state was lost; persisted before anything is rewritten. */
  private async denyLost(ids: Iterable<string>, reason: string, file: string): Promise<void> {
    const entries = this.markLost(ids, reason, file);
    if (entries.length > 0) await writeSuspects(this.stateDir, this.lost);
  }

  /** Denies now and reports it; the caller persists `lost` before anything is rewritten. */
  private markLost(ids: Iterable<string>, reason: string, file: string): [string, string][] {
    const entries: [string, string][] = [];
    for (const id of ids) {
      if (id === this.keyring.rootId) continue;
      this.lost.set(id, reason);
      entries.push([id, reason]);
    }
    if (entries.length === 0) return entries;
    this.keyring.markSuspects(entries);
    this.addFinding({
      file,
      code: 'credential_suspect',
      problem: reason,
      action: 'denied until `vehicle-agent state repair`',
      denied: entries.map(([id]) => id),
    });
    return entries;
  }

  private async applyPersistedSuspects(): Promise<void> {
    const read = await readSuspects(this.stateDir);
    for (const f of read.findings) this.found.push(f);
    for (const [id, why] of read.suspects) this.lost.set(id, why);
    this.keyring.markSuspects(read.suspects);
    if (read.suspects.size > 0) {
      this.found.push({
        file: keyringPaths(this.stateDir).suspects,
        code: 'credential_suspect',
        problem: `${read.suspects.size} credential(s) denied since keyring state about them was lost`,
        action:
          'denied until `vehicle-agent state repair` (with --ops FILE from the cloud, or --accept-loss)',
        denied: [...read.suspects.keys()],
      });
    }
    if (read.unreadable) {
      await this.denyLost(
        this.keyring.list().map((s) => s.credential.id),
        'the list of credentials denied after a loss is unreadable',
        keyringPaths(this.stateDir).suspects,
      );
    } else if (read.findings.length > 0) {
      await writeSuspects(this.stateDir, this.lost);
    }
  }

  /** Writes a keyring as the snapshot (init and demo provisioning). */
  static async writeSnapshot(stateDir: string, keyring: Keyring): Promise<void> {
    await writeSnapshotFiles(stateDir, keyring);
  }

  /** What was found wrong with the keyring's files, and what was done (see integrity.ts). */
  get findings(): readonly IntegrityFinding[] {
    return this.found;
  }

  private report(f: IntegrityFinding): void {
    const level = f.code === 'state_repaired' ? 'warn' : 'error';
    this.log[level]({ code: f.code, file: f.file, problem: f.problem, denied: f.denied }, f.action);
  }

  private addFinding(f: IntegrityFinding): void {
    this.found.push(f);
    // During open, findings are reported together at its end.
    if (!this.opened) return;
    this.report(f);
    for (const listener of this.listeners) listener(f);
  }

  /** The slow path: journals, ops and summary reconciled, everything decoded now. */
  private async loadEverything(
    summaryRead: SummaryRead,
    sideA: JournalSide,
    sideB: JournalSide,
  ): Promise<void> {
    const p = keyringPaths(this.stateDir);
    const summary = summaryRead.state === 'ok' ? summaryRead.summary : undefined;
    let base: StoredRecord[];
    // Format 3 (every credential as one JSON object, slow to parse) is rewritten as format 4 now.
    let compact = summary?.format === 3;
    let opsLost = false;
    if (summaryRead.state === 'legacy') {
      // Before checksums and mirrors (formats 1 and 2): read as they were, rewritten at once.
      base =
        summaryRead.format === 1
          ? [...(summaryRead.ops ?? [])]
          : parseLegacyOps(await readFileIfExists(p.ops), p.ops, summaryRead.opCount);
      compact = true;
    } else {
      const [a, b] = await readOpsPair(this.stateDir);
      const analysis = analyseOps(a, b, summary?.opCount);
      base = analysis.ops;
      for (const f of analysis.findings) this.found.push(f);
      if (analysis.rewrite.length > 0) {
        await quarantine(analysis.rewrite);
        compact = true;
      }
      opsLost = analysis.lostLines > 0;
    }
    if (summaryRead.state === 'damaged' || (summaryRead.state === 'missing' && base.length > 0)) {
      this.found.push({
        file: p.summary,
        code: 'state_repaired',
        problem: summaryRead.state === 'damaged' ? summaryRead.problem : 'missing',
        action: 'rebuilt from the operations',
      });
      if (summaryRead.state === 'damaged') await quarantine([p.summary]);
      compact = true;
    }
    const known = new Set(
      base.flatMap((r) => {
        const id = opIdOf(r);
        return id === undefined ? [] : [id];
      }),
    );
    const stored = decodeAll(
      base,
      summaryRead.state === 'legacy' && summaryRead.format === 1 ? p.summary : p.ops,
    );
    const credentialIds = new Set(stored.flatMap((s) => (s.op.op === 'grant' ? [s.op.cred.id] : [])));
    this.readAtOpen = known;
    const journals = analyseJournals(sideA, sideB, known, credentialIds);
    for (const f of journals.findings) this.found.push(f);
    if (journals.rewrite) {
      await quarantine([sideA, sideB].filter((s) => s.corrupt.length > 0).map((s) => s.path));
      compact = true;
    }
    stored.push(...decodeAll(journals.records, p.journal));
    for (const r of journals.records) {
      const id = opIdOf(r);
      if (id !== undefined) this.journalTexts.set(id, r);
    }
    this.keyring.loadTrusted(stored);
    // Losses are denied and persisted before the damaged files are rewritten.
    if (opsLost) await this.denyLostRevocations(summary, base);
    await this.denyLost(journals.loss.credentials, LOST_OP, p.journal);
    if (journals.loss.unknown) await this.denyLost(this.allCredentials(), LOST_UNKNOWN_OP, p.journal);
    if (compact) await this.compactNow();
  }

  private allCredentials(): string[] {
    return this.keyring.list().map((s) => s.credential.id);
  }

  /** Ops lost in both copies: the summary's revocations still stand (as suspects). */
  private async denyLostRevocations(
    summary: Summary | undefined,
    surviving: readonly StoredRecord[],
  ): Promise<void> {
    const file = keyringPaths(this.stateDir).ops;
    if (summary === undefined) await this.denyLost(this.allCredentials(), LOST_OPS_NO_SUMMARY, file);
    else await this.denyLost(revocationsOnlyInSummary(summary, surviving), LOST_REVOKE, file);
  }

  /**
   * The fast path's ops: both copies read and checked when the keyring decodes them (in the
   * background after start, or at once when a merge needs them). A damaged copy is rewritten
   * from the other; losses fail secure before the keyring recomputes from the ops.
   */
  private opsSource(summary: Summary, journal: readonly StoredRecord[]): PendingOpsSource {
    const settle = ([a, b]: [OpsRead, OpsRead]): StoredRecord[] => {
      const analysis = analyseOps(a, b, summary.opCount);
      for (const f of analysis.findings) this.addFinding(f);
      // Denied at once (before the keyring recomputes from what is left), persisted first.
      const denied =
        analysis.lostLines > 0
          ? this.markLost(revocationsOnlyInSummary(summary, analysis.ops), LOST_REVOKE, a.path)
          : [];
      if (analysis.rewrite.length > 0 || denied.length > 0) {
        const ops = analysis.ops.map(encodeOpLine).join('');
        this.summaryStale = true;
        void this.serial(async () => {
          await writeSuspects(this.stateDir, this.lost);
          await quarantine(analysis.rewrite);
          for (const path of analysis.rewrite) await writeFileAtomic(path, ops, { mode: 0o600 });
        }).catch((err: unknown) =>
          this.log.error(
            { code: 'state_io', err: String(err) },
            'could not rewrite a damaged keyring ops file',
          ),
        );
      }
      // The journal's ops after the files' (the keyring counts an op in both once).
      return journal.length === 0 ? analysis.ops : [...analysis.ops, ...journal];
    };
    return {
      read: async () => settle(await readOpsPairInSlices(this.stateDir)),
      readSync: () => settle(readOpsPairSync(this.stateDir)),
    };
  }

  /** Serialises persist and compact: an op appended during a compaction must not be wiped by it. */
  private chain: Promise<void> = Promise.resolve();
  /** Records appended since the last compaction (a compaction keeps those not applied yet). */
  private appended: StoredRecord[] = [];
  /**
   * Ops in the journals, not yet in the ops files, by op id: with the ops files, the only copy of
   * the signed texts once the keyring drops them (Keyring.keepTextsIn). Bounded by compaction.
   */
  private readonly journalTexts = new Map<string, StoredRecord>();
  /** Ids of the ops read from the ops files by a full load at open (see open). */
  private readAtOpen = new Set<string>();

  private serial(task: () => Promise<void>): Promise<void> {
    const run = this.chain.then(task);
    this.chain = run.catch(() => {});
    return run;
  }

  /**
   * Appends ops to the journal; resolves once they are durable, rejects (state_io) when they could
   * not be written, in which case none of them is in the file (the journal cuts a failed batch
   * off before it reports the failure). Does not touch the keyring: the caller applies them.
   */
  persist(ops: readonly StoredRecord[]): Promise<void> {
    return this.serial(async () => {
      const records = ops.map((o) => ({ jws: o.jws, signer: o.signer }));
      await Promise.all(records.map((r) => this.journal.append(r)));
      this.appended.push(...records);
      for (const r of records) {
        const id = opIdOf(r);
        if (id !== undefined) this.journalTexts.set(id, r);
      }
    });
  }

  /** Compacts when the journal has grown past its limit (call after applying persisted ops). */
  compactIfDue(): Promise<void> {
    return this.serial(async () => {
      if (this.compactionDue()) await this.compactNow();
    });
  }

  private compactionDue(): boolean {
    const records = this.journal.recordCount;
    return records > COMPACT_AFTER && records > this.keyring.size / COMPACT_FRACTION;
  }

  /**
   * Adds many signed ops at once (a bulk import, `keys import`): verified against the keyring in
   * one pass, stored in chunks of up to IMPORT_CHUNK (one group-committed journal write each),
   * each chunk applied once it is durable, then compacted. Each op costs the same whatever the
   * keyring's size. When a chunk cannot be written it rejects with state_io: the chunks before it
   * are stored and applied (`details.applied` op ids), that chunk and the rest are not.
   * `onStored` sees each applied chunk (for the audit log).
   */
  async importOps(
    jwsList: readonly string[],
    onStored?: (ops: readonly KeyringOp[]) => unknown,
  ): Promise<MergeResult> {
    await this.keyring.whenMaterialized();
    return this.importPrepared(this.keyring.prepare(jwsList), onStored);
  }

  /**
   * importOps for ops the caller has verified with `keyring.prepare` (and checked for refusals:
   * `keys import` stores nothing when one is refused). Prepare and this must not be separated by
   * another change to the keyring: an op that arrived meanwhile counts as a duplicate.
   */
  async importPrepared(
    prepared: PreparedOps,
    onStored?: (ops: readonly KeyringOp[]) => unknown,
  ): Promise<MergeResult> {
    const added: KeyringOp[] = [];
    let duplicates = prepared.duplicates;
    for (let i = 0; i < prepared.added.length; i += IMPORT_CHUNK) {
      const chunk = prepared.added.slice(i, i + IMPORT_CHUNK);
      try {
        await this.persist(chunk);
      } catch (err) {
        throw new AgentError(
          'state_io',
          `the import stopped after ${added.length} of ${prepared.added.length} operations: ${(err as Error).message}`,
          { applied: added.map((op) => op.id) },
          { cause: err },
        );
      }
      const result = this.keyring.apply({ added: chunk, duplicates: 0, rejected: [] });
      duplicates += result.duplicates;
      added.push(...result.added);
      await onStored?.(result.added);
    }
    await this.compactIfDue();
    return { added, duplicates, rejected: prepared.rejected };
  }

  compact(): Promise<void> {
    return this.serial(() => this.compactNow());
  }

  /** Write failures, refusals and stalls of both keyring journals (health, /metrics). */
  get writeHealth(): WriteHealth {
    return this.journal.writeHealth;
  }

  private async compactNow(): Promise<void> {
    // Durable but not yet applied (a caller between persist and apply): stays in the journal.
    const keep = this.appended.filter((r) => !this.keyring.has(decodeTrustedOp(r.jws, r.signer).op.id));
    // The snapshot is written inside the rewrite, after every earlier append is durable and
    // before the journal is replaced: a crash leaves the old journal, or the snapshot plus `keep`.
    let written: string[] = [];
    // One op this compaction takes out of the journal: found in the journal at the next start,
    // the agent stopped before the journal was rewritten (see keyring-summary.ts `folded`).
    const kept = new Set(keep.map((r) => opIdOf(r)));
    const folded = [...this.journalTexts.keys()].find((id) => !kept.has(id));
    await this.journal.rewrite(keep, async () => {
      if (!this.textsOnDisk) return writeSnapshotFiles(this.stateDir, this.keyring, undefined, folded);
      const ops = await this.heldRecords();
      written = ops.ids;
      await writeSnapshotFiles(
        this.stateDir,
        this.keyring,
        { text: ops.text, count: ops.ids.length },
        folded,
      );
    });
    for (const id of written) this.journalTexts.delete(id);
    this.keyring.textsStored(written);
    this.appended = keep;
    this.log.info({ ops: this.keyring.size }, 'keyring compacted');
  }

  /**
   * The keyring's ops as ops-file lines, read back from the ops files (checked line by line; a
   * copy damaged since is read from the other) and the journal texts. Refuses (state_corrupt)
   * when they do not hold every op the keyring does: the compaction then keeps the journal.
   */
  private async heldRecords(): Promise<{ text: string; ids: string[] }> {
    const [a, b] = await readOpsPairInSlices(this.stateDir);
    const analysis = analyseOps(a, b, undefined);
    const parts: string[] = [];
    const ids: string[] = [];
    const seen = new Set<string>();
    const take = (r: StoredRecord) => {
      const id = opIdOf(r);
      if (id === undefined || seen.has(id) || !this.keyring.has(id)) return;
      seen.add(id);
      ids.push(id);
      parts.push(encodeOpLine(r));
    };
    for (let i = 0; i < analysis.ops.length; i++) {
      if (i > 0 && i % DECODE_SLICE === 0) await nextTurn();
      take(analysis.ops[i] as StoredRecord);
    }
    for (const r of this.journalTexts.values()) take(r);
    // Ops merged into the keyring in memory only (not through persist) are on no disk yet.
    for (const held of this.keyring.heldOps()) {
      if (held.jws !== undefined) take({ jws: held.jws, signer: held.signer });
    }
    if (ids.length !== this.keyring.size) {
      throw new AgentError(
        'state_corrupt',
        `the keyring files hold ${ids.length} of the keyring's ${this.keyring.size} operations; not compacted`,
        { file: a.path },
      );
    }
    return { text: parts.join(''), ids };
  }

  /** The keyring ops' signed texts, read back from disk (Keyring.opTexts). */
  private readonly textSource: OpTextSource = {
    readTexts: (holds) =>
      new Promise<string[]>((resolve, reject) => {
        this.serial(async () => {
          // In slices: a running agent reads these for each publish of its set (~96 MB at 100 000).
          const [a, b] = await readOpsPairInSlices(this.stateDir);
          const texts = new Map<string, string>();
          const records = [...analyseOps(a, b, undefined).ops, ...this.journalTexts.values()];
          for (let i = 0; i < records.length; i++) {
            // Each op is decoded for its id (~3 µs): 100 000 in one go held the loop ~300 ms.
            if (i > 0 && i % DECODE_SLICE === 0) await nextTurn();
            const r = records[i] as StoredRecord;
            const id = opIdOf(r);
            if (id !== undefined && holds(id) && !texts.has(id)) texts.set(id, r.jws);
          }
          resolve([...texts.values()]);
        }).catch(reject);
      }),
  };

  /** Whether the keyring's op texts are on disk only (set at the end of open). */
  private textsOnDisk = false;

  /** Folds the journal into the snapshot (so the next start takes the fast path), then closes. */
  async close(): Promise<void> {
    await this.chain;
    if (this.journal.recordCount > 0 || this.summaryStale) {
      await this.compact().catch((err: unknown) =>
        this.log.warn({ code: 'state_io', err: String(err) }, 'keyring compaction at stop failed'),
      );
    }
    await this.journal.close();
  }
}

/** keyring.ops before checksums (format 2): `<signer> <jws>` lines. */
function parseLegacyOps(
  bytes: Buffer | undefined,
  path: string,
  expected: number | undefined,
): StoredRecord[] {
  const text = bytes?.toString('utf8') ?? '';
  const ops: StoredRecord[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const space = line.indexOf(' ');
    if (space <= 0) {
      throw new AgentError(
        'state_corrupt',
        `${path} is corrupt: line ${ops.length + 1} is not "<signer> <jws>"`,
        { file: path },
      );
    }
    ops.push({ signer: line.slice(0, space), jws: line.slice(space + 1) });
  }
  if (expected !== undefined && ops.length < expected) {
    throw new AgentError(
      'state_corrupt',
      `${path} is corrupt: ${ops.length} ops where the snapshot counts ${expected}`,
      { file: path },
    );
  }
  return ops;
}

// ── inspection (state check) ───────────────────────────────────────────────────

export interface KeyringInspection {
  readonly findings: readonly IntegrityFinding[];
  readonly operations: number;
}

/** Reads every keyring file without changing anything and says what opening would find. */
export async function inspectKeyringFiles(stateDir: string): Promise<KeyringInspection> {
  const p = keyringPaths(stateDir);
  const findings: IntegrityFinding[] = [];
  const summaryRead = await readSummary(p.summary);
  const summary = summaryRead.state === 'ok' ? summaryRead.summary : undefined;
  if (summaryRead.state === 'damaged') {
    findings.push({
      file: p.summary,
      code: 'state_repaired',
      problem: summaryRead.problem,
      action: 'the agent rebuilds it from the operations',
    });
  }
  if (summaryRead.state === 'legacy') {
    findings.push({
      file: p.summary,
      code: 'state_repaired',
      problem: `format ${summaryRead.format} (no checksums, no mirror)`,
      action: 'the agent rewrites it as format 4 with mirrors',
    });
  }
  let base: StoredRecord[] = [];
  if (summaryRead.state !== 'legacy') {
    const [a, b] = await readOpsPair(stateDir);
    const analysis = analyseOps(a, b, summary?.opCount);
    findings.push(...analysis.findings);
    base = analysis.ops;
    if (summaryRead.state === 'missing' && base.length > 0) {
      findings.push({
        file: p.summary,
        code: 'state_repaired',
        problem: 'missing',
        action: 'the agent rebuilds it from the operations',
      });
    }
  }
  const suspects = await readSuspects(stateDir);
  findings.push(...suspects.findings);
  if (suspects.suspects.size > 0) {
    findings.push({
      file: p.suspects,
      code: 'credential_suspect',
      problem: `${suspects.suspects.size} credential(s) denied since keyring state about them was lost`,
      action: 'denied until `vehicle-agent state repair` (with --ops FILE from the cloud, or --accept-loss)',
      denied: [...suspects.suspects.keys()],
    });
  }
  const ja: JournalInspection<StoredRecord> = await inspectJournal(p.journal, parseRecord);
  const jb: JournalInspection<StoredRecord> = await inspectJournal(p.journalMirror, parseRecord);
  const known = new Set(
    base.flatMap((r) => {
      const id = opIdOf(r);
      return id === undefined ? [] : [id];
    }),
  );
  const credentialIds = new Set<string>();
  for (const r of base) {
    try {
      const op = decodeTrustedOp(r.jws, r.signer).op;
      if (op.op === 'grant') credentialIds.add(op.cred.id);
    } catch {
      // reported by the ops analysis
    }
  }
  const journals = analyseJournals(
    { path: p.journal, existed: ja.exists, records: ja.records, corrupt: ja.corrupt },
    { path: p.journalMirror, existed: jb.exists, records: jb.records, corrupt: jb.corrupt },
    known,
    credentialIds,
  );
  findings.push(...journals.findings);
  if (summary !== undefined && base.length === summary.opCount) {
    // The digest covers the ops' content: a summary that disagrees was written from other ops.
    const entries = base.flatMap((r) => {
      const id = opIdOf(r);
      return id === undefined ? [] : [{ id, jws: r.jws }];
    });
    // A summary written before digest v2 holds the v1 digest until the next compaction.
    if (digestOfOps(entries) !== summary.digest && digestOfOpsV1(entries) !== summary.digest) {
      findings.push({
        file: p.summary,
        code: 'state_corrupt',
        problem: 'its digest does not match the operations',
        action: 'the agent recomputes it from the operations',
      });
    }
  }
  return { findings, operations: base.length + journals.records.length };
}

/**
 * Every keyring operation on disk, read without changing anything, safe beside the running agent
 * (`vehicle-agent backup`, `keys export`): both journals first, then both ops files, united by op
 * id. Ops are only ever added, and compaction moves them from the journals into the ops files, so
 * in this order an op is read from one or the other. Damaged lines are left out (`state check`
 * reports them); formats 1 and 2 are not read (the agent rewrites them at its first start).
 */
export async function readKeyringOps(stateDir: string): Promise<{ jws: string; signer: string }[]> {
  const p = keyringPaths(stateDir);
  const journalA = await inspectJournal(p.journal, parseRecord);
  const journalB = await inspectJournal(p.journalMirror, parseRecord);
  const [opsA, opsB] = await readOpsPair(stateDir);
  const byId = new Map<string, StoredRecord>();
  for (const r of [...opsA.ops, ...opsB.ops, ...journalA.records, ...journalB.records]) {
    const id = opIdOf(r);
    if (id !== undefined && !byId.has(id)) byId.set(id, { jws: r.jws, signer: r.signer });
  }
  return [...byId.values()];
}
