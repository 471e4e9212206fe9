import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentError } from '../core/errors.js';
import { writeNewFile } from '../store/new-file.js';

/**
 * The status page's admin token: every request that changes state carries it as
 * `Authorization: Bearer <token>`. From config (statusPage.adminToken, best set through the
 * environment), else from a file, which is created 0600 with 32 random bytes when missing.
 */

export const ADMIN_TOKEN_FILE = 'status-admin-token';
export const MIN_TOKEN_LENGTH = 16;
const MAX_TOKEN_LENGTH = 512;

export interface AdminToken {
  readonly value: string;
  readonly source: 'config' | 'file' | 'generated';
  readonly file?: string;
}

function checkToken(value: string, where: string): string {
  if (value.length < MIN_TOKEN_LENGTH || value.length > MAX_TOKEN_LENGTH || !/^[\x21-\x7e]+$/.test(value)) {
    throw new AgentError(
      'config_invalid',
      `${where}: the admin token must be ${MIN_TOKEN_LENGTH}-${MAX_TOKEN_LENGTH} printable characters without spaces`,
      { field: 'statusPage.adminToken' },
    );
  }
  return value;
}

export async function loadAdminToken(options: {
  readonly configured?: string | undefined;
  readonly file?: string | undefined;
  readonly stateDir: string;
}): Promise<AdminToken> {
  if (options.configured !== undefined) {
    return { value: checkToken(options.configured, 'statusPage.adminToken'), source: 'config' };
  }
  const file = options.file ?? join(options.stateDir, ADMIN_TOKEN_FILE);
  let text: string | undefined;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new AgentError(
        'state_io',
        `cannot read the admin token file ${file}: ${(err as Error).message}`,
        {
          file,
        },
      );
    }
  }
  if (text !== undefined) return { value: checkToken(text.trim(), file), source: 'file', file };
  const value = randomBytes(32).toString('base64url');
  await writeNewFile(file, `${value}\n`, 0o600);
  return { value, source: 'generated', file };
}

/** The token of an `Authorization: Bearer <token>` header, else undefined. */
export function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const match = /^Bearer[ \t]+(\S{1,1024})[ \t]*$/i.exec(header);
  return match?.[1];
}

/**
 * Constant-time comparison: both sides are hashed first, so neither the content nor the length
 * of the expected token leaks through timing.
 */
export function tokenMatches(expected: string, presented: string | undefined): boolean {
  if (presented === undefined) return false;
  const a = createHash('sha256').update(expected, 'utf8').digest();
  const b = createHash('sha256').update(presented, 'utf8').digest();
  return timingSafeEqual(a, b);
}
