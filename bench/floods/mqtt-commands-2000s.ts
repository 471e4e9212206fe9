import type { FloodTarget, RunningFlood } from '../flood.js';
import { floodClient, forgedCommands, publisher } from './mqtt.js';

/** Forged signed commands (valid kid, vehicle, lifetime and counter; random signature) at 2 000 a second. */
export async function start(target: FloodTarget): Promise<RunningFlood> {
  const client = await floodClient(target, 'rate');
  const pub = publisher(client, `${target.mqtt.base}/command`, forgedCommands(target));
  pub.rate(2000);
  // The rate is steady after a second.
  await new Promise((r) => setTimeout(r, 1000));
  return {
    stop: async () => {
      const counts = await pub.stop();
      await client.endAsync(true);
      return counts;
    },
  };
}
