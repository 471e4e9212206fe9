import { createPublicKey } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Page } from 'puppeteer-core';
import { expect } from 'vitest';
import { controlRequest } from '../../src/cli/control-client.js';
import { type AgentProcess, runCli, runCliJson, startAgentProcess } from './agent-process.js';
import { waitFor, waitForValue } from './wait.js';

/**
 * The real agent as the phone-key page's browser tests meet it (test/integration/phone-web-app-
 * agent*.test.ts): sim mode with the status page on a free port (the page's origin), an owner
 * phone key granted by the demo owner (it approves the page's enrollments over BLE, as at a real
 * vehicle), and its peripheral registered with the BlueZ stand-in. What the tests read back is
 * the agent's own record: the audit, the relay's timeline, the enrollment desk.
 */

export interface AuditRecord {
  readonly type?: string;
  readonly reader?: string;
  readonly credentialId?: string;
  readonly granted?: boolean;
  readonly result?: string;
  readonly code?: string;
  readonly answerMs?: number;
  readonly deadlineMs?: number;
  readonly lateMs?: number;
}

export interface PhoneKeyAgent {
  readonly dir: string;
  readonly socket: string;
  readonly agent: AgentProcess;
  /** The status page's origin at localhost (WebAuthn takes no IP address as relying party). */
  readonly origin: string;
  readonly vehicleId: string;
  /** The owner phone key's files (`.pem`, `.pub.pem`). */
  readonly ownerPhone: string;
  /** `--state-dir DIR` for the CLI. */
  sd(): string[];
  audit(n?: number): Promise<AuditRecord[]>;
  /** How many times the relay was energised since the agent started (the sim relay's timeline). */
  relayPulses(): Promise<number>;
  /** The enrollment desk's request, as `vehicle-agent enroll status` shows it. */
  enrollStatus(): { state: string; credentialId?: string };
  /** The owner phone approves the pending request over BLE (`phone approach --approve-enrollment`). */
  approveEnrollment(): void;
  /** A grant signed by the demo owner, through the running agent (extra `keys grant` arguments). */
  grant(args: readonly string[]): void;
  /** A public key of the keyring as a PEM file (to grant the same key elsewhere, or again). */
  publicKeyPem(credentialId: string): Promise<string>;
  stop(): Promise<void>;
}

export async function startPhoneKeyAgent(env: NodeJS.ProcessEnv = {}): Promise<PhoneKeyAgent> {
  const dir = mkdtempSync(join(tmpdir(), 'va-phone-agent-'));
  const socket = join(dir, 'control.sock');
  const sd = (): string[] => ['--state-dir', dir];
  let agent: AgentProcess | undefined;
  try {
    agent = await startAgentProcess(sd(), {
      VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
      VEHICLE_AGENT_STATUS_PAGE__PORT: '0',
      VEHICLE_AGENT_POLICY__MAX_DENIALS: '1000',
      ...env,
    });
    const listening = await agent.waitForLog((r) => r.msg === 'status page listening');
    const origin = `http://localhost:${new URL(String(listening.url)).port}`;
    const ownerPhone = join(dir, 'owner-phone');
    expect(runCli(['phone', 'keygen', '--out', ownerPhone]).code).toBe(0);
    const grant = (args: readonly string[]): void => {
      const r = runCli(['keys', 'grant', '--key', join(dir, 'demo', 'owner.pem'), ...args, ...sd()]);
      expect(r.code, r.stderr).toBe(0);
    };
    grant(['--kind', 'phone', '--public', `${ownerPhone}.pub.pem`, '--role', 'owner']);
    await waitFor(async () => {
      const status = (await controlRequest(socket, 'ble.status', {})) as {
        peripheral?: { health?: { state?: string } };
      };
      return status.peripheral?.health?.state === 'ok';
    }, 'the agent advertises its phone-key service');
    const { vehicleId } = (await controlRequest(socket, 'vehicle', {})) as { vehicleId: string };
    const running = agent;
    return {
      dir,
      socket,
      agent: running,
      origin,
      vehicleId,
      ownerPhone,
      sd,
      audit: async (n = 200) => (await controlRequest(socket, 'audit.tail', { n })) as AuditRecord[],
      relayPulses: async () => {
        const status = (await controlRequest(socket, 'status', {})) as {
          relay?: { timeline?: { energised?: boolean }[] };
        };
        return (status.relay?.timeline ?? []).filter((t) => t.energised === true).length;
      },
      enrollStatus: () =>
        runCliJson<{ state: string; credentialId?: string }>(['enroll', 'status', ...sd()]).value,
      approveEnrollment: () => {
        const approval = runCliJson<{ granted: boolean }>([
          'phone',
          'approach',
          '--key',
          `${ownerPhone}.pem`,
          '--approve-enrollment',
          ...sd(),
        ]);
        expect(approval.value.granted, JSON.stringify(approval.value)).toBe(true);
      },
      grant,
      publicKeyPem: async (credentialId) => {
        const keys = (
          (await controlRequest(socket, 'keys.list', { ids: [credentialId] })) as {
            credentials: { credential: { id: string; publicKey?: object } }[];
          }
        ).credentials;
        const jwk = keys.find((k) => k.credential.id === credentialId)?.credential.publicKey;
        if (jwk === undefined) throw new Error(`no public key for ${credentialId} in the keyring`);
        const file = join(dir, `${credentialId.replace(/[^\w-]/g, '_')}.pub.pem`);
        writeFileSync(
          file,
          createPublicKey({ key: jwk as never, format: 'jwk' }).export({ format: 'pem', type: 'spki' }),
        );
        return file;
      },
      stop: async () => {
        await running.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await agent?.stop();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** Waits until the page's result shows `code`; its outcome and the words it shows. */
export async function resultOf(page: Page, code: string): Promise<{ outcome: string; text: string }> {
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

export const textOf = async (page: Page, id: string): Promise<string> =>
  String(await page.evaluate(`document.getElementById('${id}').textContent`));

/** Forgets the result shown, so the next resultOf waits for a new one. */
export async function clearResult(page: Page): Promise<void> {
  await page.evaluate("delete document.getElementById('result').dataset.code");
}

/**
 * The page enrolls its key (`button`: #enroll-webkey or #enroll-passkey), the owner phone
 * approves, and the page pins the vehicle (or shows why not: `enrolledCode`). Returns the
 * credential id the agent enrolled.
 */
export async function enrollFromPage(
  page: Page,
  vehicle: PhoneKeyAgent,
  button: '#enroll-webkey' | '#enroll-passkey',
  enrolledCode = 'enrolled',
): Promise<string> {
  await clearResult(page);
  await page.click(button);
  expect((await resultOf(page, 'enrollment_pending')).outcome).toBe('pending');
  const pending = await waitForValue(() => {
    const s = vehicle.enrollStatus();
    return s.state === 'pending' ? s : undefined;
  }, 'the agent holds the page request');
  vehicle.approveEnrollment();
  await resultOf(page, enrolledCode);
  if (pending.credentialId === undefined) throw new Error('the pending request names no credential');
  return pending.credentialId;
}
