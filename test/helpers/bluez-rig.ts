import { silentLogger } from '../../src/core/logger.js';
import type { GattPeer } from '../../src/sim/ble/gatt-peer.js';
import { startBluezStandIn } from '../../src/sim/bluez/index.js';
import type { AdapterSpec, BluezStandIn } from '../../src/sim/bluez/types.js';
import { type PrivateDbus, type PrivateDbusOptions, startPrivateDbus } from '../../src/sim/dbus-daemon.js';
import { requireTool } from './processes.js';
import { waitFor } from './wait.js';

/** UUIDs for link tests (any 128-bit UUIDs will do; the protocol defines the real ones). */
export const TEST_UUIDS = {
  service: '8f1e0001-5c1b-4c2a-9d4e-6a1f0e7b2c01',
  write: '8f1e0002-5c1b-4c2a-9d4e-6a1f0e7b2c01',
  notify: '8f1e0003-5c1b-4c2a-9d4e-6a1f0e7b2c01',
} as const;

/** A private dbus-daemon with the BlueZ stand-in owning org.bluez on it. */
export interface BluezRig {
  readonly bus: PrivateDbus;
  readonly standIn: BluezStandIn;
  /** Stops the stand-in and ends the daemon by PID. */
  stop(): Promise<void>;
}

export async function startBluezRig(
  options: { adapter?: AdapterSpec } & PrivateDbusOptions = {},
): Promise<BluezRig> {
  requireTool('dbus-daemon', 'apt-get install dbus');
  const { adapter: _, ...busOptions } = options;
  const bus = await startPrivateDbus(busOptions);
  try {
    const standIn = await startBluezStandIn({
      busAddress: bus.address,
      logger: silentLogger,
      ...(options.adapter === undefined ? {} : { adapter: options.adapter }),
    });
    return {
      bus,
      standIn,
      stop: async () => {
        await standIn.stop();
        await bus.stop();
      },
    };
  } catch (err) {
    await bus.stop();
    throw err;
  }
}

export interface EchoPeer extends GattPeer {
  readonly writes: Uint8Array[];
  subscribed: boolean;
  disconnects: number;
}

/** A GATT peer that notifies back every write, byte for byte. */
export function echoPeer(): EchoPeer {
  const peer: EchoPeer = {
    writes: [],
    subscribed: false,
    disconnects: 0,
    notify: () => {},
    onWrite(bytes) {
      peer.writes.push(bytes);
      peer.notify(bytes);
    },
    onSubscribe(subscribed) {
      peer.subscribed = subscribed;
    },
    onDisconnect() {
      peer.disconnects += 1;
    },
  };
  return peer;
}

export { waitFor };
