import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readAuditLog } from '../../src/store/audit-log.js';
import { type AgentProcess, runCli, runCliJson } from '../helpers/agent-process.js';
import { useAgentRig } from '../helpers/agent-rig.js';
import { type NobleSigner, nobleSigner, type TestCloud } from '../helpers/cloud-side.js';
import type { Broker, ClientCert, TestPki } from '../helpers/mosquitto.js';
import { requireTool } from '../helpers/processes.js';
import { waitFor, waitForEvent } from '../helpers/wait.js';

/**
 * The real agent from dist/ against a real Mosquitto (the shipped config, TLS client certificates),
 * driven from the cloud side: the CLI, and an independent client signing with @noble/curves.
 */
describe('cloud commands over MQTT', () => {
  const rig = useAgentRig('va-cloud-cmd-');
  let root: string;
  let pki: TestPki;
  let cloudCert: ClientCert;
  let broker: Broker;
  let agent: AgentProcess;
  let cloud: TestCloud;
  let dir: string;
  let vid: string;
  let base: string;
  let owner: NobleSigner;
  let service: NobleSigner;
  let driver: NobleSigner;
  let counter = Date.now();
  let jtiSeq = 0;
  const sd = () => rig.sd();
  const brokerArgs = () => [
    '--broker',
    broker.url,
    '--ca',
    pki.ca,
    '--cert',
    cloudCert.cert,
    '--client-key',
    cloudCert.key,
  ];

  function payload(over: Record<string, unknown> = {}): Record<string, unknown> & { jti: string } {
    const now = Math.floor(Date.now() / 1000);
    jtiSeq += 1;
    // Rising like the CLI's default (the time in ms), so the two can take turns with one key.
    counter = Math.max(counter + 1, Date.now());
    return {
      vid,
      cmd: 'unlock',
      args: {},
      jti: `t-${jtiSeq}`,
      iat: now - 1,
      exp: now + 30,
      ctr: counter,
      ...over,
    } as Record<string, unknown> & { jti: string };
  }

  async function send(jws: string, jti: string | null, opts: { retain?: boolean } = {}) {
    const before = cloud.received.length;
    await cloud.publish(`${base}/command`, jws, { retain: opts.retain ?? false });
    const m = await cloud.waitFor(
      (r) =>
        r.topic === `${base}/command/result` &&
        cloud.received.indexOf(r) >= before &&
        (JSON.parse(r.payload) as { jti: unknown }).jti === jti,
      10_000,
      `the result for ${jti}`,
    );
    return JSON.parse(m.payload) as {
      jti: string | null;
      status: string;
      code: string;
      message: string;
      data?: unknown;
    };
  }

  async function cloudCommands(action: string): Promise<number> {
    let n = 0;
    for await (const r of readAuditLog(join(dir, 'audit'), 1))
      if (r.type === 'command' && r.source === 'cloud' && r.action === action) n += 1;
    return n;
  }

  beforeAll(async () => {
    root = rig.root;
    ({ pki, cloudCert, broker, cloud } = await rig.startCloud());
    dir = rig.stateDir();
    agent = await rig.startAgent('state', rig.cloudEnv(), { waitForLog: ['cloud link up'] });
    vid = rig.vehicleId();
    base = `vehicle-agent/${vid}`;
    await cloud.subscribe(`${base}/command/result`);
    await cloud.subscribe(`${base}/state`);
    await cloud.subscribe(`${base}/keyring/vehicle`);
    owner = nobleSigner(join(dir, 'demo', 'owner.pem'));
    driver = nobleSigner(join(dir, 'demo', 'driver.pem'), 'phone');
    const servicePrefix = join(root, 'service');
    expect(runCli(['keygen', '--alg', 'ed25519', '--out', servicePrefix]).code).toBe(0);
    const g = runCli([
      'keys',
      'grant',
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--kind',
      'signer',
      '--public',
      `${servicePrefix}.pub.pem`,
      '--role',
      'service',
      ...sd(),
    ]);
    expect(g.code, g.stderr).toBe(0);
    service = nobleSigner(`${servicePrefix}.pem`);
  });

  it('unlocks with `vehicle-agent cloud send` and prints the coded result', async () => {
    const before = await cloudCommands('unlock');
    const r = runCliJson<{ status: string; code: string; data: { lock: string } }>([
      'cloud',
      'send',
      'unlock',
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--vehicle',
      vid,
      ...brokerArgs(),
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.value).toMatchObject({ status: 'ok', code: 'ok' });
    expect(['unlocking', 'unlocked']).toContain(r.value.data.lock);
    expect(await cloudCommands('unlock')).toBe(before + 1);
  });

  it('accepts commands signed elsewhere (noble): ES256 owner, EdDSA service, ES256 phone key', async () => {
    for (const [signer, cmd] of [
      [owner, 'lock'],
      [service, 'lock'],
      [driver, 'unlock'],
    ] as const) {
      const p = payload({ cmd });
      expect(await send(signer.sign(p), p.jti)).toMatchObject({ status: 'ok', code: 'ok' });
    }
    const p = payload({ cmd: 'keys.list' });
    const list = await send(service.sign(p), p.jti);
    expect((list.data as { keys: { id: string }[] }).keys.map((k) => k.id)).toContain(service.kid);
  });

  it('answers a message that is not a JWS with jws_malformed', async () => {
    expect(await send('this is not a JWS', null)).toMatchObject({ status: 'error', code: 'jws_malformed' });
  });

  it.each<[string, () => [NobleSigner, Record<string, unknown> & { jti: string }]]>([
    ['unknown_command', () => [owner, payload({ cmd: 'open.boot' })]],
    ['bad_arguments', () => [owner, payload({ args: { door: 'rear' } })]],
    ['wrong_vehicle', () => [owner, payload({ vid: 'VA-SOMEONE-ELSE' })]],
    ['unknown_kid', () => [nobleSigner(join(dir, 'demo', 'stranger.pem'), 'phone'), payload()]],
    ['revoked_kid', () => [nobleSigner(join(dir, 'demo', 'revoked.pem'), 'phone'), payload()]],
    ['not_yet_valid', () => [nobleSigner(join(dir, 'demo', 'future-guest.pem'), 'phone'), payload()]],
    ['expired', () => [nobleSigner(join(dir, 'demo', 'expired-guest.pem'), 'phone'), payload()]],
    [
      'role_not_allowed',
      () => [nobleSigner(join(dir, 'demo', 'guest.pem'), 'phone'), payload({ cmd: 'keys.list' })],
    ],
    ['command_expired', () => [owner, payload({ iat: 1_700_000_000, exp: 1_700_000_030 })]],
    [
      'lifetime_too_long',
      () => [
        owner,
        payload({ iat: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + 3600 }),
      ],
    ],
    [
      'command_not_yet_valid',
      () => [
        driver,
        payload({ iat: Math.floor(Date.now() / 1000) + 3600, exp: Math.floor(Date.now() / 1000) + 3630 }),
      ],
    ],
    ['counter_replay', () => [owner, payload({ ctr: 1 })]],
  ])('refuses with %s', async (code, build) => {
    const [signer, p] = build();
    expect(await send(signer.sign(p), p.jti)).toMatchObject({ jti: p.jti, status: 'error', code });
  });

  it('refuses a service key adding keys, and a forged signature', async () => {
    const grant = runCli([
      'sign',
      'grant',
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--vehicle',
      vid,
      '--kind',
      'signer',
      '--public',
      `${root}/service.pub.pem`,
      '--role',
      'driver',
    ]);
    expect(grant.code, grant.stderr).toBe(0);
    const p = payload({ cmd: 'keys.grant', args: { ops: [grant.stdout.trim()] } });
    expect(await send(service.sign(p), p.jti)).toMatchObject({ code: 'role_not_allowed' });
    const forged = payload();
    const [h, b] = owner.sign(forged).split('.');
    const [, , s] = service.sign(forged).split('.');
    expect(await send(`${h}.${b}.${s}`, forged.jti)).toMatchObject({ code: 'bad_signature' });
  });

  it('refuses a command that arrives retained', async () => {
    const p = payload({ cmd: 'lock' });
    expect(await send(owner.sign(p), p.jti, { retain: true })).toMatchObject({ code: 'retained_command' });
    await cloud.publish(`${base}/command`, '', { retain: true });
  });

  it('answers a repeated jti with the same result and acts once', async () => {
    const before = await cloudCommands('unlock');
    const p = payload();
    const jws = owner.sign(p);
    const first = await send(jws, p.jti);
    const second = await send(jws, p.jti);
    expect(first).toMatchObject({ status: 'ok' });
    expect(second).toEqual(first);
    expect(await cloudCommands('unlock')).toBe(before + 1);
  });

  it('grants a key with a signed keys.grant command, and the new key opens the car', async () => {
    const alice = join(root, 'alice');
    expect(runCli(['keygen', '--kind', 'phone', '--out', alice]).code).toBe(0);
    const grant = runCli([
      'sign',
      'grant',
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--vehicle',
      vid,
      '--kind',
      'phone',
      '--public',
      `${alice}.pub.pem`,
      '--role',
      'driver',
      '--name',
      'alice',
    ]);
    const opsFile = join(root, 'alice.grant');
    writeFileSync(opsFile, grant.stdout);
    const r = runCliJson<{ status: string }>([
      'cloud',
      'send',
      'keys.grant',
      '--ops',
      opsFile,
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--vehicle',
      vid,
      ...brokerArgs(),
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(runCliJson(['sim', 'present', '--key', `${alice}.pem`, ...sd()]).value).toMatchObject({
      granted: true,
    });
  });

  it('works the way docs/mqtt.md shows: vehicle-agent sign with mosquitto_pub and mosquitto_sub', async () => {
    requireTool('mosquitto_pub', 'apt-get install mosquitto-clients');
    const tls = [
      '-h',
      'localhost',
      '-p',
      String(broker.port),
      '--cafile',
      pki.ca,
      '--cert',
      cloudCert.cert,
      '--key',
      cloudCert.key,
    ];
    const signed = runCliJson<{ jws: string; payload: { jti: string } }>([
      'sign',
      'command',
      'lock',
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--vehicle',
      vid,
      '--ttl',
      '30',
    ]);
    expect(signed.code, signed.stderr).toBe(0);
    // -d: mosquitto_sub says when the broker has confirmed the subscription (SUBACK), so the
    // command goes out only once its result cannot be missed (stdbuf: line by line into a pipe).
    const sub = spawn(
      'stdbuf',
      ['-oL', 'mosquitto_sub', ...tls, '-d', '-t', `${base}/command/result`, '-C', '1', '-W', '30'],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let got = '';
    sub.stdout.setEncoding('utf8').on('data', (c: string) => {
      got += c;
    });
    const exited = waitForEvent(sub, 'close', 'mosquitto_sub to exit with the result', { timeoutMs: 35_000 });
    exited.catch(() => {}); // awaited below
    await waitFor(() => got.includes('SUBACK'), 'mosquitto_sub to be subscribed', {
      timeoutMs: 15_000,
      detail: () => got,
    });
    const pub = spawnSync(
      'mosquitto_pub',
      [...tls, '-t', `${base}/command`, '-q', '1', '-m', signed.value.jws],
      {
        encoding: 'utf8',
      },
    );
    expect(pub.status, pub.stderr).toBe(0);
    await exited;
    const payload = got.split('\n').find((line) => line.startsWith('{')) ?? '';
    expect(JSON.parse(payload)).toMatchObject({ jti: signed.value.payload.jti, status: 'ok', code: 'ok' });

    // A keyring set made with `sign keyring`, published retained by hand.
    const carol = join(root, 'carol');
    const carolKey = runCliJson<{ id: string }>(['keygen', '--kind', 'phone', '--out', carol]);
    const grant = runCli([
      'sign',
      'grant',
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--vehicle',
      vid,
      '--kind',
      'phone',
      '--public',
      `${carol}.pub.pem`,
      '--role',
      'driver',
    ]);
    writeFileSync(join(root, 'carol.ops'), grant.stdout);
    const set = runCli([
      'sign',
      'keyring',
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--vehicle',
      vid,
      '--ops',
      join(root, 'carol.ops'),
    ]);
    expect(set.code, set.stderr).toBe(0);
    writeFileSync(join(root, 'set.json'), set.stdout);
    const pubSet = spawnSync(
      'mosquitto_pub',
      [...tls, '-t', `${base}/keyring`, '-q', '1', '-r', '-f', join(root, 'set.json')],
      {
        encoding: 'utf8',
      },
    );
    expect(pubSet.status, pubSet.stderr).toBe(0);
    await waitFor(
      () =>
        runCliJson<{ id: string }[]>(['keys', 'list', ...sd()]).value.some((c) => c.id === carolKey.value.id),
      'carol in the keyring',
    );
  });

  it('publishes state with lock, keyring digest, clock trust and version', async () => {
    const p = payload({ cmd: 'state.refresh' });
    await send(owner.sign(p), p.jti);
    const status = runCliJson<{ keyring: { digest: string }; lock: string }>(['status', ...sd()]).value;
    const state = await cloud.waitFor(
      (m) =>
        m.topic === `${base}/state` &&
        (JSON.parse(m.payload) as { keyring: { digest: string } }).keyring.digest === status.keyring.digest,
      5000,
      'state with the current digest',
    );
    const doc = JSON.parse(state.payload) as Record<string, unknown>;
    expect(doc).toMatchObject({
      vid,
      version: expect.any(String),
      lock: expect.stringMatching(/^(locked|unlocked|locking|unlocking)$/),
      clock: { trust: 'trusted', trusted: true },
      mqtt: { protocol: '5' },
    });
    expect(state.retain).toBe(false); // live delivery; the broker keeps the retained copy
  });

  it('merges a keyring pushed by the cloud (union, revoke wins) and publishes its own operations', async () => {
    const bob = join(root, 'bob');
    const bobKey = runCliJson<{ id: string }>(['keygen', '--kind', 'phone', '--out', bob]);
    expect(bobKey.code).toBe(0);
    const grant = runCli([
      'sign',
      'grant',
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--vehicle',
      vid,
      '--kind',
      'phone',
      '--public',
      `${bob}.pub.pem`,
      '--role',
      'driver',
    ]);
    const grantFile = join(root, 'bob.grant');
    writeFileSync(grantFile, grant.stdout);
    const push = (files: string[], replace = false) =>
      runCliJson<{ operations: number }>([
        'cloud',
        'keyring',
        'push',
        '--key',
        join(dir, 'demo', 'owner.pem'),
        '--vehicle',
        vid,
        ...files.flatMap((f) => ['--ops', f]),
        ...(replace ? ['--replace'] : []),
        ...brokerArgs(),
      ]);
    const pushed = push([grantFile]);
    expect(pushed.code, pushed.stderr).toBe(0);
    const presentBob = () =>
      runCliJson<{ granted: boolean; code?: string }>(['sim', 'present', '--key', `${bob}.pem`, ...sd()])
        .value;
    await waitFor(() => presentBob().granted, 'bob granted by the pushed keyring');
    // The vehicle publishes its operations, local enrollments included, for the cloud to merge.
    const bobOp = grant.stdout.trim();
    await cloud.waitFor(
      (m) => m.topic === `${base}/keyring/vehicle` && m.payload.includes(bobOp),
      5000,
      'the vehicle set with the op',
    );
    // Revoke through the pushed set, then replay the old set alone: the revoke stands.
    const revoke = runCli([
      'sign',
      'revoke',
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--vehicle',
      vid,
      '--id',
      bobKey.value.id,
    ]);
    const revokeFile = join(root, 'bob.revoke');
    writeFileSync(revokeFile, revoke.stdout);
    expect(push([revokeFile]).code).toBe(0);
    await waitFor(() => presentBob().code === 'revoked', 'bob revoked');
    const setsHandled = () =>
      agent.logs.filter((r) => String(r.msg).startsWith('keyring set from the cloud')).length;
    const handledBefore = setsHandled();
    expect(push([grantFile], true).code).toBe(0);
    await waitFor(() => setsHandled() > handledBefore, 'the agent to handle the replayed set');
    expect(presentBob()).toMatchObject({ granted: false, code: 'revoked' });
  }, 60_000); // a dozen CLI runs, each its own process: slow on a loaded machine
});
