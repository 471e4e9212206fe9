import { readFileSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';

const UNIT = new URL('../../systemd/vehicle-agent.service', import.meta.url);

/** The `Nice=` of a systemd unit's text (0 when it sets none). */
export function niceOfUnit(unitText: string): number {
  const match = /^Nice=(-?\d+)\s*$/m.exec(unitText);
  return match?.[1] === undefined ? 0 : Number(match[1]);
}

/**
 * Runs `body` with this process's event-loop thread at the niceness the shipped systemd unit gives
 * the agent, so a benchmark measures the agent as it is deployed. The rig's processes (PN532
 * emulator, BlueZ stand-in, socat, dbus-daemon) are started before and keep the default, as other
 * services on a Pi do. Restores the old niceness after. Resolves with the niceness it ran at: the
 * old one when raising priority is not allowed (not root).
 */
export async function atDeployedNice<T>(body: () => Promise<T>): Promise<{ result: T; nice: number }> {
  const before = getPriority();
  const wanted = niceOfUnit(readFileSync(UNIT, 'utf8'));
  let nice = before;
  try {
    setPriority(wanted);
    nice = wanted;
  } catch {
    process.stderr.write(`bench: cannot set niceness ${wanted} (needs root); measuring at ${before}\n`);
  }
  try {
    return { result: await body(), nice };
  } finally {
    try {
      setPriority(before);
    } catch {
      // Lowering priority back is always allowed; nothing to do if it is not.
    }
  }
}
