import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import {
  ADMIN_TOKEN_FILE,
  bearerToken,
  loadAdminToken,
  tokenMatches,
} from '../../../src/status/admin-token.js';

const dir = mkdtempSync(join(tmpdir(), 'va-token-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('admin token', () => {
  it('generates a random token into a 0600 file once, then reads the same one back', async () => {
    const state = mkdtempSync(join(dir, 'gen-'));
    const first = await loadAdminToken({ stateDir: state });
    expect(first.source).toBe('generated');
    expect(first.file).toBe(join(state, ADMIN_TOKEN_FILE));
    expect(first.value).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(statSync(join(state, ADMIN_TOKEN_FILE)).mode & 0o777).toBe(0o600);
    const again = await loadAdminToken({ stateDir: state });
    expect(again).toEqual({ value: first.value, source: 'file', file: first.file });
    const other = await loadAdminToken({ stateDir: mkdtempSync(join(dir, 'gen2-')) });
    expect(other.value).not.toBe(first.value);
  });

  it('prefers a configured token and a configured file; refuses short or spaced tokens', async () => {
    expect(await loadAdminToken({ configured: 'a-long-enough-token', stateDir: dir })).toEqual({
      value: 'a-long-enough-token',
      source: 'config',
    });
    const file = join(dir, 'token.txt');
    writeFileSync(file, '  file-token-0123456789\n');
    expect((await loadAdminToken({ file, stateDir: dir })).value).toBe('file-token-0123456789');
    await expect(loadAdminToken({ configured: 'short', stateDir: dir })).rejects.toMatchObject({
      code: 'config_invalid',
    });
    await expect(loadAdminToken({ configured: 'has a space in it!', stateDir: dir })).rejects.toBeInstanceOf(
      AgentError,
    );
    writeFileSync(file, 'tiny\n');
    await expect(loadAdminToken({ file, stateDir: dir })).rejects.toMatchObject({ code: 'config_invalid' });
    expect(readFileSync(file, 'utf8')).toBe('tiny\n'); // never overwritten
  });

  it('parses Bearer headers', () => {
    expect(bearerToken('Bearer abc.def')).toBe('abc.def');
    expect(bearerToken('bearer   abc ')).toBe('abc');
    expect(bearerToken('Basic abc')).toBeUndefined();
    expect(bearerToken('Bearer')).toBeUndefined();
    expect(bearerToken('Bearer a b')).toBeUndefined();
    expect(bearerToken(undefined)).toBeUndefined();
  });

  it('compares tokens exactly, whatever their lengths', () => {
    const token = 'correct-horse-battery-staple';
    expect(tokenMatches(token, token)).toBe(true);
    expect(tokenMatches(token, `${token}x`)).toBe(false);
    expect(tokenMatches(token, token.slice(0, -1))).toBe(false);
    expect(tokenMatches(token, '')).toBe(false);
    expect(tokenMatches(token, undefined)).toBe(false);
    expect(tokenMatches(token, token.toUpperCase())).toBe(false);
  });
});
