import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AgentError } from '../core/errors.js';

/**
 * The built phone-key web app (web/phone-key, built into dist/web/phone-key), loaded whole into
 * memory once: the status server serves it from this table and the CLI exports it. Only names
 * of the shapes below are taken, so no request path can name anything outside the table.
 */
export interface PhoneAppFile {
  readonly body: Buffer;
  readonly type: string;
}
export type PhoneAppFiles = ReadonlyMap<string, PhoneAppFile>;

export const PHONE_APP_TYPES: Readonly<Record<string, string>> = {
  html: 'text/html; charset=utf-8',
  css: 'text/css; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  webmanifest: 'application/manifest+json',
  svg: 'image/svg+xml',
};
const FILE_NAME = /^[a-z0-9][a-z0-9-]{0,63}\.(html|css|js|webmanifest|svg)$/;
/** The built app is about 40 KiB; these only stop a wrong folder from filling memory. */
const MAX_FILE_BYTES = 256 * 1024;
const MAX_FILES = 64;
/** What a browser must find for the app to start and to work offline. */
export const PHONE_APP_REQUIRED = ['index.html', 'app.js', 'sw.js', 'manifest.webmanifest', 'icon.svg'];

/**
 * Where the build puts the app: dist/web/phone-key beside dist/src. Run from the sources (tests
 * under vitest), the same folder under dist.
 */
export function defaultPhoneAppDir(): string {
  const here = fileURLToPath(new URL('.', import.meta.url));
  const fromDist = /[/\\]dist[/\\]src[/\\]status[/\\]?$/.test(here);
  return fileURLToPath(
    new URL(fromDist ? '../../web/phone-key/' : '../../dist/web/phone-key/', import.meta.url),
  );
}

export async function loadPhoneApp(dir: string): Promise<PhoneAppFiles> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    throw new AgentError(
      'not_found',
      `the phone-key app is not built in ${dir} (npm run build): ${String(err)}`,
    );
  }
  const files = new Map<string, PhoneAppFile>();
  for (const name of names.filter((n) => FILE_NAME.test(n)).sort()) {
    if (files.size >= MAX_FILES)
      throw new AgentError('request_too_large', `over ${MAX_FILES} files in ${dir}`);
    const path = join(dir, name);
    const info = await stat(path);
    if (!info.isFile()) continue;
    if (info.size > MAX_FILE_BYTES) {
      throw new AgentError('request_too_large', `${path} is over ${MAX_FILE_BYTES} bytes`);
    }
    const ext = name.slice(name.lastIndexOf('.') + 1);
    files.set(name, { body: await readFile(path), type: PHONE_APP_TYPES[ext] ?? 'application/octet-stream' });
  }
  const missing = PHONE_APP_REQUIRED.filter((n) => !files.has(n));
  if (missing.length > 0) {
    throw new AgentError(
      'not_found',
      `the phone-key app in ${dir} lacks ${missing.join(', ')} (npm run build)`,
    );
  }
  return files;
}

/** The page's policy, the same as the meta tag in index.html (which an exported copy relies on). */
export const PHONE_APP_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
  "manifest-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; " +
  "frame-ancestors 'none'";
