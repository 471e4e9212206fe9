import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  type ControlHandler,
  type ControlServer,
  MAX_CONTROL_LINE,
  startControlServer,
} from '../../../src/agent/control-server.js';
import { controlRequest } from '../../../src/cli/control-client.js';
import { AgentError } from '../../../src/core/errors.js';
import { silentLogger } from '../../../src/core/logger.js';

let dir: string;
let server: ControlServer;
let calls = 0;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'va-control-'));
  calls = 0;
  server = await startControlServer(
    join(dir, 'c.sock'),
    new Map<string, ControlHandler>([
      ['echo', (args) => ({ echoed: args })],
      ['count', () => ++calls],
      [
        'refuse',
        () => {
          throw new AgentError('unauthorized', 'no');
        },
      ],
      [
        'explode',
        () => {
          throw new TypeError('bug');
        },
      ],
    ]),
    silentLogger,
  );
});

afterEach(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

function raw(text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(server.path);
    let got = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      got += d;
    });
    s.on('close', () => resolve(got));
    s.on('error', reject);
    s.write(text);
    setTimeout(() => s.end(), 200);
  });
}

describe('control socket', () => {
  it('is a 0600 unix socket answering one JSON line per request', async () => {
    expect(statSync(server.path).mode & 0o777).toBe(0o600);
    expect(await controlRequest(server.path, 'echo', { a: 1 })).toEqual({ echoed: { a: 1 } });
  });

  it('gives coded errors for refused, unknown and failing commands', async () => {
    await expect(controlRequest(server.path, 'refuse')).rejects.toMatchObject({ code: 'unauthorized' });
    await expect(controlRequest(server.path, 'nope')).rejects.toMatchObject({ code: 'unknown_command' });
    await expect(controlRequest(server.path, 'explode')).rejects.toMatchObject({ code: 'internal' });
  });

  it('never hands garbage to a handler', async () => {
    const out = await raw(
      'not json\n"str"\n{"cmd":5}\n{"cmd":"count","args":[1]}\n\n{"id":2,"cmd":"count"}\n',
    );
    const lines = out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { ok: boolean; id: unknown; error?: { code: string } });
    expect(lines.map((l) => l.error?.code ?? 'ok')).toEqual([
      'control_bad_request',
      'control_bad_request',
      'control_bad_request',
      'control_bad_request',
      'ok',
    ]);
    expect(lines[4]?.id).toBe(2);
    expect(calls).toBe(1);
  });

  it('closes a connection that sends an overlong line, and keeps serving others', async () => {
    const out = await raw('x'.repeat(MAX_CONTROL_LINE + 10));
    expect(JSON.parse(out.trim()) as unknown).toMatchObject({
      ok: false,
      error: { code: 'control_bad_request' },
    });
    expect(await controlRequest(server.path, 'count')).toBe(1);
  });

  it('reports a missing agent as control_unavailable', async () => {
    await expect(controlRequest(join(dir, 'absent.sock'), 'echo')).rejects.toMatchObject({
      code: 'control_unavailable',
    });
  });
});
