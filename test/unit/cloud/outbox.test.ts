import { mkdirSync, mkdtempSync, rmdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Outbox } from '../../../src/cloud/outbox.js';
import { silentLogger } from '../../../src/core/logger.js';
import { AuditLog, type AuditRecord } from '../../../src/store/audit-log.js';
import { openStores } from '../../../src/store/store-registry.js';
import { quietFor, waitFor } from '../../helpers/wait.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'va-outbox-'));
  dirs.push(d);
  return d;
}

async function fill(log: AuditLog, n: number, type = 'test'): Promise<void> {
  await Promise.all(Array.from({ length: n }, (_, i) => log.append({ type, i })));
}

/** A fake broker link: records what was published; acks on demand or at once. */
function fakeLink(autoAck = true) {
  const published: AuditRecord[] = [];
  const waiting: { seq: number; ack: () => void; fail: () => void }[] = [];
  const publish = (record: AuditRecord) =>
    new Promise<void>((resolve, reject) => {
      published.push(record);
      if (autoAck) resolve();
      else waiting.push({ seq: record.seq, ack: resolve, fail: () => reject(new Error('connection lost')) });
    });
  return { published, waiting, publish };
}

async function openOutbox(dir: string, log: AuditLog, maxEvents = 10_000) {
  const markers: Record<string, unknown>[] = [];
  const outbox = await Outbox.open({
    source: log,
    dir,
    maxEvents,
    pollMs: 10,
    persistMs: 5,
    emit: (event) => {
      markers.push(event);
      void log.append(event);
    },
    log: silentLogger,
  });
  return { outbox, markers };
}

describe('outbox over the audit log', () => {
  it('sends every record once, in order, and moves the cursor only on acknowledgement', async () => {
    const dir = tempDir();
    const log = await AuditLog.open(join(dir, 'audit'));
    await fill(log, 250);
    const { outbox } = await openOutbox(dir, log);
    const link = fakeLink(false);
    outbox.attach(link.publish, 20);
    await waitFor(() => link.waiting.length === 20, 'a full window');
    await quietFor(50, 'a publish past the window of 20');
    expect(link.published).toHaveLength(20); // the window holds
    expect(outbox.stats().ackedSeq).toBe(0);
    // Acks out of order: the cursor covers only the acknowledged prefix.
    link.waiting[3]?.ack();
    link.waiting[0]?.ack();
    await waitFor(() => outbox.stats().ackedSeq === 1, 'cursor at 1');
    for (const w of link.waiting.splice(0)) w.ack();
    await waitFor(() => outbox.stats().ackedSeq >= 20, 'cursor past the window');
    // Ack the rest as they come.
    const timer = setInterval(() => {
      for (const w of link.waiting.splice(0)) w.ack();
    }, 2);
    await waitFor(() => outbox.stats().ackedSeq === 250, 'all acknowledged');
    clearInterval(timer);
    expect(link.published.map((r) => r.seq)).toEqual(Array.from({ length: 250 }, (_, i) => i + 1));
    await outbox.close();
    await log.close();
  });

  it('after a lost connection sends again exactly what was not acknowledged', async () => {
    const dir = tempDir();
    const log = await AuditLog.open(join(dir, 'audit'));
    await fill(log, 30);
    const { outbox } = await openOutbox(dir, log);
    const first = fakeLink(false);
    outbox.attach(first.publish, 10);
    await waitFor(() => first.waiting.length === 10, 'window');
    first.waiting[0]?.ack();
    first.waiting[1]?.ack();
    first.waiting[5]?.ack(); // acknowledged, but above a gap
    await waitFor(() => outbox.stats().ackedSeq === 2, 'cursor at 2');
    outbox.detach();
    for (const w of first.waiting.splice(0)) w.fail();
    const second = fakeLink(true);
    outbox.attach(second.publish, 10);
    await waitFor(() => outbox.stats().ackedSeq === 30, 'all delivered');
    expect(second.published.map((r) => r.seq)).toEqual([
      3,
      4,
      5,
      ...Array.from({ length: 24 }, (_, i) => i + 7),
    ]);
    await outbox.close();
    await log.close();
  });

  it('keeps its cursor across a restart and sends new records as they are written', async () => {
    const dir = tempDir();
    let log = await AuditLog.open(join(dir, 'audit'));
    await fill(log, 40);
    let { outbox } = await openOutbox(dir, log);
    const a = fakeLink();
    outbox.attach(a.publish, 8);
    await waitFor(() => outbox.stats().ackedSeq === 40, 'first flush');
    await outbox.close();
    await log.close();

    log = await AuditLog.open(join(dir, 'audit'));
    await fill(log, 5);
    ({ outbox } = await openOutbox(dir, log));
    const b = fakeLink();
    outbox.attach(b.publish, 8);
    await waitFor(() => outbox.stats().ackedSeq === 45, 'second flush');
    await log.append({ type: 'later' });
    await waitFor(() => outbox.stats().ackedSeq === 46, 'a live record');
    expect(b.published.map((r) => r.seq)).toEqual([41, 42, 43, 44, 45, 46]);
    await outbox.close();
    await log.close();
  });

  it('when full, skips the oldest and sends a marker that counts them', async () => {
    const dir = tempDir();
    const log = await AuditLog.open(join(dir, 'audit'));
    await fill(log, 150);
    const { outbox, markers } = await openOutbox(dir, log, 100);
    expect(markers).toEqual([{ type: 'outbox.dropped', reason: 'full', count: 60, fromSeq: 1, toSeq: 60 }]);
    const link = fakeLink();
    outbox.attach(link.publish, 16);
    await waitFor(() => outbox.stats().ackedSeq === 151, 'flushed with the marker');
    const seqs = link.published.map((r) => r.seq);
    expect(seqs[0]).toBe(61);
    expect(seqs).toHaveLength(91);
    expect(link.published.at(-1)).toMatchObject({ type: 'outbox.dropped', count: 60 });
    expect(outbox.stats().dropped).toBe(60);
    await outbox.close();
    await log.close();
  });

  it('reports records the log rotated away before they were sent', async () => {
    const dir = tempDir();
    const log = await AuditLog.open(join(dir, 'audit'), {
      maxFileBytes: 4096,
      keepFiles: 2,
      recentCapacity: 10,
    });
    for (let i = 0; i < 200; i++) await log.append({ type: 'test', i });
    const { outbox, markers } = await openOutbox(dir, log);
    const link = fakeLink();
    outbox.attach(link.publish, 50);
    await waitFor(() => outbox.stats().ackedSeq >= 200, 'flushed');
    const marker = markers.find((m) => m.reason === 'missing');
    expect(marker).toMatchObject({ type: 'outbox.dropped', fromSeq: 1 });
    const firstSent = link.published[0]?.seq ?? 0;
    expect(marker?.count).toBe(firstSent - 1);
    // Everything from the first readable record on went out, without gaps.
    const seqs = link.published.map((r) => r.seq).filter((s) => s <= 200);
    expect(seqs).toEqual(Array.from({ length: 200 - firstSent + 1 }, (_, i) => firstSent + i));
    await outbox.close();
    await log.close();
  });
});

describe('outbox cursor writes in the health figures', () => {
  it('is listed with the open stores, says when its cursor cannot be written, and recovers', async () => {
    const dir = tempDir();
    const log = await AuditLog.open(join(dir, 'audit'));
    await fill(log, 5);
    const { outbox } = await openOutbox(dir, log);
    expect(openStores.under(dir).map((s) => s.path)).toEqual([join(dir, 'outbox')]);
    // A directory where the cursor file goes: its atomic replace fails (EISDIR).
    mkdirSync(join(dir, 'outbox.json'));
    outbox.attach(fakeLink(true).publish, 10);
    await waitFor(() => outbox.writeHealth.failures > 0, 'a failed cursor write');
    const failing = openStores.under(dir)[0]?.health;
    expect(failing).toMatchObject({ state: 'failing', store: join(dir, 'outbox.json') });
    expect(failing?.lastError?.code).toMatch(/^E[A-Z]+$/);
    expect(failing?.failingSince).toBeGreaterThan(0);
    rmdirSync(join(dir, 'outbox.json'));
    await fill(log, 1);
    await waitFor(() => outbox.writeHealth.state === 'ok', 'a cursor write that succeeds');
    expect(outbox.writeHealth.failingSince).toBeUndefined();
    await outbox.close();
    expect(openStores.under(dir)).toEqual([]);
    await log.close();
  });
});

/**
 * An audit source whose file reads wait on a latch the test holds (a slow disk): `recent` keeps
 * nothing, so every record is read through `readFrom`, which stops at the log's end as it was
 * when the read began (as AuditLog.readFrom does).
 */
function gatedSource() {
  let lastSeq = 0;
  let held = false;
  const parked: (() => void)[] = [];
  const record = (seq: number): AuditRecord => ({
    seq,
    ts: new Date(0).toISOString(),
    type: 'test',
    prev: '0'.repeat(64),
    hash: seq.toString(16).padStart(64, '0'),
  });
  const gate = () => (held ? new Promise<void>((resolve) => parked.push(resolve)) : Promise.resolve());
  return {
    get lastSeq() {
      return lastSeq;
    },
    recent: (): AuditRecord[] => [],
    async *readFrom(fromSeq: number): AsyncGenerator<AuditRecord, void, undefined> {
      const until = lastSeq;
      for (let seq = fromSeq; ; seq++) {
        await gate();
        if (seq > until) return;
        yield record(seq);
      }
    },
    append(n: number) {
      lastSeq += n;
    },
    hold() {
      held = true;
    },
    get parked() {
      return parked.length;
    },
    release() {
      held = false;
      for (const resume of parked.splice(0)) resume();
    },
  };
}

describe('outbox across a reconnect during a slow read', () => {
  it('a flush left over from the old connection takes no record from the new one', async () => {
    const dir = tempDir();
    const source = gatedSource();
    source.append(150);
    const markers: Record<string, unknown>[] = [];
    const outbox = await Outbox.open({
      source,
      dir,
      maxEvents: 10_000,
      pollMs: 10,
      persistMs: 5,
      emit: (event) => markers.push(event),
      log: silentLogger,
    });
    const first = fakeLink(true);
    outbox.attach(first.publish, 20);
    await waitFor(() => outbox.stats().ackedSeq === 150, 'the first 150 delivered');
    // New records while the disk is slow: the flush finds its reader at the old end and is
    // waiting for the disk when the connection drops and comes back.
    source.hold();
    source.append(10);
    await waitFor(() => source.parked === 1, 'the flush waiting for the disk');
    outbox.detach();
    const second = fakeLink(true);
    outbox.attach(second.publish, 20);
    await waitFor(() => source.parked === 2, 'the new flush waiting for the disk');
    source.release();
    await waitFor(() => outbox.stats().ackedSeq === 160, 'all 160 acknowledged');
    expect(markers).toEqual([]); // nothing stepped over as missing
    expect(second.published.map((r) => r.seq)).toEqual(Array.from({ length: 10 }, (_, i) => 151 + i));
    await outbox.close();
  });
});
