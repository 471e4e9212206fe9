import { SerialPort } from 'serialport';
import { AgentError } from '../../core/errors.js';

/**
 * A byte pipe to a PN532 (a UART, a USB-serial adapter, or a pty in tests and in sim mode).
 * This file is the project's one home for the `serialport` library.
 */
export interface ByteLink {
  /** Hands bytes to the OS; resolves once written (not necessarily on the wire yet). */
  write(bytes: Uint8Array): Promise<void>;
  /** Closes the link; 'close' listeners run. Idempotent. */
  close(): Promise<void>;
  readonly isOpen: boolean;
  onData(listener: (chunk: Uint8Array) => void): void;
  /** Called once when the link closes, by close() or because the device went away (error set). */
  onClose(listener: (error: Error | undefined) => void): void;
}

/** Opens a fresh link each time it is called; the driver calls it again to recover. */
export type LinkFactory = () => Promise<ByteLink>;

class SerialLink implements ByteLink {
  private readonly port: SerialPort;
  private readonly dataListeners: ((chunk: Uint8Array) => void)[] = [];
  private readonly closeListeners: ((error: Error | undefined) => void)[] = [];
  private closed = false;

  constructor(port: SerialPort) {
    this.port = port;
    port.on('data', (chunk: Buffer) => {
      const bytes = new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
      for (const listener of this.dataListeners) listener(bytes);
    });
    port.on('error', (err: Error) => this.finish(err));
    port.on('close', (err: Error | null | undefined) => this.finish(err ?? undefined));
  }

  get isOpen(): boolean {
    return !this.closed && this.port.isOpen;
  }

  write(bytes: Uint8Array): Promise<void> {
    if (!this.isOpen) return Promise.reject(new AgentError('reader_error', 'the serial port is closed'));
    return new Promise((resolve, reject) => {
      this.port.write(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), (err) => {
        if (err)
          reject(new AgentError('reader_error', `serial write failed: ${err.message}`, {}, { cause: err }));
        else resolve();
      });
    });
  }

  close(): Promise<void> {
    if (!this.port.isOpen) {
      this.finish(undefined);
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.port.close(() => {
        this.finish(undefined);
        resolve();
      });
    });
  }

  onData(listener: (chunk: Uint8Array) => void): void {
    this.dataListeners.push(listener);
  }

  onClose(listener: (error: Error | undefined) => void): void {
    this.closeListeners.push(listener);
  }

  private finish(error: Error | undefined): void {
    if (this.closed) return;
    this.closed = true;
    if (this.port.isOpen) this.port.close(() => {});
    for (const listener of this.closeListeners) listener(error);
  }
}

/** Opens `path` at `baudRate` (8N1, no flow control). Ptys ignore the rate. */
export function openSerialLink(path: string, baudRate = 115200): Promise<ByteLink> {
  return new Promise((resolve, reject) => {
    const port = new SerialPort({ path, baudRate, autoOpen: false, lock: true });
    port.open((err) => {
      if (err) {
        reject(
          new AgentError('reader_error', `cannot open ${path}: ${err.message}`, { path }, { cause: err }),
        );
        return;
      }
      resolve(new SerialLink(port));
    });
  });
}

export function serialLinkFactory(path: string, baudRate = 115200): LinkFactory {
  return () => openSerialLink(path, baudRate);
}
