import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseJws } from '../../src/crypto/jws.js';
import { runCli } from '../helpers/agent-process.js';
import { runCliAsync } from '../helpers/cli-async.js';

/**
 * Issue 19: with 100 000 keys, `keys grant` through the running agent answered `busy` although the
 * grant was made. After the grant the CLI fetched the whole keyring (`keys.list`, ~30 MB) to see
 * whether its one credential was revoked, and the agent closed that connection as a slow reader.
 * The stand-in agent here closes a whole-keyring `keys.list` without an answer, as the real one
 * did at that size; grant and revoke must ask about their own credential only.
 */
const dir = mkdtempSync(join(tmpdir(), 'va-keys-large-'));
const stateDir = join(dir, 'state');
const socketPath = join(stateDir, 'control.sock');
const VEHICLE_ID = 'VA-TESTVEHICLE';
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Request {
  readonly cmd: string;
  readonly args: Record<string, unknown>;
}

let server: Server | undefined;
const requests: Request[] = [];
/** How long the stand-in agent takes to answer keys.add. */
let addDelayMs = 0;
/** What the stand-in agent says of each credential id `keys.list` names. */
const known = new Map<string, boolean>();
/** The stand-in agent's keyring as its `keys.list` pages give it, in id order. */
let listed: { credential: { id: string; [field: string]: unknown }; revoked: boolean }[] = [];

/** What an op does, as the agent's MergeResult names it. */
function addedOp(jws: string): Record<string, unknown> {
  const { payload } = parseJws<{ op: string; cred?: { id: string }; credId?: string }>(jws);
  return payload.op === 'grant'
    ? { op: 'grant', cred: { id: payload.cred?.id } }
    : { op: payload.op, credId: payload.credId };
}

function answer(socket: Socket, request: Request & { id: number }): void {
  const ok = (result: unknown) => socket.write(`${JSON.stringify({ id: request.id, ok: true, result })}\n`);
  switch (request.cmd) {
    case 'vehicle':
      return void ok({ vehicleId: VEHICLE_ID });
    case 'keys.add': {
      const reply = () =>
        ok({ added: (request.args.ops as string[]).map(addedOp), duplicates: 0, rejected: [] });
      // An agent still decoding its keyring answers a change only once that is done.
      if (addDelayMs > 0) setTimeout(reply, addDelayMs);
      else reply();
      return;
    }
    case 'keys.list': {
      const ids = request.args.ids as string[] | undefined;
      if (ids !== undefined)
        return void ok({
          credentials: ids.flatMap((id) => {
            const revoked = known.get(id);
            return revoked === undefined ? [] : [{ credential: { id }, revoked }];
          }),
          total: known.size,
        });
      // The whole keyring is too large to be taken in time: a request for more than a page, as
      // the agent's whole list at 100 000 keys, is closed without an answer.
      const { limit, after } = request.args as { limit?: number; after?: string };
      if (limit === undefined || limit > 2000) return void socket.destroy();
      const start = after === undefined ? 0 : listed.findIndex((c) => c.credential.id > after);
      const from = start < 0 ? listed.length : start;
      const page = listed.slice(from, from + limit);
      const more = from + limit < listed.length;
      return void ok({
        credentials: page,
        ...(more ? { next: page.at(-1)?.credential.id } : {}),
        total: listed.length,
      });
    }
    default:
      socket.destroy();
  }
}

let phoneId = '';
beforeAll(() => {
  mkdirSync(stateDir, { recursive: true });
  expect(runCli(['keygen', '--out', join(dir, 'owner'), '--kind', 'signer']).code).toBe(0);
  const phone = runCli(['keygen', '--out', join(dir, 'phone'), '--kind', 'phone']);
  expect(phone.code, phone.stderr).toBe(0);
  phoneId = phone.stdout.split('\n')[0] ?? '';
});

afterEach(async () => {
  requests.length = 0;
  known.clear();
  listed = [];
  addDelayMs = 0;
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

async function standInAgent(): Promise<void> {
  server = createServer((socket) => {
    socket.on('error', () => socket.destroy()); // a late answer to a client that left
    let buffer = '';
    socket.setEncoding('utf8').on('data', (chunk: string) => {
      buffer += chunk;
      const nl = buffer.indexOf('\n');
      if (nl < 0) return;
      const request = JSON.parse(buffer.slice(0, nl)) as Request & { id: number };
      buffer = buffer.slice(nl + 1);
      requests.push({ cmd: request.cmd, args: request.args });
      answer(socket, request);
    });
  });
  await new Promise<void>((resolve) => server?.listen(socketPath, resolve));
}

describe('keys grant and revoke through an agent with a large keyring', () => {
  it('a grant asks about its own credential only, and reports the grant made', async () => {
    await standInAgent();
    const r = await runCliAsync([
      'keys',
      'grant',
      ...['--key', join(dir, 'owner.pem'), '--kind', 'phone', '--public', join(dir, 'phone.pub.pem')],
      ...['--role', 'driver', '--state-dir', stateDir],
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(`granted ${phoneId}`);
    const granted = phoneId;
    expect(requests.map((q) => q.cmd)).toEqual(['vehicle', 'keys.add', 'keys.list']);
    expect(requests[2]?.args).toEqual({ ids: [granted] });
  });

  it('a grant of a revoked credential is still refused as revoked', async () => {
    await standInAgent();
    const r = await runCliAsync([
      'keys',
      'grant',
      ...['--key', join(dir, 'owner.pem'), '--kind', 'phone', '--public', join(dir, 'phone.pub.pem')],
      ...['--role', 'driver', '--state-dir', stateDir],
    ]).then(async (first) => {
      // The first run names the credential; the agent now says it was revoked.
      known.set(first.stdout.trim().split(' ')[1] ?? '', true);
      requests.length = 0;
      return await runCliAsync([
        'keys',
        'grant',
        ...['--key', join(dir, 'owner.pem'), '--kind', 'phone', '--public', join(dir, 'phone.pub.pem')],
        ...['--role', 'driver', '--state-dir', stateDir],
      ]);
    });
    expect(r.stderr).toContain('[revoked]');
    expect(r.code).not.toBe(0);
  });

  it('a revoke waits for an agent that answers changes late (still decoding its keyring) past 10 s', async () => {
    await standInAgent();
    addDelayMs = 10_500;
    const r = await runCliAsync([
      'keys',
      'revoke',
      ...['--key', join(dir, 'owner.pem'), '--id', phoneId, '--state-dir', stateDir],
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe(`revoked ${phoneId}`);
    expect(r.code).toBe(0);
  }, 30_000);

  it('a revoke asks about its own credential only', async () => {
    await standInAgent();
    const id = phoneId;
    const r = await runCliAsync([
      'keys',
      'revoke',
      ...['--key', join(dir, 'owner.pem'), '--id', id, '--state-dir', stateDir],
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(`revoked ${id}`);
    expect(requests[0]).toEqual({ cmd: 'keys.list', args: { ids: [id] } });
    expect(requests.map((q) => q.cmd)).toEqual(['keys.list', 'vehicle', 'keys.add']);

    // Already revoked: said so, nothing signed or sent.
    known.set(id, true);
    requests.length = 0;
    const again = await runCliAsync([
      'keys',
      'revoke',
      ...['--key', join(dir, 'owner.pem'), '--id', id, '--state-dir', stateDir],
    ]);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('already revoked');
    expect(requests.map((q) => q.cmd)).toEqual(['keys.list']);
  });
});

describe('keys list through an agent with a large keyring', () => {
  // 4500 credentials: three pages of at most 2000, each asked for on its own.
  const fake = (i: number) => ({
    credential: {
      id: `phone:${String(i).padStart(22, '0')}`,
      kind: 'phone',
      role: 'driver',
      name: `key ${i}`,
      options: {},
    },
    revoked: i % 7 === 0,
  });

  it('pages through every credential, each page a request of its own, and prints them all', async () => {
    listed = Array.from({ length: 4500 }, (_, i) => fake(i));
    await standInAgent();
    const json = await runCliAsync(['keys', 'list', '--json', '--state-dir', stateDir]);
    expect(json.stderr).toBe('');
    expect(json.code).toBe(0);
    const printed = JSON.parse(json.stdout) as { id: string; revoked: boolean }[];
    expect(printed.map((c) => c.id)).toEqual(listed.map((c) => c.credential.id));
    expect(printed.filter((c) => c.revoked)).toHaveLength(listed.filter((c) => c.revoked).length);
    expect(requests.map((q) => q.args)).toEqual([
      { limit: 2000 },
      { limit: 2000, after: listed[1999]?.credential.id },
      { limit: 2000, after: listed[3999]?.credential.id },
    ]);

    requests.length = 0;
    const text = await runCliAsync(['keys', 'list', '--state-dir', stateDir]);
    expect(text.code).toBe(0);
    const lines = text.stdout.trim().split('\n');
    expect(lines).toHaveLength(4500);
    expect(lines[4499]).toMatch(/^phone:0+4499 +driver +key 4499/);
    expect(lines[7]).toContain('[REVOKED]');
    expect(requests).toHaveLength(3);
  });
});
