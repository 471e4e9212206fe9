import { connect } from 'node:net';
import { isCode } from '../core/codes.js';
import { AgentError } from '../core/errors.js';
import type { CommandName, RequestOf, ResultOf } from '../host/control-api.js';

/**
 * Sends one request to the agent's control socket and returns its result or throws its coded
 * error. Only a missing socket, or one nobody listens on (left by a crash), means the agent is not
 * running (control_unavailable); an agent that answers `busy`, refuses or drops the connection, or
 * does not answer in time is running but busy (busy), so no caller mistakes it for a stopped agent
 * and writes the state directory behind its back. A connection the agent turned away before
 * reading the request (`busy` with no request id: no room, or closed while idle to make room) is
 * tried again a few times, within the timeout: the request was not run.
 */
export async function controlRequest(
  socketPath: string,
  cmd: string,
  args: Record<string, unknown> = {},
  timeoutMs = 10_000,
): Promise<unknown> {
  const deadline = performance.now() + timeoutMs;
  for (let attempt = 0; ; attempt++) {
    try {
      return await requestOnce(socketPath, cmd, args, Math.max(1, deadline - performance.now()));
    } catch (err) {
      const backoff = RETRY_BACKOFF_MS[attempt];
      const turnedAway = err instanceof AgentError && err.code === 'busy' && err.details.turnedAway === true;
      if (!turnedAway || backoff === undefined || performance.now() + backoff >= deadline) throw err;
      await new Promise((r) => setTimeout(r, backoff * (0.5 + Math.random())));
    }
  }
}

/**
 * controlRequest typed by the command table (src/host/control-api.ts): what the command is sent,
 * the result it gives.
 */
export async function controlCall<C extends CommandName>(
  socketPath: string,
  cmd: C,
  args: RequestOf<C>,
  timeoutMs?: number,
): Promise<ResultOf<C>> {
  const wire: object = args;
  const result = await controlRequest(socketPath, cmd, { ...wire }, timeoutMs);
  // The one cast of the control API: the reply is JSON from an agent built from the same table.
  return result as ResultOf<C>;
}

/** Waits before each further try after being turned away (jittered, so clients do not line up). */
const RETRY_BACKOFF_MS = [50, 100, 200];

async function requestOnce(
  socketPath: string,
  cmd: string,
  args: Record<string, unknown>,
  timeoutMs: number,
): Promise<unknown> {
  return await new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    // The reply so far, as received: only each new chunk is searched for the end of the line
    // (searching the whole text again per chunk made a 30 MB `keys.list` take seconds to read,
    // long enough for the agent to close the connection as a slow reader).
    const chunks: Buffer[] = [];
    let connected = false;
    let settled = false;
    const settle = (fn: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      fn();
    };
    const busy = (why: string) =>
      settle(() => reject(new AgentError('busy', `the agent is running but busy: ${why}`)));
    const timer = setTimeout(() => busy(`no answer within ${timeoutMs} ms`), timeoutMs);
    socket.on('connect', () => {
      connected = true;
      socket.write(`${JSON.stringify({ id: 1, cmd, args })}\n`);
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (connected) {
        busy(`it closed the connection (${err.code ?? err.message})`);
      } else if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        settle(() =>
          reject(
            new AgentError(
              'control_unavailable',
              `the agent is not running (no control socket at ${socketPath})`,
            ),
          ),
        );
      } else if (err.code === 'EAGAIN') {
        busy('its control socket accepts no more connections right now');
      } else if (err.code === 'EACCES') {
        settle(() =>
          reject(
            new AgentError('unauthorized', `no permission to use ${socketPath} (run as the agent's user)`),
          ),
        );
      } else settle(() => reject(new AgentError('control_unavailable', err.message)));
    });
    socket.on('close', () => {
      if (!connected) return;
      const received = chunks.reduce((n, c) => n + c.length, 0);
      busy(
        received === 0
          ? 'it closed the connection without an answer'
          : `it closed the connection part way through its answer (${received} bytes read)`,
      );
    });
    socket.on('data', (chunk: Buffer) => {
      if (settled) return;
      const nlInChunk = chunk.indexOf(0x0a);
      if (nlInChunk < 0) {
        chunks.push(chunk);
        return;
      }
      chunks.push(chunk.subarray(0, nlInChunk));
      const line = Buffer.concat(chunks).toString('utf8');
      let response: {
        id?: unknown;
        ok: boolean;
        result?: unknown;
        error?: { code: string; message: string };
      };
      try {
        response = JSON.parse(line) as typeof response;
      } catch {
        settle(() =>
          reject(new AgentError('control_bad_request', 'the agent answered something that is not JSON')),
        );
        return;
      }
      settle(() => {
        if (response.ok) resolve(response.result);
        else {
          const code = response.error?.code;
          // No id: the agent answered before reading the request (it turned the connection away).
          const turnedAway = code === 'busy' && response.id === null;
          reject(
            new AgentError(
              isCode(code) ? code : 'internal',
              response.error?.message ?? 'request failed',
              turnedAway ? { turnedAway } : {},
            ),
          );
        }
      });
    });
  });
}
