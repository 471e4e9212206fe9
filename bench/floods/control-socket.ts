import { connect, type Socket } from 'node:net';

/**
 * Flood generators for the agent's control socket (issue 12, finding 5), for bench/flood.ts and
 * the flood tests. Each start function connects to the unix socket at `socketPath`, floods until
 * stopped, and `stop()` ends every connection it made and resolves with its counts:
 *
 *   startGarbageFlood({ socketPath, connections?: 4 }): Promise<{ stop(): Promise<Record<string, number>> }>
 *     Each connection writes non-JSON lines as fast as the socket takes them; when the agent
 *     closes it (as it should, after a few coded refusals) it reconnects at once.
 *     Counts: connections (opened), sent (lines written), refused (coded error lines received),
 *     closed (connections the agent closed), errors (connect failures).
 *
 *   startIdleFlood({ socketPath, connections?: 16 }): Promise<{ stop(): Promise<Record<string, number>> }>
 *     Holds `connections` connections open that never send anything; each one the agent closes
 *     (idle timeout, or evicted to make room for a real client) is reopened at once, so every
 *     slot stays taken. Counts: connections (opened), closed (by the agent), busy (busy lines
 *     received, e.g. "closed while idle to make room"), errors.
 *
 *   startChurnFlood({ socketPath, connections?: 4 }): Promise<{ stop(): Promise<Record<string, number>> }>
 *     Each connection writes a few garbage lines and closes at once, without waiting for an
 *     answer, and reconnects: a flood of connections rather than of lines.
 *     Counts: connections (opened), sent (lines written), busy, errors.
 */

export interface ControlFloodOptions {
  readonly socketPath: string;
  /** Connections kept open at once (garbage: 4; idle: 16, the agent's default slot count). */
  readonly connections?: number;
}

export interface Flood {
  stop(): Promise<Record<string, number>>;
}

const GARBAGE_LINE = 'this is not a request, it is garbage\n';
const GARBAGE_CHUNK = GARBAGE_LINE.repeat(512);

interface Counts {
  connections: number;
  sent: number;
  refused: number;
  busy: number;
  closed: number;
  errors: number;
}

/** Keeps `n` connections open, reopening each one that closes, until stopped. */
function keepOpen(
  socketPath: string,
  n: number,
  counts: Counts,
  onConnect: (socket: Socket, isOpen: () => boolean) => void,
): Flood {
  let running = true;
  const open = new Set<Socket>();
  const dial = () => {
    if (!running) return;
    const socket = connect(socketPath);
    let connected = false;
    open.add(socket);
    let pending = '';
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      pending += d;
      let nl = pending.indexOf('\n');
      while (nl >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (line.includes('"code":"busy"')) counts.busy += 1;
        else if (line.includes('"ok":false')) counts.refused += 1;
        nl = pending.indexOf('\n');
      }
    });
    socket.on('connect', () => {
      connected = true;
      counts.connections += 1;
      onConnect(socket, () => running && !socket.destroyed);
    });
    socket.on('error', () => {
      if (!connected) counts.errors += 1;
    });
    socket.on('close', () => {
      open.delete(socket);
      if (!running) return;
      if (connected) counts.closed += 1;
      // Reconnect on the next turn (a refused connect is retried after a short pause).
      if (connected) setImmediate(dial);
      else setTimeout(dial, 10);
    });
  };
  for (let i = 0; i < n; i++) dial();
  return {
    stop: async () => {
      running = false;
      const closing = [...open].map((s) => new Promise<void>((r) => s.once('close', () => r())));
      for (const s of open) s.destroy();
      await Promise.all(closing);
      return { ...counts };
    },
  };
}

export async function startGarbageFlood(options: ControlFloodOptions): Promise<Flood> {
  const counts: Counts = { connections: 0, sent: 0, refused: 0, busy: 0, closed: 0, errors: 0 };
  const linesPerChunk = GARBAGE_CHUNK.length / GARBAGE_LINE.length;
  return keepOpen(options.socketPath, options.connections ?? 4, counts, (socket, isOpen) => {
    const pump = () => {
      while (isOpen()) {
        counts.sent += linesPerChunk;
        if (!socket.write(GARBAGE_CHUNK)) {
          socket.once('drain', pump);
          return;
        }
      }
    };
    pump();
  });
}

export async function startIdleFlood(options: ControlFloodOptions): Promise<Flood> {
  const counts: Counts = { connections: 0, sent: 0, refused: 0, busy: 0, closed: 0, errors: 0 };
  const flood = keepOpen(options.socketPath, options.connections ?? 16, counts, () => {});
  return {
    stop: async () => {
      const { sent: _sent, refused: _refused, ...rest } = await flood.stop();
      return rest;
    },
  };
}

export async function startChurnFlood(options: ControlFloodOptions): Promise<Flood> {
  const counts: Counts = { connections: 0, sent: 0, refused: 0, busy: 0, closed: 0, errors: 0 };
  const lines = GARBAGE_LINE.repeat(5);
  const flood = keepOpen(options.socketPath, options.connections ?? 4, counts, (socket) => {
    counts.sent += 5;
    socket.end(lines);
  });
  return {
    stop: async () => {
      const { refused: _refused, closed: _closed, ...rest } = await flood.stop();
      return rest;
    },
  };
}
