import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { requireTool } from '../helpers/processes.js';

/**
 * test/ensure-tools.sh on a machine without ejabberd: stand-ins for apt-get and systemctl record
 * what the script does, on a PATH that has every other tool; the policy-rc.d it writes goes to a
 * file of the test's (ENSURE_TOOLS_POLICY_RC_D), never the machine's.
 */
const SCRIPT = fileURLToPath(new URL('../ensure-tools.sh', import.meta.url));
const PRESENT = [
  'mosquitto',
  'mosquitto_pub',
  'socat',
  'dbus-daemon',
  'nfc-list',
  'nfc-poll',
  'nfc-mfultralight',
  'bluetoothctl',
  'openssl',
  'chromium',
  'systemd-analyze',
  'systemd-notify',
  'erl',
  'epmd',
];
const UTILITIES = ['bash', 'id', 'sort', 'grep', 'tee', 'chmod', 'mv', 'rm', 'sh'];

describe('test/ensure-tools.sh installs ejabberd without starting it', () => {
  let dir: string;
  let bin: string;
  let policy: string;
  let log: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'va-ensure-tools-'));
    bin = join(dir, 'bin');
    policy = join(dir, 'policy-rc.d');
    log = join(dir, 'calls.log');
    spawnSync('mkdir', [bin]);
    for (const tool of [...PRESENT, ...UTILITIES])
      symlinkSync(requireTool(tool, 'a tool this machine has'), join(bin, tool));
    // apt-get: records its arguments and what policy-rc.d answers for a start, as invoke-rc.d asks.
    writeFileSync(
      join(bin, 'apt-get'),
      `#!/bin/sh\nanswer=none\nif [ -x "${policy}" ]; then "${policy}" ejabberd start; answer=$?; fi\necho "apt-get $* policy=$answer" >> "${log}"\n`,
    );
    writeFileSync(join(bin, 'systemctl'), `#!/bin/sh\necho "systemctl $*" >> "${log}"\n`);
    chmodSync(join(bin, 'apt-get'), 0o755);
    chmodSync(join(bin, 'systemctl'), 0o755);
  });

  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const run = () =>
    spawnSync(join(bin, 'bash'), [SCRIPT], {
      env: { PATH: bin, ENSURE_TOOLS_POLICY_RC_D: policy, HOME: dir },
      encoding: 'utf8',
    });

  it('refuses service starts during the install, removes its policy-rc.d, and disables the boot start', () => {
    if (process.getuid?.() !== 0) throw new Error('this test runs the script as root, as CI does');
    const r = run();
    expect(r.status, r.stderr).toBe(0);
    const calls = readFileSync(log, 'utf8').trim().split('\n');
    expect(calls).toContain('apt-get update -q policy=101');
    expect(calls).toContain('apt-get install -y -q --no-install-recommends ejabberd policy=101');
    expect(calls).toContain('systemctl disable ejabberd.service');
    expect(existsSync(policy)).toBe(false);
  });

  it('puts back a policy-rc.d that was there before', () => {
    writeFileSync(policy, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    const r = run();
    expect(r.status, r.stderr).toBe(0);
    expect(readFileSync(log, 'utf8')).toContain('--no-install-recommends ejabberd policy=101');
    expect(readFileSync(policy, 'utf8')).toBe('#!/bin/sh\nexit 0\n');
  });

  it('does nothing when every tool is there', () => {
    symlinkSync(join(bin, 'sh'), join(bin, 'ejabberdctl'));
    const r = run();
    expect(r.status, r.stderr).toBe(0);
    expect(existsSync(log)).toBe(false);
  });
});
