import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, CLI, runCli, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import { requireTool } from '../helpers/processes.js';
import {
  type FreezableFs,
  mountExt4,
  mountTmpfs,
  type ScratchFs,
  threadsInDiskSleep,
} from '../helpers/scratch-fs.js';
import { waitFor, waitForValue } from '../helpers/wait.js';

/**
 * A frozen state disk under the real agent (finding 1, storage half): the state directory is an
 * ext4 image on a loop device, frozen with `fsfreeze -f` while the agent runs. Writes to it block
 * in the kernel (D state) until it is thawed. The agent must keep opening for every credential
 * that needs no disk (NTAG 424 and UID cards through the PN532 emulator on a pty, phone keys),
 * deny FIDO keys with state_io (their counter cannot be written) without touching the relay, say
 * so in /healthz and /metrics, and pick up where it was once thawed.
 *
 * The test holds the disk frozen until four of the agent's threads are stuck in it (the
 * counters, the audit log, the keyring journal and, within a minute, the trusted-clock file):
 * libuv's default pool has four threads, and the NFC reader's serial reads need one. The
 * simulated cards' own wallet (<state>/sim) is on a tmpfs of its own: it is the cards' state,
 * not the vehicle's. Tap outcomes are recorded, with their times printed as figures; no timing is
 * asserted.
 */

const BASE_ENV = {
  VEHICLE_AGENT_POLICY__MAX_DENIALS: '1000',
  VEHICLE_AGENT_BLE__ENABLED: 'false',
  VEHICLE_AGENT_NFC__LIVENESS_INTERVAL_MS: '200',
  VEHICLE_AGENT_NFC__MAX_BACKOFF_MS: '400',
  VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
  VEHICLE_AGENT_STATUS_PAGE__PORT: '0',
  VEHICLE_AGENT_STATUS_PAGE__SIM_CONTROLS: 'false',
  // Few, so taps during the freeze overflow it and the drop path runs end to end.
  VEHICLE_AGENT_AUDIT__MAX_PENDING_EVENTS: '4',
};

interface Reply {
  readonly granted?: boolean;
  readonly code?: string;
  readonly role?: string;
}

describe('a frozen state disk (fsfreeze) under the running agent', () => {
  let disk: FreezableFs;
  let cardWallet: ScratchFs | undefined;
  let work: string;
  let agent: AgentProcess | undefined;
  let base: string;
  let grantChild: ChildProcess | undefined;
  const stateDir = () => join(disk.dir, 'state');
  const sd = () => ['--state-dir', stateDir()];
  const figures: string[] = [];
  const timed = <T>(what: string, run: () => T): T => {
    const started = performance.now();
    const result = run();
    figures.push(`${what}: ${Math.round(performance.now() - started)} ms`);
    return result;
  };
  const tap = (card: string) => timed(`tap ${card}`, () => runCliJson<Reply>(['sim', 'tap', card, ...sd()]));
  const phone = (name: string) =>
    timed(`phone ${name}`, () => runCliJson<Reply>(['sim', 'present', name, ...sd()]));

  beforeAll(async () => {
    requireTool('socat', 'apt-get install socat');
    requireTool('fsfreeze', 'apt-get install util-linux');
    requireTool('mkfs.ext4', 'apt-get install e2fsprogs');
    work = mkdtempSync(join(tmpdir(), 'va-frozen-'));
    disk = mountExt4(64);
    mkdirSync(join(stateDir(), 'sim'), { recursive: true, mode: 0o700 });
    cardWallet = mountTmpfs(4 * 1024 * 1024, join(stateDir(), 'sim'));
    agent = await startAgentProcess(sd(), BASE_ENV);
    await agent.waitForLog((r) => r.msg === 'PN532 ready');
    base = String((await agent.waitForLog((r) => r.msg === 'status page listening')).url).replace(/\/$/, '');
    const keygen = runCli(['keygen', '--out', join(work, 'newcomer'), '--kind', 'phone']);
    expect(keygen.code, keygen.stderr).toBe(0);
  });

  afterAll(async () => {
    // Thaw before anything else touches the disk: a writer to a frozen disk cannot be stopped.
    try {
      disk?.thaw();
    } finally {
      if (grantChild && grantChild.exitCode === null) grantChild.kill('SIGKILL');
      await agent?.stop();
      cardWallet?.dispose();
      disk?.dispose();
      rmSync(work, { recursive: true, force: true });
      if (figures.length > 0) process.stdout.write(`frozen-disk figures:\n  ${figures.join('\n  ')}\n`);
    }
  });

  it('opens for NTAG 424, UID and phone keys, denies FIDO with state_io, reports it, and resumes when thawed', async () => {
    const proc = agent?.child;
    if (!agent || !proc?.pid) throw new Error('no agent');
    for (const card of ['fido-owner', 'ntag-driver', 'tag-insecure']) {
      expect(tap(card).value, card).toMatchObject({ granted: true });
    }
    const before = runCliJson<{ decisions: { granted: number } }>(['status', ...sd()]).value.decisions
      .granted;

    disk.freeze();
    try {
      const fido = tap('fido-owner');
      expect(fido.code, fido.stderr).toBe(2);
      expect(fido.value).toMatchObject({ granted: false, code: 'state_io' });

      // A keyring change now waits for the disk (its write is stuck): run it beside the test.
      grantChild = spawn(
        process.execPath,
        [
          CLI,
          'keys',
          'grant',
          '--key',
          join(stateDir(), 'demo', 'owner.pem'),
          '--kind',
          'phone',
          '--public',
          join(work, 'newcomer.pub.pem'),
          '--role',
          'driver',
          ...sd(),
        ],
        { stdio: 'ignore' },
      );
      const grantDone = new Promise<number | null>((resolve) => grantChild?.once('exit', resolve));

      // Hold the freeze until four of the agent's threads are stuck on the disk (the counters'
      // two copies, the keyring's, the audit log, the trusted clock), keeping the agent busy.
      let stuck = 0;
      const agentPid = proc.pid;
      await waitFor(
        () => {
          stuck = threadsInDiskSleep(agentPid);
          return stuck >= 4;
        },
        'four threads stuck on the disk',
        { timeoutMs: 80_000, intervalMs: 500 },
      ).catch(() => {}); // the assertion below says how many
      figures.push(`threads stuck on the frozen disk: ${stuck}`);
      expect(stuck).toBeGreaterThanOrEqual(4);

      for (const card of ['ntag-driver', 'tag-insecure']) {
        const r = tap(card);
        expect(r.value, `${card} ${r.stderr}`).toMatchObject({ granted: true });
      }
      expect(phone('driver').value).toMatchObject({ granted: true, role: 'driver' });
      expect(phone('revoked').value).toMatchObject({ granted: false, code: 'revoked' });
      expect(tap('fido-driver').value).toMatchObject({ granted: false, code: 'state_io' });
      const during = runCliJson<{ lock: string; decisions: { granted: number } }>(['status', ...sd()]).value;
      expect(during.decisions.granted).toBe(before + 3);

      // Said in /healthz (healthy: the watchdog keeps pinging; degraded: storage) and /metrics.
      // A write counts as stalled after storageStallMs (5 s): wait for a health run past that.
      type Health = {
        healthy: boolean;
        degraded: boolean;
        checks: Record<string, { ok: boolean; detail?: string }>;
      };
      let health = (await (await fetch(`${base}/healthz`)).json()) as Health;
      const stalled = /counters: a write has not finished for \d+ ms/;
      await waitFor(
        async () => {
          health = (await (await fetch(`${base}/healthz`)).json()) as Health;
          return stalled.test(health.checks.storage?.detail ?? '');
        },
        'a stalled write in /healthz',
        { timeoutMs: 30_000, intervalMs: 100 },
      ).catch(() => {});
      expect(health).toMatchObject({ healthy: true, degraded: true });
      expect(health.checks.storage?.detail).toMatch(stalled);
      // The figures come from the last health run (every 5 s): wait for one after the taps.
      let metrics = '';
      await waitFor(
        async () => {
          metrics = await (await fetch(`${base}/metrics`)).text();
          return /vehicle_agent_audit_events_dropped_total [1-9]/.test(metrics);
        },
        'dropped audit events in /metrics',
        { timeoutMs: 10_000, intervalMs: 100 },
      ).catch(() => {});
      expect(metrics).toMatch(/vehicle_agent_audit_events_dropped_total [1-9]/);
      const busy = /vehicle_agent_store_write_busy_seconds\{store="counters"\} ([\d.]+)/.exec(metrics);
      expect(Number(busy?.[1])).toBeGreaterThan(5);

      expect(await grantDone).not.toBe(0); // the CLI gave up waiting; the change is not lost
    } finally {
      disk.thaw();
    }

    // Thawed: the stuck writes complete, FIDO opens again, the refused audit events are counted.
    const fidoAgain = tap('fido-owner');
    expect(fidoAgain.value, fidoAgain.stderr).toMatchObject({ granted: true });
    // The grant that waited for the disk took effect once it was written.
    const newcomer = phoneKey(join(work, 'newcomer.pem'));
    expect(newcomer.value).toMatchObject({ granted: true, role: 'driver' });
    const dropped = await waitForValue(
      () => auditRecords().find((r) => r.type === 'audit.dropped'),
      'the audit.dropped record',
      { timeoutMs: 10_000, intervalMs: 100 },
    );
    expect(dropped).toMatchObject({ code: 'state_io', count: expect.any(Number) });
    const verify = runCli(['audit', 'verify', ...sd()]);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    expect(readdirSync(stateDir())).toContain('counters.journal');
    expect(readFileSync(join(stateDir(), 'counters.journal'), 'utf8')).not.toBe('');
  }, 180_000);

  function auditRecords(): Record<string, unknown>[] {
    const r = runCli(['audit', 'tail', '-n', '500', '--json', ...sd()]);
    return JSON.parse(r.stdout) as Record<string, unknown>[];
  }

  function phoneKey(keyFile: string) {
    return timed('phone newcomer', () => runCliJson<Reply>(['sim', 'present', '--key', keyFile, ...sd()]));
  }
});
