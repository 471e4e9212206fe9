import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectAsync, type MqttClient } from 'mqtt';
import { signCommand } from '../src/cloud/command.js';
import { vehicleTopics } from '../src/cloud/topics.js';
import { keyCredentialId, publicJwkOf } from '../src/crypto/keys.js';
import { type EjabberdNode, processUsage, startEjabberdCluster } from '../test/helpers/ejabberd.js';
import { makeTestPki } from '../test/helpers/mosquitto.js';
import { issueVehicleCerts } from './fleet-certs.js';
import { round, summarise } from './stats.js';

/**
 * Issue 18: N light vehicles on a 2-node ejabberd cluster (test/helpers/ejabberd.ts: loopback, TLS
 * with a client certificate per vehicle, client id = CN, persistent sessions). Each vehicle speaks
 * the agent's topics and payloads: it connects like the agent (MQTT 5, clean start off, a will on
 * status), publishes status online, subscribes to command and request, then publishes one state
 * document a second (QoS 1, as the agent's ~420 bytes). Measured: PUBACK latency of those states
 * (p50/p99), then one signed command to every vehicle from a fleet client on node 2 and the time
 * until every result is back, and each node's CPU and RSS from /proc of the PIDs started here.
 * `npm run bench -- --only=fleet --vehicles N` (default 200; BENCH_FLEET_SECONDS, default 10, is
 * the length of the state phase).
 */

const SESSION_EXPIRY_S = 604_800;
/** Connections opened at once while the fleet connects (a fleet returning after an outage is spread). */
const CONNECT_WINDOW = 50;

function vehicleCount(): number {
  const args = process.argv.slice(2);
  const i = args.findIndex((a) => a === '--vehicles' || a.startsWith('--vehicles='));
  const raw = i < 0 ? '200' : ((args[i]?.includes('=') ? args[i]?.split('=')[1] : args[i + 1]) ?? '');
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 1 || n > 20_000)
    throw new Error(`--vehicles must be 1 to 20000, not ${raw}`);
  return n;
}

/** A state document shaped and sized like the agent's (docs/mqtt.md "State and status"). */
function stateDocument(vid: string, seq: number): string {
  const now = new Date().toISOString();
  return JSON.stringify({
    vid,
    ts: now,
    version: '0.1.0',
    lock: 'locked',
    keyring: { digest: randomBytes(32).toString('hex'), operations: 9, credentials: 9 },
    clock: { now, trust: 'trusted', trusted: true },
    readers: { sim: 'ok', ble: 'ok', nfc: 'ok' },
    outbox: { lastSeq: seq, ackedSeq: seq, pending: 0, dropped: 0 },
    mqtt: { protocol: '5' },
    relay: { lock: 'ok', unlock: 'ok' },
  });
}

interface Vehicle {
  readonly vid: string;
  readonly client: MqttClient;
}

export async function benchFleet(): Promise<Record<string, number>> {
  const n = vehicleCount();
  const stateSeconds = Number(process.env.BENCH_FLEET_SECONDS ?? '10');
  const root = mkdtempSync(join(tmpdir(), 'va-bench-fleet-'));
  const pki = makeTestPki(join(root, 'pki'));
  const fleetCert = pki.client('fleet');
  const cluster = await startEjabberdCluster(pki, join(root, 'ejabberd'), {
    sessionExpiryS: SESSION_EXPIRY_S,
    // The fleet client gets every vehicle's result at once: a max_queue below that burst closes
    // its session ("Message queue is overloaded"; seen at 2 000 vehicles with 1 000).
    maxQueue: Math.max(5000, 2 * n),
  });
  const vehicles: Vehicle[] = [];
  let fleet: MqttClient | undefined;
  const figures: Record<string, number> = { vehicles: n };
  // Ended from outside (Ctrl-C, a timeout): the nodes and their epmd go too.
  const onSignal = () => void cluster.stop().finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const usage = () => cluster.nodes.map((node: EjabberdNode) => processUsage(node.pid() ?? 0));
  try {
    const idle = usage();
    idle.forEach((u, i) => {
      figures[`node${i + 1}_idle_rss_mb`] = round(u.rssBytes / 1048576, 1);
    });
    const vids = Array.from({ length: n }, (_, i) => `bench-v${i}`);
    const certs = issueVehicleCerts(root, pki.ca, pki.caKey, vids);
    const ca = readFileSync(pki.ca);
    const key = readFileSync(certs.key);

    const phase = (what: string) => process.stderr.write(`fleet bench: ${what}\n`);
    phase(`connecting ${n} vehicles`);
    // Connect, half the fleet on each node, as the agent does.
    const connectStart = performance.now();
    for (let i = 0; i < n; i += CONNECT_WINDOW) {
      const batch = vids.slice(i, i + CONNECT_WINDOW).map(async (vid, j) => {
        const node = cluster.nodes[(i + j) % cluster.nodes.length] as EjabberdNode;
        const topics = vehicleTopics('vehicle-agent', vid);
        const client = await connectAsync(node.url, {
          ca,
          cert: readFileSync(certs.cert(vid)),
          key,
          clientId: vid,
          protocolVersion: 5,
          clean: false,
          properties: { sessionExpiryInterval: SESSION_EXPIRY_S },
          keepalive: 30,
          reconnectPeriod: 0,
          connectTimeout: 60_000,
          will: { topic: topics.status, payload: Buffer.from('{"state":"offline"}'), qos: 1, retain: true },
        });
        await client.subscribeAsync([topics.command, topics.request], { qos: 1 });
        await client.publishAsync(topics.status, '{"state":"online"}', { qos: 1, retain: true });
        vehicles.push({ vid, client });
      });
      await Promise.all(batch);
    }
    figures.connect_all_s = round((performance.now() - connectStart) / 1000, 2);
    const connected = usage();
    connected.forEach((u, i) => {
      figures[`node${i + 1}_connected_rss_mb`] = round(u.rssBytes / 1048576, 1);
    });

    phase(`${stateSeconds} s of states`);
    // One state a second from every vehicle, spread over the second; PUBACK latency of each.
    const latencies: number[] = [];
    const before = usage();
    const phaseStart = performance.now();
    await Promise.all(
      vehicles.map(async (v, i) => {
        const topic = vehicleTopics('vehicle-agent', v.vid).state;
        await new Promise((resolve) => setTimeout(resolve, (i / vehicles.length) * 1000));
        for (let s = 0; s < stateSeconds; s++) {
          const due = phaseStart + (i / vehicles.length) * 1000 + s * 1000;
          const wait = due - performance.now();
          if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
          const t0 = performance.now();
          await v.client.publishAsync(topic, stateDocument(v.vid, s), { qos: 1, retain: true });
          latencies.push(performance.now() - t0);
        }
      }),
    );
    const phaseS = (performance.now() - phaseStart) / 1000;
    const after = usage();
    const puback = summarise(latencies);
    figures.state_bytes = Buffer.byteLength(stateDocument('bench-v0', 0));
    figures.states_published = puback.n;
    figures.state_puback_p50_ms = round(puback.p50, 2);
    figures.state_puback_p99_ms = round(puback.p99, 2);
    after.forEach((u, i) => {
      const b = before[i] ?? u;
      figures[`node${i + 1}_cpu_pct`] = round(((u.cpuS - b.cpuS) / phaseS) * 100, 1);
      figures[`node${i + 1}_rss_mb`] = round(u.rssBytes / 1048576, 1);
    });

    phase('fan-out');
    // Fan-out: one signed unlock per vehicle from the fleet side on node 2; each vehicle answers
    // with a result as the agent does; timed until the last result is back.
    const { privateKey } = generateKeyPairSync('ed25519');
    const kid = keyCredentialId('signer', publicJwkOf(privateKey));
    for (const v of vehicles) {
      const topics = vehicleTopics('vehicle-agent', v.vid);
      v.client.on('message', (topic, payload) => {
        if (topic !== topics.command) return;
        const body = JSON.parse(
          Buffer.from(payload.toString('utf8').split('.')[1] ?? '', 'base64url').toString('utf8'),
        ) as { jti: string };
        void v.client.publishAsync(
          topics.commandResult,
          JSON.stringify({
            jti: body.jti,
            status: 'ok',
            code: 'ok',
            message: 'unlock done',
            data: { lock: 'unlocking' },
          }),
          { qos: 1 },
        );
      });
    }
    const node2 = cluster.nodes[1] as EjabberdNode;
    fleet = await connectAsync(node2.url, {
      ca,
      cert: readFileSync(fleetCert.cert),
      key: readFileSync(fleetCert.key),
      clientId: 'fleet',
      protocolVersion: 5,
      reconnectPeriod: 0,
    });
    const f = fleet;
    await f.subscribeAsync('vehicle-agent/+/command/result', { qos: 1 });
    const answered = new Set<string>();
    const allBack = new Promise<void>((resolve) => {
      f.on('message', (topic) => {
        answered.add(topic);
        if (answered.size === n) resolve();
      });
    });
    const now = Math.floor(Date.now() / 1000);
    const commands = vehicles.map((v, i) => ({
      topic: vehicleTopics('vehicle-agent', v.vid).command,
      jws: signCommand(
        { vid: v.vid, cmd: 'unlock', args: {}, jti: `bench-${i}`, iat: now, exp: now + 60, ctr: Date.now() },
        privateKey,
        kid,
      ),
    }));
    const lost = () => phase('the fleet client was disconnected during the fan-out');
    f.once('close', lost);
    // Everything in the fan-out within 2 minutes, or the figures say what was missing.
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), 120_000);
    });
    const fanStart = performance.now();
    const published = await Promise.race([
      (async () => {
        for (let i = 0; i < commands.length; i += 100)
          await Promise.all(
            commands.slice(i, i + 100).map((c) => f.publishAsync(c.topic, c.jws, { qos: 1 })),
          );
        return true;
      })(),
      deadline,
    ]);
    figures.fanout_published_ms = published ? round(performance.now() - fanStart, 1) : Number.NaN;
    const finished = published && (await Promise.race([allBack.then(() => true), deadline]));
    clearTimeout(timer);
    f.off('close', lost);
    figures.fanout_all_results_ms = finished ? round(performance.now() - fanStart, 1) : Number.NaN;
    figures.fanout_results = answered.size;
    return figures;
  } finally {
    await fleet?.endAsync(true).catch(() => {});
    await Promise.all(vehicles.map((v) => v.client.endAsync(true).catch(() => {})));
    await cluster.stop();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    rmSync(root, { recursive: true, force: true });
  }
}
