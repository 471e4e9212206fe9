import type { FloodTarget, RunningFlood } from '../flood.js';
import { startBleGarbage } from './ble-garbage.js';

/** 32 fake keys on fresh random addresses that connect and never answer (they hold session slots). */
export async function start(target: FloodTarget): Promise<RunningFlood> {
  return startBleGarbage({ busAddress: target.ble.busAddress, devices: 32, mode: 'silent' });
}
