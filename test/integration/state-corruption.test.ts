/**
 * Issue 13 finding 5: corruption must not undo revocations. A state directory with something to
 * lose in every file (test/helpers/state-sweep.ts) is damaged ONE file at a time, then opened as
 * the agent opens it:
 * - the byte-flip sweep flips a bit at many offsets of every state file (every offset of each
 *   file's last 48 bytes, where the newest record ends, and 24 spread through the rest; every
 *   offset of every file with SWEEP_FULL=1);
 * - deletion and truncation remove each file, empty it, cut it in half, or cut its last line;
 * - a torn tail (a partial final write, as kill -9 or a power cut leaves it) must stay silent.
 * Whatever the damage: no revoked key works, no older counter passes, `audit verify` fails on
 * damaged audit files, and the damage is reported. The counts are printed as one summary line.
 */
import {
  appendFileSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type BuiltState,
  buildState,
  copyState,
  isAuditFile,
  openAsAgent,
  stateFiles,
  violations,
} from '../helpers/state-sweep.js';

// tmpfs when there is one: thousands of trials, each fsyncing a few files.
const root = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'va-corruption-'));
let built: BuiltState;
let files: string[];

beforeAll(async () => {
  built = await buildState(join(root, 'pristine'));
  files = stateFiles(built.dir);
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

interface Tally {
  tried: number;
  detected: number;
  /** Undetected, and nothing that matters changed (e.g. a PEM's trailing newline). */
  harmless: number;
  /** The agent refused to start (fails secure, but locks everyone out): should stay 0. */
  refused: number;
  revokedWorks: number;
  olderCounterPasses: number;
  auditUnnoticed: number;
  failures: string[];
}

function tally(): Tally {
  return {
    tried: 0,
    detected: 0,
    harmless: 0,
    refused: 0,
    revokedWorks: 0,
    olderCounterPasses: 0,
    auditUnnoticed: 0,
    failures: [],
  };
}

let trial = 0;

/** Copies the pristine state, damages one file, opens it as the agent does, and scores it. */
async function attempt(t: Tally, file: string, label: string, damage: (path: string) => void): Promise<void> {
  trial += 1;
  const dir = join(root, `t${trial}`);
  copyState(built.dir, dir);
  try {
    damage(join(dir, file));
    const view = await openAsAgent(built, dir);
    const v = violations(built, view, file);
    t.tried += 1;
    if (view.refused !== undefined) t.refused += 1;
    const detected = isAuditFile(file)
      ? !view.auditOkBefore
      : view.findings.length > 0 || view.refused !== undefined;
    if (detected) t.detected += 1;
    else if (!v.revokedWorks && !v.olderCounterPasses && !v.auditUnnoticed) {
      t.harmless += 1;
      if (process.env.SWEEP_DEBUG) process.stdout.write(`undetected: ${file} ${label}\n`);
    }
    if (v.revokedWorks) t.revokedWorks += 1;
    if (v.olderCounterPasses) t.olderCounterPasses += 1;
    if (v.auditUnnoticed) t.auditUnnoticed += 1;
    if (v.revokedWorks || v.olderCounterPasses || v.auditUnnoticed || view.refused !== undefined) {
      t.failures.push(`${file} ${label}: ${JSON.stringify({ ...v, refused: view.refused })}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** SWEEP_FULL=1 flips every byte of every file (about 20 000 trials, several minutes). */
const FULL = process.env.SWEEP_FULL === '1';

function offsetsOf(size: number): number[] {
  if (FULL) return Array.from({ length: size }, (_, i) => i);
  const tail = 48;
  const offsets = new Set<number>();
  for (let at = Math.max(0, size - tail); at < size; at += 1) offsets.add(at);
  const stride = Math.max(1, Math.floor((size - tail) / 24));
  for (let at = 0; at < size - tail; at += stride) offsets.add(at);
  return [...offsets].sort((a, b) => a - b);
}

function summary(name: string, t: Tally): string {
  return (
    `${name}: files ${files.length}, tried ${t.tried}, detected ${t.detected}, undetected-harmless ${t.harmless}, ` +
    `refused-to-start ${t.refused}; silently accepted: revoked-key-works ${t.revokedWorks}, ` +
    `older-counter-passes ${t.olderCounterPasses}, audit-verify-passes ${t.auditUnnoticed}`
  );
}

describe('state corruption, one file at a time', () => {
  it('byte-flip sweep over every state file: no revoked key works, no older counter passes, audit verify fails', {
    timeout: 600_000,
  }, async () => {
    const t = tally();
    expect(files).toEqual(
      expect.arrayContaining([
        'vehicle.json',
        'vehicle.mirror.json',
        'vehicle-key.pem',
        'keyring.json',
        'keyring.ops',
        'keyring.mirror.ops',
        'keyring.journal',
        'keyring.mirror.journal',
        'counters.journal',
        'counters.snapshot.json',
        'cloud/command-counters.journal',
        'cloud/command-results.journal',
        'clock.json',
        'audit.head',
        'audit.mirror.head',
      ]),
    );
    for (const file of files) {
      const size = readFileSync(join(built.dir, file)).length;
      for (const at of offsetsOf(size)) {
        await attempt(t, file, `bit ${at % 8} of byte ${at}`, (path) => {
          const bytes = readFileSync(path);
          bytes[at] = (bytes[at] ?? 0) ^ (1 << (at % 8));
          writeFileSync(path, bytes);
        });
      }
    }
    process.stdout.write(`${summary('byte-flip sweep', t)}\n`);
    expect(t.failures).toEqual([]);
    expect(t.revokedWorks + t.olderCounterPasses + t.auditUnnoticed).toBe(0);
    expect(t.detected + t.harmless).toBe(t.tried);
    // Undetected flips are few and harmless (trailing bytes of a PEM, say).
    expect(t.harmless).toBeLessThan(t.tried / 50);
  });

  it('deleting, emptying, halving or cutting the last line of any one file', {
    timeout: 300_000,
  }, async () => {
    const t = tally();
    for (const file of files) {
      await attempt(t, file, 'deleted', (path) => unlinkSync(path));
      await attempt(t, file, 'emptied', (path) => truncateSync(path, 0));
      await attempt(t, file, 'halved', (path) =>
        truncateSync(path, Math.floor(readFileSync(path).length / 2)),
      );
      await attempt(t, file, 'last line cut', (path) => {
        const text = readFileSync(path, 'latin1');
        const end = text.endsWith('\n') ? text.length - 1 : text.length;
        truncateSync(path, text.lastIndexOf('\n', end - 1) + 1);
      });
    }
    process.stdout.write(`${summary('delete/truncate', t)}\n`);
    expect(t.failures).toEqual([]);
  });

  it('a torn tail on any append-only file is recovered silently', async () => {
    const appendOnly = files.filter(
      (f) =>
        f.endsWith('.journal') ||
        (f.startsWith('audit/') &&
          f.endsWith('.jsonl') &&
          f === files.filter((x) => x.endsWith('.jsonl')).at(-1)),
    );
    expect(appendOnly.length).toBeGreaterThanOrEqual(7);
    for (const file of appendOnly) {
      const dir = join(root, `torn-${file.replace(/\//g, '_')}`);
      copyState(built.dir, dir);
      appendFileSync(join(dir, file), file.endsWith('.jsonl') ? '{"seq":99,"ts":"2' : '1a2b3c4d {"k":"x","v');
      const view = await openAsAgent(built, dir);
      expect(view.findings, file).toEqual([]);
      expect(view.auditOkBefore && view.auditOkAfter, file).toBe(true);
      expect(view.fate(built.revokedLate), file).toBe('revoked');
      expect(view.fate(built.driver), file).toBe('valid');
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the pristine state opens clean', async () => {
    const dir = join(root, 'clean');
    copyState(built.dir, dir);
    const view = await openAsAgent(built, dir);
    expect(view.findings).toEqual([]);
    expect(view.refused).toBeUndefined();
    expect([view.fate(built.driver), view.fate(built.revokedEarly), view.fate(built.revokedLate)]).toEqual([
      'valid',
      'revoked',
      'revoked',
    ]);
    expect(view.auditOkBefore && view.auditOkAfter).toBe(true);
  });
});
