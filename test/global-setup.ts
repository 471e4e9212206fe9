import { spawnSync } from 'node:child_process';
import { chmodSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * Integration tests run the real agent (and child processes such as the crash-test writer) from
 * dist/, so every test run starts by compiling (the agent, and the phone-key web app). Type errors are reported by `npm run typecheck`;
 * here tsc still emits, and a failure to emit at all stops the run.
 */
export default function setup(): void {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url));
  const result = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], {
    cwd: root,
    encoding: 'utf8',
  });
  if (result.error) throw result.error;
  if (result.status !== 0) {
    process.stderr.write(
      `global-setup: tsc reported errors (emitting anyway):\n${result.stdout}${result.stderr}\n`,
    );
  }
  // The phone-key web app (dist/web/phone-key): the status server serves it, `phone-app export`
  // writes it out, and the browser tests load it.
  const web = spawnSync('npm', ['run', '-s', 'build:web'], { cwd: root, encoding: 'utf8' });
  if (web.error) throw web.error;
  if (web.status !== 0)
    throw new Error(`global-setup: npm run build:web failed:\n${web.stdout}${web.stderr}`);
  chmodSync(fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url)), 0o755);
  chmodSync(fileURLToPath(new URL('../dist/src/cli/launch.cjs', import.meta.url)), 0o755);
}
