import { randomBytes } from 'node:crypto';
import { KEY_TO_VEHICLE_UUID, SERVICE_UUID, VEHICLE_TO_KEY_UUID } from '../ble/protocol/constants.js';
import { chunkFrame } from '../ble/protocol/framing.js';
import { AgentError } from '../core/errors.js';
import { FLOOD_MODES, type FloodMode } from '../host/control-api.js';
import type { GattPeer } from './ble/gatt-peer.js';
import type { BluezStandIn, StandInEvent } from './bluez/types.js';

/**
 * A radio flood on the BlueZ stand-in: `devices` fake keys advertising the vehicle-key service at
 * once, each under a fresh random address that is used for one session (or `lifetimeMs`) and then
 * replaced, as an attacker rotating addresses for free would. What each fake does when the vehicle
 * connects:
 *   garbage  answers the hello at once with a well-framed message that is not a valid one
 *   silent   connects and never answers (holds its session as long as it is let)
 *   hang     never completes the connection (holds a slot in the connect phase)
 * Used by `sim.ble.flood` in sim mode, the integration tests and the flood bench.
 */

// The list lives in the control table (src/host may not import src/sim).
export { FLOOD_MODES, type FloodMode };

export interface BleFloodOptions {
  /** Fake devices present at any time, 1..1024. */
  readonly devices: number;
  readonly mode: FloodMode;
  /** A fake is replaced after this long even if it never got a session. Default 3000 ms. */
  readonly lifetimeMs?: number;
  /** Advertising interval of each fake. Default 100 ms (a phone in the foreground). */
  readonly advertisingIntervalMs?: number;
  readonly rssi?: number;
}

export interface BleFloodCounts {
  /** Fake addresses used so far. */
  readonly addresses: number;
  /** Connections the vehicle opened to fakes. */
  readonly connects: number;
  /** Writes the vehicle made to fakes (hellos, results). */
  readonly writes: number;
  /** Garbage answers sent. */
  readonly garbageSent: number;
}

const MAX_DEVICES = 1024;

/** A fake key: answers any write with garbage (once per session), or nothing. */
class FakePeer implements GattPeer {
  notify: (bytes: Uint8Array) => void = () => {};
  private answered = false;

  constructor(
    private readonly mode: FloodMode,
    private readonly onGarbage: () => void,
  ) {}

  onWrite(): void {
    if (this.mode !== 'garbage' || this.answered) return;
    this.answered = true;
    this.onGarbage();
    // Well framed (so it is read as a whole message at once) and meaningless inside.
    for (const chunk of chunkFrame(randomBytes(48), 20)) this.notify(chunk);
  }

  onDisconnect(): void {
    this.answered = false;
  }
}

export class BleFlood {
  private readonly standIn: BluezStandIn;
  private readonly options: Required<BleFloodOptions>;
  private readonly live = new Map<string, NodeJS.Timeout>();
  private readonly replacing = new Set<string>();
  private readonly counts = { addresses: 0, connects: 0, writes: 0, garbageSent: 0 };
  private offEvents: (() => void) | undefined;
  private running = false;

  constructor(standIn: BluezStandIn, options: BleFloodOptions) {
    if (!Number.isInteger(options.devices) || options.devices < 1 || options.devices > MAX_DEVICES)
      throw new AgentError('bad_arguments', `devices must be an integer 1..${MAX_DEVICES}`);
    this.standIn = standIn;
    this.options = {
      lifetimeMs: 3000,
      advertisingIntervalMs: 100,
      rssi: -50,
      ...options,
    };
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.offEvents = this.standIn.onEvent((event) => this.onEvent(event));
    for (let i = 0; i < this.options.devices; i++) this.spawn();
  }

  /** Removes every fake; returns what the flood did. */
  stop(): BleFloodCounts {
    this.running = false;
    this.offEvents?.();
    for (const address of [...this.live.keys()]) this.retire(address);
    return this.stats();
  }

  stats(): BleFloodCounts {
    return { ...this.counts };
  }

  private onEvent(event: StandInEvent): void {
    if (!('address' in event) || !this.live.has(event.address)) return;
    if (event.type === 'connected') this.counts.connects += 1;
    else if (event.type === 'write') this.counts.writes += 1;
    else if (event.type === 'disconnected') this.replace(event.address);
  }

  private spawn(): void {
    const address = this.freshAddress();
    const peer = new FakePeer(this.options.mode, () => {
      this.counts.garbageSent += 1;
    });
    this.standIn.addDevice({
      address,
      addressType: 'random',
      name: 'Phone',
      rssi: this.options.rssi,
      serviceUuids: [SERVICE_UUID],
      writeUuid: VEHICLE_TO_KEY_UUID,
      notifyUuid: KEY_TO_VEHICLE_UUID,
      advertisingIntervalMs: this.options.advertisingIntervalMs,
      peer,
      faults: this.options.mode === 'hang' ? { connectHangs: true } : {},
    });
    this.counts.addresses += 1;
    const timer = setTimeout(() => this.replace(address), this.options.lifetimeMs);
    timer.unref();
    this.live.set(address, timer);
  }

  /** One address is used up: it leaves and a fresh one comes. */
  private replace(address: string): void {
    if (!this.live.has(address) || this.replacing.has(address)) return;
    this.replacing.add(address);
    clearTimeout(this.live.get(address));
    // After the event that told us (a disconnect is reported from inside the stand-in's call).
    setImmediate(() => {
      this.replacing.delete(address);
      if (!this.live.has(address)) return;
      this.retire(address);
      if (this.running) this.spawn();
    });
  }

  private retire(address: string): void {
    const timer = this.live.get(address);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.live.delete(address);
    this.standIn.removeDevice(address);
  }

  private freshAddress(): string {
    for (;;) {
      const bytes = randomBytes(6);
      bytes[0] = ((bytes[0] ?? 0) | 0xc0) & 0xff; // a static random address (top bits 11)
      const address = [...bytes].map((b) => b.toString(16).padStart(2, '0').toUpperCase()).join(':');
      if (this.standIn.device(address) === undefined) return address;
    }
  }
}
