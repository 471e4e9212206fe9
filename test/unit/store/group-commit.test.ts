import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import { GroupCommitQueue } from '../../../src/store/group-commit.js';

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

  it('after a failed flush rejects that batch and everything later with the same coded error', async () => {
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
  });

  it('fails the queue when an exclusive operation throws', async () => {
    const queue = new GroupCommitQueue<number>('journal-y', async () => {});
    await expect(
      queue.exclusive(async () => {
        throw new AgentError('state_io', 'rename failed');
      }),
    ).rejects.toMatchObject({ code: 'state_io' });
    await expect(queue.submit(1)).rejects.toMatchObject({ code: 'state_io', message: 'rename failed' });
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

    it('a failed fsync rejects only `durable` (never as an unhandled rejection) and fails the queue', async () => {
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
        // Nobody looked at `durable` while it failed.
        await new Promise((r) => setTimeout(r, 10));
        expect(unhandled).toEqual([]);
        await expect(durable).rejects.toMatchObject({ code: 'state_io', message: 'EIO on fdatasync' });
        await expect(queue.submitStaged(2)).rejects.toMatchObject({ message: 'EIO on fdatasync' });
      } finally {
        process.off('unhandledRejection', onUnhandled);
      }
    });
  });
});
