import { controlRequest } from '../../src/cli/control-client.js';

/**
 * The vehicle side of the phone-key web app's Bluetooth traffic, as the spec's simulated central
 * sees it (issue 14): one `device` per GATT connection, reads of challenge and result, writes of
 * answer. The browser tests bridge the page's simulated GATT events to one of these.
 */
export interface SimulatedCentral {
  connect(): Promise<string>;
  read(device: string, characteristic: 'challenge' | 'result'): Promise<Uint8Array>;
  /** Rejects when the vehicle refuses the write at the ATT level (malformed, too large, …). */
  write(device: string, characteristic: 'answer', bytes: Uint8Array): Promise<void>;
  disconnect(device: string): Promise<void>;
}

/**
 * The agent's real peripheral through its control socket (sim mode): the `sim.central.*`
 * commands drive the BlueZ stand-in's simulated central, which calls the agent's GATT
 * application exactly as bluetoothd would.
 */
export function controlSocketCentral(socketPath: string): SimulatedCentral {
  const call = (cmd: string, args: Record<string, unknown>) => controlRequest(socketPath, cmd, args);
  return {
    connect: async () => {
      const r = (await call('sim.central.connect', {})) as { device?: unknown };
      if (typeof r?.device !== 'string') throw new Error('sim.central.connect gave no device');
      return r.device;
    },
    read: async (device, characteristic) => {
      const r = (await call('sim.central.read', { device, characteristic })) as { hex?: unknown };
      if (typeof r?.hex !== 'string') throw new Error('sim.central.read gave no hex');
      return new Uint8Array(Buffer.from(r.hex, 'hex'));
    },
    write: async (device, characteristic, bytes) => {
      await call('sim.central.write', { device, characteristic, hex: Buffer.from(bytes).toString('hex') });
    },
    disconnect: async (device) => {
      await call('sim.central.disconnect', { device });
    },
  };
}
