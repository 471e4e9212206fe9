/**
 * `vehicle-agent keys export` and `keys import` through the real CLI (dist/): signed operations
 * round-trip (and bring a revocation made after a backup into the restored vehicle), another
 * vehicle's operations are refused, UID cards from CSV are signed by the owner key with the
 * warning, a bad row names itself and nothing is imported, and a bulk import is stored in batches.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runCli, runCliJson } from '../helpers/agent-process.js';
import { type BuiltState, buildState, openAsAgent, stateFiles } from '../helpers/state-sweep.js';

let root: string;
let built: BuiltState;
let ownerPem: string;
const PASS = { VEHICLE_AGENT_BACKUP_PASSPHRASE: 'a long test passphrase' };

beforeEach(async () => {
  root = mkdtempSync(join(tmpdir(), 'va-keys-transfer-'));
  built = await buildState(join(root, 'state'));
  ownerPem = join(root, 'owner.pem');
  writeFileSync(ownerPem, built.ownerPem, { mode: 0o600 });
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

const at = (...parts: string[]) => join(root, ...parts);
const snapshot = (dir: string) =>
  new Map(stateFiles(dir).map((f) => [f, readFileSync(join(dir, f)).toString('base64')]));

interface Listed {
  id: string;
  kind: string;
  role: string;
  name?: string;
  revoked: boolean;
  options: { insecureUid?: boolean };
}
const list = (dir: string) => runCliJson<Listed[]>(['keys', 'list', '--state-dir', dir]).value;

interface ImportReport {
  added: number;
  duplicates: number;
  skipped: number;
  batches: number;
}

describe('vehicle-agent keys export / import', () => {
  it('round-trips signed operations: a revocation made after a backup reaches the restored vehicle', async () => {
    expect(runCli(['backup', at('b'), '--state-dir', built.dir], PASS).code).toBe(0);
    expect(
      runCli(['keys', 'revoke', '--key', ownerPem, '--id', built.driver, '--state-dir', built.dir]).code,
    ).toBe(0);
    const exported = runCli(['keys', 'export', '--state-dir', built.dir, '--out', at('ops')]);
    expect(exported.code, exported.stderr).toBe(0);
    const json = runCliJson<{ digest: string; ops: string[] }>([
      'keys',
      'export',
      '--state-dir',
      built.dir,
    ]).value;
    expect(readFileSync(at('ops'), 'utf8').trim().split('\n')).toEqual(json.ops);

    // The SD card died; the backup predates the revoke.
    const fresh = at('fresh');
    expect(runCli(['restore', at('b'), '--state-dir', fresh], PASS).code).toBe(0);
    expect((await openAsAgent(built, fresh)).fate(built.driver)).toBe('valid');

    const r = runCliJson<ImportReport>(['keys', 'import', at('ops'), '--state-dir', fresh]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.value.added).toBe(1);
    expect((await openAsAgent(built, fresh)).fate(built.driver)).toBe('revoked');
    expect(list(fresh)).toEqual(list(built.dir));
    expect(runCliJson<{ digest: string }>(['keys', 'export', '--state-dir', fresh]).value.digest).toBe(
      json.digest,
    );

    // Importing it again adds nothing.
    const again = runCliJson<ImportReport>(['keys', 'import', at('ops'), '--state-dir', fresh]);
    expect(again.value).toMatchObject({ added: 0, batches: 0 });
    expect(runCli(['audit', 'verify', '--state-dir', fresh]).code).toBe(0);
  });

  it("refuses another vehicle's operations, naming the first, and imports none", () => {
    const other = at('other');
    expect(runCli(['init', '--demo', '--state-dir', other]).code).toBe(0);
    expect(runCli(['keys', 'export', '--json', '--state-dir', built.dir, '--out', at('ops.json')]).code).toBe(
      0,
    );
    const before = snapshot(other);
    const r = runCli(['keys', 'import', at('ops.json'), '--state-dir', other]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/\[import_invalid\] item \d+: refused \[op_/);
    expect(r.stderr).toContain('nothing was imported');
    expect(snapshot(other)).toEqual(before);
  });

  it('imports UID cards from CSV signed by the owner key, with the warning; a bad row imports nothing', () => {
    const before = list(built.dir);
    const csv = [
      'uid,role,name,not_after',
      '04A1B2C3,driver,"Smith, Ann",',
      '04:A1:B2:C3:D4:E5:F6,guest,Bob,2040-01-01T00:00:00Z',
    ];
    writeFileSync(at('bad.csv'), `${[...csv, 'not-hex,driver,Eve,'].join('\n')}\n`);
    const snap = snapshot(built.dir);
    const bad = runCli([
      'keys',
      'import',
      at('bad.csv'),
      '--key',
      ownerPem,
      '--insecure-uid',
      '--state-dir',
      built.dir,
    ]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('[import_invalid] line 4: uid "not-hex" is not hex; nothing was imported');
    expect(snapshot(built.dir)).toEqual(snap);
    expect(list(built.dir)).toEqual(before);

    writeFileSync(at('cards.csv'), `${csv.join('\n')}\n`);
    const unasked = runCli(['keys', 'import', at('cards.csv'), '--key', ownerPem, '--state-dir', built.dir]);
    expect(unasked.code).toBe(64);
    expect(unasked.stderr).toContain('can make a card');
    expect(unasked.stderr).toContain('--insecure-uid');

    const r = runCliJson<ImportReport>([
      'keys',
      'import',
      at('cards.csv'),
      '--key',
      ownerPem,
      '--insecure-uid',
      '--state-dir',
      built.dir,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('FIDO security keys or NTAG 424 DNA cards');
    expect(r.value).toMatchObject({ added: 2, skipped: 0 });
    const cards = list(built.dir).filter((c) => c.kind === 'uid');
    expect(cards.map((c) => [c.role, c.name, c.options.insecureUid, c.revoked])).toEqual(
      expect.arrayContaining([
        ['driver', 'Smith, Ann', true, false],
        ['guest', 'Bob', true, false],
      ]),
    );
    const again = runCliJson<ImportReport>([
      'keys',
      'import',
      at('cards.csv'),
      '--key',
      ownerPem,
      '--insecure-uid',
      '--state-dir',
      built.dir,
    ]);
    expect(again.value).toMatchObject({ added: 0, skipped: 2 });
  });

  it('stores a bulk import in batches', () => {
    // The store's batch path writes up to 4096 ops a journal write (IMPORT_CHUNK): two batches.
    const rows = Array.from({ length: 4100 }, (_, i) => `04${i.toString(16).padStart(6, '0')},driver`);
    writeFileSync(at('many.csv'), `uid,role\n${rows.join('\n')}\n`);
    const r = runCliJson<ImportReport>([
      'keys',
      'import',
      at('many.csv'),
      '--key',
      ownerPem,
      '--insecure-uid',
      '--state-dir',
      built.dir,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.value).toMatchObject({ added: 4100, batches: 2 });
    expect(list(built.dir).filter((c) => c.kind === 'uid')).toHaveLength(4100);
    expect(runCli(['state', 'check', '--state-dir', built.dir]).code).toBe(0);
  });
});
