import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/logger.js';
import type { ControlHandler } from '../../src/host/control-server.js';
import { AuditFeed } from '../../src/status/audit-feed.js';
import { loadPhoneApp, PHONE_APP_REQUIRED } from '../../src/status/phone-app.js';
import { type StatusServer, startStatusServer } from '../../src/status/server.js';
import { runCli } from '../helpers/agent-process.js';

/**
 * The status server's /key/: the phone-key app's files with their content types, from a table
 * loaded at start, so no request path reaches any other file; refusals are the server's coded
 * errors, and the app is counted against the anonymous budget like every other page.
 */
interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function get(port: number, path: string, method = 'GET'): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path, method, headers: { host: `127.0.0.1:${port}` } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString('utf8'),
          }),
        );
      },
    );
    req.on('error', reject);
    req.end();
  });
}

let root: string;
let appDir: string;
let server: StatusServer;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'va-phone-app-'));
  appDir = join(root, 'app');
  mkdirSync(appDir);
  for (const name of PHONE_APP_REQUIRED) writeFileSync(join(appDir, name), `content of ${name}`);
  writeFileSync(join(appDir, 'style.css'), 'body{}');
  // Beside and inside the folder, files that must never be served.
  writeFileSync(join(root, 'secret.txt'), 'SECRET-OUTSIDE');
  writeFileSync(join(appDir, '.env'), 'SECRET-DOTFILE');
  writeFileSync(join(appDir, 'app.js.map'), 'SECRET-MAP');
  writeFileSync(join(appDir, 'notes.txt'), 'SECRET-TXT');
  const handlers = new Map<string, ControlHandler>([
    ['status', () => ({ vehicleId: 'VA-T', lock: 'locked' })],
  ]);
  server = await startStatusServer({
    host: '127.0.0.1',
    port: 0,
    token: 'phone-app-serving-token-0123456789',
    maxClients: 2,
    simControls: false,
    handlers,
    health: () => undefined,
    checkHealth: async () => ({ healthy: true, at: new Date().toISOString(), checks: {} }),
    feed: new AuditFeed({ lastSeq: 0, recent: () => [] }, silentLogger, 20),
    demoDir: '/nonexistent',
    log: silentLogger,
    phoneAppDir: appDir,
  });
});

afterAll(async () => {
  await server?.close();
  rmSync(root, { recursive: true, force: true });
});

describe('status server: the phone-key app at /key/', () => {
  it('serves each file with its content type; index.html with the page policy', async () => {
    const index = await get(server.port, '/key/');
    expect(index.status).toBe(200);
    expect(index.body).toBe('content of index.html');
    expect(index.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(index.headers['content-security-policy']).toContain("script-src 'self'");
    expect(index.headers['x-content-type-options']).toBe('nosniff');
    const types: Record<string, string> = {
      'app.js': 'text/javascript; charset=utf-8',
      'sw.js': 'text/javascript; charset=utf-8',
      'style.css': 'text/css; charset=utf-8',
      'manifest.webmanifest': 'application/manifest+json',
      'icon.svg': 'image/svg+xml',
    };
    for (const [name, type] of Object.entries(types)) {
      const r = await get(server.port, `/key/${name}`);
      expect([r.status, r.headers['content-type']], name).toEqual([200, type]);
    }
    // The worker lives at /key/sw.js: its default scope is /key/, nothing wider.
    expect((await get(server.port, '/key/sw.js')).headers['service-worker-allowed']).toBeUndefined();
    const head = await get(server.port, '/key/app.js', 'HEAD');
    expect([head.status, head.body]).toEqual([200, '']);
  });

  it('is linked from the status page', async () => {
    expect((await get(server.port, '/')).body).toContain('<a id="phone-key-link" href="/key/">');
  });

  it('redirects /key to /key/ and refuses other methods', async () => {
    const r = await get(server.port, '/key');
    expect([r.status, r.headers.location]).toEqual([308, '/key/']);
    const post = await get(server.port, '/key/app.js', 'POST');
    expect(post.status).toBe(405);
    expect(JSON.parse(post.body).error.code).toBe('method_not_allowed');
  });

  it('serves nothing outside its table, however the path is spelt', async () => {
    const tries = [
      '/key/../secret.txt',
      '/key/%2e%2e/secret.txt',
      '/key/..%2fsecret.txt',
      '/key/%2e%2e%2fsecret.txt',
      '/key//etc/passwd',
      '/key/.env',
      '/key/app.js.map',
      '/key/notes.txt',
      '/key/app/../../secret.txt',
      '/key/APP.JS',
      '/key/app.js%00.html',
      '/key/app.js/',
    ];
    for (const path of tries) {
      const r = await get(server.port, path);
      expect(r.body, path).not.toContain('SECRET');
      expect(r.status, path).toBe(404);
      expect(JSON.parse(r.body).error.code, path).toBe('not_found');
    }
  });

  it('counts the app against the anonymous budget like any other page', async () => {
    const before = server.stats().answered.anonymous;
    await get(server.port, '/key/app.js');
    expect(server.stats().answered.anonymous).toBe(before + 1);
  });
});

describe('loading the app', () => {
  it('refuses a folder without the app, or with an oversized file, with a coded error', async () => {
    await expect(loadPhoneApp(join(root, 'none'))).rejects.toMatchObject({ code: 'not_found' });
    const partial = join(root, 'partial');
    mkdirSync(partial);
    writeFileSync(join(partial, 'index.html'), 'x');
    await expect(loadPhoneApp(partial)).rejects.toThrow(/lacks app\.js/);
    const big = join(root, 'big');
    mkdirSync(big);
    for (const name of PHONE_APP_REQUIRED) writeFileSync(join(big, name), 'x');
    writeFileSync(join(big, 'app.js'), Buffer.alloc(300 * 1024));
    await expect(loadPhoneApp(big)).rejects.toMatchObject({ code: 'request_too_large' });
  });

  it('a server without the app answers /key/ not_found, saying how to build it', async () => {
    const bare = await startStatusServer({
      host: '127.0.0.1',
      port: 0,
      token: 'phone-app-serving-token-0123456789',
      maxClients: 2,
      simControls: false,
      handlers: new Map(),
      health: () => undefined,
      checkHealth: async () => ({ healthy: true, at: new Date().toISOString(), checks: {} }),
      feed: new AuditFeed({ lastSeq: 0, recent: () => [] }, silentLogger, 20),
      demoDir: '/nonexistent',
      log: silentLogger,
      phoneAppDir: join(root, 'none'),
    });
    try {
      const r = await get(bare.port, '/key/');
      expect(r.status).toBe(404);
      expect(JSON.parse(r.body).error.message).toContain('npm run build');
    } finally {
      await bare.close();
    }
  });
});

describe('vehicle-agent phone-app export (built CLI)', () => {
  it('writes the built app to a folder, byte for byte, and says which origin setting it needs', () => {
    const out = join(root, 'export', 'site');
    const r = runCli(['phone-app', 'export', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('ble.phoneApp.origins');
    const built = join(process.cwd(), 'dist', 'web', 'phone-key');
    expect(readdirSync(out).sort()).toEqual(readdirSync(built).sort());
    for (const name of readdirSync(built))
      expect(readFileSync(join(out, name)).equals(readFileSync(join(built, name))), name).toBe(true);
  });

  it('refuses a usage it does not know with exit 64', () => {
    expect(runCli(['phone-app', 'publish', join(root, 'x')]).code).toBe(64);
    expect(runCli(['phone-app', 'export']).code).toBe(64);
  });
});
