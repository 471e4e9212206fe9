import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Outbox } from '../../src/cloud/outbox.js';
import { silentLogger } from '../../src/core/logger.js';
import { AuditLog } from '../../src/store/audit-log.js';
import { fillUp, freeUp, mountTmpfs, type ScratchFs } from '../helpers/scratch-fs.js';
import { waitFor } from '../helpers/wait.js';

/**
 * The outbox over a real audit log on a disk that fills up while group commits are in flight
 * (size-limited tmpfs): a batch cut short by ENOSPC is cut back and its seqs are given to the next
 * records, and the outbox, flushing all the while, never counts a seq as sent or missing that the
 * log did not end up holding. Every seq the log holds reaches the link; nothing is stepped over.
 * Read both from the log's in-memory tail and from its files (recentCapacity 0).
 */

let disk: ScratchFs | undefined;
afterEach(() => {
  disk?.dispose();
  disk = undefined;
});

async function burst(log: AuditLog, n: number, tag: string): Promise<number> {
  const results = await Promise.allSettled(
    Array.from({ length: n }, (_, i) => log.append({ type: 'test', tag, i, pad: 'x'.repeat(150) })),
  );
  return results.filter((r) => r.status === 'fulfilled').length;
}

describe('the outbox while the audit disk fills up and frees', () => {
  for (const recentCapacity of [100, 0]) {
    it(`sends every record the log holds, none stepped over (tail of ${recentCapacity})`, async () => {
      disk = mountTmpfs(1024 * 1024);
      const cloudDir = join(disk.dir, 'cloud');
      mkdirSync(cloudDir);
      const log = await AuditLog.open(join(disk.dir, 'audit'), { recentCapacity, anchorIntervalMs: 0 });
      const markers: Record<string, unknown>[] = [];
      const outbox = await Outbox.open({
        source: log,
        dir: cloudDir,
        maxEvents: 10_000,
        pollMs: 2,
        persistMs: 1,
        emit: (event) => {
          markers.push(event);
        },
        log: silentLogger,
      });
      const published: number[] = [];
      const publish = async (record: { seq: number }) => {
        published.push(record.seq);
        await new Promise((resolve) => setImmediate(resolve));
      };
      outbox.attach(publish, 5);
      let accepted = await burst(log, 30, 'before');
      let refused = 0;
      for (let round = 0; round < 6; round++) {
        // A page or two left: the next group commit is cut short by ENOSPC mid-write.
        const filler = fillUp(disk.dir, round % 2);
        try {
          for (let b = 0; b < 3; b++) {
            const ok = await burst(log, 25, `full ${round}.${b}`);
            accepted += ok;
            refused += 25 - ok;
            if (b === 1) {
              outbox.detach();
              outbox.attach(publish, 5);
            }
          }
        } finally {
          freeUp(filler);
        }
        // Space again: the log resumes once its restore succeeds.
        await waitFor(async () => (await burst(log, 1, 'probe')) === 1, 'the log takes writes again');
        accepted += 1;
        accepted += await burst(log, 20, `after ${round}`);
      }
      expect(refused).toBeGreaterThan(0); // the disk really was full for some writes
      expect(log.lastSeq).toBe(accepted); // no seq lost to a failed write
      await waitFor(() => outbox.stats().ackedSeq === log.lastSeq, 'every record acknowledged');
      expect(markers).toEqual([]);
      expect([...new Set(published)].sort((a, b) => a - b)).toEqual(
        Array.from({ length: log.lastSeq }, (_, i) => i + 1),
      );
      await outbox.close();
      await log.close();
    });
  }
});
