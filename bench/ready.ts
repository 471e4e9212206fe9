import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createECDH } from 'node:crypto';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { signGrant, signRevoke } from '../src/access/keyring.js';
import { provisionDemo } from '../src/app/sim.js';
import { silentLogger } from '../src/core/logger.js';
import type { Credential, PublicJwk } from '../src/core/types.js';
import { keyCredentialId } from '../src/crypto/keys.js';
import { Journal } from '../src/store/journal.js';
import { readSignerKey } from '../src/store/key-files.js';
import { keyringPaths } from '../src/store/keyring-store.js';
import { decodeSummaryV4 } from '../src/store/keyring-summary.js';
import { round } from './stats.js';

/**
 * Start-up only (issue 19): process start → `ready` of the real agent (dist/) on a prepared state
 * of N phone keys. `node dist/bench/ready.js DIR N [RUNS]` makes the state in DIR once (demo
 * provisioning plus `keys import` of N grants; kept for later runs), then starts the agent RUNS
 * times (default 3) and prints ready_ms and start_ms of each run as JSON. DIR is kept: remove it
 * when done.
 *
 * Then the same after a kill -9 (`afterKill`): a copy of the state (DIR.killed, made once) whose
 * journals hold one grant of a new phone key and one revoke of a granted one, as an agent killed
 * before it folded them in leaves them; each run starts on a fresh copy of it and is killed
 * (SIGKILL) once ready, so every run starts with the journal records.
 */
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const UNIT = fileURLToPath(new URL('../../systemd/vehicle-agent.service', import.meta.url));
const UNIT_NODE_OPTIONS = /^Environment=NODE_OPTIONS=(.*)$/m.exec(readFileSync(UNIT, 'utf8'))?.[1] ?? '';

function benchPhone(i: number): Credential {
  // ECDH keys, not generateKeyPairSync: 100 000 calls of that hung in a futex wait here.
  const point = createECDH('prime256v1');
  point.generateKeys();
  const raw = point.getPublicKey();
  const jwk: PublicJwk = {
    kty: 'EC',
    crv: 'P-256',
    x: raw.subarray(1, 33).toString('base64url'),
    y: raw.subarray(33, 65).toString('base64url'),
  };
  return {
    id: keyCredentialId('phone', jwk),
    kind: 'phone',
    role: 'driver',
    name: `bench phone ${i}`,
    publicKey: jwk,
    options: {},
  };
}

/**
 * A copy of the prepared state whose journals hold one new grant and one revoke of a granted
 * phone key (written to both journal copies, as the agent writes them; not folded in).
 */
async function prepareKilled(dir: string, killed: string): Promise<void> {
  const marker = join(killed, 'bench-ready-killed');
  if (existsSync(marker)) return;
  rmSync(killed, { recursive: true, force: true });
  cpSync(dir, killed, { recursive: true });
  const identity = JSON.parse(readFileSync(join(killed, 'vehicle.json'), 'utf8')) as { vehicleId?: string };
  const vehicleId = identity.vehicleId;
  const owner = readSignerKey(join(killed, 'demo', 'owner.pem'));
  const p = keyringPaths(killed);
  const { credentials } = decodeSummaryV4(readFileSync(p.summary));
  const victim = [...credentials.ids()].find((id) => credentials.wire(id)?.name?.startsWith('bench phone'));
  if (vehicleId === undefined || victim === undefined)
    throw new Error(`${killed}: no vehicle id or bench phone`);
  const iat = Math.floor(Date.now() / 1000);
  const records = [
    { signer: owner.id, jws: signGrant(benchPhone(-1), vehicleId, owner.key, owner.id, iat) },
    { signer: owner.id, jws: signRevoke(victim, vehicleId, owner.key, owner.id, iat, 'bench') },
  ];
  for (const path of [p.journal, p.journalMirror]) {
    const { journal } = await Journal.open(path, { logger: silentLogger });
    for (const r of records) await journal.append(r);
    await journal.close();
  }
  writeFileSync(marker, '');
}

async function prepare(dir: string, n: number): Promise<void> {
  // Written once the state is complete, so a run cut short is not taken for a prepared state.
  const marker = join(dir, `bench-ready-${n}`);
  if (existsSync(marker)) return;
  if (existsSync(dir) && readdirSync(dir).length > 0)
    throw new Error(`${dir} is not empty and holds no state this made: remove it`);
  mkdirSync(dir, { recursive: true });
  const { identity } = await provisionDemo({ stateDir: dir });
  const owner = readSignerKey(join(dir, 'demo', 'owner.pem'));
  const iat = Math.floor(Date.now() / 1000);
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    lines.push(`${signGrant(benchPhone(i), identity.vehicleId, owner.key, owner.id, iat)}\n`);
  }
  if (n === 0) {
    writeFileSync(marker, '');
    return;
  }
  const opsFile = join(dir, 'bulk.ops');
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
  writeFileSync(marker, '');
}

async function startOnce(
  dir: string,
  signal: NodeJS.Signals = 'SIGTERM',
): Promise<{ readyMs: number; startMs: number }> {
  const env = { ...process.env, VEHICLE_AGENT_LOG__FORMAT: 'json', NODE_OPTIONS: UNIT_NODE_OPTIONS };
  const t0 = performance.now();
  const child: ChildProcess = spawn(process.execPath, [CLI, 'start', '--state-dir', dir], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    return await new Promise((resolve, reject) => {
      let buf = '';
      child.stdout?.setEncoding('utf8').on('data', (d: string) => {
        buf += d;
        const line = buf.split('\n').find((l) => l.includes('"msg":"ready"'));
        if (line === undefined) return;
        const readyMs = round(performance.now() - t0, 1);
        resolve({ readyMs, startMs: Number((JSON.parse(line) as { startMs?: unknown }).startMs) });
      });
      child.once('exit', (code) => reject(new Error(`agent exited ${code} before ready`)));
    });
  } finally {
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill(signal);
      await exited;
    }
  }
}

const [dir, size, runs] = process.argv.slice(2);
if (dir === undefined || size === undefined) {
  console.error('usage: node dist/bench/ready.js DIR N [RUNS]');
  process.exit(2);
}
await prepare(dir, Number(size));
const results = [];
for (let i = 0; i < Number(runs ?? 3); i++) results.push(await startOnce(dir));
const killed = `${dir.replace(/\/+$/, '')}.killed`;
await prepareKilled(dir, killed);
const afterKill = [];
for (let i = 0; i < Number(runs ?? 3); i++) {
  const copy = mkdtempSync(join(tmpdir(), 'va-bench-ready-killed-'));
  try {
    cpSync(killed, copy, { recursive: true });
    afterKill.push(await startOnce(copy, 'SIGKILL'));
  } finally {
    rmSync(copy, { recursive: true, force: true });
  }
}
console.log(JSON.stringify({ size: Number(size), runs: results, afterKill }));
