import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectAsync } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { controlRequest } from '../../src/cli/control-client.js';
import { readAuditLog } from '../../src/store/audit-log.js';
import { type AgentProcess, runCli, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import {
  agentCloudEnv,
  connectTestCloud,
  type NobleSigner,
  nobleSigner,
  type TestCloud,
} from '../helpers/cloud-side.js';
import {
  EJABBERD_OPEN_FILES,
  type EjabberdCluster,
  type EjabberdNode,
  openFilesLimit,
  startEjabberdCluster,
} from '../helpers/ejabberd.js';
import { type ClientCert, makeTestPki, type TestPki } from '../helpers/mosquitto.js';
import { waitFor } from '../helpers/wait.js';

/** The agent's default persistent session (cloud.sessionExpiryS); the nodes keep sessions as long. */
const SESSION_EXPIRY_S = 604_800;

/**
 * A fleet on a clustered broker (docs/fleet.md): a 2-node ejabberd cluster on loopback (Debian's
 * package, mod_mqtt, TLS with client certificates, Mnesia clustering by join_cluster), the vehicle
 * on node 1 and the fleet side on node 2, so everything between them crosses the cluster. Then the
 * vehicle's node is killed (-9) in the middle of an event stream.
 */
describe('a vehicle and its fleet on a 2-node ejabberd cluster', () => {
  let root: string;
  let pki: TestPki;
  let cluster: EjabberdCluster;
  let node1: EjabberdNode;
  let node2: EjabberdNode;
  let agentCert: ClientCert;
  let cliCert: ClientCert;
  let fleet: TestCloud;
  const extraClients: TestCloud[] = [];
  let agent: AgentProcess | undefined;
  let dir: string;
  let vid: string;
  let base: string;
  let owner: NobleSigner;
  let counter = Date.now();

  /** The agent with its cloud.url list in this order; resolves once its link is up. */
  const startAgent = async (urls: readonly string[]): Promise<AgentProcess> => {
    const a = await startAgentProcess(
      ['--state-dir', dir],
      agentCloudEnv(urls.join(','), pki, agentCert, {
        // ejabberd takes the client id from the certificate: they must agree.
        VEHICLE_AGENT_CLOUD__CLIENT_ID: 'vehicle',
        VEHICLE_AGENT_CLOUD__SESSION_EXPIRY_S: String(SESSION_EXPIRY_S),
        VEHICLE_AGENT_TEST_HOOKS: '1',
      }),
    );
    agent = a;
    await a.waitForLog((r) => r.msg === 'cloud link up' || r.msg === 'cloud link up again', 20_000);
    return a;
  };

  const command = (cmd: string): { jws: string; jti: string } => {
    const now = Math.floor(Date.now() / 1000);
    counter = Math.max(counter + 1, Date.now());
    const jti = `ej-${counter}`;
    return { jti, jws: owner.sign({ vid, cmd, args: {}, jti, iat: now - 1, exp: now + 60, ctr: counter }) };
  };

  const resultsFor = (jti: string) =>
    fleet.received.filter(
      (m) => m.topic === `${base}/command/result` && (JSON.parse(m.payload) as { jti: string }).jti === jti,
    );

  /** How many times the fleet side received each event seq. */
  const eventCounts = (): Map<number, number> => {
    const counts = new Map<number, number>();
    for (const m of fleet.received) {
      if (m.topic !== `${base}/events`) continue;
      const seq = (JSON.parse(m.payload) as { seq: number }).seq;
      counts.set(seq, (counts.get(seq) ?? 0) + 1);
    }
    return counts;
  };

  async function localAudit(): Promise<{ seq: number; hash: string }[]> {
    const out: { seq: number; hash: string }[] = [];
    for await (const r of readAuditLog(join(dir, 'audit'), 1))
      out.push(r as unknown as { seq: number; hash: string });
    return out;
  }

  /** One audit record (the test hook's filler, VEHICLE_AGENT_TEST_HOOKS=1): one event each. */
  const auditEvent = async () =>
    await controlRequest(join(dir, 'control.sock'), 'test.audit', { count: 1, bytes: 64 });

  const everyEventDelivered = async (lastSeq: number) =>
    await waitFor(
      () => {
        const counts = eventCounts();
        for (let s = 1; s <= lastSeq; s++) if (!counts.has(s)) return false;
        return true;
      },
      `every event up to seq ${lastSeq} at the fleet side`,
      {
        timeoutMs: 30_000,
        intervalMs: 50,
        detail: () => {
          const counts = eventCounts();
          return [...Array(lastSeq).keys()].map((i) => i + 1).filter((s) => !counts.has(s));
        },
      },
    );

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'va-ejabberd-'));
    pki = makeTestPki(join(root, 'pki'));
    agentCert = pki.client('vehicle');
    const fleetCert = pki.client('fleet');
    cliCert = pki.client('fleet-cli');
    cluster = await startEjabberdCluster(pki, join(root, 'ejabberd'), { sessionExpiryS: SESSION_EXPIRY_S });
    [node1, node2] = cluster.nodes as [EjabberdNode, EjabberdNode];
    // The fleet side on node 2, with a persistent session, subscribed before the vehicle exists.
    fleet = await connectTestCloud(node2, pki, fleetCert, {
      clientId: 'fleet',
      clean: false,
      reconnectPeriod: 0,
      properties: { sessionExpiryInterval: 3600 },
    });
    for (const t of ['events', 'status', 'state', 'command/result', 'keyring/request'])
      await fleet.subscribe(`vehicle-agent/+/${t}`);
    dir = join(root, 'state');
    const a = await startAgent([node1.url, node2.url]);
    expect(a.logs.find((r) => r.msg === 'cloud link up')?.broker).toBe(node1.url);
    vid = (JSON.parse(readFileSync(join(dir, 'vehicle.json'), 'utf8')) as { vehicleId: string }).vehicleId;
    base = `vehicle-agent/${vid}`;
    owner = nobleSigner(join(dir, 'demo', 'owner.pem'));
  }, 90_000);

  afterAll(async () => {
    for (const c of extraClients) await c.close().catch(() => {});
    await fleet?.close().catch(() => {});
    await agent?.stop();
    await cluster?.stop();
    if (root) rmSync(root, { recursive: true, force: true, maxRetries: 5 });
  }, 60_000);

  it('the cluster refuses a client whose id is not its certificate CN', async () => {
    const tls = {
      ca: readFileSync(pki.ca),
      cert: readFileSync(cliCert.cert),
      key: readFileSync(cliCert.key),
    };
    const options = { ...tls, protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 10_000 } as const;
    await expect(connectAsync(node1.url, { ...options, clientId: 'not-the-cn' })).rejects.toThrow(
      /Not authorized/,
    );
    const right = await connectAsync(node1.url, { ...options, clientId: 'fleet-cli' });
    await right.endAsync();
    // The nodes run with the open-files limit raised as far as this machine allows.
    for (const node of cluster.nodes)
      expect(openFilesLimit(node.pid() ?? 0)).toBe(
        Math.min(EJABBERD_OPEN_FILES, openFilesLimit(process.pid, 'hard')),
      );
  });

  it('signed commands from node 2 reach the vehicle on node 1: one result each', async () => {
    const sent = ['unlock', 'lock', 'state.refresh'].map(command);
    for (const c of sent) await fleet.publish(`${base}/command`, c.jws);
    await waitFor(() => sent.every((c) => resultsFor(c.jti).length > 0), 'a result for every command');
    for (const c of sent) {
      expect(resultsFor(c.jti)).toHaveLength(1);
      expect(JSON.parse(resultsFor(c.jti)[0]?.payload ?? '{}')).toMatchObject({ status: 'ok', code: 'ok' });
    }
  });

  it('keyring sync: the request crosses to node 2, the answer crosses back; cloud keyring push from node 2', async () => {
    const request = await fleet.waitFor(
      (m) => m.topic === `${base}/keyring/request`,
      10_000,
      'keyring request',
    );
    expect(JSON.parse(request.payload)).toMatchObject({ vid });
    const owned = join(dir, 'demo', 'owner.pem');
    const grant = (name: string) => {
      const key = join(root, name);
      expect(runCliJson(['keygen', '--kind', 'phone', '--out', key]).code).toBe(0);
      const g = runCli(
        [
          'sign',
          'grant',
          '--key',
          owned,
          '--vehicle',
          vid,
          '--kind',
          'phone',
          '--public',
          `${key}.pub.pem`,
        ].concat(['--role', 'driver', '--name', name]),
      );
      expect(g.code, g.stderr).toBe(0);
      writeFileSync(`${key}.grant`, g.stdout);
      return key;
    };
    const presents = (key: string) =>
      runCliJson<{ granted: boolean }>(['sim', 'present', '--key', `${key}.pem`, '--state-dir', dir]).value
        .granted;
    // The fleet answers the vehicle's request with its signed set (unretained).
    const bob = grant('bob');
    const set = runCli(['sign', 'keyring', '--key', owned, '--vehicle', vid, '--ops', `${bob}.grant`]);
    expect(set.code, set.stderr).toBe(0);
    await fleet.publish(`${base}/keyring`, set.stdout.trim());
    await waitFor(() => presents(bob), 'bob granted by the set sent through node 2');
    // The CLI on node 2 asks the vehicle (on node 1) for its set and pushes the union.
    const carol = grant('carol');
    const pushed = runCliJson<{ new: number }>([
      'cloud',
      'keyring',
      'push',
      '--key',
      owned,
      '--vehicle',
      vid,
      '--ops',
      `${carol}.grant`,
      ...cliArgs(node2),
    ]);
    expect(pushed.code, pushed.stderr).toBe(0);
    expect(pushed.value.new).toBe(1);
    await waitFor(() => presents(carol), 'carol granted by cloud keyring push through node 2');
  });

  const cliArgs = (node: EjabberdNode) => [
    '--broker',
    node.url,
    '--ca',
    pki.ca,
    '--cert',
    cliCert.cert,
    '--client-key',
    cliCert.key,
    '--client-id',
    'fleet-cli',
  ];

  it('events cross the cluster exactly once, with the hashes of the audit log', async () => {
    for (let i = 0; i < 20; i++) await auditEvent();
    const local = await localAudit();
    const last = local.at(-1)?.seq ?? 0;
    await everyEventDelivered(last);
    const counts = eventCounts();
    expect([...counts.entries()].filter(([, n]) => n !== 1)).toEqual([]);
    const hashes = new Map<number, string>();
    for (const m of fleet.received)
      if (m.topic === `${base}/events`) {
        const r = JSON.parse(m.payload) as { seq: number; hash: string };
        hashes.set(r.seq, r.hash);
      }
    for (const r of local) expect(hashes.get(r.seq)).toBe(r.hash);
  });

  it('records the cluster’s retained behaviour: kept per node (a change upstream fails this)', async () => {
    // The vehicle published status and state retained through node 1. A new subscriber on node 1
    // gets them; one on node 2 gets nothing retained. The marker, published by the subscriber
    // itself after subscribing, comes after anything the node delivers for the subscription.
    const retainedSeen = async (node: EjabberdNode, cn: string): Promise<string[]> => {
      const c = await connectTestCloud(node, pki, pki.client(cn), { clientId: cn, reconnectPeriod: 0 });
      extraClients.push(c);
      const marker = `fleet-test/${cn}/marker`;
      await c.client.subscribeAsync([`${base}/state`, `${base}/status`, marker], { qos: 1 });
      await c.publish(marker, 'end');
      await c.waitFor((m) => m.topic === marker, 10_000, 'the marker');
      return c.received.filter((m) => m.retain && m.topic !== marker).map((m) => m.topic);
    };
    expect((await retainedSeen(node1, 'retained-probe-1')).sort()).toEqual([
      `${base}/state`,
      `${base}/status`,
    ]);
    // If this fails, ejabberd now shares retained messages across nodes: update docs/fleet.md and
    // docs/mqtt.md ("Without retained messages"); nothing in the agent depends on either answer.
    expect(await retainedSeen(node2, 'retained-probe-2')).toEqual([]);
    // What the contract uses instead: the state on request, through node 2.
    const r = runCliJson<{ live: boolean; state: { vid: string } }>([
      'cloud',
      'state',
      '--vehicle',
      vid,
      ...cliArgs(node2),
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.value).toMatchObject({ live: true, state: { vid } });
  });

  it('the will crosses the cluster, and the session resumes on the other node with the command queued meanwhile', async () => {
    const a = agent;
    if (a === undefined) throw new Error('no agent');
    const before = fleet.received.length;
    a.child.kill('SIGKILL');
    await a.stop();
    const will = await fleet.waitFor(
      (m) => m.topic === `${base}/status` && fleet.received.indexOf(m) >= before,
      20_000,
      'the will through node 1',
    );
    expect(JSON.parse(will.payload)).toEqual({ state: 'offline' });
    // Sent while the vehicle is away: its session (opened on node 1) holds it.
    const queued = command('lock');
    await fleet.publish(`${base}/command`, queued.jws);
    // The vehicle comes back through node 2.
    const b = await startAgent([node2.url, node1.url]);
    expect(b.logs.find((r) => r.msg === 'cloud link up')?.broker).toBe(node2.url);
    await waitFor(
      () => resultsFor(queued.jti).length > 0,
      'the result of the command queued in the session',
      {
        timeoutMs: 20_000,
      },
    );
    expect(JSON.parse(resultsFor(queued.jti)[0]?.payload ?? '{}')).toMatchObject({
      status: 'ok',
      code: 'ok',
    });
    expect(resultsFor(queued.jti)).toHaveLength(1);
  }, 60_000);

  it('kill -9 of the vehicle’s node in an event stream: it fails over to the other, nothing lost', async () => {
    await agent?.stop();
    const a = await startAgent([node1.url, node2.url]);
    expect(a.logs.find((r) => r.msg === 'cloud link up')?.broker).toBe(node1.url);
    const startSeq = (await localAudit()).at(-1)?.seq ?? 0;
    let killedAt = 0;
    let reconnectedAt = 0;
    const reconnected = a
      .waitForLog((r) => r.msg === 'cloud link up again' && r.broker === node2.url, 30_000)
      .then(() => {
        reconnectedAt = performance.now();
      });
    // The stream runs before, through and after the outage: 80 records, the kill, records until
    // the vehicle is back on node 2, then 80 more.
    let written = 0;
    for (let i = 0; i < 80; i++, written++) await auditEvent();
    killedAt = performance.now();
    await node1.kill();
    while (reconnectedAt === 0) {
      await auditEvent();
      written++;
      await Promise.race([reconnected, new Promise((resolve) => setTimeout(resolve, 5))]);
    }
    for (let i = 0; i < 80; i++, written++) await auditEvent();
    await reconnected;
    const local = await localAudit();
    const last = local.at(-1)?.seq ?? 0;
    expect(last).toBeGreaterThanOrEqual(startSeq + written);
    await everyEventDelivered(last);
    const counts = eventCounts();
    const lost = [...Array(last).keys()].map((i) => i + 1).filter((s) => !counts.has(s));
    const duplicated = [...counts.entries()].filter(([, n]) => n > 1).map(([s]) => s);
    // The figures for docs/fleet.md and the report (reconnect time, lost and duplicated counts).
    console.log(
      `ejabberd failover: back on node 2 ${Math.round(reconnectedAt - killedAt)} ms after kill -9 of node 1; ` +
        `${written} events in the stream (seq ${startSeq + 1}..${last}), ${lost.length} lost, ` +
        `${duplicated.length} delivered twice`,
    );
    expect(lost).toEqual([]);
    // At least once: a record node 1 passed on just before it died, but whose PUBACK died with it,
    // comes again from node 2. The fleet side de-duplicates by seq; every copy must be the same
    // record, and only records that could have been in flight (the outbox window) may repeat.
    expect(duplicated.length).toBeLessThanOrEqual(100);
    for (const seq of duplicated) {
      const copies = new Set(
        fleet.received
          .filter(
            (m) => m.topic === `${base}/events` && (JSON.parse(m.payload) as { seq: number }).seq === seq,
          )
          .map((m) => m.payload),
      );
      expect(copies.size, `seq ${seq} came twice with different content`).toBe(1);
    }
    expect(local.some((r) => (r as unknown as { type: string }).type === 'outbox.dropped')).toBe(false);
  }, 90_000);
});
