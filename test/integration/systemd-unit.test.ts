import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { requireTool } from '../helpers/processes.js';

/**
 * The shipped unit, checked by systemd's own tools (no running systemd needed): verify is clean,
 * the offline security review finds the hardening in place, and the exposure score is the one
 * the README reports.
 */
const UNIT = fileURLToPath(new URL('../../systemd/vehicle-agent.service', import.meta.url));
const README = fileURLToPath(new URL('../../README.md', import.meta.url));
const POLICY = fileURLToPath(new URL('../../hw/dbus-vehicle-agent-bluez.conf', import.meta.url));

function analyze(args: string[]) {
  const tool = requireTool('systemd-analyze', 'apt-get install systemd');
  return spawnSync(tool, args, { encoding: 'utf8' });
}

function setting(text: string, key: string): string[] {
  return [...text.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((m) => m[1] ?? '');
}

describe('systemd/vehicle-agent.service', () => {
  const text = readFileSync(UNIT, 'utf8');

  it('passes systemd-analyze verify without a single message', () => {
    const r = analyze(['verify', UNIT]);
    expect(`${r.stdout}${r.stderr}`).toBe('');
    expect(r.status).toBe(0);
  });

  it('is a notify service with a watchdog, restarts for ever, and runs as its own user', () => {
    expect(setting(text, 'Type')).toEqual(['notify']);
    expect(setting(text, 'NotifyAccess')).toEqual(['all']);
    expect(setting(text, 'WatchdogSec')).toEqual(['30s']);
    expect(setting(text, 'Restart')).toEqual(['always']);
    expect(setting(text, 'RestartSec')).toEqual(['3s']);
    expect(setting(text, 'StartLimitIntervalSec')).toEqual(['0']);
    expect(setting(text, 'User')).toEqual(['vehicle-agent']);
    expect(setting(text, 'StateDirectory')).toEqual(['vehicle-agent']);
    expect(setting(text, 'ConfigurationDirectory')).toEqual(['vehicle-agent']);
    expect(setting(text, 'RuntimeDirectory')).toEqual(['vehicle-agent']);
    expect(setting(text, 'ExecStart')).toEqual([
      '/usr/bin/node /opt/vehicle-agent/dist/src/cli/main.js start --config /etc/vehicle-agent/config.yaml',
    ]);
    // The D-Bus policy grants BlueZ to the same user the unit runs as.
    expect(readFileSync(POLICY, 'utf8')).toContain('<policy user="vehicle-agent">');
  });

  it('opens only the serial ports and GPIO chips the drivers need', () => {
    expect(setting(text, 'DevicePolicy')).toEqual(['closed']);
    expect(setting(text, 'DeviceAllow')).toEqual(
      expect.arrayContaining(['char-ttyAMA rw', 'char-ttyS rw', 'char-ttyUSB rw', 'char-gpiochip rw']),
    );
    expect(setting(text, 'PrivateDevices')).toEqual([]);
    expect(setting(text, 'RestrictAddressFamilies')).toEqual(['AF_UNIX AF_INET AF_INET6']);
  });

  it('has the hardening the offline security review looks for', () => {
    const r = analyze(['security', '--offline=true', '--json=short', UNIT]);
    expect(r.status, r.stderr).toBe(0);
    const checks = new Map(
      (JSON.parse(r.stdout) as { json_field: string; set: boolean }[]).map((c) => [c.json_field, c.set]),
    );
    for (const field of [
      'NoNewPrivileges',
      'ProtectSystem',
      'ProtectHome',
      'PrivateTmp',
      'ProtectKernelTunables',
      'ProtectKernelModules',
      'ProtectKernelLogs',
      'ProtectControlGroups',
      'ProtectClock',
      'ProtectHostname',
      'ProtectProc',
      'RestrictNamespaces_user',
      'RestrictSUIDSGID',
      'RestrictRealtime',
      'LockPersonality',
      'UserOrDynamicUser',
      'AmbientCapabilities',
      'CapabilityBoundingSet_CAP_SYS_ADMIN',
      'CapabilityBoundingSet_CAP_NET_ADMIN',
      'RestrictAddressFamilies_AF_PACKET',
      'RestrictAddressFamilies_AF_NETLINK',
      'RestrictAddressFamilies_OTHER',
      'SystemCallFilter_privileged',
      'SystemCallFilter_mount',
      'SystemCallArchitectures',
      'UMask',
    ]) {
      expect(checks.get(field), field).toBe(true);
    }
  });

  it('scores the exposure the README reports', () => {
    const r = analyze(['security', '--offline=true', UNIT]);
    const measured = /Overall exposure level for vehicle-agent\.service: (\d+\.\d)/.exec(r.stdout)?.[1];
    expect(measured, r.stdout.slice(-400)).toBeDefined();
    expect(Number(measured)).toBeLessThanOrEqual(2);
    const reported = /exposure level \*\*(\d+\.\d)\*\*/.exec(readFileSync(README, 'utf8'))?.[1];
    expect(reported).toBe(measured);
  });
});
