import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { digestOfOps, signGrant, signRevoke } from '../../src/access/keyring.js';
import { controlRequest } from '../../src/cli/control-client.js';
import type { CloudLinkStatus } from '../../src/cloud/cloud-link.js';
import { signKeyringMessages } from '../../src/cloud/keyring-set.js';
import { opHash, partOfHash, VehicleSetReader } from '../../src/cloud/vehicle-set.js';
import { generateKeyPair, keyCredentialId, publicJwkOf } from '../../src/crypto/keys.js';
import { readSignerKey } from '../../src/store/key-files.js';
import type { AgentProcess } from '../helpers/agent-process.js';
import { runCliJson } from '../helpers/agent-process.js';
import { useAgentRig } from '../helpers/agent-rig.js';
import { runCliAsync } from '../helpers/cli-async.js';
import type { TestCloud } from '../helpers/cloud-side.js';
import { waitForValue } from '../helpers/wait.js';

/**
 * Keyring sync at a size no single MQTT message carries (docs/mqtt.md "Chunked sets"): the real
 * agent from dist/ and a real Mosquitto, tens of thousands of ops pushed by the CLI in parts as
 * fast as the broker takes them, the revoke in the last part effective, and the vehicle's own set
 * coming back in stable parts whose manifest adds up to the digest in its state; a grant at the
 * vehicle then republishes one part, a restart none.
 */
const OPS = 20_000;

/**
 * The vehicle's set as a cloud reads what it received from index `from` on: the newest manifest
 * and the newest version of each part (any older part versions are only ignored, never merged).
 */
function readVehicleSet(
  received: readonly { topic: string; payload: string }[],
  base: string,
  vid: string,
  from = 0,
): { status: ReturnType<VehicleSetReader['status']>; ops: string[] } {
  const reader = new VehicleSetReader({ vid });
  const latest = new Map<string, string>();
  for (const m of received.slice(from))
    if (m.topic.startsWith(`${base}/keyring/vehicle/`)) latest.set(m.topic, m.payload);
  const ops: string[] = [];
  for (const [topic, payload] of latest) {
    if (payload === '') continue;
    if (topic === `${base}/keyring/vehicle/manifest`) reader.noteManifest(payload);
    else
      ops.push(...reader.notePart(payload, Number(topic.slice(`${base}/keyring/vehicle/part/`.length))).ops);
  }
  return { status: reader.status(), ops };
}

/** Non-empty messages on the vehicle's part topics from index `from` on. */
const partsSince = (received: readonly { topic: string; payload: string }[], base: string, from: number) =>
  received
    .slice(from)
    .filter((m) => m.topic.startsWith(`${base}/keyring/vehicle/part/`) && m.payload !== '')
    .map((m) => m.topic);

describe('keyring sync in parts', () => {
  const rig = useAgentRig('va-keyring-parts-');
  let agent: AgentProcess;
  let cloud: TestCloud;
  let vid: string;
  let base: string;
  let control: string;
  const sd = () => rig.sd();
  let brokerArgs: string[];
  const pushed: string[] = [];
  let firstPhonePem: string;
  let revokedPhonePem: string;

  beforeAll(async () => {
    const side = await rig.startCloud();
    cloud = side.cloud;
    brokerArgs = [
      '--broker',
      side.broker.url,
      '--ca',
      side.pki.ca,
      '--cert',
      side.cloudCert.cert,
      '--client-key',
      side.cloudCert.key,
    ];
    agent = await rig.startAgent('state', rig.cloudEnv(), { waitForLog: ['cloud link up'] });
    vid = rig.vehicleId();
    base = `vehicle-agent/${vid}`;
    control = join(rig.stateDir(), 'control.sock');
    await side.cloud.subscribe(`${base}/keyring/vehicle/part/+`);
    await side.cloud.subscribe(`${base}/keyring/vehicle/manifest`);
    await side.cloud.subscribe(`${base}/state`);

    // Signed in-process with the demo owner key: a grant per phone, and a revoke of one of them.
    const owner = readSignerKey(join(rig.stateDir(), 'demo', 'owner.pem'));
    const iat = Math.floor(Date.now() / 1000);
    let revokedId = '';
    for (let i = 0; i < OPS; i++) {
      const pair = generateKeyPair('P-256');
      const publicKey = publicJwkOf(pair.publicKey);
      const id = keyCredentialId('phone', publicKey);
      pushed.push(
        signGrant(
          { id, kind: 'phone', role: 'driver', publicKey, options: {} },
          vid,
          owner.key,
          owner.id,
          iat,
        ),
      );
      const pem = () => pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
      if (i === 0) {
        firstPhonePem = join(rig.root, 'first-phone.pem');
        writeFileSync(firstPhonePem, pem(), { mode: 0o600 });
      }
      if (i === OPS - 1) {
        revokedId = id;
        revokedPhonePem = join(rig.root, 'revoked-phone.pem');
        writeFileSync(revokedPhonePem, pem(), { mode: 0o600 });
      }
    }
    // The revoke comes first in the file: the CLI orders revokes last, into the last part.
    pushed.unshift(signRevoke(revokedId, vid, owner.key, owner.id, iat, 'lost'));
    writeFileSync(join(rig.root, 'bulk.ops'), `${pushed.join('\n')}\n`);
  }, 120_000);

  const present = (pem: string) =>
    runCliJson<{ granted: boolean; code?: string }>(['sim', 'present', '--key', pem, ...sd()]).value;

  it("takes a cloud set of 20 000 ops in parts, the last part's revoke effective", async () => {
    const push = await runCliAsync([
      'cloud',
      'keyring',
      'push',
      '--key',
      join(rig.stateDir(), 'demo', 'owner.pem'),
      '--vehicle',
      vid,
      '--ops',
      join(rig.root, 'bulk.ops'),
      // Parts of 1 MiB (the vehicle's default size limit), all at once.
      '--part-bytes',
      '1048576',
      '--parts-per-s',
      '0',
      '--json',
      ...brokerArgs,
    ]);
    expect(push.code, push.stderr).toBe(0);
    const summary = JSON.parse(push.stdout) as { operations: number; parts: number; topic: string };
    expect(summary.topic).toBe(`${base}/keyring/part`);
    expect(summary.parts).toBeGreaterThan(8);
    expect(summary.operations).toBeGreaterThanOrEqual(OPS + 1);

    const status = await waitForValue(
      async () => {
        const st = (await controlRequest(control, 'cloud.status', {})) as CloudLinkStatus;
        return st.keyringSync.cloud?.complete === true && st.keyringSync.cloud.retrying === 0
          ? st
          : undefined;
      },
      'every part of the cloud set merged',
      {
        timeoutMs: 90_000,
        intervalMs: 500,
        detail: () => agent.logs.filter((r) => String(r.msg).includes('keyring set')).slice(-3),
      },
    );
    expect(status.keyringSync.cloud).toMatchObject({ parts: summary.parts, received: summary.parts });
    // Every part within the budget or taken again: none refused for its content.
    expect(Object.keys(status.intake.refused).filter((k) => !k.endsWith('cloud_budget_exceeded'))).toEqual(
      [],
    );
    expect(present(firstPhonePem)).toMatchObject({ granted: true });
    expect(present(revokedPhonePem)).toMatchObject({ granted: false, code: 'revoked' });
  }, 150_000);

  it('publishes its own set in parts that add up to the digest in its state, and the CLI reads them back', async () => {
    const k = (await controlRequest(control, 'status', {})) as {
      keyring: { digest: string; operations: number };
    };
    // The newest manifest the vehicle published and its parts, read as the cloud receives them.
    const snapshot = await waitForValue(
      () => {
        const read = readVehicleSet(cloud.received, base, vid);
        return read.status?.complete === true && read.status.setDigest === k.keyring.digest
          ? read
          : undefined;
      },
      'the vehicle set in parts with the digest of its keyring',
      { timeoutMs: 60_000, intervalMs: 250 },
    );
    const ops = snapshot.ops;
    expect(ops.length).toBe(k.keyring.operations);
    expect(snapshot.status?.setCount).toBe(ops.length);
    expect(digestOfOps(ops.map((jws) => ({ id: '', jws })))).toBe(k.keyring.digest);
    const held = new Set(ops);
    expect(pushed.every((op) => held.has(op))).toBe(true);

    // The CLI reads the vehicle's parts back: a push of one more op counts every op the vehicle holds.
    const pair = generateKeyPair('P-256');
    const publicKey = publicJwkOf(pair.publicKey);
    const owner = readSignerKey(join(rig.stateDir(), 'demo', 'owner.pem'));
    const extra = signGrant(
      { id: keyCredentialId('phone', publicKey), kind: 'phone', role: 'driver', publicKey, options: {} },
      vid,
      owner.key,
      owner.id,
      Math.floor(Date.now() / 1000),
    );
    writeFileSync(join(rig.root, 'extra.ops'), `${extra}\n`);
    const again = await runCliAsync([
      'cloud',
      'keyring',
      'push',
      '--key',
      join(rig.stateDir(), 'demo', 'owner.pem'),
      '--vehicle',
      vid,
      '--ops',
      join(rig.root, 'extra.ops'),
      '--parts-per-s',
      '0',
      '--json',
      ...brokerArgs,
    ]);
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ operations: k.keyring.operations + 1, new: 1 });
  }, 120_000);

  it('republishes only the part a grant at the vehicle touches, and no part on a restart with no change', async () => {
    const digestNow = async () =>
      ((await controlRequest(control, 'status', {})) as { keyring: { digest: string } }).keyring.digest;
    // Settled: every cloud part merged, and the manifest on the broker names what the vehicle holds.
    const settled = async (what: string) =>
      await waitForValue(
        async () => {
          const st = (await controlRequest(control, 'cloud.status', {})) as CloudLinkStatus;
          if (st.keyringSync.cloud?.complete !== true || st.keyringSync.cloud.retrying !== 0)
            return undefined;
          const read = readVehicleSet(cloud.received, base, vid);
          return read.status?.complete === true && read.status.setDigest === (await digestNow())
            ? read
            : undefined;
        },
        what,
        { timeoutMs: 90_000, intervalMs: 250 },
      );
    await settled('the vehicle set settled');
    const before = (await controlRequest(control, 'cloud.status', {})) as CloudLinkStatus;
    const parts = before.keyringSync.vehicle?.parts ?? 0;
    expect(parts).toBeGreaterThanOrEqual(64);

    // One grant at the vehicle (the control socket, as `vehicle-agent keys grant` on the Pi).
    const owner = readSignerKey(join(rig.stateDir(), 'demo', 'owner.pem'));
    const publicKey = publicJwkOf(generateKeyPair('P-256').publicKey);
    const grant = signGrant(
      { id: keyCredentialId('phone', publicKey), kind: 'phone', role: 'driver', publicKey, options: {} },
      vid,
      owner.key,
      owner.id,
      Math.floor(Date.now() / 1000),
    );
    const mark = cloud.received.length;
    await controlRequest(control, 'keys.add', { ops: [grant] });
    const granted = await digestNow();
    await waitForValue(
      () => {
        const read = readVehicleSet(cloud.received, base, vid);
        return read.status?.complete === true && read.status.setDigest === granted ? read : undefined;
      },
      'the manifest with the grant',
      // A change waits for a pause after the last round (at most 30 s after a full publish).
      {
        timeoutMs: 60_000,
        intervalMs: 250,
        detail: () => ({
          granted,
          read: readVehicleSet(cloud.received, base, vid).status,
          logs: agent.logs.filter((r) => String(r.msg).includes('vehicle keyring set')).slice(-6),
        }),
      },
    );
    expect(partsSince(cloud.received, base, mark)).toEqual([
      `${base}/keyring/vehicle/part/${partOfHash(opHash(grant), parts)}`,
    ]);
    const after = (await controlRequest(control, 'cloud.status', {})) as CloudLinkStatus;
    const sent = (after.keyringSync.vehicle?.bytes ?? 0) - (before.keyringSync.vehicle?.bytes ?? 0);
    // One part (about 150 KB at 20 000 ops in 128 parts) and a manifest, not the 14 MB set.
    expect(sent).toBeLessThan(512 * 1024);

    // A restart with no change: on connect the manifest alone, no part.
    await agent.stop();
    const restartMark = cloud.received.length;
    agent = await rig.startAgent('state', rig.cloudEnv(), { waitForLog: ['cloud link up'] });
    const manifestAt = await waitForValue(
      () => {
        const i = cloud.received
          .slice(restartMark)
          .findIndex((m) => m.topic === `${base}/keyring/vehicle/manifest` && m.payload !== '' && !m.retain);
        return i < 0 ? undefined : restartMark + i;
      },
      'the manifest after the restart',
      { timeoutMs: 60_000, intervalMs: 250 },
    );
    expect(partsSince(cloud.received.slice(0, manifestAt + 1), base, restartMark)).toEqual([]);
    expect(readVehicleSet(cloud.received.slice(0, manifestAt + 1), base, vid).status).toMatchObject({
      complete: true,
      setDigest: granted,
    });
    // And what it holds after the restart is what its manifest then names.
    await settled('the vehicle set settled after the restart');
  }, 180_000);
});

/**
 * Parts dropped over the keyring budget are not lost: the vehicle notices the snapshot stalled
 * and asks again (subscribing to the part topics again makes the broker resend the retained
 * parts; those already merged are skipped by their hash).
 */
describe('parts dropped over the keyring budget', () => {
  const rig = useAgentRig('va-keyring-resync-');

  it('are asked for again until every part is in', async () => {
    const side = await rig.startCloud();
    await rig.startAgent('state', rig.cloudEnv({ VEHICLE_AGENT_CLOUD__INTAKE__KEYRING_SETS_PER_S: '2' }), {
      waitForLog: ['cloud link up'],
    });
    const vid = rig.vehicleId();
    const base = `vehicle-agent/${vid}`;
    const owner = readSignerKey(join(rig.stateDir(), 'demo', 'owner.pem'));
    const iat = Math.floor(Date.now() / 1000);
    const ops = Array.from({ length: 600 }, () => {
      const publicKey = publicJwkOf(generateKeyPair('P-256').publicKey);
      return signGrant(
        { id: keyCredentialId('phone', publicKey), kind: 'phone', role: 'driver', publicKey, options: {} },
        vid,
        owner.key,
        owner.id,
        iat,
      );
    });
    const signed = signKeyringMessages(vid, ops, owner.key, owner.id, iat, 70_000);
    if (signed.kind !== 'chunks') throw new Error('expected parts');
    expect(signed.parts.length).toBeGreaterThan(4);
    // All at once: with 2 parts a second, most of them are dropped on the first pass.
    await Promise.all(
      signed.parts.map((p, n) => side.cloud.publish(`${base}/keyring/part/${n}`, p, { retain: true })),
    );
    const control = join(rig.stateDir(), 'control.sock');
    const status = await waitForValue(
      async () => {
        const st = (await controlRequest(control, 'cloud.status', {})) as CloudLinkStatus;
        return st.keyringSync.cloud?.complete === true ? st : undefined;
      },
      'every part merged after the drops',
      { timeoutMs: 90_000, intervalMs: 500 },
    );
    expect(status.intake.topics.keyring.overBudget).toBeGreaterThan(0);
    expect(status.keyringSync.cloud).toMatchObject({ parts: signed.parts.length, retrying: 0 });
    expect(status.keyringSync.cloud?.resyncs).toBeGreaterThan(0);
    const k = (await controlRequest(control, 'status', {})) as { keyring: { operations: number } };
    expect(k.keyring.operations).toBeGreaterThanOrEqual(600);
  }, 150_000);
});
