import { AgentError } from '../core/errors.js';
import type { ByteLink } from '../nfc/pn532/link.js';

/**
 * An in-memory serial line, used when socat is not installed: the device end (the emulator's)
 * lives as long as the pair; the driver may close its host end and open a new one (it does so to
 * recover), as it would reopen a serial port. Bytes are delivered asynchronously, like I/O.
 */

type DataListener = (chunk: Uint8Array) => void;
type CloseListener = (error: Error | undefined) => void;

class MemoryEnd implements ByteLink {
  private readonly data: DataListener[] = [];
  private readonly closes: CloseListener[] = [];
  private closed = false;
  constructor(private readonly send: (bytes: Uint8Array) => void) {}

  get isOpen(): boolean {
    return !this.closed;
  }

  write(bytes: Uint8Array): Promise<void> {
    if (this.closed) return Promise.reject(new AgentError('reader_error', 'the link is closed'));
    this.send(bytes.slice());
    return Promise.resolve();
  }

  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      for (const listener of this.closes) listener(undefined);
    }
    return Promise.resolve();
  }

  onData(listener: DataListener): void {
    this.data.push(listener);
  }

  onClose(listener: CloseListener): void {
    this.closes.push(listener);
  }

  deliver(bytes: Uint8Array): void {
    if (this.closed) return;
    for (const listener of this.data) listener(bytes);
  }
}

export class MemoryLinkPair {
  readonly device: ByteLink;
  private readonly deviceEnd: MemoryEnd;
  private host: MemoryEnd | undefined;

  constructor() {
    this.deviceEnd = new MemoryEnd((bytes) => {
      const host = this.host;
      setImmediate(() => host?.deliver(bytes));
    });
    this.device = this.deviceEnd;
  }

  /** A fresh host end; an earlier one is closed. */
  openHost(): Promise<ByteLink> {
    void this.host?.close();
    const host = new MemoryEnd((bytes) => setImmediate(() => this.deviceEnd.deliver(bytes)));
    this.host = host;
    return Promise.resolve(host);
  }
}
