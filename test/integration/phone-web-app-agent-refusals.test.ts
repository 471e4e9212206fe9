import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { extname, join, normalize } from 'node:path';
import type { BrowserContext, CDPSession, Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeResult, type Result } from '../../web/phone-key/codec.js';
import { runCli } from '../helpers/agent-process.js';
import {
  type AuditRecord,
  clearResult,
  enrollFromPage,
  type PhoneKeyAgent,
  resultOf,
  startPhoneKeyAgent,
} from '../helpers/phone-key-agent.js';
import {
  addVirtualPlatformAuthenticator,
  launchPhoneKeyBrowser,
  type PhoneKeyBrowser,
} from '../helpers/phone-key-browser.js';
import { controlSocketCentral, type SimulatedCentral } from '../helpers/phone-key-central.js';
import { requireTool } from '../helpers/processes.js';
import { letTimePass, waitFor, waitForRead, waitForValue } from '../helpers/wait.js';
import { attachVehicle, type VehicleBridge } from '../helpers/web-bluetooth-bridge.js';

/**
 * The refusals of the phone-key web app against the real agent (issue 14): headless Chromium
 * loads the page from the agent's status server, its Web Bluetooth traffic goes over WebDriver
 * BiDi to `sim.central.*`, the agent's mode P service decides. Each refusal is checked where it
 * matters: the page shows it in words, and at the agent nothing opens (the sim relay's timeline)
 * and the audit says what happened. Set-up shared with phone-web-app-agent.test.ts.
 */

/** The web key answer deadline, from the challenge read (policy.bleAnswerDeadlineMs). */
const DEADLINE_MS = 3000;
const ANSWER = 0x22;

const js = async <T>(page: Page, expression: string): Promise<T> => (await page.evaluate(expression)) as T;

async function openPage(target: Page, url: string): Promise<void> {
  await target.goto(url);
  await target.waitForSelector('body[data-ready="true"]');
}

/** The result a central reads once the vehicle has decided (a `pending` result means not yet). */
async function decidedResult(central: SimulatedCentral, device: string): Promise<Result> {
  return waitForRead(
    async () => decodeResult(await central.read(device, 'result')),
    (r) => r.outcome !== 'pending',
    'the vehicle decides',
  );
}

const MIME: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.webmanifest': 'application/manifest+json',
};

/** The exported app as static files on a loopback port of its own: an origin the agent does not list. */
async function serveFolder(dir: string): Promise<{ origin: string; close: () => Promise<void> }> {
  const server: Server = createServer((req, res) => {
    const path = normalize(new URL(req.url ?? '/', 'http://localhost').pathname).replace(/^(\.\.[/\\])+/, '');
    const file = join(dir, path.endsWith('/') ? `${path}index.html` : path);
    readFile(file).then(
      (body) => {
        res.writeHead(200, { 'content-type': MIME[extname(file)] ?? 'application/octet-stream' });
        res.end(body);
      },
      () => {
        res.writeHead(404);
        res.end();
      },
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://localhost:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

describe('phone-key web app and the real agent: the refusals', () => {
  let vehicle: PhoneKeyAgent;
  let central: SimulatedCentral;
  let chromium: PhoneKeyBrowser;
  let page: Page;
  let bridge: VehicleBridge;
  let keyId: string;

  const accessFor = async (credentialId: string): Promise<AuditRecord[]> =>
    (await vehicle.audit()).filter((r) => r.type === 'access' && r.credentialId === credentialId);
  const grantsFor = async (credentialId: string): Promise<number> =>
    (await accessFor(credentialId)).filter((r) => r.result === 'granted').length;

  beforeAll(async () => {
    requireTool('chromium', 'apt-get install chromium (test/ensure-tools.sh installs it)');
    requireTool('dbus-daemon', 'apt-get install dbus');
    vehicle = await startPhoneKeyAgent({
      VEHICLE_AGENT_POLICY__BLE_ANSWER_DEADLINE_MS: String(DEADLINE_MS),
      // The relay moves only on a decision: every pulse a test sees is one the agent decided.
      VEHICLE_AGENT_LOCK__AUTO_RELOCK_MS: '0',
    });
    central = controlSocketCentral(vehicle.socket);
    chromium = await launchPhoneKeyBrowser();
    page = await chromium.browser.newPage();
    await openPage(page, `${vehicle.origin}/key/?poll=250&radio=bluetooth`);
    bridge = await attachVehicle(page, central);
    await js(page, "document.getElementById('name').value = 'Ada phone'");
    keyId = await enrollFromPage(page, vehicle, '#enroll-webkey');
  }, 180_000);

  afterAll(async () => {
    await bridge?.detach().catch(() => undefined);
    await chromium?.close();
    await vehicle?.stop();
  });

  it('replay: a granted answer written again, on its connection and on a new one, is refused and audited; nothing opens', async () => {
    const before = await vehicle.relayPulses();
    await clearResult(page);
    await page.click('#unlock');
    expect((await resultOf(page, 'granted')).outcome).toBe('granted');
    await waitFor(async () => (await vehicle.relayPulses()) > before, 'the grant pulses the relay');
    const opened = await vehicle.relayPulses();
    const grants = await grantsFor(keyId);
    const captured = bridge.traffic.filter((t) => t.op === 'write' && t.bytes?.[1] === ANSWER).at(-1)?.bytes;
    if (captured === undefined || bridge.device === undefined) throw new Error('no answer captured');

    // Written again on the connection that carried it.
    await central.write(bridge.device, 'answer', captured);
    expect(await decidedResult(central, bridge.device)).toMatchObject({ outcome: 'denied', code: 'replay' });
    // On a new connection, which has a live challenge of its own.
    const other = await central.connect();
    try {
      await central.read(other, 'challenge');
      await central.write(other, 'answer', captured);
      const refused = await decidedResult(central, other);
      expect(refused).toMatchObject({ outcome: 'denied', code: 'replay' });
      // An unauthenticated peer gets nothing signed.
      expect(refused.sig.length + refused.vehicleSpki.length).toBe(0);
    } finally {
      await central.disconnect(other);
    }
    // Through the page: its next press goes out as the captured answer, and it says why it failed.
    bridge.onAnswer = async () => captured;
    try {
      await clearResult(page);
      await page.click('#unlock');
      const shown = await resultOf(page, 'replay');
      expect(shown.outcome).toBe('denied');
      expect(shown.text).toContain('refused a repeated answer');
    } finally {
      bridge.onAnswer = undefined;
    }

    const replays = await waitForValue(async () => {
      const found = (await accessFor(keyId)).filter((r) => r.code === 'replay');
      return found.length >= 3 ? found : undefined;
    }, 'three replays in the audit');
    expect(replays.map((r) => [r.reader, r.result])).toEqual(Array(3).fill(['ble-p', 'denied']));
    expect(await grantsFor(keyId)).toBe(grants);
    expect(await vehicle.relayPulses()).toBe(opened);
  });

  it('late answer: written after the deadline from the challenge read, it is challenge_expired in words, audited with its lateness', async () => {
    const before = await vehicle.relayPulses();
    const grants = await grantsFor(keyId);
    const holdMs = DEADLINE_MS + 1000;
    // A slow link: the page's answer reaches the vehicle at least holdMs after its challenge read.
    bridge.onAnswer = async (bytes) => {
      await letTimePass(holdMs, 'the answer is held past the deadline');
      return bytes;
    };
    try {
      await clearResult(page);
      await page.click('#unlock');
      const shown = await resultOf(page, 'challenge_expired');
      expect(shown.outcome).toBe('denied');
      expect(shown.text).toContain('reached the vehicle too late');
    } finally {
      bridge.onAnswer = undefined;
    }
    const late = await waitForValue(
      async () => (await accessFor(keyId)).find((r) => r.code === 'timeout'),
      'the missed deadline in the audit',
    );
    expect(late).toMatchObject({ reader: 'ble-p', result: 'denied', deadlineMs: DEADLINE_MS });
    expect(late.lateMs).toBeGreaterThanOrEqual(holdMs - DEADLINE_MS);
    expect(late.answerMs).toBe(DEADLINE_MS + (late.lateMs ?? 0));
    expect(await grantsFor(keyId)).toBe(grants);
    expect(await vehicle.relayPulses()).toBe(before);
    // The same key on time still opens: the miss cost nothing but that answer.
    await clearResult(page);
    await page.click('#unlock');
    await resultOf(page, 'granted');
  });

  it('wrong vehicle: the page pinned this vehicle and meets another one that knows its key; it refuses in words and sends it nothing', async () => {
    const other = await startPhoneKeyAgent({ VEHICLE_AGENT_LOCK__AUTO_RELOCK_MS: '0' });
    try {
      expect(other.vehicleId).not.toBe(vehicle.vehicleId);
      // The other vehicle would open for this key: only the page's pin stands between them.
      other.grant(['--kind', 'phone', '--public', await vehicle.publicKeyPem(keyId), '--role', 'driver']);
      await bridge.detach();
      await openPage(page, `${vehicle.origin}/key/?poll=250&radio=bluetooth`);
      bridge = await attachVehicle(page, controlSocketCentral(other.socket));
      await clearResult(page);
      await page.click('#unlock');
      const shown = await resultOf(page, 'wrong_vehicle');
      expect(shown.outcome).toBe('refused');
      expect(shown.text).toContain(other.vehicleId);
      expect(shown.text).toContain(vehicle.vehicleId);
      // It read the other vehicle's challenge and wrote nothing back.
      expect(bridge.traffic.map((t) => `${t.op} ${t.characteristic ?? ''}`.trim())).toEqual([
        'connect',
        'read challenge',
      ]);
      expect((await other.audit()).filter((r) => r.type === 'access' || r.type === 'ble.identify')).toEqual(
        [],
      );
      expect(await other.relayPulses()).toBe(0);
    } finally {
      await bridge.detach();
      await other.stop();
      await openPage(page, `${vehicle.origin}/key/?poll=250&radio=bluetooth`);
      bridge = await attachVehicle(page, central);
    }
  });

  it('expired key: a grant whose validity has ended is refused with its code, in words; nothing opens', async () => {
    const before = await vehicle.relayPulses();
    const grants = await grantsFor(keyId);
    // The owner grants the page key again, valid until a time already past: the newer grant decides.
    vehicle.grant([
      '--kind',
      'phone',
      '--public',
      await vehicle.publicKeyPem(keyId),
      '--role',
      'driver',
      '--not-after',
      '2026-01-01T00:00:00Z',
    ]);
    await clearResult(page);
    await page.click('#unlock');
    const shown = await resultOf(page, 'expired');
    expect(shown.outcome).toBe('denied');
    expect(shown.text).toContain('This key has expired');
    const denied = await waitForValue(
      async () => (await accessFor(keyId)).find((r) => r.code === 'expired'),
      'the expired key in the audit',
    );
    expect(denied).toMatchObject({ reader: 'ble-p', result: 'denied' });
    expect(await grantsFor(keyId)).toBe(grants);
    expect(await vehicle.relayPulses()).toBe(before);
  });

  describe('passkeys', () => {
    let context: BrowserContext | undefined;
    let passkeyBridge: VehicleBridge | undefined;
    let site: { origin: string; close: () => Promise<void> } | undefined;

    /** A fresh browser profile (its own IndexedDB) at `url`, a virtual platform authenticator, bridged to the vehicle. */
    async function passkeyPage(
      url: string,
    ): Promise<{ page: Page; cdp: CDPSession; authenticatorId: string }> {
      // One bridged page per browser at a time (test/helpers/web-bluetooth-bridge.ts).
      await passkeyBridge?.detach();
      await context?.close();
      context = await chromium.browser.createBrowserContext();
      const fresh = await context.newPage();
      await openPage(fresh, url);
      const authenticator = await addVirtualPlatformAuthenticator(fresh);
      passkeyBridge = await attachVehicle(fresh, central);
      return { page: fresh, ...authenticator };
    }

    beforeAll(async () => {
      await bridge.detach();
    });
    afterAll(async () => {
      await passkeyBridge?.detach().catch(() => undefined);
      await context?.close();
      await site?.close();
    });

    it('with user verification missing: user_verification_required in words, nothing opens', async () => {
      const {
        page: phone,
        cdp,
        authenticatorId,
      } = await passkeyPage(`${vehicle.origin}/key/?poll=250&radio=bluetooth`);
      const passkeyId = await enrollFromPage(phone, vehicle, '#enroll-passkey');
      expect(passkeyId).toMatch(/^passkey:/);
      const before = await vehicle.relayPulses();
      // An authenticator that answers without verifying the user, in a browser that lets it
      // (this page asks for verification: the test strips that request, as a broken browser would).
      await cdp.send('WebAuthn.setUserVerified', { authenticatorId, isUserVerified: false });
      await phone.evaluate(`(() => {
        const get = navigator.credentials.get.bind(navigator.credentials);
        navigator.credentials.get = (o) => get({ ...o, publicKey: { ...o.publicKey, userVerification: 'discouraged' } });
      })()`);
      await clearResult(phone);
      await phone.click('#unlock');
      const shown = await resultOf(phone, 'user_verification_required');
      expect(shown.outcome).toBe('denied');
      expect(shown.text).toContain('without unlocking the phone');
      expect(passkeyBridge?.traffic.filter((t) => t.op === 'write').at(-1)?.bytes?.[1]).toBe(0x23);
      const denied = await waitForValue(
        async () => (await accessFor(passkeyId)).find((r) => r.result === 'denied'),
        'the refused passkey in the audit',
      );
      expect(denied.reader).toBe('ble-p');
      // The audit names the reason the page showed, not a bare bad_proof.
      expect(denied.code).toBe('user_verification_required');
      expect(await grantsFor(passkeyId)).toBe(0);
      expect(await vehicle.relayPulses()).toBe(before);
    });

    it('from an origin the vehicle does not list: origin_not_allowed in words, nothing opens', async () => {
      const exported = join(vehicle.dir, 'phone-app');
      const exportRun = runCli(['phone-app', 'export', exported]);
      expect(exportRun.code, exportRun.stderr).toBe(0);
      site = await serveFolder(exported);
      expect(site.origin).not.toBe(vehicle.origin);
      const { page: phone } = await passkeyPage(`${site.origin}/?poll=250`);
      const before = await vehicle.relayPulses();
      // Enrollment proves nothing about the origin; the first signed use (identify) does.
      const passkeyId = await enrollFromPage(phone, vehicle, '#enroll-passkey', 'origin_not_allowed');
      const shown = await resultOf(phone, 'origin_not_allowed');
      expect(shown.outcome).toBe('denied');
      expect(shown.text).toContain('does not accept keys from this web address');
      // Nothing pinned: the page never learnt the vehicle key.
      expect(await js(phone, "document.getElementById('pin').hidden")).toBe(true);
      const refused = await waitForValue(
        async () =>
          (await vehicle.audit()).find((r) => r.type === 'ble.identify' && r.credentialId === passkeyId),
        'the refused identify in the audit',
      );
      expect(refused).toMatchObject({ reader: 'ble-p', granted: false, code: 'origin_not_allowed' });
      expect(await grantsFor(passkeyId)).toBe(0);
      expect(await vehicle.relayPulses()).toBe(before);
    });
  });
});
