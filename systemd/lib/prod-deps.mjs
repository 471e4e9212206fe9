#!/usr/bin/env node
// Prints, one per line, the node_modules directories (relative to the project root) that the
// agent needs at run time: the closure of package.json "dependencies" and the optional
// dependencies that are installed, resolved the way Node resolves them (nearest node_modules
// first). The installer copies exactly these, so devDependencies (TypeScript, vitest, Chromium's
// driver) never reach the Pi's /opt. Offline and deterministic: no npm call.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const root = resolve(process.argv[2] ?? '.');
const readJson = (path) => JSON.parse(readFileSync(path, 'utf8'));

/** The directory of package `name` as seen from package directory `from`. */
function locate(name, from) {
  for (let dir = from; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
    if (dir === root || dir === dirname(dir)) return undefined;
  }
}

const found = new Set();
const queue = [[root, readJson(join(root, 'package.json')).dependencies ?? {}, false]];
while (queue.length > 0) {
  const [from, deps, optional] = queue.shift();
  for (const name of Object.keys(deps).sort()) {
    const dir = locate(name, from);
    if (dir === undefined) {
      if (optional) continue;
      console.error(
        `prod-deps: ${name} (needed by ${relative(root, from) || 'the project'}) is not installed: run npm ci`,
      );
      process.exit(1);
    }
    if (found.has(dir)) continue;
    found.add(dir);
    const pkg = readJson(join(dir, 'package.json'));
    queue.push([dir, pkg.dependencies ?? {}, false]);
    queue.push([dir, pkg.optionalDependencies ?? {}, true]);
  }
}
for (const dir of [...found].map((d) => relative(root, d)).sort()) console.log(dir);
