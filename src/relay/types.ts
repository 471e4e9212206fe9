import type { Health } from '../core/types.js';

/**
 * Logical relay channels. Pulse wiring (car central locking) uses both; hold wiring (a door
 * strike) uses only `unlock`.
 */
export const RELAY_CHANNELS = ['unlock', 'lock'] as const;
export type RelayChannel = (typeof RELAY_CHANNELS)[number];

/**
 * One relay board, whatever drives it. Every method is safe to call in any state; failures are
 * AgentErrors with code `relay_failed`.
 */
export interface RelayDriver {
  /** What drives the relays: `sim`, `gpio`, `lcus`, ... (for status output). */
  readonly kind: string;
  /** The channels this driver has wired; set() on any other channel fails with relay_failed. */
  readonly channels: readonly RelayChannel[];
  /** Opens the hardware and leaves every channel de-energised. Rejects with relay_failed. */
  init(): Promise<void>;
  /** Energises or de-energises one channel; resolves once the hardware was told. */
  set(channel: RelayChannel, energised: boolean): Promise<void>;
  /** De-energises every channel. Best effort: never rejects; failures are logged and show in health(). */
  allOff(): Promise<void>;
  /** De-energises every channel and releases the hardware. Never rejects. */
  close(): Promise<void>;
  health(): Health;
  /**
   * Emergency release from a synchronous context (the process 'exit' handler), where no promise
   * will ever settle. Never throws. Only drivers that can do something useful offer it.
   */
  allOffSync?(): void;
}
