/**
 * The real agent (dist/, simulated hardware) against damaged state files (issue 13 finding 5):
 * a revoke made through the running agent, the agent killed with SIGKILL (so the revoke is only
 * in the keyring journals), one byte flipped in the last record: the revoked key stays out, the
 * agent says what it repaired (log, state.findings, audit log). Then the same revoke lost in BOTH
 * copies: the key is denied as credential_suspect, `state check` names it, and `state repair`
 * with the revoke issued again clears it. A removed audit record fails `audit verify` and the
 * running agent records it.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { controlRequest } from '../../src/cli/control-client.js';
import { type AgentProcess, runCli, runCliJson, startAgentProcess } from '../helpers/agent-process.js';

describe('the agent with damaged state files', () => {
  let dir: string;
  let agent: AgentProcess | undefined;
  let driverId: string;
  const sd = () => ['--state-dir', dir];
  const env = { VEHICLE_AGENT_POLICY__MAX_DENIALS: '1000' };
  const present = (name: string) =>
    runCliJson<{ granted: boolean; code?: string }>(['sim', 'present', name, ...sd()]).value;

  interface CheckReply {
    ok: boolean;
    findings: { file: string; code: string; denied?: string[] }[];
    agent?: { state: string; findings: { file: string; code: string }[]; denied: string[] };
  }

  function flipLastRecord(file: string, fromEnd: number): void {
    const path = join(dir, file);
    const bytes = readFileSync(path);
    const at = bytes.length - fromEnd;
    bytes[at] = (bytes[at] ?? 0) ^ 0x04;
    writeFileSync(path, bytes);
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'va-integrity-agent-'));
    agent = await startAgentProcess(sd(), env);
    const list = runCliJson<{ id: string; name?: string }[]>(['keys', 'list', ...sd()]);
    driverId = list.value.find((c) => c.name === 'demo driver')?.id ?? '';
    expect(driverId).not.toBe('');
    expect(present('driver')).toMatchObject({ granted: true });
    const revoke = runCli([
      'keys',
      'revoke',
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--id',
      driverId,
      ...sd(),
    ]);
    expect(revoke.code, revoke.stderr).toBe(0);
    expect(present('driver')).toMatchObject({ granted: false, code: 'revoked' });
    // Killed: the revoke is in the keyring journals only, not folded into keyring.ops.
    await agent.stop('SIGKILL');
    agent = undefined;
  });

  afterAll(async () => {
    if (agent) await agent.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a flipped byte in the last journal record does not bring a revoked key back, and is reported', async () => {
    expect(readFileSync(join(dir, 'keyring.journal'), 'utf8')).toContain(' {"jws":');
    flipLastRecord('keyring.journal', 40);
    agent = await startAgentProcess(sd(), env);
    await agent.waitForLog((l) => l.code === 'state_repaired' && String(l.file).endsWith('keyring.journal'));
    expect(present('driver')).toMatchObject({ granted: false, code: 'revoked' });
    expect(present('guest')).toMatchObject({ granted: true });
    const check = runCliJson<CheckReply>(['state', 'check', ...sd()]);
    // The running agent repaired it at start and says so; the files now read clean.
    expect(check.value.agent?.state).toBe('repaired');
    expect(check.value.agent?.findings).toMatchObject([{ file: 'keyring.journal', code: 'state_repaired' }]);
    const tail = runCli(['audit', 'tail', '-n', '50', '--json', ...sd()]);
    expect(JSON.parse(tail.stdout)).toContainEqual(expect.objectContaining({ type: 'state.damage' }));
    expect(await agent.stop()).toBe(0);
    agent = undefined;
  });

  it('a revoke damaged in both copies denies the key as credential_suspect until repaired', async () => {
    // Stopped cleanly above: the revoke is now folded into both ops files. Damage it in both.
    const ops = readFileSync(join(dir, 'keyring.ops'), 'utf8');
    const lines = ops.split('\n');
    const index = lines.findIndex((l) => {
      const payload = (l.split(' ')[2] ?? '').split('.')[1] ?? '';
      return Buffer.from(payload, 'base64url').toString().includes(`"credId":"${driverId}"`);
    });
    expect(index).toBeGreaterThanOrEqual(0);
    const at = lines.slice(0, index).join('\n').length + 1 + 20;
    for (const file of ['keyring.ops', 'keyring.mirror.ops']) {
      const bytes = readFileSync(join(dir, file));
      bytes[at] = (bytes[at] ?? 0) ^ 0x04;
      writeFileSync(join(dir, file), bytes);
    }
    agent = await startAgentProcess(sd(), env);
    await agent.waitForLog((l) => l.code === 'state_corrupt' && String(l.file).endsWith('keyring.ops'));
    expect(present('driver')).toMatchObject({ granted: false, code: 'credential_suspect' });
    expect(present('guest')).toMatchObject({ granted: true });
    const check = runCliJson<CheckReply>(['state', 'check', ...sd()]);
    expect(check.code).toBe(1);
    expect(check.value.agent?.state).toBe('degraded');
    expect(check.value.findings.find((f) => f.code === 'credential_suspect')?.denied).toEqual([driverId]);
    // state.status (what the status page shows) carries counts, never a credential id.
    const summary = await controlRequest(join(dir, 'control.sock'), 'state.status', {});
    expect(summary).toMatchObject({
      state: 'degraded',
      denied: 1,
      files: expect.arrayContaining(['keyring.ops']),
    });
    expect(JSON.stringify(summary)).not.toContain(driverId);
    expect(await agent.stop()).toBe(0);
    agent = undefined;

    // The owner revokes it again (or merges the cloud's set); repair sees the loss explained.
    const again = runCli([
      'keys',
      'revoke',
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--id',
      driverId,
      ...sd(),
    ]);
    expect(again.code, again.stderr).toBe(0);
    const repair = runCli(['state', 'repair', ...sd()]);
    expect(repair.stdout).toContain('no longer suspect');
    expect(repair.code, repair.stdout + repair.stderr).toBe(0);
    agent = await startAgentProcess(sd(), env);
    expect(present('driver')).toMatchObject({ granted: false, code: 'revoked' });
    expect(runCliJson<CheckReply>(['state', 'check', ...sd()]).value.agent?.state).toBe('ok');
  });

  it('a removed last audit record fails audit verify, and the restarted agent records it', async () => {
    if (agent) expect(await agent.stop()).toBe(0);
    agent = undefined;
    expect(runCli(['audit', 'verify', ...sd()]).code).toBe(0);
    const auditDir = join(dir, 'audit');
    const newest = readdirSync(auditDir)
      .filter((n) => n.endsWith('.jsonl'))
      .sort()
      .at(-1);
    const path = join(auditDir, newest ?? '');
    const text = readFileSync(path, 'utf8');
    writeFileSync(path, text.slice(0, text.lastIndexOf('\n', text.length - 2) + 1));
    const verify = runCli(['audit', 'verify', ...sd()]);
    expect(verify.code).toBe(1);
    expect(verify.stdout).toContain('head_missing');
    agent = await startAgentProcess(sd(), env);
    await agent.waitForLog((l) => l.code === 'audit_chain_broken');
    const check = runCliJson<CheckReply>(['state', 'check', ...sd()]);
    expect(check.value.agent?.findings).toMatchObject([{ code: 'audit_chain_broken' }]);
    expect(runCli(['audit', 'verify', ...sd()]).code).toBe(1);
  });
});
