import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { requireTool, stopProcess } from './processes.js';

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
  const started = Date.now();
  while (!(existsSync(host) && existsSync(device))) {
    if (socat.exitCode !== null) throw new Error(`socat exited with ${socat.exitCode}`);
    if (Date.now() - started > 5000) {
      await stopProcess(socat);
      throw new Error('socat did not create its ptys within 5 s');
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return { host, device, socat, stop: () => stopProcess(socat) };
}
