import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { type AgentProcess, CLI, startAgentProcess } from '../helpers/agent-process.js';

/**
 * The shell blocks of the README and docs/ run as written, each in a fresh temporary folder that stands for the
 * project directory: `npx vehicle-agent` finds the built CLI there (node_modules/.bin, as in a
 * checkout), and the state lands in that folder's ./.state. A comment before a block says how to
 * run it:
 *
 *   <!-- readme-test: with-agent -->             start `vehicle-agent start` (simulated) there first,
 *                                                then run the block line by line: a line whose comment
 *                                                says `denied: CODE` must exit 2 and print it, any other
 *                                                must exit 0 (and print `granted` if its comment says so)
 *   <!-- readme-test: with-demo -->              provision a demo vehicle there first (`init --demo`)
 *   <!-- readme-test: continues -->              run in the folder of the block before it, after it
 *   <!-- readme-test: skip reason="..." -->      not run, for the reason given (counted below)
 *
 * Other blocks run whole with `bash -e -o pipefail`. Only sh/bash/shell blocks are commands; a
 * block without a language is output (the config error example).
 */
const root = fileURLToPath(new URL('../../', import.meta.url));
const FILES = [
  'README.md',
  'docs/ble.md',
  'docs/cards.md',
  'docs/storage.md',
  'docs/mqtt.md',
  'docs/backup.md',
  'docs/security.md',
  'docs/fleet.md',
];

interface Block {
  readonly file: string;
  readonly line: number;
  readonly body: string;
  readonly mode: 'run' | 'with-agent' | 'with-demo' | 'skip';
  readonly reason?: string;
  /** `continues`: the block goes on in the folder of the file's block before it, after it. */
  readonly after?: Block;
}

function blocksOf(file: string): Block[] {
  const lines = readFileSync(join(root, file), 'utf8').split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    // Fences may be indented (a block inside a list item); the body loses that indent.
    const open = /^( *)```(\w*)\s*$/.exec(lines[i] ?? '');
    if (!open) continue;
    const indent = open[1]?.length ?? 0;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !/^ *```\s*$/.test(lines[i] ?? ''); i++)
      body.push((lines[i] ?? '').slice(indent));
    if (!['sh', 'bash', 'shell'].includes(open[2] ?? '')) continue;
    // The marker, if any, is the last non-blank line before the fence.
    let j = start - 1;
    while (j >= 0 && (lines[j] ?? '').trim() === '') j--;
    const marker = /^ *<!-- readme-test: (.*) -->$/.exec(lines[j] ?? '')?.[1];
    const block = { file, line: start + 1, body: body.join('\n') };
    if (marker === undefined) blocks.push({ ...block, mode: 'run' });
    else if (marker === 'continues') {
      const previous = blocks[blocks.length - 1];
      if (previous === undefined || previous.mode !== 'run')
        throw new Error(`${file}:${j + 1}: continues needs a block that runs before it`);
      blocks.push({ ...block, mode: 'run', after: previous });
    } else if (marker === 'with-agent' || marker === 'with-demo') blocks.push({ ...block, mode: marker });
    else {
      const reason = /^skip reason="([^"]+)"$/.exec(marker)?.[1];
      if (reason === undefined) throw new Error(`${file}:${j + 1}: unknown readme-test marker: ${marker}`);
      blocks.push({ ...block, mode: 'skip', reason });
    }
  }
  return blocks;
}

const blocks = FILES.flatMap(blocksOf);
const scratch = mkdtempSync(join(tmpdir(), 'va-readme-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** A folder that stands for the project directory: `npx vehicle-agent` resolves to dist/. */
function projectFolder(block: Block): string {
  if (block.after) return projectFolder(block.after);
  const dir = join(scratch, `${block.file.replace(/\W/g, '_')}-${block.line}`);
  if (existsSync(dir)) return dir;
  mkdirSync(join(dir, 'node_modules', '.bin'), { recursive: true });
  symlinkSync(CLI, join(dir, 'node_modules', '.bin', 'vehicle-agent'));
  return dir;
}

/** The environment a block runs in: nothing of this test's VEHICLE_AGENT_* settings, and no registry. */
function blockEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('VEHICLE_AGENT_')) env[k] = v;
  // npx must find the CLI locally; were it to look in the registry, it fails at once instead.
  env.npm_config_registry = 'http://127.0.0.1:9/';
  env.npm_config_update_notifier = 'false';
  return env;
}

function sh(script: string, cwd: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-e', '-o', 'pipefail', '-c', script], {
      cwd,
      env: blockEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
      // A group of its own, so a block that hangs is ended with everything it started.
      detached: true,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => {
      stdout += c;
    });
    child.stderr.setEncoding('utf8').on('data', (c: string) => {
      stderr += c;
    });
    const timer = setTimeout(() => {
      if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    }, 240_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Skips acknowledged here: a new one fails this test until it is added with its reason. */
const EXPECTED_SKIPS = 26;

describe('README and docs/ command blocks', () => {
  it('finds the blocks, and every skip names its reason', () => {
    const skipped = blocks.filter((b) => b.mode === 'skip');
    const summary = blocks.map((b) => `${b.file}:${b.line} ${b.mode}${b.reason ? `: ${b.reason}` : ''}`);
    console.log(
      `command blocks: ${blocks.length - skipped.length} run, ${skipped.length} skipped\n  ${summary.join('\n  ')}`,
    );
    expect(blocks.filter((b) => b.mode !== 'skip').length).toBeGreaterThanOrEqual(2);
    expect(skipped.length).toBe(EXPECTED_SKIPS);
    for (const b of skipped) expect(b.reason?.length ?? 0, `${b.file}:${b.line}`).toBeGreaterThan(10);
  });

  for (const block of blocks.filter((b) => b.mode === 'run' || b.mode === 'with-demo')) {
    it(`${block.file}:${block.line} runs as written`, async () => {
      const dir = projectFolder(block);
      if (block.mode === 'with-demo') {
        const demo = await sh('npx vehicle-agent init --demo', dir);
        expect(demo.code, demo.stderr).toBe(0);
      }
      const r = await sh(block.body, dir);
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
      expect(r.stderr).not.toMatch(/\[internal\]|npm error/);
    }, 300_000);
  }

  for (const block of blocks.filter((b) => b.mode === 'with-agent')) {
    describe(`${block.file}:${block.line}, beside a running agent`, () => {
      let agent: AgentProcess | undefined;
      const dir = projectFolder(block);
      afterAll(async () => {
        await agent?.stop();
      });

      it('runs line by line as its comments say', async () => {
        agent = await startAgentProcess(['--state-dir', join(dir, '.state')]);
        await agent.waitForLog((r) => r.msg === 'PN532 ready');
        await agent.waitForLog((r) => r.msg === 'BLE link discovering');
        for (const line of block.body.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('#'))) {
          const [command = '', comment = ''] = line.split(/\s+#\s+/, 2);
          const r = await sh(command, dir);
          const what = `${line}\n→ exit ${r.code}: ${r.stdout}${r.stderr}`;
          const denial = /denied: ([a-z_]+)/.exec(comment)?.[0];
          if (denial !== undefined) {
            expect(r.code, what).toBe(2);
            expect(r.stdout, what).toContain(denial);
          } else {
            expect(r.code, what).toBe(0);
            if (/\bgranted\b/.test(comment)) expect(r.stdout, what).toMatch(/^granted/);
          }
        }
      }, 400_000);
    });
  }
});
