import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  describeReport,
  eventLoopVerdict,
  lockVerdict,
  oneProbeAtATime,
  runHealthChecks,
  type StorageFigures,
  stateDirCheck,
  stateDirVerdict,
  storageVerdict,
} from '../../../src/host/health-monitor.js';
import { stallThresholdMs } from '../../../src/host/supervision.js';
import type { WriteHealth } from '../../../src/store/group-commit.js';

describe('health verdicts', () => {
  it('calls the event loop stalled only past the threshold', () => {
    expect(eventLoopVerdict(40, 5000)).toEqual({ ok: true });
    expect(eventLoopVerdict(5000, 5000)).toEqual({ ok: true });
    expect(eventLoopVerdict(7512.4, 5000)).toEqual({
      ok: false,
      detail: 'event loop stalled 7512 ms (limit 5000 ms)',
    });
  });

  it('derives the stall limit from the watchdog: half the ping interval, 50 ms to 5 s', () => {
    expect(stallThresholdMs(undefined)).toBe(5000);
    expect(stallThresholdMs(15_000)).toBe(5000);
    expect(stallThresholdMs(1000)).toBe(500);
    expect(stallThresholdMs(20)).toBe(50);
  });

  it('fails a lock controller that stopped or is stuck in a transition', () => {
    const base = { running: true, changedAt: 1000, now: 20_000, maxTransitionMs: 15_000 };
    expect(lockVerdict({ ...base, state: 'locked' })).toEqual({ ok: true });
    expect(lockVerdict({ ...base, state: 'unlocked' })).toEqual({ ok: true });
    expect(lockVerdict({ ...base, state: 'unlocking', now: 16_000 })).toEqual({ ok: true });
    expect(lockVerdict({ ...base, state: 'unlocking' })).toEqual({
      ok: false,
      detail: 'lock controller stuck in unlocking for 19000 ms',
    });
    expect(lockVerdict({ ...base, state: 'locking' }).ok).toBe(false);
    expect(lockVerdict({ ...base, running: false, state: 'locked' })).toEqual({
      ok: false,
      detail: 'lock controller not running',
    });
  });

  it('fails (advisory) a state directory that cannot be written or is full', () => {
    expect(stateDirVerdict({ freeBytes: 10_000_000, minFreeBytes: 1_048_576 })).toEqual({ ok: true });
    expect(stateDirVerdict({ accessError: 'EROFS', minFreeBytes: 1 })).toEqual({
      ok: false,
      detail: 'state directory not writable: EROFS',
      advisory: true,
    });
    expect(stateDirVerdict({ freeBytes: 4096, minFreeBytes: 1_048_576 })).toEqual({
      ok: false,
      detail: 'state directory has 4096 bytes free (need 1048576)',
      advisory: true,
    });
  });

  const store = (over: Partial<WriteHealth> = {}): WriteHealth & { name: string } => ({
    name: 'counters',
    store: '/state/counters.journal',
    state: 'ok',
    failures: 0,
    refused: 0,
    pending: 0,
    ...over,
  });

  it.each([
    [[store()], undefined, undefined],
    [[store({ failures: 3, lastError: { code: 'ENOSPC', message: 'x', at: 1 } })], undefined, undefined],
    [
      [
        store({
          state: 'failing',
          failingSince: Date.UTC(2025, 0, 1),
          lastError: { code: 'ENOSPC', message: 'x', at: 1 },
        }),
      ],
      undefined,
      'counters: writes failing (ENOSPC) since 2025-01-01T00:00:00.000Z',
    ],
    [
      [
        store({
          state: 'ok',
          failingSince: Date.UTC(2025, 0, 1),
          lastError: { code: 'EIO', message: 'x', at: 1 },
        }),
      ],
      undefined,
      'counters: writes failing (EIO) since 2025-01-01T00:00:00.000Z',
    ],
    [
      [store({ state: 'latched', lastError: { code: 'state_corrupt', message: 'x', at: 1 } })],
      undefined,
      'counters: stopped after state_corrupt (restart to recover)',
    ],
    [[store({ busyMs: 4999 })], undefined, undefined],
    [[store({ busyMs: 7000.4 })], undefined, 'counters: a write has not finished for 7000 ms'],
    [[store()], { dropped: 0, total: 9, inFlight: 3 }, undefined],
    [
      [store()],
      { dropped: 12, since: Date.UTC(2025, 0, 2), total: 12, inFlight: 0 },
      'audit: 12 event(s) not recorded since 2025-01-02T00:00:00.000Z',
    ],
  ] as const)('storage verdict for %j (audit %j): %s', (stores, audit, problem) => {
    const verdict = storageVerdict({ stores, ...(audit ? { audit } : {}) }, 5000);
    expect(verdict).toEqual(
      problem === undefined ? { ok: true } : { ok: false, detail: problem, advisory: true },
    );
  });
});

describe('audit retention verdicts', () => {
  const retention = (over: Partial<NonNullable<StorageFigures['auditRetention']>>) => ({
    retainedFiles: 0,
    keepFiles: 10,
    maxFiles: 40,
    unsentRecords: 0,
    unsentMissing: 0,
    ...over,
  });
  it.each([
    ['nothing kept for the cloud', retention({}), undefined],
    ['files kept below the cap', retention({ retainedFiles: 29 }), undefined],
    ['an old loss the outbox stepped over', retention({ unsentRecords: 500 }), undefined],
    [
      'at the cap, nothing lost yet',
      retention({ retainedFiles: 30 }),
      'audit: at its file cap (audit.maxFiles 40) keeping records for the cloud; the next rotation deletes some it has not received',
    ],
    [
      'records the outbox needs are gone',
      retention({ retainedFiles: 30, unsentRecords: 500, unsentMissing: 120 }),
      'audit: 120 record(s) the cloud has not received were deleted at the file cap (audit.maxFiles 40; audit_retention_exceeded)',
    ],
  ])('%s', (_name, auditRetention, problem) => {
    expect(storageVerdict({ stores: [], auditRetention }, 5000)).toEqual(
      problem === undefined ? { ok: true } : { ok: false, detail: problem, advisory: true },
    );
  });
});

describe('runHealthChecks', () => {
  it('is healthy only when every check passes, and names the failures', async () => {
    const report = await runHealthChecks(
      [
        { name: 'a', run: () => ({ ok: true }) },
        { name: 'b', run: async () => ({ ok: false, detail: 'broken' }) },
      ],
      { timeoutMs: 1000, wallNow: () => Date.UTC(2025, 0, 1) },
    );
    expect(report).toEqual({
      healthy: false,
      degraded: false,
      at: '2025-01-01T00:00:00.000Z',
      checks: { a: { ok: true }, b: { ok: false, detail: 'broken' } },
    });
    expect(describeReport(report)).toBe('unhealthy: b: broken');
  });

  it('stays healthy but degraded when only advisory checks fail, a hung one included', async () => {
    const report = await runHealthChecks(
      [
        { name: 'a', run: () => ({ ok: true }) },
        { name: 'disk', advisory: true, run: () => ({ ok: false, detail: 'full' }) },
        { name: 'hung', advisory: true, run: () => new Promise(() => {}) },
      ],
      { timeoutMs: 30 },
    );
    expect(report).toMatchObject({ healthy: true, degraded: true });
    expect(report.checks.hung).toEqual({ ok: false, detail: 'no answer within 30 ms', advisory: true });
    expect(describeReport(report)).toBe('degraded: disk: full; hung: no answer within 30 ms');
    const both = await runHealthChecks(
      [
        { name: 'loop', run: () => ({ ok: false, detail: 'stalled' }) },
        { name: 'disk', advisory: true, run: () => ({ ok: false, detail: 'full' }) },
      ],
      { timeoutMs: 30 },
    );
    expect(both).toMatchObject({ healthy: false, degraded: true });
    expect(describeReport(both)).toBe('unhealthy: loop: stalled');
  });

  it('runs a disk probe once at a time: while one hangs, the next run says so without a new probe', async () => {
    let probes = 0;
    let clock = 1000;
    let finish: (r: { ok: true }) => void = () => {};
    const check = oneProbeAtATime(
      {
        name: 'state',
        advisory: true,
        run: () => {
          probes += 1;
          return new Promise((resolve) => {
            finish = resolve;
          });
        },
      },
      () => clock,
    );
    const first = check.run();
    clock += 4000;
    expect(await check.run()).toEqual({
      ok: false,
      detail: 'the last probe has not answered for 4000 ms',
      advisory: true,
    });
    expect(probes).toBe(1);
    finish({ ok: true });
    expect(await first).toEqual({ ok: true });
    void check.run(); // the first answered: a new probe starts
    await Promise.resolve();
    expect(probes).toBe(2);
  });

  it('fails a check that throws or never answers (a hung disk), without waiting for it', async () => {
    const report = await runHealthChecks(
      [
        {
          name: 'throws',
          run: () => {
            throw new Error('boom');
          },
        },
        { name: 'hangs', run: () => new Promise(() => {}) },
        { name: 'fine', run: () => ({ ok: true }) },
      ],
      { timeoutMs: 30 },
    );
    expect(report.healthy).toBe(false);
    expect(report.checks.throws).toEqual({ ok: false, detail: 'boom' });
    expect(report.checks.hangs).toEqual({ ok: false, detail: 'no answer within 30 ms' });
    expect(report.checks.fine).toEqual({ ok: true });
    expect(describeReport({ ...report, healthy: true })).toBe('healthy');
  });
});

describe('stateDirCheck on a real directory', () => {
  const dir = mkdtempSync(join(tmpdir(), 'va-health-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('passes for a writable directory and fails once it is gone', async () => {
    expect(await stateDirCheck(dir, 1).run()).toEqual({ ok: true });
    expect(await stateDirCheck(join(dir, 'missing'), 1).run()).toEqual({
      ok: false,
      detail: 'state directory not writable: ENOENT',
      advisory: true,
    });
    const huge = await stateDirCheck(dir, Number.MAX_SAFE_INTEGER).run();
    expect(huge.ok).toBe(false);
    expect(huge.detail).toMatch(/bytes free/);
  });
});
