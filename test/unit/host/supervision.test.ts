import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/core/logger.js';
import type { LockState } from '../../../src/core/types.js';
import type { CheckResult } from '../../../src/host/health-monitor.js';
import type { NotifyTransport } from '../../../src/host/sd-notify.js';
import { type Supervision, startSupervision } from '../../../src/host/supervision.js';
import { quietFor } from '../../helpers/wait.js';

/** Collects notifications and lets a test wait for one. */
class RecordingTransport implements NotifyTransport {
  readonly kind = 'recording';
  readonly lines: string[] = [];
  private waiters: { match: (l: string) => boolean; resolve: () => void }[] = [];
  closed = false;

  send(message: string): void {
    for (const line of message.split('\n').filter((l) => l !== '')) {
      this.lines.push(line);
      for (const w of [...this.waiters]) {
        if (w.match(line)) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve();
        }
      }
    }
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** Resolves on the count-th line matching from now on. */
  next(match: (l: string) => boolean, count = 1): Promise<void> {
    let seen = 0;
    return new Promise((resolve) => {
      this.waiters.push({
        match: (l) => match(l) && ++seen >= count,
        resolve,
      });
    });
  }
}

const dir = mkdtempSync(join(tmpdir(), 'va-supervision-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let supervision: Supervision | undefined;
afterEach(async () => {
  await supervision?.close();
  supervision = undefined;
});

function start(transport: RecordingTransport | undefined, extra: () => CheckResult, watchdogUsec = '40000') {
  let lockListener: ((s: LockState) => void) | undefined;
  supervision = startSupervision({
    stateDir: dir,
    lock: { state: () => 'locked' },
    onLockChange: (l) => {
      lockListener = l;
    },
    maxOnMs: 10_000,
    notifyEnv: { NOTIFY_SOCKET: '/run/test/notify', WATCHDOG_USEC: watchdogUsec },
    log: silentLogger,
    transport,
    extraChecks: [{ name: 'extra', run: extra }],
  });
  return { supervision, lockListener: () => lockListener };
}

describe('supervision notifications', () => {
  it('sends READY=1 with a status, pings WATCHDOG=1 only after READY, and STOPPING=1 at stop', async () => {
    const t = new RecordingTransport();
    const { supervision: s } = start(t, () => ({ ok: true }));
    expect(s.watchdogPingMs).toBe(20);
    expect(s.notifier).toBe('recording');
    await quietFor(60, 'a watchdog ping (every 20 ms) before READY');
    expect(t.lines).toEqual([]); // no ping before READY: start-up is TimeoutStartSec's business
    const pings = t.next((l) => l === 'WATCHDOG=1', 3);
    s.ready('ready: lock locked');
    expect(t.lines.slice(0, 2)).toEqual(['READY=1', 'STATUS=ready: lock locked']);
    await pings;
    s.stopping();
    const at = t.lines.length;
    expect(t.lines.slice(at - 2)).toEqual(['STOPPING=1', 'STATUS=stopping: relays de-energising']);
    await quietFor(60, 'a watchdog ping (every 20 ms) after STOPPING');
    expect(t.lines.slice(at)).toEqual([]); // no ping after STOPPING
    await s.close();
    expect(t.closed).toBe(true);
  });

  it('withholds WATCHDOG=1 while a check fails, says why in STATUS, and resumes when healthy', async () => {
    const t = new RecordingTransport();
    let healthy = true;
    const { supervision: s } = start(t, () => (healthy ? { ok: true } : { ok: false, detail: 'disk gone' }));
    s.ready('ready');
    await t.next((l) => l === 'WATCHDOG=1', 2);
    const unhealthy = t.next((l) => l.startsWith('STATUS=unhealthy'));
    healthy = false;
    await unhealthy;
    const from = t.lines.length;
    // Several check periods pass while unhealthy …
    await quietFor(100, 'a watchdog ping while a check fails');
    expect(s.lastReport()?.healthy).toBe(false);
    expect(s.lastReport()?.checks.extra).toEqual({ ok: false, detail: 'disk gone' });
    expect(t.lines.slice(from)).not.toContain('WATCHDOG=1');
    expect(t.lines.at(from - 1)).toBe('STATUS=unhealthy: extra: disk gone');
    const back = t.next((l) => l === 'WATCHDOG=1');
    healthy = true;
    await back;
    expect(t.lines).toContain('STATUS=healthy');
    expect(t.lines.indexOf('STATUS=healthy')).toBeGreaterThan(from - 1);
  });

  it('keeps pinging while only storage fails (degraded), says so once, and attaches the write figures', async () => {
    const t = new RecordingTransport();
    let failing = false;
    const healthOf = () => ({
      name: 'counters',
      store: `${dir}/counters.journal`,
      state: failing ? ('failing' as const) : ('ok' as const),
      failures: failing ? 1 : 0,
      refused: 0,
      pending: 0,
      ...(failing
        ? { failingSince: Date.UTC(2025, 0, 1), lastError: { code: 'ENOSPC', message: 'full', at: 1 } }
        : {}),
    });
    supervision = startSupervision({
      stateDir: dir,
      lock: { state: () => 'locked' },
      onLockChange: () => {},
      maxOnMs: 10_000,
      notifyEnv: { NOTIFY_SOCKET: '/run/test/notify', WATCHDOG_USEC: '40000' },
      log: silentLogger,
      transport: t,
      storage: () => ({ stores: [healthOf()], audit: { dropped: 0, total: 0, inFlight: 0 } }),
    });
    supervision.ready('ready');
    await t.next((l) => l === 'WATCHDOG=1', 2);
    const degraded = t.next((l) => l.startsWith('STATUS=degraded'));
    failing = true;
    await degraded;
    const said = t.lines.findIndex((l) => l.startsWith('STATUS=degraded'));
    await t.next((l) => l === 'WATCHDOG=1', 3); // the pings go on
    expect(t.lines.slice(said + 1).filter((l) => l.startsWith('STATUS='))).toEqual([]); // said once
    expect(t.lines[said]).toBe(
      'STATUS=degraded: storage: counters: writes failing (ENOSPC) since 2025-01-01T00:00:00.000Z',
    );
    const report = await supervision.check();
    expect(report).toMatchObject({ healthy: true, degraded: true });
    expect(report.storage?.stores[0]).toMatchObject({
      name: 'counters',
      failures: 1,
      lastError: { code: 'ENOSPC' },
    });
    const back = t.next((l) => l === 'STATUS=healthy');
    failing = false;
    await back;
  });

  it('reports a lock controller stopped by shutdown as unhealthy', async () => {
    const { supervision: s } = start(new RecordingTransport(), () => ({ ok: true }));
    expect((await s.check()).healthy).toBe(true);
    s.stopping();
    const report = await s.check();
    expect(report.checks.lock).toEqual({ ok: false, detail: 'lock controller not running' });
  });

  it('runs without systemd: no transport, no pings, checks still available for /healthz', async () => {
    supervision = startSupervision({
      stateDir: dir,
      lock: { state: () => 'locked' },
      onLockChange: () => {},
      maxOnMs: 10_000,
      notifyEnv: {},
      log: silentLogger,
    });
    expect(supervision.notifier).toBeUndefined();
    expect(supervision.watchdogPingMs).toBeUndefined();
    supervision.ready('ready');
    const report = await supervision.check();
    expect(report.healthy).toBe(true);
    expect(Object.keys(report.checks).sort()).toEqual(['eventLoop', 'lock', 'state']);
  });
});
