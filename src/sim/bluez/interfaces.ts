import {
  type MethodOptions,
  type PropertyOptions,
  ServiceInterface,
  type SignalOptions,
  Variant,
} from './dbus.js';

/** Members of one exported interface, as dbus-next's configureMembers takes them. */
export interface Members {
  readonly properties?: Readonly<Record<string, { signature: string; access?: 'read' | 'readwrite' }>>;
  readonly methods?: Readonly<Record<string, MethodOptions>>;
  readonly signals?: Readonly<Record<string, SignalOptions>>;
}

/**
 * Base of every stand-in interface: knows its property signatures, so the object manager can
 * list current values (GetManagedObjects, InterfacesAdded) without a second description.
 */
export abstract class BluezInterface extends ServiceInterface {
  /** The interface name, e.g. org.bluez.Device1. */
  readonly interfaceName: string;

  constructor(name: string) {
    super(name);
    this.interfaceName = name;
  }

  /** Signatures of this interface's properties (set by `configure`). */
  private propertySignatures(): Readonly<Record<string, string>> {
    const signatures: unknown = Reflect.get(Object.getPrototypeOf(this), PROPERTY_SIGNATURES);
    return isSignatureTable(signatures) ? signatures : {};
  }

  /** Every property's current value, as variants. */
  snapshot(): Record<string, Variant> {
    const out: Record<string, Variant> = {};
    for (const [name, signature] of Object.entries(this.propertySignatures())) {
      out[name] = new Variant(signature, Reflect.get(this, name));
    }
    return out;
  }

  /** Emits org.freedesktop.DBus.Properties.PropertiesChanged for the given properties. */
  changed(values: Readonly<Record<string, unknown>>): void {
    ServiceInterface.emitPropertiesChanged(this, values, []);
  }
}

const PROPERTY_SIGNATURES = Symbol('propertySignatures');

function isSignatureTable(value: unknown): value is Readonly<Record<string, string>> {
  return typeof value === 'object' && value !== null;
}

/**
 * Declares the D-Bus members of an interface class (dbus-next without decorators). Property
 * getters (and setters for readwrite ones) and methods must be defined on the class.
 */
export function configure(
  klass: { configureMembers: typeof ServiceInterface.configureMembers; prototype: BluezInterface },
  members: Members,
): void {
  const properties: Record<string, PropertyOptions> = {};
  const signatures: Record<string, string> = {};
  for (const [name, options] of Object.entries(members.properties ?? {})) {
    properties[name] = { signature: options.signature, access: options.access ?? 'read' };
    signatures[name] = options.signature;
  }
  const methods: Record<string, MethodOptions> = {};
  for (const [name, options] of Object.entries(members.methods ?? {})) methods[name] = { ...options };
  const signals: Record<string, SignalOptions> = {};
  for (const [name, options] of Object.entries(members.signals ?? {})) signals[name] = { ...options };
  klass.configureMembers({ properties, methods, signals });
  Reflect.set(klass.prototype, PROPERTY_SIGNATURES, signatures);
}
