import { afterEach, describe, expect, it } from 'vitest';
import type { CredentialReader, ReaderContext } from '../../src/agent/reader.js';
import { setupBle } from '../../src/app/ble.js';
import { loadConfig } from '../../src/config/load.js';
import type { Clock } from '../../src/core/clock.js';
import { AgentError } from '../../src/core/errors.js';
import { silentLogger } from '../../src/core/logger.js';
import type { ControlHandler } from '../../src/host/control-server.js';
import { type FakePhoneKeyService, fakePhoneKeyService } from '../helpers/fake-phone-key-service.js';
import { requireTool } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

let cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups = [];
});

const systemClock: Clock = { now: () => Date.now(), monotonic: () => performance.now() };

/** Only what the setup reads of the reader context before the service (a fake here) uses it. */
const context = { vehicleId: 'V-TEST', clock: systemClock, log: silentLogger } as unknown as ReaderContext;

async function simBle(
  mode: 'peripheral' | 'both' | 'central',
  service?: FakePhoneKeyService | (() => never),
) {
  requireTool('dbus-daemon', 'apt-get install dbus');
  const { config } = loadConfig({
    env: { VEHICLE_AGENT_BLE__DRIVER: 'sim', VEHICLE_AGENT_BLE__MODE: mode },
    cwd: '/tmp',
  });
  const setup = await setupBle({
    config,
    vehicleId: 'V-TEST',
    keyring: { lookup: () => undefined } as never,
    clock: systemClock,
    log: silentLogger,
    signOp: () => 'a.b.c',
    agent: () => ({ addKeyringOps: async () => ({}) as never, audit: () => {} }),
    lockState: () => 'locked',
    vehicleSpki: new Uint8Array(91),
    ...(service === undefined
      ? {}
      : { phoneKeyService: typeof service === 'function' ? service : () => service }),
  });
  cleanups.push(async () => {
    for (const reader of setup.readers) await reader.stop();
    await setup.stop();
  });
  for (const reader of setup.readers) await reader.start(context);
  const call = async (name: string, args: Record<string, unknown> = {}): Promise<unknown> => {
    const handler: ControlHandler | undefined = setup.handlers.get(name);
    if (handler === undefined) throw new Error(`no handler ${name}`);
    return handler(args);
  };
  const reader = (id: string): CredentialReader | undefined => setup.readers.find((r) => r.id === id);
  return { setup, call, reader };
}

async function refusal(promise: Promise<unknown>): Promise<AgentError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw err;
  }
  throw new Error('expected a refusal');
}

describe('ble.mode and the simulated central (sim mode, in process)', () => {
  it('drives the peripheral through sim.central.connect / read / write / disconnect', async () => {
    const service = fakePhoneKeyService();
    const { call, reader, setup } = await simBle('peripheral', service);
    expect(setup.readers.map((r) => r.id)).toEqual(['ble-peripheral']);
    await waitFor(() => reader('ble-peripheral')?.health().state === 'ok', 'the peripheral registered');
    expect(reader('ble-peripheral')?.health().detail).toBe('advertising on hci0');

    const { device } = (await call('sim.central.connect')) as { device: string };
    expect(device).toMatch(/^\/org\/bluez\/hci0\/dev_/);
    const { hex } = (await call('sim.central.read', { device, characteristic: 'challenge' })) as {
      hex: string;
    };
    expect(Buffer.from(hex, 'hex').toString('ascii')).toBe(
      Buffer.from(service.reads[0]?.value ?? []).toString('ascii'),
    );
    expect(service.reads[0]?.central.device).toBe(device);

    expect(await call('sim.central.write', { device, characteristic: 'answer', hex: '022201' })).toEqual({});
    expect([...(service.writes[0]?.bytes ?? [])]).toEqual([0x02, 0x22, 0x01]);
    expect(await call('sim.central.read', { device, characteristic: 'result' })).toEqual({ hex: '022201' });

    const malformed = await refusal(
      call('sim.central.write', { device, characteristic: 'answer', hex: 'ff00' }),
    );
    expect(malformed.code).toBe('malformed');
    const bad = await refusal(call('sim.central.write', { device, characteristic: 'answer', hex: 'xyz' }));
    expect(bad.code).toBe('bad_arguments');

    expect(await call('sim.central.disconnect', { device })).toEqual({});
    await waitFor(() => service.disconnects.length === 1, 'the service told');
    const gone = await refusal(call('sim.central.read', { device, characteristic: 'challenge' }));
    expect(gone.code).toBe('not_found');

    const status = (await call('ble.status')) as Record<string, unknown>;
    expect(status).toMatchObject({
      roles: { central: false, peripheral: true },
      peripheral: { health: { state: 'ok' }, stats: { reads: 2, writes: 2, refusedBusy: 0 } },
    });
  });

  it('runs the central and the peripheral on one stand-in in mode both', async () => {
    const service = fakePhoneKeyService();
    const { call, reader, setup } = await simBle('both', service);
    expect(setup.readers.map((r) => r.id)).toEqual(['ble0', 'ble-peripheral']);
    await waitFor(() => reader('ble-peripheral')?.health().state === 'ok', 'the peripheral registered');
    await waitFor(() => reader('ble0')?.health().state === 'ok', 'the central up');
    const { device } = (await call('sim.central.connect')) as { device: string };
    expect(await call('sim.central.read', { device, characteristic: 'challenge' })).toHaveProperty('hex');
    // bluetoothd restarts: the peripheral registers again by itself.
    await call('sim.ble.bluez', { owned: false });
    await waitFor(() => reader('ble-peripheral')?.health().state === 'down', 'down while bluetoothd is away');
    await call('sim.ble.bluez', { owned: true });
    await waitFor(() => reader('ble-peripheral')?.health().state === 'ok', 'registered again');
    const again = (await call('sim.central.connect')) as { device: string };
    expect(
      await call('sim.central.read', { device: again.device, characteristic: 'challenge' }),
    ).toHaveProperty('hex');
  });

  it('leaves the peripheral down, saying why, when the phone-key service cannot start', async () => {
    const { call, reader } = await simBle('peripheral', () => {
      throw new AgentError('state_io', 'the service could not start');
    });
    await waitFor(() => reader('ble-peripheral')?.health().detail?.startsWith('state_io:') === true, 'down');
    expect(reader('ble-peripheral')?.health().state).toBe('down');
    const refused = await refusal(call('sim.central.connect'));
    expect(refused.code).toBe('reader_error');
  });

  it('runs the central and the peripheral in mode both with the built-in phone-key service', async () => {
    const { setup } = await simBle('both');
    expect(setup.readers.map((r) => r.id)).toEqual(['ble0', 'ble-peripheral']);
    expect(setup.handlers.has('sim.central.connect')).toBe(true);
  });

  it('has no peripheral and no sim.central commands in mode central', async () => {
    const { setup } = await simBle('central');
    expect(setup.readers.map((r) => r.id)).toEqual(['ble0']);
    expect(setup.handlers.has('sim.central.connect')).toBe(false);
  });
});
