import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  describeReport,
  eventLoopVerdict,
  lockVerdict,
  runHealthChecks,
  stateDirCheck,
  stateDirVerdict,
} from '../../../src/agent/health-monitor.js';
import { stallThresholdMs } from '../../../src/agent/supervision.js';

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

  it('fails a state directory that cannot be written or is full', () => {
    expect(stateDirVerdict({ freeBytes: 10_000_000, minFreeBytes: 1_048_576 })).toEqual({ ok: true });
    expect(stateDirVerdict({ accessError: 'EROFS', minFreeBytes: 1 })).toEqual({
      ok: false,
      detail: 'state directory not writable: EROFS',
    });
    expect(stateDirVerdict({ freeBytes: 4096, minFreeBytes: 1_048_576 })).toEqual({
      ok: false,
      detail: 'state directory has 4096 bytes free (need 1048576)',
    });
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
      at: '2025-01-01T00:00:00.000Z',
      checks: { a: { ok: true }, b: { ok: false, detail: 'broken' } },
    });
    expect(describeReport(report)).toBe('unhealthy: b: broken');
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
    });
    const huge = await stateDirCheck(dir, Number.MAX_SAFE_INTEGER).run();
    expect(huge.ok).toBe(false);
    expect(huge.detail).toMatch(/bytes free/);
  });
});
