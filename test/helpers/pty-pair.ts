import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { requireTool, stopProcess } from './processes.js';
import { waitFor } from './wait.js';

/** Two linked ptys from socat: bytes written to one end come out of the other. */
export interface PtyPair {
  /** The end the host (driver, nfc-list) opens. */
  readonly host: string;
  /** The end the device (PN532 emulator) opens. */
  readonly device: string;
  readonly socat: ChildProcess;
  stop(): Promise<void>;
}

/** Starts `socat` with two raw ptys linked at <dir>/<name>-host and <dir>/<name>-dev. */
export async function startPtyPair(dir: string, name = 'pn532'): Promise<PtyPair> {
  requireTool('socat', 'apt-get install socat');
  const host = join(dir, `${name}-host`);
  const device = join(dir, `${name}-dev`);
  const socat = spawn('socat', [`pty,raw,echo=0,link=${host}`, `pty,raw,echo=0,link=${device}`], {
    stdio: 'ignore',
  });
  try {
    await waitFor(
      () => {
        if (socat.exitCode !== null) throw new Error(`socat exited with ${socat.exitCode}`);
        return existsSync(host) && existsSync(device);
      },
      'socat to create its ptys',
      { timeoutMs: 5000, intervalMs: 10 },
    );
  } catch (error) {
    await stopProcess(socat);
    throw error;
  }
  return { host, device, socat, stop: () => stopProcess(socat) };
}
