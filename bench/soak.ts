import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { createWriteStream, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open, unlink } from 'node:fs/promises';
import { request } from 'node:http';
import { connect as connectSocket, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { controlRequest } from '../src/cli/control-client.js';
import { AgentDriver } from '../src/cli/scenario-driver.js';
import { toAgentError } from '../src/core/errors.js';
import { freePort, ManagedBroker } from '../src/scenario/managed-broker.js';
import type { DecisionOutcome } from '../src/scenario/runner.js';
import { readAuditLog } from '../src/store/audit-log.js';
import { STATE_FILES } from '../src/store/provision.js';
import { DeliveryLedger, lossVerdict, MqttTap } from './mqtt-tap.js';
import { SoakCloud } from './soak-cloud.js';

/**
 * The chaos soak (`npm run soak -- --seconds N [--seed S]`): one real agent on simulated hardware,
 * fed seeded random keys, cards, phones and cloud commands, while the broker is restarted, frozen
 * and cut off, the state disk fills up and frees again, the control socket and status page are
 * flooded, and the agent is kill -9ed and restarted by this script (its supervisor). At the end
 * it checks the invariants and prints each with its count; exit 1 when one fails. The vehicle's
 * and the cloud's MQTT connections go through wire taps (mqtt-tap.ts), so a seq the cloud never
 * received is reported with the part that lost it.
 */

const CLI = fileURLToPath(new URL('../src/cli/launch.cjs', import.meta.url));

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const SECONDS = Number(arg('seconds') ?? 60);
const SEED = Number(arg('seed') ?? randomInt(1, 2 ** 31));
if (!Number.isInteger(SECONDS) || SECONDS < 5) throw new Error('--seconds must be a whole number >= 5');
if (!Number.isInteger(SEED)) throw new Error('--seed must be a whole number');

/** mulberry32: a small seeded generator, so a run can be replayed with --seed. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = seeded(SEED);
const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
const between = (lo: number, hi: number): number => lo + Math.floor(random() * (hi - lo));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ── what arrives at the vehicle: each with whether it must be granted ──

type Presentation =
  | { readonly kind: 'present'; readonly key: string; readonly tamper?: boolean; readonly valid: boolean }
  | { readonly kind: 'tap'; readonly card: string; readonly valid: boolean }
  | {
      readonly kind: 'approach';
      readonly key: string;
      readonly fault?: 'replay' | 'wrong_key';
      readonly valid: boolean;
    };

const PRESENTATIONS: readonly Presentation[] = [
  { kind: 'present', key: 'driver', valid: true },
  { kind: 'present', key: 'guest', valid: true },
  { kind: 'present', key: 'expired-guest', valid: false },
  { kind: 'present', key: 'revoked', valid: false },
  { kind: 'present', key: 'stranger', valid: false },
  { kind: 'present', key: 'passive', tamper: true, valid: false },
  { kind: 'tap', card: 'ntag-driver', valid: true },
  { kind: 'tap', card: 'fido-driver', valid: true },
  { kind: 'tap', card: 'fido-stranger', valid: false },
  { kind: 'tap', card: 'tag-plain', valid: false },
  { kind: 'approach', key: 'driver', valid: true },
  { kind: 'approach', key: 'guest', valid: true },
  { kind: 'approach', key: 'revoked', valid: false },
  { kind: 'approach', key: 'passive', fault: 'wrong_key', valid: false },
];

interface Tally {
  validGranted: number;
  validRateLimited: number;
  /** FIDO taps denied state_io while the disk was full: by design (docs/storage.md). */
  validFidoDiskFull: number;
  validRefused: { what: string; code: string }[];
  invalidDenied: number;
  wrongGrants: { what: string }[];
  /** Calls that never got a decision: the agent was down, restarting or busy. */
  undelivered: number;
  cloudOk: number;
  cloudUnreached: number;
  cloudRefused: number;
  forgedAccepted: number;
  forgedRefused: number;
}

const tally: Tally = {
  validGranted: 0,
  validRateLimited: 0,
  validFidoDiskFull: 0,
  validRefused: [],
  invalidDenied: 0,
  wrongGrants: [],
  undelivered: 0,
  cloudOk: 0,
  cloudUnreached: 0,
  cloudRefused: 0,
  forgedAccepted: 0,
  forgedRefused: 0,
};
const chaosCounts: Record<string, number> = {};
const count = (what: string) => {
  chaosCounts[what] = (chaosCounts[what] ?? 0) + 1;
};
/** What happened when, kept in <run folder>/soak.log (with the agent's log) for a failed run. */
const journal: string[] = [];
const note = (line: string) => journal.push(`${new Date().toISOString()} ${line}`);

// ── the set-up ──

const root = mkdtempSync(join(tmpdir(), 'va-soak-'));
const stateDir = join(root, 'state');
mkdirSync(stateDir, { mode: 0o700 });
/** A size-limited tmpfs for the state (root only): the disk can then be filled for real. */
const mounted =
  process.getuid?.() === 0 &&
  spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=24m,mode=0700', 'tmpfs', stateDir]).status === 0;
const brokerPort = await freePort();
const statusPort = await freePort();
const broker = new ManagedBroker(brokerPort);
/** Every outbox event on the wire: vehicle → broker (tapped in front of the relay) → cloud. */
const ledger = new DeliveryLedger((topic) => topic.endsWith('/events'));
const vehicleTap = new MqttTap(brokerPort, (e) => ledger.vehicle(e));
await vehicleTap.start();
const logFile = createWriteStream(join(root, 'agent.log'));
const socketPath = join(stateDir, 'control.sock');
const driver = new AgentDriver({
  socketPath,
  stateDir,
  baseDir: root,
  broker: { kind: 'managed', port: brokerPort, prefix: 'vehicle-agent' },
  managed: broker,
});
const MAX_ON_MS = 3000;
const AGENT_ENV = {
  VEHICLE_AGENT_LOG__FORMAT: 'json',
  VEHICLE_AGENT_LOG__LEVEL: 'warn',
  VEHICLE_AGENT_CLOUD__ENABLED: 'true',
  VEHICLE_AGENT_CLOUD__URL: vehicleTap.url,
  VEHICLE_AGENT_CLOUD__RECONNECT_MIN_MS: '200',
  VEHICLE_AGENT_CLOUD__RECONNECT_MAX_MS: '1000',
  VEHICLE_AGENT_CLOUD__CONNECT_TIMEOUT_MS: '2000',
  VEHICLE_AGENT_CLOUD__KEEPALIVE_S: '5',
  VEHICLE_AGENT_LOCK__MAX_ON_MS: String(MAX_ON_MS),
  VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
  VEHICLE_AGENT_STATUS_PAGE__PORT: String(statusPort),
};

// ── the supervisor: starts the agent, restarts it after a kill ──

let agent: ChildProcess | undefined;
let life = 0;
let stopping = false;

async function answers(): Promise<boolean> {
  try {
    await controlRequest(socketPath, 'status', {}, 2000);
    return true;
  } catch {
    return false;
  }
}

async function startAgent(): Promise<void> {
  for (;;) {
    life++;
    const child = spawn(process.execPath, [CLI, 'start', '--state-dir', stateDir], {
      env: { ...process.env, ...AGENT_ENV },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout?.pipe(logFile, { end: false });
    child.stderr?.pipe(logFile, { end: false });
    agent = child;
    const deadline = performance.now() + 30_000;
    while (performance.now() < deadline && child.exitCode === null && !(await answers())) await sleep(100);
    if (child.exitCode === null && (await answers())) return;
    // It did not come up (a full disk at start, say): end it and try again.
    count('agent start retried');
    child.kill('SIGKILL');
    await new Promise((r) => (child.exitCode === null ? child.once('exit', r) : r(undefined)));
    if (stopping) return;
    await sleep(500);
  }
}

async function killAgent(): Promise<void> {
  const child = agent;
  if (child === undefined || child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}

// ── relay history: the timeline of every agent life, read through `status` ──

interface Transition {
  readonly life: number;
  readonly channel: string;
  readonly energised: boolean;
  readonly atMs: number;
}
const transitions = new Map<string, Transition>();

async function sampleRelays(): Promise<void> {
  const current = life;
  try {
    for (const e of await driver.relayTimeline()) {
      const key = `${current}|${e.channel}|${e.at}|${e.energised}`;
      if (!transitions.has(key))
        transitions.set(key, {
          life: current,
          channel: e.channel,
          energised: e.energised,
          atMs: Date.parse(e.at),
        });
    }
  } catch {
    // the agent is down or busy: the next sample catches up (the timeline keeps 1000 transitions)
  }
}

// ── the cloud side: every event the vehicle's outbox sends ──

const announcedDrops: string[] = [];
const cloud = new SoakCloud({
  onEvent: ({ seq, record, again }) => {
    // The outbox says when it steps over records it could not read (`outbox.dropped`).
    if (record.type === 'outbox.dropped' && !again)
      announcedDrops.push(`${String(record.reason)} ${String(record.fromSeq)}..${String(record.toSeq)}`);
    note(`cloud: event ${seq}${again ? ' again' : ''}`);
  },
  onLink: (up) => note(`cloud: collector ${up ? 'connected' : 'disconnected'}`),
});
const eventSeqs = cloud.seqs;
let cloudTap: MqttTap | undefined;

async function startCloud(): Promise<void> {
  // Through a tap in front of the broker itself (a network cut is the vehicle's alone).
  cloudTap = new MqttTap(Number(new URL(broker.directUrl).port), (e) => ledger.cloud(e));
  await cloudTap.start();
  // The one vehicle's events; its id is not known before its agent first starts.
  await cloud.start(cloudTap.url, 'vehicle-agent');
}

// ── the workload ──

async function present(p: Presentation): Promise<DecisionOutcome> {
  switch (p.kind) {
    case 'present':
      return await driver.present({
        kind: 'present',
        key: p.key,
        intent: 'unlock',
        passive: false,
        tamper: p.tamper === true,
        delayMs: 0,
      });
    case 'tap':
      return await driver.tap({ kind: 'tap', card: p.card });
    case 'approach':
      return await driver.approach({
        kind: 'approach',
        key: p.key,
        intent: 'unlock',
        passive: false,
        slowMs: 0,
        ...(p.fault === undefined ? {} : { fault: p.fault }),
      });
  }
}

async function onePresentation(): Promise<void> {
  const p = pick(PRESENTATIONS);
  const what = `${p.kind} ${'key' in p ? p.key : p.card}${'fault' in p && p.fault ? ` (${p.fault})` : ''}${'tamper' in p && p.tamper ? ' (tampered)' : ''}`;
  let d: DecisionOutcome;
  const diskWasFull = diskFull;
  try {
    d = await present(p);
  } catch {
    tally.undelivered++;
    return;
  }
  if (p.valid) {
    if (d.granted) tally.validGranted++;
    else if (d.code === 'rate_limited') tally.validRateLimited++;
    // A FIDO key's counter must be stored before it opens (else a clone could replay it): on a
    // full disk it is denied state_io, the relay untouched (docs/storage.md).
    else if (
      d.code === 'state_io' &&
      p.kind === 'tap' &&
      p.card.startsWith('fido') &&
      (diskWasFull || diskFull)
    )
      tally.validFidoDiskFull++;
    else tally.validRefused.push({ what, code: d.code ?? '?' });
  } else if (d.granted) tally.wrongGrants.push({ what });
  else tally.invalidDenied++;
  note(`${what}: ${d.granted ? 'granted' : `denied ${d.code ?? ''}`}`);
}

async function oneCloudCommand(): Promise<void> {
  const forged = random() < 0.3;
  const command = pick(['unlock', 'lock'] as const);
  let r: Awaited<ReturnType<typeof driver.cloud>>;
  try {
    r = await driver.cloud({
      kind: 'cloud',
      command,
      args: {},
      key: forged ? 'stranger' : 'owner',
      ttlS: 30,
      timeoutMs: 3000,
    });
  } catch {
    // The control socket is flooded or the agent is down: the command never left the driver.
    tally.undelivered++;
    return;
  }
  if (forged) {
    if (r.result === 'ok') tally.forgedAccepted++;
    else tally.forgedRefused++;
  } else if (r.result === 'ok') tally.cloudOk++;
  else if (['broker_unavailable', 'result_timeout'].includes(r.result)) tally.cloudUnreached++;
  else tally.cloudRefused++;
}

// ── the chaos ──

/** Set while the disk-full chaos holds the state disk full. */
let diskFull = false;

async function fillDisk(holdMs: number): Promise<void> {
  if (!mounted) return;
  diskFull = true;
  const path = join(stateDir, 'soak-fill');
  const handle = await open(path, 'w');
  const chunk = Buffer.alloc(1 << 20);
  try {
    for (;;) await handle.write(chunk);
  } catch {
    // ENOSPC: the disk is full
  } finally {
    await handle.close();
  }
  try {
    await sleep(holdMs);
  } finally {
    await unlink(path);
    diskFull = false;
  }
}

async function floodControl(ms: number): Promise<void> {
  const sockets: Socket[] = [];
  const until = performance.now() + ms;
  while (performance.now() < until) {
    for (let i = 0; i < 20; i++) {
      const s = connectSocket(socketPath);
      s.on('error', () => {});
      s.on('connect', () => s.write(i % 2 === 0 ? `${'{'.repeat(500)}\n` : '{"id":1,"cmd":"status"}\n'));
      sockets.push(s);
    }
    await sleep(50);
    for (const s of sockets.splice(0, sockets.length - 40)) s.destroy();
  }
  for (const s of sockets) s.destroy();
}

async function floodStatusPage(ms: number): Promise<void> {
  const until = performance.now() + ms;
  const one = () =>
    new Promise<void>((resolve) => {
      const req = request(
        { host: '127.0.0.1', port: statusPort, path: pick(['/', '/healthz', '/metrics', '/nope']) },
        (res) => {
          res.resume();
          res.on('end', () => resolve());
        },
      );
      req.on('error', () => resolve());
      req.setTimeout(2000, () => req.destroy());
      req.end();
    });
  while (performance.now() < until) await Promise.all(Array.from({ length: 20 }, one));
}

const CHAOS = [
  'broker restart',
  'broker hang',
  'network cut',
  'disk full',
  'control flood',
  'status page flood',
  'agent kill -9',
] as const;

/** Each kind once, in a seeded order, before any comes again: a short run sees them all. */
const chaosQueue: (typeof CHAOS)[number][] = [];

async function oneChaos(): Promise<void> {
  if (chaosQueue.length === 0)
    chaosQueue.push(
      ...[...CHAOS]
        .map((c) => ({ c, r: random() }))
        .sort((a, b) => a.r - b.r)
        .map((x) => x.c),
    );
  const what = chaosQueue.shift() ?? 'broker restart';
  if (what === 'disk full' && !mounted) return;
  count(what);
  note(`chaos: ${what} begins`);
  const span = { what, fromMs: Date.now(), toMs: Number.POSITIVE_INFINITY };
  chaosSpans.push(span);
  try {
    await chaosOf(what);
  } finally {
    span.toMs = Date.now();
    note(`chaos: ${what} ends`);
  }
}

/** Each chaos with its wall-clock span, to say what was going on when a lost event was written. */
const chaosSpans: { what: string; fromMs: number; toMs: number }[] = [];

/**
 * Each missing seq with the part that lost it (lossVerdict: never written, written but never
 * published, published but never PUBACKed, PUBACKed but never delivered to the cloud, delivered
 * but never reported), from the audit log and the two wire taps; with its record's type and write
 * time, when the broker acknowledged it (reason code, and whether the cloud was connected then),
 * and the chaos under way within a second of it. An outbox that steps over records also logs
 * "audit records gone before they were sent" in agent.log.
 */
async function describeMissing(missing: readonly number[]): Promise<string> {
  const first = missing[0];
  const last = missing.at(-1);
  if (first === undefined || last === undefined) return '';
  const written = new Map<number, { type: string; ts: string }>();
  let unreadable = '';
  try {
    for await (const r of readAuditLog(join(stateDir, STATE_FILES.audit), first, { untilSeq: last }))
      written.set(r.seq, { type: r.type, ts: r.ts });
  } catch (err) {
    unreadable = ` (could not read the audit log: ${toAgentError(err).message})`;
  }
  const iso = (ms: number) => new Date(ms).toISOString();
  const lines = missing.map((seq) => {
    const record = written.get(seq);
    const trace = ledger.trace(seq);
    // An unreadable log says nothing of whether it was written: the wire decides then.
    const verdict = lossVerdict(record !== undefined || unreadable !== '', trace, eventSeqs.has(seq));
    const parts = [`${seq} ${verdict}`];
    if (record) parts.push(`${record.type} written ${record.ts}`);
    parts.push(`published ${trace.published.length}x`);
    for (const ack of trace.acked)
      parts.push(
        `PUBACK 0x${ack.reasonCode.toString(16).padStart(2, '0')} on connection ${ack.connection} at ${iso(ack.atMs)} (cloud ${cloud.connectedAt(ack.atMs) ? 'connected' : 'not connected'})`,
      );
    if (trace.delivered.length) parts.push(`delivered to the cloud ${trace.delivered.length}x`);
    // The chaos around its writing and around each acknowledgement.
    const times = [...(record ? [Date.parse(record.ts)] : []), ...trace.acked.map((a) => a.atMs)];
    const during = new Set(
      chaosSpans
        .filter((c) => times.some((at) => c.fromMs - 1000 <= at && at <= c.toMs + 1000))
        .map((c) => c.what),
    );
    parts.push(`chaos: ${during.size ? [...during].join(', ') : 'none'}`);
    return parts.join(', ');
  });
  return ` [${lines.join('; ')}]${unreadable}`;
}

async function chaosOf(what: (typeof CHAOS)[number]): Promise<void> {
  switch (what) {
    case 'broker restart':
      await broker.broker('restart');
      return;
    case 'broker hang':
      await broker.broker('hang');
      try {
        await sleep(between(1000, 4000));
      } finally {
        await broker.broker('resume');
      }
      return;
    case 'network cut':
      broker.network('down');
      try {
        await sleep(between(1000, 4000));
      } finally {
        broker.network('up');
      }
      return;
    case 'disk full':
      await fillDisk(between(1000, 4000));
      return;
    case 'control flood':
      await floodControl(between(1000, 3000));
      return;
    case 'status page flood':
      await floodStatusPage(between(1000, 3000));
      return;
    case 'agent kill -9':
      await sampleRelays();
      await killAgent();
      await startAgent();
      return;
  }
}

// ── the invariants ──

interface Invariant {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
}

function relayInvariant(): Invariant {
  const byLife = new Map<string, Transition[]>();
  for (const t of transitions.values()) {
    const k = `${t.life}|${t.channel}`;
    byLife.set(k, [...(byLife.get(k) ?? []), t]);
  }
  let pulses = 0;
  let longest = 0;
  let overLimit = 0;
  let cutByKill = 0;
  for (const list of byLife.values()) {
    list.sort((a, b) => a.atMs - b.atMs);
    let onAt: number | undefined;
    for (const t of list) {
      if (t.energised) onAt ??= t.atMs;
      else if (onAt !== undefined) {
        const ms = t.atMs - onAt;
        pulses++;
        longest = Math.max(longest, ms);
        if (ms > MAX_ON_MS) overLimit++;
        onAt = undefined;
      }
    }
    if (onAt !== undefined) cutByKill++;
  }
  return {
    name: 'no relay energised past its limit',
    ok: overLimit === 0,
    detail: `${pulses} pulses, longest ${longest} ms (limit ${MAX_ON_MS} ms), ${overLimit} over; ${cutByKill} on when their agent was killed (their release is the relay guard's, not seen here)`,
  };
}

async function main(): Promise<number> {
  const started = performance.now();
  process.stdout.write(
    `soak: seed ${SEED} (rerun: npm run soak -- --seconds ${SECONDS} --seed ${SEED}), ${SECONDS} s, state on ${mounted ? 'a 24 MiB tmpfs' : 'the plain disk (not root: no disk-full chaos)'}\n`,
  );
  await broker.start();
  // Subscribed before the agent's first event: the broker drops what nobody subscribed to yet.
  await startCloud();
  await startAgent();
  const end = started + SECONDS * 1000;
  let presentations = 0;
  let commands = 0;
  const workload = (async () => {
    while (performance.now() < end) {
      if (random() < 0.15) {
        commands++;
        await oneCloudCommand();
      } else {
        presentations++;
        await onePresentation();
      }
      await sleep(between(50, 400));
    }
  })();
  const sampler = (async () => {
    while (performance.now() < end) {
      await sampleRelays();
      await sleep(250);
    }
  })();
  const chaos = (async () => {
    await sleep(1000);
    while (performance.now() < end - 3000) {
      await oneChaos();
      await sleep(between(500, 1500));
    }
  })();
  await Promise.all([workload, sampler, chaos]);
  // Calm: every outage over; the agent flushes its outbox to the cloud.
  process.stdout.write('soak: chaos over; waiting for the outbox to drain\n');
  let outbox: { lastSeq?: number; pending?: number; dropped?: number } = {};
  const drainBy = performance.now() + 60_000;
  while (performance.now() < drainBy) {
    try {
      const status = (await controlRequest(socketPath, 'cloud.status', {}, 3000)) as {
        outbox?: typeof outbox;
      };
      outbox = status.outbox ?? {};
      const last = outbox.lastSeq ?? 0;
      if ((outbox.pending ?? 1) === 0 && [...Array(last).keys()].every((i) => eventSeqs.has(i + 1))) break;
    } catch {
      // busy: try again
    }
    await sleep(500);
  }
  await sampleRelays();
  stopping = true;
  await new Promise((r) => {
    const child = agent;
    if (child === undefined || child.exitCode !== null) return r(undefined);
    child.once('exit', r);
    child.kill('SIGTERM');
  });
  const verify = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--state-dir', stateDir, '--json'], {
    encoding: 'utf8',
  });
  const lastSeq = outbox.lastSeq ?? 0;
  const missing = [...Array(lastSeq).keys()].map((i) => i + 1).filter((s) => !eventSeqs.has(s));
  const missingDetail = await describeMissing(missing.slice(0, 10));
  const validTotal =
    tally.validGranted + tally.validRateLimited + tally.validFidoDiskFull + tally.validRefused.length;
  const refusedCodes = [...new Set(tally.validRefused.map((r) => `${r.what}: ${r.code}`))].slice(0, 5);
  const invariants: Invariant[] = [
    {
      name: 'no grant that should not have happened',
      ok: tally.wrongGrants.length === 0 && tally.forgedAccepted === 0,
      detail: `${tally.invalidDenied} invalid presentations denied, ${tally.wrongGrants.length} granted${tally.wrongGrants.length ? ` (${tally.wrongGrants.map((w) => w.what).join(', ')})` : ''}; ${tally.forgedRefused} forged cloud commands refused, ${tally.forgedAccepted} accepted`,
    },
    {
      name: 'every valid presentation granted unless rate limited',
      ok: tally.validRefused.length === 0 && tally.validGranted > 0,
      detail: `${tally.validGranted} of ${validTotal} granted, ${tally.validRateLimited} rate limited, ${tally.validFidoDiskFull} FIDO taps denied state_io on the full disk (by design), ${tally.validRefused.length} refused${refusedCodes.length ? ` (${refusedCodes.join('; ')})` : ''}`,
    },
    {
      name: 'the audit chain verifies',
      ok: verify.status === 0,
      detail: `vehicle-agent audit verify exit ${verify.status}: ${(verify.stdout || verify.stderr).trim().slice(0, 300)}`,
    },
    {
      name: 'the cloud received every outbox sequence number',
      ok: lastSeq > 0 && missing.length === 0,
      detail: `${lastSeq - missing.length} of ${lastSeq} received (${eventSeqs.size} distinct), ${missing.length} missing${missing.length ? ` (${missing.slice(0, 10).join(', ')}${missing.length > 10 ? ', ...' : ''})${missingDetail}` : ''}; the outbox announced ${announcedDrops.length ? `drops: ${announcedDrops.slice(0, 5).join(', ')}` : 'no drops'}${ledger.noSubscriberAcks ? `; the broker acknowledged ${ledger.noSubscriberAcks} events with "no matching subscribers" (0x10)` : ''}`,
    },
    relayInvariant(),
  ];
  process.stdout.write(
    `soak: ${presentations} presentations (${tally.undelivered} undelivered: agent down or busy), ${commands} cloud commands (${tally.cloudOk} ok, ${tally.cloudUnreached} unreached, ${tally.cloudRefused} refused), ${life} agent starts\n`,
  );
  process.stdout.write(
    `soak: chaos: ${Object.entries(chaosCounts)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}\n`,
  );
  for (const inv of invariants)
    process.stdout.write(`${inv.ok ? 'ok  ' : 'FAIL'}  ${inv.name}: ${inv.detail}\n`);
  const failed = invariants.filter((i) => !i.ok).length;
  process.stdout.write(
    `soak: ${failed === 0 ? 'passed' : `FAILED (${failed} invariant(s)); kept in ${root}: agent.log, soak.log, state-copy/`}\n`,
  );
  return failed === 0 ? 0 : 1;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  process.stderr.write(`soak: ${toAgentError(err).message}\n`);
} finally {
  stopping = true;
  await killAgent().catch(() => {});
  await cloud.close().catch(() => {});
  await cloudTap?.close().catch(() => {});
  await vehicleTap.close().catch(() => {});
  await broker.close().catch(() => {});
  if (code !== 0) {
    // Kept for whoever looks into it: the run's journal and the state the agent left.
    writeFileSync(join(root, 'soak.log'), `${journal.join('\n')}\n`);
    spawnSync('cp', ['-a', stateDir, join(root, 'state-copy')]);
  }
  if (mounted) spawnSync('umount', ['-l', stateDir]);
  logFile.end();
  if (code === 0) rmSync(root, { recursive: true, force: true });
}
process.exit(code);
