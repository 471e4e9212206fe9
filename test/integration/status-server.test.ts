import { request } from 'node:http';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/logger.js';
import type { ControlHandler } from '../../src/host/control-server.js';
import type { HealthReport } from '../../src/host/health-monitor.js';
import { AuditFeed } from '../../src/status/audit-feed.js';
import { type StatusServer, startStatusServer } from '../../src/status/server.js';
import type { AuditRecord } from '../../src/store/audit-log.js';
import { parseExposition } from '../helpers/prometheus.js';
import { waitFor } from '../helpers/wait.js';

/**
 * The status page server on loopback with stand-in handlers: every kind of bad request gets its
 * coded JSON error before any handler runs, and the server keeps serving afterwards.
 */
const TOKEN = 'test-admin-token-0123456789';
const tail: AuditRecord[] = [];
const source = {
  get lastSeq() {
    return tail.at(-1)?.seq ?? 0;
  },
  recent: (n: number) => tail.slice(-n),
};
function appendAudit(fields: Record<string, unknown>): void {
  tail.push({
    seq: source.lastSeq + 1,
    ts: new Date().toISOString(),
    type: 'access',
    prev: '',
    hash: '',
    ...fields,
  });
}

let uidCalls = 0;
let healthy = true;
const report = (): HealthReport => ({
  healthy,
  at: new Date().toISOString(),
  checks: { state: healthy ? { ok: true } : { ok: false, detail: 'EROFS' } },
});
const handlers = new Map<string, ControlHandler>([
  ['status', () => ({ vehicleId: 'VA-TEST', lock: 'locked', readers: { sim: { state: 'ok', since: 0 } } })],
  ['keys.list', () => ({ credentials: [], total: 0 })],
  [
    'sim.uid',
    (args) => {
      uidCalls++;
      appendAudit({ result: 'granted', reader: 'sim', subject: String(args.uid) });
      return { granted: true, lock: 'unlocking' };
    },
  ],
]);

let server: StatusServer;
let base: string;
let feed: AuditFeed;

beforeAll(async () => {
  appendAudit({ result: 'denied', code: 'revoked' });
  feed = new AuditFeed(source, silentLogger, 20);
  server = await startStatusServer({
    host: '127.0.0.1',
    port: 0,
    token: TOKEN,
    maxClients: 2,
    simControls: true,
    handlers,
    health: report,
    checkHealth: async () => report(),
    feed,
    demoDir: '/nonexistent',
    log: silentLogger,
    maxBodyBytes: 1024,
    statePushMs: 50,
    requestsPerSecond: 1000,
  });
  base = server.url.replace(/\/$/, '');
});

afterAll(async () => {
  await server?.close();
});

const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };

async function errorOf(res: Response): Promise<{ status: number; code: string }> {
  const body = (await res.json()) as { error: { code: string; message: string } };
  expect(typeof body.error.message).toBe('string');
  return { status: res.status, code: body.error.code };
}

function raw(text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(server.port, '127.0.0.1', () => socket.end(text));
    let out = '';
    socket.setEncoding('utf8').on('data', (c: string) => {
      out += c;
    });
    socket.on('close', () => resolve(out));
    socket.on('error', reject);
  });
}

function withHost(host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(`${base}/api/state`, { headers: { host } }, (res) => {
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

describe('status server: reads', () => {
  it('serves the page with a strict CSP, the state, health and metrics', async () => {
    const page = await fetch(`${base}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    expect(page.headers.get('content-security-policy')).toMatch(/default-src 'none'; script-src 'sha256-/);
    expect(page.headers.get('x-frame-options')).toBe('DENY');
    expect(await page.text()).toContain('<ol id="audit">');
    const state = (await (await fetch(`${base}/api/state`)).json()) as Record<string, unknown>;
    expect(state).toMatchObject({ vehicleId: 'VA-TEST', lock: 'locked', sim: { enabled: true } });
    const health = await fetch(`${base}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ status: 'ok', healthy: true });
    const metrics = await fetch(`${base}/metrics`);
    expect(metrics.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect(parseExposition(await metrics.text()).has('vehicle_agent_lock_state')).toBe(true);
  });

  it('answers 503 on /healthz while a check fails', async () => {
    healthy = false;
    const res = await fetch(`${base}/healthz`);
    healthy = true;
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({ status: 'unhealthy', checks: { state: { ok: false } } });
  });
});

describe('status server: bad input gets coded errors and changes nothing', () => {
  it.each([
    ['unknown path', '/nope', {}, 404, 'not_found'],
    ['unknown api', '/api/keys', {}, 404, 'not_found'],
    ['wrong method', '/api/state', { method: 'DELETE' }, 405, 'method_not_allowed'],
    ['GET on an action', '/api/sim/uid', {}, 405, 'method_not_allowed'],
    ['no token', '/api/sim/uid', { method: 'POST', body: '{}' }, 401, 'unauthorized'],
    [
      'wrong token',
      '/api/sim/uid',
      { method: 'POST', body: '{}', headers: { authorization: `Bearer ${TOKEN}x` } },
      401,
      'unauthorized',
    ],
    [
      'token in the wrong scheme',
      '/api/sim/uid',
      { method: 'POST', body: '{}', headers: { authorization: `Basic ${TOKEN}` } },
      401,
      'unauthorized',
    ],
    [
      'malformed JSON',
      '/api/sim/uid',
      { method: 'POST', body: '{"uid":', headers: auth },
      400,
      'bad_arguments',
    ],
    ['a JSON array', '/api/sim/uid', { method: 'POST', body: '[1,2]', headers: auth }, 400, 'bad_arguments'],
    [
      'not JSON at all',
      '/api/sim/uid',
      {
        method: 'POST',
        body: 'uid=1',
        headers: { ...auth, 'content-type': 'application/x-www-form-urlencoded' },
      },
      400,
      'bad_arguments',
    ],
    [
      'a bad argument',
      '/api/sim/uid',
      { method: 'POST', body: '{"uid":"not hex"}', headers: auth },
      400,
      'bad_arguments',
    ],
    [
      'an unknown argument',
      '/api/sim/uid',
      { method: 'POST', body: '{"uid":"04AABBCCDD","x":1}', headers: auth },
      400,
      'bad_arguments',
    ],
    [
      'an unknown action',
      '/api/sim/present',
      { method: 'POST', body: '{}', headers: auth },
      404,
      'not_found',
    ],
    [
      'an oversized body',
      '/api/sim/uid',
      { method: 'POST', body: JSON.stringify({ uid: 'a'.repeat(5000) }), headers: auth },
      413,
      'request_too_large',
    ],
  ] as const)('%s', async (_name, path, init, status, code) => {
    const before = { calls: uidCalls, seq: source.lastSeq };
    const res = await fetch(`${base}${path}`, init as RequestInit);
    expect(await errorOf(res)).toEqual({ status, code });
    if (status === 405) expect(res.headers.get('allow')).toBeTruthy();
    expect({ calls: uidCalls, seq: source.lastSeq }).toEqual(before);
  });

  it('refuses an oversized chunked body without a Content-Length', async () => {
    const big = new ReadableStream({
      start(controller) {
        for (let i = 0; i < 8; i++) controller.enqueue(new TextEncoder().encode('x'.repeat(512)));
        controller.close();
      },
    });
    const res = await fetch(`${base}/api/sim/uid`, {
      method: 'POST',
      headers: auth,
      body: big,
      duplex: 'half',
    } as RequestInit);
    expect(await errorOf(res)).toEqual({ status: 413, code: 'request_too_large' });
    expect(uidCalls).toBe(0);
  });

  it('answers only to its exact host:port names; any other Host is host_not_allowed (DNS rebinding)', async () => {
    const port = server.port;
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`, `LocalHost:${port}`]) {
      expect((await withHost(host)).status, host).toBe(200);
    }
    for (const host of [
      'evil.example:8080',
      `127.evil.example:${port}`, // a rebinding name that merely starts with 127.
      `127.0.0.1.nip.io:${port}`,
      `127.0.0.1.evil.example:${port}`,
      `127.0.0.1:${port + 1}`, // the right name on a wrong port
      `localhost:${port + 1}`,
      'localhost',
      `localhost.:${port}`,
      `127.0.0.2:${port}`,
    ]) {
      const refused = await withHost(host);
      expect(refused.status, host).toBe(403);
      expect(JSON.parse(refused.body), host).toMatchObject({ error: { code: 'host_not_allowed' } });
    }
    const noHost = await raw('GET /api/state HTTP/1.0\r\n\r\n');
    expect(noHost).toMatch(/^HTTP\/1\.1 403/);
    expect(noHost).toContain('"code":"host_not_allowed"');
    expect(server.stats().refused.host).toBe(10);
  });

  it('answers malformed HTTP and oversized headers with coded JSON', async () => {
    const garbage = await raw('NOT HTTP AT ALL\r\n\r\n');
    expect(garbage).toMatch(/^HTTP\/1\.1 400/);
    expect(garbage).toContain('"code":"bad_arguments"');
    const huge = await raw(
      `GET / HTTP/1.1\r\nHost: localhost:${server.port}\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
    );
    expect(huge).toMatch(/^HTTP\/1\.1 431/);
    expect(huge).toContain('"code":"request_too_large"');
  });

  it('still serves and runs a valid action with the token afterwards', async () => {
    const res = await fetch(`${base}/api/sim/uid`, {
      method: 'POST',
      headers: auth,
      body: JSON.stringify({ uid: '04AABBCCDD' }),
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ ok: true, result: { granted: true, lock: 'unlocking' } });
    expect(uidCalls).toBe(1);
    const check = await fetch(`${base}/api/auth`, { method: 'POST', headers: auth });
    expect(await check.json()).toEqual({ ok: true });
  });

  it('arms the reader for an owner FIDO approval only with the token, and only where the agent can', async () => {
    const path = `${base}/api/enroll/approve-fido`;
    expect(await errorOf(await fetch(path, { method: 'POST', body: '{}' }))).toEqual({
      status: 401,
      code: 'unauthorized',
    });
    // No NFC reader or no phone enrollment desk: no arm handler.
    expect(await errorOf(await fetch(path, { method: 'POST', headers: auth, body: '{}' }))).toEqual({
      status: 404,
      code: 'not_found',
    });
    let armed = 0;
    handlers.set('enroll.approval.arm', () => {
      armed++;
      return { state: 'armed', method: 'owner-fido', credentialId: 'phone:new', expiresAt: 'soon' };
    });
    try {
      expect(await errorOf(await fetch(path, { method: 'POST', body: '{}' }))).toEqual({
        status: 401,
        code: 'unauthorized',
      });
      expect(armed).toBe(0);
      const res = await fetch(path, { method: 'POST', headers: auth, body: '{}' });
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({
        ok: true,
        result: { state: 'armed', credentialId: 'phone:new' },
      });
      expect(armed).toBe(1);
    } finally {
      handlers.delete('enroll.approval.arm');
    }
  });
});

describe('status server: live events', () => {
  async function openStream(headers: Record<string, string> = {}) {
    const controller = new AbortController();
    const res = await fetch(`${base}/api/events`, { headers, signal: controller.signal });
    const reader = res.body?.getReader();
    if (!reader) throw new Error('no body');
    let buffer = '';
    const next = async (match: (event: string, data: string) => boolean) => {
      for (;;) {
        let end = buffer.indexOf('\n\n');
        while (end >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1] ?? '';
          const data = /^data: (.*)$/m.exec(block)?.[1] ?? '';
          if (match(event, data)) return { event, data: JSON.parse(data) as Record<string, unknown> };
          end = buffer.indexOf('\n\n');
        }
        const chunk = await reader.read();
        if (chunk.done) throw new Error('stream ended');
        buffer += new TextDecoder().decode(chunk.value);
      }
    };
    return { res, next, close: () => controller.abort() };
  }

  it('streams recent audit events, then new ones as they become durable, and resumes after an id', async () => {
    const stream = await openStream();
    expect(stream.res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const first = await stream.next((e) => e === 'audit');
    expect(first.data.seq).toBe(1);
    appendAudit({ result: 'denied', code: 'expired', subject: 'live-one' });
    const live = await stream.next((e, d) => e === 'audit' && d.includes('live-one'));
    expect(live.data).toMatchObject({ code: 'expired', seq: source.lastSeq });
    await stream.next((e) => e === 'state');
    stream.close();

    const resumed = await openStream({ 'last-event-id': String(source.lastSeq - 1) });
    const again = await resumed.next((e) => e === 'audit');
    expect(again.data.seq).toBe(source.lastSeq);
    resumed.close();
  });

  it('limits the number of streams with busy', async () => {
    const a = await openStream();
    const b = await openStream();
    await a.next((e) => e === 'audit');
    await b.next((e) => e === 'audit');
    expect(await errorOf(await fetch(`${base}/api/events`))).toEqual({ status: 503, code: 'busy' });
    a.close();
    b.close();
  });

  it('tells streams the agent stops and answers unavailable from then on', async () => {
    await waitFor(() => server.streams() === 0, "the earlier tests' streams to end");
    const stream = await openStream();
    await stream.next((e) => e === 'audit');
    server.setStopping();
    expect((await stream.next((e) => e === 'bye')).data).toEqual({ reason: 'stopping' });
    expect(await errorOf(await fetch(`${base}/api/state`))).toEqual({ status: 503, code: 'unavailable' });
    expect(
      await errorOf(
        await fetch(`${base}/api/sim/uid`, { method: 'POST', headers: auth, body: '{"uid":"04AABBCCDD"}' }),
      ),
    ).toEqual({ status: 503, code: 'unavailable' });
    expect(uidCalls).toBe(1);
  });
});

describe('status server: request budgets per client class', () => {
  it('refuses anonymous requests past their budget with busy and Retry-After; the admin and /healthz keep theirs', async () => {
    const calls = { n: 0 };
    const limited = await startStatusServer({
      host: '127.0.0.1',
      port: 0,
      token: TOKEN,
      maxClients: 2,
      simControls: true,
      handlers: new Map<string, ControlHandler>([
        ['status', () => ({ vehicleId: 'VA-TEST', lock: 'locked', readers: {} })],
        [
          'sim.uid',
          () => {
            calls.n++;
            return { granted: true };
          },
        ],
      ]),
      health: report,
      checkHealth: async () => report(),
      feed: new AuditFeed(source, silentLogger),
      demoDir: '/nonexistent',
      log: silentLogger,
      requestsPerSecond: 1,
      adminRequestsPerSecond: 1,
      healthRequestsPerSecond: 1,
    });
    try {
      const url = limited.url.replace(/\/$/, '');
      // The anonymous burst (twice the rate), then refusals, before any handler runs.
      expect((await fetch(`${url}/api/state`)).status).toBe(200);
      expect((await fetch(`${url}/api/state`)).status).toBe(200);
      // Both arrive while the anonymous budget is empty (their answer comes a second later).
      const [refused, wrongToken] = await Promise.all([
        fetch(`${url}/api/sim/uid`, { method: 'POST', body: '{"uid":"04AABBCCDD"}' }),
        fetch(`${url}/api/state`, { headers: { authorization: 'Bearer wrong-token-0123456789' } }),
      ]);
      expect(refused.headers.get('retry-after')).toBe('1');
      expect(await errorOf(refused)).toEqual({ status: 503, code: 'busy' });
      expect(await errorOf(wrongToken)).toEqual({ status: 503, code: 'busy' }); // a wrong token is anonymous
      // The admin's budget is its own: the anonymous flood did not touch it.
      expect((await fetch(`${url}/api/state`, { headers: auth })).status).toBe(200);
      const action = await fetch(`${url}/api/sim/uid`, {
        method: 'POST',
        headers: auth,
        body: '{"uid":"04AABBCCDD"}',
      });
      expect(action.status).toBe(200);
      expect(calls.n).toBe(1);
      // And so is /healthz's.
      expect((await fetch(`${url}/healthz`)).status).toBe(200);
      expect(limited.stats()).toMatchObject({
        answered: { anonymous: 2, admin: 2, health: 1 },
        refused: { anonymous: 2, admin: 0, health: 0 },
      });
    } finally {
      await limited.close();
    }
  });
});
