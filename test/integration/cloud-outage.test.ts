import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect } from 'mqtt';
import { beforeAll, describe, expect, it } from 'vitest';
import { readAuditLog } from '../../src/store/audit-log.js';
import { type AgentProcess, runCliJson } from '../helpers/agent-process.js';
import { useAgentRig } from '../helpers/agent-rig.js';
import { agentCloudEnv, type TestCloud } from '../helpers/cloud-side.js';
import {
  type Broker,
  type ClientCert,
  freePort,
  startHungListener,
  type TestPki,
} from '../helpers/mosquitto.js';
import { requireTool } from '../helpers/processes.js';
import { quietFor, waitFor } from '../helpers/wait.js';

/**
 * A broker that speaks only MQTT 3.1.1: refuses a v5 CONNECT, pipes anything else to `port`. It
 * refuses with a CONNACK "unacceptable protocol version", or (`refuse: 'close'`, as RabbitMQ's
 * MQTT plugin does) by closing the connection without any answer. It counts the v5 CONNECTs.
 */
async function startV311Proxy(
  port: number,
  refuse: 'connack' | 'close' = 'connack',
): Promise<{ port: number; v5Connects: () => number; close(): Promise<void> }> {
  let v5Connects = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    sockets.add(client);
    client.on('error', () => {});
    client.once('data', (first: Buffer) => {
      let i = 1;
      while (i < 5 && ((first[i] ?? 0) & 0x80) !== 0) i += 1;
      const level = first[i + 1 + 6]; // length-prefixed "MQTT", then the protocol level
      if (level === 5) {
        v5Connects += 1;
        if (refuse === 'close') client.end();
        else client.end(Buffer.from([0x20, 0x02, 0x00, 0x01])); // CONNACK: unacceptable protocol version
        return;
      }
      const upstream = netConnect(port, '127.0.0.1');
      sockets.add(upstream);
      upstream.on('error', () => client.destroy());
      upstream.write(first);
      client.pipe(upstream).pipe(client);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return {
    port: typeof address === 'object' && address !== null ? address.port : 0,
    v5Connects: () => v5Connects,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe('the cloud link stays out of the way, and the broker keeps strangers out', () => {
  const rig = useAgentRig('va-cloud-out-');
  let root: string;
  let pki: TestPki;
  let agentCert: ClientCert;
  let cloudCert: ClientCert;
  let broker: Broker;
  let cloud: TestCloud;

  const startWith = (name: string, env: Record<string, string>, waitFor?: string): Promise<AgentProcess> =>
    rig.startAgent(name, env, waitFor === undefined ? {} : { waitForLog: [waitFor] });

  const vehicleOf = (name: string) => rig.vehicleId(name);

  const presentDriver = (name: string) =>
    runCliJson<{ granted: boolean }>(['sim', 'present', 'driver', '--state-dir', join(root, name)]);

  beforeAll(async () => {
    root = rig.root;
    ({ pki, agentCert, cloudCert, broker, cloud } = await rig.startCloud({
      broker: { plainPort: await freePort(), logSubscriptions: true },
    }));
  });

  it('unlocks while the broker accepts TCP and never answers', async () => {
    const hung = await startHungListener();
    try {
      const a = await startWith('hung', agentCloudEnv(`mqtts://localhost:${hung.port}`, pki, agentCert));
      for (let i = 0; i < 3; i++) expect(presentDriver('hung').value.granted).toBe(true);
      await a.waitForLog((r) => r.code === 'broker_unavailable', 20_000);
      expect(presentDriver('hung').value.granted).toBe(true);
      // A broker that never answers is not one that refuses MQTT 5.
      expect(a.logs.some((r) => String(r.msg).includes('MQTT 3.1.1'))).toBe(false);
      await a.stop();
    } finally {
      await hung.close();
    }
  }, 60_000); // bounds, not speed: the agent's start and its connect timeout stretch under load

  it('unlocks while the broker refuses connections and while its name does not resolve', async () => {
    const closed = await freePort();
    for (const [name, url] of [
      ['refused', `mqtts://127.0.0.1:${closed}`],
      ['nodns', 'mqtts://broker.invalid:8883'],
    ] as const) {
      const a = await startWith(name, agentCloudEnv(url, pki, agentCert));
      for (let i = 0; i < 3; i++) expect(presentDriver(name).value.granted).toBe(true);
      await a.waitForLog((r) => r.code === 'broker_unavailable', 20_000);
      expect(presentDriver(name).value.granted).toBe(true);
      await a.stop();
    }
  }, 60_000); // two agents and eight CLI runs: slow on a loaded machine

  it('refuses a client without a certificate, or with one from another CA (shipped broker config)', async () => {
    const attempt = (options: Record<string, unknown>) =>
      new Promise<'connected' | 'refused'>((resolve) => {
        const c = connect(broker.url, {
          ca: readFileSync(pki.ca),
          reconnectPeriod: 0,
          connectTimeout: 5000,
          ...options,
        });
        c.on('connect', () => {
          c.end(true);
          resolve('connected');
        });
        c.on('error', () => {});
        c.on('close', () => {
          c.end(true);
          resolve('refused');
        });
      });
    const foreign = pki.foreignClient('intruder');
    expect(await attempt({})).toBe('refused');
    expect(await attempt({ cert: readFileSync(foreign.cert), key: readFileSync(foreign.key) })).toBe(
      'refused',
    );
    expect(await attempt({ cert: readFileSync(cloudCert.cert), key: readFileSync(cloudCert.key) })).toBe(
      'connected',
    );
    // The same with the mosquitto clients the docs use.
    requireTool('mosquitto_pub', 'apt-get install mosquitto-clients');
    const pub = (extra: string[]) =>
      spawnSync(
        'mosquitto_pub',
        [
          '-h',
          'localhost',
          '-p',
          String(broker.port),
          '--cafile',
          pki.ca,
          ...extra,
          '-t',
          'x/y',
          '-m',
          'hi',
          '-q',
          '1',
        ],
        { encoding: 'utf8', timeout: 10_000 },
      ).status;
    expect(pub([])).not.toBe(0);
    expect(pub(['--cert', cloudCert.cert, '--key', cloudCert.key])).toBe(0);
  });

  it('falls back to MQTT 3.1.1 when the broker refuses 5, and publishes Home Assistant discovery without taking its commands', async () => {
    const proxy = await startV311Proxy(broker.plainPort ?? 0);
    try {
      const a = await startWith(
        'v311',
        agentCloudEnv(`mqtt://127.0.0.1:${proxy.port}`, undefined, undefined, {
          VEHICLE_AGENT_CLOUD__HOME_ASSISTANT__ENABLED: 'true',
        }),
        'cloud link up',
      );
      expect(a.logs.some((r) => r.msg === 'the broker refused MQTT 5; using MQTT 3.1.1')).toBe(true);
      const vid = vehicleOf('v311');
      await cloud.subscribe(`vehicle-agent/${vid}/state`);
      await cloud.subscribe('homeassistant/lock/+/lock/config');
      const state = await cloud.waitFor((m) => m.topic === `vehicle-agent/${vid}/state`, 10_000, 'state');
      expect(JSON.parse(state.payload)).toMatchObject({ mqtt: { protocol: '3.1.1' } });
      const discovery = await cloud.waitFor(
        (m) => m.topic.startsWith('homeassistant/lock/') && m.payload.includes(vid),
        10_000,
        'discovery',
      );
      expect(JSON.parse(discovery.payload)).toMatchObject({
        state_topic: `vehicle-agent/${vid}/state`,
        command_topic: `vehicle-agent/${vid}/ha/command`,
        availability: [{ topic: `vehicle-agent/${vid}/status` }],
      });
      // Unsigned commands are off: an UNLOCK from "Home Assistant" changes nothing.
      await cloud.publish(`vehicle-agent/${vid}/ha/command`, 'UNLOCK');
      await quietFor(1000, 'a command from the unsigned UNLOCK (unsigned commands are off)');
      const records: { type: string; source?: unknown }[] = [];
      for await (const r of readAuditLog(join(root, 'v311', 'audit'), 1)) records.push(r);
      expect(records.some((r) => r.type === 'command')).toBe(false);
      expect(a.logs.some((r) => String(r.msg).includes('unsigned commands are ENABLED'))).toBe(false);
      await a.stop();
    } finally {
      await proxy.close();
    }
  });

  it('falls back to MQTT 3.1.1 when the broker closes the connection on a v5 CONNECT without a CONNACK', async () => {
    const proxy = await startV311Proxy(broker.plainPort ?? 0, 'close');
    try {
      const a = await startWith(
        'v311-close',
        agentCloudEnv(`mqtt://127.0.0.1:${proxy.port}`, undefined, undefined),
        'cloud link up',
      );
      expect(
        a.logs.filter(
          (r) =>
            r.msg ===
            'the broker closed the connection on an MQTT 5 CONNECT without answering; trying MQTT 3.1.1',
        ),
      ).toHaveLength(1);
      expect(proxy.v5Connects()).toBe(1);
      const vid = vehicleOf('v311-close');
      await cloud.subscribe(`vehicle-agent/${vid}/state`);
      const state = await cloud.waitFor((m) => m.topic === `vehicle-agent/${vid}/state`, 10_000, 'state');
      expect(JSON.parse(state.payload)).toMatchObject({ mqtt: { protocol: '3.1.1' } });
      await a.stop();
    } finally {
      await proxy.close();
    }
  });

  it('takes LOCK/UNLOCK from Home Assistant only when unsigned commands are enabled, with a warning', async () => {
    const a = await startWith(
      'ha',
      agentCloudEnv(broker.url, pki, agentCert, {
        VEHICLE_AGENT_CLOUD__HOME_ASSISTANT__ENABLED: 'true',
        VEHICLE_AGENT_CLOUD__HOME_ASSISTANT__ALLOW_UNSIGNED_COMMANDS: 'true',
      }),
      'cloud link up',
    );
    expect(
      a.logs.some((r) => r.level === 40 && String(r.msg).includes('unsigned commands are ENABLED')),
    ).toBe(true);
    const vid = vehicleOf('ha');
    await cloud.subscribe(`vehicle-agent/${vid}/state`);
    // The broker's own log: the subscription stands where the command will be routed.
    await waitFor(
      () => broker.output().includes(` vehicle-agent/${vid}/ha/command`),
      "the broker to hold the agent's subscription to Home Assistant commands",
      { detail: () => broker.output().slice(-800) },
    );
    await cloud.publish(`vehicle-agent/${vid}/ha/command`, 'UNLOCK');
    await cloud.waitFor(
      (m) => m.topic === `vehicle-agent/${vid}/state` && /"lock":"unlock(ing|ed)"/.test(m.payload),
      10_000,
      'the unlocked state',
    );
    const records: { type: string; source?: unknown; action?: unknown }[] = [];
    for await (const r of readAuditLog(join(root, 'ha', 'audit'), 1)) records.push(r);
    expect(records.filter((r) => r.type === 'command' && r.source === 'home-assistant')).toMatchObject([
      { action: 'unlock' },
    ]);
    await a.stop();
  });
});
