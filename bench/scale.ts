import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type DecisionPolicy, decide } from '../src/access/decision.js';
import { signGrant, signRevoke } from '../src/access/keyring.js';
import { EMPTY_LIMITS } from '../src/access/rate-limit.js';
import { provisionDemo } from '../src/app/sim.js';
import { silentLogger } from '../src/core/logger.js';
import type { Credential, Presentation } from '../src/core/types.js';
import { keyCredentialId, publicJwkOf } from '../src/crypto/keys.js';
import { readSignerKey } from '../src/store/key-files.js';
import { openVehicleState, type VehicleState } from '../src/store/vehicle-state.js';
import { round, summarise } from './stats.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
/** The agent runs with the NODE_OPTIONS its systemd unit sets, so the figures are the deployed ones. */
const UNIT = fileURLToPath(new URL('../../systemd/vehicle-agent.service', import.meta.url));
const UNIT_NODE_OPTIONS = /^Environment=NODE_OPTIONS=(.*)$/m.exec(readFileSync(UNIT, 'utf8'))?.[1] ?? '';
/** Single changes timed at each size, after the bulk import (the agent's path: verify, store, apply). */
const SINGLE_CHANGES = 30;

/**
 * Issue 19: a keyring of 10 000 and 100 000 phone keys. For each size: bulk import with
 * `vehicle-agent keys import` (agent stopped), the time of one grant and one revoke once the keyring holds them all (flat = constant
 * time), decision p99, state on disk, and the real agent (dist/) started on that state: time from
 * process start to `ready` (ready_ms; start_ms is the agent's own count, after Node has loaded) and its idle RSS once the background work has settled. `BENCH_SCALE_SIZES=1000,5000`
 * picks other sizes.
 */
export async function benchScale(): Promise<Record<string, number>> {
  const sizes = (process.env.BENCH_SCALE_SIZES ?? '10000,100000').split(',').map(Number);
  const figures: Record<string, number> = {};
  const demo = mkdtempSync(join(tmpdir(), 'va-bench-scale-demo-'));
  try {
    await provisionDemo({ stateDir: demo });
    const base = await startAgent(demo);
    figures.demo_ready_ms = base.readyMs;
    figures.demo_start_ms = base.startMs;
    figures.demo_idle_rss_mb = base.rssMb;
  } finally {
    rmSync(demo, { recursive: true, force: true });
  }
  for (const n of sizes) {
    const k = n >= 1000 ? `${n / 1000}k` : String(n);
    const f = await benchSize(n);
    figures[`keys_${k}_bulk_import_s`] = f.importS;
    figures[`keys_${k}_grant_p50_ms`] = f.grantP50;
    figures[`keys_${k}_grant_max_ms`] = f.grantMax;
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
  }
  return figures;
}

function phoneGrants(state: VehicleState, owner: ReturnType<typeof readSignerKey>, count: number) {
  const iat = Math.floor(Date.now() / 1000);
  const ops: string[] = [];
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const jwk = publicJwkOf(publicKey);
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

async function benchSize(n: number) {
  const dir = mkdtempSync(join(tmpdir(), 'va-bench-scale-'));
  try {
    await provisionDemo({ stateDir: dir });
    const owner = readSignerKey(join(dir, 'demo', 'owner.pem'));
    let state = await openVehicleState(dir, silentLogger);
    await state.keyring.whenMaterialized();
    const bulk = phoneGrants(state, owner, n);
    const extra = phoneGrants(state, owner, SINGLE_CHANGES);
    await state.close();
    const opsFile = join(dir, 'bulk.ops');
    writeFileSync(opsFile, bulk.ops.map((op) => `${op}\n`).join(''));
    const t0 = performance.now();
    // `vehicle-agent keys import` with the agent stopped: verified once, the store's batch path.
    const imported = spawnSync(
      process.execPath,
      [CLI, 'keys', 'import', opsFile, '--json', '--state-dir', dir],
      { encoding: 'utf8', maxBuffer: 1 << 20 },
    );
    const importS = round((performance.now() - t0) / 1000, 2);
    if (imported.status !== 0 || (JSON.parse(imported.stdout) as { added?: unknown }).added !== n)
      throw new Error(`bench import failed: ${imported.stderr}`);
    rmSync(opsFile);
    state = await openVehicleState(dir, silentLogger);
    await state.keyring.whenMaterialized();
    const grants: number[] = [];
    for (const op of extra.ops) {
      const t = performance.now();
      await change(state, [op]);
      grants.push(performance.now() - t);
    }
    const revokes: number[] = [];
    for (let i = 0; i < SINGLE_CHANGES; i++) {
      const op = signRevoke(bulk.ids[i * 7] ?? '', state.identity.vehicleId, owner.key, owner.id, 1);
      const t = performance.now();
      await change(state, [op]);
      revokes.push(performance.now() - t);
    }
    const decisionP99 = decisions(state, bulk.ids);
    await state.close();
    // Reopened once so the agent starts from a compacted snapshot, as after any stop.
    state = await openVehicleState(dir, silentLogger);
    await state.keyring.whenMaterialized();
    await state.close();
    let stateBytes = 0;
    for (const name of readdirSync(dir))
      if (name.startsWith('keyring')) stateBytes += statSync(join(dir, name)).size;
    const runs = [await startAgent(dir), await startAgent(dir)];
    const grant = summarise(grants);
    return {
      importS,
      grantP50: round(grant.p50, 2),
      grantMax: round(grant.max, 2),
      revokeP50: round(summarise(revokes).p50, 2),
      decisionP99,
      stateMb: round(stateBytes / 1024 / 1024, 1),
      readyMs: Math.min(...runs.map((r) => r.readyMs)),
      startMs: Math.min(...runs.map((r) => r.startMs)),
      rssMb: Math.max(...runs.map((r) => r.rssMb)),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
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

function rssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN) / 1024;
}

/**
 * Starts the real agent on `dir`: process start → `ready`, then its RSS once it has settled (no
 * growth of more than 1 MB over 2 s, at least 3 s after ready: the background decode is done).
 */
async function startAgent(dir: string): Promise<{ readyMs: number; startMs: number; rssMb: number }> {
  const env = { ...process.env, VEHICLE_AGENT_LOG__FORMAT: 'json', NODE_OPTIONS: UNIT_NODE_OPTIONS };
  const t0 = performance.now();
  const child: ChildProcess = spawn(process.execPath, [CLI, 'start', '--state-dir', dir], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const pid = child.pid ?? 0;
  try {
    let readyMs = Number.NaN;
    let startMs = Number.NaN;
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      child.stdout?.setEncoding('utf8').on('data', (d: string) => {
        if (!Number.isNaN(readyMs)) return;
        buf += d;
        const line = buf.split('\n').find((l) => l.includes('"msg":"ready"'));
        if (line !== undefined) {
          readyMs = performance.now() - t0;
          startMs = Number((JSON.parse(line) as { startMs?: unknown }).startMs);
          buf = '';
          resolve();
        }
      });
      child.once('exit', (code) => reject(new Error(`agent exited ${code} before ready`)));
    });
    await new Promise((r) => setTimeout(r, 3000));
    const samples = [rssMb(pid)];
    for (let i = 0; i < 60; i++) {
      await new Promise((r) => setTimeout(r, 500));
      samples.push(rssMb(pid));
      const recent = samples.slice(-5);
      if (recent.length === 5 && Math.max(...recent) - Math.min(...recent) < 1) break;
    }
    return {
      readyMs: round(readyMs, 1),
      startMs,
      rssMb: round(samples[samples.length - 1] ?? Number.NaN, 1),
    };
  } finally {
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
  }
}
