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
});
