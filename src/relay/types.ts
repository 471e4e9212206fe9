import type { Health } from '../core/types.js';

/**
 * Logical relay channels. Pulse wiring (car central locking) uses both; hold wiring (a door
 * strike) uses only `unlock`.
 */
export const RELAY_CHANNELS = ['unlock', 'lock'] as const;
export type RelayChannel = (typeof RELAY_CHANNELS)[number];

/** Options of an energising set(). */
export interface EnergiseOptions {
  /**
   * The caller means to release the channel after this long. A driver that times its outputs
   * itself (the relay guard) releases it a margin later if the caller has not by then, and never
   * past its max-on limit; other drivers ignore it.
   */
  readonly releaseAfterMs?: number;
}

/** A channel the driver (or what stands behind it) released by itself, without being asked. */
export interface SelfRelease {
  readonly channel: RelayChannel;
  /** How long the channel had been energised when it was released. */
  readonly heldMs: number;
  /**
   * relay_watchdog: held past the max-on limit; relay_guard_released: the guard's deadline passed
   * before the agent released it, or the guard was signalled; relay_guard_lost: the guard died.
   */
  readonly code: 'relay_watchdog' | 'relay_guard_released' | 'relay_guard_lost';
  /** max-on, limit (the deadline of the pulse or hold), signal or lost. */
  readonly cause: 'max-on' | 'limit' | 'signal' | 'lost';
  /**
   * true: it ended the energising the caller last asked for, which is now off. false: it ended an
   * earlier one the caller has since released or renewed (a report, nothing to resync).
   */
  readonly current: boolean;
}

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
  set(channel: RelayChannel, energised: boolean, options?: EnergiseOptions): Promise<void>;
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
  /** Listens to releases the driver made by itself (see SelfRelease). Returns an unsubscribe function. */
  onSelfRelease?(listener: (release: SelfRelease) => void): () => void;
}
