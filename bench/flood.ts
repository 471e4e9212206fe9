import { type ChildProcess, fork, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { expectedCredentialId } from '../src/access/credential-wire.js';
import { signGrant } from '../src/access/keyring.js';
import { controlRequest } from '../src/cli/control-client.js';
import type { Credential } from '../src/core/types.js';
import { b64url, fromB64url } from '../src/crypto/encoding.js';
import { p256JwkFromRaw, uidHash } from '../src/crypto/keys.js';
import { type ByteLink, openSerialLink } from '../src/nfc/pn532/link.js';
import { startPrivateDbus } from '../src/sim/dbus-daemon.js';
import { type SocatPtyPair, startSocatPtyPair } from '../src/sim/socat-pty.js';
import { readSignerKey } from '../src/store/key-files.js';
import { type Broker, makeTestPki, startBroker } from '../test/helpers/mosquitto.js';
import { niceOfUnit } from './deployed-nice.js';
import type { Pn532HostReply, Pn532HostRequest } from './pn532-host.js';
import { round, summarise } from './stats.js';

/**
 * The flood benchmark (issue 12): how much a flood on an outside interface delays a valid key at
 * the reader. One real agent process (from dist/, at the systemd unit's niceness) with a PN532 on
 * a socat pty (the emulator and its FIDO key in a process of their own, bench/pn532-host.ts), an
 * LCUS relay board on a second pty, the cloud link to a real Mosquitto over TLS (client
 * certificates) and the status page on loopback. A FIDO tap is placed, the agent reads, verifies
 * and decides, and the relay frame reaching the board is the end of the tap. Tap-to-relay p50/p99
 * is measured quiet, then while each flood runs, and printed as ratios to the quiet figures of the
 * same run, with the presentations denied (no relay within 3 s) and the agent's RSS growth.
 *
 * Flood generators are modules in bench/floods/ (every .js there that exports `start`), each run
 * in a child process of its own so its work never lands on the process that timestamps relays:
 *
 *     export async function start(target: FloodTarget): Promise<RunningFlood>
 *
 * `start` resolves once the flood is on (a steady rate reached, or a burst launched); the taps run
 * from then on. `stop()` ends it and resolves with its counts (`sent` at least), printed as
 * `<name>_<count>`. A module may also export `agentEnv: Record<string, string>`, merged into the
 * agent's environment (to switch on what it floods). FloodTarget below is all a generator gets.
 *
 *   npm run bench -- --only=flood               every flood
 *   FLOODS=mqtt-burst,mqtt-rate npm run bench -- --only=flood
 *   FLOOD_TAPS=100                              taps per phase (default 200)
 * Figures only; no assertions. Needs mosquitto, socat and openssl.
 */

/** Everything a flood generator knows about the agent under test (plain data, sent to its process). */
export interface FloodTarget {
  readonly vehicleId: string;
  readonly stateDir: string;
  /** The agent's control socket (unix). */
  readonly controlSocket: string;
  /** PID of the agent process. */
  readonly agentPid: number;
  /** The broker and a cloud-side client certificate the broker accepts (file paths). */
  readonly mqtt: {
    readonly url: string;
    readonly host: string;
    readonly port: number;
    readonly ca: string;
    readonly cert: string;
    readonly key: string;
    /** <topicPrefix>/<vehicleId>. */
    readonly base: string;
  };
  /** The status page: base URL and the admin token. */
  readonly statusPage: { readonly url: string; readonly adminToken: string };
  /**
   * The private D-Bus the agent's BLE link uses as its system bus (driver bluez). Nothing owns
   * org.bluez there until a radio flood puts its BlueZ stand-in on it, so the link idles.
   */
  readonly ble: { readonly busAddress: string };
}

export type FloodCounts = Readonly<Record<string, number>>;

export interface RunningFlood {
  stop(): Promise<FloodCounts>;
}

export type StartFlood = (target: FloodTarget) => Promise<RunningFlood>;

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const SELF = fileURLToPath(import.meta.url);
const FLOODS_DIR = fileURLToPath(new URL('./floods', import.meta.url));
const RELAY_TIMEOUT_MS = 3000;
const GAP_MS = 60;
const WARMUP = 10;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const hrMs = (from: bigint, to: bigint) => Number(to - from) / 1e6;

// ── the relay: the one observation to swap when relays are timed another way ─────────────────

/** When the relay switched: CLOCK_MONOTONIC ns (process.hrtime, shared by processes). */
export interface RelayClock {
  /** The first relay energised at or after `after`, or undefined when none within `timeoutMs`. */
  nextEnergised(after: bigint, timeoutMs: number): Promise<bigint | undefined>;
  close(): Promise<void>;
}

/**
 * An LCUS relay board on the far end of a pty: a relay frame (A0 ch 01 sum) reaching the board is
 * the relay switching (a real board switches within its 10 ms contact time of the same bytes).
 */
async function lcusRelayClock(device: string): Promise<RelayClock> {
  const link: ByteLink = await openSerialLink(device, 9600);
  const energised: bigint[] = [];
  const waiters = new Set<() => void>();
  let pending: number[] = [];
  link.onData((chunk) => {
    const at = process.hrtime.bigint();
    pending.push(...chunk);
    while (pending.length >= 4) {
      const start = pending.indexOf(0xa0);
      if (start < 0) {
        pending = [];
        break;
      }
      if (pending.length - start < 4) {
        pending = pending.slice(start);
        break;
      }
      const [, channel = 0, state = 0, sum = 0] = pending.slice(start, start + 4);
      pending = pending.slice(start + 4);
      if (((0xa0 + channel + state) & 0xff) === sum && state === 1) energised.push(at);
    }
    for (const w of [...waiters]) w();
  });
  return {
    nextEnergised: (after, timeoutMs) =>
      new Promise((resolve) => {
        const take = (): bigint | undefined => {
          const i = energised.findIndex((t) => t >= after);
          if (i < 0) return undefined;
          const at = energised[i];
          energised.splice(0, i + 1);
          return at;
        };
        const now = take();
        if (now !== undefined) return resolve(now);
        const waiter = () => {
          const at = take();
          if (at === undefined) return;
          clearTimeout(timer);
          waiters.delete(waiter);
          resolve(at);
        };
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          resolve(undefined);
        }, timeoutMs);
        waiters.add(waiter);
      }),
    close: () => link.close(),
  };
}

// ── the chip: PN532 emulator with a FIDO key, in its own process ──────────────────────────────

interface ChipHost {
  ask<T extends Pn532HostReply['type']>(
    request: Pn532HostRequest,
    type: T,
  ): Promise<Extract<Pn532HostReply, { type: T }>>;
  stop(): Promise<void>;
}

function startChipHost(): ChipHost {
  const child = fork(fileURLToPath(new URL('./pn532-host.js', import.meta.url)), [], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return {
    ask: <T extends Pn532HostReply['type']>(request: Pn532HostRequest, type: T) =>
      new Promise<Extract<Pn532HostReply, { type: T }>>((resolve, reject) => {
        const onMessage = (reply: Pn532HostReply): void => {
          if (reply.type !== type && reply.type !== 'error') return;
          child.off('message', onMessage);
          child.off('exit', onExit);
          if (reply.type === 'error') reject(new Error(`PN532 host: ${reply.message}`));
          else resolve(reply as Extract<Pn532HostReply, { type: T }>);
        };
        const onExit = (): void => {
          child.off('message', onMessage);
          reject(new Error('the PN532 host exited'));
        };
        child.on('message', onMessage);
        child.once('exit', onExit);
        child.send(request);
      }),
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      if (child.connected) child.send({ type: 'stop' } satisfies Pn532HostRequest);
      else child.kill('SIGTERM');
      await exited;
      clearTimeout(timer);
    },
  };
}

// ── the agent process ─────────────────────────────────────────────────────────────────────────

interface AgentUnderTest {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly output: () => string;
  stop(): Promise<void>;
}

function runCli(args: readonly string[]): string {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`vehicle-agent ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/** Starts `vehicle-agent start` at the niceness of the shipped unit (all its threads, as systemd does). */
async function startAgentUnderTest(stateDir: string, env: Record<string, string>): Promise<AgentUnderTest> {
  const nice = niceOfUnit(
    readFileSync(new URL('../../systemd/vehicle-agent.service', import.meta.url), 'utf8'),
  );
  const root = process.getuid?.() === 0;
  const command = root ? 'nice' : process.execPath;
  const args = [
    ...(root ? ['-n', String(nice), process.execPath] : []),
    CLI,
    'start',
    '--state-dir',
    stateDir,
  ];
  const child = spawn(command, args, {
    env: { ...process.env, VEHICLE_AGENT_LOG__FORMAT: 'json', VEHICLE_AGENT_LOG__LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // The log is read and dropped (journald would take it); only a window is kept for errors.
  let tail = '';
  let ready = false;
  const keep = (chunk: string) => {
    if (!ready && chunk.includes('"msg":"ready"')) ready = true;
    tail = (tail + chunk).slice(-20_000);
  };
  child.stdout?.setEncoding('utf8').on('data', keep);
  child.stderr?.setEncoding('utf8').on('data', keep);
  const deadline = Date.now() + 30_000;
  while (!ready) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the agent did not start: ${tail}`);
    await sleep(20);
  }
  return {
    child,
    pid: child.pid ?? 0,
    output: () => tail,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

function rssBytes(pid: number): number {
  try {
    const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match?.[1] === undefined ? 0 : Number(match[1]) * 1024;
  } catch {
    return 0;
  }
}

/** CPU time of a process, seconds (utime + stime of every thread). */
function cpuSeconds(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

/** Waits until the agent has been nearly idle for a second (a flood's backlog worked off), at most `maxMs`. */
async function settle(pid: number, maxMs = 60_000): Promise<number> {
  const started = Date.now();
  let last = cpuSeconds(pid);
  while (Date.now() - started < maxMs) {
    await sleep(1000);
    const now = cpuSeconds(pid);
    if (now - last < 0.05) break;
    last = now;
  }
  return Date.now() - started;
}

// ── flood generators, each in a child process ────────────────────────────────────────────────

type ChildRequest =
  | { readonly type: 'start'; readonly module: string; readonly target: FloodTarget }
  | { readonly type: 'stop' };
type ChildReply =
  | { readonly type: 'started' }
  | { readonly type: 'stopped'; readonly counts: FloodCounts }
  | { readonly type: 'error'; readonly message: string };

interface FloodModule {
  readonly name: string;
  readonly path: string;
  readonly agentEnv: Record<string, string>;
}

async function discoverFloods(): Promise<FloodModule[]> {
  const only = process.env.FLOODS?.split(',').filter((s) => s !== '');
  const found: FloodModule[] = [];
  for (const file of readdirSync(FLOODS_DIR).sort()) {
    if (!file.endsWith('.js') || file.endsWith('-host.js')) continue;
    const name = file.slice(0, -3);
    if (only && !only.includes(name)) continue;
    const path = join(FLOODS_DIR, file);
    const mod = (await import(pathToFileURL(path).href)) as { start?: unknown; agentEnv?: unknown };
    if (typeof mod.start !== 'function') continue; // a helper module, not a flood
    found.push({ name, path, agentEnv: (mod.agentEnv as Record<string, string> | undefined) ?? {} });
  }
  return found;
}

interface FloodProcess {
  stop(): Promise<FloodCounts>;
}

async function startFloodProcess(flood: FloodModule, target: FloodTarget): Promise<FloodProcess> {
  const child = fork(SELF, ['--flood-child'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const next = <T extends ChildReply['type']>(type: T) =>
    new Promise<Extract<ChildReply, { type: T }>>((resolve, reject) => {
      const onMessage = (reply: ChildReply) => {
        if (reply.type !== type && reply.type !== 'error') return;
        child.off('message', onMessage);
        child.off('exit', onExit);
        if (reply.type === 'error') reject(new Error(`flood ${flood.name}: ${reply.message}`));
        else resolve(reply as Extract<ChildReply, { type: T }>);
      };
      const onExit = () => reject(new Error(`flood ${flood.name} exited`));
      child.on('message', onMessage);
      child.once('exit', onExit);
    });
  const started = next('started');
  child.send({ type: 'start', module: flood.path, target } satisfies ChildRequest);
  await started;
  return {
    stop: async () => {
      const stopped = next('stopped');
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.send({ type: 'stop' } satisfies ChildRequest);
      const { counts } = await stopped;
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
      return counts;
    },
  };
}

function runFloodChild(): void {
  let running: RunningFlood | undefined;
  const send = (reply: ChildReply) => process.send?.(reply);
  process.on('message', (raw: unknown) => {
    const request = raw as ChildRequest;
    void (async () => {
      try {
        if (request.type === 'start') {
          const mod = (await import(pathToFileURL(request.module).href)) as { start: StartFlood };
          running = await mod.start(request.target);
          send({ type: 'started' });
        } else {
          const counts = (await running?.stop()) ?? {};
          send({ type: 'stopped', counts });
          process.disconnect?.();
        }
      } catch (err) {
        send({ type: 'error', message: err instanceof Error ? (err.stack ?? err.message) : String(err) });
      }
    })();
  });
}

// ── the run ───────────────────────────────────────────────────────────────────────────────────

interface PhaseResult {
  readonly taps: number[];
  readonly denied: number;
  readonly rssBefore: number;
  readonly rssMax: number;
}

export async function benchFlood(options: { taps?: number } = {}): Promise<Record<string, number>> {
  const taps = options.taps ?? Number(process.env.FLOOD_TAPS ?? 200);
  const floods = await discoverFloods();
  const root = mkdtempSync(join(tmpdir(), 'va-bench-flood-'));
  const cleanups: (() => Promise<unknown>)[] = [];
  try {
    const pki = makeTestPki(join(root, 'pki'));
    const broker: Broker = await startBroker(pki, join(root, 'broker'), { persistence: false });
    cleanups.unshift(() => broker.stop());
    const nfcPty: SocatPtyPair = await startSocatPtyPair(root, 'pn532');
    cleanups.unshift(() => nfcPty.stop());
    const relayPty: SocatPtyPair = await startSocatPtyPair(root, 'lcus');
    cleanups.unshift(() => relayPty.stop());
    const relay = await lcusRelayClock(relayPty.device);
    cleanups.unshift(() => relay.close());
    const chip = startChipHost();
    cleanups.unshift(() => chip.stop());
    const bus = await startPrivateDbus();
    cleanups.unshift(() => bus.stop());

    const stateDir = join(root, 'state');
    runCli(['init', '--demo', '--state-dir', stateDir]);
    const vehicle = JSON.parse(readFileSync(join(stateDir, 'vehicle.json'), 'utf8')) as { vehicleId: string };
    const vehicleId = vehicle.vehicleId;
    const agentCert = pki.client('vehicle');
    const cloudCert = pki.client('cloud');
    const adminToken = b64url(Buffer.from(`bench-flood-admin-${Date.now()}`));
    const tokenFile = join(root, 'admin-token');
    writeFileSync(tokenFile, `${adminToken}\n`, { mode: 0o600 });
    const env: Record<string, string> = {
      VEHICLE_AGENT_RELAY__DRIVER: 'lcus',
      VEHICLE_AGENT_RELAY__LCUS__PATH: relayPty.host,
      VEHICLE_AGENT_LOCK__PULSE_MS: '20',
      VEHICLE_AGENT_LOCK__AUTO_RELOCK_MS: '0',
      VEHICLE_AGENT_NFC__ENABLED: 'true',
      VEHICLE_AGENT_NFC__DRIVER: 'pn532',
      VEHICLE_AGENT_NFC__PATH: nfcPty.host,
      VEHICLE_AGENT_POLICY__MAX_DENIALS: '1000',
      VEHICLE_AGENT_CLOUD__ENABLED: 'true',
      VEHICLE_AGENT_CLOUD__URL: broker.url,
      VEHICLE_AGENT_CLOUD__CA_FILE: pki.ca,
      VEHICLE_AGENT_CLOUD__CERT_FILE: agentCert.cert,
      VEHICLE_AGENT_CLOUD__KEY_FILE: agentCert.key,
      VEHICLE_AGENT_CLOUD__RECONNECT_MIN_MS: '200',
      VEHICLE_AGENT_CLOUD__RECONNECT_MAX_MS: '2000',
      VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
      VEHICLE_AGENT_STATUS_PAGE__PORT: '0',
      VEHICLE_AGENT_STATUS_PAGE__ADMIN_TOKEN_FILE: tokenFile,
      // The BLE reader on, through BlueZ on a private bus: radio floods reach the real link.
      VEHICLE_AGENT_BLE__ENABLED: 'true',
      VEHICLE_AGENT_BLE__DRIVER: 'bluez',
      DBUS_SYSTEM_BUS_ADDRESS: bus.address,
    };
    for (const f of floods) Object.assign(env, f.agentEnv);
    const agent = await startAgentUnderTest(stateDir, env);
    cleanups.unshift(() => agent.stop());
    const socket = join(stateDir, 'control.sock');
    const statusUrl = /"url":"(http:[^"]+)"[^\n]*"msg":"status page listening"/.exec(agent.output())?.[1];

    // The FIDO key of the emulator, enrolled with the demo owner key.
    const ready = await chip.ask(
      { type: 'start', device: nfcPty.device, vehicleId, siteKey: b64url(new Uint8Array(16)) },
      'ready',
    );
    const fidoCred = {
      publicKey: p256JwkFromRaw(fromB64url(ready.fido.publicKey)),
      keyHandle: ready.fido.keyHandle,
      uidHash: uidHash(vehicleId, Uint8Array.from(Buffer.from(ready.fido.uid, 'hex'))),
    };
    const credential: Credential = {
      id: expectedCredentialId('fido', fidoCred),
      kind: 'fido',
      role: 'driver',
      options: {},
      ...fidoCred,
    };
    const owner = readSignerKey(join(stateDir, 'demo', 'owner.pem'));
    const grant = signGrant(credential, vehicleId, owner.key, owner.id, Math.floor(Date.now() / 1000) - 60);
    await controlRequest(socket, 'keys.add', { ops: [grant] });
    await waitForCloud(socket);

    const target: FloodTarget = {
      vehicleId,
      stateDir,
      controlSocket: socket,
      agentPid: agent.pid,
      mqtt: {
        url: broker.url,
        host: 'localhost',
        port: broker.port,
        ca: pki.ca,
        cert: cloudCert.cert,
        key: cloudCert.key,
        base: `vehicle-agent/${vehicleId}`,
      },
      statusPage: { url: statusUrl ?? '', adminToken },
      ble: { busAddress: bus.address },
    };

    /** One tap of the FIDO key: ms from the card entering the field to the relay frame, or undefined. */
    const tap = async (): Promise<number | undefined> => {
      const { placedAt } = await chip.ask({ type: 'place', kind: 'fido' }, 'placed');
      const start = BigInt(placedAt);
      const relayAt = await relay.nextEnergised(start, RELAY_TIMEOUT_MS);
      await chip.ask({ type: 'remove', relayAt: String(relayAt ?? process.hrtime.bigint()) }, 'tap');
      return relayAt === undefined ? undefined : hrMs(start, relayAt);
    };
    const phase = async (count: number): Promise<PhaseResult> => {
      const rssBefore = rssBytes(agent.pid);
      let rssMax = rssBefore;
      const sampler = setInterval(() => {
        rssMax = Math.max(rssMax, rssBytes(agent.pid));
      }, 100);
      const samples: number[] = [];
      let denied = 0;
      try {
        for (let i = 0; i < count; i++) {
          const ms = await tap();
          if (ms === undefined) denied += 1;
          else samples.push(ms);
          await sleep(GAP_MS);
        }
      } finally {
        clearInterval(sampler);
      }
      rssMax = Math.max(rssMax, rssBytes(agent.pid));
      return { taps: samples, denied, rssBefore, rssMax };
    };

    /** The agent's own decision counts (status): tells a denial from a tap that never reached a decision. */
    const decisions = async (): Promise<{ granted: number; denied: number }> => {
      const s = (await controlRequest(socket, 'status', {})) as {
        decisions?: { granted: number; denied: number };
      };
      return s.decisions ?? { granted: 0, denied: 0 };
    };
    const figures: Record<string, number> = {};
    await phase(WARMUP);
    const quiet = await phase(taps);
    const q = summarise(quiet.taps);
    figures.quiet_tap_p50_ms = round(q.p50, 2);
    figures.quiet_tap_p99_ms = round(q.p99, 2);
    figures.quiet_denied = quiet.denied;
    figures.quiet_rss_mb = round(quiet.rssBefore / 2 ** 20, 1);
    for (const flood of floods) {
      const decided = await decisions();
      const running = await startFloodProcess(flood, target);
      let result: PhaseResult;
      let counts: FloodCounts;
      try {
        result = await phase(taps);
      } finally {
        counts = await running.stop();
      }
      const settledMs = await settle(agent.pid);
      const after = await decisions();
      const s = summarise(result.taps);
      const n = flood.name;
      figures[`${n}_tap_p50_ms`] = round(s.p50, 2);
      figures[`${n}_tap_p99_ms`] = round(s.p99, 2);
      figures[`${n}_p50_ratio`] = round(s.p50 / q.p50, 2);
      figures[`${n}_p99_ratio`] = round(s.p99 / q.p99, 2);
      figures[`${n}_denied`] = result.denied;
      // Taps with no relay within 3 s, split: the agent refused, or it decided nothing (the tap was lost on the way).
      figures[`${n}_agent_denials`] = after.denied - decided.denied;
      figures[`${n}_agent_grants`] = after.granted - decided.granted;
      figures[`${n}_rss_growth_mb`] = round((result.rssMax - result.rssBefore) / 2 ** 20, 1);
      figures[`${n}_settle_s`] = round(settledMs / 1000, 1);
      for (const [k, v] of Object.entries(counts)) figures[`${n}_${k}`] = v;
    }
    figures.agent_rss_end_mb = round(rssBytes(agent.pid) / 2 ** 20, 1);
    return figures;
  } finally {
    for (const cleanup of cleanups) await cleanup().catch(() => {});
    rmSync(root, { recursive: true, force: true });
  }
}

/** Waits until the agent's cloud link is up (the status page and `status` say so through cloud.status). */
async function waitForCloud(socket: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    try {
      const s = (await controlRequest(socket, 'cloud.status', {})) as { connected?: boolean };
      if (s.connected === true) return;
    } catch {
      // not yet
    }
    await sleep(100);
  }
  throw new Error('the cloud link did not come up');
}

if (process.argv.includes('--flood-child')) runFloodChild();
else if (process.argv[1] !== undefined && SELF === process.argv[1]) {
  // `node dist/bench/flood.js`: the suite alone.
  benchFlood().then(
    (figures) => {
      for (const [k, v] of Object.entries(figures))
        process.stdout.write(`  ${k.padEnd(36)} ${String(v).padStart(12)}\n`);
    },
    (err: unknown) => {
      process.stderr.write(`bench flood failed: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
