import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, startAgentProcess } from '../helpers/agent-process.js';
import { requireTool } from '../helpers/processes.js';

/**
 * End to end in Debian's headless Chromium (playwright-core; never a downloaded browser): the
 * page shows the real agent's state, a sim action is refused without the admin token and runs
 * with it, its audit event appears live, and the page rides out an agent restart.
 */
const CHROMIUM = '/usr/bin/chromium';
const SCREENSHOT = join('test-results', 'status-page.png');
const TOKEN = 'browser-test-token-0123456789';

describe('status page in headless Chromium', () => {
  let dir: string;
  let profile: string;
  let agent: AgentProcess;
  let port: number;
  let context: BrowserContext;
  let page: Page;
  const env = () => ({
    VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
    VEHICLE_AGENT_STATUS_PAGE__PORT: String(port),
    VEHICLE_AGENT_STATUS_PAGE__ADMIN_TOKEN: TOKEN,
  });

  beforeAll(async () => {
    requireTool('chromium', 'apt-get install chromium (test/ensure-tools.sh installs it)');
    if (!existsSync(CHROMIUM))
      throw new Error(`${CHROMIUM} is required by this test: apt-get install chromium`);
    dir = mkdtempSync(join(tmpdir(), 'va-browser-'));
    profile = mkdtempSync(join(tmpdir(), 'va-chromium-'));
    port = 0;
    agent = await startAgentProcess(['--state-dir', join(dir, 'state')], env());
    const listening = await agent.waitForLog((r) => r.msg === 'status page listening');
    port = Number(new URL(String(listening.url)).port);
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    page = await context.newPage();
  }, 60_000);

  afterAll(async () => {
    await context?.close();
    if (agent) await agent.stop();
    rmSync(dir, { recursive: true, force: true });
    rmSync(profile, { recursive: true, force: true });
  });

  it('shows the lock state, readers, keyring and the live audit list', async () => {
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.locator('#conn', { hasText: 'live' }).waitFor();
    expect(await page.textContent('#lock')).toBe('locked');
    const readers = (agent.logs.find((r) => r.msg === 'ready')?.readers as string[] | undefined) ?? [];
    expect(readers).toEqual(expect.arrayContaining(['sim', 'ble0']));
    for (const reader of readers) {
      await page.locator(`#readers tr[data-reader="${reader}"]`).waitFor();
    }
    expect(await page.textContent('#keyring')).toMatch(/active\d+/);
    await page.locator('#audit li').first().waitFor();
    expect(await page.locator('#sim-card').isVisible()).toBe(true);
  });

  it('paints the state at first paint: with every later request refused, the cards are filled', async () => {
    const cold = await context.newPage();
    // Only the document itself gets through: no /api/state, no event stream.
    await cold.route(/\/api\//, (route) => route.abort());
    await cold.goto(`http://127.0.0.1:${port}/`, { waitUntil: 'domcontentloaded' });
    expect(await cold.textContent('#lock')).toBe('locked');
    expect(await cold.textContent('#vehicle')).toMatch(/^VA-/);
    expect(await cold.locator('#readers tr[data-reader]').count()).toBeGreaterThan(0);
    expect(await cold.textContent('#keyring')).toMatch(/active\d+/);
    await cold.close();
  });

  it('refuses a sim action without the admin token; nothing happens', async () => {
    const accessEvents = await page.locator('#audit li[data-type="access"]').count();
    await page.fill('#token', '');
    await page.click('form[data-action="present"] button');
    await page.locator('#sim-result', { hasText: 'unauthorized' }).waitFor();
    expect(await page.locator('#audit li[data-type="access"]').count()).toBe(accessEvents);
    expect(await page.textContent('#lock')).toBe('locked');
  });

  it('runs it with the token: granted, and the audit event appears live', async () => {
    await page.fill('#token', TOKEN);
    await page.selectOption('form[data-action="present"] select[name="key"]', 'driver');
    await page.click('form[data-action="present"] button');
    await page.locator('#sim-result', { hasText: 'granted' }).waitFor();
    await page.locator('#audit li[data-type="access"][data-result="granted"]').first().waitFor();
    expect(await page.locator('#audit li[data-type="access"]').first().textContent()).toMatch(
      /access result=granted reader=sim/,
    );
    await page.locator('#decisions', { hasText: '1 granted' }).waitFor();
    mkdirSync('test-results', { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    expect(statSync(SCREENSHOT).size).toBeGreaterThan(1000);
    expect([...readFileSync(SCREENSHOT).subarray(0, 8)]).toEqual([
      0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a,
    ]);
  });

  it('says the agent is unreachable while it restarts, and recovers by itself', async () => {
    expect(await agent.stop('SIGTERM')).toBe(0);
    await page.locator('#banner', { hasText: 'agent unreachable' }).waitFor();
    await page.click('form[data-action="present"] button');
    await page.locator('#sim-result', { hasText: 'unavailable' }).waitFor();
    agent = await startAgentProcess(['--state-dir', join(dir, 'state')], env());
    await page.locator('#conn', { hasText: 'live' }).waitFor({ timeout: 20_000 });
    await page.locator('#banner').waitFor({ state: 'hidden' });
    await page.click('form[data-action="present"] button');
    await page.locator('#sim-result', { hasText: 'granted' }).waitFor();
  });
});
