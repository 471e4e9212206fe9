import type { FloodTarget, RunningFlood } from '../flood.js';
import { floodClient, forgedCommands, publisher } from './mqtt.js';

/** 30 000 forged signed commands published at once (as fast as the broker takes them). */
export async function start(target: FloodTarget): Promise<RunningFlood> {
  const client = await floodClient(target, 'burst');
  const pub = publisher(client, `${target.mqtt.base}/command`, forgedCommands(target));
  const done = pub.burst(30_000);
  return {
    stop: async () => {
      await done;
      const counts = await pub.stop();
      await client.endAsync(true);
      return counts;
    },
  };
}
