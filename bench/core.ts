import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type DecisionPolicy, decide } from '../src/access/decision.js';
import { Keyring, signGrant } from '../src/access/keyring.js';
import { EMPTY_LIMITS } from '../src/access/rate-limit.js';
import { silentLogger } from '../src/core/logger.js';
import type { Credential, Presentation } from '../src/core/types.js';
import { credentialIdFor, generateKeyPair, keyCredentialId, publicJwkOf } from '../src/crypto/keys.js';
import { KeyringStore } from '../src/store/keyring-store.js';
import { round, summarise } from './stats.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

/** 100 000 credentials: UID-hash cards (cheap to make), signed by one root, plus one phone key. */
function buildKeyring(count: number) {
  const vehicleId = 'BENCH-VEHICLE';
  const root = generateKeyPair('P-256');
  const rootKey = publicJwkOf(root.publicKey);
  const rootId = keyCredentialId('signer', rootKey);
  const keyring = new Keyring({ vehicleId, rootKey });
  const ops: string[] = [];
  const ids: string[] = [];
  const iat = Math.floor(Date.now() / 1000);
  for (let i = 0; i < count; i++) {
    const uidHash = i.toString(16).padStart(32, '0');
    const credential: Credential = {
      id: credentialIdFor('ntag424', Buffer.from(uidHash, 'utf8')),
      kind: 'ntag424',
      role: 'driver',
      uidHash,
      options: {},
    };
    ids.push(credential.id);
    ops.push(signGrant(credential, vehicleId, root.privateKey, rootId, iat));
  }
  const t0 = performance.now();
  const result = keyring.merge(ops);
  const mergeMs = performance.now() - t0;
  if (result.rejected.length > 0) throw new Error('bench keyring rejected ops');
  return { keyring, ids, vehicleId, rootKey, mergeMs };
}

export async function benchCore(options: { credentials?: number } = {}): Promise<Record<string, number>> {
  const count = options.credentials ?? 100_000;
  const { keyring, ids, vehicleId, rootKey, mergeMs } = buildKeyring(count);
  const policy: DecisionPolicy = {
    rateLimit: { maxDenials: 5, windowMs: 60_000, cooldownMs: 300_000 },
    answerDeadlineMs: { ntag424: 500 },
  };
  const now = Date.now();
  // Decision latency: each sample times one decide() on a random credential (grants and unknowns).
  const samples: number[] = [];
  for (let i = 0; i < 200_000; i++) {
    const known = i % 10 !== 0;
    const id = known ? ids[(i * 7919) % ids.length] : `ntag424:unknown${i}`;
    const p: Presentation = {
      reader: 'nfc0',
      kind: 'ntag424',
      credentialId: id,
      subject: id ?? '',
      intent: 'unlock',
      explicitIntent: true,
      proof: 'valid',
      answerMs: 20,
    };
    const t0 = performance.now();
    decide({ presentation: p, keyring, now, limits: EMPTY_LIMITS, lastCounter: undefined, policy });
    samples.push((performance.now() - t0) * 1000);
  }
  const decision = summarise(samples.slice(20_000)); // after warm-up
  // Keyring load from disk: snapshot parse + decode + effective state.
  const dir = mkdtempSync(join(tmpdir(), 'va-bench-'));
  await KeyringStore.writeSnapshot(dir, keyring);
  const loads: number[] = [];
  const decodes: number[] = [];
  for (let i = 0; i < 3; i++) {
    const fresh = new Keyring({ vehicleId, rootKey });
    const t0 = performance.now();
    const store = await KeyringStore.open(dir, fresh, silentLogger);
    loads.push(performance.now() - t0);
    // After start the ops are read and decoded in the background (in slices between other work).
    const t1 = performance.now();
    await fresh.materializeInBackground();
    decodes.push(performance.now() - t1);
    await store.close();
    if (fresh.size !== count) throw new Error('load lost ops');
  }
  rmSync(dir, { recursive: true, force: true });
  const start = await benchStartup();
  return {
    credentials: count,
    decision_p50_us: round(decision.p50),
    decision_p99_us: round(decision.p99),
    keyring_load_ms: round(Math.min(...loads), 1),
    keyring_background_decode_ms: round(Math.min(...decodes), 1),
    keyring_verify_and_merge_ms: round(mergeMs, 1),
    start_to_ready_ms: start.readyMs,
    idle_rss_mb: start.rssMb,
  };
}

/** Spawns the real agent on simulated hardware and times process start → `ready`; then reads its RSS. */
async function benchStartup(): Promise<{ readyMs: number; rssMb: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'va-bench-start-'));
  const env = { ...process.env, VEHICLE_AGENT_LOG__FORMAT: 'json' };
  const once = async (): Promise<{ readyMs: number; rssMb: number }> => {
    const t0 = performance.now();
    const child = spawn(process.execPath, [CLI, 'start', '--state-dir', dir], {
      env,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let readyMs = Number.NaN;
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        buf += d;
        if (Number.isNaN(readyMs) && buf.includes('"msg":"ready"')) {
          readyMs = performance.now() - t0;
          resolve();
        }
      });
      child.once('exit', (code) => reject(new Error(`agent exited ${code} before ready`)));
    });
    await new Promise((r) => setTimeout(r, 2000)); // settle to idle
    const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
    const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN);
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
    return { readyMs: round(readyMs, 1), rssMb: round(rssKb / 1024, 1) };
  };
  await once(); // first start provisions the demo vehicle (key generation); time the steady case
  const runs = [await once(), await once(), await once()];
  rmSync(dir, { recursive: true, force: true });
  const readies = runs.map((r) => r.readyMs).sort((a, b) => a - b);
  return { readyMs: readies[1] ?? Number.NaN, rssMb: Math.max(...runs.map((r) => r.rssMb)) };
}
