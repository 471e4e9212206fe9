import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { controlRequest } from '../src/cli/control-client.js';
import { readSignerKey } from '../src/cli/key-files.js';
import { signP256, simKeyMessage } from '../src/crypto/challenge.js';
import { b64url, fromB64url } from '../src/crypto/encoding.js';
import type { SimChallenge } from '../src/host/control-api.js';
import { startSlowloris } from './floods/status-page.js';
import { round, summarise } from './stats.js';

/**
 * The status page's figures: its own latency (/api/state, /metrics, the page), and what it costs
 * the unlock path, which shares its event loop: the sim-reader unlock round trip through the
 * control socket, quiet; with 8 live event streams and /metrics and /api/state polled 10 times a
 * second each; under an anonymous request flood (the server answers 50 of those a second, its
 * anonymous budget), with the admin's own requests (the admin token's budget) timed meanwhile; and
 * under 200 slowloris connections (docs/local-interfaces.md). The client runs on the same machine,
 * so its own CPU use is part of the loaded figures.
 * `node dist/bench/status-page.js [--json]`.
 */
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const TOKEN = 'bench-admin-token-0123456789';

async function startAgent(stateDir: string): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, [CLI, 'start', '--state-dir', stateDir], {
    env: {
      ...process.env,
      VEHICLE_AGENT_LOG__FORMAT: 'json',
      VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
      VEHICLE_AGENT_STATUS_PAGE__PORT: '0',
      VEHICLE_AGENT_STATUS_PAGE__ADMIN_TOKEN: TOKEN,
      VEHICLE_AGENT_LOCK__AUTO_RELOCK_MS: '0',
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  let url = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      const m = /"url":"(http:[^"]+)"/.exec(out);
      if (m?.[1]) url = m[1];
      if (url !== '' && out.includes('"msg":"ready"')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`agent exited ${code}`)));
  });
  child.stdout?.resume();
  return { child, url: url.replace(/\/$/, '') };
}

async function unlockRoundTrips(socket: string, keyPath: string, n: number): Promise<number[]> {
  const key = readSignerKey(keyPath, 'phone');
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const challenge = (await controlRequest(socket, 'sim.challenge', {})) as SimChallenge;
    const message = simKeyMessage(
      fromB64url(challenge.challenge),
      challenge.vehicleId,
      'unlock',
      true,
      key.id,
    );
    const reply = (await controlRequest(socket, 'sim.answer', {
      challengeId: challenge.challengeId,
      credentialId: key.id,
      intent: 'unlock',
      explicitIntent: true,
      signature: b64url(signP256(key.key, message)),
    })) as { granted: boolean };
    samples.push(performance.now() - t0);
    if (!reply.granted) throw new Error('bench key was not granted');
  }
  return samples;
}

/** Latency of n requests spaced gapMs apart (within the server's request budget). */
async function timed(
  url: string,
  n: number,
  gapMs = 40,
  headers: Record<string, string> = {},
): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const res = await fetch(url, { headers });
    await res.arrayBuffer();
    if (res.status !== 200) throw new Error(`${url}: ${res.status}`);
    samples.push(performance.now() - t0);
    await new Promise((r) => setTimeout(r, gapMs));
  }
  return samples;
}

/** Runs `poll` against each url back to back (gapMs apart) until stopped; counts answers. */
function poller(urls: readonly string[], gapMs: number) {
  let running = true;
  const counts = { ok: 0, refused: 0 };
  const loops = urls.map(async (u) => {
    while (running) {
      const res = await fetch(u);
      await res.arrayBuffer();
      if (res.status === 200) counts.ok++;
      else counts.refused++;
      if (gapMs > 0) await new Promise((r) => setTimeout(r, gapMs));
    }
  });
  return {
    counts,
    stop: async () => {
      running = false;
      await Promise.all(loops);
    },
  };
}

export async function benchStatusPage(): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(tmpdir(), 'va-bench-status-'));
  const { child, url } = await startAgent(dir);
  const socket = join(dir, 'control.sock');
  const key = join(dir, 'demo', 'driver.pem');
  try {
    await unlockRoundTrips(socket, key, 20); // warm-up
    const quiet = summarise(await unlockRoundTrips(socket, key, 200));
    const state = summarise(await timed(`${url}/api/state`, 100));
    const metrics = summarise(await timed(`${url}/metrics`, 100));
    const page = summarise(await timed(`${url}/`, 50));
    const pageBytes = (await (await fetch(`${url}/`)).arrayBuffer()).byteLength;

    // Heavy but fair use: 8 open event streams, /metrics and /api/state each fetched 10 times a second.
    const streams = await Promise.all(
      Array.from({ length: 8 }, async () => {
        const controller = new AbortController();
        const res = await fetch(`${url}/api/events`, { signal: controller.signal });
        const reader = res.body?.getReader();
        void (async () => {
          try {
            for (;;) if ((await reader?.read())?.done ?? true) return;
          } catch {
            // aborted
          }
        })();
        return controller;
      }),
    );
    const fair = poller([`${url}/metrics`, `${url}/api/state`], 100);
    const loaded = summarise(await unlockRoundTrips(socket, key, 200));
    await fair.stop();
    for (const c of streams) c.abort();
    // A flood: two anonymous clients requesting back to back; the server answers 50 a second,
    // refuses the rest; the admin's requests (with the token) are timed meanwhile.
    await new Promise((r) => setTimeout(r, 2000)); // let the request budget refill
    const flood = poller([`${url}/metrics`, `${url}/api/state`], 0);
    const t0 = performance.now();
    const flooded = summarise(await unlockRoundTrips(socket, key, 200));
    const floodSeconds = (performance.now() - t0) / 1000;
    const floodCounts = { ...flood.counts };
    const adminDuringFlood = summarise(
      await timed(`${url}/api/state`, 50, 60, { authorization: `Bearer ${TOKEN}` }),
    );
    await flood.stop();
    // 200 slowloris connections: the unlock round trip and the admin's requests meanwhile.
    const slowloris = await startSlowloris({ url, connections: 200 });
    await new Promise((r) => setTimeout(r, 1000));
    const underSlowloris = summarise(await unlockRoundTrips(socket, key, 200));
    const adminUnderSlowloris = summarise(
      await timed(`${url}/api/state`, 50, 60, { authorization: `Bearer ${TOKEN}` }),
    );
    const slowlorisCounts = await slowloris.stop();
    // Control: the same flood against another process, to tell this machine's CPU contention
    // (two shared cores, the client included) from the agent's own cost of refusing requests.
    const other = spawn(
      process.execPath,
      [
        '-e',
        "require('http').createServer((q,r)=>{r.writeHead(503);r.end('{}')}).listen(0,'127.0.0.1',function(){console.log(this.address().port)})",
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const otherPort = await new Promise<string>((resolve) =>
      other.stdout?.setEncoding('utf8').once('data', (d: string) => resolve(d.trim())),
    );
    const elsewhere = poller([`http://127.0.0.1:${otherPort}/`, `http://127.0.0.1:${otherPort}/`], 0);
    const control = summarise(await unlockRoundTrips(socket, key, 200));
    await elsewhere.stop();
    other.kill();

    return {
      unlock_roundtrip_quiet_p50_ms: round(quiet.p50),
      unlock_roundtrip_quiet_p99_ms: round(quiet.p99),
      unlock_roundtrip_8_streams_20_rps_p50_ms: round(loaded.p50),
      unlock_roundtrip_8_streams_20_rps_p99_ms: round(loaded.p99),
      unlock_roundtrip_flood_p50_ms: round(flooded.p50),
      unlock_roundtrip_flood_p99_ms: round(flooded.p99),
      unlock_roundtrip_flood_elsewhere_p50_ms: round(control.p50),
      unlock_roundtrip_flood_elsewhere_p99_ms: round(control.p99),
      flood_answered_per_s: round(floodCounts.ok / floodSeconds, 1),
      flood_refused_per_s: round(floodCounts.refused / floodSeconds, 1),
      admin_state_during_flood_p50_ms: round(adminDuringFlood.p50),
      admin_state_during_flood_p99_ms: round(adminDuringFlood.p99),
      unlock_roundtrip_slowloris_p50_ms: round(underSlowloris.p50),
      unlock_roundtrip_slowloris_p99_ms: round(underSlowloris.p99),
      admin_state_slowloris_p50_ms: round(adminUnderSlowloris.p50),
      admin_state_slowloris_p99_ms: round(adminUnderSlowloris.p99),
      slowloris_connections_opened: slowlorisCounts.connections ?? 0,
      api_state_p50_ms: round(state.p50),
      api_state_p99_ms: round(state.p99),
      metrics_p50_ms: round(metrics.p50),
      metrics_p99_ms: round(metrics.p99),
      page_p50_ms: round(page.p50),
      page_bytes: pageBytes,
    };
  } finally {
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  benchStatusPage().then(
    (figures) => {
      if (process.argv.includes('--json'))
        process.stdout.write(`${JSON.stringify({ statusPage: figures }, null, 2)}\n`);
      else
        for (const [k, v] of Object.entries(figures))
          process.stdout.write(`  ${k.padEnd(34)} ${String(v).padStart(10)}\n`);
    },
    (err: unknown) => {
      process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
