import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { controlRequest } from '../../src/cli/control-client.js';
import type { CloudLinkStatus } from '../../src/cloud/cloud-link.js';
import { readAuditLog } from '../../src/store/audit-log.js';
import { type AgentProcess, CLI, runCli, startAgentProcess } from '../helpers/agent-process.js';
import {
  agentCloudEnv,
  connectTestCloud,
  type NobleSigner,
  nobleSigner,
  type TestCloud,
} from '../helpers/cloud-side.js';
import {
  type Broker,
  type ClientCert,
  makeTestPki,
  startBroker,
  type TestPki,
} from '../helpers/mosquitto.js';
import { type SeededRandom, seededRandom } from '../helpers/seeded-random.js';
import { waitForValue } from '../helpers/wait.js';

const b64url = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64url');

/**
 * Issue 12, findings 1-4, against the real agent (dist/) and a real Mosquitto: floods on the
 * command and keyring topics are bounded and counted while presentations are granted, oversized
 * messages are refused and counted, refusals are audited as summaries, commands are acked only
 * once carried out (kill -9 mid-stream loses none and runs none twice), and a retained unlock
 * never acts.
 */

let root: string;
let pki: TestPki;
let broker: Broker;
let agentCert: ClientCert;
let cloudCert: ClientCert;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'va-cloud-flood-'));
  pki = makeTestPki(join(root, 'pki'));
  agentCert = pki.client('vehicle');
  cloudCert = pki.client('cloud');
  broker = await startBroker(pki, join(root, 'broker'));
});

afterAll(async () => {
  await broker?.stop();
  rmSync(root, { recursive: true, force: true });
});

interface Rig {
  readonly dir: string;
  readonly agent: AgentProcess;
  readonly cloud: TestCloud;
  readonly base: string;
  readonly vid: string;
  readonly owner: NobleSigner;
}

const rigs: { agent?: AgentProcess; cloud?: TestCloud }[] = [];
let rigSeq = 0;

afterEach(async () => {
  for (const r of rigs.splice(0)) {
    await r.cloud?.close();
    await r.agent?.stop('SIGKILL');
  }
});

async function startRig(extra: Record<string, string> = {}, dir?: string): Promise<Rig> {
  rigSeq += 1;
  const stateDir = dir ?? join(root, `state-${rigSeq}`);
  const entry: { agent?: AgentProcess; cloud?: TestCloud } = {};
  rigs.push(entry);
  const agent = await startAgentProcess(
    ['--state-dir', stateDir],
    agentCloudEnv(broker.url, pki, agentCert, {
      VEHICLE_AGENT_CLOUD__CLIENT_ID: `flood-test-${rigSeq}-${process.pid}`,
      ...extra,
    }),
  );
  entry.agent = agent;
  await agent.waitForLog((r) => r.msg === 'cloud link up' || r.msg === 'cloud link up again');
  const vid = (JSON.parse(readFileSync(join(stateDir, 'vehicle.json'), 'utf8')) as { vehicleId: string })
    .vehicleId;
  const cloud = await connectTestCloud(broker, pki, cloudCert);
  entry.cloud = cloud;
  const base = `vehicle-agent/${vid}`;
  await cloud.subscribe(`${base}/command/result`);
  return { dir: stateDir, agent, cloud, base, vid, owner: nobleSigner(join(stateDir, 'demo', 'owner.pem')) };
}

let counter = Date.now() * 1000;
let jtiSeq = 0;
function unlockPayload(vid: string, over: Record<string, unknown> = {}) {
  const now = Math.floor(Date.now() / 1000);
  jtiSeq += 1;
  counter += 1;
  return {
    vid,
    cmd: 'unlock',
    args: {},
    jti: `flood-${process.pid}-${jtiSeq}`,
    iat: now - 1,
    exp: now + 120,
    ctr: counter,
    ...over,
  };
}

/** A command an attacker without the key makes: real kid, vehicle, lifetime and counter; random signature. */
function forged(rig: Rig, random: SeededRandom): string {
  const [h, p] = rig.owner.sign(unlockPayload(rig.vid)).split('.');
  return `${h}.${p}.${b64url(random.bytes(64))}`;
}

/** Publishes `count` messages at QoS 1 with at most `window` unacknowledged. */
async function publishMany(
  client: MqttClient,
  topic: string,
  count: number,
  next: () => string | Buffer,
  window = 200,
): Promise<void> {
  let inFlight = 0;
  let wake: (() => void) | undefined;
  for (let i = 0; i < count; i++) {
    while (inFlight >= window) await new Promise<void>((r) => (wake = r));
    inFlight += 1;
    client.publish(topic, next(), { qos: 1 }, () => {
      inFlight -= 1;
      wake?.();
    });
  }
  while (inFlight > 0) await new Promise<void>((r) => (wake = r));
}

/** `vehicle-agent sim present driver` without blocking this process (the flood keeps going). */
function presentDriver(dir: string): Promise<{ granted: boolean; code?: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'sim', 'present', 'driver', '--state-dir', dir, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => {
      out += c;
    });
    child.once('error', reject);
    child.once('close', () => {
      try {
        resolve(JSON.parse(out) as { granted: boolean; code?: string });
      } catch {
        reject(new Error(`sim present printed no JSON: ${out}`));
      }
    });
  });
}

const cloudStatus = (dir: string) =>
  controlRequest(join(dir, 'control.sock'), 'cloud.status', {}) as Promise<CloudLinkStatus>;

async function auditRecords(dir: string): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  for await (const r of readAuditLog(join(dir, 'audit'), 1))
    out.push(r as unknown as Record<string, unknown>);
  return out;
}

describe('MQTT floods (issue 12)', () => {
  it('grants every presentation during a burst of forged commands and keyring junk, and counts the drops', async () => {
    const rig = await startRig();
    const random = seededRandom();
    const flood = Promise.all([
      publishMany(rig.cloud.client, `${rig.base}/command`, 3000, () => forged(rig, random)),
      publishMany(rig.cloud.client, `${rig.base}/keyring`, 3000, () =>
        jtiSeq++ % 2 === 0
          ? Buffer.from(random.bytes(120))
          : JSON.stringify({ set: `junk.${b64url(random.bytes(24))}.x`, ops: [] }),
      ),
    ]);
    const decisions: { granted: boolean; code?: string }[] = [];
    let flooding = true;
    void flood.finally(() => {
      flooding = false;
    });
    // Presentations while the flood is on, and at least ten of them.
    while (flooding || decisions.length < 10) decisions.push(await presentDriver(rig.dir));
    await flood;
    expect(decisions.filter((d) => !d.granted)).toEqual([]);

    // A genuine command after the flood is carried out (after the backlog: one message at a time,
    // in order), and its audit record names its jti.
    const p = unlockPayload(rig.vid);
    await rig.cloud.publish(`${rig.base}/command`, rig.owner.sign(p));
    const result = await rig.cloud.waitFor(
      (m) => m.topic.endsWith('/command/result') && (JSON.parse(m.payload) as { jti: unknown }).jti === p.jti,
      30_000,
      'the genuine command result',
    );
    expect(JSON.parse(result.payload)).toMatchObject({ status: 'ok' });
    // Budgets held: far fewer signature checks than forged commands, every forgery refused, and
    // every message beyond the budget dropped and counted.
    const s = await cloudStatus(rig.dir);
    expect(s.intake.topics.command.overBudget).toBeGreaterThan(0);
    expect(s.intake.topics.command.accepted).toBeLessThan(1000);
    expect(s.intake.refused['command:bad_signature']).toBe(s.intake.topics.command.accepted - 1);
    expect(s.intake.refused['command:cloud_budget_exceeded']).toBe(s.intake.topics.command.overBudget);
    expect(s.intake.topics.command.accepted + s.intake.topics.command.overBudget).toBe(3001);
    expect(s.intake.topics.keyring.overBudget).toBeGreaterThan(0);
    const records = await waitForValue(async () => {
      const all = await auditRecords(rig.dir);
      return all.some((r) => r.type === 'command' && r.jti === p.jti) ? all : undefined;
    }, 'the unlock audited');
    expect(
      records.filter((r) => r.type === 'command' && r.source === 'cloud' && r.jti === p.jti),
    ).toHaveLength(1);
  }, 180_000);

  it('refuses and counts an oversized message on MQTT 3.1.1, where the broker cannot be told the limit', async () => {
    const rig = await startRig({
      VEHICLE_AGENT_CLOUD__PROTOCOL: '3.1.1',
      VEHICLE_AGENT_CLOUD__INTAKE__MAX_KEYRING_SET_BYTES: String(256 * 1024),
    });
    await rig.cloud.publish(`${rig.base}/keyring`, 'x'.repeat(300 * 1024));
    await rig.cloud.publish(`${rig.base}/command`, 'A'.repeat(100 * 1024));
    const s = await waitForValue(async () => {
      const st = await cloudStatus(rig.dir);
      return st.intake.topics.command.tooLarge >= 1 && st.intake.topics.keyring.tooLarge >= 1
        ? st
        : undefined;
    }, 'the refusals counted');
    expect(s.intake.refused['keyring:message_too_large']).toBe(1);
    expect(s.intake.refused['command:message_too_large']).toBe(1);
    // `vehicle-agent status` shows the same counts.
    const shown = runCli(['status', '--state-dir', rig.dir]);
    expect(shown.stdout).toContain('intake   command 0 accepted, 0 over budget, 1 too large;');
    expect(shown.stdout).toContain('keyring 0 accepted, 0 over budget, 1 too large;');
    const records = await waitForValue(async () => {
      const all = await auditRecords(rig.dir);
      return all.filter((r) => r.code === 'message_too_large').length >= 2 ? all : undefined;
    }, 'the refusals audited');
    expect(
      records
        .filter((r) => r.code === 'message_too_large')
        .map((r) => r.type)
        .sort(),
    ).toEqual(['command.rejected', 'keyring.set.rejected']);
  }, 60_000);

  it('asks an MQTT 5 broker not to send oversized messages at all, and goes on with the next one', async () => {
    const rig = await startRig({ VEHICLE_AGENT_CLOUD__INTAKE__MAX_KEYRING_SET_BYTES: String(256 * 1024) });
    // Two MiB on the keyring topic: the broker drops it for this client (Maximum Packet Size).
    await rig.cloud.publish(`${rig.base}/keyring`, Buffer.alloc(2 * 1024 * 1024, 0x41).toString());
    const p = unlockPayload(rig.vid);
    await rig.cloud.publish(`${rig.base}/command`, rig.owner.sign(p));
    await rig.cloud.waitFor(
      (m) => m.topic.endsWith('/command/result') && (JSON.parse(m.payload) as { jti: unknown }).jti === p.jti,
      15_000,
      'the command after the big message',
    );
    const s = await cloudStatus(rig.dir);
    expect(s.intake.topics.keyring).toMatchObject({ accepted: 0, tooLarge: 0, overBudget: 0 });
    expect(s.intake.topics.command.accepted).toBe(1);
  }, 60_000);

  it('audits refusals as one record and one summary per code and interval, not one per message', async () => {
    const rig = await startRig({
      VEHICLE_AGENT_CLOUD__INTAKE__SUMMARY_INTERVAL_MS: '1000',
      VEHICLE_AGENT_CLOUD__INTAKE__KEYRING_SETS_PER_S: '1000',
    });
    const random = seededRandom();
    await publishMany(rig.cloud.client, `${rig.base}/keyring`, 300, () => Buffer.from(random.bytes(100)), 50);
    const s = await waitForValue(async () => {
      const st = await cloudStatus(rig.dir);
      const n = Object.entries(st.intake.refused)
        .filter(([k]) => k.startsWith('keyring:'))
        .reduce((a, [, v]) => a + v, 0);
      return n >= 300 ? st : undefined;
    }, '300 junk sets refused');
    // The last interval's summary is written when it ends.
    const records = await waitForValue(async () => {
      const all = await auditRecords(rig.dir);
      const rejected = all.filter((r) => r.type === 'keyring.set.rejected').length;
      const summarised = all
        .filter((r) => r.type === 'cloud.summary' && r.topic === 'keyring')
        .reduce((a, r) => a + (r.count as number), 0);
      return rejected + summarised >= 300 ? all : undefined;
    }, 'the summaries');
    const rejected = records.filter((r) => r.type === 'keyring.set.rejected');
    const summaries = records.filter((r) => r.type === 'cloud.summary' && r.topic === 'keyring');
    // At most one record in full and one summary per code and second of flood, never one each.
    expect(rejected.length + summaries.length).toBeLessThan(40);
    expect(summaries.length).toBeGreaterThan(0);
    const totalRefused = Object.entries(s.intake.refused)
      .filter(([k]) => k.startsWith('keyring:'))
      .reduce((a, [, v]) => a + v, 0);
    expect(rejected.length + summaries.reduce((a, r) => a + (r.count as number), 0)).toBe(totalRefused);
  }, 60_000);

  it('acks a command only once carried out: kill -9 mid-stream, every command runs at most once and gets a result', async () => {
    const env = {
      VEHICLE_AGENT_CLOUD__INTAKE__COMMANDS_PER_S: '1000',
      VEHICLE_AGENT_CLOUD__CLIENT_ID: `kill-${process.pid}`,
    };
    const first = await startRig(env);
    const jtis: string[] = [];
    const messages: string[] = [];
    for (let i = 0; i < 40; i++) {
      const p = unlockPayload(first.vid);
      jtis.push(p.jti);
      messages.push(first.owner.sign(p));
    }
    const results = () =>
      first.cloud.received
        .filter((m) => m.topic.endsWith('/command/result'))
        .map((m) => JSON.parse(m.payload) as { jti: string; status: string; code: string });
    let i = 0;
    const sending = publishMany(
      first.cloud.client,
      `${first.base}/command`,
      messages.length,
      () => messages[i++] ?? '',
      40,
    );
    await waitForValue(async () => (results().length >= 3 ? true : undefined), 'a few results');
    // Killed by its PID mid-stream.
    expect(process.kill(first.agent.child.pid ?? 0, 'SIGKILL')).toBe(true);
    await first.agent.stop('SIGKILL');
    await sending;
    // The same vehicle comes back on the same session: the broker redelivers what was not acked.
    const again = await startAgentProcess(
      ['--state-dir', first.dir],
      agentCloudEnv(broker.url, pki, agentCert, env),
    );
    rigs.push({ agent: again });
    const got = await waitForValue(
      async () => {
        const seen = new Set(results().map((r) => r.jti));
        return jtis.every((j) => seen.has(j)) ? results() : undefined;
      },
      'a result for every command',
      60_000,
    );
    const records = await auditRecords(first.dir);
    for (const jti of jtis) {
      const runs = records.filter((r) => r.type === 'command' && r.source === 'cloud' && r.jti === jti);
      expect(runs.length, `runs of ${jti}`).toBeLessThanOrEqual(1);
      const answers = got.filter((r) => r.jti === jti);
      // One outcome per command: carried out (ok, possibly answered twice) or refused, never both
      // carried out and then refused as a new command.
      expect(new Set(answers.map((a) => a.code)).size, `answers of ${jti}`).toBe(1);
    }
    expect(got.filter((r) => r.status === 'ok').length).toBeGreaterThan(0);
  }, 120_000);

  it('never acts on a retained unlock, signed or Home Assistant, live or on reconnect', async () => {
    const env = {
      VEHICLE_AGENT_CLOUD__HOME_ASSISTANT__ENABLED: 'true',
      VEHICLE_AGENT_CLOUD__HOME_ASSISTANT__ALLOW_UNSIGNED_COMMANDS: 'true',
      VEHICLE_AGENT_CLOUD__CLIENT_ID: `retain-${process.pid}`,
    };
    const rig = await startRig(env);
    const p = unlockPayload(rig.vid);
    // Live: published retained while the vehicle is subscribed.
    await rig.cloud.publish(`${rig.base}/ha/command`, 'UNLOCK', { retain: true });
    await rig.cloud.publish(`${rig.base}/command`, rig.owner.sign(p), { retain: true });
    await waitForValue(async () => {
      const st = await cloudStatus(rig.dir);
      return (st.intake.refused['home-assistant:retained_command'] ?? 0) >= 1 &&
        (st.intake.refused['command:retained_command'] ?? 0) >= 1
        ? st
        : undefined;
    }, 'both refused live');
    // On reconnect the broker sends both again as retained messages.
    await rig.agent.stop('SIGTERM');
    const again = await startAgentProcess(
      ['--state-dir', rig.dir],
      agentCloudEnv(broker.url, pki, agentCert, env),
    );
    rigs.push({ agent: again });
    await waitForValue(async () => {
      const st = await cloudStatus(rig.dir).catch(() => undefined);
      return st &&
        (st.intake.refused['home-assistant:retained_command'] ?? 0) >= 1 &&
        (st.intake.refused['command:retained_command'] ?? 0) >= 1
        ? st
        : undefined;
    }, 'both refused on reconnect');
    // A plain (not retained) HA command still works: the refusal is the retain flag's.
    await rig.cloud.publish(`${rig.base}/ha/command`, 'LOCK');
    const records = await waitForValue(async () => {
      const all = await auditRecords(rig.dir);
      return all.some((r) => r.type === 'command' && r.source === 'home-assistant') ? all : undefined;
    }, 'the HA lock audited');
    const acts = records.filter(
      (r) => r.type === 'command' && (r.source === 'cloud' || r.source === 'home-assistant'),
    );
    expect(acts.map((r) => r.action)).toEqual(['lock']);
    await rig.cloud.publish(`${rig.base}/ha/command`, '', { retain: true });
    await rig.cloud.publish(`${rig.base}/command`, '', { retain: true });
  }, 90_000);

  it('takes no unsigned Home Assistant command over MQTT 3.1.1, where a retained one looks live', async () => {
    const rig = await startRig({
      VEHICLE_AGENT_CLOUD__PROTOCOL: '3.1.1',
      VEHICLE_AGENT_CLOUD__HOME_ASSISTANT__ENABLED: 'true',
      VEHICLE_AGENT_CLOUD__HOME_ASSISTANT__ALLOW_UNSIGNED_COMMANDS: 'true',
    });
    await rig.agent.waitForLog((r) => String(r.msg).includes('unsigned commands need MQTT 5'));
    await rig.cloud.publish(`${rig.base}/ha/command`, 'UNLOCK', { retain: true });
    // A signed command after it is answered, so the UNLOCK had its chance to arrive first.
    const p = unlockPayload(rig.vid, { cmd: 'lock' });
    await rig.cloud.publish(`${rig.base}/command`, rig.owner.sign(p));
    await rig.cloud.waitFor(
      (m) => m.topic.endsWith('/command/result') && (JSON.parse(m.payload) as { jti: unknown }).jti === p.jti,
      15_000,
      'the signed command result',
    );
    const records = await waitForValue(async () => {
      const all = await auditRecords(rig.dir);
      return all.some((r) => r.type === 'command' && r.jti === p.jti) ? all : undefined;
    }, 'the signed lock audited');
    expect(records.filter((r) => r.type === 'command' && r.source === 'home-assistant')).toEqual([]);
    await rig.cloud.publish(`${rig.base}/ha/command`, '', { retain: true });
  }, 60_000);
});
