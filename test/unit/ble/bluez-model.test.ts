import { describe, expect, it } from 'vitest';
import {
  addressFromPath,
  changedBoolean,
  DeviceTable,
  devicePath,
  hasAdapter,
} from '../../../src/ble/bluez-model.js';

const ADAPTER = '/org/bluez/hci0';
const PATH = '/org/bluez/hci0/dev_AA_BB_CC_DD_EE_01';
const SERVICE = '8F1E0001-5C1B-4C2A-9D4E-6A1F0E7B2C01';

/** D-Bus variants as dbus-next delivers them. */
const v = (signature: string, value: unknown) => ({ signature, value });

function deviceInterfaces(extra: Record<string, unknown> = {}) {
  return {
    'org.freedesktop.DBus.Properties': {},
    'org.bluez.Device1': {
      Address: v('s', 'AA:BB:CC:DD:EE:01'),
      Name: v('s', 'Phone'),
      RSSI: v('n', -55),
      UUIDs: v('as', [SERVICE]),
      Connected: v('b', false),
      ServicesResolved: v('b', false),
      ...extra,
    },
  };
}

describe('device paths', () => {
  it('maps addresses to object paths and back', () => {
    expect(devicePath(ADAPTER, 'aa:bb:cc:dd:ee:01')).toBe(PATH);
    expect(addressFromPath(ADAPTER, PATH)).toBe('AA:BB:CC:DD:EE:01');
  });

  it('ignores children, other adapters and odd names', () => {
    expect(addressFromPath(ADAPTER, `${PATH}/service000a`)).toBeUndefined();
    expect(addressFromPath(ADAPTER, '/org/bluez/hci1/dev_AA_BB_CC_DD_EE_01')).toBeUndefined();
    expect(addressFromPath(ADAPTER, '/org/bluez/hci0/dev_AA_BB')).toBeUndefined();
    expect(addressFromPath(ADAPTER, ADAPTER)).toBeUndefined();
  });
});

describe('DeviceTable', () => {
  it('records a device from InterfacesAdded with lower-case UUIDs', () => {
    const table = new DeviceTable(ADAPTER);
    const device = table.added(PATH, deviceInterfaces());
    expect(device).toEqual({
      path: PATH,
      address: 'AA:BB:CC:DD:EE:01',
      name: 'Phone',
      rssi: -55,
      uuids: [SERVICE.toLowerCase()],
      connected: false,
      servicesResolved: false,
    });
    expect(table.byAddress('aa:bb:cc:dd:ee:01')).toBe(device);
  });

  it('ignores objects that are not devices of this adapter', () => {
    const table = new DeviceTable(ADAPTER);
    expect(table.added(`${PATH}/service000a`, { 'org.bluez.GattService1': {} })).toBeUndefined();
    expect(table.added(PATH, { 'org.bluez.GattService1': {} })).toBeUndefined();
    expect(table.added(PATH, 'garbage')).toBeUndefined();
    expect(table.size).toBe(0);
  });

  it('tolerates a device without RSSI or with wrongly typed values', () => {
    const table = new DeviceTable(ADAPTER);
    const device = table.added(PATH, {
      'org.bluez.Device1': { RSSI: v('s', 'loud'), UUIDs: v('s', 'x'), Connected: v('n', 1) },
    });
    expect(device).toMatchObject({
      address: 'AA:BB:CC:DD:EE:01',
      rssi: undefined,
      uuids: [],
      connected: false,
    });
  });

  it('turns RSSI changes into sightings and tracks the link', () => {
    const table = new DeviceTable(ADAPTER);
    table.added(PATH, deviceInterfaces());
    const sighting = table.changed(PATH, 'org.bluez.Device1', { RSSI: v('n', -48) });
    expect(sighting).toMatchObject({ sighted: true, connected: undefined });
    expect(table.get(PATH)?.rssi).toBe(-48);

    const link = table.changed(PATH, 'org.bluez.Device1', {
      Connected: v('b', true),
      ServicesResolved: v('b', true),
    });
    expect(link).toMatchObject({ sighted: false, connected: true, servicesResolved: true });
    expect(table.get(PATH)).toMatchObject({ connected: true, servicesResolved: true });

    table.changed(PATH, 'org.bluez.Device1', {}, ['RSSI']);
    expect(table.get(PATH)?.rssi).toBeUndefined();
  });

  it('ignores changes on other interfaces and unknown paths', () => {
    const table = new DeviceTable(ADAPTER);
    table.added(PATH, deviceInterfaces());
    expect(table.changed(PATH, 'org.bluez.GattCharacteristic1', { Value: v('ay', []) })).toBeUndefined();
    expect(table.changed(`${ADAPTER}/dev_00_00_00_00_00_00`, 'org.bluez.Device1', {})).toBeUndefined();
  });

  it('forgets a device when Device1 is removed, not for other interfaces', () => {
    const table = new DeviceTable(ADAPTER);
    table.added(PATH, deviceInterfaces());
    expect(table.removed(PATH, ['org.bluez.GattService1'])).toBeUndefined();
    expect(table.removed(PATH, ['org.freedesktop.DBus.Properties', 'org.bluez.Device1'])?.address).toBe(
      'AA:BB:CC:DD:EE:01',
    );
    expect(table.size).toBe(0);
  });

  it('seeds from GetManagedObjects', () => {
    const table = new DeviceTable(ADAPTER);
    table.seed({
      '/org/bluez': { 'org.bluez.AgentManager1': {} },
      [ADAPTER]: { 'org.bluez.Adapter1': { Powered: v('b', true) } },
      [PATH]: deviceInterfaces({ Connected: v('b', true) }),
      [`${PATH}/service000a`]: { 'org.bluez.GattService1': {} },
    });
    expect(table.size).toBe(1);
    expect(table.get(PATH)?.connected).toBe(true);
  });
});

describe('adapter helpers', () => {
  it('reads Adapter1 presence and changed booleans', () => {
    expect(hasAdapter({ 'org.bluez.Adapter1': {} })).toBe(true);
    expect(hasAdapter({ 'org.bluez.Device1': {} })).toBe(false);
    expect(changedBoolean({ Powered: v('b', false) }, 'Powered')).toBe(false);
    expect(changedBoolean({ Powered: v('s', 'off') }, 'Powered')).toBeUndefined();
    expect(changedBoolean(null, 'Powered')).toBeUndefined();
  });
});

describe('GATT objects of a connected device', () => {
  const WRITE = '8f1e0002-5c1b-4c2a-9d4e-6a1f0e7b2c01';
  const NOTIFY = '8f1e0003-5c1b-4c2a-9d4e-6a1f0e7b2c01';
  const service = `${PATH}/service000a`;
  const char = (uuid: string, extra: Record<string, unknown> = {}) => ({
    'org.bluez.GattCharacteristic1': { UUID: v('s', uuid), Service: v('o', service), ...extra },
  });

  it('resolves the service and both characteristics from InterfacesAdded, with the MTU', () => {
    const table = new DeviceTable(ADAPTER);
    table.added(PATH, deviceInterfaces());
    expect(table.gatt(PATH, SERVICE, WRITE, NOTIFY)).toBeUndefined();
    table.added(service, { 'org.bluez.GattService1': { UUID: v('s', SERVICE), Device: v('o', PATH) } });
    table.added(`${service}/char000b`, char(WRITE.toUpperCase(), { MTU: v('q', 247) }));
    expect(table.gatt(PATH, SERVICE, WRITE, NOTIFY)).toBeUndefined();
    table.added(`${service}/char000d`, char(NOTIFY));
    expect(table.gatt(PATH, SERVICE.toLowerCase(), WRITE, NOTIFY)).toEqual({
      servicePath: service,
      writePath: `${service}/char000b`,
      notifyPath: `${service}/char000d`,
      mtu: 247,
    });
    // Another device's service with the same UUID is not this device's.
    expect(table.gatt(`${ADAPTER}/dev_AA_BB_CC_DD_EE_02`, SERVICE, WRITE, NOTIFY)).toBeUndefined();
  });

  it('forgets them when BlueZ removes them (disconnect) and on a re-seed', () => {
    const table = new DeviceTable(ADAPTER);
    const objects = {
      [PATH]: deviceInterfaces({ Connected: v('b', true) }),
      [service]: { 'org.bluez.GattService1': { UUID: v('s', SERVICE) } },
      [`${service}/char000b`]: char(WRITE),
      [`${service}/char000d`]: char(NOTIFY),
    };
    table.seed(objects);
    expect(table.gatt(PATH, SERVICE, WRITE, NOTIFY)?.mtu).toBeUndefined();
    table.removed(`${service}/char000d`, ['org.bluez.GattCharacteristic1']);
    expect(table.gatt(PATH, SERVICE, WRITE, NOTIFY)).toBeUndefined();
    table.seed(objects);
    expect(table.gatt(PATH, SERVICE, WRITE, NOTIFY)).toBeDefined();
    table.seed({});
    expect(table.gatt(PATH, SERVICE, WRITE, NOTIFY)).toBeUndefined();
  });
});

describe('DeviceTable bounds', () => {
  const WRITE = '8f1e0002-5c1b-4c2a-9d4e-6a1f0e7b2c01';
  const path = (i: number) =>
    `${ADAPTER}/dev_C0_00_00_00_00_${i.toString(16).padStart(2, '0').toUpperCase()}`;
  const withGatt = (table: DeviceTable, device: string) => {
    table.added(`${device}/service000a`, { 'org.bluez.GattService1': { UUID: v('s', SERVICE) } });
    table.added(`${device}/service000a/char000b`, {
      'org.bluez.GattCharacteristic1': { UUID: v('s', WRITE) },
    });
  };

  it('lists devices from the least to the most recently heard', () => {
    const table = new DeviceTable(ADAPTER);
    for (const i of [1, 2, 3]) table.added(path(i), deviceInterfaces());
    table.changed(path(1), 'org.bluez.Device1', { RSSI: v('n', -40) });
    // A change without an advertisement (a name) does not make a device recent.
    table.changed(path(2), 'org.bluez.Device1', { Name: v('s', 'x') });
    expect([...table.stalestFirst()].map((d) => d.path)).toEqual([path(2), path(3), path(1)]);
    // Announced again: recent too.
    table.added(path(2), deviceInterfaces());
    expect([...table.stalestFirst()].map((d) => d.path)).toEqual([path(3), path(1), path(2)]);
  });

  it.each([
    ['forgotten (the table was full)', (t: DeviceTable) => t.forget(path(1))],
    [
      'removed by BlueZ without a word about its GATT objects',
      (t: DeviceTable) => t.removed(path(1), ['org.bluez.Device1']),
    ],
  ])('drops a device and its GATT objects when %s', (_, drop) => {
    const table = new DeviceTable(ADAPTER);
    table.added(path(1), deviceInterfaces({ Connected: v('b', true) }));
    table.added(path(2), deviceInterfaces({ Connected: v('b', true) }));
    withGatt(table, path(1));
    withGatt(table, path(2));
    expect(table.attributes).toBe(4);
    expect(drop(table)?.path).toBe(path(1));
    expect(table.size).toBe(1);
    expect(table.attributes).toBe(2);
    expect(table.get(path(1))).toBeUndefined();
    expect(table.forget(path(1))).toBeUndefined();
  });
});
