import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BrowserContext, Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { controlRequest } from '../../src/cli/control-client.js';
import { type AgentProcess, runCli, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import { launchPhoneKeyBrowser, type PhoneKeyBrowser } from '../helpers/phone-key-browser.js';
import { requireTool } from '../helpers/processes.js';
import { waitFor, waitForValue } from '../helpers/wait.js';

/**
 * The README's "Try the phone key", as a person does it: the agent in sim mode with its status
 * page, the page it prints opened in (headless) Chromium with no Web Bluetooth bridge at all; the
 * page finds the agent's simulated radio and its GATT traffic goes through the status server to
 * the BlueZ stand-in's simulated central, which calls the agent's real GATT application. The
 * demo's owner phone approves the enrollment over the simulated BLE link (its E1 signature), by
 * the one command the README gives, or by the status page's button.
 */

interface AuditRecord {
  readonly type?: string;
  readonly reader?: string;
  readonly credentialId?: string;
  readonly granted?: boolean;
}

/** With PHONE_KEY_SCREENSHOTS=docs/images the run also renders the try-out there (the README's picture). */
const SHOTS = process.env.PHONE_KEY_SCREENSHOTS;

async function resultOf(page: Page, code: string): Promise<{ outcome: string; text: string }> {
  try {
    await page.waitForSelector(`#result[data-code="${code}"]`, { timeout: 20_000 });
  } catch (err) {
    const shown = await page.evaluate("document.getElementById('result').textContent").catch(() => '?');
    throw new Error(`the page never showed ${code}; it shows: ${String(shown)}`, { cause: err });
  }
  return (await page.evaluate(
    "({ outcome: document.getElementById('result').dataset.outcome, text: document.getElementById('result').textContent })",
  )) as { outcome: string; text: string };
}

const text = async (page: Page, id: string): Promise<string> =>
  String(await page.evaluate(`document.getElementById('${id}').textContent`));

interface Reply {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Reply> {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

const codeOf = (reply: Reply): unknown => (reply.body.error as { code?: unknown } | undefined)?.code;

describe('try the phone key: sim mode, desktop Chromium, the simulated radio', () => {
  let dir: string;
  let socket: string;
  let agent: AgentProcess;
  let pageUrl: string;
  let chromium: PhoneKeyBrowser;
  let page: Page;
  const sd = (): string[] => ['--state-dir', dir];
  const audit = async (): Promise<AuditRecord[]> =>
    (await controlRequest(socket, 'audit.tail', { n: 50 })) as AuditRecord[];
  const enrollState = () =>
    runCliJson<{ state: string; credentialId?: string }>(['enroll', 'status', ...sd()]).value;
  const radio = () => new URL('radio', pageUrl).href;

  const openPage = async (context: BrowserContext): Promise<Page> => {
    const p = await context.newPage();
    await p.setViewport({ width: 400, height: 720 });
    await p.goto(`${pageUrl}?poll=250`);
    await p.waitForSelector('body[data-ready="true"]');
    return p;
  };

  beforeAll(async () => {
    requireTool('chromium', 'apt-get install chromium (test/ensure-tools.sh installs it)');
    requireTool('dbus-daemon', 'apt-get install dbus');
    dir = mkdtempSync(join(tmpdir(), 'va-phone-try-'));
    socket = join(dir, 'control.sock');
    agent = await startAgentProcess(sd(), {
      VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
      VEHICLE_AGENT_STATUS_PAGE__PORT: '0',
      VEHICLE_AGENT_POLICY__MAX_DENIALS: '1000',
    });
    // The URL the agent prints for a person to open.
    const printed = await agent.waitForLog((r) => String(r.msg).startsWith('try: the phone key page'));
    pageUrl = String(printed.url);
    expect(pageUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/key\/$/);
    await waitFor(async () => {
      const status = (await controlRequest(socket, 'ble.status', {})) as {
        peripheral?: { health?: { state?: string } };
      };
      return status.peripheral?.health?.state === 'ok';
    }, 'the agent advertises its phone-key service');
    chromium = await launchPhoneKeyBrowser();
    page = await openPage(chromium.browser.defaultBrowserContext());
  }, 120_000);

  afterAll(async () => {
    await chromium?.close();
    if (agent) await agent.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('the page finds the simulated radio, enrolls, the owner phone approves (README command), it pins the vehicle', async () => {
    expect(await page.evaluate('document.body.dataset.radio')).toBe('simulated');
    expect(await page.evaluate("document.getElementById('radio').hidden")).toBe(false);
    await page.evaluate("document.getElementById('name').value = 'Ada laptop'");
    await page.click('#enroll-webkey');
    expect((await resultOf(page, 'enrollment_pending')).outcome).toBe('pending');
    const pending = await waitForValue(() => {
      const s = enrollState();
      return s.state === 'pending' ? s : undefined;
    }, 'the agent holds the page request');
    expect(await page.evaluate("document.getElementById('pin').hidden")).toBe(true);

    const approval = runCli(['phone', 'approach', 'owner-phone', '--approve-enrollment', ...sd()]);
    expect(approval.code, approval.stdout + approval.stderr).toBe(0);
    expect(approval.stdout).toContain('enrollment approved');
    await resultOf(page, 'enrolled');
    const identity = runCliJson<{ vehicleId: string; fingerprint: string }>([
      'identity',
      '--json',
      ...sd(),
    ]).value;
    expect(await text(page, 'fingerprint')).toBe(identity.fingerprint);
    expect(await text(page, 'vehicle-id')).toBe(identity.vehicleId);
    expect(await text(page, 'key')).toContain(pending.credentialId);
  });

  it('unlocks: the grant is audited for the page key on reader ble-p', async () => {
    const { credentialId } = enrollState();
    await page.click('#unlock');
    expect((await resultOf(page, 'granted')).outcome).toBe('granted');
    const record = await waitForValue(
      async () => (await audit()).find((r) => r.credentialId === credentialId && r.granted === true),
      'a grant for the page key in the audit',
    );
    expect(record.reader).toBe('ble-p');
    if (SHOTS) {
      mkdirSync(SHOTS, { recursive: true });
      await page.screenshot({ path: join(SHOTS, 'phone-key-try.png') as `${string}.png` });
    }
  });

  it('the status page button approves with the owner phone only: no token, or a non-owner phone, approves nothing', async () => {
    const context = await chromium.browser.createBrowserContext();
    try {
      const second = await openPage(context);
      await second.evaluate("document.getElementById('name').value = 'Ben laptop'");
      await second.click('#enroll-webkey');
      await resultOf(second, 'enrollment_pending');
      const pending = await waitForValue(() => {
        const s = enrollState();
        return s.state === 'pending' && s.credentialId !== undefined ? s : undefined;
      }, 'the second request pending');
      const approve = new URL('/api/sim/approve-enrollment', pageUrl).href;
      const token = readFileSync(join(dir, 'status-admin-token'), 'utf8').trim();

      expect(codeOf(await post(approve, {}))).toBe('unauthorized');
      // The admin token is no owner credential: a driver's phone brought by it approves nothing.
      const byDriver = await post(approve, { key: 'driver' }, { authorization: `Bearer ${token}` });
      expect(byDriver.status).toBe(200);
      expect(byDriver.body.result).toMatchObject({ granted: false });
      expect(enrollState()).toMatchObject({ state: 'pending', credentialId: pending.credentialId });

      const byOwner = await post(approve, {}, { authorization: `Bearer ${token}` });
      expect(byOwner.body.result, JSON.stringify(byOwner.body)).toMatchObject({
        outcome: 'enrollment',
        granted: true,
      });
      await resultOf(second, 'enrolled');
      await second.click('#unlock');
      await resultOf(second, 'granted');
    } finally {
      await context.close();
    }
  });

  it("the status page's button arms the reader and the demo owner FIDO key tapped approves; a driver's key tapped approves nothing", async () => {
    const context = await chromium.browser.createBrowserContext();
    try {
      const third = await openPage(context);
      await third.evaluate("document.getElementById('name').value = 'Cy laptop'");
      await third.click('#enroll-webkey');
      await resultOf(third, 'enrollment_pending');
      const pending = await waitForValue(() => {
        const s = enrollState();
        return s.state === 'pending' && s.credentialId !== undefined ? s : undefined;
      }, 'the third request pending');
      const token = readFileSync(join(dir, 'status-admin-token'), 'utf8').trim();
      const auth = { authorization: `Bearer ${token}` };
      const status = await context.newPage();
      await status.goto(new URL('/', pageUrl).href);
      // Without the token the button arms nothing.
      await status.waitForSelector('#approve-fido:not([hidden])', { timeout: 20_000 });
      // (Polled from here: the page's Content-Security-Policy refuses waitForFunction's eval.)
      const shown = (what: string) =>
        waitFor(
          async () => (await text(status, 'enroll-result')).includes(what),
          `the status page shows ${what}`,
        );
      await status.click('#approve-fido');
      await shown('unauthorized');
      await status.type('#token', token);
      await status.click('#approve-fido');
      await shown('reader armed');
      expect(await text(status, 'enroll-result')).toContain(pending.credentialId);

      const tap = new URL('/api/sim/tap', pageUrl).href;
      const byDriver = await post(tap, { card: 'fido-driver' }, auth);
      expect(byDriver.body.result).toMatchObject({
        approval: 'owner-fido',
        ok: false,
        code: 'role_not_allowed',
      });
      expect(enrollState()).toMatchObject({ state: 'pending', credentialId: pending.credentialId });
      const byOwner = await post(new URL('/api/sim/approve-enrollment-fido', pageUrl).href, {}, auth);
      expect(byOwner.body.result, JSON.stringify(byOwner.body)).toMatchObject({
        approval: 'owner-fido',
        ok: true,
        state: 'approved',
        credentialId: pending.credentialId,
      });
      await resultOf(third, 'enrolled');
      // The phone's tab in front again (a background tab's clicks wait for a frame that never comes).
      await third.bringToFront();
      await third.click('#unlock');
      await resultOf(third, 'granted');
    } finally {
      await context.close();
    }
  }, 60_000);

  it('the radio gives what a central in range has, no more: coded refusals, no one else’s link, and a valid key still opens', async () => {
    const refusals: [string, unknown, Record<string, string>, string][] = [
      ['an unknown op', { op: 'pair' }, {}, 'bad_arguments'],
      [
        'an extra field',
        { op: 'connect', device: '/org/bluez/hci0/dev_00_00_00_00_00_01' },
        {},
        'bad_arguments',
      ],
      [
        'a D-Bus path as link',
        { op: 'read', link: '/org/bluez/hci0/dev_00', characteristic: 'challenge' },
        {},
        'bad_arguments',
      ],
      ['a link never given', { op: 'read', link: 'A'.repeat(22), characteristic: 'result' }, {}, 'not_found'],
      [
        'a write to challenge',
        { op: 'write', link: 'A'.repeat(22), hex: '00', characteristic: 'challenge' },
        {},
        'bad_arguments',
      ],
      ['over 512 bytes', { op: 'write', link: 'A'.repeat(22), hex: '00'.repeat(513) }, {}, 'bad_arguments'],
      ['a body over 2 KiB', { op: 'connect', pad: 'x'.repeat(3000) }, {}, 'request_too_large'],
      ['not JSON', '{"op":', {}, 'bad_arguments'],
      ['another origin', { op: 'connect' }, { origin: 'http://evil.example' }, 'origin_not_allowed'],
    ];
    for (const [what, body, headers, code] of refusals) {
      const reply = await post(radio(), body, headers);
      expect(codeOf(reply), what).toBe(code);
      expect(reply.status, what).toBeGreaterThanOrEqual(400);
    }
    expect((await post(radio(), {}, {})).status).toBe(400);
    expect((await fetch(radio())).status).toBe(405);

    // A link is the connection of whoever opened it: garbage there sets only its own result.
    const mine = await post(radio(), { op: 'connect' });
    const link = String(mine.body.link);
    expect(link).toMatch(/^[A-Za-z0-9_-]{22}$/);
    const garbage = await post(radio(), { op: 'write', link, hex: 'ff00ff00' });
    expect(codeOf(garbage)).toBe('malformed');
    expect((await post(radio(), { op: 'disconnect', link })).body).toEqual({});
    expect(codeOf(await post(radio(), { op: 'read', link, characteristic: 'result' }))).toBe('not_found');

    await page.evaluate("delete document.getElementById('result').dataset.code");
    await page.click('#unlock');
    expect((await resultOf(page, 'granted')).outcome).toBe('granted');
  });
});

describe('the simulated radio is absent when BLE is not simulated', () => {
  let dir: string;
  let agent: AgentProcess;
  let base: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'va-phone-try-noble-'));
    agent = await startAgentProcess(['--state-dir', dir], {
      VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
      VEHICLE_AGENT_STATUS_PAGE__PORT: '0',
      VEHICLE_AGENT_BLE__ENABLED: 'false',
    });
    base = String((await agent.waitForLog((r) => r.msg === 'status page listening')).url);
  }, 60_000);

  afterAll(async () => {
    if (agent) await agent.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves the page, but no sim-radio.json and no radio, and prints no try-out URL', async () => {
    expect((await fetch(new URL('/key/', base))).status).toBe(200);
    const info = await fetch(new URL('/key/sim-radio.json', base));
    expect(info.status).toBe(404);
    expect(((await info.json()) as { error: { code: string } }).error.code).toBe('not_found');
    const call = await post(new URL('/key/radio', base).href, { op: 'connect' });
    expect(call.status).toBe(404);
    expect(codeOf(call)).toBe('not_found');
    expect(agent.logs.some((r) => String(r.msg).startsWith('try: the phone key page'))).toBe(false);
  });

  it('an exported app has no sim-radio.json (the page there speaks Web Bluetooth only)', () => {
    const out = join(dir, 'export');
    const r = runCli(['phone-app', 'export', out]);
    expect(r.code, r.stderr).toBe(0);
    const files = readdirSync(out);
    expect(files).toContain('sim-radio.js');
    expect(files).not.toContain('sim-radio.json');
  });
});
