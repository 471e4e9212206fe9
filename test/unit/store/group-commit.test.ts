import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import { GroupCommitQueue } from '../../../src/store/group-commit.js';
import { ManualTimers, settle } from '../../helpers/manual-timers.js';

/** A flush that records its batches and completes only when released. */
function gatedFlush() {
  const batches: number[][] = [];
  const gates: Array<() => void> = [];
  const flush = (items: readonly number[]): Promise<void> => {
    batches.push([...items]);
    return new Promise((resolve) => gates.push(resolve));
  };
  const releaseNext = async (): Promise<void> => {
    for (let i = 0; i < 10 && gates.length === 0; i += 1) await new Promise((r) => setImmediate(r));
    gates.shift()?.();
  };
  return { batches, flush, releaseNext };
}

describe('GroupCommitQueue', () => {
  it('makes items submitted during a flush durable together in the next one', async () => {
    const { batches, flush, releaseNext } = gatedFlush();
    const queue = new GroupCommitQueue<number>('test', flush);
    const durable: number[] = [];
    const first = queue.submit(1).then(() => durable.push(1));
    await new Promise((r) => setImmediate(r)); // the first flush is now running
    const rest = [2, 3, 4, 5].map((n) => queue.submit(n).then(() => durable.push(n)));
    expect(durable).toEqual([]);
    await releaseNext();
    await first;
    expect(durable).toEqual([1]);
    await releaseNext();
    await Promise.all(rest);
    expect(batches).toEqual([[1], [2, 3, 4, 5]]);
    expect(durable).toEqual([1, 2, 3, 4, 5]);
  });

  it('runs an exclusive operation after earlier items are durable and before later ones', async () => {
    const order: string[] = [];
    const queue = new GroupCommitQueue<string>('test', async (items) => {
      order.push(`flush ${items.join(',')}`);
    });
    const done = Promise.all([
      queue.submit('a'),
      queue.submit('b'),
      queue.exclusive(async () => {
        order.push('exclusive');
      }),
      queue.submit('c'),
    ]);
    await done;
    expect(order).toEqual(['flush a,b', 'exclusive', 'flush c']);
  });

  it('without a restore, a failed flush latches: that batch and everything later get the same coded error', async () => {
    let fail = true;
    const queue = new GroupCommitQueue<number>('journal-x', async () => {
      if (fail) throw new Error('EIO: i/o error');
    });
    const batch = [queue.submit(1), queue.submit(2)];
    const results = await Promise.allSettled(batch);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    const failure = queue.failed;
    expect(failure).toBeInstanceOf(AgentError);
    expect(failure?.code).toBe('state_io');
    fail = false;
    await expect(queue.submit(3)).rejects.toBe(failure);
    await expect(queue.exclusive(async () => 1)).rejects.toBe(failure);
    expect(queue.health()).toMatchObject({ state: 'latched', failures: 1, refused: 2 });
  });

  it('flushes pending items on close and refuses later ones', async () => {
    const flushed: number[] = [];
    let closed = false;
    const queue = new GroupCommitQueue<number>('journal-z', async (items) => {
      flushed.push(...items);
    });
    const pending = queue.submit(1);
    await queue.close(async () => {
      closed = true;
    });
    await pending;
    expect(flushed).toEqual([1]);
    expect(closed).toBe(true);
    await expect(queue.submit(2)).rejects.toMatchObject({ code: 'state_io', message: 'journal-z is closed' });
  });

  describe('staged submissions', () => {
    /** A flush in two gated steps, as a journal does it: write, then fsync. */
    function twoStepFlush(fail?: 'write' | 'sync') {
      const steps: string[] = [];
      const gates: Array<() => void> = [];
      const gate = () => new Promise<void>((resolve) => gates.push(resolve));
      const flush = async (items: readonly number[], written: () => void): Promise<void> => {
        await gate();
        if (fail === 'write') throw new Error('ENOSPC on write');
        steps.push(`write ${items.join(',')}`);
        written();
        await gate();
        if (fail === 'sync') throw new Error('EIO on fdatasync');
        steps.push(`sync ${items.join(',')}`);
      };
      const step = async (): Promise<void> => {
        for (let i = 0; i < 10 && gates.length === 0; i += 1) await new Promise((r) => setImmediate(r));
        gates.shift()?.();
        await new Promise((r) => setImmediate(r));
      };
      return { steps, flush, step };
    }

    it('resolve once written, with a durable promise that settles after the fsync', async () => {
      const { steps, flush, step } = twoStepFlush();
      const queue = new GroupCommitQueue<number>('test', flush);
      let written = false;
      const staged = queue.submitStaged(7).then((s) => {
        written = true;
        return s;
      });
      await step();
      expect(written).toBe(true);
      expect(steps).toEqual(['write 7']);
      let durable = false;
      const done = (await staged).durable.then(() => {
        durable = true;
      });
      await new Promise((r) => setImmediate(r));
      expect(durable).toBe(false);
      await step();
      await done;
      expect(steps).toEqual(['write 7', 'sync 7']);
    });

    it('a failed write rejects the submission itself', async () => {
      const { flush, step } = twoStepFlush('write');
      const queue = new GroupCommitQueue<number>('test', flush);
      const refused = expect(queue.submitStaged(1)).rejects.toMatchObject({
        code: 'state_io',
        message: 'ENOSPC on write',
      });
      await step();
      await refused;
    });

    it('a failed fsync rejects only `durable` (never as an unhandled rejection) and, without a restore, fails the queue', async () => {
      const { flush, step } = twoStepFlush('sync');
      const queue = new GroupCommitQueue<number>('test', flush);
      const unhandled: unknown[] = [];
      const onUnhandled = (reason: unknown) => unhandled.push(reason);
      process.on('unhandledRejection', onUnhandled);
      try {
        const staged = queue.submitStaged(1);
        await step();
        const { durable } = await staged;
        await step();
        // Nobody looked at `durable` while it failed; Node reports an unhandled one once the loop turns.
        await settle();
        expect(unhandled).toEqual([]);
        await expect(durable).rejects.toMatchObject({ code: 'state_io', message: 'EIO on fdatasync' });
        await expect(queue.submitStaged(2)).rejects.toMatchObject({ message: 'EIO on fdatasync' });
      } finally {
        process.off('unhandledRejection', onUnhandled);
      }
    });
  });

  describe('recovery after a failed write (a full disk that frees up, a disk that answers again)', () => {
    /** A flush whose outcome the test sets per call; a restore that records its calls. */
    function faultyStore(options: { restoreFailures?: number; restoreError?: AgentError } = {}) {
      const timers = new ManualTimers();
      const flushed: number[][] = [];
      const outcomes: ('ok' | 'ENOSPC' | 'EIO')[] = [];
      let restores = 0;
      let restoreFailures = options.restoreFailures ?? 0;
      const restoreTimes: number[] = [];
      const queue = new GroupCommitQueue<number>(
        'store-a',
        async (items) => {
          const outcome = outcomes.shift() ?? 'ok';
          if (outcome !== 'ok') {
            throw new AgentError('state_io', `cannot append to store-a: ${outcome}`, { errno: outcome });
          }
          flushed.push([...items]);
        },
        {
          timers,
          wallNow: () => 1_000_000 + timers.now(),
          restore: async () => {
            restores += 1;
            restoreTimes.push(timers.now());
            if (options.restoreError) throw options.restoreError;
            if (restoreFailures > 0) {
              restoreFailures -= 1;
              throw new AgentError('state_io', 'cannot restore store-a: EIO', { errno: 'EIO' });
            }
          },
        },
      );
      return { queue, timers, flushed, outcomes, restores: () => restores, restoreTimes };
    }

    it('rejects the failed batch, restores, and takes the next append (no latch)', async () => {
      const { queue, flushed, outcomes, restores } = faultyStore();
      outcomes.push('ENOSPC');
      await expect(queue.submit(1)).rejects.toMatchObject({ code: 'state_io', details: { errno: 'ENOSPC' } });
      await settle();
      expect(restores()).toBe(1);
      expect(queue.failed).toBeUndefined();
      const health = queue.health();
      expect(health).toMatchObject({ state: 'ok', failures: 1, failingSince: 1_000_000 });
      expect(health.lastError).toMatchObject({ code: 'ENOSPC' });
      await queue.submit(2);
      expect(flushed).toEqual([[2]]);
      // A successful write ends the failing streak; the count and the last error stay for /metrics.
      expect(queue.health()).toMatchObject({ state: 'ok', failures: 1, lastError: { code: 'ENOSPC' } });
      expect(queue.health().failingSince).toBeUndefined();
    });

    it('keeps items submitted during the failed flush when the restore succeeds before their turn', async () => {
      const { queue, flushed, outcomes } = faultyStore();
      outcomes.push('ENOSPC');
      const first = queue.submit(1);
      const second = queue.submit(2); // same batch: fails with it
      await expect(first).rejects.toMatchObject({ code: 'state_io' });
      await expect(second).rejects.toMatchObject({ code: 'state_io' });
      await queue.submit(3);
      expect(flushed).toEqual([[3]]);
    });

    it('refuses at once while the restore fails and retries it with doubling backoff until it works', async () => {
      const { queue, timers, restores, restoreTimes, flushed, outcomes } = faultyStore({
        restoreFailures: 4,
      });
      outcomes.push('EIO');
      await expect(queue.submit(1)).rejects.toMatchObject({ code: 'state_io' });
      await settle();
      expect(restores()).toBe(1);
      // Refused without waiting for the disk: the caller (a signature counter) learns it now.
      await expect(queue.submit(2)).rejects.toMatchObject({ code: 'state_io' });
      expect(queue.health()).toMatchObject({ state: 'failing', refused: 1 });
      await timers.advance(10_000);
      expect(restoreTimes).toEqual([0, 100, 300, 700, 1500]);
      expect(queue.failed).toBeUndefined();
      await queue.submit(3);
      expect(flushed).toEqual([[3]]);
      expect(timers.pending()).toBe(0);
    });

    it('caps the backoff at maxRetryMs', async () => {
      const { queue, timers, restoreTimes, outcomes } = faultyStore({ restoreFailures: 100 });
      outcomes.push('EIO');
      await expect(queue.submit(1)).rejects.toMatchObject({ code: 'state_io' });
      await timers.advance(30_000);
      const gaps = restoreTimes.slice(1).map((t, i) => t - (restoreTimes[i] ?? 0));
      expect(Math.max(...gaps)).toBe(5000);
      expect(gaps.slice(0, 6)).toEqual([100, 200, 400, 800, 1600, 3200]);
    });

    it('latches when the restore finds the durable state gone (state_corrupt), without retrying', async () => {
      const corrupt = new AgentError('state_corrupt', 'store-a lost durable records');
      const { queue, timers, restores, outcomes } = faultyStore({ restoreError: corrupt });
      outcomes.push('EIO');
      await expect(queue.submit(1)).rejects.toMatchObject({ code: 'state_io' });
      await timers.advance(60_000);
      expect(restores()).toBe(1);
      expect(queue.health().state).toBe('latched');
      await expect(queue.submit(2)).rejects.toBe(corrupt);
    });

    it('restores after a failed exclusive operation (a compaction on a full disk) and goes on', async () => {
      const { queue, flushed, restores } = faultyStore();
      await expect(
        queue.exclusive(async () => {
          throw new AgentError('state_io', 'cannot write snapshot: ENOSPC', { errno: 'ENOSPC' });
        }),
      ).rejects.toMatchObject({ code: 'state_io' });
      expect(restores()).toBe(1);
      await queue.submit(1);
      expect(flushed).toEqual([[1]]);
      expect(queue.health()).toMatchObject({ failures: 1, lastError: { code: 'ENOSPC' } });
    });

    it('stops retrying once closed', async () => {
      const { queue, timers, restores, outcomes } = faultyStore({ restoreFailures: 100 });
      outcomes.push('EIO');
      await expect(queue.submit(1)).rejects.toMatchObject({ code: 'state_io' });
      await queue.close(async () => {});
      await timers.advance(60_000);
      expect(restores()).toBe(1);
      expect(timers.pending()).toBe(0);
    });

    it('a failed fsync of a staged item rejects `durable`, restores, and later staged items go through', async () => {
      let syncFails = true;
      let restored = 0;
      const queue = new GroupCommitQueue<number>(
        'store-b',
        async (_items, written) => {
          written();
          if (syncFails) {
            syncFails = false;
            throw new AgentError('state_io', 'cannot append to store-b: EIO', { errno: 'EIO' });
          }
        },
        {
          restore: async () => {
            restored += 1;
          },
        },
      );
      const { durable } = await queue.submitStaged(1);
      await expect(durable).rejects.toMatchObject({ code: 'state_io' });
      expect(restored).toBe(1);
      const next = await queue.submitStaged(2);
      await expect(next.durable).resolves.toBeUndefined();
    });
  });

  describe('a write that does not finish (a frozen filesystem)', () => {
    it('bounds the items waiting behind it and refuses more with state_io, counting them', async () => {
      const { flush, releaseNext } = gatedFlush();
      const queue = new GroupCommitQueue<number>('store-c', flush, { maxPendingItems: 3 });
      const accepted = [queue.submit(1), queue.submit(2), queue.submit(3)];
      await expect(queue.submit(4)).rejects.toMatchObject({ code: 'state_io' });
      expect(queue.health()).toMatchObject({ pending: 3, refused: 1 });
      await releaseNext();
      await Promise.all(accepted);
      expect(queue.health().pending).toBe(0);
      await releaseNext().then(() => {}); // nothing queued: a no-op
      const later = queue.submit(5);
      await releaseNext();
      await later;
    });

    it('reports how long the write in progress has been running', async () => {
      const timers = new ManualTimers();
      const { flush, releaseNext } = gatedFlush();
      const queue = new GroupCommitQueue<number>('store-d', flush, { timers });
      expect(queue.health().busyMs).toBeUndefined();
      const pending = queue.submit(1);
      await settle();
      await timers.advance(7000);
      expect(queue.health().busyMs).toBe(7000);
      await releaseNext();
      await pending;
      expect(queue.health().busyMs).toBeUndefined();
    });
  });
});
