import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  findExecutable,
  formatNotification,
  notifySocketFrom,
  socatAddressFor,
  takeNotifyEnvironment,
  watchdogPingIntervalMs,
} from '../../../src/host/sd-notify.js';

describe('sd_notify environment', () => {
  it.each([
    [{ NOTIFY_SOCKET: '/run/systemd/notify' }, '/run/systemd/notify'],
    [{ NOTIFY_SOCKET: '@/org/freedesktop/systemd1/notify/123' }, '@/org/freedesktop/systemd1/notify/123'],
    [{ NOTIFY_SOCKET: 'relative/notify' }, undefined],
    [{ NOTIFY_SOCKET: '@' }, undefined],
    [{ NOTIFY_SOCKET: '' }, undefined],
    [{}, undefined],
  ])('NOTIFY_SOCKET %j → %s', (env, expected) => {
    expect(notifySocketFrom(env)).toBe(expected);
  });

  it.each([
    [{ WATCHDOG_USEC: '30000000' }, 15_000],
    [{ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '4242' }, 15_000],
    [{ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '4243' }, undefined],
    [{ WATCHDOG_USEC: '30000000', WATCHDOG_PID: 'abc' }, undefined],
    [{ WATCHDOG_USEC: '1000' }, 1],
    [{ WATCHDOG_USEC: '0' }, undefined],
    [{ WATCHDOG_USEC: '-5' }, undefined],
    [{ WATCHDOG_USEC: '3e7' }, undefined],
    [{}, undefined],
  ])('WATCHDOG %j for pid 4242 → ping every %s ms (half the timeout)', (env, expected) => {
    expect(watchdogPingIntervalMs(env, 4242)).toBe(expected);
  });

  it('takes the notify variables out of the environment so children cannot notify for the unit', () => {
    const env: NodeJS.ProcessEnv = {
      NOTIFY_SOCKET: '/run/systemd/notify',
      WATCHDOG_USEC: '30000000',
      WATCHDOG_PID: '7',
      PATH: '/usr/bin',
    };
    expect(takeNotifyEnvironment(env)).toEqual({
      NOTIFY_SOCKET: '/run/systemd/notify',
      WATCHDOG_USEC: '30000000',
      WATCHDOG_PID: '7',
    });
    expect(env).toEqual({ PATH: '/usr/bin' });
    expect(takeNotifyEnvironment(env)).toEqual({});
  });
});

describe('notification messages', () => {
  it('joins assignments with newlines and ends with one', () => {
    expect(
      formatNotification([
        ['READY', '1'],
        ['STATUS', 'ready: lock locked'],
      ]),
    ).toBe('READY=1\nSTATUS=ready: lock locked\n');
  });

  it('keeps a value on one line, so a status text cannot inject READY or STOPPING', () => {
    expect(formatNotification([['STATUS', 'reader down\nREADY=1\r\n\0x']])).toBe(
      'STATUS=reader down READY=1 x\n',
    );
  });

  it('caps long values and refuses bad variable names', () => {
    expect(formatNotification([['STATUS', 'x'.repeat(2000)]]).length).toBe('STATUS='.length + 512 + 1);
    expect(() => formatNotification([['ready', '1']])).toThrow(/bad notification variable/);
    expect(() => formatNotification([['READY=1\nSTOPPING', '1']])).toThrow(/bad notification variable/);
  });

  it('addresses path and abstract sockets for socat, and refuses what socat would misparse', () => {
    expect(socatAddressFor('/run/systemd/notify')).toBe('UNIX-SENDTO:/run/systemd/notify');
    expect(socatAddressFor('@/org/freedesktop/systemd1/notify/9')).toBe(
      'ABSTRACT-SENDTO:/org/freedesktop/systemd1/notify/9',
    );
    expect(socatAddressFor('/tmp/a,b')).toBeUndefined();
    expect(socatAddressFor('/tmp/a:b')).toBeUndefined();
    expect(socatAddressFor('/tmp/a b')).toBeUndefined();
  });
});

describe('findExecutable', () => {
  const dir = mkdtempSync(join(tmpdir(), 'va-exe-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('finds an executable on PATH and skips files that are not executable', () => {
    writeFileSync(join(dir, 'tool'), '#!/bin/sh\n');
    writeFileSync(join(dir, 'plain'), 'x');
    chmodSync(join(dir, 'tool'), 0o755);
    chmodSync(join(dir, 'plain'), 0o644);
    const env = { PATH: `/nonexistent:${dir}` };
    expect(findExecutable('tool', env)).toBe(join(dir, 'tool'));
    expect(findExecutable('plain', env)).toBeUndefined();
    expect(findExecutable('missing', env)).toBeUndefined();
    expect(findExecutable(join(dir, 'tool'), {})).toBe(join(dir, 'tool'));
  });
});
