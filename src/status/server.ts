import { readdir } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { Code } from '../core/codes.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { TokenBucket } from '../core/token-bucket.js';
import type { HealthReport } from '../host/health-monitor.js';
import { bearerToken, tokenMatches } from './admin-token.js';
import type { AuditFeed } from './audit-feed.js';
import { METRICS_CONTENT_TYPE, renderMetrics } from './metrics.js';
import { STATUS_PAGE_CSP, statusPageHtml } from './page.js';
import { defaultPhoneAppDir, loadPhoneApp, PHONE_APP_CSP, type PhoneAppFiles } from './phone-app.js';
import {
  buildSimActions,
  type HandlerMap,
  type SimDemo,
  simDemo,
  validateActionArgs,
} from './sim-actions.js';
import { createSimRadio, SIM_RADIO_MAX_BODY_BYTES } from './sim-radio.js';
import { collectSnapshot, localInterfaceFamilies, metricFamilies, type StateSnapshot } from './snapshot.js';

export { TokenBucket } from '../core/token-bucket.js';

/**
 * The status page's HTTP server (node:http). Read-only views need nothing; anything that changes
 * state (the sim actions) needs `Authorization: Bearer <admin token>`, which a cross-site form or
 * image cannot send. Every refusal is JSON `{"error":{"code","message"}}` with a stable code
 * from codes.ts, decided before any handler runs. Nothing on the unlock path waits on this
 * server; it only calls the control handlers, as the control socket does.
 *
 * It shares the agent's event loop, so what a client can make it do is bounded
 * (docs/local-interfaces.md): the Host header must name this server exactly (DNS rebinding);
 * requests are counted against one budget per client class, so an anonymous flood cannot drain
 * the admin's budget (requests carrying the admin token) nor /healthz's; connections are capped,
 * and a newcomer evicts the oldest connection that is still sending its headers or idle between
 * requests (slowloris), with Node's headers, request and keep-alive timeouts behind that; live
 * streams are capped and a stream that stops reading is dropped. Everything refused or closed is
 * counted (stats(), /metrics, `status`).
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
  /** The demo keys (files in demoDir) and tags the sim controls offer; default none. */
  readonly demoCredentials?: Omit<SimDemo, 'dir'>;
  readonly log: Logger;
  /** Largest request body; default 16 KiB. */
  readonly maxBodyBytes?: number;
  /** State pushed to live streams this often; default 1000 ms. */
  readonly statePushMs?: number;
  /** Requests without the admin token answered per second, burst twice that; default 50. */
  readonly requestsPerSecond?: number;
  /** Requests carrying the admin token answered per second (their own budget); default 20. */
  readonly adminRequestsPerSecond?: number;
  /** /healthz requests answered per second (their own budget); default 20. */
  readonly healthRequestsPerSecond?: number;
  /** Connections open at once (live streams included); default 64. */
  readonly maxConnections?: number;
  /** Connections still sending their headers or idle between requests; default 16. */
  readonly maxPendingConnections?: number;
  /** Headers must arrive within this long of the connection or the previous request; default 5000. */
  readonly headersTimeoutMs?: number;
  /** A whole request must arrive within this long, and a response must be taken; default 10 000. */
  readonly requestTimeoutMs?: number;
  /** An idle keep-alive connection is closed after this long; default 5000. */
  readonly keepAliveTimeoutMs?: number;
  /**
   * Further Host names the server answers to, `name` or `name:port` (the server's port when none
   * is given), e.g. `vehicle.lan` or `localhost:9999` for an ssh tunnel on another local port.
   */
  readonly allowedHosts?: readonly string[];
  /** The built phone-key app served at /key/; default dist/web/phone-key (src/status/phone-app.ts). */
  readonly phoneAppDir?: string;
}

export type ClientClass = 'anonymous' | 'admin' | 'health';

export interface StatusServerStats {
  /** Connections open now: total, still sending headers or idle, and live streams. */
  readonly connections: number;
  readonly pending: number;
  readonly streams: number;
  /** Requests that passed the Host check and their class budget, by class. */
  readonly answered: Readonly<Record<ClientClass, number>>;
  /** Refused: over a class budget (by class), a foreign Host, a connection past the cap, a stream past the cap. */
  readonly refused: {
    readonly anonymous: number;
    readonly admin: number;
    readonly health: number;
    readonly host: number;
    readonly connections: number;
    readonly streams: number;
  };
  /**
   * Closed by the server: evicted while sending headers or idle, a headers or request timeout, a
   * client not reading what it was sent, a client pipelining more requests than allowed.
   */
  readonly closed: {
    readonly evicted: number;
    readonly timeout: number;
    readonly slowReader: number;
    readonly pipelined: number;
  };
}

export interface StatusServer {
  readonly url: string;
  readonly port: number;
  /** Live event streams open now. */
  streams(): number;
  /** What the budgets answered, refused and closed (for /metrics, `status` and the page). */
  stats(): StatusServerStats;
  /** Shutdown began: API requests get `unavailable`, streams are told and closed. */
  setStopping(): void;
  close(): Promise<void>;
}

/** How long the page waits for the state to put in it before it is sent without. */
const FIRST_PAINT_WAIT_MS = 250;

const HTTP_STATUS: Partial<Record<Code, number>> = {
  bad_arguments: 400,
  control_bad_request: 400,
  unauthorized: 401,
  not_found: 404,
  unknown_command: 404,
  method_not_allowed: 405,
  host_not_allowed: 403,
  request_too_large: 413,
  request_timeout: 408,
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
  '/api/enroll/approve-fido': ['POST'],
  '/healthz': ['GET', 'HEAD'],
  '/metrics': ['GET'],
};
const SIM_ROUTE = /^\/api\/sim\/([a-z][a-z0-9-]{0,31})$/;
/** The phone-key app: /key/ and the files of its table (src/status/phone-app.ts). */
const PHONE_APP_ROUTE = /^\/key(\/.*)?$/;
/** In sim mode only: what tells the page it may use the simulated radio, and the radio itself. */
const SIM_RADIO_INFO_PATH = '/key/sim-radio.json';
const SIM_RADIO_PATH = '/key/radio';
const INITIAL_EVENTS = 30;
/** One state collection serves every request within this window (page, streams, scrapes). */
const SNAPSHOT_TTL_MS = 250;
/**
 * Requests answered per second and class (burst twice that). The agent's loop is shared with the
 * unlock path: a local client hammering the page must not slow taps down. The page itself makes
 * one request plus a stream; a Prometheus scrape is one request per interval.
 */
const REQUESTS_PER_SECOND = 50;
const ADMIN_REQUESTS_PER_SECOND = 20;
const HEALTH_REQUESTS_PER_SECOND = 20;
const MAX_CONNECTIONS = 64;
const MAX_PENDING_CONNECTIONS = 16;
const HEADERS_TIMEOUT_MS = 5000;
const REQUEST_TIMEOUT_MS = 10_000;
const KEEP_ALIVE_TIMEOUT_MS = 5000;
/** A request over its class budget is answered `busy` this much later (see handle). */
const REFUSE_DELAY_MS = 1000;
/** Requests one connection may have in flight at once (HTTP pipelining); beyond, it is closed. */
const MAX_PIPELINED = 8;
const HEARTBEAT_MS = 15_000;
const MAX_STREAM_BUFFER = 1024 * 1024;
const WILDCARD_ADDRESSES = new Set(['0.0.0.0', '::', '']);

/** `name` as a Host header carries it: IPv6 literals in brackets, lower case. */
function hostLiteral(name: string): string {
  const bare = name.toLowerCase();
  return bare.includes(':') && !bare.startsWith('[') ? `[${bare}]` : bare;
}

/**
 * Every Host header value this server answers to, exactly: the loopback names and the address it
 * listens on, each with its port (bare too on port 80), the machine's own addresses when it listens
 * on all of them, and the configured extras. A DNS-rebinding page sends its own name, which is not
 * here; IP literals are safe to allow, since a page served from one is already same-origin.
 */
export function allowedHostHeaders(
  listenHost: string,
  port: number,
  extra: readonly string[] = [],
  localAddresses: readonly string[] = [],
): Set<string> {
  const names = new Set(['127.0.0.1', 'localhost', '[::1]']);
  if (WILDCARD_ADDRESSES.has(listenHost)) for (const a of localAddresses) names.add(hostLiteral(a));
  else names.add(hostLiteral(listenHost));
  const allowed = new Set<string>();
  for (const name of names) {
    allowed.add(`${name}:${port}`);
    if (port === 80) allowed.add(name);
  }
  for (const entry of extra) {
    const e = entry.trim().toLowerCase();
    if (e === '') continue;
    const ipv6 = (e.match(/:/g) ?? []).length > 1 && !e.startsWith('[');
    allowed.add(!ipv6 && /:\d{1,5}$/.test(e) ? e : `${hostLiteral(e)}:${port}`);
  }
  return allowed;
}

function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return address === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4);
}

function localAddresses(): string[] {
  return Object.values(networkInterfaces()).flatMap((list) =>
    (list ?? []).map((i) => (i.family === 'IPv6' ? i.address.replace(/%.*$/, '') : i.address)),
  );
}

function send(
  res: ServerResponse,
  status: number,
  body: string | Buffer,
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
  const maxConnections = Math.max(options.maxConnections ?? MAX_CONNECTIONS, options.maxClients + 2);
  const maxPending = options.maxPendingConnections ?? MAX_PENDING_CONNECTIONS;
  const headersTimeoutMs = options.headersTimeoutMs ?? HEADERS_TIMEOUT_MS;
  const requestTimeoutMs = Math.max(options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS, headersTimeoutMs);
  const streams = new Set<ServerResponse>();
  let stopping = false;
  // Loaded once, before the server listens: requests are answered from memory, never the disk.
  const phoneAppDir = options.phoneAppDir ?? defaultPhoneAppDir();
  let phoneApp: PhoneAppFiles | undefined;
  let phoneAppMissing = '';
  try {
    phoneApp = await loadPhoneApp(phoneAppDir);
  } catch (err) {
    phoneAppMissing = toAgentError(err).message;
    log.info(
      { code: toAgentError(err).code, err: phoneAppMissing },
      'status page: no phone-key app to serve at /key/',
    );
  }
  let allowedHosts = new Set<string>(); // filled once the port is known
  const simRadio = createSimRadio({ handlers });
  const simRadioOffered = () => options.simControls && simRadio.offered();

  const budgets: Record<ClientClass, TokenBucket> = {
    anonymous: new TokenBucket(options.requestsPerSecond ?? REQUESTS_PER_SECOND),
    admin: new TokenBucket(options.adminRequestsPerSecond ?? ADMIN_REQUESTS_PER_SECOND),
    health: new TokenBucket(options.healthRequestsPerSecond ?? HEALTH_REQUESTS_PER_SECOND),
  };
  const counts = {
    answered: { anonymous: 0, admin: 0, health: 0 },
    refused: { anonymous: 0, admin: 0, health: 0, host: 0, connections: 0, streams: 0 },
    closed: { evicted: 0, timeout: 0, slowReader: 0, pipelined: 0 },
  };

  /**
   * Every open connection: `pending` while it sends headers or sits idle between requests (what
   * a slowloris client does forever), `active` while a request is served, `stream` while it
   * carries a live stream. `stuckSince`: since when it has had output the client does not take.
   */
  interface Conn {
    phase: 'pending' | 'active' | 'stream';
    since: number;
    stuckSince: number | undefined;
    /** Requests parsed and not yet answered (more than one when the client pipelines). */
    inflight: number;
  }
  const conns = new Map<Socket, Conn>();
  const pendingCount = () => {
    let n = 0;
    for (const c of conns.values()) if (c.phase === 'pending') n++;
    return n;
  };
  const evictOldestPending = (): boolean => {
    let oldest: [Socket, Conn] | undefined;
    for (const entry of conns) {
      if (entry[1].phase === 'pending' && (!oldest || entry[1].since < oldest[1].since)) oldest = entry;
    }
    if (!oldest) return false;
    counts.closed.evicted += 1;
    conns.delete(oldest[0]);
    oldest[0].destroy();
    return true;
  };

  let cached: { at: number; value: Promise<StateSnapshot> } | undefined;
  const snapshot = (): Promise<StateSnapshot> => {
    const now = performance.now();
    if (cached && now - cached.at < SNAPSHOT_TTL_MS) return cached.value;
    const value = collectSnapshot({
      handlers,
      health: options.health,
      auditSeq: () => feed.lastSeq,
      demoDir: options.demoDir,
      ...(options.demoCredentials ? { demoCredentials: options.demoCredentials } : {}),
      simControls: options.simControls,
    });
    cached = { at: now, value };
    value.catch(() => {
      if (cached?.value === value) cached = undefined;
    });
    return value;
  };

  /**
   * The state for the page's first paint: the cached snapshot, or nothing if it is not there soon
   * (the page then fetches it, as it always does next): the page never waits on a slow handler.
   */
  const firstPaintState = async (): Promise<StateSnapshot | undefined> => {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<undefined>((resolve) => {
      timer = setTimeout(resolve, FIRST_PAINT_WAIT_MS, undefined);
    });
    try {
      return await Promise.race([snapshot().catch(() => undefined), late]);
    } finally {
      clearTimeout(timer);
    }
  };

  const writeEvent = (res: ServerResponse, event: string, data: unknown, id?: number) => {
    if (res.writableLength > MAX_STREAM_BUFFER) {
      // A reader that stopped reading: drop it rather than buffer without bound.
      counts.closed.slowReader += 1;
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
      counts.refused.streams += 1;
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
    const conn = conns.get(req.socket);
    if (conn) conn.phase = 'stream';
    req.socket.setTimeout(0);
    res.on('close', () => streams.delete(res));
    const resumeText = req.headers['last-event-id'];
    const resume =
      typeof resumeText === 'string' && /^\d{1,15}$/.test(resumeText) ? Number(resumeText) : undefined;
    const first = resume === undefined ? feed.recent(INITIAL_EVENTS) : feed.since(resume);
    for (const r of first) writeEvent(res, 'audit', r, r.seq);
  };

  const hasToken = (req: IncomingMessage) =>
    tokenMatches(options.token, bearerToken(req.headers.authorization));
  const authorise = (req: IncomingMessage) => {
    if (!hasToken(req)) {
      throw new AgentError('unauthorized', 'this action needs the admin token (Authorization: Bearer …)');
    }
  };

  /** A file of the phone-key app, looked up by exact name in the table (no path is ever built from the request). */
  const servePhoneApp = (res: ServerResponse, method: string, rest: string | undefined) => {
    if (method !== 'GET' && method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      throw new AgentError('method_not_allowed', '/key/ allows GET, HEAD');
    }
    // /key without the slash: relative links in the page (app.js, sw.js) need the folder form.
    if (rest === undefined) {
      send(res, 308, '', 'text/plain; charset=utf-8', { location: '/key/' });
      return;
    }
    if (phoneApp === undefined) throw new AgentError('not_found', phoneAppMissing);
    const name = rest === '/' ? 'index.html' : rest.slice(1);
    const file = phoneApp.get(name);
    if (file === undefined) throw new AgentError('not_found', `no ${rest.slice(0, 80)} in the phone-key app`);
    send(res, 200, file.body, file.type, {
      // Revalidated each time online; the page's own service worker keeps it for offline use.
      'cache-control': 'no-cache',
      ...(name.endsWith('.html')
        ? { 'content-security-policy': PHONE_APP_CSP, 'x-frame-options': 'DENY' }
        : {}),
    });
  };

  /**
   * The phone-key page's simulated radio (src/status/sim-radio.ts). Absent unless the agent runs
   * the simulated central; only for loopback peers (an ssh tunnel arrives there too) and
   * same-origin pages; no token: it gives what a central in radio range has, no authority.
   */
  const serveSimRadio = async (req: IncomingMessage, res: ServerResponse, method: string, path: string) => {
    if (!simRadioOffered()) throw new AgentError('not_found', `no ${path} in the phone-key app`);
    const allowed = path === SIM_RADIO_INFO_PATH ? ['GET', 'HEAD'] : ['POST'];
    if (!allowed.includes(method)) {
      res.setHeader('allow', allowed.join(', '));
      throw new AgentError('method_not_allowed', `${path} allows ${allowed.join(', ')}`);
    }
    if (stopping) throw new AgentError('unavailable', 'the agent is stopping');
    if (path === SIM_RADIO_INFO_PATH) {
      sendJson(res, 200, { simulated: true, endpoint: 'radio' });
      return;
    }
    if (!isLoopback(req.socket.remoteAddress)) {
      throw new AgentError('host_not_allowed', 'the simulated radio answers loopback clients only');
    }
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== `http://${req.headers.host?.trim().toLowerCase() ?? ''}`) {
      throw new AgentError('origin_not_allowed', 'the simulated radio answers the phone-key page only');
    }
    const body = await readJsonBody(req, SIM_RADIO_MAX_BODY_BYTES);
    sendJson(res, 200, await simRadio.call(body));
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    // DNS rebinding: a hostile site resolving its own name to this address sends that name.
    const host = req.headers.host?.trim().toLowerCase();
    if (host === undefined || !allowedHosts.has(host)) {
      counts.refused.host += 1;
      throw new AgentError(
        'host_not_allowed',
        `this server answers only to ${[...allowedHosts].slice(0, 3).join(', ')} (statusPage.allowedHosts adds names)`,
      );
    }
    const method = req.method ?? 'GET';
    let path: string;
    try {
      path = new URL(req.url ?? '/', 'http://status.invalid').pathname;
    } catch {
      throw new AgentError('bad_arguments', 'malformed request target');
    }
    const kind: ClientClass = path === '/healthz' ? 'health' : hasToken(req) ? 'admin' : 'anonymous';
    if (!budgets[kind].take()) {
      counts.refused[kind] += 1;
      // Answered a second later: a client requesting back to back then gets one refusal a second
      // per connection instead of thousands (each costs the loop a parse and a response). While it
      // waits, its connection counts as pending, so a newcomer can evict it.
      const conn = conns.get(req.socket);
      if (conn) {
        conn.phase = 'pending';
        conn.since = performance.now();
      }
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          req.socket.off('close', done);
          resolve();
        };
        const timer = setTimeout(done, REFUSE_DELAY_MS);
        req.socket.on('close', done);
      });
      res.setHeader('retry-after', '1');
      throw new AgentError('busy', 'too many requests; try again in a second');
    }
    counts.answered[kind] += 1;
    if (path === SIM_RADIO_INFO_PATH || path === SIM_RADIO_PATH) {
      await serveSimRadio(req, res, method, path);
      return;
    }
    const key = PHONE_APP_ROUTE.exec(path);
    if (key) {
      servePhoneApp(res, method, key[1]);
      return;
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
        send(
          res,
          200,
          statusPageHtml(stopping ? undefined : await firstPaintState()),
          'text/html; charset=utf-8',
          {
            'content-security-policy': STATUS_PAGE_CSP,
            'x-frame-options': 'DENY',
          },
        );
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
      case '/api/enroll/approve-fido': {
        // Arms the reader for an owner FIDO key (enroll.approval.arm); the approval itself is the
        // key's signature at the reader: the token alone approves nothing.
        authorise(req);
        await readJsonBody(req, maxBody);
        const arm = handlers.get('enroll.approval.arm');
        if (!arm)
          throw new AgentError(
            'not_found',
            'approval with an owner FIDO key needs the BLE and NFC readers (ble.enabled, nfc.enabled)',
          );
        const armed = await arm({});
        log.info('status page: reader armed for an owner FIDO key to approve the pending enrollment');
        sendJson(res, 200, { ok: true, result: armed ?? null });
        return;
      }
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
          renderMetrics([
            ...metricFamilies(s, feed.decisions, proc, streams.size),
            ...localInterfaceFamilies(s.subsystems, stats()),
          ]),
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
      ? (await buildSimActions(handlers, simDemo(options.demoDir, options.demoCredentials))).find(
          (a) => a.id === id,
        )
      : undefined;
    if (!action) throw new AgentError('not_found', `no sim action ${id} (is the agent in sim mode?)`);
    const args = validateActionArgs(action, body);
    log.info({ action: id }, 'status page: sim action');
    const result = await action.run(args);
    sendJson(res, 200, { ok: true, result: result ?? null });
  };

  const server: Server = createServer(
    // Node checks the headers and request timeouts on this interval (30 s by default).
    { maxHeaderSize: 8 * 1024, connectionsCheckingInterval: Math.min(1000, headersTimeoutMs / 2) },
    (req, res) => {
      const conn = conns.get(req.socket);
      if (conn) {
        conn.phase = 'active';
        conn.inflight += 1;
        if (conn.inflight > MAX_PIPELINED) {
          // Node parses a whole chunk of pipelined requests at once and buffers every response.
          counts.closed.pipelined += 1;
          conns.delete(req.socket);
          req.socket.destroy();
          return;
        }
      }
      res.on('close', () => {
        const c = conns.get(req.socket);
        if (c === undefined) return;
        c.inflight -= 1;
        if (c.phase === 'active' && c.inflight === 0) {
          c.phase = 'pending'; // idle between keep-alive requests: evictable again
          c.since = performance.now();
        }
      });
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
    },
  );
  server.headersTimeout = headersTimeoutMs;
  server.requestTimeout = requestTimeoutMs;
  server.keepAliveTimeout = options.keepAliveTimeoutMs ?? KEEP_ALIVE_TIMEOUT_MS;
  // A hard ceiling behind the managed one (newcomers being refused still take a socket briefly).
  server.maxConnections = maxConnections + 16;
  server.on('connection', (socket: Socket) => {
    // Room for the newcomer: connections still sending headers (or idle) give way, oldest first,
    // so slow clients cannot hold every slot; past the cap with nothing to evict, a coded 503.
    if (pendingCount() >= maxPending) evictOldestPending();
    if (conns.size >= maxConnections && !evictOldestPending()) {
      counts.refused.connections += 1;
      const body = JSON.stringify({
        error: { code: 'busy', message: `${maxConnections} connections are busy; try again shortly` },
      });
      socket.on('error', () => socket.destroy());
      socket.end(
        'HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n' +
          `content-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
          `connection: close\r\n\r\n${body}`,
        () => socket.destroy(),
      );
      return;
    }
    conns.set(socket, { phase: 'pending', since: performance.now(), stuckSince: undefined, inflight: 0 });
    socket.on('close', () => conns.delete(socket));
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    // Malformed request lines, oversized headers, timeouts: answered before any route runs.
    const timeout = err.code === 'ERR_HTTP_REQUEST_TIMEOUT';
    if (timeout) counts.closed.timeout += 1;
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const tooLarge = err.code === 'HPE_HEADER_OVERFLOW';
    const [status, error] = timeout
      ? ['408 Request Timeout', { code: 'request_timeout', message: 'the request did not arrive in time' }]
      : tooLarge
        ? [
            '431 Request Header Fields Too Large',
            { code: 'request_too_large', message: 'request headers too large' },
          ]
        : ['400 Bad Request', { code: 'bad_arguments', message: 'malformed HTTP request' }];
    const body = JSON.stringify({ error });
    socket.end(
      `HTTP/1.1 ${status}\r\n` +
        `content-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
        `connection: close\r\n\r\n${body}`,
      () => socket.destroy(),
    );
  });

  // A client that stops taking what it is sent (a response, a stream) is closed after a while.
  const sweep = setInterval(
    () => {
      const now = performance.now();
      for (const [socket, c] of conns) {
        if (socket.writableLength === 0) c.stuckSince = undefined;
        else if (c.stuckSince === undefined) c.stuckSince = now;
        else if (now - c.stuckSince > requestTimeoutMs) {
          counts.closed.slowReader += 1;
          conns.delete(socket);
          socket.destroy();
        }
      }
    },
    Math.min(1000, requestTimeoutMs / 4),
  );
  sweep.unref();

  const stats = (): StatusServerStats => ({
    connections: conns.size,
    pending: pendingCount(),
    streams: streams.size,
    answered: { ...counts.answered },
    refused: { ...counts.refused },
    closed: { ...counts.closed },
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
  allowedHosts = allowedHostHeaders(
    options.host,
    address.port,
    options.allowedHosts,
    WILDCARD_ADDRESSES.has(options.host) ? localAddresses() : [],
  );
  const hostText = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  feed.start();

  let closing: Promise<void> | undefined;
  return {
    url: `http://${hostText}:${address.port}/`,
    port: address.port,
    streams: () => streams.size,
    stats,
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
        clearInterval(sweep);
        unsubscribe();
        feed.stop();
        await simRadio.close();
        for (const res of streams) res.end();
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const socket of conns.keys()) socket.destroy();
        await closed;
      })();
      return closing;
    },
  };
}
