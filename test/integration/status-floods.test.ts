import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startRequestFlood, startSlowloris } from '../../bench/floods/status-page.js';
import { silentLogger } from '../../src/core/logger.js';
import type { ControlHandler } from '../../src/host/control-server.js';
import type { HealthReport } from '../../src/host/health-monitor.js';
import { AuditFeed } from '../../src/status/audit-feed.js';
import { type StatusServer, type StatusServerOptions, startStatusServer } from '../../src/status/server.js';
import { waitFor } from '../helpers/wait.js';

/**
 * Issue 12, finding 6, against the real HTTP server on loopback: slow clients cannot hold every
 * connection, an anonymous flood cannot drain the admin's or /healthz's budget, and a client that
 * stops reading is closed. No timings are asserted (the flood bench measures those).
 */
const TOKEN = 'flood-test-admin-token-0123';
const report = (): HealthReport => ({ healthy: true, at: new Date().toISOString(), checks: {} });

let server: StatusServer | undefined;
const sockets: Socket[] = [];

async function start(options: Partial<StatusServerOptions>): Promise<StatusServer> {
  server = await startStatusServer({
    host: '127.0.0.1',
    port: 0,
    token: TOKEN,
    maxClients: 2,
    simControls: false,
    handlers: new Map<string, ControlHandler>([
      ['status', () => ({ vehicleId: 'VA-FLOOD', lock: 'locked', readers: { sim: { state: 'ok' } } })],
    ]),
    health: report,
    checkHealth: async () => report(),
    feed: new AuditFeed({ lastSeq: 0, recent: () => [] }, silentLogger),
    demoDir: '/nonexistent',
    log: silentLogger,
    ...options,
  });
  return server;
}

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await server?.close();
  server = undefined;
});

/** One request on a fresh connection (no keep-alive pool that could hand out an evicted socket). */
function get(
  s: StatusServer,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: s.port, path, headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => {
        body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A raw connection; resolves with everything the server sent once it closes. */
function rawConnection(s: StatusServer, text: string): { socket: Socket; answer: Promise<string> } {
  const socket = connect(s.port, '127.0.0.1', () => socket.write(text));
  sockets.push(socket);
  let out = '';
  socket.setEncoding('utf8').on('data', (c: string) => {
    out += c;
  });
  socket.on('error', () => {});
  return { socket, answer: new Promise((resolve) => socket.on('close', () => resolve(out))) };
}

const admin = { authorization: `Bearer ${TOKEN}` };

describe('status page under floods and slow clients', () => {
  it('keeps answering the admin, /healthz and the page while 200 slowloris connections are open', async () => {
    const s = await start({});
    const flood = await startSlowloris({ url: s.url, connections: 200, intervalMs: 200 });
    try {
      // Every flood connection was accepted: it is pending now, or was evicted to make room.
      await waitFor(
        () => s.stats().pending + s.stats().closed.evicted >= 200,
        'all 200 flood connections accepted',
        { timeoutMs: 30_000 },
      );
      expect((await get(s, '/healthz')).status).toBe(200);
      expect(JSON.parse((await get(s, '/api/state', admin)).body)).toMatchObject({ lock: 'locked' });
      expect((await get(s, '/')).status).toBe(200);
      expect(s.stats().pending).toBeLessThanOrEqual(16);
      expect(s.stats().closed.evicted).toBeGreaterThanOrEqual(200 - 16);
    } finally {
      const counts = await flood.stop();
      expect(counts.connections).toBeGreaterThanOrEqual(200);
      expect(counts.closed).toBeGreaterThan(0);
    }
  });

  it('closes a connection that does not send its headers in time, with a coded 408', async () => {
    const s = await start({ headersTimeoutMs: 200 });
    const slow = rawConnection(s, `GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:${s.port}\r\n`);
    const answer = await slow.answer;
    expect(answer).toMatch(/^HTTP\/1\.1 408/);
    expect(answer).toContain('"code":"request_timeout"');
    expect(s.stats().closed.timeout).toBe(1);
  });

  it('answers a newcomer busy when every connection is busy and none can be evicted', async () => {
    const s = await start({ maxClients: 2, maxConnections: 4 });
    const host = `Host: 127.0.0.1:${s.port}\r\n`;
    for (let i = 0; i < 2; i++) rawConnection(s, `GET /api/events HTTP/1.1\r\n${host}\r\n`);
    // Two admin requests whose bodies never finish: served, so not evictable.
    for (let i = 0; i < 2; i++)
      rawConnection(
        s,
        `POST /api/auth HTTP/1.1\r\n${host}Authorization: Bearer ${TOKEN}\r\n` +
          'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{',
      );
    await waitFor(() => s.stats().connections === 4 && s.stats().pending === 0, 'four busy connections', {
      timeoutMs: 30_000,
    });
    const newcomer = await rawConnection(s, `GET /healthz HTTP/1.1\r\n${host}\r\n`).answer;
    expect(newcomer).toMatch(/^HTTP\/1\.1 503/);
    expect(newcomer).toContain('"code":"busy"');
    expect(s.stats().refused.connections).toBe(1);
    for (const socket of sockets) socket.destroy();
    await waitFor(() => s.stats().connections === 0, 'every connection closed', { timeoutMs: 30_000 });
    expect((await get(s, '/healthz')).status).toBe(200);
  });

  it('closes a client that pipelines more requests than it may have in flight', async () => {
    const s = await start({ adminRequestsPerSecond: 100_000 });
    const pipeliner = rawConnection(
      s,
      `GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:${s.port}\r\nAuthorization: Bearer ${TOKEN}\r\n\r\n`.repeat(
        3000,
      ),
    );
    await pipeliner.answer;
    expect(s.stats().closed.pipelined).toBe(1);
    // Node parses a chunk of them at once; far fewer than the 3000 sent are answered.
    expect(s.stats().answered.admin).toBeLessThan(1000);
  });

  it('closes a client that stops reading a response it asked for', async () => {
    // A state far larger than the kernel's socket buffers take for a client that does not read.
    const s = await start({
      headersTimeoutMs: 200,
      requestTimeoutMs: 300,
      handlers: new Map<string, ControlHandler>([
        [
          'status',
          () => ({ lock: 'locked', readers: { sim: { state: 'ok', detail: 'x'.repeat(16 << 20) } } }),
        ],
      ]),
    });
    const reader = rawConnection(s, `GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:${s.port}\r\n\r\n`);
    reader.socket.pause();
    await waitFor(() => s.stats().closed.slowReader > 0, 'the slow reader closed', {
      timeoutMs: 30_000,
    });
    expect(s.stats().connections).toBe(0);
  });

  it('serves the admin and /healthz from their own budgets through an anonymous request flood', async () => {
    const s = await start({ requestsPerSecond: 5 });
    const flood = await startRequestFlood({ url: s.url, concurrency: 8 });
    try {
      await waitFor(() => s.stats().refused.anonymous > 20, 'anonymous requests refused', {
        timeoutMs: 30_000,
      });
      for (let i = 0; i < 10; i++) {
        expect((await get(s, '/api/state', admin)).status).toBe(200);
        expect((await get(s, '/healthz')).status).toBe(200);
      }
      expect(s.stats().refused).toMatchObject({ admin: 0, health: 0 });
    } finally {
      const counts = await flood.stop();
      expect(counts.refused).toBeGreaterThan(20);
    }
  });
});
