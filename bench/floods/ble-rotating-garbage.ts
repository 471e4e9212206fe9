import type { FloodTarget, RunningFlood } from '../flood.js';
import { startBleGarbage } from './ble-garbage.js';

/** 32 fake keys on fresh random addresses that answer the hello with well-framed garbage. */
export async function start(target: FloodTarget): Promise<RunningFlood> {
  return startBleGarbage({ busAddress: target.ble.busAddress, devices: 32, mode: 'garbage' });
}
