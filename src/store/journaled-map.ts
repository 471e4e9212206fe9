/**
 * A small durable key → value map (FIDO signature counters, command counters per kid, remembered
 * command results, ...): a snapshot file plus a journal of changes since the snapshot, kept in two
 * copies (replicas) so that one damaged or deleted file never loses a value.
 *
 * Files for base path P, replica A: `P.snapshot.json` (atomic replace) and `P.journal` (see
 * journal.ts); replica B (the mirror): `P.mirror.snapshot.json` and `P.mirror.journal`. Every
 * change goes to both journals and resolves once both are durable. A snapshot is one checksummed
 * line, `<crc32> {"format":"journaled-map/2",...}\n`; format 1 (plain JSON) is still read.
 *
 * `set`/`delete` change memory at once (so a check-then-set on a counter cannot race with a
 * second caller) and resolve when the change is durable; the caller acts only after that.
 * When the journal outgrows max(compactAfterBytes, size of the last snapshot), the map is
 * compacted: each replica's snapshot is rewritten and its journal emptied, inside one journal
 * operation so no change is lost in between. A crash between the two leaves a journal whose
 * changes the snapshot already holds; replaying them again gives the same map.
 *
 * Opening (see docs/storage.md "Corruption, detection and repair"): each replica is read on its
 * own (a torn journal tail is cut silently; a damaged line, a damaged snapshot or a missing file
 * makes the replica damaged), then
 * - with `combine` (counters: the higher value wins), every key takes the combination of the
 *   values both replicas hold, so a record lost in one copy cannot lower a counter;
 * - without it, a clean replica wins over a damaged one (both clean: the one with more journal
 *   records, i.e. the one that holds a write the other missed when the agent died between them).
 * A damaged replica is rewritten from the result (its files first copied aside as
 * `<file>.corrupt-<stamp>`) and the repair is reported in `findings` (`state_repaired`). When
 * BOTH replicas lost a record, what it named becomes SUSPECT (its key, read from the damaged line
 * when it still parses; every key when it does not): suspects are kept in the snapshots until
 * `clearSuspects` (`vehicle-agent state repair --accept-loss`), reported (`credential_suspect`),
 * and with `lostValue` set, `get` returns that value for them (counters: MAX_SAFE_INTEGER, so
 * no presented counter passes: fail secure).
 *
 * A change whose write fails stays in memory (the caller was told it is not durable): for a
 * signature counter that is the safe side, a value at least as high as the one on disk. After a
 * failed write each journal restores itself and later changes are written again (journal.ts);
 * reopening reconciles two copies one write apart as above.
 */

import type { Logger } from '../core/logger.js';
import { silentLogger } from '../core/logger.js';
import { readFileIfExists, writeFileAtomic } from './atomic.js';
import { decodeChecksummedJson, encodeChecksummedJson, looksChecksummed } from './checksummed.js';
import { uniqueStamp } from './fs-util.js';
import {
  combineWriteHealth,
  type GroupCommitOptions,
  type StagedItem,
  type WriteHealth,
} from './group-commit.js';
import { type IntegrityFinding, lineProblem } from './integrity.js';
import type { CorruptLine, CorruptPolicy, JournalRecovery, OpenFile } from './journal.js';
import { decodeLine, inspectJournal, Journal } from './journal.js';
import { rebuildFromBoth } from './salvage.js';
import { openStores } from './store-registry.js';

export interface JournaledMapOptions<V> {
  /** Validates a value read back (from a snapshot or a journal); a throw means damaged. */
  readonly parseValue?: (value: unknown) => V;
  /** Journal size that triggers compaction (at least the snapshot's size); default 64 KiB. */
  readonly compactAfterBytes?: number;
  /** Largest encoded change; default 64 KiB. */
  readonly maxRecordBytes?: number;
  /**
   * Without a mirror only: what a damaged journal line does; default 'report' (open, report,
   * fail secure for what it named). With the mirror, damage is always repaired or reported.
   */
  readonly onCorrupt?: CorruptPolicy;
  /** Keep the second copy (`P.mirror.*`); default true. */
  readonly mirror?: boolean;
  /** Combines the two replicas' values of one key (counters: Math.max). */
  readonly combine?: (a: V, b: V) => V;
  /** What `get` returns for a suspect key (counters: Number.MAX_SAFE_INTEGER). */
  readonly lostValue?: V;
  readonly logger?: Logger;
  /** Backlog bound and restore backoff of the journal's writes (see group-commit.ts). */
  readonly writeQueue?: Omit<GroupCommitOptions, 'restore'>;
  /** Opens the journal file (tests inject faults). */
  readonly openFile?: OpenFile;
}

/** Options for a map of counters that only rise (signature counters, command counters). */
export const COUNTER_MAP_OPTIONS = {
  combine: Math.max,
  lostValue: Number.MAX_SAFE_INTEGER,
} as const satisfies Pick<JournaledMapOptions<number>, 'combine' | 'lostValue'>;

type Change<V> = { readonly k: string; readonly v: V } | { readonly k: string; readonly d: 1 };

const SNAPSHOT_FORMAT_V1 = 'journaled-map/1';
const SNAPSHOT_FORMAT = 'journaled-map/2';
/** Key of `suspects` meaning "every key". */
const EVERY_KEY = '*';

interface SnapshotContent<V> {
  readonly values: Map<string, V>;
  readonly suspects: Map<string, string>;
}

type SnapshotRead<V> =
  | { readonly state: 'ok'; readonly content: SnapshotContent<V>; readonly bytes: number }
  | { readonly state: 'missing' }
  | { readonly state: 'damaged'; readonly problem: string };

/** What one replica's files hold, read without changing anything. */
interface ReplicaRead<V> {
  readonly snapshotPath: string;
  readonly journalPath: string;
  readonly snapshot: SnapshotRead<V>;
  readonly journalExists: boolean;
  readonly records: readonly Change<V>[];
  readonly corrupt: readonly CorruptLine[];
}

interface Analysis<V> {
  readonly values: Map<string, V>;
  readonly suspects: Map<string, string>;
  readonly findings: IntegrityFinding[];
  /** Replicas to rewrite from the result (damaged, missing, or behind). */
  readonly rewrite: { readonly a: boolean; readonly b: boolean };
  /** Files to copy aside before they are rewritten. */
  readonly quarantine: readonly string[];
}

export function replicaPaths(path: string): {
  a: { snapshot: string; journal: string };
  b: { snapshot: string; journal: string };
} {
  return {
    a: { snapshot: `${path}.snapshot.json`, journal: `${path}.journal` },
    b: { snapshot: `${path}.mirror.snapshot.json`, journal: `${path}.mirror.journal` },
  };
}

export class JournaledMap<V> {
  readonly path: string;
  /** How replica A's journal was recovered (kept for callers of the single-journal era). */
  readonly recovery: JournalRecovery;
  /** What was found wrong with the files at open, and what was done (see integrity.ts). */
  readonly findings: readonly IntegrityFinding[];
  private readonly values: Map<string, V>;
  private readonly suspectKeys: Map<string, string>;
  private readonly journals: readonly Journal<Change<V>>[];
  private readonly snapshotPaths: readonly string[];
  private readonly compactAfterBytes: number;
  private readonly lostValue: V | undefined;
  private readonly logger: Logger;
  private snapshotBytes: number;
  /** Journal bytes written or queued since the last compaction started. */
  private journalBytes: number;
  private compacting: Promise<void> | undefined;
  private closing = false;
  /** Leaves the registry of open stores (health figures) at close. */
  private readonly unregister: () => void;

  private constructor(
    path: string,
    parts: {
      values: Map<string, V>;
      suspects: Map<string, string>;
      journals: Journal<Change<V>>[];
      snapshotPaths: string[];
      recovery: JournalRecovery;
      findings: IntegrityFinding[];
      snapshotBytes: number;
    },
    options: JournaledMapOptions<V>,
    logger: Logger,
  ) {
    this.path = path;
    this.values = parts.values;
    this.suspectKeys = parts.suspects;
    this.journals = parts.journals;
    this.snapshotPaths = parts.snapshotPaths;
    this.recovery = parts.recovery;
    this.findings = parts.findings;
    this.snapshotBytes = parts.snapshotBytes;
    this.journalBytes = Math.max(...parts.journals.map((j) => j.sizeBytes));
    this.compactAfterBytes = options.compactAfterBytes ?? 64 * 1024;
    this.lostValue = options.lostValue;
    this.logger = logger;
    this.unregister = openStores.register(path, () => this.writeHealth);
  }

  static async open<V = unknown>(
    path: string,
    options: JournaledMapOptions<V> = {},
  ): Promise<JournaledMap<V>> {
    const parseValue = options.parseValue ?? ((value: unknown) => value as V);
    const logger = options.logger ?? silentLogger;
    const mirror = options.mirror ?? true;
    const paths = replicaPaths(path);
    const journalOptions = {
      parse: (raw: unknown) => parseChange(raw, parseValue),
      maxRecordBytes: options.maxRecordBytes ?? 64 * 1024,
      logger,
      ...(options.writeQueue ? { writeQueue: options.writeQueue } : {}),
      ...(options.openFile ? { openFile: options.openFile } : {}),
    };
    // Snapshots are read before the journals are opened (opening creates a missing journal).
    const snapshotA = await readSnapshot(paths.a.snapshot, parseValue);
    const snapshotB = mirror ? await readSnapshot(paths.b.snapshot, parseValue) : undefined;
    const policy = mirror ? 'report' : (options.onCorrupt ?? 'report');
    const openedA = await Journal.open<Change<V>>(paths.a.journal, { ...journalOptions, onCorrupt: policy });
    let openedB: Awaited<ReturnType<typeof Journal.open<Change<V>>>> | undefined;
    try {
      if (mirror)
        openedB = await Journal.open<Change<V>>(paths.b.journal, { ...journalOptions, onCorrupt: 'report' });
    } catch (err) {
      await openedA.journal.close();
      throw err;
    }
    const replica = (
      snapshot: SnapshotRead<V>,
      p: { snapshot: string; journal: string },
      opened: Awaited<ReturnType<typeof Journal.open<Change<V>>>>,
    ): ReplicaRead<V> => ({
      snapshotPath: p.snapshot,
      journalPath: p.journal,
      snapshot,
      journalExists: !opened.recovery.created,
      records: opened.records,
      corrupt: opened.recovery.corrupt,
    });
    const a = replica(snapshotA, paths.a, openedA);
    const b = openedB && snapshotB ? replica(snapshotB, paths.b, openedB) : undefined;
    const analysis = analyseReplicas(a, b, options);
    const journals = openedB ? [openedA.journal, openedB.journal] : [openedA.journal];
    const map = new JournaledMap<V>(
      path,
      {
        values: analysis.values,
        suspects: analysis.suspects,
        journals,
        snapshotPaths: openedB ? [paths.a.snapshot, paths.b.snapshot] : [paths.a.snapshot],
        recovery: openedA.recovery,
        findings: analysis.findings,
        snapshotBytes: Math.max(
          snapshotA.state === 'ok' ? snapshotA.bytes : 0,
          snapshotB?.state === 'ok' ? snapshotB.bytes : 0,
        ),
      },
      options,
      logger,
    );
    for (const f of analysis.findings) {
      const level = f.code === 'credential_suspect' ? 'error' : 'warn';
      logger[level]({ code: f.code, file: f.file, problem: f.problem, denied: f.denied }, f.action);
    }
    try {
      for (const file of analysis.quarantine) await quarantineCopy(file);
      if (analysis.rewrite.a || analysis.rewrite.b) await map.compact();
    } catch (err) {
      await map.close().catch(() => {});
      throw err;
    }
    return map;
  }

  /**
   * The value for `key`; for a suspect key (its record was lost in every copy) `lostValue` when
   * the map has one.
   */
  get(key: string): V | undefined {
    if (this.lostValue !== undefined && this.suspectKeys.size > 0 && this.suspect(key) !== undefined) {
      return this.lostValue;
    }
    return this.values.get(key);
  }

  has(key: string): boolean {
    return this.values.has(key);
  }

  get size(): number {
    return this.values.size;
  }

  entries(): IterableIterator<[string, V]> {
    return this.values.entries();
  }

  /** Write failures, refusals and stalls of both copies' journals, the worst first (health, /metrics). */
  get writeHealth(): WriteHealth {
    return combineWriteHealth(this.journals.map((j) => j.writeHealth));
  }

  /** Why `key` is suspect (its record was lost in every copy), or undefined. */
  suspect(key: string): string | undefined {
    return this.suspectKeys.get(key) ?? this.suspectKeys.get(EVERY_KEY);
  }

  /** Suspect keys with the reason; the key '*' means every key. */
  suspects(): ReadonlyMap<string, string> {
    return this.suspectKeys;
  }

  /** Accepts the loss (`state repair --accept-loss`): forgets the suspects and persists that. */
  async clearSuspects(): Promise<void> {
    this.suspectKeys.clear();
    await this.compact();
  }

  /** Sets the value now; resolves when durable. Rejects 'record_too_large' before changing anything. */
  set(key: string, value: V): Promise<void> {
    return this.change(
      { k: key, v: value },
      () => this.values.set(key, value),
      async (line) => {
        await Promise.all(this.journals.map((j) => j.appendEncoded(line)));
      },
    );
  }

  /**
   * Sets the value now, in two steps: resolves once the change is written to both journals (it
   * survives the process being killed) with `durable`, which settles once both are fdatasynced
   * (it survives a power cut). Rejects, without `durable`, when a write fails.
   */
  stage(key: string, value: V): Promise<StagedItem> {
    return this.change(
      { k: key, v: value },
      () => this.values.set(key, value),
      async (line) => {
        const staged = await Promise.all(this.journals.map((j) => j.appendEncodedStaged(line)));
        const durable = Promise.all(staged.map((s) => s.durable)).then(() => {});
        durable.catch(() => {});
        return { durable };
      },
    );
  }

  /** Deletes the key now; resolves (true if it existed) when durable. */
  async delete(key: string): Promise<boolean> {
    if (!this.values.has(key)) return false;
    await this.change(
      { k: key, d: 1 },
      () => this.values.delete(key),
      async (line) => {
        await Promise.all(this.journals.map((j) => j.appendEncoded(line)));
      },
    );
    return true;
  }

  /** Rewrites both snapshots and empties both journals. */
  compact(): Promise<void> {
    const snapshot = encodeSnapshot(this.values, this.suspectKeys);
    this.journalBytes = 0;
    // Each replica on its own: snapshot first, then its journal emptied (a crash in between
    // leaves changes the snapshot already holds). A crash between the replicas leaves them
    // different, which the next open reconciles.
    return Promise.all(
      this.journals.map((journal, i) =>
        journal.rewrite([], async () => {
          const path = this.snapshotPaths[i];
          if (path !== undefined) await writeFileAtomic(path, snapshot);
        }),
      ),
    ).then(() => {
      this.snapshotBytes = snapshot.length;
    });
  }

  /** Waits for pending changes and any compaction, then closes. */
  async close(): Promise<void> {
    this.closing = true;
    while (this.compacting !== undefined) await this.compacting;
    try {
      await Promise.all(this.journals.map((j) => j.close()));
    } finally {
      this.unregister();
    }
  }

  private change<R>(change: Change<V>, apply: () => void, append: (line: Buffer) => Promise<R>): Promise<R> {
    let line: Buffer;
    try {
      line = (this.journals[0] as Journal<Change<V>>).encode(change);
    } catch (err) {
      return Promise.reject(err);
    }
    apply();
    const appended = append(line);
    this.journalBytes += line.length;
    this.compactIfDue();
    return appended;
  }

  private compactIfDue(): void {
    if (this.compacting !== undefined || this.closing) return;
    if (this.journalBytes < Math.max(this.compactAfterBytes, this.snapshotBytes)) return;
    this.compacting = this.compact()
      .catch((err: unknown) => {
        // The journal restores itself (or stays failed, saying why); the map goes on.
        this.logger.error({ code: 'state_io', file: this.path, err: String(err) }, 'map compaction failed');
      })
      .finally(() => {
        this.compacting = undefined;
        if (this.journals.every((j) => j.failed === undefined)) this.compactIfDue(); // changes made meanwhile
      });
  }
}

/**
 * Reads a map's files without changing anything and says what opening would find (`state check`).
 */
export async function inspectJournaledMap<V = unknown>(
  path: string,
  options: JournaledMapOptions<V> = {},
): Promise<{
  readonly values: ReadonlyMap<string, V>;
  readonly suspects: ReadonlyMap<string, string>;
  readonly findings: readonly IntegrityFinding[];
  readonly exists: boolean;
}> {
  const parseValue = options.parseValue ?? ((value: unknown) => value as V);
  const paths = replicaPaths(path);
  const parse = (raw: unknown) => parseChange(raw, parseValue);
  const read = async (p: { snapshot: string; journal: string }): Promise<ReplicaRead<V>> => {
    const snapshot = await readSnapshot(p.snapshot, parseValue);
    const journal = await inspectJournal(p.journal, parse);
    return {
      snapshotPath: p.snapshot,
      journalPath: p.journal,
      snapshot,
      journalExists: journal.exists,
      records: journal.records,
      corrupt: journal.corrupt,
    };
  };
  const a = await read(paths.a);
  const b = (options.mirror ?? true) ? await read(paths.b) : undefined;
  const exists =
    a.journalExists ||
    a.snapshot.state !== 'missing' ||
    (b !== undefined && (b.journalExists || b.snapshot.state !== 'missing'));
  const analysis = analyseReplicas(a, b, options);
  return { values: analysis.values, suspects: analysis.suspects, findings: analysis.findings, exists };
}

function replay<V>(replica: ReplicaRead<V>): Map<string, V> {
  const values = new Map(replica.snapshot.state === 'ok' ? replica.snapshot.content.values : []);
  for (const change of replica.records) {
    if ('d' in change) values.delete(change.k);
    else values.set(change.k, change.v);
  }
  return values;
}

function isEmptyReplica<V>(r: ReplicaRead<V>): boolean {
  return r.snapshot.state === 'missing' && !r.journalExists;
}

interface Damage {
  readonly file: string;
  readonly problem: string;
  /** The file has bytes worth keeping aside before it is rewritten. */
  readonly present: boolean;
}

/** The snapshot of `r` cannot be trusted: damaged, or missing while the other copy has one. */
function snapshotDamage<V>(r: ReplicaRead<V>, other: ReplicaRead<V> | undefined): Damage | undefined {
  if (r.snapshot.state === 'damaged')
    return { file: r.snapshotPath, problem: r.snapshot.problem, present: true };
  if (
    r.snapshot.state === 'missing' &&
    other !== undefined &&
    other.snapshot.state !== 'missing' &&
    !isEmptyReplica(r)
  ) {
    return { file: r.snapshotPath, problem: 'missing (the other copy has one)', present: false };
  }
  return undefined;
}

/** The journal of `r` lost records: damaged lines, or deleted (compaction leaves an empty one). */
function journalDamage<V>(r: ReplicaRead<V>): Damage[] {
  const damage: Damage[] = r.corrupt.map((line) => ({
    file: r.journalPath,
    problem: lineProblem(line),
    present: true,
  }));
  if (r.snapshot.state !== 'missing' && !r.journalExists) {
    damage.push({ file: r.journalPath, problem: 'missing (its snapshot exists)', present: false });
  }
  return damage;
}

/** The key a damaged change line still names, if its JSON parses despite the bad checksum. */
function salvageKey(raw: Buffer): string | undefined {
  const space = raw.indexOf(0x20);
  if (space < 0) return undefined;
  try {
    const value = JSON.parse(raw.subarray(space + 1).toString('utf8')) as { k?: unknown };
    return typeof value.k === 'string' && value.k.length > 0 && value.k.length <= 256 ? value.k : undefined;
  } catch {
    return undefined;
  }
}

function parseValueOf<V>(options: JournaledMapOptions<V>): (value: unknown) => V {
  return options.parseValue ?? ((value: unknown) => value as V);
}

function analyseReplicas<V>(
  a: ReplicaRead<V>,
  b: ReplicaRead<V> | undefined,
  options: JournaledMapOptions<V>,
): Analysis<V> {
  const findings: IntegrityFinding[] = [];
  const quarantine: string[] = [];
  const valuesA = replay(a);
  const valuesB = b === undefined ? new Map<string, V>() : replay(b);
  const suspects = new Map<string, string>();
  for (const r of [a, b]) {
    if (r?.snapshot.state === 'ok') for (const [k, why] of r.snapshot.content.suspects) suspects.set(k, why);
  }
  const earlierSuspects = suspects.size;

  // A copy that does not exist at all while the other has content: a map from before mirrors,
  // or a deleted copy. Rebuilt from the other, reported.
  const aAbsent = b !== undefined && isEmptyReplica(a) && !isEmptyReplica(b);
  const bAbsent = b !== undefined && isEmptyReplica(b) && !isEmptyReplica(a);
  const snapA = aAbsent ? undefined : snapshotDamage(a, b);
  const snapB = b === undefined || bAbsent ? undefined : snapshotDamage(b, a);
  const journalA = aAbsent ? [] : journalDamage(a);
  const journalB = b === undefined || bAbsent ? [] : journalDamage(b);
  const damagedA = snapA !== undefined || journalA.length > 0 || aAbsent;
  const damagedB = b !== undefined && (snapB !== undefined || journalB.length > 0 || bAbsent);

  let values: Map<string, V>;
  const combine = options.combine;
  if (b === undefined) {
    values = valuesA;
  } else if (combine !== undefined) {
    // Counters: a value lost or truncated in one copy cannot lower the result.
    values = new Map(valuesA);
    for (const [k, v] of valuesB) {
      const mine = values.get(k);
      values.set(k, mine === undefined ? v : combine(mine, v));
    }
  } else if (!damagedA && damagedB) {
    values = valuesA;
  } else if (!damagedB && damagedA) {
    values = valuesB;
  } else if (!damagedA && !damagedB) {
    values = b.records.length > a.records.length ? valuesB : valuesA;
  } else {
    values = new Map(valuesB);
    for (const [k, v] of valuesA) values.set(k, v);
  }

  // Damage the other copy covers is repaired; damage in both copies is a loss, unless the two
  // damaged versions of a line together still give the original (see salvage.ts).
  // A copy that does not exist covers nothing.
  const noCover = b === undefined || bAbsent;
  const snapshotLost =
    (snapA !== undefined && (noCover || snapB !== undefined)) || (snapB !== undefined && aAbsent);
  let journalLost =
    (journalA.length > 0 && (noCover || journalB.length > 0)) || (journalB.length > 0 && aAbsent);
  const lossReason = 'its record was damaged in every copy';
  if (snapshotLost) suspects.set(EVERY_KEY, lossReason);
  if (journalLost) {
    const deleted = [...journalA, ...journalB].some((d) => !d.present);
    const { rebuilt, lost } =
      b === undefined || deleted || aAbsent || bAbsent
        ? { rebuilt: [], lost: [...a.corrupt, ...(b?.corrupt ?? [])] }
        : rebuildFromBoth(a.corrupt, b.corrupt, (line) =>
            decodeLine(line, (raw) => parseChange(raw, parseValueOf(options))),
          );
    for (const change of rebuilt) {
      if ('d' in change) values.delete(change.k);
      else {
        const mine = values.get(change.k);
        values.set(
          change.k,
          mine !== undefined && combine !== undefined ? combine(mine, change.v) : change.v,
        );
      }
    }
    // A flipped bit can rename a key: a salvaged name counts only if it is a key the map holds.
    const keys = lost.map((line) => {
      const k = salvageKey(line.raw);
      return k !== undefined && values.has(k) ? k : undefined;
    });
    if (deleted || keys.some((k) => k === undefined)) suspects.set(EVERY_KEY, lossReason);
    for (const k of keys) if (k !== undefined) suspects.set(k, lossReason);
    journalLost = deleted || lost.length > 0;
  }
  const denied = [...suspects.keys()];
  const report = (damage: Damage | undefined, lost: boolean) => {
    if (damage === undefined) return;
    findings.push({
      file: damage.file,
      code: lost ? 'credential_suspect' : 'state_repaired',
      problem: damage.problem,
      action: lost
        ? 'the other copy is damaged too: what the lost records named is denied until `vehicle-agent state repair`'
        : 'rebuilt from the other copy',
      ...(lost ? { denied } : {}),
    });
    if (damage.present) quarantine.push(damage.file);
  };
  report(snapA, snapshotLost);
  report(snapB, snapshotLost);
  for (const d of journalA) report(d, journalLost);
  for (const d of journalB) report(d, journalLost);
  if (aAbsent) {
    findings.push({
      file: a.journalPath,
      code: 'state_repaired',
      problem: 'missing, with its snapshot',
      action: 'rebuilt from the mirror copy',
    });
  }
  if (bAbsent && b !== undefined) {
    findings.push({
      file: b.journalPath,
      code: 'state_repaired',
      problem: 'the mirror copy does not exist (a map from before mirrors, or deleted)',
      action: 'created from the main copy',
    });
  }
  if (earlierSuspects > 0 && !snapshotLost && !journalLost) {
    findings.push({
      file: a.snapshotPath,
      code: 'credential_suspect',
      problem: 'records were lost in every copy earlier',
      action: 'what they named stays denied until `vehicle-agent state repair --accept-loss`',
      denied,
    });
  }
  const differ = b !== undefined && !sameMap(values, valuesA, valuesB);
  const newSuspects = suspects.size > earlierSuspects;
  return {
    values,
    suspects,
    findings,
    rewrite: {
      a: damagedA || differ || newSuspects,
      b: b !== undefined && (damagedB || differ || newSuspects),
    },
    quarantine,
  };
}

function sameMap<V>(values: Map<string, V>, ...others: Map<string, V>[]): boolean {
  for (const other of others) {
    if (other.size !== values.size) return false;
    for (const [k, v] of values) if (JSON.stringify(other.get(k)) !== JSON.stringify(v)) return false;
  }
  return true;
}

async function quarantineCopy(path: string): Promise<void> {
  const bytes = await readFileIfExists(path);
  if (bytes !== undefined && bytes.length > 0)
    await writeFileAtomic(`${path}.corrupt-${uniqueStamp()}`, bytes);
}

function encodeSnapshot<V>(values: Map<string, V>, suspects: Map<string, string>): Buffer {
  return encodeChecksummedJson({
    format: SNAPSHOT_FORMAT,
    entries: [...values.entries()],
    ...(suspects.size > 0 ? { suspects: [...suspects.entries()] } : {}),
  });
}

async function readSnapshot<V>(path: string, parseValue: (value: unknown) => V): Promise<SnapshotRead<V>> {
  const bytes = await readFileIfExists(path);
  if (bytes === undefined) return { state: 'missing' };
  try {
    return { state: 'ok', content: decodeSnapshot(bytes, parseValue), bytes: bytes.length };
  } catch (err) {
    return { state: 'damaged', problem: err instanceof Error ? err.message : String(err) };
  }
}

function decodeSnapshot<V>(bytes: Buffer, parseValue: (value: unknown) => V): SnapshotContent<V> {
  // Format 1 was plain JSON, without a checksum.
  const raw = decodeChecksummedJson(bytes, true);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error('not an object');
  const { format, entries, suspects } = raw as { format?: unknown; entries?: unknown; suspects?: unknown };
  const expected = looksChecksummed(bytes) ? SNAPSHOT_FORMAT : SNAPSHOT_FORMAT_V1;
  if (format !== expected) throw new Error(`format is not ${expected}`);
  if (!Array.isArray(entries)) throw new Error('entries is not an array');
  const values = new Map<string, V>();
  for (const entry of entries) {
    if (!Array.isArray(entry) || entry.length !== 2 || typeof entry[0] !== 'string') {
      throw new Error('an entry is not a [key, value] pair');
    }
    try {
      values.set(entry[0], parseValue(entry[1]));
    } catch (err) {
      throw new Error(
        `unexpected value for ${entry[0]} (${err instanceof Error ? err.message : String(err)})`,
      );
    }
  }
  const suspectMap = new Map<string, string>();
  if (suspects !== undefined) {
    if (!Array.isArray(suspects)) throw new Error('suspects is not an array');
    for (const s of suspects) {
      if (!Array.isArray(s) || typeof s[0] !== 'string' || typeof s[1] !== 'string')
        throw new Error('a suspect is not [key, reason]');
      suspectMap.set(s[0], s[1]);
    }
  }
  return { values, suspects: suspectMap };
}

function parseChange<V>(raw: unknown, parseValue: (value: unknown) => V): Change<V> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error('not an object');
  const record = raw as { k?: unknown; v?: unknown; d?: unknown };
  if (typeof record.k !== 'string') throw new Error('no key');
  if (record.d === 1) return { k: record.k, d: 1 };
  if (!('v' in record)) throw new Error('neither a value nor a delete');
  return { k: record.k, v: parseValue(record.v) };
}
