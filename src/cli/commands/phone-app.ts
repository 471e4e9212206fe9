import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { AgentError } from '../../core/errors.js';
import { defaultPhoneAppDir, loadPhoneApp } from '../../status/phone-app.js';
import { out, parse } from '../args.js';

export const PHONE_APP_HELP = `vehicle-agent phone-app export DIR [--json]

Writes the phone-key web app (the page the status server serves at /key/) to DIR, for hosting on
any HTTPS origin: Web Bluetooth, the service worker and passkeys need a secure context (HTTPS, or
http://localhost / 127.0.0.1). Serve the folder as static files, with .webmanifest as
application/manifest+json. The vehicle accepts passkey answers only from the origins listed in
ble.phoneApp.origins (config), so add the origin you host it on, e.g. https://key.example.org.
Creates DIR if needed and replaces files of the same name in it; writes nothing else.`;

export async function phoneApp(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    json: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  const [verb, dir, ...extra] = positionals;
  if (verb !== 'export' || dir === undefined || dir === '' || extra.length > 0) {
    throw new AgentError('bad_arguments', 'usage: vehicle-agent phone-app export DIR');
  }
  const files = await loadPhoneApp(defaultPhoneAppDir());
  const target = resolve(dir);
  await mkdir(target, { recursive: true });
  for (const [name, file] of files) await writeFile(join(target, name), file.body, { mode: 0o644 });
  const names = [...files.keys()];
  if (values.json) out(JSON.stringify({ dir: target, files: names }));
  else
    out(
      [
        `wrote ${names.length} files to ${target}: ${names.join(', ')}`,
        'Host the folder on an HTTPS origin and add that origin to ble.phoneApp.origins in the config.',
      ].join('\n'),
    );
  return 0;
}
