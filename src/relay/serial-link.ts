import { writeSync } from 'node:fs';
import { SerialPort } from 'serialport';

/**
 * A byte link to a serial device: what the USB relay driver and the board emulator need, so tests
 * and other transports can stand in for serialport.
 */
export interface SerialLink {
  /** Resolves once the bytes were handed to the operating system. */
  write(bytes: Uint8Array): Promise<void>;
  /** Synchronous write for the process 'exit' handler; absent where not possible. Throws on failure. */
  writeSync?(bytes: Uint8Array): void;
  /** Returns an unsubscribe function. */
  onData(listener: (bytes: Uint8Array) => void): () => void;
  /** Called once when the link closes by itself (device gone, I/O error), not on close(). */
  onClose(listener: (err: Error | undefined) => void): void;
  close(): Promise<void>;
}

export type SerialLinkFactory = (path: string, baudRate: number) => Promise<SerialLink>;

/** Opens a serial device with serialport (the one place the agent loads it for relays). */
export const openSerialLink: SerialLinkFactory = async (path, baudRate) => {
  const port = new SerialPort({ path, baudRate, autoOpen: false });
  await new Promise<void>((resolve, reject) => port.open((err) => (err ? reject(err) : resolve())));
  let closing = false;
  let closeListeners: ((err: Error | undefined) => void)[] = [];
  const closedByItself = (err: Error | undefined) => {
    if (closing) return;
    closing = true;
    const listeners = closeListeners;
    closeListeners = [];
    for (const listener of listeners) listener(err);
  };
  // serialport reports a vanished device as 'error' then 'close' (with disconnected set).
  port.on('error', (err: Error) => closedByItself(err));
  port.on('close', (err: Error | null | undefined) => closedByItself(err ?? undefined));
  const fd = (): number | undefined => {
    const binding: unknown = port.port;
    const value =
      binding !== null && typeof binding === 'object' ? (binding as { fd?: unknown }).fd : undefined;
    return typeof value === 'number' ? value : undefined;
  };
  return {
    write: (bytes) =>
      new Promise<void>((resolve, reject) => {
        port.write(Buffer.from(bytes), (err) => {
          if (err) reject(err);
        });
        port.drain((err) => (err ? reject(err) : resolve()));
      }),
    writeSync: (bytes) => {
      const handle = fd();
      if (handle === undefined) throw new Error('the serial port is not open');
      writeSync(handle, bytes);
    },
    onData: (listener) => {
      const handler = (chunk: Buffer) => listener(chunk);
      port.on('data', handler);
      return () => port.off('data', handler);
    },
    onClose: (listener) => {
      closeListeners.push(listener);
    },
    close: () =>
      new Promise<void>((resolve) => {
        closing = true;
        if (!port.isOpen) {
          resolve();
          return;
        }
        port.close(() => resolve());
      }),
  };
};
