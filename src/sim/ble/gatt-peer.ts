/**
 * The far side of a GATT link as the BlueZ stand-in sees it: the simulated phone or key fob.
 * The agent (central) writes protocol bytes to the write characteristic; the peer answers by
 * notifying bytes on the notify characteristic. Chunking and framing are the protocol's business
 * (src/ble/protocol), not the stand-in's.
 */
export interface GattPeer {
  /** The central wrote `bytes` (one ATT write) to the write characteristic. */
  onWrite(bytes: Uint8Array): void;
  /** The central subscribed (StartNotify) or unsubscribed (StopNotify). */
  onSubscribe?(subscribed: boolean): void;
  /** The link dropped: forget session state. */
  onDisconnect?(): void;
  /** The ATT MTU exchanged on connect (the peer's notifications may then carry MTU - 3 bytes). */
  setMtu?(attMtu: number): void;
  /** Installed by the stand-in before any write: sends one notification to the central. */
  notify: (bytes: Uint8Array) => void;
}
