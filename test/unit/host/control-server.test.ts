import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startIdleFlood } from '../../../bench/floods/control-socket.js';
import { controlRequest } from '../../../src/cli/control-client.js';
import { AgentError } from '../../../src/core/errors.js';
import { silentLogger } from '../../../src/core/logger.js';
import {
  type ControlHandler,
  type ControlLimits,
  type ControlServer,
  MAX_CONTROL_LINE,
  startControlServer,
} from '../../../src/host/control-server.js';
import { letTimePass, waitFor } from '../../helpers/wait.js';

let dir: string;
let server: ControlServer;
let calls = 0;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'va-control-'));
  calls = 0;
  server = await startControlServer(
    join(dir, 'c.sock'),
    new Map<string, ControlHandler>([
      ['echo', (args) => ({ echoed: args })],
      ['count', () => ++calls],
      [
        'refuse',
        () => {
          throw new AgentError('unauthorized', 'no');
        },
      ],
      [
        'explode',
        () => {
          throw new TypeError('bug');
        },
      ],
    ]),
    silentLogger,
  );
});

afterEach(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

function raw(text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(server.path);
    let got = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      got += d;
    });
    s.on('close', () => resolve(got));
    s.on('error', reject);
    s.write(text);
    setTimeout(() => s.end(), 200);
  });
}

describe('control socket', () => {
  it('is a 0600 unix socket answering one JSON line per request', async () => {
    expect(statSync(server.path).mode & 0o777).toBe(0o600);
    expect(await controlRequest(server.path, 'echo', { a: 1 })).toEqual({ echoed: { a: 1 } });
  });

  it('gives coded errors for refused, unknown and failing commands', async () => {
    await expect(controlRequest(server.path, 'refuse')).rejects.toMatchObject({ code: 'unauthorized' });
    await expect(controlRequest(server.path, 'nope')).rejects.toMatchObject({ code: 'unknown_command' });
    await expect(controlRequest(server.path, 'explode')).rejects.toMatchObject({ code: 'internal' });
  });

  it('never hands garbage to a handler', async () => {
    const out = await raw(
      'not json\n"str"\n{"cmd":5}\n{"cmd":"count","args":[1]}\n\n{"id":2,"cmd":"count"}\n',
    );
    const lines = out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { ok: boolean; id: unknown; error?: { code: string } });
    expect(lines.map((l) => l.error?.code ?? 'ok')).toEqual([
      'control_bad_request',
      'control_bad_request',
      'control_bad_request',
      'control_bad_request',
      'ok',
    ]);
    expect(lines[4]?.id).toBe(2);
    expect(calls).toBe(1);
  });

  it('closes a connection that sends an overlong line, and keeps serving others', async () => {
    const out = await raw('x'.repeat(MAX_CONTROL_LINE + 10));
    expect(JSON.parse(out.trim()) as unknown).toMatchObject({
      ok: false,
      error: { code: 'control_bad_request' },
    });
    expect(await controlRequest(server.path, 'count')).toBe(1);
  });

  it('reports a missing agent as control_unavailable', async () => {
    await expect(controlRequest(join(dir, 'absent.sock'), 'echo')).rejects.toMatchObject({
      code: 'control_unavailable',
    });
  });
});

// ── floods, slow clients and budgets (issue 12, finding 5) ─────────────────────

interface Client {
  readonly socket: Socket;
  /** Every line the server sent so far. */
  readonly lines: string[];
  readonly closed: Promise<void>;
  /** Resolves once `n` lines have arrived. */
  waitLines(n: number): Promise<string[]>;
}

function client(path: string): Promise<Client> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    const lines: string[] = [];
    const waiters: { n: number; resolve: (l: string[]) => void }[] = [];
    let pending = '';
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      pending += d;
      let nl = pending.indexOf('\n');
      while (nl >= 0) {
        lines.push(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
        nl = pending.indexOf('\n');
      }
      for (const w of [...waiters]) if (lines.length >= w.n) w.resolve(lines);
    });
    const closed = new Promise<void>((r) => socket.on('close', () => r()));
    socket.on('error', () => {});
    socket.once('connect', () =>
      resolve({
        socket,
        lines,
        closed,
        waitLines: (n) =>
          lines.length >= n ? Promise.resolve(lines) : new Promise((r) => waiters.push({ n, resolve: r })),
      }),
    );
    socket.once('error', reject);
  });
}

function code(line: string | undefined): string {
  const parsed = JSON.parse(line ?? '{}') as { ok?: boolean; error?: { code: string } };
  return parsed.ok ? 'ok' : (parsed.error?.code ?? '?');
}

describe('control socket under floods and slow clients', () => {
  let floodDir: string;
  let flooded: ControlServer;
  let calls: { status: number; hold: number; big: number; spin: number };
  const held: (() => void)[] = [];

  async function start(limits: Partial<ControlLimits>): Promise<ControlServer> {
    flooded = await startControlServer(
      join(floodDir, 'f.sock'),
      new Map<string, ControlHandler>([
        ['status', () => ({ lock: 'locked', n: ++calls.status })],
        [
          'hold',
          () =>
            new Promise((resolve) => {
              calls.hold++;
              held.push(() => resolve({ held: true }));
            }),
        ],
        ['big', () => ({ n: ++calls.big, blob: 'b'.repeat(512 * 1024) })],
        [
          'spin',
          () => {
            calls.spin++;
            const until = performance.now() + 5;
            while (performance.now() < until) {
              // work the budget must account for
            }
            return calls.spin;
          },
        ],
      ]),
      silentLogger,
      limits,
    );
    return flooded;
  }

  beforeEach(() => {
    floodDir = mkdtempSync(join(tmpdir(), 'va-control-flood-'));
    calls = { status: 0, hold: 0, big: 0, spin: 0 };
  });

  afterEach(async () => {
    for (const release of held.splice(0)) release();
    await flooded?.close();
    rmSync(floodDir, { recursive: true, force: true });
  });

  it('lets the CLI in past 16 idle connections: the one idle longest makes room', async () => {
    const s = await start({ evictGraceMs: 0 });
    const idle = [];
    for (let i = 0; i < 16; i++) idle.push(await client(s.path));
    expect(await controlRequest(s.path, 'status')).toMatchObject({ lock: 'locked' });
    await idle[0]?.closed;
    expect(code(idle[0]?.lines[0])).toBe('busy');
    expect(s.stats().closed.evicted).toBe(1);
    for (const c of idle) c.socket.destroy();
  });

  it('does not evict a client that has just connected while evicted clients reconnect in a ring', async () => {
    const s = await start({ evictGraceMs: 200 });
    // 24 silent clients, each reconnecting as soon as it is closed (more than the 16 slots).
    const flood = await startIdleFlood({ socketPath: s.path, connections: 24 });
    let late: Client | undefined;
    try {
      await waitFor(() => s.stats().connections >= 24, 'the flood connected', { intervalMs: 5 });
      await letTimePass(250, 'every flood connection grows old enough to evict (grace 200 ms)');
      // A client slow to send its first line (a CLI the scheduler set aside for a moment).
      late = await client(s.path);
      await letTimePass(50, 'the late client is slow to send its first line');
      late.socket.write('{"id":7,"cmd":"status"}\n');
      const [answer] = await late.waitLines(1);
      expect(JSON.parse(answer ?? '{}')).toMatchObject({ id: 7, ok: true });
      // The evicted ones reconnected and evicted others, until only young connections were left.
      const evicted = s.stats().closed.evicted;
      expect(evicted).toBeGreaterThan(0);
      expect(evicted).toBeLessThanOrEqual(24);
    } finally {
      late?.socket.destroy();
      await flood.stop();
    }
  });

  it('turns connections over the connection rate away unread, and serves again once it refills', async () => {
    const s = await start({ connectionsPerSecond: 5 }); // burst 10
    const held = [];
    for (let i = 0; i < 10; i++) held.push(await client(s.path)); // the burst, kept open
    // Clients connecting at once (each writes a request and waits): turned away unread, each tries
    // 3 more times within ~0.5 s, while the budget refills by 5 a second.
    const over = await Promise.all(
      Array.from({ length: 20 }, () =>
        controlRequest(s.path, 'status', {}, 2000).then(
          () => 'answered',
          (e: AgentError) => e.code,
        ),
      ),
    );
    expect(over.filter((r) => r === 'answered').length).toBeLessThanOrEqual(5);
    expect(over.filter((r) => r === 'busy').length).toBeGreaterThanOrEqual(15); // never "not running"
    expect(s.stats().refused.rate).toBeGreaterThanOrEqual(60);
    expect(calls.status).toBe(over.filter((r) => r === 'answered').length);
    for (const c of held) c.socket.destroy();
    await letTimePass(400, "the rate budget refills by two connections' worth");
    expect(await controlRequest(s.path, 'status')).toMatchObject({ lock: 'locked' });
  });

  it('closes idle connections and lines that never end', async () => {
    const s = await start({ idleTimeoutMs: 50, requestTimeoutMs: 50 });
    const idle = await client(s.path);
    const slow = await client(s.path);
    slow.socket.write('{"id":1,"cmd":"sta');
    await Promise.all([idle.closed, slow.closed]);
    expect(s.stats().closed).toMatchObject({ idle: 1, slowRequest: 1 });
    expect(calls.status).toBe(0);
  });

  it('answers busy, not silence, when every connection has a request in flight; the CLI says so', async () => {
    const s = await start({ maxConnections: 2 });
    const holds = Array.from({ length: 4 }, () => controlRequest(s.path, 'hold'));
    for (let i = 0; i < 100 && calls.hold < 4; i++) await new Promise((r) => setImmediate(r));
    expect(calls.hold).toBe(4); // twice the slots: newcomers get in while nothing can be evicted
    const refused = await controlRequest(s.path, 'status').catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(AgentError);
    expect(refused).toMatchObject({ code: 'busy', message: expect.stringMatching(/running but busy/) });
    expect(s.stats().refused.full).toBe(4); // turned away, the client tried 3 more times
    for (const release of held.splice(0)) release();
    await Promise.all(holds);
    expect(await controlRequest(s.path, 'status')).toMatchObject({ lock: 'locked' });
  });

  it('refuses a garbage flood cheaply: a few coded answers, then the connection is closed', async () => {
    const s = await start({ maxBadRequests: 5 });
    const c = await client(s.path);
    c.socket.write('garbage that is not json\n'.repeat(10_000));
    await c.closed;
    expect(c.lines.map(code)).toEqual(Array(5).fill('control_bad_request'));
    expect(s.stats()).toMatchObject({ badRequests: 5, requests: 0, closed: { garbage: 1 } });
    expect(calls.status).toBe(0);
    expect(await controlRequest(s.path, 'status')).toMatchObject({ lock: 'locked' });
  });

  it('counts unknown commands as bad requests too', async () => {
    const s = await start({ maxBadRequests: 3 });
    const c = await client(s.path);
    c.socket.write('{"id":1,"cmd":"nope"}\n'.repeat(10));
    await c.closed;
    expect(c.lines.map(code)).toEqual(Array(3).fill('unknown_command'));
  });

  it('holds at most one reply for a client that does not read, and closes it', async () => {
    const s = await start({ requestTimeoutMs: 100 });
    const c = await client(s.path);
    c.socket.pause(); // never reads: replies back up into the kernel, then into the server
    c.socket.write('{"id":1,"cmd":"big"}\n'.repeat(100));
    // A paused client sees the close only after reading what is queued: watch the server's count.
    await waitFor(() => s.stats().closed.slowReader > 0, 'the slow reader to be closed', {
      timeoutMs: 30_000,
    });
    expect(s.stats().connections).toBe(0);
    // 512 KiB a reply: the kernel's socket buffers take part of one, the server holds the rest.
    expect(calls.big).toBe(1);
    c.socket.destroy();
  });

  it("answers busy past a connection's request budget, without running the handler", async () => {
    const s = await start({ requestsPerSecond: 1 });
    const c = await client(s.path);
    c.socket.write('{"id":1,"cmd":"status"}\n'.repeat(12));
    const lines = (await c.waitLines(12)).map(code);
    // Burst of two; the rest are refused unless the machine stalls for seconds between them.
    expect(lines.filter((l) => l === 'busy').length).toBeGreaterThan(0);
    expect(lines.filter((l) => l === 'ok').length).toBe(calls.status);
    expect(s.stats().refused.budget).toBe(lines.filter((l) => l === 'busy').length);
    c.socket.destroy();
  });

  it('makes requests wait, not fail, once the work budget is spent', async () => {
    const s = await start({ workMsPerSecond: 10 }); // a 5 ms request spends most of a burst
    const results = await Promise.all(Array.from({ length: 4 }, () => controlRequest(s.path, 'spin')));
    expect(results.sort()).toEqual([1, 2, 3, 4]);
    expect(s.stats().work.deferrals).toBeGreaterThan(0);
    expect(s.stats().work.usedMs).toBeGreaterThanOrEqual(20);
  });

  it('serves other clients while one floods (turns are shared)', async () => {
    const s = await start({ requestsPerSecond: 100_000 });
    const flood = await client(s.path);
    flood.socket.write('{"id":1,"cmd":"status"}\n'.repeat(2000));
    await flood.waitLines(1);
    const mine = await controlRequest(s.path, 'status');
    expect(mine).toMatchObject({ lock: 'locked' });
    // The flood was not finished first: this client's request took its turn in between.
    expect(flood.lines.length).toBeLessThan(2000);
    flood.socket.destroy();
  });
});

describe('control client', () => {
  it('calls an agent that accepts and drops the connection busy, not "not running"', async () => {
    const dropDir = mkdtempSync(join(tmpdir(), 'va-control-drop-'));
    const { createServer } = await import('node:net');
    const dropper = createServer((s) => s.destroy());
    const path = join(dropDir, 'd.sock');
    await new Promise<void>((r) => dropper.listen(path, r));
    try {
      await expect(controlRequest(path, 'status')).rejects.toMatchObject({ code: 'busy' });
    } finally {
      await new Promise((r) => dropper.close(r));
      rmSync(dropDir, { recursive: true, force: true });
    }
  });
});
