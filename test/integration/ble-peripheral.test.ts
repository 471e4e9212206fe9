import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { Message, sessionBus, Variant } from 'dbus-next';
import { afterEach, describe, expect, it } from 'vitest';
import {
  ANSWER_CHAR_UUID,
  CHALLENGE_CHAR_UUID,
  PERIPHERAL_SERVICE_UUID,
  RESULT_CHAR_UUID,
} from '../../src/ble/peripheral/gatt-layout.js';
import { BlePeripheral, type BlePeripheralOptions } from '../../src/ble/peripheral/peripheral.js';
import { silentLogger } from '../../src/core/logger.js';
import { type BluezRig, startBluezRig, waitFor } from '../helpers/bluez-rig.js';
import { type FakePhoneKeyService, fakePhoneKeyService } from '../helpers/fake-phone-key-service.js';
import { requireTool, stopProcess } from '../helpers/processes.js';

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
</policy>
<policy user="root">
  <allow own="org.bluez"/>
  <allow send_destination="org.bluez"/>
</policy>`;

let cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups = [];
});

interface Setup {
  readonly rig: BluezRig;
  readonly service: FakePhoneKeyService;
  readonly peripheral: BlePeripheral;
}

async function setup(options: Partial<BlePeripheralOptions> = {}, start = true): Promise<Setup> {
  const rig = await startBluezRig();
  cleanups.push(() => rig.stop());
  const service = fakePhoneKeyService();
  const peripheral = new BlePeripheral({
    service,
    logger: silentLogger,
    busAddress: rig.bus.address,
    retryMs: 20,
    maxRetryMs: 100,
    ...options,
  });
  cleanups.push(() => peripheral.stop());
  if (start) await peripheral.start();
  return { rig, service, peripheral };
}

async function rejection(promise: Promise<unknown>): Promise<{ type?: string; message?: string }> {
  try {
    await promise;
  } catch (err) {
    return err as { type?: string; message?: string };
  }
  throw new Error('expected a rejection');
}

const text = (bytes: Uint8Array): string => Buffer.from(bytes).toString('ascii');

/** bluetoothctl's output without colours and readline's prompt markers (\x01, \x02). */
function plainText(chunk: string): string {
  const ESC = String.fromCharCode(0x1b);
  const markers = new Set([String.fromCharCode(1), String.fromCharCode(2), '\r']);
  return chunk
    .split(ESC)
    .map((part, i) => (i === 0 ? part : part.replace(/^\[[0-9;]*[A-Za-z]/, '')))
    .join('')
    .split('')
    .filter((c) => !markers.has(c))
    .join('');
}

describe('the vehicle as a GATT peripheral, over a private dbus-daemon and the BlueZ stand-in', () => {
  it('registers its application and an advertisement that fits 31 bytes with no name', async () => {
    const { rig, peripheral } = await setup();
    expect(peripheral.health().state).toBe('ok');
    expect(peripheral.registered).toBe(true);
    const [app, ...moreApps] = rig.standIn.applications();
    expect(moreApps).toEqual([]);
    expect(app?.services).toHaveLength(1);
    const service = app?.services[0];
    expect(service).toMatchObject({ uuid: PERIPHERAL_SERVICE_UUID, primary: true });
    const flags = Object.fromEntries(service?.characteristics.map((c) => [c.uuid, c.flags]) ?? []);
    expect(flags).toEqual({
      [CHALLENGE_CHAR_UUID]: ['read'],
      [ANSWER_CHAR_UUID]: ['write'],
      [RESULT_CHAR_UUID]: ['read', 'notify'],
    });
    const [ad, ...moreAds] = rig.standIn.advertisements();
    expect(moreAds).toEqual([]);
    expect(ad).toMatchObject({ type: 'peripheral', serviceUuids: [PERIPHERAL_SERVICE_UUID], bytes: 21 });
    expect(ad?.localName).toBeUndefined();
  });

  it('advertises a configured name when it fits', async () => {
    const { rig } = await setup({ advertisedName: 'Van 7' });
    await waitFor(() => rig.standIn.advertisements().length === 1, 'the advertisement');
    expect(rig.standIn.advertisements()[0]).toMatchObject({ localName: 'Van 7', bytes: 28 });
  });

  it('serves a read through Read Blob continuations with one value, and a new read with a fresh one', async () => {
    const { rig, service } = await setup();
    const central = rig.standIn.connectCentral({ mtu: 23 });
    const first = await central.read(CHALLENGE_CHAR_UUID);
    // 60 bytes at MTU 23 took three ATT reads (offsets 0, 22, 44), but one service read.
    expect(first).toHaveLength(60);
    expect(service.reads).toHaveLength(1);
    expect(text(first)).toBe(text(service.reads[0]?.value ?? new Uint8Array()));
    expect(service.reads[0]?.central).toEqual({ device: central.device, address: central.address, mtu: 23 });
    const second = await central.read(CHALLENGE_CHAR_UUID);
    expect(service.reads).toHaveLength(2);
    expect(text(second)).not.toBe(text(first));
    expect(text(second)).toContain(central.address);
  });

  it('keeps each central’s blob reads apart while others read at the same time', async () => {
    const { rig, service } = await setup();
    const centrals = Array.from({ length: 6 }, () => rig.standIn.connectCentral({ mtu: 23 }));
    const values = await Promise.all(centrals.map((c) => c.read(CHALLENGE_CHAR_UUID)));
    for (const [i, central] of centrals.entries()) {
      const given = service.reads.find((r) => r.central.device === central.device);
      expect(text(values[i] ?? new Uint8Array())).toBe(text(given?.value ?? new Uint8Array()));
    }
  });

  it('takes a long answer whole, refuses malformed ones, reads back the result and forgets on disconnect', async () => {
    const { rig, service, peripheral } = await setup();
    const central = rig.standIn.connectCentral({ mtu: 23 });
    const answer = Uint8Array.from({ length: 300 }, (_, i) => i & 0x7f);
    await central.write(ANSWER_CHAR_UUID, answer);
    expect(service.writes).toHaveLength(1);
    expect([...(service.writes[0]?.bytes ?? [])]).toEqual([...answer]);
    expect(service.writes[0]?.central.device).toBe(central.device);
    expect([...(await central.read(RESULT_CHAR_UUID))]).toEqual([...answer]);

    const malformed = await rejection(central.write(ANSWER_CHAR_UUID, Uint8Array.from([0xff, 1, 2])));
    expect(malformed.type).toBe('org.bluez.Error.InvalidValueLength');
    expect((await rejection(central.write(CHALLENGE_CHAR_UUID, Uint8Array.from([1])))).type).toBe(
      'org.bluez.Error.NotPermitted',
    );
    expect(
      (await rejection(central.write(ANSWER_CHAR_UUID, Uint8Array.from([1]), { withoutResponse: true })))
        .type,
    ).toBe('org.bluez.Error.NotPermitted');
    expect(service.writes).toHaveLength(1);

    central.disconnect();
    await waitFor(() => service.disconnects.length === 1, 'the service told of the disconnect');
    expect(service.disconnects[0]?.device).toBe(central.device);
    expect(service.held.has(central.device)).toBe(false);
    expect(peripheral.stats().centrals).toBe(0);
  });

  it('notifies a subscribed central of its result, and withholds it while another central is connected', async () => {
    const { rig, peripheral } = await setup();
    const alone = rig.standIn.connectCentral();
    await alone.subscribe(RESULT_CHAR_UUID);
    await alone.write(ANSWER_CHAR_UUID, Uint8Array.from([0x02, 0x24, 0x00]));
    await waitFor(() => alone.notifications.length === 1, 'the notification');
    expect([...(alone.notifications[0] ?? [])]).toEqual([0x02, 0x24, 0x00]);

    const eavesdropper = rig.standIn.connectCentral();
    await eavesdropper.subscribe(RESULT_CHAR_UUID);
    await alone.write(ANSWER_CHAR_UUID, Uint8Array.from([0x02, 0x24, 0x01]));
    // BlueZ would send a Value change to every subscriber: the result is withheld (the page reads it).
    expect(peripheral.stats().notificationsWithheld).toBe(1);
    expect([...(await alone.read(RESULT_CHAR_UUID))]).toEqual([0x02, 0x24, 0x01]);
    expect(eavesdropper.notifications).toHaveLength(0);
    expect(alone.notifications).toHaveLength(1);
  });

  it('refuses calls on its objects from anyone on the bus but bluetoothd', async () => {
    const { rig, service } = await setup();
    const [app] = rig.standIn.applications();
    const intruder = sessionBus({ busAddress: rig.bus.address });
    intruder.on('error', () => {});
    cleanups.push(async () => intruder.disconnect());
    const read = intruder.call(
      new Message({
        destination: app?.owner ?? '',
        path: '/org/vehicle_agent/peripheral/service0/char0',
        interface: 'org.bluez.GattCharacteristic1',
        member: 'ReadValue',
        signature: 'a{sv}',
        body: [{ device: new Variant('o', '/org/bluez/hci0/dev_11_22_33_44_55_66') }],
      }),
    );
    expect((await rejection(read)).type).toBe('org.freedesktop.DBus.Error.AccessDenied');
    expect(service.reads).toHaveLength(0);
  });

  it('registers again after bluetoothd restarts', async () => {
    const { rig, service, peripheral } = await setup();
    const before = peripheral.stats().registrations;
    const central = rig.standIn.connectCentral();
    await central.read(CHALLENGE_CHAR_UUID);
    await rig.standIn.releaseName();
    await waitFor(() => peripheral.health().state === 'down', 'down while bluetoothd is away');
    expect(peripheral.error()?.code).toBe('adapter_missing');
    // Its connections went with bluetoothd: the service forgot them.
    expect(service.disconnects.map((c) => c.device)).toEqual([central.device]);
    await rig.standIn.reacquireName();
    await waitFor(() => rig.standIn.advertisements().length === 1, 're-registration');
    expect(rig.standIn.applications()).toHaveLength(1);
    await waitFor(() => peripheral.health().state === 'ok', 'ok again');
    expect(peripheral.stats().registrations).toBe(before + 1);
    expect(await rig.standIn.connectCentral().read(CHALLENGE_CHAR_UUID)).toHaveLength(60);
  });

  it('goes down with adapter_off while the adapter is off and comes back when it powers on', async () => {
    const { rig, service, peripheral } = await setup();
    const central = rig.standIn.connectCentral();
    await central.read(CHALLENGE_CHAR_UUID);
    const before = peripheral.stats().registrations;
    rig.standIn.setPowered(false);
    await waitFor(() => peripheral.error()?.code === 'adapter_off', 'adapter_off');
    expect(peripheral.health().state).toBe('down');
    await waitFor(() => service.disconnects.length === 1, 'the central forgotten');
    rig.standIn.setPowered(true);
    await waitFor(() => peripheral.health().state === 'ok', 'ok after power-on');
    expect(peripheral.stats().registrations).toBe(before + 1);
    expect(rig.standIn.advertisements()).toHaveLength(1);
    expect(rig.standIn.applications()).toHaveLength(1);
  });

  it('registers the advertisement again when BlueZ releases it', async () => {
    const { rig, peripheral } = await setup();
    await rig.standIn.releaseAdvertisements();
    await waitFor(() => rig.standIn.advertisements().length === 1, 'the advertisement back');
    await waitFor(() => peripheral.health().state === 'ok', 'ok');
  });

  it('reports adapter_missing for an adapter BlueZ does not have, and keeps trying', async () => {
    const { rig, peripheral } = await setup({ adapter: 'hci1' });
    expect(peripheral.error()?.code).toBe('adapter_missing');
    expect(peripheral.health()).toMatchObject({ state: 'down' });
    expect(peripheral.health().detail).toMatch(/^adapter_missing: /);
    expect(rig.standIn.applications()).toEqual([]);
  });

  it('reports bluez_refused when BlueZ refuses the application, and registers once it accepts', async () => {
    const { rig, peripheral } = await setup({}, false);
    rig.standIn.setPeripheralFaults({ refuseApplications: true });
    await peripheral.start();
    expect(peripheral.error()?.code).toBe('bluez_refused');
    expect(peripheral.health().state).toBe('down');
    rig.standIn.setPeripheralFaults({ refuseAdvertisements: true });
    await waitFor(() => peripheral.health().state === 'degraded', 'application in, advertisement refused');
    expect(peripheral.error()?.code).toBe('bluez_refused');
    rig.standIn.setPeripheralFaults({});
    await waitFor(() => peripheral.health().state === 'ok', 'registered after the retry');
  });

  it('under a flood of centrals keeps its state bounded and serves a phone that reads after it', async () => {
    const { rig, service, peripheral } = await setup({ maxCentrals: 8 });
    let open: () => void = () => {};
    service.gate = new Promise((resolve) => {
      open = resolve;
    });
    const flood = Array.from({ length: 40 }, () => rig.standIn.connectCentral());
    const calls = flood.flatMap((c) => [
      c.read(CHALLENGE_CHAR_UUID).then(
        () => 'ok',
        (err: { type?: string }) => err.type,
      ),
      c.read(RESULT_CHAR_UUID).then(
        () => 'ok',
        (err: { type?: string }) => err.type,
      ),
      c.read(CHALLENGE_CHAR_UUID).then(
        () => 'ok',
        (err: { type?: string }) => err.type,
      ),
    ]);
    await waitFor(
      () => peripheral.stats().refusedBusy > 0 && peripheral.stats().inFlight === 16,
      'the table full',
    );
    // At most maxCentrals centrals, two calls each, reach the service; the rest are refused at once.
    expect(peripheral.stats().centrals).toBe(8);
    open();
    service.gate = undefined;
    const outcomes = await Promise.all(calls);
    expect(outcomes.filter((o) => o === 'ok').length).toBeLessThanOrEqual(120);
    expect(outcomes.every((o) => o === 'ok' || o === 'org.bluez.Error.InProgress')).toBe(true);
    for (const c of flood) c.disconnect();
    await waitFor(() => peripheral.stats().centrals === 0, 'every central forgotten');
    const phone = rig.standIn.connectCentral({ mtu: 23 });
    expect(text(await phone.read(CHALLENGE_CHAR_UUID))).toContain(phone.address);
    expect(service.held.size).toBe(1);
  });

  it('lets bluetoothctl advertise and register a GATT application with the stand-in', async () => {
    requireTool('bluetoothctl', 'apt-get install bluez');
    const rig = await startBluezRig();
    cleanups.push(() => rig.stop());
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
      await waitFor(() => output.slice(from).includes(expected), `bluetoothctl: ${line} → ${expected}`, {
        detail: () => output.slice(from),
      });
    };

    await waitFor(() => output.includes('Agent registered'), 'bluetoothctl to register its agent');
    await command('advertise on', 'Advertising object registered');
    expect(rig.standIn.advertisements()).toHaveLength(1);
    expect(rig.standIn.advertisements()[0]?.type).toBe('peripheral');
    await command('menu gatt', 'register-application');
    await command('register-service 0x180d', 'Primary (yes/no)');
    await command('yes', '#');
    await command('register-application', 'Application registered');
    expect(rig.standIn.applications()[0]?.services[0]?.uuid).toBe('0000180d-0000-1000-8000-00805f9b34fb');
    await command('unregister-application', 'Application unregistered');
    expect(rig.standIn.applications()).toEqual([]);
    await command('back', 'advertise');
    await command('advertise off', 'Advertising object unregistered');
    expect(rig.standIn.advertisements()).toEqual([]);
    child.stdin.write('quit\n');
  });

  it('registers and serves BlueZ as an unprivileged user under hw/dbus-vehicle-agent-bluez.conf', async () => {
    if (process.getuid?.() !== 0)
      throw new Error('this test runs the peripheral as user nobody and so must run as root');
    const policyFile = await readFile(
      fileURLToPath(new URL('../../hw/dbus-vehicle-agent-bluez.conf', import.meta.url)),
      'utf8',
    );
    const policies = /<busconfig>([\s\S]*)<\/busconfig>/.exec(policyFile)?.[1];
    if (policies === undefined || !policies.includes('user="vehicle-agent"'))
      throw new Error('bad policy file');
    const rig = await startBluezRig({
      worldAccessible: true,
      policies: [SYSTEM_DEFAULTS, policies.replace('user="vehicle-agent"', 'user="nobody"')].join('\n'),
    });
    cleanups.push(() => rig.stop());
    const child = spawn(
      process.execPath,
      [fileURLToPath(new URL('../fixtures/ble-policy-peripheral.mjs', import.meta.url))],
      {
        uid: 65534,
        gid: 65534,
        stdio: ['pipe', 'pipe', 'pipe'],
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', BUS_ADDRESS: rig.bus.address },
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
    await waitFor(() => stdout.includes('\n') || child.exitCode !== null, 'the peripheral to report', {
      detail: () => stderr,
    });
    expect(JSON.parse(stdout)).toMatchObject({ uid: 65534, health: { state: 'ok' }, error: null });
    expect(rig.standIn.advertisements()).toHaveLength(1);
    const central = rig.standIn.connectCentral();
    expect(text(await central.read(CHALLENGE_CHAR_UUID))).toBe(`challenge for ${central.address}`);
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.stdin.end();
    expect(await exited).toBe(0);
    expect(stderr).toBe('');
    // It took both back when it stopped.
    expect(rig.standIn.applications()).toEqual([]);
    expect(rig.standIn.advertisements()).toEqual([]);
  });
});
