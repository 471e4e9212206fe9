import { readdir } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { HealthReport } from '../agent/health-monitor.js';
import type { Code } from '../core/codes.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { bearerToken, tokenMatches } from './admin-token.js';
import type { AuditFeed } from './audit-feed.js';
import { METRICS_CONTENT_TYPE, renderMetrics } from './metrics.js';
import { STATUS_PAGE_CSP, STATUS_PAGE_HTML } from './page.js';
import { buildSimActions, type HandlerMap, validateActionArgs } from './sim-actions.js';
import { collectSnapshot, metricFamilies, type StateSnapshot } from './snapshot.js';

/**
 * The status page's HTTP server (node:http). Read-only views need nothing; anything that changes
 * state (the sim actions) needs `Authorization: Bearer <admin token>`, which a cross-site form or
 * image cannot send. Every refusal is JSON `{"error":{"code","message"}}` with a stable code
 * from codes.ts, decided before any handler runs. Nothing on the unlock path waits on this
 * server; it only calls the control handlers, as the control socket does.
 */

export interface StatusServerOptions {
  readonly host: string;
  readonly port: number;
  readonly token: string;
  readonly maxClients: number;
  readonly simControls: boolean;
  readonly handlers: HandlerMap;
  readonly health: () => HealthReport | undefined;
  readonly checkHealth: () => Promise<HealthReport>;
  readonly feed: AuditFeed;
  readonly demoDir: string;
  readonly log: Logger;
  /** Largest request body; default 16 KiB. */
  readonly maxBodyBytes?: number;
  /** State pushed to live streams this often; default 1000 ms. */
  readonly statePushMs?: number;
  /** Requests answered per second, burst twice that; default 50. */
  readonly requestsPerSecond?: number;
}

export interface StatusServer {
  readonly url: string;
  readonly port: number;
  /** Live event streams open now. */
  streams(): number;
  /** Shutdown began: API requests get `unavailable`, streams are told and closed. */
  setStopping(): void;
  close(): Promise<void>;
}

const HTTP_STATUS: Partial<Record<Code, number>> = {
  bad_arguments: 400,
  control_bad_request: 400,
  unauthorized: 401,
  not_found: 404,
  unknown_command: 404,
  method_not_allowed: 405,
  request_too_large: 413,
  busy: 503,
  unavailable: 503,
  internal: 500,
};

export function httpStatusFor(code: Code): number {
  return HTTP_STATUS[code] ?? 422;
}

const ROUTES: Readonly<Record<string, readonly string[]>> = {
  '/': ['GET', 'HEAD'],
  '/api/state': ['GET'],
  '/api/events': ['GET'],
  '/api/auth': ['POST'],
  '/healthz': ['GET', 'HEAD'],
  '/metrics': ['GET'],
};
const SIM_ROUTE = /^\/api\/sim\/([a-z][a-z0-9-]{0,31})$/;
const INITIAL_EVENTS = 30;
/** One state collection serves every request within this window (page, streams, scrapes). */
const SNAPSHOT_TTL_MS = 250;
/**
 * Requests the server answers per second (burst twice that). The agent's loop is shared with the
 * unlock path: a local client hammering the page must not slow taps down. The page itself makes
 * one request plus a stream; a Prometheus scrape is one request per interval.
 */
const REQUESTS_PER_SECOND = 50;
const HEARTBEAT_MS = 15_000;
const MAX_STREAM_BUFFER = 1024 * 1024;
const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '[::1]', '::1']);

function isLoopback(host: string): boolean {
  return LOOPBACK_NAMES.has(host) || host.startsWith('127.');
}

/** Hostname of a Host header, without the port; undefined when absent or malformed. */
export function hostnameOf(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const m = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?$/.exec(header.trim());
  return m?.[1]?.toLowerCase();
}

/** A token bucket: `rate` tokens a second, holding at most twice that. */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly rate: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = rate * 2;
    this.last = now();
  }

  take(): boolean {
    const t = this.now();
    this.tokens = Math.min(this.rate * 2, this.tokens + ((t - this.last) / 1000) * this.rate);
    this.last = t;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

function send(
  res: ServerResponse,
  status: number,
  body: string,
  type: string,
  extra: Record<string, string> = {},
): void {
  if (res.headersSent) return;
  res.writeHead(status, {
    'content-type': type,
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    ...extra,
  });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

function sendJson(res: ServerResponse, status: number, value: unknown, extra: Record<string, string> = {}) {
  send(res, status, JSON.stringify(value), 'application/json; charset=utf-8', extra);
}

function sendError(res: ServerResponse, err: AgentError, extra: Record<string, string> = {}): void {
  sendJson(res, httpStatusFor(err.code), { error: { code: err.code, message: err.message } }, extra);
}

/** Reads a JSON object body of at most maxBytes; refuses anything else with a coded error. */
export async function readJsonBody(req: IncomingMessage, maxBytes: number): Promise<Record<string, unknown>> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > maxBytes) {
    throw new AgentError('request_too_large', `request body over ${maxBytes} bytes`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const buf = chunk as Buffer;
    size += buf.length;
    if (size > maxBytes) throw new AgentError('request_too_large', `request body over ${maxBytes} bytes`);
    chunks.push(buf);
  }
  if (size === 0) return {};
  if (type !== 'application/json') throw new AgentError('bad_arguments', 'the body must be application/json');
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new AgentError('bad_arguments', 'the body is not valid JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new AgentError('bad_arguments', 'the body must be a JSON object');
  }
  return parsed as Record<string, unknown>;
}

async function processFigures() {
  const cpu = process.cpuUsage();
  const mem = process.memoryUsage();
  let openFds: number | undefined;
  try {
    openFds = (await readdir('/proc/self/fd')).length;
  } catch {
    openFds = undefined;
  }
  return {
    cpuUserS: cpu.user / 1e6,
    cpuSystemS: cpu.system / 1e6,
    rssBytes: mem.rss,
    heapUsedBytes: mem.heapUsed,
    startTimeS: Math.round((Date.now() - process.uptime() * 1000) / 1000),
    ...(openFds === undefined ? {} : { openFds }),
  };
}

export async function startStatusServer(options: StatusServerOptions): Promise<StatusServer> {
  const { log, feed, handlers } = options;
  const maxBody = options.maxBodyBytes ?? 16 * 1024;
  const checkHost = isLoopback(options.host);
  const streams = new Set<ServerResponse>();
  const sockets = new Set<Socket>();
  let stopping = false;

  let cached: { at: number; value: Promise<StateSnapshot> } | undefined;
  const snapshot = (): Promise<StateSnapshot> => {
    const now = performance.now();
    if (cached && now - cached.at < SNAPSHOT_TTL_MS) return cached.value;
    const value = collectSnapshot({
      handlers,
      health: options.health,
      auditSeq: () => feed.lastSeq,
      demoDir: options.demoDir,
      simControls: options.simControls,
    });
    cached = { at: now, value };
    value.catch(() => {
      if (cached?.value === value) cached = undefined;
    });
    return value;
  };
  const bucket = new TokenBucket(options.requestsPerSecond ?? REQUESTS_PER_SECOND);

  const writeEvent = (res: ServerResponse, event: string, data: unknown, id?: number) => {
    if (res.writableLength > MAX_STREAM_BUFFER) {
      // A reader that stopped reading: drop it rather than buffer without bound.
      res.destroy();
      return;
    }
    res.write(`${id === undefined ? '' : `id: ${id}\n`}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  };

  const unsubscribe = feed.subscribe((records) => {
    for (const res of streams) for (const r of records) writeEvent(res, 'audit', r, r.seq);
  });

  // One state collection per period for every stream, and only when something changed.
  let lastState = '';
  const pushState = async () => {
    if (streams.size === 0 || stopping) return;
    try {
      const s = await snapshot();
      const { uptimeS: _uptime, ...comparable } = s;
      const key = JSON.stringify(comparable);
      if (key === lastState) return;
      lastState = key;
      for (const res of streams) writeEvent(res, 'state', s);
    } catch (err) {
      log.debug({ code: toAgentError(err).code, err: String(err) }, 'status page: state not collected');
    }
  };
  const stateTimer = setInterval(() => void pushState(), options.statePushMs ?? 1000);
  stateTimer.unref();
  const heartbeat = setInterval(() => {
    for (const res of streams) res.write(': ping\n\n');
  }, HEARTBEAT_MS);
  heartbeat.unref();

  const openStream = (req: IncomingMessage, res: ServerResponse) => {
    if (streams.size >= options.maxClients) {
      throw new AgentError('busy', `${options.maxClients} live streams are open already`);
    }
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      'x-accel-buffering': 'no',
      connection: 'keep-alive',
    });
    res.write('retry: 2000\n\n');
    streams.add(res);
    req.socket.setTimeout(0);
    res.on('close', () => streams.delete(res));
    const resumeText = req.headers['last-event-id'];
    const resume =
      typeof resumeText === 'string' && /^\d{1,15}$/.test(resumeText) ? Number(resumeText) : undefined;
    const first = resume === undefined ? feed.recent(INITIAL_EVENTS) : feed.since(resume);
    for (const r of first) writeEvent(res, 'audit', r, r.seq);
  };

  const authorise = (req: IncomingMessage) => {
    if (!tokenMatches(options.token, bearerToken(req.headers.authorization))) {
      throw new AgentError('unauthorized', 'this action needs the admin token (Authorization: Bearer …)');
    }
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (!bucket.take()) {
      res.setHeader('retry-after', '1');
      throw new AgentError('busy', 'too many requests; try again in a second');
    }
    const method = req.method ?? 'GET';
    let path: string;
    try {
      path = new URL(req.url ?? '/', 'http://status.invalid').pathname;
    } catch {
      throw new AgentError('bad_arguments', 'malformed request target');
    }
    if (checkHost) {
      const host = hostnameOf(req.headers.host);
      // DNS rebinding: a hostile site resolving its name to 127.0.0.1 sends its own Host header.
      if (host === undefined || !isLoopback(host)) {
        throw new AgentError('unauthorized', 'requests must name a loopback host (localhost, 127.0.0.1)');
      }
    }
    const sim = SIM_ROUTE.exec(path);
    const allowed = sim ? ['POST'] : ROUTES[path];
    if (allowed === undefined) throw new AgentError('not_found', `no ${path.slice(0, 80)} here`);
    if (!allowed.includes(method)) {
      res.setHeader('allow', allowed.join(', '));
      throw new AgentError('method_not_allowed', `${path} allows ${allowed.join(', ')}`);
    }
    if (stopping && path !== '/') throw new AgentError('unavailable', 'the agent is stopping');
    switch (path) {
      case '/':
        send(res, 200, STATUS_PAGE_HTML, 'text/html; charset=utf-8', {
          'content-security-policy': STATUS_PAGE_CSP,
          'x-frame-options': 'DENY',
        });
        return;
      case '/api/state':
        sendJson(res, 200, await snapshot());
        return;
      case '/api/events':
        openStream(req, res);
        return;
      case '/api/auth':
        authorise(req);
        await readJsonBody(req, maxBody);
        sendJson(res, 200, { ok: true });
        return;
      case '/healthz': {
        const report = options.health() ?? (await options.checkHealth());
        sendJson(res, report.healthy ? 200 : 503, { status: report.healthy ? 'ok' : 'unhealthy', ...report });
        return;
      }
      case '/metrics': {
        const [s, proc] = await Promise.all([snapshot(), processFigures()]);
        send(
          res,
          200,
          renderMetrics(metricFamilies(s, feed.decisions, proc, streams.size)),
          METRICS_CONTENT_TYPE,
        );
        return;
      }
    }
    // POST /api/sim/<action>: token first, then the body, then the action's own checks.
    authorise(req);
    const body = await readJsonBody(req, maxBody);
    const id = sim?.[1] ?? '';
    const action = options.simControls
      ? (await buildSimActions(handlers, options.demoDir)).find((a) => a.id === id)
      : undefined;
    if (!action) throw new AgentError('not_found', `no sim action ${id} (is the agent in sim mode?)`);
    const args = validateActionArgs(action, body);
    log.info({ action: id }, 'status page: sim action');
    const result = await action.run(args);
    sendJson(res, 200, { ok: true, result: result ?? null });
  };

  const server: Server = createServer({ maxHeaderSize: 8 * 1024 }, (req, res) => {
    handle(req, res).catch((err: unknown) => {
      const e = toAgentError(err);
      if (e.code === 'internal') log.error({ code: e.code, err: e.message }, 'status page request failed');
      else log.debug({ code: e.code, err: e.message }, 'status page request refused');
      // An unread request body would otherwise be parsed as the next request on this connection.
      const unread = !req.complete;
      const socket = req.socket as Socket | null;
      sendError(res, e, unread ? { connection: 'close' } : {});
      if (unread) res.on('finish', () => socket?.destroy());
    });
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  server.keepAliveTimeout = 5_000;
  server.maxConnections = options.maxClients + 16;
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    // Malformed request lines, oversized headers, timeouts: answered before any route runs.
    if (!socket.writable) return;
    const tooLarge = err.code === 'HPE_HEADER_OVERFLOW';
    const body = JSON.stringify({
      error: tooLarge
        ? { code: 'request_too_large', message: 'request headers too large' }
        : { code: 'bad_arguments', message: 'malformed HTTP request' },
    });
    socket.end(
      `HTTP/1.1 ${tooLarge ? '431 Request Header Fields Too Large' : '400 Bad Request'}\r\n` +
        `content-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
        `connection: close\r\n\r\n${body}`,
    );
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ code: 'internal', err: String(err) }, 'status page server error'));
  const address = server.address() as AddressInfo;
  const hostText = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  feed.start();

  let closing: Promise<void> | undefined;
  return {
    url: `http://${hostText}:${address.port}/`,
    port: address.port,
    streams: () => streams.size,
    setStopping: () => {
      if (stopping) return;
      stopping = true;
      for (const res of streams) {
        writeEvent(res, 'bye', { reason: 'stopping' });
        res.end();
      }
    },
    close: () => {
      closing ??= (async () => {
        stopping = true;
        clearInterval(stateTimer);
        clearInterval(heartbeat);
        unsubscribe();
        feed.stop();
        for (const res of streams) res.end();
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const socket of sockets) socket.destroy();
        await closed;
      })();
      return closing;
    },
  };
}
