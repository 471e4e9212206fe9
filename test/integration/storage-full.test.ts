import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, runCli, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import { fillUp, freeUp, mountTmpfs, type ScratchFs } from '../helpers/scratch-fs.js';
import { waitFor } from '../helpers/wait.js';

/**
 * A full state disk under the real agent (findings 3 and 4): the state directory is a tmpfs with
 * a size limit, filled up with a file the test frees again. A `keys grant` that cannot be written
 * fails with state_io and the key does not open, not after a compaction (the agent folds its
 * journal into the snapshot when it stops) nor after a restart; a `keys revoke` that cannot be
 * written fails and the key keeps its old state. Both through the running agent and through the
 * offline path straight to the state directory. When space returns the stores take writes again
 * without a restart, and /healthz and /metrics said what failed, where and since when.
 */

const ENV = {
  VEHICLE_AGENT_POLICY__MAX_DENIALS: '1000',
  VEHICLE_AGENT_BLE__ENABLED: 'false',
  VEHICLE_AGENT_NFC__ENABLED: 'false',
  VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
  VEHICLE_AGENT_STATUS_PAGE__PORT: '0',
  VEHICLE_AGENT_STATUS_PAGE__SIM_CONTROLS: 'false',
};

interface Reply {
  readonly granted?: boolean;
  readonly code?: string;
}

describe('a full state disk (size-limited tmpfs) under the agent', () => {
  let disk: ScratchFs;
  let work: string;
  let agent: AgentProcess | undefined;
  let base = '';
  let filler: string | undefined;
  const stateDir = () => join(disk.dir, 'state');
  const sd = () => ['--state-dir', stateDir()];
  const owner = () => join(stateDir(), 'demo', 'owner.pem');
  const key = (name: string) => join(work, name);

  const start = async () => {
    agent = await startAgentProcess(sd(), ENV);
    base = String((await agent.waitForLog((r) => r.msg === 'status page listening')).url).replace(/\/$/, '');
  };
  const stop = async () => {
    expect(await agent?.stop()).toBe(0);
    agent = undefined;
  };
  const fill = (leavePages = 0) => {
    filler = fillUp(disk.dir, leavePages);
  };
  const free = () => {
    if (filler !== undefined) freeUp(filler);
    filler = undefined;
  };
  const grant = (name: string) =>
    runCli([
      'keys',
      'grant',
      '--key',
      owner(),
      '--kind',
      'phone',
      '--public',
      `${key(name)}.pub.pem`,
      '--role',
      'driver',
      ...sd(),
    ]);
  const revoke = (id: string) => runCli(['keys', 'revoke', '--key', owner(), '--id', id, ...sd()]);
  const present = (name: string) =>
    runCliJson<Reply>(['sim', 'present', '--key', `${key(name)}.pem`, ...sd()]).value;
  const ids = new Map<string, string>();

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'va-full-'));
    disk = mountTmpfs(16 * 1024 * 1024);
    mkdirSync(stateDir(), { mode: 0o700 });
    for (const name of ['keeper', 'newcomer', 'offline', 'later']) {
      const r = runCli(['keygen', '--out', key(name), '--kind', 'phone']);
      expect(r.code, r.stderr).toBe(0);
      ids.set(
        name,
        r.stdout
          .trim()
          .split(/\s+/)
          .find((w) => w.startsWith('phone:')) ?? '',
      );
    }
    await start();
  });

  afterAll(async () => {
    free();
    await agent?.stop();
    disk?.dispose();
    rmSync(work, { recursive: true, force: true });
  });

  it('through the agent: a refused grant never opens and a refused revoke changes nothing, across compaction and restart', {
    timeout: 120_000,
  }, async () => {
    expect(grant('keeper').code).toBe(0);
    expect(present('keeper')).toMatchObject({ granted: true });
    // A restart folds the journal into the snapshot: the journal is empty, its next record needs
    // a page of its own.
    await stop();
    await start();

    fill();
    const refused = grant('newcomer');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/\[state_io\].*could not be stored, so it was not made.*ENOSPC/);
    expect(present('newcomer')).toMatchObject({ granted: false, code: 'unknown_credential' });
    const keeperId = ids.get('keeper') ?? '';
    const notRevoked = revoke(keeperId);
    expect(notRevoked.code).not.toBe(0);
    expect(notRevoked.stderr).toMatch(/\[state_io\]/);
    expect(present('keeper')).toMatchObject({ granted: true });

    // Said where it failed, with what, since when; the agent stays healthy for the watchdog.
    let health:
      | { healthy: boolean; degraded?: boolean; checks: Record<string, { detail?: string }> }
      | undefined;
    await waitFor(
      async () => {
        health = (await (await fetch(`${base}/healthz`)).json()) as typeof health;
        return /keyring: writes failing \(ENOSPC\)/.test(health?.checks.storage?.detail ?? '');
      },
      'the failing writes in /healthz',
      { timeoutMs: 10_000, intervalMs: 100 },
    ).catch(() => {}); // the assertions below show what it said
    expect(health).toMatchObject({ healthy: true, degraded: true });
    expect(health?.checks.storage?.detail).toMatch(/keyring: writes failing \(ENOSPC\) since \d{4}-/);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/vehicle_agent_store_write_failures_total\{store="keyring"\} [2-9]/);
    expect(metrics).toContain('vehicle_agent_store_last_write_error{store="keyring",code="ENOSPC"} 1');
    expect(metrics).toMatch(/vehicle_agent_store_write_failing_since_seconds\{store="keyring"\} \d+/);

    free();
    // Compaction at stop, then a restart: the refused grant is nowhere, the refused revoke too.
    await stop();
    await start();
    expect(present('newcomer')).toMatchObject({ granted: false, code: 'unknown_credential' });
    expect(present('keeper')).toMatchObject({ granted: true });
    const listed = runCliJson<{ id: string; revoked: boolean }[]>(['keys', 'list', ...sd()]).value;
    expect(listed.find((c) => c.id === ids.get('newcomer'))).toBeUndefined();
    expect(listed.find((c) => c.id === keeperId)).toMatchObject({ revoked: false });
    // The failures are in the audit log: as keyring.failed records, or, where even those did not
    // fit, counted in the audit.dropped record written once the disk took writes again.
    const records = auditRecords();
    const failed = records.filter((r) => r.type === 'keyring.failed');
    const dropped = records
      .filter((r) => r.type === 'audit.dropped')
      .reduce(
        (n, r) => n + Number((r.types as Record<string, number> | undefined)?.['keyring.failed'] ?? 0),
        0,
      );
    expect(failed.length + dropped).toBe(2);
    expect(records.some((r) => r.type === 'keyring.grant' && r.credentialId === ids.get('newcomer'))).toBe(
      false,
    );

    // With space, the same changes go through.
    expect(grant('newcomer').code).toBe(0);
    expect(present('newcomer')).toMatchObject({ granted: true });
    expect(revoke(keeperId).code).toBe(0);
    expect(present('keeper')).toMatchObject({ granted: false, code: 'revoked' });
  });

  it('recovers by itself when space returns: no restart between a refused and an accepted write', {
    timeout: 60_000,
  }, async () => {
    // The journal holds records now: make room for none at all, then for them again.
    await stop();
    await start();
    fill();
    const refused = grant('later');
    expect(refused.stderr).toMatch(/\[state_io\]/);
    free();
    const accepted = grant('later');
    expect(accepted.code, accepted.stderr).toBe(0);
    expect(present('later')).toMatchObject({ granted: true });
  });

  it('offline (agent stopped): a grant that cannot be written fails with state_io and leaves nothing', {
    timeout: 60_000,
  }, async () => {
    await stop();
    // Room for the three lock files the command takes (the state directory's, the keyring
    // journal's and its mirror's), none for the journal record.
    fill(3);
    const refused = grant('offline');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/\[state_io\] the keyring change could not be stored, so it was not made/);
    free();
    await start();
    expect(present('offline')).toMatchObject({ granted: false, code: 'unknown_credential' });
    await stop();
    expect(grant('offline').code).toBe(0);
    await start();
    expect(present('offline')).toMatchObject({ granted: true });
  });

  function auditRecords(): Record<string, unknown>[] {
    const r = runCli(['audit', 'tail', '-n', '1000', '--json', ...sd()]);
    return JSON.parse(r.stdout) as Record<string, unknown>[];
  }
});
