import { chmod, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';

/**
 * The local control socket: newline-delimited JSON over a unix socket created 0600, so only the
 * agent's own user (and root) can talk to it. One request per line:
 *   → {"id":1,"cmd":"status","args":{}}
 *   ← {"id":1,"ok":true,"result":{...}}   or   {"id":1,"ok":false,"error":{"code":"...","message":"..."}}
 * Garbage gets a coded error and never reaches a handler; an overlong line closes the connection.
 */
export type ControlHandler = (args: Readonly<Record<string, unknown>>) => Promise<unknown> | unknown;

export const MAX_CONTROL_LINE = 64 * 1024;
const MAX_CONNECTIONS = 16;

export interface ControlServer {
  readonly path: string;
  close(): Promise<void>;
}

function reply(socket: Socket, body: Record<string, unknown>): void {
  if (!socket.destroyed) socket.write(`${JSON.stringify(body)}\n`);
}

export async function startControlServer(
  path: string,
  handlers: ReadonlyMap<string, ControlHandler>,
  log: Logger,
): Promise<ControlServer> {
  // A stale socket from a crashed run would make listen() fail with EADDRINUSE.
  await rm(path, { force: true });
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    if (sockets.size >= MAX_CONNECTIONS) {
      reply(socket, {
        id: null,
        ok: false,
        error: { code: 'busy', message: 'too many control connections' },
      });
      socket.end();
      return;
    }
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    let buffer = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      if (buffer.length > MAX_CONTROL_LINE && !buffer.slice(0, MAX_CONTROL_LINE).includes('\n')) {
        log.warn({ code: 'control_bad_request' }, 'control request too long; closing');
        reply(socket, {
          id: null,
          ok: false,
          error: { code: 'control_bad_request', message: `request longer than ${MAX_CONTROL_LINE} bytes` },
        });
        socket.end();
        buffer = '';
        return;
      }
      let nl = buffer.indexOf('\n');
      while (nl >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (line.length > 0) void handleLine(socket, line, handlers, log);
        nl = buffer.indexOf('\n');
      }
    });
  });
  server.maxConnections = MAX_CONNECTIONS + 1;
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
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(path, { force: true });
    },
  };
}

async function handleLine(
  socket: Socket,
  line: string,
  handlers: ReadonlyMap<string, ControlHandler>,
  log: Logger,
): Promise<void> {
  let id: unknown = null;
  try {
    let request: unknown;
    try {
      request = JSON.parse(line);
    } catch {
      throw new AgentError('control_bad_request', 'request is not JSON');
    }
    if (typeof request !== 'object' || request === null || Array.isArray(request)) {
      throw new AgentError('control_bad_request', 'request must be a JSON object');
    }
    const r = request as Record<string, unknown>;
    id = typeof r.id === 'number' || typeof r.id === 'string' ? r.id : null;
    if (typeof r.cmd !== 'string') throw new AgentError('control_bad_request', 'request needs a string cmd');
    const args = r.args ?? {};
    if (typeof args !== 'object' || args === null || Array.isArray(args))
      throw new AgentError('control_bad_request', 'args must be an object');
    const handler = handlers.get(r.cmd);
    if (!handler) throw new AgentError('unknown_command', `unknown control command ${r.cmd.slice(0, 40)}`);
    const result = await handler(args as Record<string, unknown>);
    reply(socket, { id, ok: true, result: result ?? null });
  } catch (err) {
    const e = toAgentError(err);
    if (e.code === 'internal') log.error({ code: e.code, err: e.message }, 'control handler failed');
    else log.debug({ code: e.code, err: e.message }, 'control request refused');
    reply(socket, { id, ok: false, error: { code: e.code, message: e.message } });
  }
}
