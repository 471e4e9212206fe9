import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CentralTable } from '../../../src/ble/peripheral/central-table.js';
import {
  ANSWER_CHAR_UUID,
  addressOfDevicePath,
  advertisementBytes,
  appLayout,
  CHALLENGE_CHAR_UUID,
  LEGACY_ADVERTISING_BYTES,
  MAX_ADVERTISED_NAME_BYTES,
  PERIPHERAL_SERVICE_UUID,
  parseCallOptions,
  RESULT_CHAR_UUID,
  vehicleAdvertisement,
} from '../../../src/ble/peripheral/gatt-layout.js';
import { loadConfig } from '../../../src/config/load.js';
import { AgentError } from '../../../src/core/errors.js';
import { validateAdvertisement, validateApplication } from '../../../src/sim/bluez/app-validation.js';

const v = (value: unknown) => ({ value });

describe('the GATT layout', () => {
  it('uses the UUIDs of the shared spec (issue 14)', () => {
    expect([PERIPHERAL_SERVICE_UUID, CHALLENGE_CHAR_UUID, ANSWER_CHAR_UUID, RESULT_CHAR_UUID]).toEqual([
      '16b4a5e5-1d72-4bb6-8dc9-8377e988aae2',
      'b808ae76-22bb-4b4f-945f-cae656d66142',
      '4055a9af-e75f-47a0-9537-b5af92636544',
      'f3ffc6a0-648c-4d18-9bd2-0b9e12474ef1',
    ]);
  });

  it('gives challenge read, answer write (never without response), result read and notify', () => {
    const layout = appLayout('/app');
    expect(layout.characteristics.map((c) => [c.name, c.uuid, c.flags, c.path])).toEqual([
      ['challenge', CHALLENGE_CHAR_UUID, ['read'], '/app/service0/char0'],
      ['answer', ANSWER_CHAR_UUID, ['write'], '/app/service0/char1'],
      ['result', RESULT_CHAR_UUID, ['read', 'notify'], '/app/service0/char2'],
    ]);
    // What bluetoothd would accept from it.
    const objects = {
      [layout.servicePath]: {
        'org.bluez.GattService1': { UUID: v(PERIPHERAL_SERVICE_UUID), Primary: v(true) },
      },
      ...Object.fromEntries(
        layout.characteristics.map((c) => [
          c.path,
          {
            'org.bluez.GattCharacteristic1': {
              UUID: v(c.uuid),
              Service: v(layout.servicePath),
              Flags: v(c.flags),
            },
          },
        ]),
      ),
    };
    expect(validateApplication(layout.root, objects)[0]?.characteristics).toHaveLength(3);
  });
});

describe('the advertisement', () => {
  it.each([
    ['no name', '', 21],
    ['a short name', 'Van 7', 28],
    ['the longest name that fits', 'x'.repeat(MAX_ADVERTISED_NAME_BYTES), 31],
  ])('%s takes %s → %i bytes', (_what, name, bytes) => {
    const content = vehicleAdvertisement(name);
    expect(advertisementBytes(content)).toBe(bytes);
    expect(bytes).toBeLessThanOrEqual(LEGACY_ADVERTISING_BYTES);
    // bluetoothd's count agrees.
    const props: Record<string, { value: unknown }> = {
      Type: v('peripheral'),
      ServiceUUIDs: v(content.serviceUuids),
      ...(content.localName === undefined ? {} : { LocalName: v(content.localName) }),
    };
    expect(validateAdvertisement(props, 'adapter').bytes).toBe(bytes);
  });

  it('carries no name unless one is configured', () => {
    expect(vehicleAdvertisement('')).toEqual({ serviceUuids: [PERIPHERAL_SERVICE_UUID] });
  });

  it('refuses a name that would not fit in 31 bytes, counting UTF-8 bytes', () => {
    expect(MAX_ADVERTISED_NAME_BYTES).toBe(8);
    for (const name of ['x'.repeat(9), 'Fahrzeug 1', 'ééééé']) {
      expect(() => vehicleAdvertisement(name)).toThrowError(AgentError);
      try {
        vehicleAdvertisement(name);
      } catch (err) {
        expect((err as AgentError).code).toBe('config_invalid');
      }
    }
  });

  it('is refused by bluetoothd when too long, or of a bad type', () => {
    const long = {
      Type: v('peripheral'),
      ServiceUUIDs: v([PERIPHERAL_SERVICE_UUID]),
      LocalName: v('123456789'),
    };
    expect(() => validateAdvertisement(long, 'a')).toThrow(
      expect.objectContaining({ type: 'org.bluez.Error.InvalidLength' }),
    );
    expect(() => validateAdvertisement({ Type: v('central') }, 'a')).toThrow(
      expect.objectContaining({ type: 'org.bluez.Error.InvalidArguments' }),
    );
  });
});

describe("BlueZ's call options", () => {
  const device = '/org/bluez/hci0/dev_4A_11_22_33_44_55';
  it.each([
    [
      { device: v(device), offset: v(22), mtu: v(23) },
      { device, address: '4A:11:22:33:44:55', offset: 22, mtu: 23 },
    ],
    [{ device: v(device) }, { device, offset: 0, mtu: undefined }],
    [{ device: v(device), mtu: v(9000) }, { mtu: undefined }],
    [{ device: v(device), type: v('request') }, { type: 'request' }],
  ])('%j → %j', (options, expected) => {
    expect(parseCallOptions(options)).toMatchObject(expected);
  });

  it.each([
    [{}, 'no device option'],
    [{ device: v('/org/bluez/hci0') }, 'device is not a BlueZ device path'],
    [{ device: v('/org/bluez/hci0/dev_4A_11_22_33_44_55/service0') }, 'device is not a BlueZ device path'],
    [{ device: v(device), offset: v(-1) }, 'bad offset'],
    [{ device: v(device), offset: v(70000) }, 'bad offset'],
    [{ device: v(device), offset: v('0') }, 'bad offset'],
  ])('refuses %j (%s)', (options, reason) => {
    expect(parseCallOptions(options)).toEqual({ refused: 'InvalidArguments', reason });
  });

  it('reads the address of a device path and nothing else', () => {
    expect(addressOfDevicePath(device)).toBe('4A:11:22:33:44:55');
    fc.assert(
      fc.property(fc.string(), (path) => {
        const address = addressOfDevicePath(path);
        return address === undefined || /^([0-9A-F]{2}:){5}[0-9A-F]{2}$/.test(address);
      }),
    );
  });
});

describe('the central table', () => {
  const dev = (n: number) =>
    `/org/bluez/hci0/dev_00_00_00_00_00_${n.toString(16).padStart(2, '0').toUpperCase()}`;

  it('admits at most maxInFlightPerCentral calls of one central', () => {
    const table = new CentralTable({ maxCentrals: 4, maxInFlightPerCentral: 2 });
    expect(table.begin(dev(1), 'a', 23).admitted).toBe(true);
    expect(table.begin(dev(1), 'a', 23).admitted).toBe(true);
    expect(table.begin(dev(1), 'a', 23)).toEqual({ admitted: false, reason: 'central_busy' });
    table.finish(dev(1));
    expect(table.begin(dev(1), 'a', 23).admitted).toBe(true);
  });

  it('evicts the least recently active idle central when full, and refuses when all are busy', () => {
    const table = new CentralTable({ maxCentrals: 2, maxInFlightPerCentral: 1 });
    table.begin(dev(1), 'a', undefined);
    table.finish(dev(1));
    table.begin(dev(2), 'b', undefined);
    table.finish(dev(2));
    table.begin(dev(1), 'a', undefined); // 1 is now the most recent, and busy
    const third = table.begin(dev(3), 'c', undefined);
    expect(third).toMatchObject({ admitted: true, evicted: [{ device: dev(2) }] });
    expect(table.begin(dev(4), 'd', undefined)).toEqual({ admitted: false, reason: 'table_full' });
    expect(table.size).toBe(2);
  });

  it('stays within its bounds whatever the calls (property)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.constantFrom('begin', 'finish', 'remove'), fc.integer({ min: 0, max: 20 })), {
          maxLength: 300,
        }),
        (ops) => {
          const table = new CentralTable({ maxCentrals: 5, maxInFlightPerCentral: 2 });
          for (const [op, n] of ops) {
            if (op === 'begin') {
              const admission = table.begin(dev(n), String(n), undefined);
              if (admission.admitted) table.remember(dev(n), 'challenge', Uint8Array.of(n));
            } else if (op === 'finish') table.finish(dev(n));
            else table.remove(dev(n));
            if (table.size > 5 || table.inFlight() > 10) return false;
          }
          return true;
        },
      ),
    );
  });

  it('forgets a removed central’s values', () => {
    const table = new CentralTable({ maxCentrals: 2, maxInFlightPerCentral: 1 });
    table.begin(dev(1), 'a', undefined);
    table.remember(dev(1), 'challenge', Uint8Array.of(1, 2));
    expect(table.recalled(dev(1), 'challenge')).toEqual(Uint8Array.of(1, 2));
    expect(table.remove(dev(1))?.device).toBe(dev(1));
    expect(table.recalled(dev(1), 'challenge')).toBeUndefined();
  });
});

describe("bluetoothd's judgement of an application", () => {
  const service = { 'org.bluez.GattService1': { UUID: v('180d'), Primary: v(true) } };
  const chrc = (flags: unknown, servicePath = '/a/s') => ({
    'org.bluez.GattCharacteristic1': { UUID: v('2a37'), Service: v(servicePath), Flags: v(flags) },
  });
  it.each([
    ['no service', {}, 'No valid service object found'],
    ['a bad flag', { '/a/s': service, '/a/s/c': chrc(['read', 'fly']) }, 'Invalid characteristic flags'],
    ['no flags', { '/a/s': service, '/a/s/c': chrc([]) }, 'Invalid characteristic flags'],
    ['an unknown service', { '/a/s': service, '/a/s/c': chrc(['read'], '/b/s') }, 'names no service'],
    ['no Primary', { '/a/s': { 'org.bluez.GattService1': { UUID: v('180d') } } }, 'Primary'],
    ['a service outside the root only', { '/b/s': service }, 'No valid service object found'],
  ])('refuses %s', (_what, objects, message) => {
    expect(() => validateApplication('/a', objects)).toThrow(
      expect.objectContaining({ text: expect.stringContaining(message) }),
    );
  });
});

describe('config ble.mode and ble.peripheral', () => {
  const load = (env: Record<string, string>) => loadConfig({ env, cwd: '/tmp' }).config.ble;
  it('defaults to both roles and no advertised name', () => {
    expect(load({}).mode).toBe('both');
    expect(load({}).peripheral.advertisedName).toBeUndefined();
  });
  it.each(['Van 7', '12345678'])('takes the name %j', (name) => {
    expect(load({ VEHICLE_AGENT_BLE__PERIPHERAL__ADVERTISED_NAME: name }).peripheral.advertisedName).toBe(
      name,
    );
  });
  it.each(['123456789', 'Fahrzeug 1', 'Bü'])('refuses the name %j as config_invalid', (name) => {
    expect(() => load({ VEHICLE_AGENT_BLE__PERIPHERAL__ADVERTISED_NAME: name })).toThrow(
      expect.objectContaining({ code: 'config_invalid' }),
    );
  });
  it('refuses an unknown mode', () => {
    expect(() => load({ VEHICLE_AGENT_BLE__MODE: 'observer' })).toThrow(
      expect.objectContaining({ code: 'config_invalid' }),
    );
  });
});

describe('hw/bluetooth-main.conf', () => {
  it('sets what the peripheral role needs, each key in its main.conf section', () => {
    const text = readFileSync(new URL('../../../hw/bluetooth-main.conf', import.meta.url), 'utf8');
    const settings: Record<string, string> = {};
    let section = '';
    for (const line of text.split('\n')) {
      const trimmed = line.trim();
      if (trimmed === '' || trimmed.startsWith('#')) continue;
      const header = /^\[(\w+)\]$/.exec(trimmed);
      if (header?.[1] !== undefined) {
        section = header[1];
        continue;
      }
      const pair = /^(\w+)\s*=\s*(\S+)$/.exec(trimmed);
      if (pair?.[1] === undefined || pair[2] === undefined) throw new Error(`not a main.conf line: ${line}`);
      settings[`${section}.${pair[1]}`] = pair[2];
    }
    expect(settings).toEqual({
      'General.ControllerMode': 'le',
      'General.Privacy': 'device',
      'General.JustWorksRepairing': 'never',
      'Policy.AutoEnable': 'true',
    });
  });
});
