import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeFileAtomic } from '../src/store/atomic.js';
import { AuditLog } from '../src/store/audit-log.js';
import { Journal } from '../src/store/journal.js';
import { JournaledMap } from '../src/store/journaled-map.js';
import { round, summarise } from './stats.js';

/**
 * Durable store figures on the disk that holds the temp directory (or `dir`): every append here
 * waits for fdatasync, so these are the disk's sync latency and what group commit makes of it.
 */
export async function benchStore(options: { dir?: string } = {}): Promise<Record<string, number>> {
  const dir = await mkdtemp(join(options.dir ?? tmpdir(), 'va-bench-store-'));
  try {
    const record = { op: 'grant', id: 'cred-0000', jws: 'x'.repeat(200) };

    // One durable append at a time: each waits for its own fdatasync.
    const sequential = await Journal.open(join(dir, 'sequential.journal'));
    const sequentialCount = 300;
    let start = performance.now();
    for (let i = 0; i < sequentialCount; i += 1) await sequential.journal.append({ ...record, i });
    const sequentialMs = performance.now() - start;
    await sequential.journal.close();

    // Many concurrent appends: group commit makes a batch durable with one fdatasync. In waves
    // of 5 000: the queue refuses more than 10 000 waiting writes (back-pressure, by design).
    const grouped = await Journal.open(join(dir, 'grouped.journal'));
    const groupedCount = 20_000;
    const wave = 5_000;
    start = performance.now();
    for (let w = 0; w < groupedCount; w += wave) {
      await Promise.all(
        Array.from({ length: wave }, (_, i) => grouped.journal.append({ ...record, i: w + i })),
      );
    }
    const groupedMs = performance.now() - start;
    await grouped.journal.close();

    // Audit appends as the agent makes them: one decision at a time, latency to durable.
    const audit = await AuditLog.open(join(dir, 'audit'));
    const latencies: number[] = [];
    for (let i = 0; i < 500; i += 1) {
      const t = performance.now();
      await audit.append({
        type: 'decision',
        outcome: 'grant',
        reason: 'ok',
        credential: 'cred-0001',
        reader: 'nfc0',
        i,
      });
      latencies.push(performance.now() - t);
    }
    const auditGroupedCount = 5000;
    start = performance.now();
    await Promise.all(Array.from({ length: auditGroupedCount }, (_, i) => audit.append({ type: 'tick', i })));
    const auditGroupedMs = performance.now() - start;
    await audit.close();
    const auditLatency = summarise(latencies);

    // A counter update (journaled map set) and an atomic file replacement, to durable.
    const map = await JournaledMap.open<number>(join(dir, 'counters'));
    const setLatencies: number[] = [];
    for (let i = 0; i < 200; i += 1) {
      const t = performance.now();
      await map.set('kid', i);
      setLatencies.push(performance.now() - t);
    }
    await map.close();
    const atomicLatencies: number[] = [];
    for (let i = 0; i < 100; i += 1) {
      const t = performance.now();
      await writeFileAtomic(join(dir, 'state.json'), JSON.stringify({ i, pad: 'y'.repeat(2000) }));
      atomicLatencies.push(performance.now() - t);
    }

    return {
      journal_sequential_appends_per_s: round(sequentialCount / (sequentialMs / 1000), 0),
      journal_group_commit_appends_per_s: round(groupedCount / (groupedMs / 1000), 0),
      audit_append_p50_ms: round(auditLatency.p50),
      audit_append_p99_ms: round(auditLatency.p99),
      audit_group_commit_appends_per_s: round(auditGroupedCount / (auditGroupedMs / 1000), 0),
      map_set_p50_ms: round(summarise(setLatencies).p50),
      atomic_write_p50_ms: round(summarise(atomicLatencies).p50),
      atomic_write_p99_ms: round(summarise(atomicLatencies).p99),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
