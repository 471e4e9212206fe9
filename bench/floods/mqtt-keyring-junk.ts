import { randomBytes } from 'node:crypto';
import type { FloodTarget, RunningFlood } from '../flood.js';
import { floodClient, publisher } from './mqtt.js';

/** 45 000 unsigned junk messages on the keyring topic, at once: half not JSON, half JSON sets with no valid signature. */
export async function start(target: FloodTarget): Promise<RunningFlood> {
  const client = await floodClient(target, 'keyring-junk');
  let n = 0;
  const junk = () => {
    n += 1;
    return n % 2 === 0
      ? randomBytes(120)
      : JSON.stringify({ set: `junk.${randomBytes(24).toString('base64url')}.x`, ops: [] });
  };
  const pub = publisher(client, `${target.mqtt.base}/keyring`, junk);
  const done = pub.burst(45_000);
  return {
    stop: async () => {
      await done;
      const counts = await pub.stop();
      await client.endAsync(true);
      return counts;
    },
  };
}
