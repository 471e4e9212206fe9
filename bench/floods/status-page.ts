import { Agent, request } from 'node:http';
import { connect, type Socket } from 'node:net';

/**
 * Flood generators for the status page (issue 12, finding 6), for bench/flood.ts and the flood
 * tests. Each start function takes the page's base URL (`http://127.0.0.1:8080/`), floods until
 * stopped, and `stop()` ends every connection it made and resolves with its counts:
 *
 *   startRequestFlood({ url, adminToken?, asAdmin?: false, concurrency?: 8, paths? }):
 *       Promise<{ stop(): Promise<Record<string, number>> }>
 *     `concurrency` clients request `paths` (default /api/state and /metrics) back to back over
 *     keep-alive connections, without the admin token unless `asAdmin` (then with `adminToken`).
 *     Counts: sent, ok (200), refused (503 busy), other (any other status), errors.
 *
 *   startSlowloris({ url, connections?: 200, intervalMs?: 1000 }):
 *       Promise<{ stop(): Promise<Record<string, number>> }>
 *     Keeps `connections` connections open, each sending a request's headers one line every
 *     `intervalMs` and never finishing them; the ones the agent closed are reopened at each
 *     interval (as the original slowloris does).
 *     Counts: connections (opened), closed (by the agent), timedOut (408 answers), busy (503
 *     answers: refused at the connection cap), errors.
 */

export interface StatusFloodOptions {
  /** The status page's base URL, as its "status page listening" log line gives it. */
  readonly url: string;
  readonly adminToken?: string;
}

export interface Flood {
  stop(): Promise<Record<string, number>>;
}

export async function startRequestFlood(
  options: StatusFloodOptions & {
    readonly asAdmin?: boolean;
    readonly concurrency?: number;
    readonly paths?: readonly string[];
  },
): Promise<Flood> {
  const base = new URL(options.url);
  const concurrency = options.concurrency ?? 8;
  const paths = options.paths ?? ['/api/state', '/metrics'];
  const headers: Record<string, string> =
    options.asAdmin && options.adminToken ? { authorization: `Bearer ${options.adminToken}` } : {};
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  const counts = { sent: 0, ok: 0, refused: 0, other: 0, errors: 0 };
  let running = true;
  const once = (path: string) =>
    new Promise<void>((resolve) => {
      counts.sent += 1;
      const req = request({ host: base.hostname, port: base.port, path, agent, headers }, (res) => {
        if (res.statusCode === 200) counts.ok += 1;
        else if (res.statusCode === 503) counts.refused += 1;
        else counts.other += 1;
        res.resume();
        res.on('end', resolve);
        res.on('error', () => resolve());
      });
      req.on('error', () => {
        counts.errors += 1;
        // A refused or reset connection: pause briefly rather than spin.
        setTimeout(resolve, 5);
      });
      req.end();
    });
  const loops = Array.from({ length: concurrency }, async (_, i) => {
    for (let n = i; running; n++) await once(paths[n % paths.length] ?? '/');
  });
  return {
    stop: async () => {
      running = false;
      await Promise.all(loops);
      agent.destroy();
      return { ...counts };
    },
  };
}

export async function startSlowloris(
  options: StatusFloodOptions & { readonly connections?: number; readonly intervalMs?: number },
): Promise<Flood> {
  const base = new URL(options.url);
  const port = Number(base.port || 80);
  const n = options.connections ?? 200;
  const counts = { connections: 0, closed: 0, timedOut: 0, busy: 0, errors: 0 };
  const open = new Set<Socket>();
  let running = true;
  const dial = () => {
    if (!running) return;
    const socket = connect(port, base.hostname);
    let connected = false;
    open.add(socket);
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      if (d.startsWith('HTTP/1.1 408')) counts.timedOut += 1;
      else if (d.startsWith('HTTP/1.1 503')) counts.busy += 1;
    });
    socket.on('connect', () => {
      connected = true;
      counts.connections += 1;
      socket.write(`GET / HTTP/1.1\r\nHost: ${base.host}\r\n`);
    });
    socket.on('error', () => {
      if (!connected) counts.errors += 1;
    });
    socket.on('close', () => {
      open.delete(socket);
      if (running && connected) counts.closed += 1;
    });
  };
  for (let i = 0; i < n; i++) dial();
  // Each interval: one more header line on every connection (never the blank line that ends
  // them), and the ones the agent closed opened again, as the original slowloris does.
  const drip = setInterval(() => {
    for (const s of open) if (!s.connecting && !s.destroyed) s.write('X-Slow: 1\r\n');
    for (let i = open.size; i < n && running; i++) dial();
  }, options.intervalMs ?? 1000);
  return {
    stop: async () => {
      running = false;
      clearInterval(drip);
      const closing = [...open].map((s) => new Promise<void>((r) => s.once('close', () => r())));
      for (const s of open) s.destroy();
      await Promise.all(closing);
      return { ...counts };
    },
  };
}
