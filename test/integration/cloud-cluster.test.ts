import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { controlRequest } from '../../src/cli/control-client.js';
import type { CloudLinkStatus } from '../../src/cloud/cloud-link.js';
import { type AgentProcess, runCli, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import { agentCloudEnv, connectTestCloud, type TestCloud } from '../helpers/cloud-side.js';
import {
  type Broker,
  type ClientCert,
  makeTestPki,
  startBroker,
  type TestPki,
} from '../helpers/mosquitto.js';
import { letTimePass, waitFor, waitForValue } from '../helpers/wait.js';

/**
 * A fleet on a broker cluster (docs/mqtt.md "Several brokers"): the agent and the CLI take a list
 * of broker URLs and go round it, so a node that is down, or dies, costs one failed attempt.
 * Two real Mosquitto instances on loopback stand for two nodes.
 */
describe('several broker URLs', () => {
  let root: string;
  let pki: TestPki;
  let agentCert: ClientCert;
  let cloudCert: ClientCert;
  let nodeA: Broker;
  let nodeB: Broker;
  let agent: AgentProcess | undefined;
  const clouds: TestCloud[] = [];
  let dir: string;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'va-cloud-cluster-'));
    pki = makeTestPki(join(root, 'pki'));
    agentCert = pki.client('vehicle');
    cloudCert = pki.client('cloud');
    nodeA = await startBroker(pki, join(root, 'node-a'), { persistence: false });
    nodeB = await startBroker(pki, join(root, 'node-b'), { persistence: false });
    dir = join(root, 'state');
  });

  afterAll(async () => {
    for (const c of clouds) await c.close();
    await agent?.stop();
    await nodeA?.stop();
    await nodeB?.stop();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  const cloudOn = async (node: Broker): Promise<TestCloud> => {
    const c = await connectTestCloud(node, pki, cloudCert, { reconnectPeriod: 0 });
    clouds.push(c);
    return c;
  };

  it('connects to the second node while the first is down, and to the first when the second dies', async () => {
    await nodeA.stop();
    const env = agentCloudEnv(`${nodeA.url},${nodeB.url}`, pki, agentCert);
    const a = await startAgentProcess(['--state-dir', dir], env);
    agent = a;
    // 'cloud link up again': the first attempt, to node A, failed.
    const first = await a.waitForLog((r) => r.msg === 'cloud link up again', 15_000);
    expect(first.broker).toBe(nodeB.url);
    expect(a.logs.some((r) => r.msg === 'cannot reach the broker; retrying' && r.broker === nodeA.url)).toBe(
      true,
    );
    const vid = (JSON.parse(readFileSync(join(dir, 'vehicle.json'), 'utf8')) as { vehicleId: string })
      .vehicleId;

    await nodeA.start();
    const cloudA = await cloudOn(nodeA);
    await cloudA.subscribe(`vehicle-agent/${vid}/status`);
    await nodeB.stop();
    const again = await a.waitForLog((r) => r.msg === 'cloud link up again' && r !== first, 15_000);
    expect(again.broker).toBe(nodeA.url);
    // Its certificate says CN=vehicle while the client id is the default: said at start.
    expect(
      a.logs.find((r) => String(r.msg).startsWith('the MQTT client id is not the certificate CN')),
    ).toMatchObject({ code: 'config_invalid', clientId: `vehicle-agent-${vid}`, certificateCn: 'vehicle' });
    const online = await cloudA.waitFor(
      (m) => m.topic === `vehicle-agent/${vid}/status` && m.payload.includes('online'),
      10_000,
      'the vehicle online on node A',
    );
    expect(JSON.parse(online.payload)).toEqual({ state: 'online' });
  });

  it('the CLI goes round its --broker list too', async () => {
    // Node B is down (the test above); the CLI tries it first and carries on with node A.
    const r = runCliJson<{ status: string; code: string }>([
      'cloud',
      'send',
      'state.refresh',
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--vehicle',
      (JSON.parse(readFileSync(join(dir, 'vehicle.json'), 'utf8')) as { vehicleId: string }).vehicleId,
      '--broker',
      nodeB.url,
      '--broker',
      nodeA.url,
      '--ca',
      pki.ca,
      '--cert',
      cloudCert.cert,
      '--client-key',
      cloudCert.key,
      '--client-id',
      'cloud',
      '--timeout',
      '10000',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.value).toMatchObject({ status: 'ok', code: 'ok' });
    const bad = runCli([
      'cloud',
      'state',
      '--vehicle',
      'VA-1',
      '--broker',
      nodeA.url,
      '--client-id',
      'two words',
    ]);
    expect(bad.code).toBe(64);
    expect(bad.stderr).toContain('--client-id must be 1 to 128 printable ASCII characters');
  });
});

/**
 * Retained messages are an optimisation: on a broker cluster a subscriber on one node never sees
 * what was retained through another. Here Mosquitto keeps none at all (`retain_available false`,
 * which also refuses a retained will and disconnects a client that publishes a retained message),
 * and everything that must reach the vehicle or the cloud still does.
 */
describe('a broker that keeps no retained messages', () => {
  let root: string;
  let pki: TestPki;
  let agentCert: ClientCert;
  let cloudCert: ClientCert;
  let broker: Broker;
  let agent: AgentProcess | undefined;
  let cloud: TestCloud | undefined;
  let dir: string;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'va-cloud-noretain-'));
    pki = makeTestPki(join(root, 'pki'));
    agentCert = pki.client('vehicle');
    cloudCert = pki.client('cloud');
    broker = await startBroker(pki, join(root, 'broker'), {
      persistence: false,
      extraConfig: ['retain_available false'],
    });
    dir = join(root, 'state');
  });

  afterAll(async () => {
    await cloud?.close();
    await agent?.stop();
    await broker?.stop();
    if (root) rmSync(root, { recursive: true, force: true });
  });

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
  const owner = () => join(dir, 'demo', 'owner.pem');

  /** A new phone key and its grant signed by the demo owner, in a file. */
  const phoneGrant = (vid: string, name: string): { key: string; grantFile: string; op: string } => {
    const key = join(root, name);
    expect(runCliJson(['keygen', '--kind', 'phone', '--out', key]).code).toBe(0);
    const grant = runCli([
      'sign',
      'grant',
      '--key',
      owner(),
      '--vehicle',
      vid,
      '--kind',
      'phone',
      '--public',
      `${key}.pub.pem`,
      '--role',
      'driver',
      '--name',
      name,
    ]);
    expect(grant.code, grant.stderr).toBe(0);
    const grantFile = join(root, `${name}.grant`);
    writeFileSync(grantFile, grant.stdout);
    return { key, grantFile, op: grant.stdout.trim() };
  };

  const presents = (key: string) =>
    runCliJson<{ granted: boolean }>(['sim', 'present', '--key', `${key}.pem`, '--state-dir', dir]).value
      .granted;

  it('keyring sync: the vehicle asks for the set on connect, and the answer (not retained) merges', async () => {
    cloud = await connectTestCloud(broker, pki, cloudCert, { reconnectPeriod: 0 });
    await cloud.subscribe('vehicle-agent/+/keyring/request');
    // Client id = certificate CN (CN=vehicle): no warning.
    const a = await startAgentProcess(
      ['--state-dir', dir],
      agentCloudEnv(broker.url, pki, agentCert, { VEHICLE_AGENT_CLOUD__CLIENT_ID: 'vehicle' }),
    );
    agent = a;
    await a.waitForLog((r) => r.msg === 'cloud link up', 15_000);
    expect(a.logs.some((r) => String(r.msg).startsWith('the MQTT client id is not the certificate CN'))).toBe(
      false,
    );
    expect(a.logs.some((r) => r.msg === 'the broker keeps no retained messages; publishing unretained')).toBe(
      true,
    );
    const request = await cloud.waitFor(
      (m) => m.topic.endsWith('/keyring/request'),
      10_000,
      'the keyring request',
    );
    const asked = JSON.parse(request.payload) as { vid: string; digest: string; operations: number };
    const vid = (JSON.parse(readFileSync(join(dir, 'vehicle.json'), 'utf8')) as { vehicleId: string })
      .vehicleId;
    expect(asked).toMatchObject({ vid, digest: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(asked.operations).toBeGreaterThan(0);
    expect(request.retain).toBe(false);

    // The cloud side answers with its signed set, published without retain.
    const bob = phoneGrant(vid, 'bob');
    const set = runCli(['sign', 'keyring', '--key', owner(), '--vehicle', vid, '--ops', bob.grantFile]);
    expect(set.code, set.stderr).toBe(0);
    expect(presents(bob.key)).toBe(false);
    await cloud.publish(`vehicle-agent/${vid}/keyring`, set.stdout.trim());
    await waitFor(() => presents(bob.key), 'bob granted by the set that answered the request');
  });

  it('cloud keyring push reaches the vehicle with the operations the vehicle holds', async () => {
    const vid = (JSON.parse(readFileSync(join(dir, 'vehicle.json'), 'utf8')) as { vehicleId: string })
      .vehicleId;
    const held = runCliJson<{ keyring: { operations: number } }>(['status', '--state-dir', dir]).value.keyring
      .operations;
    const carol = phoneGrant(vid, 'carol');
    const pushed = runCliJson<{ operations: number; new: number }>([
      'cloud',
      'keyring',
      'push',
      '--key',
      owner(),
      '--vehicle',
      vid,
      '--ops',
      carol.grantFile,
      ...brokerArgs(),
    ]);
    expect(pushed.code, pushed.stderr).toBe(0);
    // Nothing retained to read: the vehicle's own operations came from its answer to the request.
    expect(pushed.value).toEqual({
      topic: `vehicle-agent/${vid}/keyring`,
      operations: held + 1,
      new: 1,
      parts: 1,
    });
    await waitFor(() => presents(carol.key), 'carol granted by the pushed set');
  });

  it('state reaches the cloud side on request', async () => {
    const vid = (JSON.parse(readFileSync(join(dir, 'vehicle.json'), 'utf8')) as { vehicleId: string })
      .vehicleId;
    const c = cloud;
    if (c === undefined) throw new Error('no cloud client');
    await c.subscribe(`vehicle-agent/${vid}/state`);
    const before = c.received.length;
    await c.publish(`vehicle-agent/${vid}/request`, 'state');
    const state = await c.waitFor(
      (m) => m.topic === `vehicle-agent/${vid}/state` && c.received.indexOf(m) >= before,
      10_000,
      'the state on request',
    );
    expect(JSON.parse(state.payload)).toMatchObject({ vid, mqtt: { protocol: '5' } });
    const cli = runCliJson<{ live: boolean; state: { vid: string } }>([
      'cloud',
      'state',
      '--vehicle',
      vid,
      ...brokerArgs(),
    ]);
    expect(cli.code, cli.stderr).toBe(0);
    expect(cli.value).toMatchObject({ live: true, state: { vid } });
  });

  it('requests are budgeted: a flood costs at most a few publishes, junk is refused', async () => {
    const vid = (JSON.parse(readFileSync(join(dir, 'vehicle.json'), 'utf8')) as { vehicleId: string })
      .vehicleId;
    const c = cloud;
    if (c === undefined) throw new Error('no cloud client');
    await c.subscribe(`vehicle-agent/${vid}/keyring/vehicle`);
    // The tests before asked too: the junk request must meet a full budget to be judged by its
    // content (refused as unknown_command) rather than by the budget.
    await letTimePass(1_500, 'the request budget (2 a second) refills');
    await c.publish(`vehicle-agent/${vid}/request`, 'unlock');
    await Promise.all(
      Array.from({ length: 200 }, () => c.publish(`vehicle-agent/${vid}/request`, 'keyring')),
    );
    const control = join(dir, 'control.sock');
    const status = await waitForValue(async () => {
      const st = (await controlRequest(control, 'cloud.status', {})) as CloudLinkStatus;
      const r = st.intake.topics.request;
      return r.accepted + r.overBudget + r.tooLarge >= 201 ? st : undefined;
    }, 'the 201 requests counted');
    const r = status.intake.topics.request;
    expect(r.overBudget).toBeGreaterThan(150);
    expect(status.intake.refused['request:unknown_command']).toBe(1);
    expect(status.intake.refused['request:cloud_budget_exceeded']).toBe(r.overBudget);
  });
});
