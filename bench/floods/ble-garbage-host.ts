import { randomBytes } from 'node:crypto';
import { KEY_TO_VEHICLE_UUID, SERVICE_UUID, VEHICLE_TO_KEY_UUID } from '../../src/ble/protocol/constants.js';
import { silentLogger } from '../../src/core/logger.js';
import { fromB64url } from '../../src/crypto/encoding.js';
import { PhoneKey, type PinnedVehicle } from '../../src/sim/ble/phone.js';
import { PhonePeer } from '../../src/sim/ble/phone-peer.js';
import { BleFlood, type FloodMode } from '../../src/sim/ble-flood.js';
import { startBluezStandIn } from '../../src/sim/bluez/index.js';
import type { BluezStandIn, StandInEvent } from '../../src/sim/bluez/types.js';

/**
 * Forked by bench/floods/ble-garbage.ts: the BlueZ stand-in owning org.bluez on the bench's
 * private bus, the flood of rotating fake keys (src/sim/ble-flood.ts) and, when asked, a genuine
 * phone that approaches again and again and times each approach until the vehicle granted it.
 * All in this process, so none of the simulator's work is charged to the agent.
 */

export type FloodHostRequest =
  | {
      readonly type: 'start';
      readonly busAddress: string;
      readonly devices: number;
      readonly mode: FloodMode;
      readonly genuine?: {
        readonly secretKey: string;
        readonly pin: PinnedVehicle;
        readonly everyMs: number;
      };
    }
  | { readonly type: 'stop' };

export type FloodHostReply =
  | { readonly type: 'started' }
  | { readonly type: 'stopped'; readonly counts: Record<string, number> }
  | { readonly type: 'error'; readonly message: string };

/** A genuine phone gives up an approach after this long (and it counts as not granted). */
const GIVE_UP_MS = 120_000;

let standIn: BluezStandIn | undefined;
let flood: BleFlood | undefined;
let genuine: GenuinePhone | undefined;

function send(reply: FloodHostReply): void {
  process.send?.(reply);
}

/** Approaches one after another, each under a fresh address; records the time to a grant. */
class GenuinePhone {
  readonly grantMs: number[] = [];
  approaches = 0;
  notGranted = 0;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly phone: PhoneKey;

  constructor(
    private readonly host: BluezStandIn,
    secretKey: string,
    pin: PinnedVehicle,
    private readonly everyMs: number,
  ) {
    this.phone = new PhoneKey({ secretKey: fromB64url(secretKey), vehicles: [pin] });
  }

  /** The first approach waits until the vehicle listens (its link started discovery). */
  start(): void {
    if (this.stopped) return;
    if (this.host.discovering) this.schedule(0);
    else this.timer = setTimeout(() => this.start(), 20);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => this.approach(), ms);
  }

  private approach(): void {
    if (this.stopped) return;
    this.approaches += 1;
    const bytes = randomBytes(6);
    bytes[0] = ((bytes[0] ?? 0) | 0xc0) & 0xff;
    const address = [...bytes].map((b) => b.toString(16).padStart(2, '0').toUpperCase()).join(':');
    const peer = new PhonePeer(this.phone);
    const eventsBefore = this.phone.events.length;
    const started = performance.now();
    let done = false;
    const finish = (granted: boolean): void => {
      if (done) return;
      done = true;
      off();
      clearTimeout(giveUp);
      if (granted) this.grantMs.push(performance.now() - started);
      else this.notGranted += 1;
      setImmediate(() => {
        peer.close();
        this.host.removeDevice(address);
        this.schedule(this.everyMs);
      });
    };
    const granted = (): boolean =>
      this.phone.events.slice(eventsBefore).some((e) => e.type === 'result' && e.granted === true);
    // A denied or dropped approach is not the end: the phone keeps advertising, as a real one does.
    const off = this.host.onEvent((event: StandInEvent) => {
      if (!('address' in event) || event.address !== address) return;
      if ((event.type === 'write' || event.type === 'disconnected') && granted()) finish(true);
    });
    const giveUp = setTimeout(() => finish(false), GIVE_UP_MS);
    this.host.addDevice({
      address,
      addressType: 'random',
      name: 'Phone',
      serviceUuids: [SERVICE_UUID],
      writeUuid: VEHICLE_TO_KEY_UUID,
      notifyUuid: KEY_TO_VEHICLE_UUID,
      peer,
    });
  }
}

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
}

process.on('message', (raw: unknown) => {
  const request = raw as FloodHostRequest;
  void (async () => {
    try {
      if (request.type === 'start') {
        standIn = await startBluezStandIn({ busAddress: request.busAddress, logger: silentLogger });
        flood =
          request.devices > 0
            ? new BleFlood(standIn, { devices: request.devices, mode: request.mode })
            : undefined;
        flood?.start();
        if (request.genuine !== undefined) {
          genuine = new GenuinePhone(
            standIn,
            request.genuine.secretKey,
            request.genuine.pin,
            request.genuine.everyMs,
          );
          genuine.start();
        }
        send({ type: 'started' });
        return;
      }
      genuine?.stop();
      const counts: Record<string, number> = {};
      const f = flood?.stop();
      if (f !== undefined) {
        counts.ble_flood_addresses = f.addresses;
        counts.ble_flood_connects = f.connects;
        counts.ble_flood_garbage_sent = f.garbageSent;
      }
      if (genuine !== undefined) {
        const sorted = [...genuine.grantMs].sort((a, b) => a - b);
        counts.ble_genuine_approaches = genuine.approaches;
        counts.ble_genuine_granted = sorted.length;
        counts.ble_genuine_not_granted = genuine.notGranted;
        counts.ble_genuine_grant_p50_ms = Math.round(quantile(sorted, 0.5));
        counts.ble_genuine_grant_p90_ms = Math.round(quantile(sorted, 0.9));
        counts.ble_genuine_grant_max_ms = Math.round(sorted.at(-1) ?? Number.NaN);
      }
      await standIn?.stop();
      send({ type: 'stopped', counts });
      process.disconnect?.();
    } catch (err) {
      send({ type: 'error', message: err instanceof Error ? err.message : String(err) });
    }
  })();
});
