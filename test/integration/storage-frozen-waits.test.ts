import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/logger.js';
import { openTrustedClock } from '../../src/store/clock-store.js';
import { type AgentProcess, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import { requireTool } from '../helpers/processes.js';
import { type FreezableFs, mountExt4, threadsInDiskSleep } from '../helpers/scratch-fs.js';
import { waitFor } from '../helpers/wait.js';

describe('waits on a frozen state disk are bounded', () => {
  let disk: FreezableFs | undefined;
  let agent: AgentProcess | undefined;

  afterEach(async () => {
    try {
      disk?.thaw();
      await agent?.stop();
    } finally {
      agent = undefined;
      disk?.dispose();
      disk = undefined;
    }
  });

  it('the trusted clock: one write at a time while frozen, and close rejects with state_io', async () => {
    requireTool('fsfreeze', 'apt-get install util-linux');
    disk = mountExt4(16);
    const store = await openTrustedClock(disk.dir, silentLogger, { closeTimeoutMs: 300 });
    store.clock.advanceTo(Date.UTC(2031, 0, 1));
    const floor = store.clock.floor();
    const before = threadsInDiskSleep(process.pid);
    disk.freeze();
    let writes: Promise<void>[] = [];
    try {
      writes = [store.persist(), store.persist(), store.persist()];
      for (const w of writes) w.catch(() => {});
      await waitFor(() => threadsInDiskSleep(process.pid) > before, 'a write stuck on the frozen disk', {
        timeoutMs: 5000,
        intervalMs: 50,
      }).catch(() => {}); // as before: the close is tried either way
      await expect(store.close()).rejects.toMatchObject({
        code: 'state_io',
        details: { timeoutMs: 300 },
      });
      // The persists asked for during the stuck write wait behind it: one thread on the disk.
      expect(threadsInDiskSleep(process.pid) - before).toBe(1);
    } finally {
      disk.thaw();
    }
    await Promise.all(writes);
    // The write that waited took the floor as it was when it ran, not an older one.
    const written = readFileSync(join(disk.dir, 'clock.json'), 'utf8');
    expect(Number(/"floor":([\d.]+)/.exec(written)?.[1])).toBeGreaterThanOrEqual(floor);
  });

  it('sim mode: taps are answered while the wallet of simulated cards cannot be saved', async () => {
    requireTool('socat', 'apt-get install socat');
    requireTool('fsfreeze', 'apt-get install util-linux');
    disk = mountExt4(64);
    const stateDir = join(disk.dir, 'state');
    agent = await startAgentProcess(['--state-dir', stateDir], {
      VEHICLE_AGENT_BLE__ENABLED: 'false',
      VEHICLE_AGENT_NFC__LIVENESS_INTERVAL_MS: '200',
      VEHICLE_AGENT_NFC__MAX_BACKOFF_MS: '400',
    });
    await agent.waitForLog((r) => r.msg === 'PN532 ready');
    const tap = (card: string) =>
      runCliJson<{ granted?: boolean; code?: string }>(['sim', 'tap', card, '--state-dir', stateDir]);
    expect(tap('ntag-driver').value).toMatchObject({ granted: true });
    const proc = agent.child.pid ?? 0;
    disk.freeze();
    try {
      for (const card of ['ntag-driver', 'tag-insecure', 'ntag-driver']) {
        const r = tap(card);
        expect(r.code, r.stderr).toBe(0);
        expect(r.value).toMatchObject({ granted: true });
      }
      // Writes (the wallet's save among them) are stuck on the disk behind the answers.
      expect(threadsInDiskSleep(proc)).toBeGreaterThan(0);
    } finally {
      disk.thaw();
    }
    expect(tap('tag-insecure').value).toMatchObject({ granted: true });
  }, 60_000);
});
