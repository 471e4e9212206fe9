/**
 * Backup and bulk import beside the real running agent (dist/, simulated hardware): UID cards go
 * in through its control socket in batches and open at once; a backup made meanwhile reads the
 * agent's files (journals not yet compacted included) and restores to the keyring the agent
 * holds; a restore into the running agent's folder is refused.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, runCli, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import { stateFiles } from '../helpers/state-sweep.js';

const PASS = { VEHICLE_AGENT_BACKUP_PASSPHRASE: 'a long test passphrase' };
const CARDS = 150;
const uidOf = (i: number) => `04${(0xa00000 + i).toString(16)}`;

describe('backup and keys import beside the running agent', () => {
  let root: string;
  let state: string;
  let agent: AgentProcess;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'va-backup-live-'));
    state = join(root, 'state');
    agent = await startAgentProcess(['--state-dir', state], { VEHICLE_AGENT_POLICY__MAX_DENIALS: '1000' });
  });
  afterAll(async () => {
    if (agent) await agent.stop();
    rmSync(root, { recursive: true, force: true });
  });

  it('imports UID cards through the agent in batches; an imported card opens at once', () => {
    const rows = Array.from({ length: CARDS }, (_, i) => `${uidOf(i)},driver,card ${i}`);
    writeFileSync(join(root, 'cards.csv'), `uid,role,name\n${rows.join('\n')}\n`);
    expect(runCli(['sim', 'present', '--uid', uidOf(7), '--state-dir', state]).code).toBe(2);
    const r = runCliJson<{ added: number; batches: number }>([
      'keys',
      'import',
      join(root, 'cards.csv'),
      '--key',
      join(state, 'demo', 'owner.pem'),
      '--insecure-uid',
      '--state-dir',
      state,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.value.added).toBe(CARDS);
    // 48 KiB of operations per request: a grant is several hundred bytes.
    expect(r.value.batches).toBeGreaterThan(1);
    const opened = runCli(['sim', 'present', '--uid', uidOf(7), '--state-dir', state]);
    expect(opened.code, opened.stdout + opened.stderr).toBe(0);
    expect(opened.stdout).toContain('granted');
  });

  it('backs up while the agent runs: the restore holds the keyring the agent holds', () => {
    const made = runCli(['backup', join(root, 'b'), '--state-dir', state], PASS);
    expect(made.code, made.stderr).toBe(0);
    const fresh = join(root, 'fresh');
    const restored = runCliJson<{ keyringDigest: string }>(
      ['restore', join(root, 'b'), '--state-dir', fresh],
      PASS,
    );
    expect(restored.code, restored.stderr).toBe(0);
    const live = runCliJson<{ keyring: { digest: string } }>(['status', '--state-dir', state]);
    expect(restored.value.keyringDigest).toBe(live.value.keyring.digest);
    const cards = runCliJson<{ kind: string }[]>(['keys', 'list', '--state-dir', fresh]).value;
    expect(cards.filter((c) => c.kind === 'uid').length).toBeGreaterThanOrEqual(CARDS);
  });

  it("refuses to restore into the running agent's folder and changes nothing", () => {
    const files = stateFiles(state).filter((f) => f.startsWith('vehicle') || f.startsWith('keyring'));
    const before = files.map((f) => readFileSync(join(state, f)).toString('base64'));
    const r = runCli(['restore', join(root, 'b'), '--state-dir', state], PASS);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('[busy]');
    expect(r.stderr).toContain('stop the agent before a restore');
    expect(files.map((f) => readFileSync(join(state, f)).toString('base64'))).toEqual(before);
  });
});
