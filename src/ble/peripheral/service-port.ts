// src/ble/peripheral/service-port.ts (p14periph owns this file; p14proto implements it)
export interface CentralRef {
  readonly device: string /* D-Bus path of the central */;
  readonly address: string;
  readonly mtu?: number;
}
export interface PhoneKeyServicePort {
  /** Bytes for a read of `characteristic` (challenge or result) by `central`. Never throws: coded errors become a result message. */
  read(central: CentralRef, characteristic: 'challenge' | 'result'): Promise<Uint8Array>;
  /** A write to answer. Resolves when accepted for processing; rejects with AgentError('malformed'|'too_large'|…) for an ATT error. */
  write(central: CentralRef, characteristic: 'answer', bytes: Uint8Array): Promise<void>;
  /** The central disconnected: forget its challenge and result. */
  disconnected(central: CentralRef): void;
  /** p14periph calls this so the service can notify a subscribed central of a new result. */
  onNotify(listener: (central: CentralRef, characteristic: 'result', bytes: Uint8Array) => void): () => void;
}
