import type { CredentialLookup } from '../access/credential-lookup.js';
import type { GrantOp, MergeResult } from '../access/keyring.js';
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import type { Decision, Health, Presentation } from '../core/types.js';

/** Everything a reader gets from the agent. Readers never touch the relay or the keyring store. */
export interface ReaderContext {
  readonly vehicleId: string;
  readonly clock: Clock;
  readonly log: Logger;
  readonly keyring: CredentialLookup;
  /** Signs `message` with the vehicle's P-256 key: 64-byte r‖s over SHA-256(message). */
  signAsVehicle(message: Uint8Array): Uint8Array;
  /**
   * Hands a presentation to the agent. Resolves with the decision once the lock controller has
   * acted on a grant (relay energised) or the denial is recorded. Never rejects.
   */
  present(presentation: Presentation): Promise<Decision>;
}

/**
 * A source of credential presentations: the NFC reader, the BLE link, the simulated reader.
 * start() resolves once the reader is initialised (or has started retrying in the background);
 * a reader that fails later reports it through health() and recovers by itself.
 */
export interface CredentialReader {
  readonly id: string;
  start(context: ReaderContext): Promise<void>;
  stop(): Promise<void>;
  health(): Health;
}

/**
 * What a reader's setup (src/app/ble.ts, src/app/nfc.ts) needs from the agent beyond the
 * ReaderContext: enrollment adds vehicle-signed grants and audits its steps.
 */
export interface EnrollmentHost {
  /** Signs a keyring op with the vehicle key (JWS, kid = the vehicle key's credential id). */
  readonly signOp: (op: GrantOp) => string;
  /** The agent, once built (readers are built before it). */
  readonly agent: () => {
    addKeyringOps(jws: readonly string[], source: string): Promise<MergeResult>;
    audit(event: { readonly type: string; readonly [key: string]: unknown }): void;
  };
  /** Lock state for replies after a grant. */
  readonly lockState: () => string;
}
