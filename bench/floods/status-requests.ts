import type { FloodTarget, RunningFlood } from '../flood.js';
import { startRequestFlood } from './status-page.js';

/** 8 anonymous clients requesting /api/state and /metrics back to back over keep-alive. */
export async function start(target: FloodTarget): Promise<RunningFlood> {
  return await startRequestFlood({ url: target.statusPage.url, concurrency: 8 });
}
