import { chmod, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { TokenBucket } from '../core/token-bucket.js';

/**
 * The local control socket: newline-delimited JSON over a unix socket created 0600, so only the
 * agent's own user (and root) can talk to it. One request per line:
 *   → {"id":1,"cmd":"status","args":{}}
 *   ← {"id":1,"ok":true,"result":{...}}   or   {"id":1,"ok":false,"error":{"code":"...","message":"..."}}
 *
 * It shares the main thread with the unlock path, so every way a client can make it work is
 * bounded (docs/local-interfaces.md):
 * - one request at a time per connection: the next line is read only once the last reply was taken
 *   by the client, so a client that does not read holds at most one reply in memory, and one that
 *   takes longer than requestTimeoutMs to send a line or take a reply is closed;
 * - requests from all connections take turns (round robin), a few milliseconds of work at a time
 *   before the event loop gets back to the readers, within a budget of main-thread milliseconds a
 *   second (past it, requests wait; they are not refused);
 * - each connection has a request budget (beyond it: `busy`, without parsing); garbage is refused
 *   with a coded error before any handler runs, and a connection that keeps sending it is closed;
 * - idle connections are closed after idleTimeoutMs; when every slot is taken a newcomer evicts
 *   an idle connection (never one connected in the last evictGraceMs, whose first request may be
 *   on its way), and with none to evict still gets in up to twice maxConnections, so the CLI gets
 *   in; past that a newcomer gets `busy` (a little later, so refused clients cannot spin).
 * Every refusal, close and wait is counted (stats(), the `control.status` command, /metrics).
 */
export type ControlHandler = (args: Readonly<Record<string, unknown>>) => Promise<unknown> | unknown;

export const MAX_CONTROL_LINE = 64 * 1024;

export interface ControlLimits {
  /** Connections served at once; a newcomer beyond evicts the longest-idle one, else gets `busy`. */
  readonly maxConnections: number;
  /** A connection with no request in flight is closed after this long without one. */
  readonly idleTimeoutMs: number;
  /** A request line must arrive whole, and its reply be taken, within this long of starting. */
  readonly requestTimeoutMs: number;
  /**
   * Connections accepted a second (burst twice that); beyond, newcomers get `busy` unread (a
   * client that connects, writes and leaves flat out costs an accept and a line).
   */
  readonly connectionsPerSecond: number;
  /** Requests one connection may make a second (burst twice that); beyond, `busy`. */
  readonly requestsPerSecond: number;
  /** Bad requests (not JSON, no cmd, unknown command) one connection may send before it is closed. */
  readonly maxBadRequests: number;
  /** Main-thread milliseconds a second spent reading, parsing and answering requests. */
  readonly workMsPerSecond: number;
  /**
   * A connection this young is never evicted (its first request may be on its way); not a config
   * key, tests set it.
   */
  readonly evictGraceMs: number;
}

export const DEFAULT_CONTROL_LIMITS: ControlLimits = {
  maxConnections: 16,
  idleTimeoutMs: 10_000,
  requestTimeoutMs: 5_000,
  connectionsPerSecond: 200,
  requestsPerSecond: 50,
  maxBadRequests: 5,
  workMsPerSecond: 250,
  evictGraceMs: 500,
};

export interface ControlStats {
  /** Connections open now. */
  readonly connections: number;
  readonly accepted: number;
  /** Requests that were parsed and handed to a handler. */
  readonly requests: number;
  /** Lines refused as not a valid request (answered control_bad_request or unknown_command). */
  readonly badRequests: number;
  /**
   * Refused with `busy`: a newcomer when every connection was taken and none could be evicted (full), a
   * request over its connection's budget (budget), a newcomer over the connection rate (rate).
   */
  readonly refused: { readonly full: number; readonly budget: number; readonly rate: number };
  /** Connections closed by the server, by reason. */
  readonly closed: {
    readonly idle: number;
    readonly slowRequest: number;
    readonly slowReader: number;
    readonly garbage: number;
    readonly tooLong: number;
    readonly evicted: number;
  };
  /** The work budget: main-thread ms used, times requests had to wait for it, and for how long. */
  readonly work: { readonly usedMs: number; readonly deferrals: number; readonly waitedMs: number };
}

export interface ControlServer {
  readonly path: string;
  stats(): ControlStats;
  close(): Promise<void>;
}

/** Work done in one turn of the event loop before the loop gets back to the readers. */
const SLICE_MS = 2;
/** Budget a turn needs before it starts (its cost is measured and charged afterwards). */
const MIN_TURN_MS = 0.5;
/** A refused or closed connection is read (and discarded) this long for its client to close it. */
const LINGER_MS = 1000;
const LINGER_BYTES = 4096;
const MAX_LINGERING = 16;
/** A newcomer refused for want of room gets its `busy` this much later (see linger). */
const REFUSE_DELAY_MS = 100;
/** A warning about refusals goes to the log at most this often (the counters hold the rest). */
const WARN_EVERY_MS = 60_000;

type CloseReason = keyof ControlStats['closed'];

function errorLine(id: unknown, code: string, message: string): string {
  return `${JSON.stringify({ id, ok: false, error: { code, message } })}\n`;
}

const EMPTY = Buffer.alloc(0);
const NEWLINE = 0x0a;

class Connection {
  /** Bytes received and not yet taken as a line (complete lines are decoded one at a time). */
  buffer: Buffer = EMPTY;
  /** idle: waiting for a line; queued: a line waits for its turn; busy: handler running or reply unsent. */
  state: 'idle' | 'queued' | 'busy' = 'idle';
  /** When the connection last made progress (connected, or a reply was taken). */
  since: number;
  /** When the unfinished line in the buffer began. */
  partialSince: number | undefined;
  /** When the reply being written was handed to the socket. */
  writingSince: number | undefined;
  bad = 0;
  /** Requests handed to a handler on this connection (a client that did something real). */
  served = 0;
  closed = false;
  readonly budget: TokenBucket;

  constructor(
    readonly socket: Socket,
    now: number,
    requestsPerSecond: number,
  ) {
    this.since = now;
    this.budget = new TokenBucket(requestsPerSecond);
  }

  hasLine(): boolean {
    return this.buffer.indexOf(NEWLINE) >= 0;
  }

  /** The next non-blank complete line, consumed; undefined when there is none yet. */
  nextLine(): string | undefined {
    let nl = this.buffer.indexOf(NEWLINE);
    while (nl >= 0) {
      const line = this.buffer.toString('utf8', 0, nl).trim();
      this.buffer = this.buffer.subarray(nl + 1);
      if (line.length > 0) return line;
      nl = this.buffer.indexOf(NEWLINE);
    }
    return undefined;
  }
}

interface ParsedRequest {
  readonly id: string | number | null;
  readonly cmd: string;
  readonly args: Record<string, unknown>;
}

/** Throws control_bad_request (with the id when one could be read) for anything but a request. */
function parseRequest(line: string): ParsedRequest {
  // Cheap refusal first: a request is a JSON object, so anything else is not parsed at all.
  if (line.charCodeAt(0) !== 0x7b /* { */) throw new AgentError('control_bad_request', 'request is not JSON');
  let request: unknown;
  try {
    request = JSON.parse(line);
  } catch {
    throw new AgentError('control_bad_request', 'request is not JSON');
  }
  if (!isJsonObject(request)) {
    throw new AgentError('control_bad_request', 'request must be a JSON object');
  }
  const r = request;
  const id = typeof r.id === 'number' || typeof r.id === 'string' ? r.id : null;
  if (typeof r.cmd !== 'string')
    throw new AgentError('control_bad_request', 'request needs a string cmd', { id });
  const args = r.args ?? {};
  if (!isJsonObject(args)) throw new AgentError('control_bad_request', 'args must be an object', { id });
  return { id, cmd: r.cmd, args };
}

function isJsonObject(value: unknown): value is Readonly<Record<string, unknown>> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export async function startControlServer(
  path: string,
  handlers: ReadonlyMap<string, ControlHandler>,
  log: Logger,
  limitsIn: Partial<ControlLimits> = {},
): Promise<ControlServer> {
  const limits: ControlLimits = { ...DEFAULT_CONTROL_LIMITS, ...limitsIn };
  // A stale socket from a crashed run would make listen() fail with EADDRINUSE.
  await rm(path, { force: true });

  const counts = {
    accepted: 0,
    requests: 0,
    badRequests: 0,
    refused: { full: 0, budget: 0, rate: 0 },
    closed: { idle: 0, slowRequest: 0, slowReader: 0, garbage: 0, tooLong: 0, evicted: 0 },
    work: { usedMs: 0, deferrals: 0, waitedMs: 0 },
  };
  const connections = new Set<Connection>();
  const refusing = new Set<Socket>();
  const ready: Connection[] = [];
  // One request that held the loop long (a stall, a slow disk) closes the socket for at most
  // about a second after it, not for its duration divided by the budget.
  const work = new TokenBucket(limits.workMsPerSecond, {
    burst: Math.max(limits.workMsPerSecond / 5, SLICE_MS * 4),
    maxDebt: limits.workMsPerSecond,
  });
  const busyBudgetLine = errorLine(
    null,
    'busy',
    `over this connection's request budget (${limits.requestsPerSecond} a second); try again shortly`,
  );
  const busyFullLine = errorLine(
    null,
    'busy',
    `the agent is running but busy: all ${limits.maxConnections * 2} control connections are taken; try again`,
  );
  const evictedLine = errorLine(null, 'busy', 'closed while idle to make room for another client');
  let lastWarn = Number.NEGATIVE_INFINITY;
  const warn = (what: string) => {
    const now = performance.now();
    if (now - lastWarn < WARN_EVERY_MS) {
      log.debug({ code: 'busy' }, what);
      return;
    }
    lastWarn = now;
    log.warn(
      { code: 'busy', ...counts },
      `control socket: ${what} (further ones this minute are only counted)`,
    );
  };

  const charge = (ms: number) => {
    counts.work.usedMs += ms;
    work.spend(ms);
  };

  const close = (conn: Connection, reason: CloseReason) => {
    if (conn.closed) return;
    conn.closed = true;
    conn.buffer = EMPTY;
    counts.closed[reason] += 1;
    connections.delete(conn);
    conn.socket.destroy();
    if (reason !== 'idle') warn(`closed a connection (${reason})`);
  };

  /**
   * Sends a last line, ends the connection and discards whatever else the client sends until it
   * closes its end (destroying at once could reset the connection before the client read the
   * line), for at most LINGER_MS; at most MAX_LINGERING sockets linger, the oldest go first.
   * `delayMs`: the line is sent that much later. `hold` (a flooder): nothing more is read at all.
   */
  const linger = (socket: Socket, line: string, delayMs = 0, hold = false) => {
    refusing.add(socket);
    if (refusing.size > MAX_LINGERING) {
      const oldest = refusing.values().next().value as Socket;
      refusing.delete(oldest);
      oldest.destroy();
    }
    const timer = setTimeout(() => socket.destroy(), LINGER_MS);
    timer.unref();
    socket.on('close', () => {
      refusing.delete(socket);
      clearTimeout(timer); // and with it the last reference to the socket
    });
    if (hold) {
      // A flooder: nothing more is read, and it keeps this connection (and cannot reconnect to
      // start over) until LINGER_MS is up.
      socket.pause();
      socket.end(line);
      return;
    }
    // What it sends meanwhile is read and dropped, up to a point: a flood is cut off at once.
    let discarded = 0;
    socket.on('data', (chunk: Buffer) => {
      discarded += chunk.length;
      if (discarded > LINGER_BYTES) socket.destroy();
    });
    if (delayMs === 0) {
      socket.resume();
      socket.end(line);
      return;
    }
    // A refused newcomer waits a little for its answer (unread), so clients that reconnect as
    // soon as they are refused do not spin the agent's loop.
    const answer = setTimeout(() => {
      socket.resume();
      socket.end(line);
    }, delayMs);
    answer.unref();
    socket.once('close', () => clearTimeout(answer));
  };

  const closeAfter = (conn: Connection, line: string, reason: CloseReason) => {
    if (conn.closed) return;
    conn.closed = true;
    conn.buffer = EMPTY;
    counts.closed[reason] += 1;
    connections.delete(conn);
    const flooder = reason === 'garbage' || reason === 'tooLong';
    linger(conn.socket, line, 0, flooder);
    warn(`closed a connection (${reason})`);
  };

  // ── the turn-taking pump ──────────────────────────────────────────────────
  let scheduled = false;
  let waitTimer: NodeJS.Timeout | undefined;
  const schedule = () => {
    if (scheduled || waitTimer !== undefined || ready.length === 0) return;
    scheduled = true;
    setImmediate(pump);
  };
  const enqueue = (conn: Connection) => {
    conn.state = 'queued';
    conn.socket.pause();
    ready.push(conn);
    schedule();
  };
  function pump(): void {
    scheduled = false;
    const sliceStart = performance.now();
    while (ready.length > 0) {
      const wait = work.msUntil(MIN_TURN_MS);
      if (wait > 0) {
        counts.work.deferrals += 1;
        const waitStart = performance.now();
        waitTimer = setTimeout(() => {
          waitTimer = undefined;
          counts.work.waitedMs += performance.now() - waitStart;
          schedule();
        }, Math.ceil(wait));
        return;
      }
      if (performance.now() - sliceStart >= SLICE_MS) break;
      const conn = ready.shift() as Connection;
      if (conn.closed) continue;
      const t0 = performance.now();
      serve(conn);
      charge(performance.now() - t0);
    }
    schedule();
  }

  const reply = (conn: Connection, line: string) => {
    if (conn.closed) return;
    conn.writingSince = performance.now();
    conn.socket.write(line, (err) => {
      conn.writingSince = undefined;
      if (err || conn.closed) return;
      conn.since = performance.now();
      afterReply(conn);
    });
  };

  const afterReply = (conn: Connection) => {
    if (conn.hasLine()) {
      enqueue(conn);
      return;
    }
    conn.state = 'idle';
    conn.partialSince = conn.buffer.length > 0 ? performance.now() : undefined;
    conn.socket.resume();
  };

  const refuse = (conn: Connection, id: unknown, err: AgentError) => {
    counts.badRequests += 1;
    conn.bad += 1;
    const line = errorLine(id, err.code, err.message);
    if (conn.bad >= limits.maxBadRequests) closeAfter(conn, line, 'garbage');
    else reply(conn, line);
  };

  function serve(conn: Connection): void {
    const line = conn.nextLine();
    if (line === undefined) {
      afterReply(conn); // only blank lines: back to reading
      return;
    }
    conn.state = 'busy';
    conn.partialSince = undefined;
    if (!conn.budget.take()) {
      counts.refused.budget += 1;
      warn('refused requests over a connection budget');
      reply(conn, busyBudgetLine);
      return;
    }
    let request: ParsedRequest;
    try {
      request = parseRequest(line);
    } catch (err) {
      const e = toAgentError(err, 'control_bad_request');
      refuse(conn, (e.details.id as unknown) ?? null, e);
      return;
    }
    const handler = handlers.get(request.cmd);
    if (!handler) {
      refuse(
        conn,
        request.id,
        new AgentError('unknown_command', `unknown control command ${request.cmd.slice(0, 40)}`),
      );
      return;
    }
    counts.requests += 1;
    conn.served += 1;
    const finish = (body: Record<string, unknown>) => {
      if (conn.closed) return;
      const t0 = performance.now();
      const text = `${JSON.stringify(body)}\n`;
      charge(performance.now() - t0);
      reply(conn, text);
    };
    const fail = (err: unknown) => {
      const e = toAgentError(err);
      if (e.code === 'internal') log.error({ code: e.code, err: e.message }, 'control handler failed');
      else log.debug({ code: e.code, err: e.message }, 'control request refused');
      finish({ id: request.id, ok: false, error: { code: e.code, message: e.message } });
    };
    try {
      const result = handler(request.args);
      if (result instanceof Promise) {
        result.then((value: unknown) => finish({ id: request.id, ok: true, result: value ?? null }), fail);
      } else {
        finish({ id: request.id, ok: true, result: result ?? null });
      }
    } catch (err) {
      fail(err);
    }
  }

  // ── connections ───────────────────────────────────────────────────────────
  /** Reads from an idle connection now, or (paused meanwhile) once the work budget allows. */
  const resumeWhenBudget = (conn: Connection) => {
    const wait = work.msUntil(MIN_TURN_MS);
    if (wait <= 0) {
      conn.socket.resume();
      return;
    }
    conn.socket.pause();
    counts.work.deferrals += 1;
    const waitStart = performance.now();
    setTimeout(() => {
      counts.work.waitedMs += performance.now() - waitStart;
      if (!conn.closed && conn.state === 'idle') resumeWhenBudget(conn);
    }, Math.ceil(wait)).unref();
  };

  const admit = (socket: Socket): boolean => {
    if (connections.size < limits.maxConnections) return true;
    // Full: make room by evicting an idle connection (no request in flight), one that never sent a
    // request before one that did, the longest idle first; never one younger than evictGraceMs,
    // which may be a client whose first line is on its way (evicting by age alone lets clients
    // that reconnect when evicted evict each other in a ring, and the CLI with them).
    const now = performance.now();
    let victim: Connection | undefined;
    for (const c of connections) {
      if (c.state !== 'idle' || c.writingSince !== undefined || now - c.since < limits.evictGraceMs) continue;
      if (
        !victim ||
        (c.served === 0 && victim.served > 0) ||
        ((c.served === 0) === (victim.served === 0) && c.since < victim.since)
      )
        victim = c;
    }
    if (victim) {
      closeAfter(victim, evictedLine, 'evicted');
      return true;
    }
    // Nothing old enough to evict: a newcomer still gets in, up to twice the slots, so the CLI is
    // not turned away by clients that just connected.
    if (connections.size < limits.maxConnections * 2) return true;
    counts.refused.full += 1;
    warn('refused a connection: every slot taken, none idle long enough to close');
    socket.on('error', () => socket.destroy());
    linger(socket, busyFullLine, REFUSE_DELAY_MS);
    return false;
  };

  // Paused on connect: nothing is read from a connection before it is admitted, so refusing one
  // costs no read of what it sent.
  // Connections over the rate get `busy` unread (a client tries again a little later); past the
  // hard cap node itself drops them.
  const hardCap = limits.maxConnections * 2 + MAX_LINGERING + 16;
  const arrivals = new TokenBucket(limits.connectionsPerSecond);
  const busyRateLine = errorLine(
    null,
    'busy',
    `more than ${limits.connectionsPerSecond} control connections a second; try again shortly`,
  );
  const server: Server = createServer({ pauseOnConnect: true }, (socket) => {
    const t0 = performance.now();
    counts.accepted += 1;
    if (!arrivals.take()) {
      counts.refused.rate += 1;
      warn('refused connections over the connection rate');
      socket.on('error', () => socket.destroy());
      linger(socket, busyRateLine, 0, true);
      return;
    }
    if (!admit(socket)) {
      charge(performance.now() - t0);
      return;
    }
    const conn = new Connection(socket, t0, limits.requestsPerSecond);
    connections.add(conn);
    socket.on('close', () => {
      refusing.delete(socket);
      if (!conn.closed) {
        conn.closed = true;
        connections.delete(conn);
      }
    });
    socket.on('error', () => socket.destroy());
    socket.on('data', (chunk: Buffer) => {
      if (conn.closed) return;
      const t0 = performance.now();
      conn.buffer = conn.buffer.length === 0 ? chunk : Buffer.concat([conn.buffer, chunk]);
      const nl = conn.buffer.indexOf(NEWLINE);
      if (nl > MAX_CONTROL_LINE || (nl < 0 && conn.buffer.length > MAX_CONTROL_LINE)) {
        conn.buffer = EMPTY;
        closeAfter(
          conn,
          errorLine(null, 'control_bad_request', `request longer than ${MAX_CONTROL_LINE} bytes`),
          'tooLong',
        );
      } else if (conn.state === 'idle') {
        if (nl >= 0) enqueue(conn);
        else conn.partialSince ??= t0;
      }
      charge(performance.now() - t0);
      // Past the work budget, stop reading until there is budget again.
      if (conn.state === 'idle') resumeWhenBudget(conn);
    });
    charge(performance.now() - t0);
    // Past the work budget, a newcomer is held (paused, nothing read) until there is budget
    // again: it waits its turn rather than being refused, so the CLI gets in after a flood.
    resumeWhenBudget(conn);
  });
  // A hard ceiling on sockets beyond the managed ones (those lingering after a refusal or close).
  server.maxConnections = hardCap;
  server.on('drop', () => {
    counts.refused.full += 1; // past the hard cap
  });

  const sweepMs = Math.max(10, Math.min(1000, Math.min(limits.idleTimeoutMs, limits.requestTimeoutMs) / 4));
  const sweep = setInterval(() => {
    const now = performance.now();
    for (const c of connections) {
      if (c.writingSince !== undefined && now - c.writingSince > limits.requestTimeoutMs)
        close(c, 'slowReader');
      else if (c.state !== 'idle') continue;
      else if (c.partialSince !== undefined && now - c.partialSince > limits.requestTimeoutMs)
        close(c, 'slowRequest');
      else if (c.partialSince === undefined && now - c.since > limits.idleTimeoutMs) close(c, 'idle');
    }
  }, sweepMs);
  sweep.unref();

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  await chmod(path, 0o600);
  return {
    path,
    stats: () => ({
      connections: connections.size,
      accepted: counts.accepted,
      requests: counts.requests,
      badRequests: counts.badRequests,
      refused: { ...counts.refused },
      closed: { ...counts.closed },
      work: {
        usedMs: Math.round(counts.work.usedMs),
        deferrals: counts.work.deferrals,
        waitedMs: Math.round(counts.work.waitedMs),
      },
    }),
    close: async () => {
      clearInterval(sweep);
      clearTimeout(waitTimer);
      for (const c of connections) c.socket.destroy();
      for (const s of refusing) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(path, { force: true });
    },
  };
}
