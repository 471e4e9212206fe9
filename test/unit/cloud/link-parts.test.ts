import { describe, expect, it } from 'vitest';
import { backoffDelay, roundBackoffDelay } from '../../../src/cloud/backoff.js';
import { subjectCommonName } from '../../../src/cloud/broker-url.js';
import { haDiscoveryConfig, parseHaCommand } from '../../../src/cloud/home-assistant.js';
import { parseBrokerUrl } from '../../../src/cloud/mqtt-connection.js';
import { stateDocument, stateFingerprint } from '../../../src/cloud/state.js';
import { haDiscoveryTopic, validateTopicPrefix, vehicleTopics } from '../../../src/cloud/topics.js';
import { AgentError } from '../../../src/core/errors.js';

describe('reconnect backoff', () => {
  const policy = { minMs: 1000, maxMs: 60_000 };
  it('doubles from the minimum to the maximum with jitter between half and all of it', () => {
    expect([0, 1, 2, 3].map((a) => backoffDelay(a, policy, () => 0))).toEqual([500, 1000, 2000, 4000]);
    expect([0, 1, 2, 3].map((a) => backoffDelay(a, policy, () => 0.999999))).toEqual([
      1000, 2000, 4000, 8000,
    ]);
    expect(backoffDelay(40, policy, () => 0.5)).toBe(45_000);
    expect(backoffDelay(1000, policy, () => 1)).toBe(60_000);
  });

  it.each([
    // brokers, delays of retries 0..5 at the top of their jitter
    [1, [1000, 2000, 4000, 8000, 16_000, 32_000]],
    [2, [1000, 1000, 2000, 2000, 4000, 4000]],
    [3, [1000, 1000, 1000, 2000, 2000, 2000]],
  ])('with %i broker URL(s), grows once per round over them', (brokers, delays) => {
    expect([0, 1, 2, 3, 4, 5].map((a) => roundBackoffDelay(a, brokers, policy, () => 0.999999))).toEqual(
      delays,
    );
  });
});

describe('certificate CN', () => {
  it.each([
    ['CN=vehicle-agent-VA-1', 'vehicle-agent-VA-1'],
    ['C=DE\nO=Fleet\nCN=VA-1', 'VA-1'],
    ['CN="a, b"', 'a, b'],
    ['O=Fleet', undefined],
    ['', undefined],
  ])('reads the CN of %j', (subject, cn) => {
    expect(subjectCommonName(subject)).toBe(cn);
  });
});

describe('topics', () => {
  it('puts everything under <prefix>/<vehicleId>', () => {
    const t = vehicleTopics('fleet/eu', 'VA-1');
    expect(t).toMatchObject({
      status: 'fleet/eu/VA-1/status',
      state: 'fleet/eu/VA-1/state',
      command: 'fleet/eu/VA-1/command',
      commandResult: 'fleet/eu/VA-1/command/result',
      keyring: 'fleet/eu/VA-1/keyring',
      keyringVehicle: 'fleet/eu/VA-1/keyring/vehicle',
      events: 'fleet/eu/VA-1/events',
    });
    expect(haDiscoveryTopic('homeassistant', 'VA.1')).toBe(
      'homeassistant/lock/vehicle_agent_VA_1/lock/config',
    );
  });

  it.each(['a/#', 'a/+/b', '/a', 'a/', '', 'a//b'])('refuses the prefix %j', (prefix) => {
    expect(() => validateTopicPrefix(prefix)).toThrow(AgentError);
  });
});

describe('broker URLs', () => {
  it('defaults ports and treats a client certificate as TLS', () => {
    expect(parseBrokerUrl('mqtts://broker.example', {})).toEqual({
      protocol: 'mqtts',
      host: 'broker.example',
      port: 8883,
    });
    expect(parseBrokerUrl('mqtt://127.0.0.1', {})).toEqual({
      protocol: 'mqtt',
      host: '127.0.0.1',
      port: 1883,
    });
    expect(parseBrokerUrl('mqtt://h:1999', { cert: Buffer.from('x') })).toMatchObject({
      protocol: 'mqtts',
      port: 1999,
    });
    expect(() => parseBrokerUrl('http://h', {})).toThrow(/mqtts/);
  });
});

describe('state and Home Assistant', () => {
  const input = {
    vehicleId: 'VA-1',
    lock: 'locked' as const,
    keyring: { digest: 'ab', operations: 3, credentials: 2 },
    clock: { now: '2026-01-01T00:00:00.000Z', trust: 'behind' as const },
    readers: { sim: { state: 'ok', since: 0 } },
    version: '0.1.0',
    untrustedSince: '2025-12-31T00:00:00.000Z',
    outbox: { lastSeq: 5, ackedSeq: 4, pending: 1, dropped: 0 },
    mqtt: { protocol: '5' as const },
  };

  it('says when the vehicle has no trusted time, and changes its fingerprint only for what matters', () => {
    const doc = stateDocument(input);
    expect(doc.clock).toEqual({
      now: input.clock.now,
      trust: 'behind',
      trusted: false,
      untrustedSince: input.untrustedSince,
    });
    expect(doc).toMatchObject({
      vid: 'VA-1',
      lock: 'locked',
      keyring: { digest: 'ab' },
      version: '0.1.0',
      readers: { sim: 'ok' },
    });
    const f = stateFingerprint(doc);
    expect(
      stateFingerprint(stateDocument({ ...input, outbox: { ...input.outbox, lastSeq: 9, pending: 5 } })),
    ).toBe(f);
    expect(stateFingerprint(stateDocument({ ...input, lock: 'unlocked' }))).not.toBe(f);
  });

  it('describes a lock entity on the agent topics and reads only LOCK and UNLOCK', () => {
    const t = vehicleTopics('vehicle-agent', 'VA-1');
    const c = haDiscoveryConfig(t, 'VA-1', 'Van', '0.1.0');
    expect(c).toMatchObject({
      state_topic: t.state,
      command_topic: t.haCommand,
      availability: [{ topic: t.status, payload_available: 'online', payload_not_available: 'offline' }],
      unique_id: 'vehicle_agent_VA-1_lock',
    });
    expect([parseHaCommand('LOCK'), parseHaCommand('UNLOCK\n'), parseHaCommand('OPEN')]).toEqual([
      'lock',
      'unlock',
      undefined,
    ]);
  });
});
