import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, runCli, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import { runCliAsync } from '../helpers/cli-async.js';
import { requireTool } from '../helpers/processes.js';

/**
 * A phone enrollment approved by the owner's FIDO key at the PN532, end to end: the real agent in
 * sim mode (PN532 emulator behind a socat pty on the real serial path, BLE stand-in on a private
 * D-Bus), the real CLI opening the request (`enroll phone`), arming the reader (`enroll approve
 * --owner-fido`) and tapping the demo's simulated keys (`sim tap`).
 */

interface TapReply {
  readonly granted?: boolean;
  readonly code?: string;
  readonly approval?: string;
  readonly ok?: boolean;
  readonly state?: string;
  readonly approvedBy?: string;
  readonly credentialId?: string;
}

interface AuditRecord {
  readonly type: string;
  readonly method?: string;
  readonly code?: string;
  readonly by?: string;
  readonly credentialId?: string;
}

function auditRecords(dir: string): AuditRecord[] {
  return readdirSync(join(dir, 'audit'))
    .flatMap((f) => readFileSync(join(dir, 'audit', f), 'utf8').split('\n'))
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as AuditRecord);
}

describe('phone enrollment approved by an owner FIDO key at the reader (real agent)', () => {
  let dir: string;
  let agent: AgentProcess;
  let newPhone: string;
  let newId: string;
  const sd = (): string[] => ['--state-dir', dir];
  const tap = (card: string) => runCliJson<TapReply>(['sim', 'tap', card, '--json', ...sd()]);
  const enrollStatus = () =>
    runCliJson<{ state: string; approvedBy?: string; approvedWith?: string }>(['enroll', 'status', ...sd()])
      .value;
  const decisions = () =>
    runCliJson<{ decisions: { granted: number; denied: number } }>(['status', ...sd()]).value.decisions;

  beforeAll(async () => {
    requireTool('socat', 'apt-get install socat');
    requireTool('dbus-daemon', 'apt-get install dbus');
    dir = mkdtempSync(join(tmpdir(), 'va-nfc-approve-'));
    agent = await startAgentProcess(sd(), {
      VEHICLE_AGENT_POLICY__MAX_DENIALS: '1000',
      VEHICLE_AGENT_NFC__LIVENESS_INTERVAL_MS: '200',
    });
    await agent.waitForLog((r) => r.msg === 'PN532 ready');
    newPhone = join(dir, 'new-phone');
    newId = runCliJson<{ credentialId: string }>(['phone', 'keygen', '--out', newPhone]).value.credentialId;
  });

  afterAll(async () => {
    if (agent) await agent.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses to arm the reader when no request is pending', () => {
    const r = runCli(['enroll', 'approve', '--owner-fido', '--no-wait', ...sd()]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('enrollment_closed');
  });

  it('unarmed, the owner key tapped while a request is pending unlocks and approves nothing', () => {
    const open = runCli([
      'enroll',
      'phone',
      '--public',
      `${newPhone}.pub.pem`,
      '--role',
      'driver',
      '--no-wait',
      ...sd(),
    ]);
    expect(open.code, open.stderr).toBe(0);
    expect(tap('fido-owner').value).toMatchObject({ granted: true, role: 'owner' });
    expect(enrollStatus().state).toBe('pending');
  });

  it('armed, a driver key is refused (role_not_allowed) and nothing moves; the owner key approves and the new phone unlocks', async () => {
    const waiting = runCliAsync(['enroll', 'approve', '--owner-fido', '--json', ...sd()]);
    await agent.waitForLog((r) => typeof r.msg === 'string' && r.msg.startsWith('reader armed'));
    const before = decisions();
    const byDriver = tap('fido-driver');
    expect(byDriver.code).toBe(2);
    expect(byDriver.value).toMatchObject({
      approval: 'owner-fido',
      ok: false,
      code: 'role_not_allowed',
      state: 'armed',
    });
    expect(tap('fido-stranger').value).toMatchObject({ ok: false, code: 'unknown_credential' });
    // Approval taps neither open nor lock, and decide nothing.
    expect(decisions()).toEqual(before);
    expect(enrollStatus().state).toBe('pending');

    const byOwner = tap('fido-owner');
    expect(byOwner.code, JSON.stringify(byOwner.value)).toBe(0);
    expect(byOwner.value).toMatchObject({
      approval: 'owner-fido',
      ok: true,
      state: 'approved',
      credentialId: newId,
    });
    const waited = await waiting;
    expect(waited.code, waited.stderr).toBe(0);
    expect(JSON.parse(waited.stdout.trim().split('\n').at(-1) ?? '{}')).toMatchObject({ state: 'approved' });
    expect(enrollStatus()).toMatchObject({ state: 'completed', approvedWith: 'owner-fido' });
    expect(decisions()).toEqual(before);

    const unlock = runCliJson<{ granted: boolean; role?: string }>([
      'phone',
      'approach',
      '--key',
      `${newPhone}.pem`,
      ...sd(),
    ]);
    expect(unlock.value).toMatchObject({ granted: true, role: 'driver' });
    // Disarmed by the approval: the owner key unlocks again.
    expect(tap('fido-owner').value).toMatchObject({ granted: true });

    const audit = auditRecords(dir);
    expect(audit).toContainEqual(
      expect.objectContaining({ type: 'enroll.approved', method: 'owner-fido', credentialId: newId }),
    );
    expect(audit).toContainEqual(
      expect.objectContaining({ type: 'enroll.refused', method: 'owner-fido', code: 'role_not_allowed' }),
    );
    expect(audit).toContainEqual(expect.objectContaining({ type: 'keyring.grant', source: 'enroll.ble' }));
  });
});
