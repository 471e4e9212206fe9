/**
 * The durable store's proof (issue 2, part 5): a writer in a child process appends journal
 * records, audit records, map changes and atomic file replacements as fast as it can, reporting
 * each one after it became durable (a staged map counter, recorded as the agent records a
 * signature counter before the relay, once written and before its fdatasync). It is killed with
 * SIGKILL at random moments (most runs while writing, some while it opens and recovers the
 * stores) at least 200 times. After every kill the stores are reopened here and must load, never
 * corrupt, with every reported record present.
 *
 * Linux finishes a small write() before a SIGKILL lands, so a kill alone almost never leaves a
 * torn record (measured: 0 in 120 kills, even with 1.6 MB batches); a power cut does. So every
 * few runs the test also appends a torn record, as a power cut leaves it, before reopening, and
 * checks that recovery cuts exactly that and the next writer carries on after it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { appendFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { readJsonFileIfExists } from '../../src/store/atomic.js';
import { AuditLog, verifyAuditLog } from '../../src/store/audit-log.js';
import { Journal } from '../../src/store/journal.js';
import { JournaledMap } from '../../src/store/journaled-map.js';

const WRITER = fileURLToPath(new URL('../fixtures/store-crash-writer.mjs', import.meta.url));
const RUNS = 220;
const RUNS_PER_STORE = 44;
const SEED = Number(process.env.CRASH_TEST_SEED ?? Date.now() % 1_000_000);

/** mulberry32: a small seeded PRNG so a failing run can be replayed with CRASH_TEST_SEED. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface RunReport {
  journal: string[];
  audit: number[];
  file: number;
  map: number;
  ready: boolean;
}

/**
 * Writers started ahead of time: Node's start-up (100-200 ms here) is most of a run, so a few
 * writers boot while the current one runs, each waiting for `GO <dir> <run>` on stdin.
 */
class WriterPool {
  private readonly idle: ChildProcess[] = [];
  private readonly all = new Set<ChildProcess>();

  constructor(size: number) {
    for (let i = 0; i < size; i += 1) this.idle.push(this.spawn());
  }

  take(): ChildProcess {
    const child = this.idle.shift() ?? this.spawn();
    this.idle.push(this.spawn());
    return child;
  }

  /** Ends every writer this pool started that is still alive, by its PID. */
  stop(): void {
    for (const child of this.all) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  }

  private spawn(): ChildProcess {
    const child = spawn(process.execPath, [WRITER], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.all.add(child);
    child.on('close', () => this.all.delete(child));
    return child;
  }
}

/** Releases a writer on `dir` and kills it `delayMs` after it printed `killAfter`; collects its reports. */
function runWriter(
  pool: WriterPool,
  dir: string,
  run: number,
  killAfter: 'BOOT' | 'READY',
  delayMs: number,
): Promise<RunReport> {
  const report: RunReport = { journal: [], audit: [], file: 0, map: 0, ready: false };
  const child = pool.take();
  let stderr = '';
  let pending = '';
  let killTimer: NodeJS.Timeout | undefined;
  const kill = (): void => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  const watchdog = setTimeout(kill, 10_000);
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  child.stdout?.on('data', (chunk: Buffer) => {
    pending += chunk.toString();
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) {
      const [kind, value = ''] = line.split(' ');
      if (kind === killAfter && killTimer === undefined) killTimer = setTimeout(kill, delayMs);
      if (kind === 'READY') report.ready = true;
      else if (kind === 'J') report.journal.push(value);
      else if (kind === 'A') report.audit.push(Number(value));
      else if (kind === 'F') report.file = Math.max(report.file, Number(value));
      else if (kind === 'M') report.map = Math.max(report.map, Number(value));
    }
  });
  const done = new Promise<RunReport>((resolve, reject) => {
    child.on('close', (code, signal) => {
      clearTimeout(watchdog);
      clearTimeout(killTimer);
      if (signal === 'SIGKILL' && stderr === '') resolve(report);
      else reject(new Error(`writer run ${run} ended with code ${code} signal ${signal}: ${stderr}`));
    });
  });
  child.stdin?.write(`GO ${dir} ${run}\n`);
  return done;
}

function digestOf(version: number, payload: string): string {
  return createHash('sha256').update(`${version}:${payload}`).digest('hex');
}

function checkState(value: unknown): { version: number } {
  const state = value as { version?: unknown; payload?: unknown; digest?: unknown };
  if (typeof state.version !== 'number' || typeof state.payload !== 'string') throw new Error('not a state');
  if (state.digest !== digestOf(state.version, state.payload))
    throw new Error('digest mismatch: a mix of versions');
  return { version: state.version };
}

function journalId(value: unknown): string {
  const id = (value as { id?: unknown }).id;
  if (typeof id !== 'string') throw new Error('no id');
  return id;
}

/** Everything the writers reported durable in one store directory, across its runs. */
interface Durable {
  ids: Set<string>;
  audit: number;
  file: number;
  map: number;
}

const AUDIT_OPTIONS = { maxFileBytes: 8192, keepFiles: 6 }; // as in the writer

/** Reopens every store in `dir` after a kill and checks it against what was reported durable. */
/** Appends a cut-off record to each append-only file, as a power cut mid-write leaves it. */
function tearTails(dir: string, random: () => number): number {
  const tornPrefix = (line: string): string => line.slice(0, 1 + Math.floor(random() * (line.length - 1)));
  const json = JSON.stringify({ id: 'torn', pad: 't'.repeat(200) });
  const journalTail = tornPrefix(`${crc32(Buffer.from(json)).toString(16).padStart(8, '0')} ${json}\n`);
  appendFileSync(join(dir, 'journal'), journalTail);
  appendFileSync(join(dir, 'map.journal'), tornPrefix('01234567 {"k":"counter","v":1}\n'));
  const auditFiles = readdirSync(join(dir, 'audit'))
    .filter((name) => name.endsWith('.jsonl'))
    .sort();
  const newest = auditFiles.at(-1);
  if (newest !== undefined)
    appendFileSync(
      join(dir, 'audit', newest),
      tornPrefix(`{"seq":1,"ts":"x","type":"t","prev":"${'0'.repeat(64)}"}\n`),
    );
  return Buffer.byteLength(journalTail);
}

async function checkStores(
  dir: string,
  report: RunReport,
  durable: Durable,
  tornBytes: number,
  where: string,
): Promise<void> {
  // The atomic file: always one complete version, never older than the last reported.
  const state = await readJsonFileIfExists(join(dir, 'state.json'), { parse: checkState });
  if (durable.file > 0) expect(state?.version, where).toBeGreaterThanOrEqual(durable.file);

  // The journal: loads (no corrupt record), holds every reported id, no duplicates.
  const opened = await Journal.open(join(dir, 'journal'), { parse: journalId });
  await opened.journal.close();
  expect(opened.recovery.truncatedBytes, where).toBeGreaterThanOrEqual(tornBytes);
  const ids = new Set(opened.records);
  expect(ids.size, where).toBe(opened.records.length);
  expect(
    [...durable.ids].filter((id) => !ids.has(id)),
    where,
  ).toEqual([]);

  // The map: loads, and the counter never fell below the last reported.
  const map = await JournaledMap.open<unknown>(join(dir, 'map'));
  expect(Number(map.get('counter') ?? 0), where).toBeGreaterThanOrEqual(durable.map);
  await map.close();

  // The audit log: verifies before and after recovery; every reported seq is there (rotation
  // keeps the last few files, which always hold this run's records).
  const auditDir = join(dir, 'audit');
  const before = await verifyAuditLog(auditDir);
  expect(before.ok ? 'ok' : before.broken, where).toBe('ok');
  const log = await AuditLog.open(auditDir, AUDIT_OPTIONS);
  expect(log.lastSeq, where).toBeGreaterThanOrEqual(durable.audit);
  if (report.audit.length > 0) {
    const present = new Set<number>();
    for await (const record of log.readFrom(Math.min(...report.audit))) present.add(record.seq);
    expect(
      report.audit.filter((seq) => !present.has(seq)),
      where,
    ).toEqual([]);
  }
  await log.close();
  const after = await verifyAuditLog(auditDir);
  expect(after.ok ? after.notes.filter((note) => note.includes('partial')) : after.broken, where).toEqual([]);

  // A kill only ever tears the last write: nothing had to be set aside, and at most one temp
  // file per target is left behind (the next write to it removes it).
  const files = [...readdirSync(dir), ...readdirSync(auditDir)];
  expect(
    files.filter((name) => name.includes('.corrupt-')),
    where,
  ).toEqual([]);
  const temps = files
    .filter((name) => name.includes('.tmp-'))
    .map((name) => name.slice(0, name.indexOf('.tmp-')));
  expect(temps.length, where).toBe(new Set(temps).size);
}

describe('durable store under kill -9', () => {
  const root = mkdtempSync(join(tmpdir(), 'va-crash-'));
  const pool = new WriterPool(3);
  afterAll(() => {
    pool.stop();
    rmSync(root, { recursive: true, force: true });
  });

  it(`loses nothing reported durable across ${RUNS} kills (seed ${SEED})`, { timeout: 180_000 }, async () => {
    const random = prng(SEED);
    let killsWhileWriting = 0;
    let reportedRecords = 0;
    let durable: Durable = { ids: new Set(), audit: 0, file: 0, map: 0 };
    let dir = root;

    for (let run = 1; run <= RUNS; run += 1) {
      // A fresh store every RUNS_PER_STORE runs keeps each check's reading bounded.
      if ((run - 1) % RUNS_PER_STORE === 0) {
        dir = join(root, `store-${run}`);
        mkdirSync(dir);
        durable = { ids: new Set(), audit: 0, file: 0, map: 0 };
      }
      const during = run % 8 === 0 ? 'BOOT' : 'READY';
      const delay = during === 'BOOT' ? random() * 10 : 5 + random() * 35;
      const report = await runWriter(pool, dir, run, during, delay);
      if (report.ready && report.journal.length + report.audit.length > 0) killsWhileWriting += 1;
      reportedRecords += report.journal.length + report.audit.length;
      for (const id of report.journal) durable.ids.add(id);
      durable.audit = Math.max(durable.audit, ...report.audit);
      durable.file = Math.max(durable.file, report.file);
      durable.map = Math.max(durable.map, report.map);
      const tornBytes = report.ready && run % 4 === 1 ? tearTails(dir, random) : 0;
      await checkStores(
        dir,
        report,
        durable,
        tornBytes,
        `seed ${SEED}, run ${run}, killed ${delay.toFixed(1)} ms after ${during}, torn ${tornBytes}`,
      );
    }

    // The test proved something only if the kills really landed mid-write (the bounds are far
    // below what a busy 2-core machine gives, about 190 runs and 4000 records).
    expect(killsWhileWriting).toBeGreaterThan(RUNS / 3);
    expect(reportedRecords).toBeGreaterThan(RUNS);
  });
});
