import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, runCli, runCliJson, startAgentProcess } from '../helpers/agent-process.js';

/** The real agent process on simulated hardware, driven through the real CLI and control socket. */
describe('agent on simulated hardware', () => {
  let dir: string;
  let agent: AgentProcess;
  const sd = () => ['--state-dir', dir];
  // Generous limits so the denial cases below do not trip the rate limiter (tested separately).
  const env = { VEHICLE_AGENT_POLICY__MAX_DENIALS: '1000' };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'va-agent-'));
    agent = await startAgentProcess(sd(), env);
  });

  afterAll(async () => {
    if (agent) await agent.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('provisions a demo vehicle with private state', () => {
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    for (const f of ['vehicle.json', 'vehicle-key.pem', 'demo/owner.pem', 'demo/driver.pem']) {
      expect(statSync(join(dir, f)).mode & 0o777, f).toBe(0o600);
    }
    const logged = JSON.stringify(agent.logs);
    expect(logged).toContain('sim present driver');
    expect(logged).not.toContain('PRIVATE KEY');
  });

  it('grants an enrolled key and pulses the unlock relay', () => {
    const r = runCliJson<{ granted: boolean; lock: string; role: string }>([
      'sim',
      'present',
      'driver',
      ...sd(),
    ]);
    expect(r.code).toBe(0);
    expect(r.value).toMatchObject({ granted: true, role: 'driver' });
    expect(['unlocking', 'unlocked']).toContain(r.value.lock);
    const status = runCliJson<{ relay: { timeline: { channel: string; energised: boolean }[] } }>([
      'status',
      ...sd(),
    ]);
    expect(status.value.relay.timeline.some((t) => t.channel === 'unlock' && t.energised)).toBe(true);
  });

  it.each([
    [['stranger'], 'unknown_credential'],
    [['revoked'], 'revoked'],
    [['expired-guest'], 'expired'],
    [['future-guest'], 'not_yet_valid'],
    [['driver', '--tamper'], 'bad_proof'],
    [['driver', '--delay', '5000'], 'timeout'],
    [['driver', '--passive'], 'intent_required'],
    [['--uid', '04DEADBEEF0001'], 'insecure_uid_disabled'],
    [['--uid', '04AAAAAAAAAAAA'], 'unknown_credential'],
  ])('denies sim present %j with %s', (args, code) => {
    const r = runCliJson<{ granted: boolean; code: string }>(['sim', 'present', ...args, ...sd()]);
    expect(r.code).toBe(2);
    expect(r.value).toMatchObject({ granted: false, code });
  });

  it('grants a passive key without intent, a guest in its window and a tag marked insecure', () => {
    expect(runCliJson(['sim', 'present', 'passive', '--passive', ...sd()]).value).toMatchObject({
      granted: true,
    });
    expect(runCliJson(['sim', 'present', 'guest', ...sd()]).value).toMatchObject({ granted: true });
    expect(runCliJson(['sim', 'present', '--uid', '04A2B3C4D5E6F7', ...sd()]).value).toMatchObject({
      granted: true,
    });
  });

  it('enrolls and revokes a new key through the running agent with the owner key', () => {
    const prefix = join(dir, 'alice');
    const kg = runCliJson<{ id: string }>(['keygen', '--kind', 'phone', '--out', prefix]);
    expect(kg.code).toBe(0);
    expect(statSync(`${prefix}.pem`).mode & 0o777).toBe(0o600);
    const owner = join(dir, 'demo', 'owner.pem');
    expect(runCliJson(['sim', 'present', '--key', `${prefix}.pem`, ...sd()]).value).toMatchObject({
      code: 'unknown_credential',
    });
    const g = runCli([
      'keys',
      'grant',
      '--key',
      owner,
      '--kind',
      'phone',
      '--public',
      `${prefix}.pub.pem`,
      '--role',
      'driver',
      '--name',
      'alice',
      ...sd(),
    ]);
    expect(g.code, g.stderr).toBe(0);
    expect(runCliJson(['sim', 'present', '--key', `${prefix}.pem`, ...sd()]).value).toMatchObject({
      granted: true,
    });
    // a driver key may not grant
    const bob = join(dir, 'bob');
    runCli(['keygen', '--kind', 'phone', '--out', bob]);
    const refused = runCli([
      'keys',
      'grant',
      '--key',
      join(dir, 'demo', 'driver.pem'),
      '--kind',
      'phone',
      '--public',
      `${bob}.pub.pem`,
      '--role',
      'owner',
      ...sd(),
    ]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/op_(signer_not_allowed|unknown_signer)/);
    const rv = runCli(['keys', 'revoke', '--key', owner, '--id', kg.value.id, ...sd()]);
    expect(rv.code, rv.stderr).toBe(0);
    expect(runCliJson(['sim', 'present', '--key', `${prefix}.pem`, ...sd()]).value).toMatchObject({
      code: 'revoked',
    });
    const list = runCliJson<{ id: string; revoked: boolean }[]>(['keys', 'list', ...sd()]);
    expect(list.value.find((c) => c.id === kg.value.id)?.revoked).toBe(true);
  });

  it('answers garbage on the control socket with a coded error and keeps running', async () => {
    const socketPath = join(dir, 'control.sock');
    expect(statSync(socketPath).mode & 0o777).toBe(0o600);
    const answers = await new Promise<string>((resolve, reject) => {
      const s = connect(socketPath);
      let got = '';
      s.setEncoding('utf8');
      s.on('data', (d: string) => {
        got += d;
        if (got.split('\n').length > 4) {
          s.end();
          resolve(got);
        }
      });
      s.on('error', reject);
      s.write('garbage\n[1,2]\n{"cmd":"no.such"}\n{"id":7,"cmd":"sim.answer","args":{"challengeId":1}}\n');
    });
    const codes = answers
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { error: { code: string } }).error.code);
    expect(codes).toEqual(['control_bad_request', 'control_bad_request', 'unknown_command', 'bad_arguments']);
    expect(runCliJson(['status', ...sd()]).code).toBe(0);
  });

  it('keeps a verifiable audit log with reasons and without raw UIDs or secrets', () => {
    const v = runCli(['audit', 'verify', ...sd()]);
    expect(v.code, v.stdout).toBe(0);
    const text = readdirSync(join(dir, 'audit'))
      .map((f) => readFileSync(join(dir, 'audit', f), 'utf8'))
      .join('');
    expect(text).toContain('"code":"revoked"');
    expect(text).toContain('"code":"insecure_uid_disabled"');
    expect(text).not.toMatch(/04A2B3C4D5E6F7|04DEADBEEF0001/i);
    expect(text).not.toContain('PRIVATE');
  });

  it('stops cleanly on SIGTERM with the relays released', async () => {
    const code = await agent.stop('SIGTERM');
    expect(code).toBe(0);
    expect(agent.logs.some((r) => r.msg === 'stopped' && r.relays === 'de-energised')).toBe(true);
    expect(runCli(['status', ...sd()]).code).toBe(3);
  });
});

describe('agent start-up failures', () => {
  it('refuses a bad config before touching anything, naming file, field and what is allowed', () => {
    const dir = mkdtempSync(join(tmpdir(), 'va-badcfg-'));
    const file = join(dir, 'config.yaml');
    writeFileSync(file, 'lock:\n  wiring: sideways\n');
    const r = runCli(['start', '--config', file, '--state-dir', join(dir, 'state')]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(`${file}: lock.wiring is "sideways"; allowed: one of pulse, hold`);
    expect(() => statSync(join(dir, 'state'))).toThrow();
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses to start on a corrupt keyring, naming the file, and leaves it as it was', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'va-corrupt-'));
    const first = await startAgentProcess(['--state-dir', dir]);
    expect(await first.stop()).toBe(0);
    const keyring = join(dir, 'keyring.json');
    writeFileSync(keyring, '{"format":1,"ops":[{"jws":');
    const r = runCli(['start', '--state-dir', dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('[state_corrupt]');
    expect(r.stderr).toContain(keyring);
    expect(readFileSync(keyring, 'utf8')).toBe('{"format":1,"ops":[{"jws":');
    rmSync(dir, { recursive: true, force: true });
  });

  it('init refuses to overwrite a provisioned vehicle', () => {
    const dir = mkdtempSync(join(tmpdir(), 'va-init-'));
    const owner = join(dir, 'owner');
    expect(runCli(['keygen', '--out', owner, '--alg', 'ed25519']).code).toBe(0);
    const a = runCliJson<{ vehicleId: string }>([
      'init',
      '--owner-key',
      `${owner}.pub.pem`,
      '--vehicle-id',
      'TEST-1',
      '--state-dir',
      join(dir, 's'),
    ]);
    expect(a.code).toBe(0);
    expect(a.value.vehicleId).toBe('TEST-1');
    const b = runCli(['init', '--owner-key', `${owner}.pub.pem`, '--state-dir', join(dir, 's')]);
    expect(b.code).toBe(1);
    expect(b.stderr).toContain('[already_provisioned]');
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('rate limiting through the real agent', () => {
  it('locks out the key whose proofs fail, and no other; unknown keys never lock anything out', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'va-rate-'));
    const agent = await startAgentProcess(['--state-dir', dir], { VEHICLE_AGENT_POLICY__MAX_DENIALS: '3' });
    try {
      const present = (...args: string[]) =>
        runCliJson(['sim', 'present', ...args, '--state-dir', dir]).value;
      for (let i = 0; i < 10; i++) expect(present('stranger')).toMatchObject({ code: 'unknown_credential' });
      expect(present('driver')).toMatchObject({ granted: true });
      for (let i = 0; i < 3; i++) expect(present('driver', '--tamper')).toMatchObject({ code: 'bad_proof' });
      expect(present('driver')).toMatchObject({ code: 'rate_limited' });
      expect(present('guest')).toMatchObject({ granted: true });
      const status = runCliJson<{ rateLimits: { lockedOutCredentials: number } }>([
        'status',
        '--state-dir',
        dir,
      ]);
      expect(status.value.rateLimits.lockedOutCredentials).toBe(1);
    } finally {
      await agent.stop();
    }
    const text = readdirSync(join(dir, 'audit'))
      .map((f) => readFileSync(join(dir, 'audit', f), 'utf8'))
      .join('');
    expect(text).toMatch(/"type":"rate_limited"[^\n]*"scope":"credential"[^\n]*"credentialId":"phone:/);
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('trusted time through the real agent', () => {
  it('keeps an expired guest expired when the system clock is behind the last trusted time', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'va-clock-'));
    expect(runCliJson(['init', '--demo', '--state-dir', dir]).code).toBe(0);
    const first = await startAgentProcess(['--state-dir', dir]);
    expect(runCliJson(['sim', 'present', 'guest', '--state-dir', dir]).value).toMatchObject({
      granted: true,
    });
    expect(await first.stop()).toBe(0);
    // The agent last trusted a time 30 days ahead: as if the system clock had since been set back
    // a month. The demo guest's 7-day window is over by the trusted time.
    writeFileSync(join(dir, 'clock.json'), JSON.stringify({ floor: Date.now() + 30 * 86_400_000 }));
    const second = await startAgentProcess(['--state-dir', dir]);
    try {
      expect(runCliJson(['sim', 'present', 'guest', '--state-dir', dir]).value).toMatchObject({
        granted: false,
        code: 'expired',
      });
      expect(runCliJson(['sim', 'present', 'driver', '--state-dir', dir]).value).toMatchObject({
        granted: true,
      });
      const status = runCliJson<{ clock: { trust: string } }>(['status', '--state-dir', dir]);
      expect(status.value.clock.trust).toBe('behind');
    } finally {
      await second.stop();
    }
    rmSync(dir, { recursive: true, force: true });
  });
});
