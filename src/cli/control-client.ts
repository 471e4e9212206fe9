import { connect } from 'node:net';
import { isCode } from '../core/codes.js';
import { AgentError } from '../core/errors.js';

/** Sends one request to the agent's control socket and returns its result or throws its coded error. */
export async function controlRequest(
  socketPath: string,
  cmd: string,
  args: Record<string, unknown> = {},
  timeoutMs = 10_000,
): Promise<unknown> {
  return await new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    let buffer = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new AgentError('reader_timeout', `no answer from the agent within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${JSON.stringify({ id: 1, cmd, args })}\n`));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        reject(
          new AgentError(
            'control_unavailable',
            `the agent is not running (no control socket at ${socketPath})`,
          ),
        );
      } else if (err.code === 'EACCES') {
        reject(
          new AgentError('unauthorized', `no permission to use ${socketPath} (run as the agent's user)`),
        );
      } else reject(new AgentError('control_unavailable', err.message));
    });
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      const nl = buffer.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      socket.end();
      try {
        const response = JSON.parse(buffer.slice(0, nl)) as {
          ok: boolean;
          result?: unknown;
          error?: { code: string; message: string };
        };
        if (response.ok) resolve(response.result);
        else {
          const code = response.error?.code;
          reject(
            new AgentError(isCode(code) ? code : 'internal', response.error?.message ?? 'request failed'),
          );
        }
      } catch {
        reject(new AgentError('control_bad_request', 'the agent answered something that is not JSON'));
      }
    });
  });
}
