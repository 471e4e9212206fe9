import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { controlRequest } from '../../src/cli/control-client.js';
import { type AgentProcess, runCli, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import { launchPhoneKeyBrowser, type PhoneKeyBrowser } from '../helpers/phone-key-browser.js';
import { controlSocketCentral } from '../helpers/phone-key-central.js';
import { requireTool } from '../helpers/processes.js';
import { waitFor, waitForValue } from '../helpers/wait.js';
import { attachVehicle, type VehicleBridge } from '../helpers/web-bluetooth-bridge.js';

/**
 * The phone-key web app against the real agent, end to end: Debian's headless Chromium loads the
 * page from the agent's status server; its Web Bluetooth traffic goes through WebDriver BiDi's
 * simulated peripheral to `sim.central.*` on the agent's control socket, where the BlueZ stand-in
 * calls the agent's GATT application exactly as bluetoothd would; the agent's mode P service
 * decides through the same path as every reader. The owner approves the page's enrollment with an
 * owner phone key over BLE, as at a real vehicle.
 */

interface AuditRecord {
  readonly type?: string;
  readonly reader?: string;
  readonly credentialId?: string;
  readonly granted?: boolean;
  readonly code?: string;
}

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

describe('phone-key web app and the real agent (mode P through the BlueZ stand-in)', () => {
  let dir: string;
  let socket: string;
  let agent: AgentProcess;
  let chromium: PhoneKeyBrowser;
  let page: Page;
  let bridge: VehicleBridge;
  let ownerPhone: string;
  const sd = (): string[] => ['--state-dir', dir];
  const audit = async (): Promise<AuditRecord[]> =>
    (await controlRequest(socket, 'audit.tail', { n: 50 })) as AuditRecord[];
  const clearResult = () => page.evaluate("delete document.getElementById('result').dataset.code");

  beforeAll(async () => {
    requireTool('chromium', 'apt-get install chromium (test/ensure-tools.sh installs it)');
    requireTool('dbus-daemon', 'apt-get install dbus');
    dir = mkdtempSync(join(tmpdir(), 'va-phone-agent-'));
    socket = join(dir, 'control.sock');
    agent = await startAgentProcess(sd(), {
      VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
      VEHICLE_AGENT_STATUS_PAGE__PORT: '0',
      VEHICLE_AGENT_POLICY__MAX_DENIALS: '1000',
    });
    const listening = await agent.waitForLog((r) => r.msg === 'status page listening');
    const origin = `http://localhost:${new URL(String(listening.url)).port}`;
    ownerPhone = join(dir, 'owner-phone');
    expect(runCli(['phone', 'keygen', '--out', ownerPhone]).code).toBe(0);
    const grant = runCli([
      'keys',
      'grant',
      '--key',
      join(dir, 'demo', 'owner.pem'),
      '--kind',
      'phone',
      '--public',
      `${ownerPhone}.pub.pem`,
      '--role',
      'owner',
      ...sd(),
    ]);
    expect(grant.code, grant.stderr).toBe(0);
    await waitFor(async () => {
      const status = (await controlRequest(socket, 'ble.status', {})) as {
        peripheral?: { health?: { state?: string } };
      };
      return status.peripheral?.health?.state === 'ok';
    }, 'the agent advertises its phone-key service');
    chromium = await launchPhoneKeyBrowser();
    page = await chromium.browser.newPage();
    // Web Bluetooth through the BiDi bridge, not the simulated radio (the default in sim mode).
    await page.goto(`${origin}/key/?poll=250&radio=bluetooth`);
    await page.waitForSelector('body[data-ready="true"]');
    bridge = await attachVehicle(page, controlSocketCentral(socket));
  }, 120_000);

  afterAll(async () => {
    await bridge?.detach().catch(() => undefined);
    await chromium?.close();
    if (agent) await agent.stop();
    rmSync(dir, { recursive: true, force: true });
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

    const approval = runCliJson<{ granted: boolean }>([
      'phone',
      'approach',
      '--key',
      `${ownerPhone}.pem`,
      '--approve-enrollment',
      ...sd(),
    ]);
    expect(approval.value.granted, JSON.stringify(approval.value)).toBe(true);
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
    await clearResult();
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
    await clearResult();
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
