import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { controlRequest } from '../../src/cli/control-client.js';
import { readAuditLog } from '../../src/store/audit-log.js';
import type { AgentProcess } from '../helpers/agent-process.js';
import { useAgentRig } from '../helpers/agent-rig.js';
import type { TestCloud } from '../helpers/cloud-side.js';
import type { Broker } from '../helpers/mosquitto.js';
import { parseExposition } from '../helpers/prometheus.js';
import { waitFor, waitForValue } from '../helpers/wait.js';

/**
 * Audit rotation and the cloud outbox, through the real agent and a real Mosquitto: while the
 * broker is away, rotation keeps every record the outbox has not sent (past audit.keepFiles, up to
 * audit.maxFiles); past that budget the oldest go, said with code audit_retention_exceeded in the
 * log itself, /healthz and /metrics; when the broker is back, what was kept reaches the cloud and
 * rotation returns to keepFiles. The cloud link's stores show in the per-store figures too.
 */
describe('audit rotation keeps what the cloud outbox has not sent', () => {
  const rig = useAgentRig('va-audit-retention-');
  let broker: Broker;
  let agent: AgentProcess;
  let cloud: TestCloud;
  let dir: string;
  let page: string;
  let base: string;

  const socket = () => join(dir, 'control.sock');
  const auditFiles = () => readdirSync(join(dir, 'audit')).filter((n) => n.endsWith('.jsonl'));
  const fill = (count: number) =>
    controlRequest(socket(), 'test.audit', { count, bytes: 300 }, 20_000) as Promise<{ lastSeq: number }>;
  const ackedSeq = async () =>
    ((await controlRequest(socket(), 'cloud.status', {})) as { outbox: { ackedSeq: number } }).outbox
      .ackedSeq;
  async function onDisk(): Promise<{ seq: number; type: string; [k: string]: unknown }[]> {
    const out: { seq: number; type: string }[] = [];
    for await (const r of readAuditLog(join(dir, 'audit'), 1)) out.push(r);
    return out;
  }
  async function metric(name: string): Promise<number | undefined> {
    const text = await (await fetch(`${page}/metrics`)).text();
    const sample = parseExposition(text).get(name)?.samples[0];
    return sample === undefined ? undefined : Number(sample.split(' ').at(-1));
  }

  beforeAll(async () => {
    ({ broker, cloud } = await rig.startCloud({
      client: { clientId: 'retention-cloud', clean: false, properties: { sessionExpiryInterval: 3600 } },
      subscribe: ['vehicle-agent/+/events'],
    }));
    dir = rig.stateDir();
    agent = await rig.startAgent(
      'state',
      rig.cloudEnv({
        VEHICLE_AGENT_AUDIT__MAX_FILE_BYTES: '4096',
        VEHICLE_AGENT_AUDIT__KEEP_FILES: '1',
        VEHICLE_AGENT_AUDIT__MAX_FILES: '6',
        VEHICLE_AGENT_TEST_HOOKS: '1',
        VEHICLE_AGENT_STATUS_PAGE__ENABLED: 'true',
        VEHICLE_AGENT_STATUS_PAGE__PORT: '0',
        VEHICLE_AGENT_STATUS_PAGE__SIM_CONTROLS: 'false',
      }),
    );
    page = String((await agent.waitForLog((r) => r.msg === 'status page listening')).url).replace(/\/$/, '');
    await agent.waitForLog((r) => r.msg === 'cloud link up');
    base = `vehicle-agent/${rig.vehicleId()}`;
  }, 60_000);

  it('keeps unsent records up to audit.maxFiles, says what it had to delete, and sends what it kept', async () => {
    await broker.stop();
    await agent.waitForLog((r) => r.msg === 'cloud link down; reconnecting');
    const acked = await ackedSeq();

    // Two or three files of records (~450 bytes each) the cloud has not received: all kept,
    // past keepFiles (1).
    const { lastSeq: firstBatch } = await fill(20);
    expect(auditFiles().length).toBeGreaterThan(1);
    const kept = (await onDisk()).map((r) => r.seq).filter((seq) => seq > acked);
    expect(kept.at(-1)).toBeGreaterThanOrEqual(firstBatch);
    expect(kept).toEqual(Array.from({ length: kept.length }, (_, i) => acked + i + 1));
    expect(await ackedSeq()).toBe(acked);

    // Past the budget (6 files) the oldest go anyway, and it is said with its code.
    await fill(80);
    expect(auditFiles()).toHaveLength(6);
    const records = await onDisk();
    const loss = records.find((r) => r.type === 'audit.retention');
    expect(loss).toMatchObject({ code: 'audit_retention_exceeded', maxFiles: 6 });
    expect(Number(loss?.fromSeq)).toBe(acked + 1);
    const oldest = records[0]?.seq ?? 0;
    expect(oldest).toBeGreaterThan(acked + 1);
    // /metrics and /healthz come from the last health run: wait for one after the loss.
    let health: { degraded?: boolean; checks?: Record<string, { detail?: string }> } = {};
    await waitFor(
      async () => {
        health = (await (await fetch(`${page}/healthz`)).json()) as typeof health;
        return /audit_retention_exceeded/.test(health.checks?.storage?.detail ?? '');
      },
      'the retention loss in /healthz',
      { timeoutMs: 30_000, intervalMs: 100 },
    ).catch(() => {}); // the assertions below show what it said
    expect(health.degraded).toBe(true);
    expect(health.checks?.storage?.detail).toMatch(/record\(s\) the cloud has not received were deleted/);
    expect(await metric('vehicle_agent_audit_unsent_deleted_total')).toBeGreaterThan(0);
    expect(await metric('vehicle_agent_audit_unsent_missing')).toBe(oldest - acked - 1);
    expect(await metric('vehicle_agent_audit_files_retained')).toBe(5);
    expect(await metric('vehicle_agent_audit_max_files')).toBe(6);
    // The cloud link's own stores are in the per-store figures beside the agent's.
    const exposition = parseExposition(await (await fetch(`${page}/metrics`)).text());
    const labelled = (exposition.get('vehicle_agent_store_write_failures_total')?.samples ?? []).map(
      (line) => /store="([^"]+)"/.exec(line)?.[1],
    );
    expect(labelled).toEqual(
      expect.arrayContaining([
        'keyring',
        'counters',
        'audit',
        'cloud.command-counters',
        'cloud.command-results',
        'cloud.outbox',
      ]),
    );

    // The broker is back: everything still on disk reaches the cloud, the gap is named, and
    // rotation returns to keepFiles once the outbox has caught up.
    await broker.start();
    const lastSeq = (await onDisk()).at(-1)?.seq ?? 0;
    const sent = () =>
      new Set(
        cloud.received
          .filter((m) => m.topic === `${base}/events`)
          .map((m) => (JSON.parse(m.payload) as { seq: number }).seq),
      );
    await waitFor(
      () => [...Array(lastSeq - oldest + 1).keys()].every((k) => sent().has(oldest + k)),
      'every kept record at the cloud',
      { timeoutMs: 30_000, intervalMs: 100 },
    ).catch(() => {}); // the assertion below lists the missing ones
    const missingAtCloud = [...Array(lastSeq - oldest + 1).keys()]
      .map((k) => oldest + k)
      .filter((seq) => !sent().has(seq));
    expect(missingAtCloud).toEqual([]);
    // The outbox names the gap in a record of its own, written (and sent) after it saw the gap.
    const droppedEvent = () =>
      cloud.received
        .filter((m) => m.topic === `${base}/events`)
        .map((m) => JSON.parse(m.payload) as { type: string; reason?: string; fromSeq?: number })
        .find((r) => r.type === 'outbox.dropped');
    const dropped = await waitForValue(droppedEvent, 'the outbox.dropped event', {
      timeoutMs: 30_000,
      intervalMs: 100,
    });
    expect(dropped).toMatchObject({ reason: 'missing', fromSeq: acked + 1 });
    await waitFor(async () => (await ackedSeq()) >= lastSeq, 'the cloud to acknowledge every record', {
      timeoutMs: 10_000,
      intervalMs: 100,
    }).catch(() => {}); // as before: the next step waits for more anyway
    // Once the cloud has every record, the next rotation keeps only what it has not received:
    // the file being written and at most the one before it.
    const { lastSeq: filled } = await fill(20);
    await waitFor(async () => (await ackedSeq()) >= filled, 'the cloud to acknowledge the fill', {
      timeoutMs: 30_000,
      intervalMs: 100,
    }).catch(() => {});
    expect(await ackedSeq()).toBeGreaterThanOrEqual(filled);
    // Batches of 5 records (less than a file) with the cloud caught up before each: the first
    // batch that rotates may keep only the file it started in (its first records are unsent).
    const caughtUp = async (seq: number) => {
      await waitFor(async () => (await ackedSeq()) >= seq, `the cloud to acknowledge ${seq}`, {
        timeoutMs: 30_000,
        intervalMs: 100,
      }).catch(() => {});
    };
    let files = auditFiles();
    for (let i = 0; i < 10; i++) {
      const before = files.join();
      const { lastSeq } = await fill(5);
      files = auditFiles();
      if (files.join() !== before) break;
      await caughtUp(lastSeq);
    }
    expect(files.length).toBeLessThanOrEqual(2);
  }, 120_000);
});
