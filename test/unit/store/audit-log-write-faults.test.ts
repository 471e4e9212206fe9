import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AuditLog, verifyAuditLog } from '../../../src/store/audit-log.js';
import { fillUp, freeUp, mountTmpfs, type ScratchFs } from '../../helpers/scratch-fs.js';

/**
 * The audit log on a real filesystem that fills up (a size-limited tmpfs): appends fail while it
 * is full, resume by themselves when space returns, and the chain has no gap where the failed
 * records would have been (`audit verify` passes).
 */
describe('AuditLog on a tmpfs that fills up and frees again', () => {
  let fs: ScratchFs | undefined;
  afterEach(() => {
    fs?.dispose();
    fs = undefined;
  });

  it('refuses while full, resumes when space returns, and keeps one unbroken chain', async () => {
    fs = mountTmpfs(256 * 1024);
    const dir = join(fs.dir, 'audit');
    const log = await AuditLog.open(dir);
    const filler = fillUp(fs.dir);
    // The new log's file is empty: its first record needs a page the full disk does not have.
    const failed = await Promise.allSettled([log.append({ type: 'a' }), log.append({ type: 'b' })]);
    expect(failed.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    await expect(log.append({ type: 'c' })).rejects.toMatchObject({
      code: 'state_io',
      details: { errno: 'ENOSPC' },
    });
    expect(log.writeHealth).toMatchObject({ state: 'ok', lastError: { code: 'ENOSPC' } });
    expect(log.writeHealth.failures).toBeGreaterThanOrEqual(2);
    expect(log.writeHealth.failingSince).toBeGreaterThan(0);
    expect(log.lastSeq).toBe(0);

    freeUp(filler);
    const first = await log.append({ type: 'resumed' });
    const second = await log.append({ type: 'next' });
    expect([first.seq, second.seq]).toEqual([1, 2]);
    expect(log.writeHealth.failingSince).toBeUndefined();
    await log.close();

    const verified = await verifyAuditLog(dir);
    expect(verified).toMatchObject({ ok: true, records: 2, firstSeq: 1, lastSeq: 2 });
    const reopened = await AuditLog.open(dir);
    expect(reopened.recent(10).map((r) => r.type)).toEqual(['resumed', 'next']);
    await reopened.close();
  });
});
