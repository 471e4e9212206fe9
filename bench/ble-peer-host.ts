import { KEY_TO_VEHICLE_UUID, SERVICE_UUID, VEHICLE_TO_KEY_UUID } from '../src/ble/protocol/constants.js';
import { silentLogger } from '../src/core/logger.js';
import { fromB64url } from '../src/crypto/encoding.js';
import { PhoneKey, type PinnedVehicle } from '../src/sim/ble/phone.js';
import { PhonePeer } from '../src/sim/ble/phone-peer.js';
import { startBluezStandIn } from '../src/sim/bluez/index.js';
import type { BluezStandIn, LinkDelays, StandInEvent } from '../src/sim/bluez/types.js';

/**
 * Forked by bench/ble.ts: the BlueZ stand-in and the simulated phones in a process of their own,
 * as bluetoothd and the phone are on a vehicle, so the agent's process does only the agent's work.
 * Times are process.hrtime (CLOCK_MONOTONIC, shared by both processes), in ns as strings.
 */

export type HostRequest =
  | { readonly type: 'start'; readonly busAddress: string }
  | {
      readonly type: 'approach';
      readonly id: number;
      readonly address: string;
      readonly secretKey: string;
      readonly pin: PinnedVehicle;
      /** Modelled radio time per call (LinkDelays): the bench subtracts it. */
      readonly delays: LinkDelays;
    }
  | { readonly type: 'stop' };

export interface ApproachReport {
  readonly type: 'done';
  readonly id: number;
  /** The stand-in exported the device (its advertisement was seen). */
  readonly seenAt: string;
  /**
   * Every connect, write and notification on the air, with the time it completed and the time the
   * device had spent in modelled radio delays up to then (nominal delays plus timer lateness).
   */
  readonly events: readonly {
    readonly type: 'connected' | 'write' | 'notify';
    readonly at: string;
    readonly waitedMs: number;
  }[];
  /** Time the phone spent in its own code (decoding, signing with noble). */
  readonly phoneMs: number;
  /** D-Bus method calls on the device's objects and on the adapter, during this approach. */
  readonly deviceCalls: Readonly<Record<string, number>>;
  readonly adapterCalls: Readonly<Record<string, number>>;
}

export type HostReply =
  | { readonly type: 'ready' }
  | ApproachReport
  | { readonly type: 'error'; readonly message: string };

let standIn: BluezStandIn | undefined;

function send(reply: HostReply): void {
  process.send?.(reply);
}

function diff(after: Readonly<Record<string, number>>, before: Readonly<Record<string, number>>) {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) {
    const d = v - (before[k] ?? 0);
    if (d > 0) out[k] = d;
  }
  return out;
}

function approach(host: BluezStandIn, request: Extract<HostRequest, { type: 'approach' }>): void {
  const phone = new PhoneKey({ secretKey: fromB64url(request.secretKey), vehicles: [request.pin] });
  let phoneMs = 0;
  const receive = phone.receive.bind(phone);
  phone.receive = (message) => {
    const t0 = performance.now();
    try {
      return receive(message);
    } finally {
      phoneMs += performance.now() - t0;
    }
  };
  const peer = new PhonePeer(phone);
  const address = request.address.toUpperCase();
  const adapterBefore = host.adapterCalls();
  let seenAt = '';
  const events: { type: 'connected' | 'write' | 'notify'; at: string; waitedMs: number }[] = [];
  const off = host.onEvent((event: StandInEvent) => {
    if (!('address' in event) || event.address !== address) return;
    const at = process.hrtime.bigint().toString();
    if (event.type === 'device-seen' && seenAt === '') seenAt = at;
    if (event.type === 'connected' || event.type === 'write' || event.type === 'notify') {
      events.push({ type: event.type, at, waitedMs: host.device(address)?.stats.waitedMs ?? 0 });
    }
    if (event.type === 'disconnected') {
      off();
      const device = host.device(address);
      const report: ApproachReport = {
        type: 'done',
        id: request.id,
        seenAt,
        events,
        phoneMs,
        deviceCalls: device?.calls() ?? {},
        adapterCalls: diff(host.adapterCalls(), adapterBefore),
      };
      peer.close();
      host.removeDevice(address);
      send(report);
    }
  });
  host.addDevice({
    address,
    name: 'Phone',
    serviceUuids: [SERVICE_UUID],
    writeUuid: VEHICLE_TO_KEY_UUID,
    notifyUuid: KEY_TO_VEHICLE_UUID,
    peer,
    delays: request.delays,
  });
}

process.on('message', (raw: unknown) => {
  const request = raw as HostRequest;
  void (async () => {
    try {
      switch (request.type) {
        case 'start':
          standIn = await startBluezStandIn({ busAddress: request.busAddress, logger: silentLogger });
          send({ type: 'ready' });
          break;
        case 'approach':
          if (standIn === undefined) throw new Error('not started');
          approach(standIn, request);
          break;
        case 'stop':
          await standIn?.stop();
          process.disconnect?.();
          break;
      }
    } catch (err) {
      send({ type: 'error', message: err instanceof Error ? err.message : String(err) });
    }
  })();
});
