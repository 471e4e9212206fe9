import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/logger.js';
import {
  type ControlHandler,
  type ControlServer,
  startControlServer,
} from '../../src/host/control-server.js';
import { runCliAsync } from '../helpers/cli-async.js';
import { waitFor } from '../helpers/wait.js';

/**
 * `vehicle-agent status` (the real CLI) against a real control socket served by this test: an
 * agent that is running but busy is never reported as not running (issue 12, finding 5).
 */
describe('vehicle-agent status against a busy control socket', () => {
  let dir: string;
  let server: ControlServer | undefined;
  const held: (() => void)[] = [];
  const idle: Socket[] = [];

  async function serve(maxConnections?: number): Promise<ControlServer> {
    server = await startControlServer(
      join(dir, 'control.sock'),
      new Map<string, ControlHandler>([
        [
          'status',
          () => ({
            vehicleId: 'VA-CLI',
            lock: 'locked',
            readers: {},
            keyring: { operations: 1, credentials: 1, digest: 'ab'.repeat(32) },
            clock: { now: 'now', trust: 'trusted' },
            decisions: { granted: 0, denied: 0 },
          }),
        ],
        ['hold', () => new Promise((resolve) => held.push(() => resolve(null)))],
      ]),
      silentLogger,
      maxConnections === undefined ? {} : { maxConnections },
    );
    return server;
  }

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'va-cli-status-'));
  });

  afterEach(async () => {
    for (const release of held.splice(0)) release();
    for (const s of idle.splice(0)) s.destroy();
    await server?.close();
    server = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  const status = (...extra: string[]) => runCliAsync(['status', '--state-dir', dir, ...extra]);

  it('gets in past 16 idle connections', async () => {
    const s = await serve();
    for (let i = 0; i < 16; i++) {
      const c = connect(s.path);
      c.on('error', () => {});
      idle.push(c);
      await new Promise((r) => c.once('connect', r));
    }
    const r = await status();
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^vehicle VA-CLI: lock LOCKED$/m);
  });

  it('says the agent is running but busy (exit 75) when every connection has a request in flight', async () => {
    const s = await serve(2);
    const inFlight = ['a', 'b', 'c', 'd'].map(() => {
      const c = connect(s.path, () => c.write('{"id":1,"cmd":"hold"}\n'));
      c.on('error', () => {});
      idle.push(c);
      return c;
    });
    await waitFor(() => held.length >= inFlight.length, 'every request in flight', { timeoutMs: 30_000 });
    const r = await status();
    expect(r.code).toBe(75);
    expect(r.stdout).toMatch(/^agent running but busy \[busy\]: all 4 control connections are taken/);
    expect(r.stdout).not.toMatch(/not running/);
    const json = await status('--json');
    expect(json.code).toBe(75);
    expect(JSON.parse(json.stdout)).toMatchObject({ running: true, busy: true, error: { code: 'busy' } });
  });

  it('says not running (exit 3) only without a socket, or with one a crash left behind', async () => {
    const none = await status();
    expect(none.code).toBe(3);
    expect(none.stdout).toMatch(/^agent not running/);
    // A socket file whose owner was killed: nothing listens on it any more.
    const path = join(dir, 'control.sock');
    const owner = spawn(process.execPath, [
      '-e',
      `require('net').createServer().listen(${JSON.stringify(path)}, () => console.log('up'))`,
    ]);
    await new Promise((r) => owner.stdout.once('data', r));
    owner.kill('SIGKILL');
    await new Promise((r) => owner.once('exit', r));
    expect(existsSync(path)).toBe(true);
    const stale = await status();
    expect(stale.code).toBe(3);
    expect(stale.stdout).toMatch(/^agent not running/);
  });
});
