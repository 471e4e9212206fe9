import { chmodSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/logger.js';
import {
  createNotifyTransport,
  SocatNotifyTransport,
  SystemdNotifyTransport,
} from '../../src/host/sd-notify.js';
import { startNotifyReceiver } from '../helpers/notify-receiver.js';
import { requireTool } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

/** The two sd_notify helpers on their own: the socat relay and the systemd-notify fallback. */
const dir = mkdtempSync(join(tmpdir(), 'va-notify-t-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('sd_notify transports', () => {
  it('socat: delivers messages in order and comes back after the socket went away', async () => {
    const socat = requireTool('socat', 'apt-get install socat');
    const path = join(dir, 'n1.sock');
    const first = await startNotifyReceiver(path);
    const transport = new SocatNotifyTransport(socat, `UNIX-SENDTO:${path}`, silentLogger);
    transport.send('READY=1\nSTATUS=one\n');
    transport.send('WATCHDOG=1\n');
    await first.waitFor((l) => l === 'WATCHDOG=1');
    expect(first.lines).toEqual(['READY=1', 'STATUS=one', 'WATCHDOG=1']);
    await first.stop(); // socat's UNIX-RECV removes the socket: the next send fails
    transport.send('WATCHDOG=1\n');
    const second = await startNotifyReceiver(path);
    // The helper is restarted at most once a second; keep pinging until one gets through.
    await waitFor(
      () => {
        if (second.lines.length > 0) return true;
        transport.send('WATCHDOG=1\n');
        return false;
      },
      'a ping through the restarted helper',
      { timeoutMs: 15_000, intervalMs: 100 },
    );
    await second.waitFor((l) => l === 'WATCHDOG=1');
    transport.send('STOPPING=1\n');
    await second.waitFor((l) => l === 'STOPPING=1');
    await transport.close();
    await second.stop();
  });

  it('systemd-notify: one process per message, in order, with NOTIFY_SOCKET set for it', async () => {
    const log = join(dir, 'calls.log');
    const fake = join(dir, 'systemd-notify');
    // A stand-in that records its arguments and the socket it was given.
    writeFileSync(fake, `#!/bin/sh\necho "$NOTIFY_SOCKET $*" >> ${log}\n`);
    chmodSync(fake, 0o755);
    const transport = new SystemdNotifyTransport(fake, '/run/test/notify', silentLogger);
    transport.send('READY=1\nSTATUS=ready: lock locked\n');
    transport.send('WATCHDOG=1\n');
    transport.send('STOPPING=1\n');
    await transport.close();
    expect(readFileSync(log, 'utf8')).toBe(
      '/run/test/notify READY=1 STATUS=ready: lock locked\n/run/test/notify WATCHDOG=1\n/run/test/notify STOPPING=1\n',
    );
  });

  it('picks socat when installed, else systemd-notify, else nothing', () => {
    const socat = requireTool('socat', 'apt-get install socat');
    const withSocat = mkdtempSync(join(dir, 'p1-'));
    symlinkSync(socat, join(withSocat, 'socat'));
    const onlyNotify = mkdtempSync(join(dir, 'p2-'));
    writeFileSync(join(onlyNotify, 'systemd-notify'), '#!/bin/sh\n');
    chmodSync(join(onlyNotify, 'systemd-notify'), 0o755);
    const empty = mkdtempSync(join(dir, 'p3-'));
    const notifyEnv = { NOTIFY_SOCKET: '/run/systemd/notify' };
    const pick = (path: string, env: NodeJS.ProcessEnv = notifyEnv) =>
      createNotifyTransport({ notifyEnv: env, log: silentLogger, pathEnv: { PATH: path } })?.kind;
    expect(pick(`${withSocat}:${onlyNotify}`)).toBe('socat');
    expect(pick(onlyNotify)).toBe('systemd-notify');
    expect(pick(empty)).toBeUndefined();
    expect(pick(withSocat, {})).toBeUndefined(); // not run by systemd
    // A socket path socat would misparse goes to systemd-notify.
    expect(pick(`${withSocat}:${onlyNotify}`, { NOTIFY_SOCKET: '/run/odd,name' })).toBe('systemd-notify');
  });
});
