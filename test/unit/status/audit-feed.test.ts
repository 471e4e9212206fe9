import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/core/logger.js';
import { AuditFeed, type AuditSource, countDecisions, recordsAfter } from '../../../src/status/audit-feed.js';
import type { AuditRecord } from '../../../src/store/audit-log.js';

function record(seq: number, fields: Record<string, unknown> = {}): AuditRecord {
  return { seq, ts: '2025-06-01T00:00:00.000Z', type: 'lock', prev: '0', hash: '1', ...fields };
}

/** An audit log stand-in: a tail of the last `capacity` records and the full history on "disk". */
class FakeLog implements AuditSource {
  readonly all: AuditRecord[] = [];
  reads = 0;
  constructor(private readonly capacity: number) {}
  get lastSeq(): number {
    return this.all.at(-1)?.seq ?? 0;
  }
  append(fields: Record<string, unknown> = {}): void {
    this.all.push(record(this.lastSeq + 1, fields));
  }
  recent(n: number): AuditRecord[] {
    return this.all.slice(-Math.min(n, this.capacity));
  }
  async *readFrom(fromSeq: number): AsyncGenerator<AuditRecord> {
    this.reads++;
    for (const r of this.all) if (r.seq >= fromSeq) yield r;
  }
}

describe('audit feed', () => {
  it('finds records after a seq and tells when the tail no longer holds the next one', () => {
    const tail = [record(5), record(6), record(7)];
    expect(recordsAfter(tail, 5)).toEqual({ records: [record(6), record(7)], complete: true });
    expect(recordsAfter(tail, 2).complete).toBe(false);
    expect(recordsAfter(tail, 7)).toEqual({ records: [], complete: true });
  });

  it('counts access decisions by result and code and ignores other records', () => {
    const counts = new Map<string, Map<string, number>>();
    countDecisions(counts, [
      record(1, { type: 'access', result: 'granted' }),
      record(2, { type: 'access', result: 'denied', code: 'bad_proof' }),
      record(3, { type: 'access', result: 'denied', code: 'bad_proof' }),
      record(4, { type: 'lock', state: 'unlocked' }),
      record(5, { type: 'access.summary', result: 'denied', code: 'malformed', count: 40 }),
    ]);
    expect([...counts].map(([r, m]) => [r, [...m]])).toEqual([
      ['granted', [['', 1]]],
      [
        'denied',
        [
          ['bad_proof', 2],
          ['malformed', 40],
        ],
      ],
    ]);
  });

  it('delivers only new records, each once, and reads a burst larger than the tail from the files', async () => {
    const log = new FakeLog(3);
    log.append();
    const feed = new AuditFeed(log, silentLogger);
    const got: number[] = [];
    feed.subscribe((records) => got.push(...records.map((r) => r.seq)));
    await feed.poll();
    expect(got).toEqual([]); // what was there before the page started is history, not news
    log.append({ type: 'access', result: 'granted' });
    await feed.poll();
    await feed.poll();
    expect(got).toEqual([2]);
    for (let i = 0; i < 6; i++) log.append({ type: 'access', result: 'denied', code: 'revoked' });
    await feed.poll();
    expect(got).toEqual([2, 3, 4, 5, 6, 7, 8]);
    expect(log.reads).toBe(1);
    expect(feed.lastSeq).toBe(8);
    expect(feed.decisions.get('denied')?.get('revoked')).toBe(6);
    expect(feed.since(6).map((r) => r.seq)).toEqual([7, 8]);
    feed.stop();
  });

  it('keeps delivering when a listener throws', async () => {
    const log = new FakeLog(10);
    const feed = new AuditFeed(log, silentLogger);
    const got: number[] = [];
    feed.subscribe(() => {
      throw new Error('bad listener');
    });
    feed.subscribe((records) => got.push(...records.map((r) => r.seq)));
    log.append();
    await feed.poll();
    expect(got).toEqual([1]);
  });
});
