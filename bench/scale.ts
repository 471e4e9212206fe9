import { type ChildProcess, spawn } from 'node:child_process';
import { createECDH, createPrivateKey } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { type DecisionPolicy, decide } from '../src/access/decision.js';
import { signGrant, signRevoke } from '../src/access/keyring.js';
import { EMPTY_LIMITS } from '../src/access/rate-limit.js';
import { provisionDemo } from '../src/app/sim.js';
import { VehicleSetPublisher } from '../src/cloud/vehicle-set-publisher.js';
import { silentLogger } from '../src/core/logger.js';
import type { Credential, Presentation, PublicJwk } from '../src/core/types.js';
import { keyCredentialId } from '../src/crypto/keys.js';
import { readSignerKey } from '../src/store/key-files.js';
import { openVehicleState, type VehicleState } from '../src/store/vehicle-state.js';
import { round, summarise } from './stats.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
/** The agent runs with the NODE_OPTIONS its systemd unit sets, so the figures are the deployed ones. */
const UNIT = fileURLToPath(new URL('../../systemd/vehicle-agent.service', import.meta.url));
/** Read when an agent starts (dist/bench sits two folders below the unit; run.ts imports this file too). */
const unitNodeOptions = () => /^Environment=NODE_OPTIONS=(.*)$/m.exec(readFileSync(UNIT, 'utf8'))?.[1] ?? '';
/** Single changes timed at each size: on the demo keyring first, then once the keyring holds them all. */
const SINGLE_CHANGES = 30;

/**
 * Deadlines: none is a performance bound (figures are never judged by them); each turns a hang
 * into a failure that names the step, with every process the step started ended by PID.
 */
const IMPORT_DEADLINE_MS = (ops: number) => 120_000 + 3 * ops;
const READY_DEADLINE_MS = (credentials: number) => 60_000 + credentials;
const STOP_DEADLINE_MS = 30_000;

/** Where the suite is: printed on stderr, so a run that is ended from outside can say where it stood. */
export type Progress = (step: string) => void;

/** Figure name for a size: 10000 → 10k. */
export function sizeLabel(n: number): string {
  return n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : String(n);
}

/**
 * Issue 19: keyrings of 10 000 and 100 000 phone keys (`sizes`). For each size: bulk import with
 * `vehicle-agent keys import` (agent stopped); one grant and one revoke timed once the keyring
 * holds them all, and grants on the demo keyring first, so the ratio shows whether a change is
 * flat; decision p99; state on disk; and the real agent (dist/) started on that state: time from
 * process start to `ready` (ready_ms; start_ms is the agent's own count, after Node has loaded)
 * and its idle RSS once the background work has settled.
 */
export async function benchScale(
  sizes: readonly number[],
  progress: Progress = () => {},
): Promise<Record<string, number>> {
  const figures: Record<string, number> = {};
  const demo = tempDir('va-bench-scale-demo-', progress);
  try {
    progress('demo: provision');
    await provisionDemo({ stateDir: demo });
    const base = await startAgent(demo, 'demo', 0, progress);
    figures.demo_ready_ms = base.readyMs;
    figures.demo_start_ms = base.startMs;
    figures.demo_idle_rss_mb = base.rssMb;
  } finally {
    rmSync(demo, { recursive: true, force: true });
  }
  for (const n of sizes) {
    const k = sizeLabel(n);
    const f = await benchSize(n, progress);
    figures.keys_small_grant_p50_ms ??= f.smallGrantP50;
    figures[`keys_${k}_bulk_import_s`] = f.importS;
    figures[`keys_${k}_grant_p50_ms`] = f.grantP50;
    figures[`keys_${k}_grant_max_ms`] = f.grantMax;
    figures[`keys_${k}_grant_over_small_ratio`] = round(
      f.grantP50 / (figures.keys_small_grant_p50_ms ?? Number.NaN),
      2,
    );
    figures[`keys_${k}_revoke_p50_ms`] = f.revokeP50;
    figures[`keys_${k}_decision_p99_us`] = f.decisionP99;
    figures[`keys_${k}_state_mb`] = f.stateMb;
    figures[`keys_${k}_ready_ms`] = f.readyMs;
    figures[`keys_${k}_start_ms`] = f.startMs;
    figures[`keys_${k}_idle_rss_mb`] = f.rssMb;
    figures[`keys_${k}_bytes_per_credential`] = round(
      ((f.rssMb - (figures.demo_idle_rss_mb ?? 0)) * 1024 * 1024) / n,
      0,
    );
    for (const [name, value] of Object.entries(f.vehicleSet))
      figures[`keys_${k}_vehicle_set_${name}`] = value;
  }
  return figures;
}

function tempDir(prefix: string, progress: Progress): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  // The parent removes it if it has to end this process (then no finally here runs).
  progress(`tmpdir ${dir}`);
  return dir;
}

/**
 * A new P-256 public key. Not generateKeyPairSync + KeyObject.export({format:'jwk'}): on Node 20
 * that pair deadlocks now and then when a garbage collection during the export destroys the
 * key's finished generation job, which takes the lock the export holds (the main thread waits on
 * itself for ever; it is what hung this suite). An ECDH key pair gives the raw point directly.
 */
function newPhoneKey(): PublicJwk {
  const point = createECDH('prime256v1').generateKeys();
  return {
    kty: 'EC',
    crv: 'P-256',
    x: point.subarray(1, 33).toString('base64url'),
    y: point.subarray(33, 65).toString('base64url'),
  };
}

function phoneGrants(state: VehicleState, owner: ReturnType<typeof readSignerKey>, count: number) {
  const iat = Math.floor(Date.now() / 1000);
  const ops: string[] = [];
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const jwk = newPhoneKey();
    const credential: Credential = {
      id: keyCredentialId('phone', jwk),
      kind: 'phone',
      role: 'driver',
      name: `bench phone ${i}`,
      publicKey: jwk,
      options: {},
    };
    ids.push(credential.id);
    ops.push(signGrant(credential, state.identity.vehicleId, owner.key, owner.id, iat));
  }
  return { ops, ids };
}

/** One change as the agent makes it (Agent.changeKeyring): verify, store, apply, compact when due. */
async function change(state: VehicleState, ops: readonly string[]): Promise<void> {
  const prepared = state.keyring.prepare(ops);
  if (prepared.rejected.length > 0) throw new Error(`bench op rejected: ${prepared.rejected[0]?.message}`);
  await state.keyringStore.persist(prepared.added);
  state.keyring.apply(prepared);
  state.keyring.digest();
  await state.keyringStore.compactIfDue();
}

async function timedChanges(state: VehicleState, ops: readonly string[]): Promise<number[]> {
  const times: number[] = [];
  for (const op of ops) {
    const t = performance.now();
    await change(state, [op]);
    times.push(performance.now() - t);
  }
  return times;
}

async function benchSize(n: number, progress: Progress) {
  const k = sizeLabel(n);
  const dir = tempDir('va-bench-scale-', progress);
  try {
    await provisionDemo({ stateDir: dir });
    const owner = readSignerKey(join(dir, 'demo', 'owner.pem'));
    let state = await openVehicleState(dir, silentLogger);
    await state.keyring.whenMaterialized();
    progress(`${k}: sign ${n} grants`);
    const bulk = phoneGrants(state, owner, n);
    const small = phoneGrants(state, owner, SINGLE_CHANGES);
    const extra = phoneGrants(state, owner, SINGLE_CHANGES);
    progress(`${k}: grants on the demo keyring`);
    const smallGrants = await timedChanges(state, small.ops);
    await state.close();
    const opsFile = join(dir, 'bulk.ops');
    writeFileSync(opsFile, bulk.ops.map((op) => `${op}\n`).join(''));
    progress(`${k}: keys import`);
    const t0 = performance.now();
    // `vehicle-agent keys import` with the agent stopped: verified once, the store's batch path.
    const imported = await runCli(
      ['keys', 'import', opsFile, '--json', '--state-dir', dir],
      IMPORT_DEADLINE_MS(n),
      progress,
    );
    const importS = round((performance.now() - t0) / 1000, 2);
    if (imported.code !== 0 || (JSON.parse(imported.stdout) as { added?: unknown }).added !== n)
      throw new Error(`bench import failed (exit ${imported.code}): ${imported.stderr}`);
    rmSync(opsFile);
    progress(`${k}: grants and revokes`);
    state = await openVehicleState(dir, silentLogger);
    await state.keyring.whenMaterialized();
    const grants = await timedChanges(state, extra.ops);
    const revokes = await timedChanges(
      state,
      Array.from({ length: SINGLE_CHANGES }, (_, i) =>
        signRevoke(bulk.ids[i * 7] ?? '', state.identity.vehicleId, owner.key, owner.id, 1),
      ),
    );
    progress(`${k}: vehicle keyring set`);
    const vehicleSet = await vehicleSetCosts(state, dir, phoneGrants(state, owner, 1).ops);
    progress(`${k}: decisions`);
    const decisionP99 = decisions(state, bulk.ids);
    await state.close();
    // Reopened once so the agent starts from a compacted snapshot, as after any stop.
    state = await openVehicleState(dir, silentLogger);
    await state.keyring.whenMaterialized();
    await state.close();
    let stateBytes = 0;
    for (const name of readdirSync(dir))
      if (name.startsWith('keyring')) stateBytes += statSync(join(dir, name)).size;
    const runs = [await startAgent(dir, k, n, progress), await startAgent(dir, k, n, progress)];
    const grant = summarise(grants);
    return {
      importS,
      smallGrantP50: round(summarise(smallGrants).p50, 2),
      grantP50: round(grant.p50, 2),
      grantMax: round(grant.max, 2),
      revokeP50: round(summarise(revokes).p50, 2),
      decisionP99,
      stateMb: round(stateBytes / 1024 / 1024, 1),
      readyMs: Math.min(...runs.map((r) => r.readyMs)),
      startMs: Math.min(...runs.map((r) => r.startMs)),
      rssMb: Math.max(...runs.map((r) => r.rssMb)),
      vehicleSet,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * What the cloud link publishes of the vehicle's keyring set (docs/mqtt.md "Chunked sets"), with
 * the publisher the link uses and the messages counted instead of sent: every part at first (what
 * every change and every connect cost before stable parts), then one grant, then a reconnect with
 * no change. Time of each round and the longest the event loop waited during the grant's round.
 */
async function vehicleSetCosts(state: VehicleState, dir: string, grant: readonly string[]) {
  let bytes = 0;
  let parts = 0;
  const cloudDir = join(dir, 'bench-cloud');
  mkdirSync(cloudDir, { recursive: true });
  const publisher = await VehicleSetPublisher.open({
    vehicleId: state.identity.vehicleId,
    signer: { key: createPrivateKey(state.identity.vehicleKeyPem), kid: state.identity.vehicleKeyId },
    keyring: state.keyring,
    topics: { set: 'v/set', parts: 'v/part', manifest: 'v/manifest' },
    publish: async (topic, payload) => {
      bytes += Buffer.byteLength(payload) + Buffer.byteLength(topic);
      if (topic.startsWith('v/part/') && payload !== '') parts += 1;
    },
    nowS: () => Math.floor(Date.now() / 1000),
    maxBytes: 256 * 1024,
    stateFile: join(cloudDir, 'keyring-vehicle-set.json'),
    legacyPartsFile: join(cloudDir, 'keyring-vehicle-parts'),
    log: silentLogger,
  });
  const measure = async (ask: Parameters<VehicleSetPublisher['round']>[0]) =>
    await blocking(async () => {
      bytes = 0;
      parts = 0;
      await publisher.round(ask);
      return { kb: bytes / 1024, parts };
    });
  const none = { all: false, parts: [], manifest: false };
  const full = await measure({ ...none, manifest: true });
  await change(state, grant);
  const grantRound = await measure(none);
  const reconnect = await measure({ ...none, manifest: true });
  // The store's read of op texts alone (it reads the ops files whole), for one op.
  const first = state.keyring.heldOps().next().value?.id ?? '';
  const textRead = await blocking(async () => await state.keyring.opTextsOf(new Set([first])));
  return {
    parts: publisher.published?.parts ?? 0,
    full_mb: round(full.kb / 1024, 1),
    full_ms: round(full.ms, 0),
    grant_kb: round(grantRound.kb, 1),
    grant_parts: grantRound.parts,
    grant_ms: round(grantRound.ms, 1),
    grant_longest_block_ms: round(grantRound.longest, 1),
    reconnect_kb: round(reconnect.kb, 1),
    reconnect_parts: reconnect.parts,
    text_read_ms: round(textRead.ms, 1),
    text_read_longest_block_ms: round(textRead.longest, 1),
  };
}

/** Runs `work`, timing it and the longest the event loop waited meanwhile (a 1 ms interval). */
async function blocking<T extends object>(
  work: () => Promise<T>,
): Promise<T & { ms: number; longest: number }> {
  let last = performance.now();
  let longest = 0;
  const ticker = setInterval(() => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
  }, 1);
  const t = performance.now();
  const result = await work();
  const ms = performance.now() - t;
  clearInterval(ticker);
  longest = Math.max(longest, performance.now() - last);
  return { ...result, ms, longest };
}

function decisions(state: VehicleState, ids: readonly string[]): number {
  const policy: DecisionPolicy = {
    rateLimit: { maxDenials: 5, windowMs: 60_000, cooldownMs: 300_000 },
    answerDeadlineMs: { phone: 500 },
  };
  const now = Date.now();
  const samples: number[] = [];
  for (let i = 0; i < 60_000; i++) {
    const id = i % 10 !== 0 ? (ids[(i * 7919) % ids.length] ?? '') : `phone:unknown${i}`;
    const p: Presentation = {
      reader: 'ble0',
      kind: 'phone',
      credentialId: id,
      subject: id,
      intent: 'unlock',
      explicitIntent: true,
      proof: 'valid',
      answerMs: 20,
    };
    const t = performance.now();
    decide({
      presentation: p,
      keyring: state.keyring,
      now,
      limits: EMPTY_LIMITS,
      lastCounter: undefined,
      policy,
    });
    samples.push((performance.now() - t) * 1000);
  }
  return round(summarise(samples.slice(10_000)).p99, 2);
}

/** Whether the child has exited (by code or by signal: a killed child has no exit code). */
function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Resolves when the child has exited, or false after `ms`. */
function exitWithin(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(exited(child)), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** Ends a child this suite started, by its PID: SIGTERM, then SIGKILL if it has not gone in `ms`. */
async function endChild(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return true;
  child.kill('SIGTERM');
  if (await exitWithin(child, ms)) return true;
  child.kill('SIGKILL');
  await exitWithin(child, ms);
  return false;
}

/** Runs the CLI to its end, or kills it after `deadlineMs` and fails naming the command. */
async function runCli(
  args: readonly string[],
  deadlineMs: number,
  progress: Progress,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  progress(`vehicle-agent ${args.slice(0, 2).join(' ')}: pid ${child.pid}`);
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr = (stderr + d).slice(-4096);
  });
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  if (!(await exitWithin(child, deadlineMs))) {
    await endChild(child, 5000);
    throw new Error(
      `vehicle-agent ${args.slice(0, 2).join(' ')} did not finish in ${deadlineMs / 1000} s (killed)`,
    );
  }
  await closed;
  return { code: child.exitCode, stdout, stderr };
}

function rssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN) / 1024;
}

/**
 * Starts the real agent on `dir` (holding `credentials`): process start → `ready`, then its RSS
 * once it has settled (no growth of more than 1 MB over 2 s, at least 3 s after ready: the
 * background decode is done), then stops it with SIGTERM. Fails, with the agent ended, if it is
 * not ready, or not stopped, within its deadline.
 */
async function startAgent(
  dir: string,
  k: string,
  credentials: number,
  progress: Progress,
): Promise<{ readyMs: number; startMs: number; rssMb: number }> {
  const env = { ...process.env, VEHICLE_AGENT_LOG__FORMAT: 'json', NODE_OPTIONS: unitNodeOptions() };
  const t0 = performance.now();
  const child: ChildProcess = spawn(process.execPath, [CLI, 'start', '--state-dir', dir], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const pid = child.pid ?? 0;
  progress(`${k}: agent pid ${pid} starting`);
  let stopped = false;
  try {
    const ready = await new Promise<{ readyMs: number; startMs: number }>((resolve, reject) => {
      const deadline = READY_DEADLINE_MS(credentials);
      const timer = setTimeout(
        () => reject(new Error(`agent on ${credentials} credentials not ready in ${deadline / 1000} s`)),
        deadline,
      );
      let partial = '';
      let found = false;
      // Whole lines only: a chunk may end in the middle of the ready line.
      child.stdout?.setEncoding('utf8').on('data', (d: string) => {
        if (found) return;
        const lines = (partial + d).split('\n');
        partial = lines.pop() ?? '';
        const line = lines.find((l) => l.includes('"msg":"ready"'));
        if (line === undefined) return;
        found = true;
        partial = '';
        clearTimeout(timer);
        const readyMs = performance.now() - t0;
        try {
          resolve({ readyMs, startMs: Number((JSON.parse(line) as { startMs?: unknown }).startMs) });
        } catch {
          resolve({ readyMs, startMs: Number.NaN });
        }
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`agent exited (${code ?? signal}) before ready`));
      });
    });
    progress(`${k}: agent pid ${pid} ready, waiting for its RSS to settle`);
    await new Promise((r) => setTimeout(r, 3000));
    const samples = [rssMb(pid)];
    for (let i = 0; i < 60; i++) {
      await new Promise((r) => setTimeout(r, 500));
      samples.push(rssMb(pid));
      const recent = samples.slice(-5);
      if (recent.length === 5 && Math.max(...recent) - Math.min(...recent) < 1) break;
    }
    progress(`${k}: agent pid ${pid} stopping`);
    stopped = await endChild(child, STOP_DEADLINE_MS);
    if (!stopped)
      throw new Error(
        `agent on ${credentials} credentials did not stop within ${STOP_DEADLINE_MS / 1000} s of SIGTERM (killed)`,
      );
    return {
      readyMs: round(ready.readyMs, 1),
      startMs: ready.startMs,
      rssMb: round(samples[samples.length - 1] ?? Number.NaN, 1),
    };
  } finally {
    if (!stopped) await endChild(child, 5000);
  }
}

/** Sizes from BENCH_SCALE_SIZES (`10000,100000`). */
export function scaleSizes(text: string | undefined, fallback: readonly number[]): number[] {
  if (text === undefined || text.trim() === '') return [...fallback];
  const sizes = text.split(',').map((s) => Number(s.trim()));
  if (sizes.some((n) => !Number.isSafeInteger(n) || n < 1))
    throw new Error(`BENCH_SCALE_SIZES must be whole numbers above 0, comma-separated: ${text}`);
  return sizes;
}

/**
 * `node dist/bench/scale.js`: the suite in a process of its own (bench/run.ts starts it so, and
 * ends it if it overruns). Progress on stderr, one `scale: ` line a step; the figures as one JSON
 * line on stdout.
 */
async function main(): Promise<void> {
  const sizes = scaleSizes(process.env.BENCH_SCALE_SIZES, [10_000, 100_000]);
  const figures = await benchScale(sizes, (step) => process.stderr.write(`scale: ${step}\n`));
  process.stdout.write(`${JSON.stringify(figures)}\n`);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`scale: failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
