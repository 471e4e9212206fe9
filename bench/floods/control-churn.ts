import type { FloodTarget, RunningFlood } from '../flood.js';
import { startChurnFlood } from './control-socket.js';

/** 4 clients connecting to the control socket flat out, each writing 5 garbage lines and leaving. */
export async function start(target: FloodTarget): Promise<RunningFlood> {
  return await startChurnFlood({ socketPath: target.controlSocket, connections: 4 });
}
