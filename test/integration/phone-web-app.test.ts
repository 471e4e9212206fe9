import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BrowserContext, Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PublicJwk } from '../../src/core/types.js';
import { keyCredentialId } from '../../src/crypto/keys.js';
import { type AgentProcess, startAgentProcess } from '../helpers/agent-process.js';
import {
  addVirtualPlatformAuthenticator,
  launchPhoneKeyBrowser,
  type PhoneKeyBrowser,
} from '../helpers/phone-key-browser.js';
import { ReferenceVehicle } from '../helpers/phone-key-vehicle.js';
import { requireTool } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';
import { attachVehicle, type VehicleBridge } from '../helpers/web-bluetooth-bridge.js';

/**
 * The phone-key web app end to end in Debian's headless Chromium: served by the real agent's
 * status server at /key/, its Bluetooth traffic bridged through WebDriver BiDi's simulated
 * peripheral to a vehicle, passkeys from Chromium's virtual authenticator.
 *
 * The vehicle is test/helpers/phone-key-vehicle.ts (the spec's checks with a node:crypto key)
 * until the agent's mode P service and `sim.central.*` commands are merged; then
 * controlSocketCentral(agent.socket) from test/helpers/phone-key-central.ts replaces it.
 */
const VEHICLE_ID = 'VA-PHONE-WEB';
/**
 * With PHONE_KEY_SCREENSHOTS=docs/images the run also renders the page's states there (the
 * pictures docs/ble.md and the README show); without it, nothing is written.
 */
const SHOTS = process.env.PHONE_KEY_SCREENSHOTS;
async function shot(page: Page, name: string): Promise<void> {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `phone-key-${name}.png`) as `${string}.png` });
}
// Web Bluetooth through the BiDi bridge, not the agent's simulated radio (the page's default in sim mode).
const POLL = '?poll=250&radio=bluetooth';

function fingerprintOf(vehicle: ReferenceVehicle): string {
  return keyCredentialId('signer', vehicle.vehicleKey.publicKey.export({ format: 'jwk' }) as PublicJwk);
}

/** An expression evaluated in the page (the tests have no DOM types of their own). */
async function js<T>(page: Page, expression: string): Promise<T> {
  return (await page.evaluate(expression)) as T;
}

async function resultOf(page: Page, code: string): Promise<{ outcome: string; text: string }> {
  try {
    await page.waitForSelector(`#result[data-code="${code}"]`, { timeout: 15_000 });
  } catch (err) {
    const shown = await js<string>(page, "document.getElementById('result').textContent").catch(() => '?');
    throw new Error(`the page never showed ${code}; it shows: ${shown}`, { cause: err });
  }
  return js(
    page,
    "({ outcome: document.getElementById('result').dataset.outcome, text: document.getElementById('result').textContent })",
  );
}

const text = (page: Page, id: string) => js<string>(page, `document.getElementById('${id}').textContent`);

describe('phone-key web app in headless Chromium', () => {
  let dir: string;
  let agent: AgentProcess;
  let origin: string;
  let chromium: PhoneKeyBrowser;
  let page: Page;
  let vehicle: ReferenceVehicle;
  let bridge: VehicleBridge;

  const open = async (target: Page, v: ReferenceVehicle): Promise<VehicleBridge> => {
    await target.goto(`${origin}/key/${POLL}`);
    await target.waitForSelector('body[data-ready="true"]');
    return attachVehicle(target, v);
  };

  beforeAll(async () => {
    requireTool('chromium', 'apt-get install chromium (test/ensure-tools.sh installs it)');
    dir = mkdtempSync(join(tmpdir(), 'va-phone-web-'));
    agent = await startAgentProcess(['--state-dir', join(dir, 'state')], {
      VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
      VEHICLE_AGENT_STATUS_PAGE__PORT: '0',
    });
    const listening = await agent.waitForLog((r) => r.msg === 'status page listening');
    // localhost, not 127.0.0.1: WebAuthn refuses an IP address as relying party id.
    origin = `http://localhost:${new URL(String(listening.url)).port}`;
    chromium = await launchPhoneKeyBrowser();
    vehicle = new ReferenceVehicle(VEHICLE_ID, [origin]);
    page = await chromium.browser.newPage();
    // A phone-sized window (the screenshots are taken at this size).
    await page.setViewport({ width: 400, height: 640 });
    bridge = await open(page, vehicle);
  }, 90_000);

  afterAll(async () => {
    await chromium?.close();
    if (agent) await agent.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('enrolls a web key: pending until the owner approves, then pins the vehicle fingerprint', async () => {
    await js(page, "document.getElementById('name').value = 'Ada phone'");
    await page.click('#enroll-webkey');
    const pending = await resultOf(page, 'enrollment_pending');
    expect(pending.outcome).toBe('pending');
    expect(pending.text).toContain('Waiting for the owner');
    await shot(page, 'pending');
    expect(vehicle.requests.map((r) => [r.name, r.state])).toEqual([['Ada phone', 'pending']]);
    // The page keeps asking on new connections; nothing is pinned or granted meanwhile.
    const enrollWrites = () => bridge.traffic.filter((t) => t.op === 'write' && t.bytes?.[1] === 0x25).length;
    await waitFor(() => enrollWrites() >= 3, 'the page asks again');
    expect(await js(page, "document.getElementById('pin').hidden")).toBe(true);
    expect(vehicle.actions).toEqual([]);

    expect(vehicle.approvePending()).toBe(1);
    await resultOf(page, 'enrolled');
    expect(await text(page, 'fingerprint')).toBe(fingerprintOf(vehicle));
    expect(await text(page, 'vehicle-id')).toBe(VEHICLE_ID);
    // Pinned from a signed `identify`: no relay action.
    expect(vehicle.actions.map((a) => a.intent)).toEqual([4]);
    await shot(page, 'enrolled');
    const keyText = await text(page, 'key');
    expect(keyText).toContain(vehicle.requests[0]?.id);
  });

  it('unlocks and locks with one press each', async () => {
    await page.click('#unlock');
    const unlocked = await resultOf(page, 'granted');
    expect(unlocked.outcome).toBe('granted');
    expect(vehicle.actions.at(-1)?.intent).toBe(1);
    await shot(page, 'unlocked');
    await js(page, "delete document.getElementById('result').dataset.code");
    await page.click('#lock');
    await resultOf(page, 'granted');
    expect(vehicle.actions.at(-1)?.intent).toBe(2);
    // Each press wrote exactly one answer.
    const writes = bridge.traffic.filter((t) => t.op === 'write');
    expect(writes.at(-1)?.bytes?.[1]).toBe(0x22);
  });

  it('shows a revoked or expired key in words, and nothing opens', async () => {
    const id = vehicle.requests[0]?.id ?? '';
    const before = vehicle.actions.length;
    vehicle.setStatus(id, 'revoked');
    await page.click('#unlock');
    const revoked = await resultOf(page, 'revoked');
    expect(revoked.outcome).toBe('denied');
    expect(revoked.text).toContain('revoked by the owner');
    await shot(page, 'revoked');
    vehicle.setStatus(id, 'expired');
    await page.click('#unlock');
    const expired = await resultOf(page, 'expired');
    expect(expired.text).toContain('This key has expired');
    expect(vehicle.actions.length).toBe(before);
    vehicle.setStatus(id, 'active');
  });

  it('refuses a signed result from a vehicle other than the pinned one', async () => {
    // Same vehicle id, same phone key in its keyring, another vehicle key: an impostor.
    const impostor = new ReferenceVehicle(VEHICLE_ID, [origin]);
    for (const [id, entry] of vehicle.keyring) impostor.keyring.set(id, entry);
    await bridge.detach();
    bridge = await open(page, impostor);
    await page.click('#unlock');
    const refused = await resultOf(page, 'wrong_vehicle');
    expect(refused.outcome).toBe('refused');
    expect(refused.text).toContain(fingerprintOf(impostor));
    // A vehicle with another id gets no answer at all.
    const other = new ReferenceVehicle('VA-SOMEONE-ELSE', [origin]);
    await bridge.detach();
    bridge = await open(page, other);
    await page.click('#unlock');
    expect((await resultOf(page, 'wrong_vehicle')).text).toContain('VA-SOMEONE-ELSE');
    expect(bridge.traffic.filter((t) => t.op === 'write')).toEqual([]);
    await bridge.detach();
    bridge = await open(page, vehicle);
  });

  describe('a passkey with user verification', () => {
    let context: BrowserContext;
    let passkeyPage: Page;
    let passkeyBridge: VehicleBridge;

    beforeAll(async () => {
      // One simulated vehicle per browser at a time: Chromium reports a page's GATT traffic to
      // every bridged page (test/helpers/web-bluetooth-bridge.ts).
      await bridge.detach();
      context = await chromium.browser.createBrowserContext();
      passkeyPage = await context.newPage();
      await passkeyPage.goto(`${origin}/key/${POLL}`);
      await addVirtualPlatformAuthenticator(passkeyPage);
      passkeyBridge = await attachVehicle(passkeyPage, vehicle);
    });
    afterAll(async () => {
      await passkeyBridge?.detach();
      await context?.close();
      bridge = await attachVehicle(page, vehicle);
    });

    it('enrolls, pins and unlocks; the vehicle saw UV set and the page origin', async () => {
      await passkeyPage.click('#enroll-passkey');
      await resultOf(passkeyPage, 'enrollment_pending');
      const request = vehicle.requests.at(-1);
      expect(request?.id).toMatch(/^passkey:/);
      expect(vehicle.approvePending()).toBe(1);
      await resultOf(passkeyPage, 'enrolled');
      expect(await text(passkeyPage, 'fingerprint')).toBe(fingerprintOf(vehicle));
      await passkeyPage.click('#unlock');
      await resultOf(passkeyPage, 'granted');
      expect(vehicle.actions.at(-1)).toEqual({ intent: 1, id: request?.id, uv: true });
      expect(passkeyBridge.traffic.filter((t) => t.op === 'write').at(-1)?.bytes?.[1]).toBe(0x23);
    });

    it('is refused by a vehicle that does not list this origin, in words', async () => {
      const strict = new ReferenceVehicle(VEHICLE_ID, ['https://key.example.org']);
      Object.defineProperty(strict, 'vehicleKey', { value: vehicle.vehicleKey });
      Object.defineProperty(strict, 'vehicleSpki', { value: vehicle.vehicleSpki });
      for (const [id, entry] of vehicle.keyring) strict.keyring.set(id, entry);
      await passkeyBridge.detach();
      // A fresh page: it chooses the vehicle again (the simulation does not outlive a navigation).
      await passkeyPage.reload();
      await passkeyPage.waitForSelector('body[data-ready="true"]');
      passkeyBridge = await attachVehicle(passkeyPage, strict);
      await passkeyPage.click('#unlock');
      const refused = await resultOf(passkeyPage, 'origin_not_allowed');
      expect(refused.text).toContain('does not accept keys from this web address');
      expect(strict.actions).toEqual([]);
    });
  });

  it('opens offline: with the server gone, the service worker serves the page and the key is still there', async () => {
    await page.waitForSelector('body[data-offline="ready"]');
    // The page is controlled once the worker has claimed it.
    await page.waitForFunction('navigator.serviceWorker.controller !== null');
    expect(await agent.stop('SIGTERM')).toBe(0);
    const gone = await fetch(`${origin}/key/`).then(
      () => 'answered',
      () => 'refused',
    );
    expect(gone).toBe('refused');
    await page.reload();
    await page.waitForSelector('body[data-ready="true"]');
    expect(await text(page, 'fingerprint')).toBe(fingerprintOf(vehicle));
    expect(await js(page, "document.getElementById('unlock').disabled")).toBe(false);
    await bridge.detach();
    bridge = await attachVehicle(page, vehicle);
    await page.click('#unlock');
    await resultOf(page, 'granted');
  });
});
