import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import {
  type BleCandidate,
  type BleChannel,
  type BleCloseReason,
  BleLink,
  type BleLinkOptions,
} from '../../src/ble/link.js';
import { KEY_TO_VEHICLE_UUID, SERVICE_UUID, VEHICLE_TO_KEY_UUID } from '../../src/ble/protocol/constants.js';
import { AgentError } from '../../src/core/errors.js';
import { silentLogger } from '../../src/core/logger.js';
import { BleFlood, type FloodMode } from '../../src/sim/ble-flood.js';
import type { BluezStandIn, DeviceSpec, StandInDevice } from '../../src/sim/bluez/types.js';
import {
  type BluezRig,
  type EchoPeer,
  echoPeer,
  startBluezRig,
  TEST_UUIDS,
  waitFor,
} from '../helpers/bluez-rig.js';
import { requireTool, stopProcess } from '../helpers/processes.js';

const PHONE_A = 'AA:BB:CC:DD:EE:01';
const PHONE_B = 'AA:BB:CC:DD:EE:02';
/** The vehicle-key service and characteristics (the flood's fakes advertise those). */
const SPEC_UUIDS = {
  serviceUuids: [SERVICE_UUID],
  writeUuid: VEHICLE_TO_KEY_UUID,
  notifyUuid: KEY_TO_VEHICLE_UUID,
} as const;

/** The stock Debian system.conf default context, in essence: method calls denied unless allowed. */
const SYSTEM_DEFAULTS = `<policy context="default">
  <allow user="*"/>
  <deny own="*"/>
  <deny send_type="method_call"/>
  <allow send_type="signal"/>
  <allow send_requested_reply="true" send_type="method_return"/>
  <allow send_requested_reply="true" send_type="error"/>
  <allow receive_type="method_call"/>
  <allow receive_type="method_return"/>
  <allow receive_type="error"/>
  <allow receive_type="signal"/>
  <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
  <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
</policy>`;

/** Debian bookworm bluez 5.66 /etc/dbus-1/system.d/bluetooth.conf: root owns org.bluez; anyone may call it. */
const DEBIAN_BLUEZ_POLICY = `<policy user="root">
  <allow own="org.bluez"/>
  <allow send_destination="org.bluez"/>
</policy>
<policy context="default">
  <allow send_destination="org.bluez"/>
</policy>`;

let cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups = [];
});

interface Setup {
  readonly rig: BluezRig;
  readonly standIn: BluezStandIn;
  readonly link: BleLink;
  readonly candidates: BleCandidate[];
}

async function setup(
  linkOptions: Partial<BleLinkOptions> = {},
  rigOptions: { limits?: Record<string, number> } = {},
): Promise<Setup> {
  const rig = await startBluezRig(rigOptions);
  cleanups.push(() => rig.stop());
  const link = new BleLink({
    serviceUuid: TEST_UUIDS.service,
    writeUuid: TEST_UUIDS.write,
    notifyUuid: TEST_UUIDS.notify,
    logger: silentLogger,
    busAddress: rig.bus.address,
    sessionSpacingMs: 20,
    retryInitialMs: 20,
    retryMaxMs: 200,
    ...linkOptions,
  });
  cleanups.push(() => link.stop());
  const candidates: BleCandidate[] = [];
  link.onCandidate((candidate) => candidates.push(candidate));
  await link.start();
  return { rig, standIn: rig.standIn, link, candidates };
}

function addPhone(
  standIn: BluezStandIn,
  address: string,
  extra: Partial<DeviceSpec> = {},
): { peer: EchoPeer; device: StandInDevice } {
  const peer = echoPeer();
  const device = standIn.addDevice({
    address,
    name: 'Phone',
    serviceUuids: [TEST_UUIDS.service],
    writeUuid: TEST_UUIDS.write,
    notifyUuid: TEST_UUIDS.notify,
    peer,
    ...extra,
  });
  return { peer, device };
}

async function candidateFor(s: Setup, address: string): Promise<void> {
  s.candidates.length = 0;
  await waitFor(() => s.candidates.some((c) => c.address === address), `a candidate for ${address}`);
}

/** Writes `payload` and resolves with the first notification. */
async function exchange(channel: BleChannel, payload: Uint8Array): Promise<Uint8Array> {
  const answer = new Promise<Uint8Array>((resolve) => {
    const off = channel.onData((chunk) => {
      off();
      resolve(chunk);
    });
  });
  await channel.write(payload);
  return answer;
}

async function roundTrip(link: BleLink, address: string, payload: Uint8Array): Promise<Uint8Array> {
  const channel = await link.openSession(address);
  try {
    return await exchange(channel, payload);
  } finally {
    await channel.close();
  }
}

function closeReason(channel: BleChannel): Promise<BleCloseReason> {
  return new Promise((resolve) => channel.onClose(resolve));
}

/** bluetoothctl's output without colours and readline's prompt markers (\x01, \x02). */
function plainText(text: string): string {
  const ESC = String.fromCharCode(0x1b);
  const markers = new Set([String.fromCharCode(1), String.fromCharCode(2), '\r']);
  return text
    .split(ESC)
    .map((part, i) => (i === 0 ? part : part.replace(/^\[[0-9;]*[A-Za-z]/, '')))
    .join('')
    .split('')
    .filter((c) => !markers.has(c))
    .join('');
}

async function rejection(promise: Promise<unknown>): Promise<AgentError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}

describe('BLE link over node-ble, a private dbus-daemon and the BlueZ stand-in', () => {
  it('discovers, connects, writes with response and receives the notification, then disconnects', async () => {
    const s = await setup();
    const { device, peer } = addPhone(s.standIn, PHONE_A);
    expect(s.link.health().state).toBe('ok');
    await candidateFor(s, PHONE_A);
    expect(s.candidates[0]).toMatchObject({ address: PHONE_A, name: 'Phone', rssi: -50 });

    device.resetCalls();
    const channel = await s.link.openSession(PHONE_A);
    expect(device.connected).toBe(true);
    expect(peer.subscribed).toBe(true);
    const payload = Uint8Array.from([0x01, 0x02, 0x03, 0xfe]);
    expect(await exchange(channel, payload)).toEqual(payload);
    expect(peer.writes).toEqual([payload]);
    // writeValueWithResponse: an ATT write request, not node-ble's default reliable write.
    expect(device.lastWriteType).toBe('request');
    await channel.close();

    expect(device.connected).toBe(false);
    expect(peer.disconnects).toBe(1);
    const calls = device.calls();
    expect(calls['org.bluez.Device1.Connect']).toBe(1);
    expect(calls['org.bluez.GattCharacteristic1.StartNotify']).toBe(1);
    expect(calls['org.bluez.GattCharacteristic1.WriteValue']).toBe(1);
    expect(calls['org.bluez.Device1.Disconnect']).toBe(1);
    // GATT paths come from the ObjectManager signals: no introspection, no property reads.
    expect(device.callCount()).toBe(4);
    expect(channel.mtu).toBe(247);
    expect(s.link.stats()).toMatchObject({
      sessionsOpened: 1,
      sessionsFailed: 0,
      gattRetries: 0,
      activeSessions: 0,
    });
    await expect(channel.write(payload)).rejects.toMatchObject({ code: 'reader_error' });
  });

  it('filters discovery to the service UUID and offers only devices above the RSSI threshold', async () => {
    const s = await setup({ rssiThreshold: -80 });
    const other = s.standIn.addDevice({
      address: 'AA:BB:CC:DD:EE:09',
      serviceUuids: ['0000180d-0000-1000-8000-00805f9b34fb'],
      writeUuid: TEST_UUIDS.write,
      notifyUuid: TEST_UUIDS.notify,
      peer: echoPeer(),
    });
    const near = addPhone(s.standIn, PHONE_A, { rssi: -60 });
    const far = addPhone(s.standIn, PHONE_B, { rssi: -95 });
    await waitFor(
      () => s.candidates.filter((c) => c.address === PHONE_A).length >= 3,
      'three sightings of A',
    );
    expect(near.device.exported).toBe(true);
    expect(far.device.exported).toBe(true);
    // SetDiscoveryFilter(UUIDs): BlueZ never reports the heart-rate sensor to the link.
    expect(other.exported).toBe(false);
    expect(s.candidates.some((c) => c.address === PHONE_B)).toBe(false);

    far.device.setRssi(-62);
    await candidateFor(s, PHONE_B);
  });

  it('falls back to gatt() when the GATT objects were not announced, and retries it when it misses the ServicesResolved flip', async () => {
    // The first gatt() hangs (it missed the flip) until this timeout; the retry's ten introspection
    // round trips must fit in it on a loaded machine too (150 ms did not, on either side of a split).
    const s = await setup({ gattTimeoutMs: 1000 });
    const { device } = addPhone(s.standIn, PHONE_A, {
      faults: { servicesResolved: 'missed-once', gattUnannounced: true },
    });
    await candidateFor(s, PHONE_A);
    const payload = Uint8Array.from([9, 9]);
    expect(await roundTrip(s.link, PHONE_A, payload)).toEqual(payload);
    expect(s.link.stats().gattRetries).toBe(1);
    expect(device.calls()['org.freedesktop.DBus.Introspectable.Introspect']).toBeGreaterThan(0);
    expect(device.connected).toBe(false);
  });

  it('is not affected by a missed ServicesResolved read when the GATT objects were announced', async () => {
    const s = await setup({ gattTimeoutMs: 150 });
    const { device } = addPhone(s.standIn, PHONE_A, { faults: { servicesResolved: 'missed-once' } });
    await candidateFor(s, PHONE_A);
    const payload = Uint8Array.from([9, 9]);
    expect(await roundTrip(s.link, PHONE_A, payload)).toEqual(payload);
    expect(s.link.stats().gattRetries).toBe(0);
    expect(device.callCount()).toBe(4);
  });

  it('survives ServicesResolved flipping 1-5 ms after Connect, session after session', async () => {
    const s = await setup({ gattTimeoutMs: 300 });
    const { device } = addPhone(s.standIn, PHONE_A);
    for (let i = 0; i < 20; i += 1) {
      device.setFaults({ servicesResolved: { afterMs: 1 + (i % 5) } });
      await candidateFor(s, PHONE_A);
      const payload = Uint8Array.from([i]);
      expect(await roundTrip(s.link, PHONE_A, payload)).toEqual(payload);
      expect(device.connected).toBe(false);
    }
    expect(s.link.stats()).toMatchObject({ sessionsOpened: 20, sessionsFailed: 0 });
  });

  it('reports a failed connect and leaves the device disconnected; the next attempt works', async () => {
    const s = await setup();
    const { device } = addPhone(s.standIn, PHONE_A, { faults: { connectFailures: 1 } });
    await candidateFor(s, PHONE_A);
    const error = await rejection(s.link.openSession(PHONE_A));
    expect(error.code).toBe('reader_error');
    expect(error.message).toContain('le-connection-abort-by-local');
    expect(device.connected).toBe(false);
    expect(device.stats.connectFailures).toBe(1);

    await candidateFor(s, PHONE_A);
    const payload = Uint8Array.from([1]);
    expect(await roundTrip(s.link, PHONE_A, payload)).toEqual(payload);
  });

  it('times out a connect that never completes and cancels it', async () => {
    const s = await setup({ connectTimeoutMs: 150 });
    const { device } = addPhone(s.standIn, PHONE_A, { faults: { connectHangs: true } });
    await candidateFor(s, PHONE_A);
    const error = await rejection(s.link.openSession(PHONE_A));
    expect(error.code).toBe('reader_timeout');
    expect(device.connected).toBe(false);
    expect(device.calls()['org.bluez.Device1.Disconnect']).toBe(1);
    expect(s.link.stats().activeSessions).toBe(0);
  });

  it('times out when ServicesResolved never comes, then disconnects', async () => {
    const s = await setup({ servicesTimeoutMs: 150 });
    const { device } = addPhone(s.standIn, PHONE_A, { faults: { servicesResolved: 'never' } });
    await candidateFor(s, PHONE_A);
    const error = await rejection(s.link.openSession(PHONE_A));
    expect(error.code).toBe('reader_timeout');
    expect(error.message).toContain('ServicesResolved');
    expect(device.stats.connects).toBe(1);
    expect(device.connected).toBe(false);
  });

  it('ends the session when the device vanishes mid-session', async () => {
    const s = await setup();
    const { device } = addPhone(s.standIn, PHONE_A, { faults: { vanishAfterWrites: 1 } });
    await candidateFor(s, PHONE_A);
    const channel = await s.link.openSession(PHONE_A);
    const closed = closeReason(channel);
    // The device leaves right after answering the write: whether the write's reply or the
    // disconnect is seen first is a race, and either way the session is over.
    await channel.write(Uint8Array.from([1])).catch((err: unknown) => {
      expect(err).toMatchObject({ code: 'reader_error' });
    });
    expect(['disconnected', 'vanished']).toContain(await closed);
    expect(channel.closed).toBe(true);
    await expect(channel.write(Uint8Array.from([2]))).rejects.toMatchObject({ code: 'reader_error' });
    expect(device.connected).toBe(false);
    expect(device.exported).toBe(false);
    await waitFor(() => s.link.stats().activeSessions === 0, 'the slot to be freed');
  });

  it('delivers later notifications when one is lost', async () => {
    const s = await setup();
    const { device } = addPhone(s.standIn, PHONE_A, { faults: { dropNotifications: 1 } });
    await candidateFor(s, PHONE_A);
    const channel = await s.link.openSession(PHONE_A);
    const chunks: Uint8Array[] = [];
    channel.onData((chunk) => chunks.push(chunk));
    await channel.write(Uint8Array.from([1]));
    await channel.write(Uint8Array.from([2]));
    await waitFor(() => chunks.length === 1, 'the second notification');
    expect(chunks).toEqual([Uint8Array.from([2])]);
    expect(device.stats.notificationsDropped).toBe(1);
    await channel.close();
    expect(device.connected).toBe(false);
  });

  it('models slow links explicitly, per call', async () => {
    const s = await setup();
    const { device } = addPhone(s.standIn, PHONE_A, { linkDelayMs: 5 });
    await candidateFor(s, PHONE_A);
    const payload = Uint8Array.from([7]);
    expect(await roundTrip(s.link, PHONE_A, payload)).toEqual(payload);
    // connect + StartNotify + write + one notification + disconnect
    expect(device.stats.modelledDelayMs).toBe(25);
  });

  it('refuses writes the link cannot carry without touching the bus', async () => {
    const s = await setup();
    const { device } = addPhone(s.standIn, PHONE_A);
    await candidateFor(s, PHONE_A);
    const channel = await s.link.openSession(PHONE_A);
    await expect(channel.write(new Uint8Array(513))).rejects.toMatchObject({ code: 'frame_too_large' });
    await expect(channel.write(new Uint8Array(0))).rejects.toMatchObject({ code: 'frame_too_large' });
    expect(device.stats.writes).toBe(0);
    await channel.close();
  });

  it('goes degraded when the adapter powers off and recovers when it comes back', async () => {
    const s = await setup();
    const { device } = addPhone(s.standIn, PHONE_A);
    await candidateFor(s, PHONE_A);
    const channel = await s.link.openSession(PHONE_A);
    const closed = closeReason(channel);

    s.standIn.setPowered(false);
    expect(['disconnected', 'adapter-off', 'vanished']).toContain(await closed);
    await waitFor(() => s.link.health().state === 'degraded', 'degraded health');
    expect(s.link.health().detail).toContain('powered off');
    expect(device.connected).toBe(false);
    await expect(s.link.openSession(PHONE_A)).rejects.toMatchObject({ code: 'reader_error' });

    s.standIn.setPowered(true);
    await waitFor(() => s.link.health().state === 'ok', 'ok health');
    expect(s.standIn.discovering).toBe(true);
    await candidateFor(s, PHONE_A);
    const payload = Uint8Array.from([4, 2]);
    expect(await roundTrip(s.link, PHONE_A, payload)).toEqual(payload);
  });

  it('survives org.bluez leaving the bus and coming back without a restart', async () => {
    const s = await setup();
    const { device } = addPhone(s.standIn, PHONE_A);
    await candidateFor(s, PHONE_A);
    const channel = await s.link.openSession(PHONE_A);
    const closed = closeReason(channel);

    await s.standIn.releaseName();
    expect(await closed).toBe('bluez-lost');
    await waitFor(() => s.link.health().state === 'down', 'down health');
    expect(s.link.health().detail).toContain('org.bluez');
    expect(device.connected).toBe(false);
    await waitFor(() => s.link.stats().activeSessions === 0, 'the slot to be freed');

    await s.standIn.reacquireName();
    await waitFor(() => s.link.health().state === 'ok', 'ok health');
    await candidateFor(s, PHONE_A);
    const payload = Uint8Array.from([5]);
    expect(await roundTrip(s.link, PHONE_A, payload)).toEqual(payload);
    expect(device.connected).toBe(false);
  });

  it('starts without BlueZ and picks it up when it appears', async () => {
    const rig = await startBluezRig();
    cleanups.push(() => rig.stop());
    await rig.standIn.releaseName();
    const link = new BleLink({
      serviceUuid: TEST_UUIDS.service,
      writeUuid: TEST_UUIDS.write,
      notifyUuid: TEST_UUIDS.notify,
      logger: silentLogger,
      busAddress: rig.bus.address,
    });
    cleanups.push(() => link.stop());
    await link.start();
    expect(link.health()).toMatchObject({ state: 'down' });
    await rig.standIn.reacquireName();
    await waitFor(() => link.health().state === 'ok', 'ok health');
  });

  it('runs sessions with two phones at once', async () => {
    const s = await setup();
    const a = addPhone(s.standIn, PHONE_A);
    const b = addPhone(s.standIn, PHONE_B);
    await waitFor(
      () =>
        s.candidates.some((c) => c.address === PHONE_A) && s.candidates.some((c) => c.address === PHONE_B),
      'both phones',
    );
    const [channelA, channelB] = await Promise.all([
      s.link.openSession(PHONE_A),
      s.link.openSession(PHONE_B),
    ]);
    expect(s.link.stats().activeSessions).toBe(2);
    const [answerA, answerB] = await Promise.all([
      exchange(channelA, Uint8Array.from([0xa])),
      exchange(channelB, Uint8Array.from([0xb])),
    ]);
    expect(answerA).toEqual(Uint8Array.from([0xa]));
    expect(answerB).toEqual(Uint8Array.from([0xb]));
    await Promise.all([channelA.close(), channelB.close()]);
    expect(a.device.connected).toBe(false);
    expect(b.device.connected).toBe(false);
  });

  it('holds one session per device, bounds concurrent sessions and honours the cooldown', async () => {
    const s = await setup({ maxSessions: 1 });
    const a = addPhone(s.standIn, PHONE_A);
    addPhone(s.standIn, PHONE_B);
    await waitFor(
      () =>
        s.candidates.some((c) => c.address === PHONE_A) && s.candidates.some((c) => c.address === PHONE_B),
      'both phones',
    );
    const channel = await s.link.openSession(PHONE_A);
    expect(await rejection(s.link.openSession(PHONE_A))).toMatchObject({
      code: 'busy',
      details: { reason: 'device-busy' },
    });
    expect(await rejection(s.link.openSession(PHONE_B))).toMatchObject({
      code: 'busy',
      details: { reason: 'too-many-sessions' },
    });
    expect(a.device.stats.connects).toBe(1);

    await channel.close({ cooldownMs: 60_000 });
    expect(a.device.connected).toBe(false);
    expect(await rejection(s.link.openSession(PHONE_A))).toMatchObject({
      code: 'busy',
      details: { reason: 'cooldown' },
    });
    s.candidates.length = 0;
    await waitFor(() => s.candidates.filter((c) => c.address === PHONE_B).length >= 3, 'sightings of B');
    expect(s.candidates.some((c) => c.address === PHONE_A)).toBe(false);
    const payload = Uint8Array.from([0xb]);
    expect(await roundTrip(s.link, PHONE_B, payload)).toEqual(payload);

    s.link.setCooldown(PHONE_B, 60_000);
    expect(await rejection(s.link.openSession(PHONE_B))).toMatchObject({ details: { reason: 'cooldown' } });
  });

  it.each(['hang', 'silent'] as FloodMode[])(
    'gives a phone a session while rotating addresses that %s hold every slot (unproven turns)',
    async (mode) => {
      const uuids = {
        serviceUuid: SERVICE_UUID,
        writeUuid: VEHICLE_TO_KEY_UUID,
        notifyUuid: KEY_TO_VEHICLE_UUID,
      };
      // No unproven deadline here: only eviction after the turn can free a slot.
      const s = await setup({ ...uuids, maxSessions: 2, unprovenTurnMs: 200, unprovenDeadlineMs: 60_000 });
      const ended: BleCloseReason[] = [];
      let phoneChannel: BleChannel | undefined;
      // A reader that opens a session with every device offered and never closes a fake's.
      s.link.onCandidate((c) => {
        s.link.openSession(c.address).then(
          (channel) => {
            channel.onClose((reason) => ended.push(reason));
            if (c.address !== PHONE_A) return;
            channel.markProven();
            phoneChannel = channel;
          },
          () => {},
        );
      });
      const flood = new BleFlood(s.standIn, { devices: 16, mode, lifetimeMs: 60_000 });
      flood.start();
      cleanups.push(async () => {
        flood.stop();
      });
      await waitFor(() => s.link.stats().activeSessions === 2, 'fakes in every slot');
      addPhone(s.standIn, PHONE_A, {
        serviceUuids: [SERVICE_UUID],
        writeUuid: VEHICLE_TO_KEY_UUID,
        notifyUuid: KEY_TO_VEHICLE_UUID,
      });
      await waitFor(() => phoneChannel !== undefined, 'a session for the phone', 30_000);
      const stats = s.link.stats();
      expect(stats.sessionsEvicted).toBeGreaterThan(0);
      expect(stats.sightingsDeferred).toBeGreaterThan(0);
      if (mode === 'silent') expect(ended).toContain('evicted');
      // Proven: the phone's session is never evicted for the fakes still waiting.
      await new Promise((resolve) => setTimeout(resolve, 600));
      expect(phoneChannel?.closed).toBe(false);
      await phoneChannel?.close();
    },
  );

  it('under a rotating garbage flood and an address spray keeps its connect rate and every table bounded, and a phone still gets its session', async () => {
    const uuids = {
      serviceUuid: SERVICE_UUID,
      writeUuid: VEHICLE_TO_KEY_UUID,
      notifyUuid: KEY_TO_VEHICLE_UUID,
    };
    const maxConnectsPerSecond = 10;
    const maxSessions = 2;
    const maxTrackedDevices = 24;
    const maxWaiting = 16;
    const s = await setup({
      ...uuids,
      maxSessions,
      maxConnectsPerSecond,
      maxTrackedDevices,
      maxWaiting,
      unprovenTurnMs: 200,
    });
    let phoneGranted = false;
    // A reader in miniature: every fake's answer is garbage, so its session ends at once with a
    // denial cooldown (as the real reader does); the phone proves itself.
    s.link.onCandidate((c) => {
      s.link.openSession(c.address).then(
        (channel) => {
          if (c.address === PHONE_A) {
            channel.markProven();
            phoneGranted = true;
          }
          void channel.close({ cooldownMs: 2000 });
        },
        () => {},
      );
    });
    // Far-away addresses BlueZ reports but the link never offers: they only fill its table.
    for (let i = 0; i < 60; i++) {
      const address = `D0:00:00:00:00:${i.toString(16).padStart(2, '0').toUpperCase()}`;
      addPhone(s.standIn, address, { ...SPEC_UUIDS, rssi: -100, advertisingIntervalMs: 50 });
    }
    const flood = new BleFlood(s.standIn, { devices: 16, mode: 'garbage', advertisingIntervalMs: 20 });
    const startedAt = performance.now();
    const connectsBefore = s.link.stats().connects;
    flood.start();
    cleanups.push(async () => {
      flood.stop();
    });
    const samples: ReturnType<BleLink['stats']>[] = [];
    const sampler = setInterval(() => samples.push(s.link.stats()), 20);
    cleanups.push(async () => clearInterval(sampler));
    await waitFor(() => s.link.stats().connects - connectsBefore >= 20, 'the flood under way', 20_000);
    addPhone(s.standIn, PHONE_A, SPEC_UUIDS);
    await waitFor(() => phoneGranted, 'a session for the phone among the fakes', 60_000);
    // Let the flood run on a while after the phone's turn.
    const more = s.link.stats().connects + 20;
    await waitFor(() => s.link.stats().connects >= more, 'more of the flood', 20_000);
    clearInterval(sampler);
    const elapsedS = (performance.now() - startedAt) / 1000;
    const stats = s.link.stats();
    const fakes = flood.stats();
    // Connects within the budget: a burst of maxSessions and then maxConnectsPerSecond on average
    // (an upper bound on a count; a slow machine only makes fewer).
    expect(stats.connects - connectsBefore).toBeLessThanOrEqual(
      maxSessions + Math.ceil(elapsedS * maxConnectsPerSecond),
    );
    expect(stats.connectsDeferred).toBeGreaterThan(0);
    expect(fakes.addresses).toBeGreaterThan(16);
    // Every per-address table stayed bounded while hundreds of addresses came and went.
    for (const sample of [...samples, stats]) {
      expect(sample.trackedDevices).toBeLessThanOrEqual(maxTrackedDevices);
      expect(sample.waitingDevices).toBeLessThanOrEqual(maxWaiting);
      expect(sample.activeSessions).toBeLessThanOrEqual(2 * maxSessions);
      expect(sample.tables.pathWaiters).toBeLessThanOrEqual(2 * maxSessions);
      expect(sample.tables.notifyPaths).toBeLessThanOrEqual(2 * maxSessions);
      expect(sample.tables.lookups).toBeLessThanOrEqual(maxSessions);
      // GATT objects of connected devices only: a service and two characteristics each.
      expect(sample.tables.gattObjects).toBeLessThanOrEqual(3 * 2 * maxSessions);
      // Holds last 2 s: no more than the connects of 2 s (plus a burst) are remembered.
      expect(sample.tables.holds).toBeLessThanOrEqual(maxSessions + 3 * maxConnectsPerSecond + maxSessions);
    }
    expect(stats.trackedDevicesEvicted).toBeGreaterThan(0);
  }, 120_000);

  it('looks a forgotten device up again when it is heard, so a full table never hides a phone', async () => {
    const s = await setup({ maxTrackedDevices: 4 });
    addPhone(s.standIn, PHONE_A, { advertisingIntervalMs: 1000 });
    await candidateFor(s, PHONE_A);
    // Twenty devices heard after the phone push it out of a table of four (weak ones: they are
    // never looked up again, so a lookup below is the phone's).
    for (let i = 0; i < 20; i++) {
      const address = `D0:00:00:00:00:${i.toString(16).padStart(2, '0').toUpperCase()}`;
      addPhone(s.standIn, address, { rssi: -100, advertisingIntervalMs: 20 });
    }
    await waitFor(() => s.link.stats().trackedDevicesEvicted >= 17, 'the table full');
    s.candidates.length = 0;
    await waitFor(() => s.candidates.some((c) => c.address === PHONE_A), 'the phone offered again', 10_000);
    const stats = s.link.stats();
    expect(stats.devicesLookedUp).toBeGreaterThan(0);
    expect(stats.trackedDevices).toBeLessThanOrEqual(4);
    const payload = Uint8Array.from([0x7]);
    expect(await roundTrip(s.link, PHONE_A, payload)).toEqual(payload);
  });

  it('drops a session that proves nothing by its unproven deadline, and not a proven one', async () => {
    const s = await setup({ unprovenDeadlineMs: 300 });
    addPhone(s.standIn, PHONE_A);
    addPhone(s.standIn, PHONE_B);
    await waitFor(
      () =>
        s.candidates.some((c) => c.address === PHONE_A) && s.candidates.some((c) => c.address === PHONE_B),
      'both phones',
    );
    const unproven = await s.link.openSession(PHONE_A);
    const proven = await s.link.openSession(PHONE_B);
    proven.markProven();
    expect(await closeReason(unproven)).toBe('unproven-timeout');
    expect(proven.closed).toBe(false);
    expect(s.link.stats().unprovenTimeouts).toBe(1);
    await proven.close();
  });

  it('keeps the cooldown asked at close when the phone already dropped the link', async () => {
    const s = await setup();
    const { device } = addPhone(s.standIn, PHONE_A);
    await candidateFor(s, PHONE_A);
    const channel = await s.link.openSession(PHONE_A);
    const closed = closeReason(channel);
    device.dropLink();
    expect(await closed).toBe('disconnected');
    await channel.close({ cooldownMs: 60_000 });
    expect(await rejection(s.link.openSession(PHONE_A))).toMatchObject({
      code: 'busy',
      details: { reason: 'cooldown' },
    });
  });

  it('adds no match rules per session, so sessions never exhaust the daemon', async () => {
    // With a limit of 40 match rules a connection, node-ble's gatt() (about three leaked rules
    // each) would be refused after a dozen sessions; the link's own calls add none.
    const s = await setup(
      { recycleAfterSessions: 8, callTimeoutMs: 1000 },
      {
        limits: { max_match_rules_per_connection: 40 },
      },
    );
    for (let i = 0; i < 30; i += 1) {
      const address = `AA:BB:CC:00:00:${i.toString(16).padStart(2, '0').toUpperCase()}`;
      const { device } = addPhone(s.standIn, address);
      await candidateFor(s, address);
      const payload = Uint8Array.from([i]);
      expect(await roundTrip(s.link, address, payload)).toEqual(payload);
      expect(device.connected).toBe(false);
      s.standIn.removeDevice(address);
    }
    expect(s.link.stats()).toMatchObject({ busConnections: 1, sessionsOpened: 30, sessionsFailed: 0 });
  });

  it('reconnects to the bus when idle to shed what node-ble gatt() leaks, and keeps working', async () => {
    const s = await setup(
      { recycleAfterSessions: 8, callTimeoutMs: 1000 },
      {
        limits: { max_match_rules_per_connection: 40 },
      },
    );
    for (let i = 0; i < 30; i += 1) {
      const address = `AA:BB:CC:00:01:${i.toString(16).padStart(2, '0').toUpperCase()}`;
      const { device } = addPhone(s.standIn, address, { faults: { gattUnannounced: true } });
      await waitFor(() => s.link.health().state === 'ok', 'ok health');
      await candidateFor(s, address);
      const payload = Uint8Array.from([i]);
      expect(await roundTrip(s.link, address, payload)).toEqual(payload);
      expect(device.connected).toBe(false);
      s.standIn.removeDevice(address);
    }
    expect(s.link.stats().busConnections).toBeGreaterThanOrEqual(4);
  });

  it('works as an unprivileged user under hw/dbus-vehicle-agent-bluez.conf, which refuses the rest', async () => {
    if (process.getuid?.() !== 0) {
      throw new Error('this test runs the link as user nobody and so must run as root');
    }
    const policyFile = await readFile(
      fileURLToPath(new URL('../../hw/dbus-vehicle-agent-bluez.conf', import.meta.url)),
      'utf8',
    );
    const agentPolicy = /<busconfig>([\s\S]*)<\/busconfig>/.exec(policyFile)?.[1];
    if (agentPolicy === undefined || !agentPolicy.includes('user="vehicle-agent"'))
      throw new Error('bad policy file');
    const rig = await startBluezRig({
      worldAccessible: true,
      policies: [
        SYSTEM_DEFAULTS,
        DEBIAN_BLUEZ_POLICY,
        agentPolicy.replace('user="vehicle-agent"', 'user="nobody"'),
      ].join('\n'),
    });
    cleanups.push(() => rig.stop());
    const { device, peer } = addPhone(rig.standIn, PHONE_A);
    const child = spawn(
      process.execPath,
      [fileURLToPath(new URL('../fixtures/ble-policy-client.mjs', import.meta.url))],
      {
        uid: 65534,
        gid: 65534,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          PATH: process.env.PATH ?? '/usr/bin:/bin',
          BUS_ADDRESS: rig.bus.address,
          SERVICE_UUID: TEST_UUIDS.service,
          WRITE_UUID: TEST_UUIDS.write,
          NOTIFY_UUID: TEST_UUIDS.notify,
          DEVICE_PATH: device.path,
        },
      },
    );
    cleanups.push(() => stopProcess(child));
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString('utf8');
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString('utf8');
    });
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    expect(stderr).toBe('');
    expect(code).toBe(0);
    const result: unknown = JSON.parse(stdout);
    expect(result).toMatchObject({
      uid: 65534,
      health: { state: 'ok' },
      session: [1, 2, 3],
      denied: {
        'Properties.Set Powered': 'org.freedesktop.DBus.Error.AccessDenied',
        'Adapter1.RemoveDevice': 'org.freedesktop.DBus.Error.AccessDenied',
        'Device1.Pair': 'org.freedesktop.DBus.Error.AccessDenied',
        'AgentManager1.RegisterAgent': 'org.freedesktop.DBus.Error.AccessDenied',
        'Properties.Get Powered': 'allowed',
      },
    });
    expect(peer.writes).toEqual([Uint8Array.from([1, 2, 3])]);
    expect(device.connected).toBe(false);
    expect(rig.standIn.powered).toBe(true);
    expect(device.exported).toBe(true);
  });

  it('lets bluetoothctl list and connect to a stand-in device', async () => {
    requireTool('bluetoothctl', 'apt-get install bluez');
    const rig = await startBluezRig();
    cleanups.push(() => rig.stop());
    const { device } = addPhone(rig.standIn, PHONE_A, { name: 'Owner phone' });
    const child = spawn('bluetoothctl', [], {
      env: { ...process.env, DBUS_SYSTEM_BUS_ADDRESS: rig.bus.address },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    cleanups.push(() => stopProcess(child));
    let output = '';
    const append = (chunk: Buffer): void => {
      output += plainText(chunk.toString('utf8'));
    };
    child.stdout.on('data', append);
    child.stderr.on('data', append);
    const command = async (line: string, expected: string): Promise<void> => {
      const from = output.length;
      child.stdin.write(`${line}\n`);
      await waitFor(() => output.slice(from).includes(expected), `bluetoothctl: ${line} → ${expected}`);
    };

    await waitFor(() => output.includes('Agent registered'), 'bluetoothctl to register its agent');
    await command('list', 'Controller B8:27:EB:00:00:01');
    await command('scan on', `[NEW] Device ${PHONE_A} Owner phone`);
    await command('devices', `Device ${PHONE_A} Owner phone`);
    await command(`connect ${PHONE_A}`, 'Connection successful');
    expect(device.connected).toBe(true);
    await command(`disconnect ${PHONE_A}`, 'Successful disconnected');
    expect(device.connected).toBe(false);
    await command('scan off', 'Discovery stopped');
    child.stdin.write('quit\n');
  });
});
