import type { FloodTarget, RunningFlood } from '../flood.js';
import { startSlowloris } from './status-page.js';

/** 200 slowloris connections to the status page: headers a line a second, never finished. */
export async function start(target: FloodTarget): Promise<RunningFlood> {
  return await startSlowloris({ url: target.statusPage.url, connections: 200 });
}
