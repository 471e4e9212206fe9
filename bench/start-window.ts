import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createPrivateKey } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { keyCredentialId, publicJwkOf } from '../src/crypto/keys.js';
import { round } from './stats.js';

/**
 * Issue 19's first seconds: what a user gets from the agent while it decodes a large keyring in
 * the background after a fast start. `node dist/bench/start-window.js DIR [OFFSETS_MS]` takes a
 * state made by `node dist/bench/ready.js DIR N 1` (DIR is not changed: each run works on a copy)
 * and, for each offset after `ready` (default 0,500,2000,4000,8000), starts the agent (dist/, the
 * systemd unit's NODE_OPTIONS) and runs through the CLI, one after another: `sim present driver`,
 * `keys revoke` (the demo passive key), `keys grant` (a new phone key), `status`, and last
 * `keys list --json` (every key: a page per request since issue 19's paging; one whole-keyring
 * request before). It prints each step's wall time and outcome, and the longest
 * event-loop block of the agent from `ready` until the list (the background decode and those
 * commands) and during the list. A run with offset `idle` only waits 6 s: the decode alone.
 * VA_DIST=/other/dist runs another build (the figures before a change).
 */
const DIST = process.env.VA_DIST ?? fileURLToPath(new URL('..', import.meta.url));
const CLI = join(DIST, 'src', 'cli', 'main.js');
const UNIT = fileURLToPath(new URL('../../systemd/vehicle-agent.service', import.meta.url));
const UNIT_NODE_OPTIONS = /^Environment=NODE_OPTIONS=(.*)$/m.exec(readFileSync(UNIT, 'utf8'))?.[1] ?? '';
/**
 * Reports every event-loop block over 20 ms on stderr: a 5 ms drift timer in the agent, the end of
 * each block in epoch milliseconds (this process's clock reads the same: windows are compared).
 */
const LOOP_PROBE = `data:text/javascript,${encodeURIComponent(
  "const o=performance.timeOrigin;let l=performance.now();setInterval(()=>{const n=performance.now(),g=n-l-5;if(g>20)process.stderr.write('LOOP_BLOCK '+Math.round(o+n)+' '+Math.round(g)+'\\n');l=n},5).unref();",
)}`;
const epochNow = () => performance.timeOrigin + performance.now();
const READY_DEADLINE_MS = 120_000;

interface Step {
  readonly step: string;
  readonly ms: number;
  readonly ok: boolean;
  readonly out: string;
}

/** `short`: the first 120 characters of what it printed (else all of stdout). */
function cli(args: readonly string[], short = true): Promise<{ ok: boolean; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { maxBuffer: 1 << 30 }, (err, stdout, stderr) => {
      const out = (err === null ? stdout : stderr).trim();
      resolve({ ok: err === null, out: short || err !== null ? out.slice(0, 120) : out });
    });
  });
}

async function timed(step: string, run: () => Promise<{ ok: boolean; out: string }>): Promise<Step> {
  const t0 = performance.now();
  const { ok, out } = await run();
  return { step, ms: round(performance.now() - t0, 0), ok, out };
}

async function runOnce(source: string, offset: number | 'idle') {
  const work = mkdtempSync(join(tmpdir(), 'va-start-window-'));
  const state = join(work, 'state');
  cpSync(source, state, { recursive: true });
  const sd = ['--state-dir', state];
  const owner = join(state, 'demo', 'owner.pem');
  const passiveId = keyCredentialId(
    'phone',
    publicJwkOf(createPrivateKey(readFileSync(join(state, 'demo', 'passive.pem'), 'utf8'))),
  );
  await cli(['keygen', '--out', join(work, 'phone'), '--kind', 'phone']);
  const child: ChildProcess = spawn(
    process.execPath,
    ['--import', LOOP_PROBE, ...UNIT_NODE_OPTIONS.split(' ').filter(Boolean), CLI, 'start', ...sd],
    { env: { ...process.env, VEHICLE_AGENT_LOG__FORMAT: 'json' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const blocks: [number, number][] = [];
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    for (const m of d.matchAll(/LOOP_BLOCK (\d+) (\d+)/g)) blocks.push([Number(m[1]), Number(m[2])]);
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  try {
    const readyAt = await new Promise<number>((resolve, reject) => {
      let buf = '';
      const timer = setTimeout(() => reject(new Error('no ready in time')), READY_DEADLINE_MS);
      child.stdout?.setEncoding('utf8').on('data', (d: string) => {
        buf += d;
        if (!buf.includes('"msg":"ready"')) return;
        clearTimeout(timer);
        resolve(epochNow());
        buf = '';
      });
      child.once('exit', (code) => reject(new Error(`agent exited ${code} before ready`)));
    });
    // The agent's own clock: its blocks are told by the time of the first block's report.
    await new Promise((r) => setTimeout(r, offset === 'idle' ? 6000 : offset));
    const steps: Step[] = [];
    let beforeList = epochNow();
    if (offset !== 'idle') {
      steps.push(await timed('sim present driver', () => cli(['sim', 'present', 'driver', ...sd])));
      steps.push(
        await timed('keys revoke', () => cli(['keys', 'revoke', '--key', owner, '--id', passiveId, ...sd])),
      );
      steps.push(
        await timed('keys grant', () =>
          cli(
            [
              'keys',
              'grant',
              '--key',
              owner,
              '--kind',
              'phone',
              '--public',
              join(work, 'phone.pub.pem'),
            ].concat(['--role', 'driver'], sd),
          ),
        ),
      );
      steps.push(await timed('status', () => cli(['status', ...sd])));
      beforeList = epochNow();
      steps.push(
        await timed('keys list --json', async () => {
          const r = await cli(['keys', 'list', '--json', ...sd], false);
          if (!r.ok) return r;
          return { ok: true, out: `${(JSON.parse(r.out) as unknown[]).length} credentials` };
        }),
      );
    }
    const end = epochNow();
    await new Promise((r) => setTimeout(r, 50)); // the probe's last report
    const longest = (from: number, to: number) =>
      Math.max(0, ...blocks.filter(([at, ms]) => at - ms < to && at > from).map(([, ms]) => ms));
    return {
      offset,
      steps,
      longestBlockMs: {
        // From ready to the whole list: the background decode and the commands above.
        decodeAndCommands: longest(readyAt, beforeList),
        wholeList: offset === 'idle' ? undefined : longest(beforeList, end),
      },
    };
  } finally {
    if (child.exitCode === null) child.kill('SIGTERM');
    await exited;
    rmSync(work, { recursive: true, force: true });
  }
}

const [dir, offsetsArg] = process.argv.slice(2);
if (dir === undefined || !existsSync(dir) || !readdirSync(dir).some((f) => f.startsWith('bench-ready-'))) {
  console.error(
    'usage: node dist/bench/start-window.js DIR [OFFSETS_MS|idle,...]  (DIR from dist/bench/ready.js)',
  );
  process.exit(2);
}
const offsets = (offsetsArg ?? '0,500,2000,4000,8000')
  .split(',')
  .map((o) => (o === 'idle' ? 'idle' : Number(o)));
for (const offset of offsets) console.log(JSON.stringify(await runOnce(dir, offset)));
