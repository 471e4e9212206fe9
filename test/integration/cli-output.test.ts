import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, runCli, startAgentProcess } from '../helpers/agent-process.js';

/** What the command prints, as a newcomer meets it: pipes, files named on the line, JSON. */
const dir = mkdtempSync(join(tmpdir(), 'va-cli-output-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const stateDir = join(dir, 'state');

describe('CLI output', () => {
  it('ends quietly when its reader has gone (`config example | head -0`)', async () => {
    const child = spawn(process.execPath, [CLI, 'config', 'example'], { stdio: ['ignore', 'pipe', 'pipe'] });
    // The reading end is closed before the command writes a byte: every write meets EPIPE.
    child.stdout.destroy();
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
    });
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    expect(stderr).toBe('');
    expect(code).toBe(0);
  });

  it('checks the config file named on the line, as with --config', () => {
    const file = join(dir, 'agent.yaml');
    writeFileSync(file, 'lock:\n  pulseMs: 450\n');
    const named = runCli(['config', 'check', file]);
    expect(named.code, named.stderr).toBe(0);
    expect(JSON.parse(named.stdout)).toMatchObject({ file, config: { lock: { pulseMs: 450 } } });
    expect(JSON.parse(runCli(['config', 'check', '--config', file]).stdout)).toEqual(
      JSON.parse(named.stdout),
    );

    writeFileSync(join(dir, 'bad.yaml'), 'lock:\n  wiring: sideways\n');
    const bad = runCli(['config', 'check', join(dir, 'bad.yaml')]);
    expect(bad.code).toBe(78);
    expect(bad.stderr).toContain('lock.wiring');

    const two = runCli(['config', 'check', file, '--config', join(dir, 'bad.yaml')]);
    expect(two.code).toBe(64);
    expect(two.stderr).toContain('[bad_arguments]');
  });

  it('tails the audit log as lines for people and as one JSON array with --json', async () => {
    const agent = await startAgentProcess(['--state-dir', stateDir], {
      VEHICLE_AGENT_NFC__ENABLED: 'false',
      VEHICLE_AGENT_BLE__ENABLED: 'false',
    });
    try {
      expect(runCli(['sim', 'present', 'driver', '--state-dir', stateDir]).code).toBe(0);
      expect(runCli(['sim', 'present', 'stranger', '--state-dir', stateDir]).code).toBe(2);
    } finally {
      expect(await agent.stop()).toBe(0);
    }
    const json = runCli(['audit', 'tail', '-n', '5', '--json', '--state-dir', stateDir]);
    expect(json.code, json.stderr).toBe(0);
    const records = JSON.parse(json.stdout) as { seq: number; type: string }[];
    expect(records).toHaveLength(5);
    expect(records.map((r) => r.type)).toContain('access');
    const plain = runCli(['audit', 'tail', '-n', '5', '--state-dir', stateDir]);
    expect(plain.code, plain.stderr).toBe(0);
    const lines = plain.stdout.split('\n').filter((l) => l !== '');
    expect(lines).toHaveLength(records.length);
    lines.forEach((line, i) => {
      expect(line.startsWith(`#${records[i]?.seq}  `)).toBe(true);
      expect(line).toContain(`  ${records[i]?.type}`);
      expect(() => JSON.parse(line)).toThrow();
    });
  });
});

describe('keys revoke and grant say what happened', () => {
  const kdir = mkdtempSync(join(tmpdir(), 'va-cli-keys-'));
  afterAll(() => rmSync(kdir, { recursive: true, force: true }));
  const sd = ['--state-dir', join(kdir, 'state')];
  const owner = join(kdir, 'state', 'demo', 'owner.pem');

  it('refuses an id that is not a credential id, and stores nothing', () => {
    expect(runCli(['init', '--demo', ...sd]).code).toBe(0);
    const before = runCli(['keys', 'list', '--json', ...sd]).stdout;
    for (const id of ['garbage', 'phone:...', 'phone:short', `nokind:${'A'.repeat(22)}`]) {
      const r = runCli(['keys', 'revoke', '--key', owner, '--id', id, ...sd]);
      expect(r.code, id).toBe(64);
      expect(r.stderr).toContain('[bad_arguments]');
      expect(r.stderr).toContain('is not a credential id');
      const signed = runCli(['sign', 'revoke', '--key', owner, '--vehicle', 'VIN-X', '--id', id]);
      expect(signed.code, id).toBe(64);
    }
    expect(runCli(['keys', 'list', '--json', ...sd]).stdout).toBe(before);
  });

  it('revokes once; revoking again changes nothing and says so; granting it again says revocation is final', () => {
    const key = join(kdir, 'carol');
    const made = runCli(['keygen', '--kind', 'phone', '--out', key, '--json']);
    expect(made.code, made.stderr).toBe(0);
    const { id } = JSON.parse(made.stdout) as { id: string };
    const grantArgs = [
      'keys',
      'grant',
      '--key',
      owner,
      '--kind',
      'phone',
      '--public',
      `${key}.pub.pem`,
      '--role',
      'driver',
      ...sd,
    ];
    expect(runCli(grantArgs).code).toBe(0);
    const first = runCli(['keys', 'revoke', '--key', owner, '--id', id, ...sd]);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toContain(`revoked ${id}`);
    const opsAfterFirst = runCli(['keys', 'list', '--json', ...sd]).stdout;
    const again = runCli(['keys', 'revoke', '--key', owner, '--id', id, ...sd]);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('already revoked; nothing changed');
    expect(runCli(['keys', 'list', '--json', ...sd]).stdout).toBe(opsAfterFirst);
    const regrant = runCli(grantArgs);
    expect(regrant.code).toBe(1);
    expect(regrant.stderr).toContain('[revoked]');
    expect(regrant.stderr).toContain('a revocation is final');
    const listed = JSON.parse(runCli(['keys', 'list', '--json', ...sd]).stdout) as {
      id: string;
      revoked: boolean;
    }[];
    expect(listed.find((c) => c.id === id)?.revoked).toBe(true);
  });
});
