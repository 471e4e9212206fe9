import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect as mqttConnect } from 'mqtt';
import { controlRequest } from '../src/cli/control-client.js';
import { MqttConnection } from '../src/cloud/mqtt-connection.js';
import { Outbox } from '../src/cloud/outbox.js';
import { silentLogger } from '../src/core/logger.js';
import { signP256, simKeyMessage } from '../src/crypto/challenge.js';
import { b64url, fromB64url } from '../src/crypto/encoding.js';
import type { SimChallenge } from '../src/host/control-api.js';
import { AuditLog } from '../src/store/audit-log.js';
import { readSignerKey } from '../src/store/key-files.js';
import {
  type Broker,
  freePort,
  makeTestPki,
  startBroker,
  startHungListener,
  type TestPki,
} from '../test/helpers/mosquitto.js';
import { round, summarise } from './stats.js';

/**
 * The cloud link's figures (issue 5 targets):
 *  - the outbox: 10 000 audit events written while offline, flushed after the link comes up
 *    (time to the last PUBACK and to the last delivery at a subscriber; lost; duplicates);
 *  - tap-to-relay latency (a simulated phone tap answered through the control socket, which
 *    returns once the relay is energised) with the broker up, refused, hung and flapping. The four
 *    agents run at once and taps go round-robin, so machine noise falls on all four alike. A fifth
 *    agent without any cloud link gives the cost of the link itself (up / off).
 * Needs mosquitto and openssl (the same rig as the integration tests).
 */

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

export async function benchCloud(
  options: { events?: number; taps?: number } = {},
): Promise<Record<string, number>> {
  const root = mkdtempSync(join(tmpdir(), 'va-bench-cloud-'));
  const pki = makeTestPki(join(root, 'pki'));
  const broker = await startBroker(pki, join(root, 'broker'), { persistence: false });
  try {
    const outbox = await benchOutbox(root, pki, broker, options.events ?? 10_000);
    const latency = await benchLatency(root, pki, broker, options.taps ?? 1000);
    return { ...outbox, ...latency };
  } finally {
    await broker.stop();
    rmSync(root, { recursive: true, force: true });
  }
}

async function benchOutbox(
  root: string,
  pki: TestPki,
  broker: Broker,
  events: number,
): Promise<Record<string, number>> {
  const dir = join(root, 'outbox');
  const audit = await AuditLog.open(join(dir, 'audit'), { maxFileBytes: 4 * 1024 * 1024, keepFiles: 100 });
  const batch = 500;
  for (let i = 0; i < events; i += batch) {
    await Promise.all(
      Array.from({ length: Math.min(batch, events - i) }, (_, j) =>
        audit.append({ type: 'access', reader: 'bench', result: 'granted', subject: `phone:bench${i + j}` }),
      ),
    );
  }
  const vid = 'BENCH-OUTBOX';
  const topic = `vehicle-agent/${vid}/events`;
  const received = new Map<number, number>();
  const cloudCert = pki.client('bench-cloud');
  const tls = {
    ca: readFileSync(pki.ca),
    cert: readFileSync(cloudCert.cert),
    key: readFileSync(cloudCert.key),
  };
  const subscriber = mqttConnect(broker.url, { ...tls, protocolVersion: 5, reconnectPeriod: 0 });
  await new Promise<void>((resolve, reject) => {
    subscriber.once('connect', () => resolve());
    subscriber.once('error', reject);
  });
  await subscriber.subscribeAsync(topic, { qos: 1 });
  let lastDelivery = 0;
  subscriber.on('message', (_t, payload) => {
    const seq = (JSON.parse(payload.toString('utf8')) as { seq: number }).seq;
    received.set(seq, (received.get(seq) ?? 0) + 1);
    lastDelivery = performance.now();
  });

  const outbox = await Outbox.open({
    source: audit,
    dir,
    maxEvents: 100_000,
    pollMs: 20,
    emit: () => {},
    log: silentLogger,
  });
  const agentCert = pki.client('bench-vehicle');
  let window = 0;
  const connection: MqttConnection = new MqttConnection(
    {
      urls: [broker.url],
      clientId: 'bench-vehicle',
      tls: { ca: tls.ca, cert: readFileSync(agentCert.cert), key: readFileSync(agentCert.key) },
      protocol: 'auto',
      keepaliveS: 30,
      connectTimeoutMs: 5000,
      sessionExpiryS: 0,
      backoff: { minMs: 100, maxMs: 1000 },
      log: silentLogger,
    },
    {
      onConnect: (session) => {
        window = Math.min(100, session.receiveMaximum);
        outbox.attach(
          (record) => connection.publish(topic, JSON.stringify(record), { qos: 1, retain: false }),
          window,
        );
      },
      onDisconnect: () => outbox.detach(),
      onMessage: () => {},
    },
  );
  const t0 = performance.now();
  connection.start();
  let acked = 0;
  const deadline = t0 + 60_000;
  while (performance.now() < deadline) {
    if (acked === 0 && outbox.stats().ackedSeq >= events) acked = performance.now();
    if (acked > 0 && received.size >= events) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  await new Promise((r) => setTimeout(r, 200)); // stragglers, to count duplicates honestly
  let lost = 0;
  for (let seq = 1; seq <= events; seq++) if (!received.has(seq)) lost += 1;
  let duplicates = 0;
  for (const n of received.values()) duplicates += n - 1;
  await outbox.close();
  await connection.stop();
  await subscriber.endAsync(true);
  await audit.close();
  const flushMs = (acked || performance.now()) - t0;
  return {
    outbox_events: events,
    outbox_flush_acked_ms: round(flushMs, 1),
    outbox_flush_delivered_ms: round((lastDelivery || performance.now()) - t0, 1),
    outbox_events_per_s: round(events / (flushMs / 1000), 0),
    outbox_lost: lost,
    outbox_duplicates: duplicates,
    outbox_window: window,
  };
}

interface BenchAgent {
  readonly name: string;
  readonly child: ChildProcess;
  readonly socket: string;
  readonly stateDir: string;
  readonly log: () => string;
}

async function startBenchAgent(root: string, name: string, env: Record<string, string>): Promise<BenchAgent> {
  const stateDir = join(root, `agent-${name}`);
  const child = spawn(process.execPath, [CLI, 'start', '--state-dir', stateDir], {
    env: {
      ...process.env,
      VEHICLE_AGENT_LOG__FORMAT: 'json',
      VEHICLE_AGENT_LOG__LEVEL: 'info',
      VEHICLE_AGENT_POLICY__MAX_DENIALS: '1000',
      VEHICLE_AGENT_LOCK__AUTO_RELOCK_MS: '0',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (c: string) => {
    out += c;
  });
  child.stderr?.setEncoding('utf8').on('data', (c: string) => {
    out += c;
  });
  const deadline = Date.now() + 20_000;
  while (!out.includes('"msg":"ready"')) {
    if (child.exitCode !== null || Date.now() > deadline)
      throw new Error(`bench agent ${name} did not start: ${out}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return { name, child, socket: join(stateDir, 'control.sock'), stateDir, log: () => out };
}

/** A TCP proxy to the broker that cuts every connection after 100-400 ms: a flapping link. */
async function startFlappingProxy(
  port: number,
): Promise<{ port: number; cuts: () => number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  let cuts = 0;
  const server: Server = createServer((client) => {
    const upstream = netConnect(port, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    client.on('error', () => {});
    upstream.on('error', () => {});
    client.pipe(upstream).pipe(client);
    setTimeout(
      () => {
        cuts += 1;
        client.destroy();
        upstream.destroy();
        sockets.delete(client);
        sockets.delete(upstream);
      },
      100 + Math.random() * 300,
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return {
    port: typeof address === 'object' && address !== null ? address.port : 0,
    cuts: () => cuts,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

async function tap(agent: BenchAgent, key: ReturnType<typeof readSignerKey>): Promise<number> {
  const challenge = (await controlRequest(agent.socket, 'sim.challenge', {})) as SimChallenge;
  const message = simKeyMessage(fromB64url(challenge.challenge), challenge.vehicleId, 'unlock', true, key.id);
  const signature = b64url(signP256(key.key, message));
  const t0 = performance.now();
  const reply = (await controlRequest(agent.socket, 'sim.answer', {
    challengeId: challenge.challengeId,
    credentialId: key.id,
    intent: 'unlock',
    explicitIntent: true,
    signature,
  })) as { granted: boolean };
  const ms = performance.now() - t0;
  if (!reply.granted) throw new Error(`bench tap on ${agent.name} was denied`);
  return ms;
}

async function benchLatency(
  root: string,
  pki: TestPki,
  broker: Broker,
  taps: number,
): Promise<Record<string, number>> {
  const cert = pki.client('bench-agent');
  const cloudEnv = (url: string): Record<string, string> => ({
    VEHICLE_AGENT_CLOUD__ENABLED: 'true',
    VEHICLE_AGENT_CLOUD__URL: url,
    VEHICLE_AGENT_CLOUD__CA_FILE: pki.ca,
    VEHICLE_AGENT_CLOUD__CERT_FILE: cert.cert,
    VEHICLE_AGENT_CLOUD__KEY_FILE: cert.key,
    VEHICLE_AGENT_CLOUD__RECONNECT_MIN_MS: '100',
    VEHICLE_AGENT_CLOUD__RECONNECT_MAX_MS: '1000',
    VEHICLE_AGENT_CLOUD__CONNECT_TIMEOUT_MS: '2000',
    VEHICLE_AGENT_CLOUD__OUTBOX__POLL_MS: '20',
  });
  const hung = await startHungListener();
  const flapping = await startFlappingProxy(broker.port);
  const refusedPort = await freePort();
  const agents: BenchAgent[] = [];
  try {
    agents.push(await startBenchAgent(root, 'up', cloudEnv(broker.url)));
    agents.push(await startBenchAgent(root, 'refused', cloudEnv(`mqtts://127.0.0.1:${refusedPort}`)));
    agents.push(await startBenchAgent(root, 'hung', cloudEnv(`mqtts://localhost:${hung.port}`)));
    agents.push(await startBenchAgent(root, 'flapping', cloudEnv(`mqtts://localhost:${flapping.port}`)));
    // For context: the same agent with no cloud link at all (the ratios above are to 'up').
    agents.push(await startBenchAgent(root, 'off', {}));
    const keys = agents.map((a) => readSignerKey(join(a.stateDir, 'demo', 'driver.pem'), 'phone'));
    const samples = agents.map(() => [] as number[]);
    const warmup = 30;
    await new Promise((r) => setTimeout(r, 1500)); // the links reach their steady state
    const order = agents.map((_, k) => k);
    for (let i = 0; i < warmup + taps; i++) {
      // A fresh random order each round, and a pause after each tap so the work a tap leaves
      // behind (audit, outbox publishing) does not land on the next agent's measurement.
      for (let j = order.length - 1; j > 0; j--) {
        const r = Math.floor(Math.random() * (j + 1));
        [order[j], order[r]] = [order[r] ?? 0, order[j] ?? 0];
      }
      for (const k of order) {
        const agent = agents[k];
        const key = keys[k];
        if (!agent || !key) continue;
        const ms = await tap(agent, key);
        if (i >= warmup) samples[k]?.push(ms);
        await new Promise((r) => setTimeout(r, 4));
      }
    }
    const figures: Record<string, number> = { unlock_taps: taps };
    const up = summarise(samples[0] ?? []);
    for (const [k, agent] of agents.entries()) {
      const s = summarise(samples[k] ?? []);
      figures[`unlock_${agent.name}_p50_ms`] = round(s.p50, 3);
      figures[`unlock_${agent.name}_p99_ms`] = round(s.p99, 3);
      if (k > 0) {
        figures[`unlock_${agent.name}_p50_ratio`] = round(s.p50 / up.p50, 3);
        figures[`unlock_${agent.name}_p99_ratio`] = round(s.p99 / up.p99, 3);
      }
    }
    figures.flapping_link_cuts = flapping.cuts();
    return figures;
  } finally {
    for (const a of agents) {
      a.child.kill('SIGTERM');
      await new Promise((r) => (a.child.exitCode !== null ? r(undefined) : a.child.once('exit', r)));
    }
    await hung.close();
    await flapping.close();
  }
}

// `node dist/bench/cloud.js [--json]` runs this suite alone.
if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  benchCloud().then(
    (figures) => {
      if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify(figures, null, 2)}\n`);
      else
        for (const [k, v] of Object.entries(figures))
          process.stdout.write(`  ${k.padEnd(34)} ${String(v).padStart(12)}\n`);
    },
    (err: unknown) => {
      process.stderr.write(`bench cloud failed: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
