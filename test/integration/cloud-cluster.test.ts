import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import { agentCloudEnv, connectTestCloud, type TestCloud } from '../helpers/cloud-side.js';
import {
  type Broker,
  type ClientCert,
  makeTestPki,
  startBroker,
  type TestPki,
} from '../helpers/mosquitto.js';

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
      '--timeout',
      '10000',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.value).toMatchObject({ status: 'ok', code: 'ok' });
  });
});
