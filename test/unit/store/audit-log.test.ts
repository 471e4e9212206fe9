import {
  appendFileSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import {
  AUDIT_DAMAGE_TYPE,
  AUDIT_REPAIR_TYPE,
  AuditLog,
  type AuditRecord,
  anchorPaths,
  auditFileName,
  forbiddenFieldName,
  GENESIS_PREV,
  hashAuditRecord,
  verifyAuditLog,
} from '../../../src/store/audit-log.js';
import { useTempDir } from './temp-dir.js';

const tempDir = useTempDir('audit');
const T0 = Date.UTC(2025, 0, 1);

async function rejection(promise: Promise<unknown>): Promise<AgentError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw new Error(`expected an AgentError, got ${String(err)}`);
  }
  throw new Error('expected a rejection');
}

async function filledLog(dir: string, count: number, options = {}): Promise<AuditRecord[]> {
  let t = T0;
  const log = await AuditLog.open(dir, { now: () => (t += 1000), ...options });
  const records: AuditRecord[] = [];
  for (let i = 0; i < count; i += 1) {
    records.push(
      await log.append({ type: 'decision', outcome: i % 2 === 0 ? 'grant' : 'deny', reader: 'nfc0', n: i }),
    );
  }
  await log.close();
  return records;
}

function onlyFile(dir: string): string {
  const files = readdirSync(dir).filter((name) => name.endsWith('.jsonl'));
  expect(files).toHaveLength(1);
  return join(dir, files[0] ?? '');
}

function lines(path: string): string[] {
  return readFileSync(path, 'utf8').split('\n').slice(0, -1);
}

describe('audit record hash', () => {
  it('is SHA-256 over prev and the canonical JSON of the record without prev and hash (vector)', () => {
    // printf '%s' "$(printf '0%.0s' {1..64})"'{"a":[1,"x"],"seq":1,"ts":"2025-01-01T00:00:00.000Z","type":"boot","z":null}' | sha256sum
    const body = { type: 'boot', z: null, seq: 1, ts: '2025-01-01T00:00:00.000Z', a: [1, 'x'] };
    expect(hashAuditRecord(GENESIS_PREV, body)).toBe(
      '6069b3345326cbc08218b1db07fc503a9c292424638c904b0b8d36275c39c48c',
    );
  });
});

describe('AuditLog', () => {
  it('appends chained records with seq, ts, type, fields, prev and hash, 0600, and verifies', async () => {
    const dir = join(tempDir(), 'audit');
    const records = await filledLog(dir, 3);
    expect(records.map((r) => r.seq)).toEqual([1, 2, 3]);
    expect(records[0]).toMatchObject({
      type: 'decision',
      outcome: 'grant',
      reader: 'nfc0',
      n: 0,
      prev: GENESIS_PREV,
    });
    expect(records[0]?.ts).toBe(new Date(T0 + 1000).toISOString());
    expect(records[1]?.prev).toBe(records[0]?.hash);
    expect(records[2]?.prev).toBe(records[1]?.hash);
    const file = onlyFile(dir);
    expect(file.endsWith(auditFileName(1))).toBe(true);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(lines(file).map((text) => JSON.parse(text))).toEqual(records);
    expect(await verifyAuditLog(dir)).toMatchObject({
      ok: true,
      records: 3,
      files: 1,
      firstSeq: 1,
      lastSeq: 3,
      oldestPrevChecked: true,
    });
  });

  it('continues seq and chain across restarts', async () => {
    const dir = join(tempDir(), 'audit');
    await filledLog(dir, 2);
    const log = await AuditLog.open(dir);
    expect(log.lastSeq).toBe(2);
    expect(log.recent(5).map((r) => r.seq)).toEqual([1, 2]);
    const third = await log.append({ type: 'boot' });
    expect(third.seq).toBe(3);
    await log.close();
    expect(await verifyAuditLog(dir)).toMatchObject({ ok: true, records: 3 });
  });

  it('has one writer at a time: a second open of the directory is busy', async () => {
    const dir = join(tempDir(), 'audit');
    const log = await AuditLog.open(dir);
    expect((await rejection(AuditLog.open(dir))).code).toBe('busy');
    await log.close();
    const again = await AuditLog.open(dir);
    await again.close();
  });

  it('group-commits concurrent appends in call order', async () => {
    const dir = join(tempDir(), 'audit');
    const log = await AuditLog.open(dir);
    const records = await Promise.all(Array.from({ length: 500 }, (_, i) => log.append({ type: 'tick', i })));
    expect(records.map((r) => r.seq)).toEqual(Array.from({ length: 500 }, (_, i) => i + 1));
    expect(records.map((r) => r.i)).toEqual(Array.from({ length: 500 }, (_, i) => i));
    expect(log.lastSeq).toBe(500);
    expect(log.recent(3).map((r) => r.seq)).toEqual([498, 499, 500]);
    await log.close();
    expect(await verifyAuditLog(dir)).toMatchObject({ ok: true, records: 500 });
  });

  it.each([
    ['uid', { uid: '04a1b2c3' }],
    ['cardUid', { cardUid: '04a1b2c3' }],
    ['raw_uid', { card: { raw_uid: '04a1b2c3' } }],
    ['UID', { list: [{ UID: 'x' }] }],
    ['secret', { secret: 'x' }],
    ['clientSecret', { clientSecret: 'x' }],
    ['privateKey', { key: { privateKey: 'x' } }],
    ['private_key', { private_key: 'x' }],
    ['password', { password: 'x' }],
  ])('refuses an event with a field named %s and writes nothing', async (field, fields) => {
    const dir = join(tempDir(), 'audit');
    const log = await AuditLog.open(dir);
    const err = await rejection(log.append({ type: 'decision', ...fields }));
    expect(err.code).toBe('audit_event_rejected');
    expect(err.details.field).toBe(field);
    expect(err.message).not.toContain('04a1b2c3');
    expect(log.lastSeq).toBe(0);
    const ok = await log.append({ type: 'decision', uidHash: 'h', deviceUuid: 'u' });
    expect(ok.seq).toBe(1);
    await log.close();
    expect(readFileSync(onlyFile(dir), 'utf8')).not.toContain('"x"');
  });

  it('names forbidden fields case- and separator-insensitively but allows uidHash and uuid', () => {
    expect(
      ['uid', 'Card-UID', 'tagUid', 'SECRET', 'sitePrivateKey', 'secret_key'].every(forbiddenFieldName),
    ).toBe(true);
    expect(['uidHash', 'uuid', 'sessionUuid', 'kid', 'reason', 'credentialId'].some(forbiddenFieldName)).toBe(
      false,
    );
  });

  it('refuses reserved fields, a missing type, values that are not JSON and records over the limit', async () => {
    const log = await AuditLog.open(join(tempDir(), 'audit'), { maxRecordBytes: 512 });
    for (const event of [
      { type: 'x', seq: 9 },
      { type: 'x', hash: 'h' },
      { type: '' },
      { type: 'x', n: 10n },
    ]) {
      expect((await rejection(log.append(event))).code).toBe('audit_event_rejected');
    }
    expect((await rejection(log.append({ type: 'x', blob: 'y'.repeat(600) }))).code).toBe('record_too_large');
    expect((await log.append({ type: 'x' })).seq).toBe(1);
    await log.close();
  });

  it('rotates by size, deletes the oldest files, and keeps the chain across files', async () => {
    const dir = join(tempDir(), 'audit');
    await filledLog(dir, 300, { maxFileBytes: 4096, keepFiles: 3 });
    const files = readdirSync(dir).sort();
    expect(files).toHaveLength(3);
    for (const name of files) expect(statSync(join(dir, name)).size).toBeLessThanOrEqual(4096);
    const result = await verifyAuditLog(dir);
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.lastSeq).toBe(300);
    // The anchor names what rotation removed, so the oldest record's prev is checked too.
    expect(result.oldestPrevChecked).toBe(true);
    expect(result.rotated).toMatchObject({ throughSeq: (result.firstSeq ?? 0) - 1 });
    expect(result.notes.join(' ')).toContain('rotation removed');
    expect(files[0]).toBe(auditFileName(result.firstSeq ?? 0));
    expect(result.records).toBe(300 - (result.firstSeq ?? 0) + 1);

    const log = await AuditLog.open(dir, { maxFileBytes: 4096, keepFiles: 3 });
    expect((await log.append({ type: 'after-restart' })).seq).toBe(301);
    await log.close();
    expect(await verifyAuditLog(dir)).toMatchObject({ ok: true, lastSeq: 301 });
  });

  it('readFrom yields durable records from a seq across files, and from the oldest kept when asked for less', async () => {
    const dir = join(tempDir(), 'audit');
    await filledLog(dir, 200, { maxFileBytes: 4096, keepFiles: 4 });
    const log = await AuditLog.open(dir, { maxFileBytes: 4096, keepFiles: 4 });
    const seqs = async (from: number): Promise<number[]> => {
      const out: number[] = [];
      for await (const record of log.readFrom(from)) out.push(record.seq);
      return out;
    };
    const from150 = await seqs(150);
    expect(from150).toEqual(Array.from({ length: 51 }, (_, i) => 150 + i));
    const all = await seqs(1);
    const oldest = all[0] ?? 0;
    expect(oldest).toBeGreaterThan(1);
    expect(all).toEqual(Array.from({ length: 200 - oldest + 1 }, (_, i) => oldest + i));
    expect(await seqs(201)).toEqual([]);
    await log.close();
  });

  it('cuts a torn last record on open, continues the chain, and verify notes a partial record', async () => {
    const dir = join(tempDir(), 'audit');
    await filledLog(dir, 5);
    const file = onlyFile(dir);
    const sixth = `{"seq":6,"ts":"2025-01-01T00:00:06.000Z","type":"decision","prev":"`;
    appendFileSync(file, sixth);
    const before = await verifyAuditLog(dir);
    expect(before).toMatchObject({ ok: true, records: 5 });
    expect(before.notes.join(' ')).toContain('partial record');

    const log = await AuditLog.open(dir);
    expect(log.lastSeq).toBe(5);
    expect((await log.append({ type: 'boot' })).seq).toBe(6);
    await log.close();
    expect(await verifyAuditLog(dir)).toMatchObject({ ok: true, records: 6, notes: [] });
  });

  it('after a crash right after rotation, continues in a file named for the next record', async () => {
    for (const emptyName of [auditFileName(6), auditFileName(9)]) {
      const dir = join(tempDir(), emptyName);
      await filledLog(dir, 5);
      writeFileSync(join(dir, emptyName), ''); // created by rotation, its records never written
      const log = await AuditLog.open(dir);
      expect((await log.append({ type: 'boot' })).seq).toBe(6);
      await log.close();
      expect(
        readdirSync(dir)
          .filter((name) => name.endsWith('.jsonl'))
          .sort(),
      ).toEqual([auditFileName(1), auditFileName(6)]);
      expect(await verifyAuditLog(dir)).toMatchObject({ ok: true, records: 6, notes: [] });
    }
  });

  describe('verifyAuditLog finds the first broken link', () => {
    async function tampered(
      edit: (lines: string[]) => string[],
    ): Promise<Awaited<ReturnType<typeof verifyAuditLog>>> {
      const dir = join(tempDir(), 'audit');
      await filledLog(dir, 6);
      const file = onlyFile(dir);
      writeFileSync(file, `${edit(lines(file)).join('\n')}\n`);
      return verifyAuditLog(dir);
    }

    it('when a field was edited', async () => {
      const result = await tampered((ls) =>
        ls.map((l, i) => (i === 2 ? l.replace('"outcome":"grant"', '"outcome":"deny"') : l)),
      );
      expect(result).toMatchObject({
        ok: false,
        records: 5,
        broken: { line: 3, seq: 3, reason: 'bad_hash' },
      });
    });

    it('when a field was edited and its hash recomputed', async () => {
      const result = await tampered((ls) =>
        ls.map((l, i) => {
          if (i !== 2) return l;
          const {
            prev,
            hash: _old,
            ...body
          } = JSON.parse(l.replace('"outcome":"grant"', '"outcome":"deny"')) as AuditRecord;
          return JSON.stringify({ ...body, prev, hash: hashAuditRecord(prev, body) });
        }),
      );
      expect(result).toMatchObject({
        ok: false,
        records: 6,
        broken: { line: 4, seq: 4, reason: 'prev_mismatch' },
      });
    });

    it('when a line was deleted', async () => {
      const result = await tampered((ls) => ls.filter((_, i) => i !== 3));
      expect(result).toMatchObject({ ok: false, records: 5, broken: { line: 4, seq: 5, reason: 'seq_gap' } });
    });

    it('when two lines were swapped', async () => {
      const result = await tampered((ls) => [ls[0], ls[2], ls[1], ...ls.slice(3)].map(String));
      expect(result).toMatchObject({ ok: false, records: 6, broken: { line: 2, seq: 3, reason: 'seq_gap' } });
    });

    it('when a line is not JSON', async () => {
      const result = await tampered((ls) => ls.map((l, i) => (i === 4 ? l.slice(0, 20) : l)));
      expect(result).toMatchObject({ ok: false, records: 5, broken: { line: 5, reason: 'bad_json' } });
    });

    it('when the first record does not start from the all-zero prev', async () => {
      const dir = join(tempDir(), 'audit');
      const log = await AuditLog.open(dir);
      await log.append({ type: 'a' });
      await log.close();
      const file = onlyFile(dir);
      const { prev: _p, hash: _h, ...body } = JSON.parse(lines(file)[0] ?? '') as AuditRecord;
      const fakePrev = 'f'.repeat(64);
      writeFileSync(
        file,
        `${JSON.stringify({ ...body, prev: fakePrev, hash: hashAuditRecord(fakePrev, body) })}\n`,
      );
      expect(await verifyAuditLog(dir)).toMatchObject({
        ok: false,
        broken: { seq: 1, reason: 'prev_mismatch' },
      });
    });

    it('when a middle file is missing or renamed', async () => {
      const dir = join(tempDir(), 'audit');
      await filledLog(dir, 120, { maxFileBytes: 4096, keepFiles: 100 });
      const files = readdirSync(dir).sort();
      expect(files.length).toBeGreaterThanOrEqual(3);
      const middle = files[1] ?? '';
      const moved = join(dir, middle.replace('audit-', 'moved-'));
      renameSync(join(dir, middle), moved);
      expect(await verifyAuditLog(dir)).toMatchObject({
        ok: false,
        broken: { file: files[2], line: 1, reason: 'seq_gap' },
      });
      const middleSeq = Number(middle.slice('audit-'.length, -'.jsonl'.length));
      renameSync(moved, join(dir, auditFileName(middleSeq + 1)));
      expect(await verifyAuditLog(dir)).toMatchObject({
        ok: false,
        broken: { file: auditFileName(middleSeq + 1), line: 1, seq: middleSeq, reason: 'file_name_mismatch' },
      });
    });

    it('keeps appending after tampering, records the damage it sees, and verify still reports it', async () => {
      const dir = join(tempDir(), 'audit');
      await filledLog(dir, 4);
      const file = onlyFile(dir);
      writeFileSync(
        file,
        `${lines(file)
          .map((l, i) => (i === 1 ? l.replace('"deny"', '"grant"') : l))
          .join('\n')}\n`,
      );
      const log = await AuditLog.open(dir);
      // The newest file is read at open: the damaged record is recorded (seq 5) before anything else.
      expect(log.findings.map((f) => f.code)).toEqual(['audit_chain_broken']);
      expect((await log.append({ type: 'boot' })).seq).toBe(6);
      await log.close();
      expect(await verifyAuditLog(dir)).toMatchObject({ ok: false, broken: { seq: 2, reason: 'bad_hash' } });
    });
  });
});

describe('audit head anchor', () => {
  function newestFile(dir: string): string {
    const files = readdirSync(dir)
      .filter((n) => n.endsWith('.jsonl'))
      .sort();
    return join(dir, files.at(-1) ?? '');
  }

  it('shows a last record removed at rest, records the loss at the next open, and passes once acknowledged', async () => {
    const dir = join(tempDir(), 'audit');
    await filledLog(dir, 5);
    const file = onlyFile(dir);
    writeFileSync(file, `${lines(file).slice(0, 4).join('\n')}\n`);
    expect(await verifyAuditLog(dir)).toMatchObject({ ok: false, broken: { reason: 'head_missing' } });

    const log = await AuditLog.open(dir);
    expect(log.findings).toMatchObject([{ code: 'audit_chain_broken' }]);
    expect(log.findings[0]?.problem).toContain('seq 5 was written');
    await log.close();
    const recorded = lines(file).map((l) => JSON.parse(l) as AuditRecord);
    // The lost seq is never reused (the cloud may hold it): the damage record takes seq 6.
    expect(recorded.at(-1)).toMatchObject({ seq: 6, type: AUDIT_DAMAGE_TYPE, prev: recorded[3]?.hash });
    const result = await verifyAuditLog(dir);
    expect(result).toMatchObject({ ok: false, broken: { reason: 'damage_recorded', seq: 6 } });

    const repair = await AuditLog.open(dir);
    await repair.append({ type: AUDIT_REPAIR_TYPE, acknowledged: result.breaks.map((b) => b.id) });
    await repair.close();
    const after = await verifyAuditLog(dir);
    expect(after.ok).toBe(true);
    expect(after.notes.join(' ')).toContain('acknowledged by repair');
  });

  it.each([
    [
      'the newest file cut at a line boundary',
      (dir: string) => {
        const file = newestFile(dir);
        writeFileSync(file, `${lines(file).slice(0, 2).join('\n')}\n`);
      },
    ],
    ['the newest file emptied', (dir: string) => writeFileSync(newestFile(dir), '')],
    [
      'every audit file removed',
      (dir: string) => {
        for (const n of readdirSync(dir)) if (n.endsWith('.jsonl')) unlinkSync(join(dir, n));
      },
    ],
    ['the directory removed', (dir: string) => rmSync(dir, { recursive: true })],
    [
      'the oldest kept file removed',
      (dir: string) => {
        const files = readdirSync(dir)
          .filter((n) => n.endsWith('.jsonl'))
          .sort();
        unlinkSync(join(dir, files[0] ?? ''));
      },
    ],
  ])('fails verify when %s', async (_what, damage) => {
    const dir = join(tempDir(), 'audit');
    await filledLog(dir, 60, { maxFileBytes: 4096, keepFiles: 3 });
    expect((await verifyAuditLog(dir)).ok).toBe(true);
    damage(dir);
    expect((await verifyAuditLog(dir)).ok).toBe(false);
    // ...and the agent, opening it, records the damage instead of hiding it.
    const log = await AuditLog.open(dir, { maxFileBytes: 4096, keepFiles: 3 });
    expect(log.findings.length).toBeGreaterThan(0);
    await log.close();
    expect((await verifyAuditLog(dir)).ok).toBe(false);
  });

  it('fails verify when the whole log and both anchors are gone from a vehicle that has run', async () => {
    const root = tempDir();
    const dir = join(root, 'audit');
    await filledLog(dir, 3);
    rmSync(dir, { recursive: true });
    for (const anchor of anchorPaths(dir)) unlinkSync(anchor);
    expect((await verifyAuditLog(dir)).ok).toBe(true); // nothing says it ever existed...
    expect(await verifyAuditLog(dir, { expectHistory: true })).toMatchObject({
      ok: false,
      broken: { reason: 'log_missing' },
    });
    const log = await AuditLog.open(dir, { expectHistory: true });
    expect(log.findings).toHaveLength(1);
    await log.close();
    expect((await verifyAuditLog(dir)).ok).toBe(false);
  });

  it.each([
    [
      'flipped',
      (path: string) => {
        const bytes = readFileSync(path);
        bytes[20] = (bytes[20] ?? 0) ^ 0x02;
        writeFileSync(path, bytes);
      },
    ],
    ['removed', (path: string) => unlinkSync(path)],
  ])('fails verify when one anchor is %s, and the agent records it', async (_what, damage) => {
    const dir = join(tempDir(), 'audit');
    await filledLog(dir, 4);
    damage(anchorPaths(dir)[1]);
    expect(await verifyAuditLog(dir)).toMatchObject({ ok: false, broken: { reason: 'anchor_damaged' } });
    const log = await AuditLog.open(dir);
    expect(log.findings).toHaveLength(1);
    await log.close();
    expect(await verifyAuditLog(dir)).toMatchObject({ ok: false, broken: { reason: 'damage_recorded' } });
  });

  it('a damaged last record is kept as evidence and recorded, not cut off as a torn write', async () => {
    const dir = join(tempDir(), 'audit');
    await filledLog(dir, 4);
    const file = onlyFile(dir);
    const text = readFileSync(file, 'utf8');
    writeFileSync(file, `${text.slice(0, -40)}X${text.slice(-39)}`);
    expect(await verifyAuditLog(dir)).toMatchObject({ ok: false, broken: { line: 4 } });
    const log = await AuditLog.open(dir);
    expect((await log.append({ type: 'boot' })).seq).toBe(6); // 4 damaged, 5 = audit.damage
    await log.close();
    expect(lines(file)).toHaveLength(6);
    expect(await verifyAuditLog(dir)).toMatchObject({ ok: false });
  });

  it('records damage once, however often the log is opened, and an acknowledgement holds', async () => {
    const dir = join(tempDir(), 'audit');
    await filledLog(dir, 60, { maxFileBytes: 4096, keepFiles: 100 });
    const files = readdirSync(dir)
      .filter((n) => n.endsWith('.jsonl'))
      .sort();
    unlinkSync(join(dir, files[0] ?? '')); // not by rotation
    const newest = newestFile(dir);
    const text = readFileSync(newest, 'utf8');
    writeFileSync(newest, `${text}${text.split('\n')[0]?.replace('"decision"', '"decisi0n"')}\n`); // a damaged copy
    for (let i = 0; i < 3; i += 1) {
      const log = await AuditLog.open(dir);
      expect(log.findings.length, `open ${i}`).toBe(i === 0 ? 2 : 0);
      await log.close();
    }
    const result = await verifyAuditLog(dir);
    const open = result.breaks.filter((b) => b.acknowledgedBy === undefined && b.recordedBy === undefined);
    expect(open.map((b) => b.reason)).toEqual(['damage_recorded']);
    const repair = await AuditLog.open(dir);
    await repair.append({ type: AUDIT_REPAIR_TYPE, acknowledged: open.map((b) => b.id) });
    await repair.close();
    for (let i = 0; i < 2; i += 1) {
      const log = await AuditLog.open(dir);
      expect(log.findings).toEqual([]);
      await log.close();
    }
    expect((await verifyAuditLog(dir)).ok).toBe(true);
  });

  it('an anchor that lags the chain after a kill (the records after it are newer) verifies', async () => {
    const dir = join(tempDir(), 'audit');
    await filledLog(dir, 3);
    const anchors = anchorPaths(dir).map((p) => readFileSync(p));
    await filledLog(dir, 2);
    for (const [i, p] of anchorPaths(dir).entries()) writeFileSync(p, anchors[i] ?? '');
    expect(await verifyAuditLog(dir)).toMatchObject({ ok: true, lastSeq: 5 });
  });
});

describe('audit rotation for a reader that still needs records', () => {
  it('keeps files holding records the outbox has not sent, up to maxFiles, then deletes and counts', async () => {
    const dir = join(tempDir(), 'audit');
    let unsentFrom: number | undefined = 1;
    const log = await AuditLog.open(dir, {
      maxFileBytes: 4096,
      keepFiles: 2,
      maxFiles: 5,
      retainFrom: () => unsentFrom,
    });
    const files = () => readdirSync(dir).filter((n) => n.endsWith('.jsonl')).length;
    for (let i = 0; i < 50; i += 1) await log.append({ type: 'tick', pad: 'x'.repeat(80) });
    // 50 records of ~280 bytes fill four files: none deleted while the outbox needs them.
    expect(files()).toBe(4);
    expect(log.rotationStats().unsentRecords).toBe(0);
    for (let i = 0; i < 200; i += 1) await log.append({ type: 'tick', pad: 'x'.repeat(80) });
    // Past the cap the oldest go anyway, counted.
    expect(files()).toBe(5);
    const capped = log.rotationStats();
    expect(capped.unsentRecords).toBeGreaterThan(0);
    expect(capped.unsentRecords).toBe(capped.deletedRecords);
    expect(capped.retainedFiles).toBe(3);
    expect(capped).toMatchObject({ keepFiles: 2, maxFiles: 5, unsentMissing: capped.unsentRecords });
    // Said in the log itself, with its code, for every rotation that deleted unsent records.
    const losses = log.recent(100).filter((r) => r.type === 'audit.retention');
    expect(losses.length).toBeGreaterThan(0);
    const last = losses.at(-1);
    expect(last).toMatchObject({ code: 'audit_retention_exceeded', maxFiles: 5 });
    expect(last?.throughSeq).toBe(capped.deletedRecords);
    expect(Number(last?.fromSeq)).toBeLessThanOrEqual(Number(last?.throughSeq));
    // The reader stepped over what is gone: nothing is missing any more.
    unsentFrom = capped.deletedRecords + 1;
    expect(log.rotationStats().unsentMissing).toBe(0);
    // Once sent, rotation is back to keepFiles.
    unsentFrom = undefined;
    for (let i = 0; i < 20; i += 1) await log.append({ type: 'tick', pad: 'x'.repeat(80) });
    expect(files()).toBe(2);
    expect(log.rotationStats().unsentRecords).toBe(capped.unsentRecords);
    await log.close();
    const result = await verifyAuditLog(dir);
    expect(result.ok).toBe(true);
    expect(result.rotated?.unsentRecords).toBe(capped.unsentRecords);
    expect(result.notes.join(' ')).toContain('not yet sent to the cloud');
  });

  it('without retainFrom rotates to keepFiles as before', async () => {
    const dir = join(tempDir(), 'audit');
    await filledLog(dir, 200, { maxFileBytes: 4096, keepFiles: 2 });
    expect(readdirSync(dir).filter((n) => n.endsWith('.jsonl'))).toHaveLength(2);
  });
});
