/**
 * What the D-Bus side keeps per connected central, bounded: the value of its last read of each
 * readable characteristic (BlueZ asks again with an offset for every Read Blob of a value longer
 * than the MTU allows, and those continuations must see the same bytes, not a fresh challenge),
 * and how many of its calls are in flight. No I/O.
 */
import type { CentralRef } from './service-port.js';

export type ReadableName = 'challenge' | 'result';

interface CentralEntry {
  ref: CentralRef;
  inFlight: number;
  readonly values: Map<ReadableName, Uint8Array>;
}

export interface CentralTableLimits {
  /** Centrals tracked at once; past it the least recently active one with nothing in flight goes. */
  readonly maxCentrals: number;
  /** Calls of one central in flight at once (ATT allows one request per bearer; BlueZ queues). */
  readonly maxInFlightPerCentral: number;
}

export type Admission =
  | { readonly admitted: true; readonly central: CentralRef; readonly evicted: readonly CentralRef[] }
  | { readonly admitted: false; readonly reason: 'central_busy' | 'table_full' };

export class CentralTable {
  /** Insertion order is recency: a call moves its central to the end. */
  private readonly entries = new Map<string, CentralEntry>();

  constructor(private readonly limits: CentralTableLimits) {}

  get size(): number {
    return this.entries.size;
  }

  /** Lets one call of `device` in, or says why not. Call `finish` once it is answered. */
  begin(device: string, address: string, mtu: number | undefined): Admission {
    const known = this.entries.get(device);
    if (known !== undefined) {
      if (known.inFlight >= this.limits.maxInFlightPerCentral)
        return { admitted: false, reason: 'central_busy' };
      this.entries.delete(device);
      this.entries.set(device, known);
      if (mtu !== undefined && known.ref.mtu !== mtu) known.ref = { ...known.ref, mtu };
      known.inFlight += 1;
      return { admitted: true, central: known.ref, evicted: [] };
    }
    const evicted: CentralRef[] = [];
    while (this.entries.size >= this.limits.maxCentrals) {
      const idle = [...this.entries].find(([, e]) => e.inFlight === 0);
      if (idle === undefined) return { admitted: false, reason: 'table_full' };
      this.entries.delete(idle[0]);
      evicted.push(idle[1].ref);
    }
    const ref: CentralRef = mtu === undefined ? { device, address } : { device, address, mtu };
    this.entries.set(device, { ref, inFlight: 1, values: new Map() });
    return { admitted: true, central: ref, evicted };
  }

  finish(device: string): void {
    const entry = this.entries.get(device);
    if (entry !== undefined && entry.inFlight > 0) entry.inFlight -= 1;
  }

  /** The central left: its state goes. Returns its reference when it was tracked. */
  remove(device: string): CentralRef | undefined {
    const entry = this.entries.get(device);
    this.entries.delete(device);
    return entry?.ref;
  }

  /** Every tracked central, emptied (the adapter went away). */
  clear(): CentralRef[] {
    const refs = [...this.entries.values()].map((e) => e.ref);
    this.entries.clear();
    return refs;
  }

  has(device: string): boolean {
    return this.entries.has(device);
  }

  remember(device: string, name: ReadableName, value: Uint8Array): void {
    this.entries.get(device)?.values.set(name, value);
  }

  recalled(device: string, name: ReadableName): Uint8Array | undefined {
    return this.entries.get(device)?.values.get(name);
  }

  inFlight(): number {
    let total = 0;
    for (const entry of this.entries.values()) total += entry.inFlight;
    return total;
  }
}
