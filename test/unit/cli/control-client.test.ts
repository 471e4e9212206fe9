import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { controlRequest } from '../../../src/cli/control-client.js';

const dir = mkdtempSync(join(tmpdir(), 'va-control-client-'));
const socketPath = join(dir, 'control.sock');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let server: Server | undefined;
afterEach(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

/** A control socket that answers the first request line with `respond`. */
async function serve(respond: (socket: Socket) => void): Promise<void> {
  server = createServer((socket) => {
    socket.once('data', () => respond(socket));
  });
  await new Promise<void>((resolve) => server?.listen(socketPath, resolve));
}

/** Writes `bytes` in pieces of `size`, each once the last was taken. */
async function writeInPieces(socket: Socket, bytes: Buffer, size: number): Promise<void> {
  for (let at = 0; at < bytes.length; at += size) {
    await new Promise<void>((resolve) => socket.write(bytes.subarray(at, at + size), () => resolve()));
  }
}

describe('controlRequest', () => {
  it('reads a large answer that arrives in many pieces, characters split between them included', async () => {
    // 'é' is two bytes: an odd piece size splits many of them between pieces.
    const result = Array.from({ length: 20_000 }, (_, i) => ({ credential: { id: `phone:é${i}` } }));
    await serve((socket) => {
      const line = Buffer.from(`${JSON.stringify({ id: 1, ok: true, result })}\n`);
      void writeInPieces(socket, line, 4093);
    });
    expect(await controlRequest(socketPath, 'keys.list')).toEqual(result);
  });

  it('says so when the agent closes the connection part way through its answer', async () => {
    await serve((socket) => {
      socket.write('{"id":1,"ok":true,"result":[{"credential"', () => socket.destroy());
    });
    await expect(controlRequest(socketPath, 'keys.list')).rejects.toMatchObject({
      code: 'busy',
      message: expect.stringContaining('part way through its answer (41 bytes read)'),
    });
  });

  it('a close without a byte of answer stays `busy`, closed without an answer', async () => {
    await serve((socket) => socket.destroy());
    await expect(controlRequest(socketPath, 'status')).rejects.toMatchObject({
      code: 'busy',
      message: expect.stringContaining('closed the connection without an answer'),
    });
  });
});
