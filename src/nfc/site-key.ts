import { randomBytes } from 'node:crypto';
import { AgentError } from '../core/errors.js';
import { fromHex, toHex } from '../crypto/encoding.js';
import { readJsonFileIfExists } from '../store/atomic.js';
import { writeNewFile } from '../store/new-file.js';

/**
 * The NTAG 424 DNA site key: the AES-128 key every card key is diversified from (AN10922, see
 * ntag424CardKey). It lives in a 0600 JSON file in the state directory, created on first need
 * and never overwritten; losing it makes every personalised card useless (their master keys
 * derive from it), so docs/cards.md asks the owner to back it up.
 *
 *   {"format":"vehicle-agent/nfc-site-key/1","siteKey":"<32 hex>","createdAt":"..."}
 */

export const SITE_KEY_FORMAT = 'vehicle-agent/nfc-site-key/1';
export const SITE_KEY_FILE = 'nfc-site-key.json';

function parseSiteKeyFile(value: unknown): Uint8Array {
  const v = value as { format?: unknown; siteKey?: unknown } | null;
  if (typeof v !== 'object' || v === null || v.format !== SITE_KEY_FORMAT || typeof v.siteKey !== 'string') {
    throw new Error(`expected {"format":"${SITE_KEY_FORMAT}","siteKey":"<32 hex digits>"}`);
  }
  let key: Uint8Array;
  try {
    key = fromHex(v.siteKey);
  } catch {
    throw new Error('siteKey must be hex');
  }
  if (key.length !== 16) throw new Error('siteKey must be 16 bytes (32 hex digits)');
  return key;
}

/** Reads the site key; undefined when the file does not exist. state_corrupt when it is damaged. */
export async function readSiteKey(path: string): Promise<Uint8Array | undefined> {
  return await readJsonFileIfExists<Uint8Array>(path, { parse: parseSiteKeyFile });
}

/**
 * The site key, created (random, 0600, exclusive create) when the file does not exist yet. Two
 * callers racing both end up with the one that reached the disk first.
 */
export async function loadOrCreateSiteKey(path: string, now = Date.now()): Promise<Uint8Array> {
  const existing = await readSiteKey(path);
  if (existing) return existing;
  const key = new Uint8Array(randomBytes(16));
  const text = `${JSON.stringify({
    format: SITE_KEY_FORMAT,
    siteKey: toHex(key),
    createdAt: new Date(now).toISOString(),
  })}\n`;
  try {
    await writeNewFile(path, text, 0o600);
  } catch (err) {
    if (err instanceof AgentError && err.code === 'bad_arguments') {
      const winner = await readSiteKey(path);
      if (winner) return winner;
    }
    throw err;
  }
  return key;
}

/** Lazily loads the site key once, for the reader and enrollment (a tap never waits twice). */
export class SiteKeySource {
  private readonly path: string;
  private pending: Promise<Uint8Array> | undefined;

  constructor(path: string) {
    this.path = path;
  }

  get file(): string {
    return this.path;
  }

  /** The key; created on first need. A failed load is retried on the next call. */
  get(): Promise<Uint8Array> {
    if (!this.pending) {
      const loading = loadOrCreateSiteKey(this.path);
      this.pending = loading;
      loading.catch(() => {
        if (this.pending === loading) this.pending = undefined;
      });
    }
    return this.pending;
  }
}
