/**
 * The seam between the phone-key protocol and the radio: one connection with one key, as a byte
 * channel. The reader (src/ble/reader.ts) and the pure protocol (src/ble/protocol/) use only
 * this; the BLE central (src/ble/link.ts, vehicle scans and connects) implements it today. A
 * peripheral transport (the vehicle advertises, the phone connects: issue 14) implements the
 * same interface, so the protocol does not change with the direction of the connection.
 * No node-ble or D-Bus here.
 */

/** Why a channel ended. */
export type BleCloseReason =
  | 'closed'
  | 'failed'
  | 'disconnected'
  | 'vanished'
  | 'adapter-off'
  | 'bluez-lost'
  | 'bus-lost'
  | 'session-timeout'
  /** Ended after its turn so that a waiting device could have the slot (it had proved nothing). */
  | 'evicted'
  /** Proved nothing within ble.unprovenDeadlineMs. */
  | 'unproven-timeout'
  | 'stopped';

/** A session with one device: protocol bytes out (writes with response), notifications in. */
export interface BleChannel {
  /** The peer: AA:BB:CC:DD:EE:FF. */
  readonly address: string;
  readonly closed: boolean;
  /** The negotiated ATT MTU when BlueZ reports it (GattCharacteristic1.MTU), else undefined. */
  readonly mtu: number | undefined;
  /** One ATT write with response of up to MAX_WRITE_BYTES. Rejects with a coded AgentError. */
  write(bytes: Uint8Array): Promise<void>;
  /** Each notification, as one chunk. Chunks that came before the first listener are replayed. */
  onData(listener: (chunk: Uint8Array) => void): () => void;
  /** Called once when the session ends, whichever side ended it. */
  onClose(listener: (reason: BleCloseReason) => void): () => void;
  /** Ends the session: always disconnects. `cooldownMs` holds the device back (after a grant). */
  close(options?: { readonly cooldownMs?: number }): Promise<void>;
  /** The peer showed a signature-checked answer: no more unproven deadline, never evicted. */
  markProven(): void;
  /**
   * Gives this session `ms` more from now, past every bound of the transport (an owner approving
   * an enrollment takes a human's time); for an unproven session, false when another session has
   * such a turn already.
   */
  extendTurn(ms: number): boolean;
}

/** BlueZ writes longer values with prepare/execute writes; 512 is the ATT attribute limit. */
export const MAX_WRITE_BYTES = 512;
