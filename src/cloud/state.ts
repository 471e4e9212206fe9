import type { LockState } from '../core/types.js';

/**
 * The retained `<base>/state` document and the `<base>/status` payloads. Pure.
 */

export const STATUS_ONLINE = JSON.stringify({ state: 'online' });
export const STATUS_OFFLINE = JSON.stringify({ state: 'offline' });

/** What the state document is built from (Agent.status() gives most of it). */
export interface StateInput {
  readonly vehicleId: string;
  readonly lock: LockState;
  readonly keyring: { readonly digest: string; readonly operations: number; readonly credentials: number };
  readonly clock: { readonly now: string; readonly trust: 'trusted' | 'behind' };
  readonly readers: Readonly<Record<string, { readonly state: string }>>;
  readonly version: string;
  /** When the link first saw the clock without trusted time (this run), ISO 8601. */
  readonly untrustedSince?: string;
  readonly outbox: {
    readonly lastSeq: number;
    readonly ackedSeq: number;
    readonly pending: number;
    readonly dropped: number;
  };
  readonly mqtt: { readonly protocol: '5' | '3.1.1' };
}

export interface StateDocument {
  readonly vid: string;
  readonly ts: string;
  readonly version: string;
  readonly lock: LockState;
  readonly keyring: { readonly digest: string; readonly operations: number; readonly credentials: number };
  readonly clock: {
    readonly now: string;
    readonly trust: 'trusted' | 'behind';
    readonly trusted: boolean;
    readonly untrustedSince?: string;
  };
  readonly readers: Readonly<Record<string, string>>;
  readonly outbox: StateInput['outbox'];
  readonly mqtt: StateInput['mqtt'];
}

export function stateDocument(input: StateInput): StateDocument {
  const readers: Record<string, string> = {};
  for (const [id, health] of Object.entries(input.readers)) readers[id] = health.state;
  return {
    vid: input.vehicleId,
    ts: input.clock.now,
    version: input.version,
    lock: input.lock,
    keyring: { ...input.keyring },
    clock: {
      now: input.clock.now,
      trust: input.clock.trust,
      trusted: input.clock.trust === 'trusted',
      ...(input.clock.trust !== 'trusted' && input.untrustedSince !== undefined
        ? { untrustedSince: input.untrustedSince }
        : {}),
    },
    readers,
    outbox: { ...input.outbox },
    mqtt: { ...input.mqtt },
  };
}

/** What, when it changes, makes the state worth publishing again (not the ever-moving counters). */
export function stateFingerprint(doc: StateDocument): string {
  return JSON.stringify([doc.lock, doc.keyring.digest, doc.clock.trust, doc.readers, doc.outbox.dropped]);
}
