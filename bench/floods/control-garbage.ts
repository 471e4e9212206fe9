import type { FloodTarget, RunningFlood } from '../flood.js';
import { startGarbageFlood } from './control-socket.js';

/** 4 connections to the control socket writing non-JSON lines flat out, reconnecting when closed. */
export async function start(target: FloodTarget): Promise<RunningFlood> {
  return await startGarbageFlood({ socketPath: target.controlSocket, connections: 4 });
}
