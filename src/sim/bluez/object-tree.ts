import { type MessageBus, unexportObject, type Variant } from './dbus.js';
import { BluezInterface, configure } from './interfaces.js';

type InterfaceTable = Record<string, Record<string, Variant>>;

/**
 * org.freedesktop.DBus.ObjectManager at `/`, as bluetoothd exports it: bluetoothctl (and any
 * GDBus client) lists adapters, devices and GATT objects from GetManagedObjects and follows
 * InterfacesAdded / InterfacesRemoved.
 */
class ObjectManager1 extends BluezInterface {
  private readonly tree: ObjectTree;

  constructor(tree: ObjectTree) {
    super('org.freedesktop.DBus.ObjectManager');
    this.tree = tree;
  }

  GetManagedObjects(): Record<string, InterfaceTable> {
    return this.tree.managedObjects();
  }

  InterfacesAdded(path: string, interfaces: InterfaceTable): [string, InterfaceTable] {
    return [path, interfaces];
  }

  InterfacesRemoved(path: string, interfaces: string[]): [string, string[]] {
    return [path, interfaces];
  }
}

configure(ObjectManager1, {
  methods: { GetManagedObjects: { inSignature: '', outSignature: 'a{oa{sa{sv}}}' } },
  signals: { InterfacesAdded: { signature: 'oa{sa{sv}}' }, InterfacesRemoved: { signature: 'oas' } },
});

/**
 * The objects the stand-in exports, kept apart from the bus connection so that they survive the
 * connection being dropped (org.bluez name lost) and can be exported again on a new one.
 */
export class ObjectTree {
  private readonly objects = new Map<string, readonly BluezInterface[]>();
  private readonly manager = new ObjectManager1(this);
  private bus: MessageBus | undefined;

  /** Exports the object manager and every object on `bus`. */
  attach(bus: MessageBus): void {
    this.bus = bus;
    bus.export('/', this.manager);
    for (const [path, interfaces] of this.objects) {
      for (const iface of interfaces) bus.export(path, iface);
    }
  }

  /** Forgets the bus (it is being disconnected); objects stay registered. */
  detach(): void {
    const bus = this.bus;
    this.bus = undefined;
    if (bus === undefined) return;
    // dbus-next's unexport(path, iface) drops the whole object after the first interface, so
    // objects are always unexported whole.
    for (const path of this.objects.keys()) unexportObject(bus, path);
    unexportObject(bus, '/');
  }

  has(path: string): boolean {
    return this.objects.has(path);
  }

  /** Exports an object and announces it with InterfacesAdded (unless `announce` is false: a fault). */
  add(path: string, interfaces: readonly BluezInterface[], announce = true): void {
    if (this.objects.has(path)) return;
    this.objects.set(path, interfaces);
    if (this.bus === undefined) return;
    for (const iface of interfaces) this.bus.export(path, iface);
    if (announce) this.manager.InterfacesAdded(path, tableOf(interfaces));
  }

  /** Unexports an object and its children (deepest first) with InterfacesRemoved for each. */
  remove(path: string): void {
    const doomed = [...this.objects.keys()]
      .filter((p) => p === path || p.startsWith(`${path}/`))
      .sort((a, b) => b.length - a.length);
    for (const p of doomed) {
      const interfaces = this.objects.get(p) ?? [];
      this.objects.delete(p);
      if (this.bus === undefined) continue;
      unexportObject(this.bus, p);
      this.manager.InterfacesRemoved(
        p,
        interfaces.map((i) => i.interfaceName),
      );
    }
  }

  managedObjects(): Record<string, InterfaceTable> {
    const out: Record<string, InterfaceTable> = {};
    for (const [path, interfaces] of this.objects) out[path] = tableOf(interfaces);
    return out;
  }
}

function tableOf(interfaces: readonly BluezInterface[]): InterfaceTable {
  const table: InterfaceTable = {};
  for (const iface of interfaces) table[iface.interfaceName] = iface.snapshot();
  return table;
}
