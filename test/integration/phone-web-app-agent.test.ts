import { join } from 'node:path';
import type { Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, runCliJson } from '../helpers/agent-process.js';
import {
  clearResult,
  type PhoneKeyAgent,
  resultOf,
  startPhoneKeyAgent,
  textOf as text,
} from '../helpers/phone-key-agent.js';
import { launchPhoneKeyBrowser, type PhoneKeyBrowser } from '../helpers/phone-key-browser.js';
import { controlSocketCentral } from '../helpers/phone-key-central.js';
import { requireTool } from '../helpers/processes.js';
import { waitForValue } from '../helpers/wait.js';
import { attachVehicle, type VehicleBridge } from '../helpers/web-bluetooth-bridge.js';

/**
 * The phone-key web app against the real agent, end to end: Debian's headless Chromium loads the
 * page from the agent's status server; its Web Bluetooth traffic goes through WebDriver BiDi's
 * simulated peripheral to `sim.central.*` on the agent's control socket, where the BlueZ stand-in
 * calls the agent's GATT application exactly as bluetoothd would; the agent's mode P service
 * decides through the same path as every reader. The owner approves the page's enrollment with an
 * owner phone key over BLE, as at a real vehicle. The refusals are in
 * phone-web-app-agent-refusals.test.ts.
 */

describe('phone-key web app and the real agent (mode P through the BlueZ stand-in)', () => {
  let vehicle: PhoneKeyAgent;
  let dir: string;
  let chromium: PhoneKeyBrowser;
  let page: Page;
  let bridge: VehicleBridge;
  const sd = (): string[] => vehicle.sd();
  const audit = () => vehicle.audit(50);

  beforeAll(async () => {
    requireTool('chromium', 'apt-get install chromium (test/ensure-tools.sh installs it)');
    requireTool('dbus-daemon', 'apt-get install dbus');
    vehicle = await startPhoneKeyAgent();
    dir = vehicle.dir;
    chromium = await launchPhoneKeyBrowser();
    page = await chromium.browser.newPage();
    // Web Bluetooth through the BiDi bridge, not the simulated radio (the default in sim mode).
    await page.goto(`${vehicle.origin}/key/?poll=250&radio=bluetooth`);
    await page.waitForSelector('body[data-ready="true"]');
    bridge = await attachVehicle(page, controlSocketCentral(vehicle.socket));
  }, 120_000);

  afterAll(async () => {
    await bridge?.detach().catch(() => undefined);
    await chromium?.close();
    await vehicle?.stop();
  });

  it('enrolls a web key with the owner phone approving over BLE, and pins the vehicle the agent names', async () => {
    await page.evaluate("document.getElementById('name').value = 'Ada phone'");
    await page.click('#enroll-webkey');
    expect((await resultOf(page, 'enrollment_pending')).outcome).toBe('pending');
    const pending = await waitForValue(() => {
      const s = runCliJson<{ state: string; credentialId?: string }>(['enroll', 'status', ...sd()]).value;
      return s.state === 'pending' ? s : undefined;
    }, 'the agent holds the page request');
    // Nothing is pinned or opened while the request waits.
    expect(await page.evaluate("document.getElementById('pin').hidden")).toBe(true);

    vehicle.approveEnrollment();
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

  it("unlocks through the agent's decision path: the grant is audited for the page key on reader ble-p", async () => {
    const { credentialId } = runCliJson<{ credentialId: string }>(['enroll', 'status', ...sd()]).value;
    await clearResult(page);
    await page.click('#unlock');
    expect((await resultOf(page, 'granted')).outcome).toBe('granted');
    const record = await waitForValue(
      async () => (await audit()).find((r) => r.credentialId === credentialId && r.granted === true),
      'a grant for the page key in the audit',
    );
    expect(record.reader).toBe('ble-p');
  });

  it('shows a revoked key in words and opens nothing', async () => {
    const { credentialId } = runCliJson<{ credentialId: string }>(['enroll', 'status', ...sd()]).value;
    const revoke = runCli([
      'keys',
      'revoke',
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--id',
      credentialId,
      ...sd(),
    ]);
    expect(revoke.code, revoke.stderr).toBe(0);
    const grantsBefore = (await audit()).filter(
      (r) => r.credentialId === credentialId && r.granted === true,
    ).length;
    await clearResult(page);
    await page.click('#unlock');
    const refused = await resultOf(page, 'revoked');
    expect(refused.outcome).toBe('denied');
    expect(refused.text).toContain('revoked by the owner');
    const grantsAfter = (await audit()).filter(
      (r) => r.credentialId === credentialId && r.granted === true,
    ).length;
    expect(grantsAfter).toBe(grantsBefore);
  });
});
