/**
 * `vehicle-agent state check` and `state repair`, through the real CLI (dist/): damage found and
 * named per file, repaired from what is left, a loss accepted only when asked, the cloud's signed
 * operations merged back, and the agent's lock respected.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { signRevoke } from '../../src/access/keyring.js';
import { parseKeyText } from '../../src/crypto/keys.js';
import { acquireInstanceLock } from '../../src/store/instance-lock.js';
import { loadIdentity } from '../../src/store/provision.js';
import { runCli, runCliJson } from '../helpers/agent-process.js';
import { type BuiltState, buildState, openAsAgent } from '../helpers/state-sweep.js';

let root: string;
let built: BuiltState;

beforeEach(async () => {
  root = mkdtempSync(join(tmpdir(), 'va-repair-'));
  built = await buildState(join(root, 'state'));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

const dir = () => built.dir;
const args = (...rest: string[]) => [...rest, '--state-dir', dir()];

function flip(file: string, at: number): void {
  const path = join(dir(), file);
  const bytes = readFileSync(path);
  const i = at < 0 ? bytes.length + at : at;
  bytes[i] = (bytes[i] ?? 0) ^ 0x04;
  writeFileSync(path, bytes);
}

interface Check {
  ok: boolean;
  findings: { file: string; code: string; problem: string; denied?: string[] }[];
  audit: { ok: boolean };
}

describe('vehicle-agent state check / repair', () => {
  it('reports a clean state directory as clean', () => {
    const r = runCliJson<Check>(args('state', 'check'));
    expect(r.code).toBe(0);
    expect(r.value).toMatchObject({ ok: true, findings: [], audit: { ok: true } });
  });

  it('names each damaged file and what the agent does, then repairs them all from their copies', () => {
    flip('keyring.journal', -30);
    flip('counters.mirror.journal', -20);
    flip('keyring.ops', 40);
    flip('clock.json', 12);
    unlinkSync(join(dir(), 'vehicle-key.pem'));
    const check = runCliJson<Check>(args('state', 'check'));
    expect(check.code).toBe(1);
    expect(check.value.findings.map((f) => `${f.file} ${f.code}`).sort()).toEqual([
      'clock.json state_repaired',
      'counters.mirror.journal state_repaired',
      'keyring.journal state_repaired',
      'keyring.ops state_repaired',
      'vehicle-key.pem state_repaired',
    ]);
    // Check changes nothing.
    expect(runCliJson<Check>(args('state', 'check')).value.findings).toHaveLength(5);

    const human = runCli(args('state', 'repair'));
    expect(human.code, human.stdout + human.stderr).toBe(0);
    expect(human.stdout).toContain('state ok: every file reads clean');
    expect(runCliJson<Check>(args('state', 'check')).value).toMatchObject({ ok: true, findings: [] });
    // The damaged bytes were kept aside for a human.
    expect(readdirSync(dir()).filter((n) => n.includes('.corrupt-')).length).toBeGreaterThanOrEqual(3);
  });

  it("keeps a credential denied when both copies lost its revoke, until the cloud's signed revoke is merged back", async () => {
    // The late revoke, damaged at the same byte of both journals (in its signature, so the
    // record still names the credential).
    const text = readFileSync(join(dir(), 'keyring.journal'), 'latin1');
    const inSignature = text.lastIndexOf('","signer"') - 10;
    for (const file of ['keyring.journal', 'keyring.mirror.journal']) {
      const bytes = readFileSync(join(dir(), file));
      bytes[inSignature] = (bytes[inSignature] ?? 0) ^ 0x01;
      writeFileSync(join(dir(), file), bytes);
    }
    const check = runCliJson<Check>(args('state', 'check'));
    expect(check.value.findings.some((f) => f.code === 'credential_suspect')).toBe(true);

    // Repair without the lost op cannot rebuild it: the credential stays denied.
    const first = runCli(args('state', 'repair'));
    expect(first.code).toBe(1);
    expect(first.stdout).toContain('stay denied');
    let view = await openAsAgent(built, dir());
    expect(view.fate(built.revokedLate)).toBe('suspect');

    // The cloud's copy of the revoke (any verified copy is as good as the original).
    const identity = await loadIdentity(dir(), [], false);
    const owner = parseKeyText(built.ownerPem);
    const revoke = signRevoke(built.revokedLate, identity.vehicleId, owner, identity.rootId, 1_800_000_003);
    const forged = signRevoke(built.driver, 'another-vehicle', owner, identity.rootId, 1_800_000_004);
    writeFileSync(join(root, 'ops.json'), JSON.stringify({ ops: [revoke, forged] }));
    const second = runCli(args('state', 'repair', '--ops', join(root, 'ops.json')));
    expect(second.stdout).toContain('1 operation(s) added');
    expect(second.stdout).toContain('refused [op_wrong_vehicle]');
    view = await openAsAgent(built, dir());
    // Revoked by the merged op; still suspect until the loss is accepted (the op that was lost
    // need not be the one merged).
    expect(view.fate(built.revokedLate)).toBe('suspect');
    expect(view.fate(built.driver)).toBe('valid');

    const third = runCli(args('state', 'repair', '--accept-loss'));
    expect(third.code, third.stdout + third.stderr).toBe(0);
    view = await openAsAgent(built, dir());
    expect(view.fate(built.revokedLate)).toBe('revoked');
    expect(view.findings).toEqual([]);
  });

  it('acknowledges audit losses only with --accept-loss, and audit verify passes after', () => {
    const auditFiles = readdirSync(join(dir(), 'audit'))
      .filter((n) => n.endsWith('.jsonl'))
      .sort();
    const newest = join(dir(), 'audit', auditFiles.at(-1) ?? '');
    const text = readFileSync(newest, 'utf8');
    writeFileSync(newest, text.slice(0, text.lastIndexOf('\n', text.length - 2) + 1)); // the last record removed
    expect(runCli(args('audit', 'verify')).code).toBe(1);
    const plain = runCli(args('state', 'repair'));
    expect(plain.code).toBe(1);
    expect(plain.stdout).toContain('--accept-loss acknowledges');
    expect(runCli(args('audit', 'verify')).code).toBe(1);
    const accepted = runCli(args('state', 'repair', '--accept-loss'));
    expect(accepted.code, accepted.stdout).toBe(0);
    const verify = runCli(args('audit', 'verify'));
    expect(verify.code).toBe(0);
    expect(verify.stdout).toContain('acknowledged by repair');
  });

  it('refuses to repair while the agent holds the state directory', async () => {
    const lock = await acquireInstanceLock(dir(), 'agent');
    try {
      const r = runCli(args('state', 'repair'));
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('busy');
    } finally {
      await lock.release();
    }
  });
});
