import { createPrivateKey } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signGrant } from '../../src/access/keyring.js';
import { controlRequest } from '../../src/cli/control-client.js';
import { keyCredentialId, publicJwkOf } from '../../src/crypto/keys.js';
import { type AgentProcess, runCli, runCliJson } from '../helpers/agent-process.js';
import { useAgentRig } from '../helpers/agent-rig.js';
import type { Broker, ClientCert, TestPki } from '../helpers/mosquitto.js';

/**
 * Issue 13, finding 7: input that used to end in `[internal]` (or worse, be accepted) gets a
 * coded, clear error through the real CLI, the control socket and a cloud command; and
 * `config check` never prints a secret.
 */
const ADMIN_TOKEN = 'do-not-print-this-admin-token-42';

const rig = useAgentRig('va-bad-input-');
let root: string;
let dir: string;
const sd = () => ['--state-dir', dir];

/** A grant of an Ed25519 key as a phone key, signed by the demo owner: what the CLI now refuses to build. */
function edPhoneGrant(vehicleId: string): string {
  const ownerKey = createPrivateKey(readFileSync(join(dir, 'demo', 'owner.pem'), 'utf8'));
  const ownerJwk = publicJwkOf(ownerKey);
  const edJwk = publicJwkOf(createPrivateKey(readFileSync(join(root, 'ed.pem'), 'utf8')));
  return signGrant(
    { id: keyCredentialId('phone', edJwk), kind: 'phone', role: 'driver', publicKey: edJwk, options: {} },
    vehicleId,
    ownerKey,
    keyCredentialId('signer', ownerJwk),
    Math.floor(Date.now() / 1000),
  );
}

function credentialIds(): string[] {
  const r = runCliJson<{ id: string }[]>(['keys', 'list', ...sd()]);
  return r.value.map((c) => c.id).sort();
}

beforeAll(() => {
  root = rig.root;
  dir = rig.stateDir();
  expect(runCli(['init', '--demo', ...sd()]).code).toBe(0);
  expect(runCli(['keygen', '--alg', 'ed25519', '--out', join(root, 'ed')]).code).toBe(0);
});

describe('an Ed25519 key offered as a phone key', () => {
  const grantArgs = () => [
    'keys',
    'grant',
    '--key',
    join(dir, 'demo', 'owner.pem'),
    '--kind',
    'phone',
    '--public',
    join(root, 'ed.pub.pem'),
    '--role',
    'driver',
    ...sd(),
  ];

  it('is refused by `keys grant` with key_invalid, and the keyring is unchanged (agent down)', () => {
    const before = credentialIds();
    const r = runCli(grantArgs());
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/\[key_invalid\] .*ed\.pub\.pem: a phone key must be P-256/);
    expect(r.stderr).not.toContain('[internal]');
    expect(credentialIds()).toEqual(before);
  });

  describe('with the agent running', () => {
    let agent: AgentProcess;
    beforeAll(async () => {
      agent = await rig.startAgent();
    });
    afterAll(async () => {
      await agent?.stop();
    });

    it('is refused by the CLI, by `sim present`, and as a signed op on the control socket', async () => {
      const before = credentialIds();
      const cli = runCli(grantArgs());
      expect(cli.code).toBe(1);
      expect(cli.stderr).toMatch(/\[key_invalid\]/);
      const present = runCli(['sim', 'present', '--key', join(root, 'ed.pem'), ...sd()]);
      expect(present.code).toBe(1);
      expect(present.stderr).toMatch(/\[key_invalid\] .*ed\.pem: a phone key must be P-256/);
      const socket = join(dir, 'control.sock');
      const { vehicleId } = (await controlRequest(socket, 'vehicle')) as { vehicleId: string };
      const merged = (await controlRequest(socket, 'keys.add', { ops: [edPhoneGrant(vehicleId)] })) as {
        added: unknown[];
        rejected: { code: string; message: string }[];
      };
      expect(merged.added).toEqual([]);
      expect(merged.rejected).toEqual([
        { index: 0, code: 'key_invalid', message: expect.stringMatching(/must be P-256/) },
      ]);
      expect(credentialIds()).toEqual(before);
      expect(runCliJson(['sim', 'present', 'driver', ...sd()]).value).toMatchObject({ granted: true });
    });
  });

  describe('in a signed cloud keys.grant command (real Mosquitto)', () => {
    let pki: TestPki;
    let cloudCert: ClientCert;
    let broker: Broker;
    let agent: AgentProcess;
    beforeAll(async () => {
      ({ pki, cloudCert, broker } = await rig.startCloud());
      agent = await rig.startAgent('state', rig.cloudEnv(), { waitForLog: ['cloud link up'] });
    });
    afterAll(async () => {
      await agent?.stop();
      await broker?.stop();
    });

    it('gets a coded key_invalid result and adds nothing', () => {
      const before = credentialIds();
      const vid = rig.vehicleId();
      const opsFile = join(root, 'ed-phone.grant');
      writeFileSync(opsFile, edPhoneGrant(vid));
      const r = runCliJson<{ status: string; code: string; message: string }>([
        'cloud',
        'send',
        'keys.grant',
        '--ops',
        opsFile,
        '--key',
        join(dir, 'demo', 'owner.pem'),
        '--vehicle',
        vid,
        '--broker',
        broker.url,
        '--ca',
        pki.ca,
        '--cert',
        cloudCert.cert,
        '--client-key',
        cloudCert.key,
      ]);
      expect(r.value).toMatchObject({ status: 'error', code: 'key_invalid' });
      expect(r.value.message).toMatch(/must be P-256/);
      expect(credentialIds()).toEqual(before);
    });
  });
});

describe('config files that used to crash or leak', () => {
  it('refuses a YAML alias bomb with config_unreadable (check and start)', () => {
    const lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]'];
    for (let i = 1; i < 9; i++)
      lines.push(
        `a${i}: &a${i} [${Array(10)
          .fill(`*a${i - 1}`)
          .join(', ')}]`,
      );
    const bomb = join(root, 'bomb.yaml');
    writeFileSync(bomb, `${lines.join('\n')}\n`);
    for (const args of [
      ['config', 'check', '--config', bomb],
      ['start', '--config', bomb, ...sd()],
    ]) {
      const r = runCli(args);
      expect(r.code).toBe(78);
      expect(r.stderr).toMatch(/\[config_unreadable\] .*bomb\.yaml: not accepted: YAML aliases expand/);
      expect(r.stderr).not.toContain('[internal]');
    }
  });

  it('refuses a config file over the size cap, and a device, without reading it all', () => {
    const big = join(root, 'big.yaml');
    writeFileSync(big, `# ${'x'.repeat(300 * 1024)}\nlog:\n  level: info\n`);
    for (const file of [big, '/dev/zero']) {
      const r = runCli(['config', 'check', '--config', file]);
      expect(r.code).toBe(78);
      expect(r.stderr).toMatch(/\[config_unreadable\] .*larger than 262144 bytes/);
    }
  });

  it('masks the admin token in `config check`, from the file and from the environment', () => {
    const file = join(root, 'token.yaml');
    writeFileSync(file, `statusPage:\n  enabled: true\n  adminToken: ${ADMIN_TOKEN}\n`);
    const fromFile = runCli(['config', 'check', '--config', file]);
    expect(fromFile.code, fromFile.stderr).toBe(0);
    expect(fromFile.stdout).not.toContain(ADMIN_TOKEN);
    expect(JSON.parse(fromFile.stdout)).toMatchObject({
      config: { statusPage: { enabled: true, adminToken: '(set; not shown)' } },
    });
    const fromEnv = runCli(['config', 'check'], { VEHICLE_AGENT_STATUS_PAGE__ADMIN_TOKEN: ADMIN_TOKEN });
    expect(fromEnv.stdout).not.toContain(ADMIN_TOKEN);
    expect(fromEnv.stdout).toContain('(set; not shown)');
  });

  it('never quotes a secret in a config problem', () => {
    const file = join(root, 'bad-token.yaml');
    writeFileSync(file, 'statusPage:\n  adminToken: 987654321987654321987\n');
    const r = runCli(['config', 'check', '--config', file]);
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/\[config_invalid\] .*statusPage\.adminToken is not a non-empty string/s);
    expect(r.stderr + r.stdout).not.toContain('987654321');
  });
});
