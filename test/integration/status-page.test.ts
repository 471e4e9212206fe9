import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import { parseExposition } from '../helpers/prometheus.js';

/**
 * The status page served by the real agent on simulated hardware: the views, /healthz, /metrics,
 * sim actions through the same handlers as the control socket (sim reader, BLE phone, NFC card),
 * live audit events, and bad requests that change nothing while the agent keeps running.
 */
describe('status page on the real agent', () => {
  let dir: string;
  let agent: AgentProcess;
  let base: string;
  let token: string;
  /** The readers this build runs (the `ready` log line lists them): sim and ble0, nfc0 with NFC. */
  let readers: string[];
  const sd = () => ['--state-dir', dir];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'va-status-'));
    agent = await startAgentProcess(sd(), {
      VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
      VEHICLE_AGENT_STATUS_PAGE__PORT: '0',
      VEHICLE_AGENT_POLICY__MAX_DENIALS: '1000',
    });
    const listening = await agent.waitForLog((r) => r.msg === 'status page listening');
    base = String(listening.url).replace(/\/$/, '');
    token = readFileSync(join(dir, 'status-admin-token'), 'utf8').trim();
    readers = (agent.logs.find((r) => r.msg === 'ready')?.readers as string[] | undefined) ?? [];
    expect(readers).toEqual(expect.arrayContaining(['sim', 'ble0']));
  });

  afterAll(async () => {
    if (agent) await agent.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const post = (action: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${base}/api/sim/${action}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, ...headers },
      body: JSON.stringify(body),
    });
  /** The last durable audit seq, from the control socket (the page caches its state briefly). */
  const auditSeq = async () =>
    runCliJson<{ recent: { seq: number }[] }>(['status', ...sd()]).value.recent.at(-1)?.seq ?? 0;

  it('binds to loopback and keeps a generated admin token in a 0600 file, never in the log', () => {
    expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(statSync(join(dir, 'status-admin-token')).mode & 0o777).toBe(0o600);
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(JSON.stringify(agent.logs)).not.toContain(token);
  });

  it('shows lock state, every reader, subsystems, the keyring summary and the sim actions', async () => {
    const state = (await (await fetch(`${base}/api/state`)).json()) as Record<string, unknown> & {
      readers: Record<string, { state: string }>;
      subsystems: Record<string, unknown>;
      keyring: { active: number; revoked: number };
      sim: { enabled: boolean; actions: { id: string }[] };
    };
    expect(state.lock).toBe('locked');
    expect(Object.keys(state.readers).sort()).toEqual([...readers].sort());
    expect(Object.keys(state.subsystems)).toEqual(
      expect.arrayContaining(['ble', ...(readers.includes('nfc0') ? ['nfc'] : [])]),
    );
    expect(state.keyring.active).toBeGreaterThan(0);
    expect(state.keyring.revoked).toBeGreaterThan(0);
    expect(state.sim.enabled).toBe(true);
    expect(state.sim.actions.map((a) => a.id)).toEqual(
      expect.arrayContaining(['present', 'uid', 'phone', ...(readers.includes('nfc0') ? ['tap'] : [])]),
    );
  });

  it('serves /healthz and Prometheus /metrics', async () => {
    const health = await fetch(`${base}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({
      status: 'ok',
      checks: { eventLoop: { ok: true }, lock: { ok: true }, state: { ok: true } },
    });
    const text = await (await fetch(`${base}/metrics`)).text();
    const families = parseExposition(text);
    expect(text).toContain('vehicle_agent_lock_state{state="locked"} 1\n');
    for (const reader of readers) expect(text).toContain(`vehicle_agent_reader_up{reader="${reader}"}`);
    expect(text).toMatch(/^vehicle_agent_audit_seq \d+$/m);
    expect(text).toMatch(/^process_resident_memory_bytes \d+$/m);
    expect(families.get('vehicle_agent_decisions_total')?.type).toBe('counter');
  });

  it('refuses bad requests with coded errors; nothing changes and the agent keeps running', async () => {
    const before = await auditSeq();
    const cases: [Promise<Response>, number, string][] = [
      [post('present', { key: 'driver' }, { authorization: '' }), 401, 'unauthorized'],
      [
        post('present', { key: 'driver' }, { authorization: 'Bearer wrong-token-wrong-token' }),
        401,
        'unauthorized',
      ],
      [post('present', { key: 'nobody' }), 400, 'bad_arguments'],
      [post('present', { key: '../../etc/passwd' }), 400, 'bad_arguments'],
      [post('present', { key: 'driver', pad: 'x'.repeat(20_000) }), 413, 'request_too_large'],
      [
        fetch(`${base}/api/sim/present`, {
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: '{"key":',
        }),
        400,
        'bad_arguments',
      ],
      [post('open-the-doors', {}), 404, 'not_found'],
      [fetch(`${base}/admin`), 404, 'not_found'],
      [fetch(`${base}/metrics`, { method: 'POST' }), 405, 'method_not_allowed'],
    ];
    for (const [pending, status, code] of cases) {
      const res = await pending;
      expect({
        status: res.status,
        code: ((await res.json()) as { error: { code: string } }).error.code,
      }).toEqual({
        status,
        code,
      });
    }
    expect(await auditSeq()).toBe(before);
    expect(agent.child.exitCode).toBeNull();
    const status = runCliJson<{ running: boolean; lock: string }>(['status', ...sd()]);
    expect(status.value).toMatchObject({ running: true, lock: 'locked' });
  });

  it('runs sim actions with the token and streams the audit events live', async () => {
    const controller = new AbortController();
    const stream = await fetch(`${base}/api/events`, { signal: controller.signal });
    const reader = stream.body?.getReader();
    if (!reader) throw new Error('no stream');
    let text = '';
    const waitForEvent = async (needle: string) => {
      while (!text.includes(needle)) {
        const chunk = await reader.read();
        if (chunk.done) throw new Error('stream ended');
        text += new TextDecoder().decode(chunk.value);
      }
    };
    await waitForEvent('event: audit');

    const present = await post('present', { key: 'driver', intent: 'unlock' });
    expect(present.status).toBe(200);
    expect(await present.json()).toMatchObject({ ok: true, result: { granted: true, role: 'driver' } });
    await waitForEvent('"reader":"sim","kind":"phone"');

    const denied = await post('present', { key: 'revoked' });
    expect(await denied.json()).toMatchObject({ ok: true, result: { granted: false, code: 'revoked' } });
    await waitForEvent('"code":"revoked"');

    const phone = await post('phone', { key: 'driver', intent: 'lock' });
    expect(await phone.json()).toMatchObject({ ok: true, result: { outcome: 'decision', granted: true } });
    await waitForEvent('"reader":"ble0"');

    if (readers.includes('nfc0')) {
      // A simulated card on the emulated PN532, offered by the NFC reader's sim.card.* handlers.
      const state = (await (await fetch(`${base}/api/state`)).json()) as {
        sim: { actions: { id: string; params: { name: string; choices?: { value: string }[] }[] }[] };
      };
      const tap = state.sim.actions.find((a) => a.id === 'tap');
      const card = tap?.params[0]?.choices?.[0]?.value;
      expect(card).toBeDefined();
      const tapped = await post('tap', { card });
      expect(tapped.status).toBe(200);
      await waitForEvent('"reader":"nfc0"');
    }
    controller.abort();

    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/^vehicle_agent_decisions_total\{result="granted",code=""\} [2-9]$/m);
    expect(metrics).toContain('vehicle_agent_decisions_total{result="denied",code="revoked"} 1\n');
  });
});

describe('status page with the cloud link enabled', () => {
  let dir: string;
  let agent: AgentProcess;

  afterAll(async () => {
    if (agent) await agent.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('picks up the link through its cloud.status handler: disconnected, outbox depth in /metrics', async () => {
    dir = mkdtempSync(join(tmpdir(), 'va-status-cloud-'));
    agent = await startAgentProcess(['--state-dir', dir], {
      VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
      VEHICLE_AGENT_STATUS_PAGE__PORT: '0',
      VEHICLE_AGENT_CLOUD__ENABLED: 'true',
      // Nothing listens there: the link keeps retrying and the vehicle runs on.
      VEHICLE_AGENT_CLOUD__URL: 'mqtt://127.0.0.1:1',
    });
    const listening = await agent.waitForLog((r) => r.msg === 'status page listening');
    const base = String(listening.url).replace(/\/$/, '');
    const state = (await (await fetch(`${base}/api/state`)).json()) as {
      cloud?: { connected: boolean; outbox: { pending: number } };
    };
    expect(state.cloud?.connected).toBe(false);
    expect(typeof state.cloud?.outbox.pending).toBe('number');
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toContain('vehicle_agent_cloud_connected 0\n');
    expect(metrics).toMatch(/^vehicle_agent_outbox_pending \d+$/m);
  });
});
