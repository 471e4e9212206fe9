import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { signGrant } from '../src/access/keyring.js';
import { provisionDemo } from '../src/app/sim.js';
import { silentLogger } from '../src/core/logger.js';
import type { Credential } from '../src/core/types.js';
import { keyCredentialId, publicJwkOf } from '../src/crypto/keys.js';
import { readSignerKey } from '../src/store/key-files.js';
import { openVehicleState } from '../src/store/vehicle-state.js';

/**
 * Issue 19, memory only: `node --expose-gc dist/bench/keyring-memory.js N [N...]` (0 = the demo
 * keyring). For each size it builds a state of N phone keys (imported with `vehicle-agent keys
 * import`, as bench/scale.ts does, without its timing runs), then reports
 *   - heap_per_credential: V8 heap held after opening that state and decoding every op, minus the
 *     demo's, per credential (after a full GC: what the keyring and its store keep);
 *   - idle_rss_mb: the real agent (dist/) started on it, RSS once the background decode settled.
 * BENCH_MEM_DIR=DIR keeps the states in DIR/<N> and reuses them on the next run.
 */
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const UNIT = fileURLToPath(new URL('../../systemd/vehicle-agent.service', import.meta.url));
const UNIT_NODE_OPTIONS = /^Environment=NODE_OPTIONS=(.*)$/m.exec(readFileSync(UNIT, 'utf8'))?.[1] ?? '';

const gc = (globalThis as { gc?: () => void }).gc;

async function buildState(dir: string, n: number): Promise<void> {
  process.stderr.write(`building a state of ${n} phone keys in ${dir}\n`);
  await provisionDemo({ stateDir: dir });
  if (n === 0) return;
  const owner = readSignerKey(join(dir, 'demo', 'owner.pem'));
  const state = await openVehicleState(dir, silentLogger);
  await state.keyring.whenMaterialized();
  const vehicleId = state.identity.vehicleId;
  await state.close();
  const iat = Math.floor(Date.now() / 1000);
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const jwk = publicJwkOf(generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey);
    const credential: Credential = {
      id: keyCredentialId('phone', jwk),
      kind: 'phone',
      role: 'driver',
      name: `bench phone ${i}`,
      publicKey: jwk,
      options: {},
    };
    lines.push(`${signGrant(credential, vehicleId, owner.key, owner.id, iat)}\n`);
  }
  const opsFile = join(dir, 'bulk.ops');
  process.stderr.write(`signed ${n} grants; importing\n`);
  writeFileSync(opsFile, lines.join(''));
  const imported = spawnSync(
    process.execPath,
    [CLI, 'keys', 'import', opsFile, '--json', '--state-dir', dir],
    {
      encoding: 'utf8',
      maxBuffer: 1 << 20,
    },
  );
  if (imported.status !== 0) throw new Error(`import failed: ${imported.stderr}`);
  rmSync(opsFile);
  // Opened and closed once so the agent starts from a compacted snapshot, as after any stop.
  const again = await openVehicleState(dir, silentLogger);
  await again.keyring.whenMaterialized();
  await again.close();
}

async function heapHeld(dir: string): Promise<number> {
  if (!gc) return Number.NaN;
  gc();
  const before = process.memoryUsage().heapUsed;
  const state = await openVehicleState(dir, silentLogger);
  await state.keyring.whenMaterialized();
  for (let i = 0; i < 3; i++) gc();
  const held = process.memoryUsage().heapUsed - before;
  await state.close();
  return held;
}

function rssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN) / 1024;
}

/** The agent's RSS once it settles (under 1 MB of change over 2 s, at least 3 s after ready). */
async function idleRss(dir: string): Promise<number> {
  const env = { ...process.env, VEHICLE_AGENT_LOG__FORMAT: 'json', NODE_OPTIONS: UNIT_NODE_OPTIONS };
  const child: ChildProcess = spawn(process.execPath, [CLI, 'start', '--state-dir', dir], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      child.stdout?.setEncoding('utf8').on('data', (d: string) => {
        buf += d;
        if (buf.includes('"msg":"ready"')) resolve();
        if (buf.length > 1 << 16) buf = buf.slice(-1024);
      });
      child.once('exit', (code) => reject(new Error(`agent exited ${code} before ready`)));
    });
    await new Promise((r) => setTimeout(r, 3000));
    const samples = [rssMb(child.pid ?? 0)];
    for (let i = 0; i < 60; i++) {
      await new Promise((r) => setTimeout(r, 500));
      samples.push(rssMb(child.pid ?? 0));
      const recent = samples.slice(-5);
      if (recent.length === 5 && Math.max(...recent) - Math.min(...recent) < 1) break;
    }
    return Math.round((samples[samples.length - 1] ?? Number.NaN) * 10) / 10;
  } finally {
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
  }
}

async function main(): Promise<void> {
  const sizes = process.argv.slice(2).map(Number);
  if (sizes.length === 0 || sizes.some((n) => !Number.isInteger(n) || n < 0))
    throw new Error('usage: node --expose-gc dist/bench/keyring-memory.js N [N...]');
  const keep = process.env.BENCH_MEM_DIR;
  const figures: Record<string, number> = {};
  let demoHeap = Number.NaN;
  for (const n of [0, ...sizes.filter((s) => s > 0)]) {
    const dir = keep ? join(keep, String(n)) : mkdtempSync(join(tmpdir(), 'va-bench-mem-'));
    try {
      if (!keep || !existsSync(join(dir, 'keyring.json'))) await buildState(dir, n);
      const heap = await heapHeld(dir);
      const k = n === 0 ? 'demo' : `keys_${n >= 1000 ? `${n / 1000}k` : n}`;
      if (n === 0) demoHeap = heap;
      else figures[`${k}_heap_per_credential`] = Math.round((heap - demoHeap) / n);
      figures[`${k}_heap_mb`] = Math.round((heap / 1024 / 1024) * 10) / 10;
      figures[`${k}_idle_rss_mb`] = await idleRss(dir);
      console.log(JSON.stringify(figures));
    } finally {
      if (!keep) rmSync(dir, { recursive: true, force: true });
    }
  }
}

await main();
