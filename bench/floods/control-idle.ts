import type { FloodTarget, RunningFlood } from '../flood.js';
import { startIdleFlood } from './control-socket.js';

/** 32 silent connections to the control socket (twice its slots), each reopened when closed. */
export async function start(target: FloodTarget): Promise<RunningFlood> {
  return await startIdleFlood({ socketPath: target.controlSocket, connections: 32 });
}
