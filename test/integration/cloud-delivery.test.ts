import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readAuditLog } from '../../src/store/audit-log.js';
import { type AgentProcess, runCliJson } from '../helpers/agent-process.js';
import { useAgentRig } from '../helpers/agent-rig.js';
import { type NobleSigner, nobleSigner, type TestCloud } from '../helpers/cloud-side.js';
import type { Broker } from '../helpers/mosquitto.js';
import { tcpBytesUnread } from '../helpers/processes.js';
import { letTimePass, waitFor } from '../helpers/wait.js';

/**
 * Delivery across outages: queued commands, QoS 1 redelivery, the event outbox across broker
 * restarts and `kill -9`, the last will. The broker runs the shipped config (persistence on), so
 * sessions and queued messages survive its restarts, as in production.
 */
describe('cloud delivery across outages', () => {
  const rig = useAgentRig('va-cloud-dlv-');
  let broker: Broker;
  let agent: AgentProcess;
  let cloud: TestCloud;
  let dir: string;
  let vid: string;
  let base: string;
  let owner: NobleSigner;
  let counter = Date.now();
  const sd = () => rig.sd();
  const start = async () => {
    agent = await rig.startAgent('state', rig.cloudEnv(), {
      waitForLog: ['cloud link up', 'cloud link up again'],
    });
  };

  function command(over: Record<string, unknown> = {}): { jws: string; jti: string } {
    const now = Math.floor(Date.now() / 1000);
    counter = Math.max(counter + 1, Date.now());
    const jti = `d-${counter}`;
    return {
      jti,
      jws: owner.sign({
        vid,
        cmd: 'unlock',
        args: {},
        jti,
        iat: now - 1,
        exp: now + 60,
        ctr: counter,
        ...over,
      }),
    };
  }

  const resultFor = (jti: string, timeoutMs = 15_000) =>
    cloud
      .waitFor(
        (m) => m.topic === `${base}/command/result` && (JSON.parse(m.payload) as { jti: string }).jti === jti,
        timeoutMs,
        `the result for ${jti}`,
      )
      .then((m) => JSON.parse(m.payload) as { status: string; code: string });

  async function auditRecords() {
    const out: { seq: number; type: string; source?: unknown; action?: unknown }[] = [];
    for await (const r of readAuditLog(join(dir, 'audit'), 1)) out.push(r);
    return out;
  }

  beforeAll(async () => {
    // The cloud subscribes with a persistent session before the vehicle ever connects, so what
    // it receives is limited only by what the vehicle delivers.
    ({ broker, cloud } = await rig.startCloud({
      client: { clientId: 'test-cloud', clean: false, properties: { sessionExpiryInterval: 3600 } },
      subscribe: ['events', 'status', 'command/result'].map((t) => `vehicle-agent/+/${t}`),
    }));
    dir = rig.stateDir();
    await start();
    vid = rig.vehicleId();
    base = `vehicle-agent/${vid}`;
    owner = nobleSigner(join(dir, 'demo', 'owner.pem'));
  });

  it('refuses a command that waited at the broker past its exp, and runs a fresh one queued with it', async () => {
    await agent.stop();
    const stale = command({ exp: Math.floor(Date.now() / 1000) + 2 });
    const fresh = command({ cmd: 'lock' });
    await cloud.publish(`${base}/command`, stale.jws);
    await cloud.publish(`${base}/command`, fresh.jws);
    await letTimePass(3000, "the stale command's exp (2 s) passes while it waits at the broker");
    await start();
    expect(await resultFor(stale.jti)).toMatchObject({ status: 'error', code: 'command_expired' });
    expect(await resultFor(fresh.jti)).toMatchObject({ status: 'ok', code: 'ok' });
  });

  it('acts once on a QoS 1 command the broker delivers again after a reconnect', async () => {
    const unlocksBefore = (await auditRecords()).filter(
      (r) => r.type === 'command' && r.action === 'unlock',
    ).length;
    const pid = agent.child.pid ?? 0;
    // Freeze the vehicle, wait until the broker has written the command into its socket, then
    // restart the broker: the PUBACK can never arrive, so the broker keeps the message for the session.
    process.kill(pid, 'SIGSTOP');
    const c = command();
    try {
      const unreadBefore = tcpBytesUnread(pid);
      await cloud.publish(`${base}/command`, c.jws);
      await waitFor(() => tcpBytesUnread(pid) > unreadBefore, "the command in the stopped agent's socket");
      await broker.restart();
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    expect(await resultFor(c.jti)).toMatchObject({ status: 'ok', code: 'ok' });
    await agent.waitForLog(
      (r) => r.msg === 'command seen before: same result again, not carried out' && r.jti === c.jti,
    );
    const unlocksAfter = (await auditRecords()).filter(
      (r) => r.type === 'command' && r.action === 'unlock',
    ).length;
    expect(unlocksAfter).toBe(unlocksBefore + 1);
  });

  it('delivers every audit event across broker restarts and kill -9 (no sequence gaps), and the will says offline', async () => {
    const present = (n: number) => {
      for (let i = 0; i < n; i++) {
        const r = runCliJson<{ granted: boolean }>(['sim', 'present', 'driver', ...sd()]);
        expect(r.value.granted).toBe(true);
      }
    };
    present(5);
    await broker.restart();
    present(3);
    await broker.stop();
    present(5); // events pile up in the outbox while the broker is down; unlocking is unaffected
    await broker.start();
    present(3);
    const statusBefore = cloud.received.length;
    agent.child.kill('SIGKILL');
    await agent.stop();
    const will = await cloud.waitFor(
      (m) => m.topic === `${base}/status` && cloud.received.indexOf(m) >= statusBefore,
      15_000,
      'the last will',
    );
    expect(JSON.parse(will.payload)).toEqual({ state: 'offline' });
    await start();
    present(4);

    const local = await auditRecords();
    const lastSeq = local.at(-1)?.seq ?? 0;
    expect(lastSeq).toBeGreaterThan(30);
    const seen = () => {
      const seqs = new Map<number, number>();
      for (const m of cloud.received) {
        if (m.topic !== `${base}/events`) continue;
        const seq = (JSON.parse(m.payload) as { seq: number }).seq;
        seqs.set(seq, (seqs.get(seq) ?? 0) + 1);
      }
      return seqs;
    };
    // On a timeout the assertion below shows the gaps.
    await waitFor(
      () => [...Array(lastSeq).keys()].every((i) => seen().has(i + 1)),
      'every record delivered',
      { timeoutMs: 20_000, intervalMs: 100 },
    ).catch(() => {});
    const seqs = seen();
    const gaps = [...Array(lastSeq).keys()].map((i) => i + 1).filter((s) => !seqs.has(s));
    expect(gaps).toEqual([]);
    // What the cloud got is the audit log itself: same records, same hashes.
    const byCloud = new Map<number, { hash: string }>();
    for (const m of cloud.received)
      if (m.topic === `${base}/events`) {
        const r = JSON.parse(m.payload) as { seq: number; hash: string };
        byCloud.set(r.seq, r);
      }
    for (const r of local) expect(byCloud.get(r.seq)?.hash).toBe((r as unknown as { hash: string }).hash);
    expect(local.some((r) => r.type === 'outbox.dropped')).toBe(false);
  }, 90_000); // some twenty CLI runs and three broker starts: slow on a loaded machine
});
