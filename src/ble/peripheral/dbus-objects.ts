/**
 * The D-Bus objects of the vehicle's GATT application and advertisement (BlueZ 5.66
 * doc/gatt-api.txt, doc/advertising-api.txt), exported with dbus-next on the agent's own bus
 * connection. They hold no state: every call goes to a `GattCalls` (src/ble/peripheral/peripheral.ts).
 */
import { DBusError, interface as dbusInterface, type MessageBus, Variant } from 'dbus-next';
import type {
  AdvertisementContent,
  AppLayout,
  CharacteristicLayout,
  CharacteristicName,
  VariantLike,
} from './gatt-layout.js';
import { PERIPHERAL_SERVICE_UUID } from './gatt-layout.js';

const Interface = dbusInterface.Interface;
type Interface = InstanceType<typeof Interface>;

export type BluezErrorName =
  | 'Failed'
  | 'InProgress'
  | 'NotPermitted'
  | 'NotAuthorized'
  | 'InvalidOffset'
  | 'InvalidValueLength'
  | 'NotSupported'
  | 'InvalidArguments';

/** An error reply as BlueZ expects it from an application (it maps them to ATT errors). */
export function bluezError(name: BluezErrorName, text: string): DBusError {
  return new DBusError(`org.bluez.Error.${name}`, text);
}

/** What the characteristics delegate to. Rejections must be DBusErrors (bluezError). */
export interface GattCalls {
  readValue(
    name: CharacteristicName,
    options: Readonly<Record<string, VariantLike | undefined>>,
  ): Promise<Buffer>;
  writeValue(
    name: CharacteristicName,
    value: Buffer,
    options: Readonly<Record<string, VariantLike | undefined>>,
  ): Promise<void>;
  startNotify(name: CharacteristicName): void;
  stopNotify(name: CharacteristicName): void;
  /** BlueZ dropped the advertisement (LEAdvertisement1.Release). */
  released(): void;
}

type ManagedObjects = Record<string, Record<string, Record<string, Variant>>>;

class AppObjectManager extends Interface {
  constructor(private readonly objects: () => ManagedObjects) {
    super('org.freedesktop.DBus.ObjectManager');
  }
  GetManagedObjects(): ManagedObjects {
    return this.objects();
  }
  InterfacesAdded(path: string, interfaces: ManagedObjects[string]): [string, ManagedObjects[string]] {
    return [path, interfaces];
  }
  InterfacesRemoved(path: string, interfaces: string[]): [string, string[]] {
    return [path, interfaces];
  }
}
AppObjectManager.configureMembers({
  methods: { GetManagedObjects: { inSignature: '', outSignature: 'a{oa{sa{sv}}}' } },
  signals: { InterfacesAdded: { signature: 'oa{sa{sv}}' }, InterfacesRemoved: { signature: 'oas' } },
});

class GattService1 extends Interface {
  constructor() {
    super('org.bluez.GattService1');
  }
  get UUID(): string {
    return PERIPHERAL_SERVICE_UUID;
  }
  get Primary(): boolean {
    return true;
  }
}
GattService1.configureMembers({
  properties: { UUID: { signature: 's', access: 'read' }, Primary: { signature: 'b', access: 'read' } },
});

export class GattCharacteristic1 extends Interface {
  private notifying = false;

  constructor(
    readonly layout: CharacteristicLayout,
    private readonly servicePath: string,
    private readonly calls: GattCalls,
  ) {
    super('org.bluez.GattCharacteristic1');
  }
  get UUID(): string {
    return this.layout.uuid;
  }
  get Service(): string {
    return this.servicePath;
  }
  get Flags(): string[] {
    return [...this.layout.flags];
  }
  /** Never a connection's value: reads go through ReadValue, per device. */
  get Value(): Buffer {
    return Buffer.alloc(0);
  }
  get Notifying(): boolean {
    return this.notifying;
  }
  ReadValue(options: Record<string, Variant>): Promise<Buffer> {
    return this.calls.readValue(this.layout.name, options);
  }
  WriteValue(value: Buffer, options: Record<string, Variant>): Promise<void> {
    return this.calls.writeValue(this.layout.name, value, options);
  }
  StartNotify(): void {
    if (!this.layout.flags.includes('notify')) throw bluezError('NotSupported', 'Not Supported');
    if (!this.notifying) {
      this.notifying = true;
      Interface.emitPropertiesChanged(this, { Notifying: true }, []);
    }
    this.calls.startNotify(this.layout.name);
  }
  StopNotify(): void {
    if (!this.layout.flags.includes('notify')) throw bluezError('NotSupported', 'Not Supported');
    if (this.notifying) {
      this.notifying = false;
      Interface.emitPropertiesChanged(this, { Notifying: false }, []);
    }
    this.calls.stopNotify(this.layout.name);
  }
  /** A notification: BlueZ sends Value changes to the centrals that enabled the CCCD. */
  notify(bytes: Uint8Array): void {
    Interface.emitPropertiesChanged(this, { Value: Buffer.from(bytes) }, []);
  }
  /** BlueZ forgot every subscription (it restarted, or the adapter went off). */
  resetNotifying(): void {
    this.notifying = false;
  }
  properties(): Record<string, Variant> {
    return {
      UUID: new Variant('s', this.UUID),
      Service: new Variant('o', this.Service),
      Flags: new Variant('as', this.Flags),
    };
  }
}
GattCharacteristic1.configureMembers({
  properties: {
    UUID: { signature: 's', access: 'read' },
    Service: { signature: 'o', access: 'read' },
    Flags: { signature: 'as', access: 'read' },
    Value: { signature: 'ay', access: 'read' },
    Notifying: { signature: 'b', access: 'read' },
  },
  methods: {
    ReadValue: { inSignature: 'a{sv}', outSignature: 'ay' },
    WriteValue: { inSignature: 'aya{sv}', outSignature: '' },
    StartNotify: {},
    StopNotify: {},
  },
});

/** LEAdvertisement1, with LocalName declared only when there is one (BlueZ reads every property). */
function advertisementInterface(content: AdvertisementContent, calls: GattCalls): Interface {
  const localName = content.localName ?? '';
  class LEAdvertisement1 extends Interface {
    constructor() {
      super('org.bluez.LEAdvertisement1');
    }
    get Type(): string {
      return 'peripheral';
    }
    get ServiceUUIDs(): string[] {
      return [...content.serviceUuids];
    }
    get LocalName(): string {
      return localName;
    }
    get Discoverable(): boolean {
      return true;
    }
    Release(): void {
      calls.released();
    }
  }
  LEAdvertisement1.configureMembers({
    properties: {
      Type: { signature: 's', access: 'read' },
      ServiceUUIDs: { signature: 'as', access: 'read' },
      Discoverable: { signature: 'b', access: 'read' },
      ...(localName.length > 0 ? { LocalName: { signature: 's', access: 'read' } } : {}),
    },
    methods: { Release: {} },
  });
  return new LEAdvertisement1();
}

/** The exported objects; `notify` sends a result to subscribed centrals. */
export interface ExportedApp {
  readonly characteristics: ReadonlyMap<CharacteristicName, GattCharacteristic1>;
  unexport(): void;
}

/** Exports the application tree (ObjectManager at the root) and the advertisement on `bus`. */
export function exportApp(
  bus: MessageBus,
  layout: AppLayout,
  advertisement: AdvertisementContent,
  calls: GattCalls,
): ExportedApp {
  const characteristics = new Map<CharacteristicName, GattCharacteristic1>();
  for (const c of layout.characteristics) {
    characteristics.set(c.name, new GattCharacteristic1(c, layout.servicePath, calls));
  }
  const service = new GattService1();
  const managed = (): ManagedObjects => {
    const objects: ManagedObjects = {
      [layout.servicePath]: {
        'org.bluez.GattService1': {
          UUID: new Variant('s', service.UUID),
          Primary: new Variant('b', service.Primary),
        },
      },
    };
    for (const c of characteristics.values()) {
      objects[c.layout.path] = { 'org.bluez.GattCharacteristic1': c.properties() };
    }
    return objects;
  };
  const paths = [
    layout.root,
    layout.servicePath,
    ...layout.characteristics.map((c) => c.path),
    layout.advertisementPath,
  ];
  bus.export(layout.root, new AppObjectManager(managed));
  bus.export(layout.servicePath, service);
  for (const c of characteristics.values()) bus.export(c.layout.path, c);
  bus.export(layout.advertisementPath, advertisementInterface(advertisement, calls));
  return {
    characteristics,
    unexport: () => {
      // dbus-next's typings demand an interface; unexport(path) alone drops the whole object.
      for (const path of paths) Reflect.apply(bus.unexport, bus, [path]);
    },
  };
}
