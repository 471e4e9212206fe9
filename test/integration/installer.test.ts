import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireTool, stopProcess } from '../helpers/processes.js';

/**
 * systemd/install.sh in a throwaway root (this machine runs no systemd): the user and groups,
 * directories and modes, the unit, D-Bus policy, udev rules, starting config, the enabled
 * service; installing twice gives the same tree; uninstall keeps exactly config, state and the
 * user; --purge leaves the root as it was. The installed copy of the agent runs on its own
 * production dependencies.
 */
const PROJECT = fileURLToPath(new URL('../..', import.meta.url));
const INSTALL = join(PROJECT, 'systemd', 'install.sh');

type Tree = Map<string, string>;

/** Every path under root with type, mode, owner and content hash (or link target). */
function snapshot(root: string): Tree {
  const tree: Tree = new Map();
  const walk = (dir: string) => {
    for (const name of readdirSync(dir).sort()) {
      const path = join(dir, name);
      const rel = relative(root, path);
      // shadow's tools keep a backup of each file they edit (passwd-, group-, …), as on any system.
      if (/^etc\/(passwd|group|shadow|gshadow)-$/.test(rel)) continue;
      const st = lstatSync(path);
      const meta = `${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid}`;
      if (st.isSymbolicLink()) tree.set(rel, `link ${readlinkSync(path)}`);
      else if (st.isDirectory()) {
        tree.set(rel, `dir ${meta}`);
        walk(path);
      } else tree.set(rel, `file ${meta} ${createHash('sha256').update(readFileSync(path)).digest('hex')}`);
    }
  };
  walk(root);
  return tree;
}

function diff(a: Tree, b: Tree): string[] {
  const out: string[] = [];
  for (const [k, v] of b) if (a.get(k) !== v) out.push(`${a.has(k) ? '~' : '+'} ${k} ${v}`);
  for (const k of a.keys()) if (!b.has(k)) out.push(`- ${k}`);
  return out.sort();
}

function run(args: string[]): { code: number | null; out: string } {
  const r = spawnSync('bash', [INSTALL, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

/** A minimal Debian-like root: the account files and the directories every system has. */
function makeRoot(): string {
  const root = mkdtempSync(join(tmpdir(), 'va-root-'));
  for (const d of [
    'etc/systemd/system',
    'etc/dbus-1/system.d',
    'etc/udev/rules.d',
    'usr/local/bin',
    'opt',
    'var/lib',
    'run',
  ]) {
    mkdirSync(join(root, d), { recursive: true });
  }
  writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/bash\n');
  writeFileSync(join(root, 'etc/group'), 'root:x:0:\ndialout:x:20:\n');
  writeFileSync(join(root, 'etc/shadow'), 'root:*:19000:0:99999:7:::\n', { mode: 0o640 });
  writeFileSync(join(root, 'etc/gshadow'), 'root:*::\ndialout:*::\n', { mode: 0o640 });
  return root;
}

describe('installer in a throwaway root', () => {
  let root: string;
  let before: Tree;
  let installed: Tree;
  const at = (p: string) => join(root, p);

  beforeAll(() => {
    requireTool('useradd', 'apt-get install passwd');
    requireTool('systemctl', 'apt-get install systemd');
    root = makeRoot();
    before = snapshot(root);
    const first = run(['--root', root]);
    expect(first.code, first.out).toBe(0);
    installed = snapshot(root);
  });

  afterAll(() => {
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it('creates a system user with no login, in dialout and gpio (created, as plain Debian lacks it)', () => {
    const passwd = readFileSync(at('etc/passwd'), 'utf8');
    expect(passwd).toMatch(
      /^vehicle-agent:x:(\d+):(\d+):vehicle-agent service:\/var\/lib\/vehicle-agent:\/usr\/sbin\/nologin$/m,
    );
    const uid = Number(/^vehicle-agent:x:(\d+):/m.exec(passwd)?.[1]);
    expect(uid).toBeLessThan(1000);
    const group = readFileSync(at('etc/group'), 'utf8');
    expect(group).toMatch(/^dialout:x:20:vehicle-agent$/m);
    expect(group).toMatch(/^gpio:x:\d+:vehicle-agent$/m);
    expect(group).toMatch(/^vehicle-agent:x:\d+:$/m);
    expect(group).not.toMatch(/^bluetooth:/m); // Bluetooth goes through the D-Bus policy instead
  });

  it('installs unit, policy, rules, config and app with the right owners and modes, and enables it', () => {
    const gid = Number(/^vehicle-agent:x:(\d+):/m.exec(readFileSync(at('etc/group'), 'utf8'))?.[1]);
    const uid = Number(/^vehicle-agent:x:(\d+):/m.exec(readFileSync(at('etc/passwd'), 'utf8'))?.[1]);
    const meta = (p: string) => installed.get(p)?.split(' ').slice(0, 3).join(' ');
    expect(meta('etc/vehicle-agent')).toBe(`dir 750 0:${gid}`);
    expect(meta('etc/vehicle-agent/config.yaml')).toBe(`file 640 0:${gid}`);
    expect(meta('var/lib/vehicle-agent')).toBe(`dir 700 ${uid}:${gid}`);
    expect(meta('etc/systemd/system/vehicle-agent.service')).toBe('file 644 0:0');
    expect(meta('etc/dbus-1/system.d/vehicle-agent-bluez.conf')).toBe('file 644 0:0');
    expect(meta('etc/udev/rules.d/99-vehicle-agent-pn532.rules')).toBe('file 644 0:0');
    expect(meta('etc/udev/rules.d/99-vehicle-agent-gpio.rules')).toBe('file 644 0:0');
    expect(meta('usr/local/bin/vehicle-agent')).toBe('file 755 0:0');
    expect(meta('opt/vehicle-agent/dist/src/cli/main.js')).toBe('file 755 0:0');
    expect(meta('opt/vehicle-agent/dist/src/app/start.js')).toBe('file 644 0:0');
    expect(installed.get('etc/systemd/system/multi-user.target.wants/vehicle-agent.service')).toBe(
      'link /etc/systemd/system/vehicle-agent.service',
    );
    expect(readFileSync(at('etc/systemd/system/vehicle-agent.service'), 'utf8')).toBe(
      readFileSync(join(PROJECT, 'systemd/vehicle-agent.service'), 'utf8'),
    );
    expect(readFileSync(at('etc/vehicle-agent/config.yaml'), 'utf8')).toBe(
      readFileSync(join(PROJECT, 'systemd/config.yaml'), 'utf8'),
    );
    // Only production dependencies reach /opt.
    const modules = readdirSync(at('opt/vehicle-agent/node_modules'));
    expect(modules).toEqual(expect.arrayContaining(['serialport', 'node-ble', 'mqtt', 'pino', 'yaml']));
    for (const dev of ['typescript', 'vitest', 'playwright-core', '@biomejs'])
      expect(modules).not.toContain(dev);
    expect(installed.has('opt/vehicle-agent/dist/bench')).toBe(false);
  });

  it('installs a unit that systemd-analyze verifies cleanly, and a config the agent accepts', () => {
    requireTool('systemd-analyze', 'apt-get install systemd');
    const verify = spawnSync('systemd-analyze', ['verify', at('etc/systemd/system/vehicle-agent.service')], {
      encoding: 'utf8',
    });
    expect(`${verify.stdout}${verify.stderr}`).toBe('');
    expect(verify.status).toBe(0);
    const check = spawnSync(
      process.execPath,
      [
        at('opt/vehicle-agent/dist/src/cli/main.js'),
        'config',
        'check',
        '--config',
        at('etc/vehicle-agent/config.yaml'),
      ],
      { encoding: 'utf8' },
    );
    expect(check.status, check.stderr).toBe(0);
    expect(JSON.parse(check.stdout)).toMatchObject({
      stateDir: '/var/lib/vehicle-agent',
      socketPath: '/run/vehicle-agent/control.sock',
      config: {
        relay: { driver: 'gpio' },
        nfc: { driver: 'pn532' },
        ble: { driver: 'bluez' },
        statusPage: { enabled: true },
      },
    });
  });

  it('runs the installed copy on its own dependencies (sim mode, cloud link loaded)', async () => {
    const state = mkdtempSync(join(tmpdir(), 'va-installed-'));
    const child = spawn(
      process.execPath,
      [at('opt/vehicle-agent/dist/src/cli/main.js'), 'start', '--state-dir', state],
      {
        cwd: state,
        env: {
          ...process.env,
          VEHICLE_AGENT_LOG__FORMAT: 'json',
          VEHICLE_AGENT_CLOUD__ENABLED: 'true',
          VEHICLE_AGENT_CLOUD__URL: 'mqtt://127.0.0.1:1',
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let out = '';
    child.stderr?.setEncoding('utf8').on('data', (c: string) => {
      out += c;
    });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no ready line: ${out}`)), 20_000);
        child.stdout?.setEncoding('utf8').on('data', (c: string) => {
          out += c;
          if (out.includes('"msg":"ready"')) {
            clearTimeout(timer);
            resolve();
          }
        });
        child.once('exit', (code) => reject(new Error(`exited ${code}: ${out}`)));
      });
      expect(out).not.toMatch(/Cannot find (module|package)/);
    } finally {
      await stopProcess(child, 'SIGTERM', 10_000);
      rmSync(state, { recursive: true, force: true });
    }
    expect({ code: child.exitCode, signal: child.signalCode, tail: out.slice(-600) }).toMatchObject({
      code: 0,
    });
  });

  it('gives the same tree when run again, and keeps an edited config and PN532 rule', () => {
    const again = run(['--root', root]);
    expect(again.code, again.out).toBe(0);
    expect(diff(installed, snapshot(root))).toEqual([]);
    writeFileSync(at('etc/vehicle-agent/config.yaml'), 'lock:\n  wiring: hold\n');
    writeFileSync(
      at('etc/udev/rules.d/99-vehicle-agent-pn532.rules'),
      'KERNEL=="ttyUSB0", SYMLINK+="pn532"\n',
    );
    expect(run(['--root', root]).code).toBe(0);
    expect(readFileSync(at('etc/vehicle-agent/config.yaml'), 'utf8')).toBe('lock:\n  wiring: hold\n');
    expect(readFileSync(at('etc/udev/rules.d/99-vehicle-agent-pn532.rules'), 'utf8')).toMatch(/ttyUSB0/);
  });

  it('uninstall keeps exactly the config, the state and the user', () => {
    writeFileSync(at('var/lib/vehicle-agent/vehicle.json'), '{}\n');
    const r = run(['--root', root, '--uninstall']);
    expect(r.code, r.out).toBe(0);
    const left = diff(before, snapshot(root)).map((line) => line.split(' ').slice(0, 2).join(' '));
    expect(left).toEqual([
      '+ etc/vehicle-agent',
      '+ etc/vehicle-agent/.installed-groups',
      '+ etc/vehicle-agent/config.yaml',
      '+ var/lib/vehicle-agent',
      '+ var/lib/vehicle-agent/vehicle.json',
      '~ etc/group',
      '~ etc/gshadow',
      '~ etc/passwd',
      '~ etc/shadow',
    ]);
    expect(readFileSync(at('etc/passwd'), 'utf8')).toMatch(/^vehicle-agent:/m);
    // Uninstalling twice is fine too.
    expect(run(['--root', root, '--uninstall']).code).toBe(0);
  });

  it('reinstalls over kept state, and --purge leaves the root exactly as it was', () => {
    expect(run(['--root', root]).code).toBe(0);
    expect(readFileSync(at('var/lib/vehicle-agent/vehicle.json'), 'utf8')).toBe('{}\n');
    const r = run(['--root', root, '--uninstall', '--purge']);
    expect(r.code, r.out).toBe(0);
    expect(diff(before, snapshot(root))).toEqual([]);
  });

  it('refuses bad arguments and a node under a home directory', () => {
    expect(run(['--bogus']).code).toBe(1);
    expect(run(['--purge']).out).toMatch(/--purge goes with --uninstall/);
    const home = run(['--root', root, '--node', '/home/pi/.nvm/versions/node/v20/bin/node']);
    expect(home.code).toBe(1);
    expect(home.out).toMatch(/ProtectHome/);
    expect(diff(before, snapshot(root))).toEqual([]);
  });
});
