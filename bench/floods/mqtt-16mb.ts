import type { FloodTarget, RunningFlood } from '../flood.js';
import { floodClient, publisher } from './mqtt.js';

/**
 * 16 MB messages, two a second for as long as the phase lasts, alternating between the keyring
 * topic (a well-formed set of junk operations, just under the 16 MiB that used to be accepted) and
 * the command topic.
 */
const SIZE = 16 * 1024 * 1024 - 1024;

export async function start(target: FloodTarget): Promise<RunningFlood> {
  const client = await floodClient(target, '16mb');
  const op = `junk.${'A'.repeat(60_000)}.x`;
  const ops: string[] = [];
  let bytes = 40;
  while (bytes + op.length + 3 < SIZE) {
    ops.push(op);
    bytes += op.length + 3;
  }
  const set = Buffer.from(JSON.stringify({ set: 'junk.junk.junk', ops }));
  const command = Buffer.alloc(SIZE, 0x41);
  let n = 0;
  const keyring = publisher(client, `${target.mqtt.base}/keyring`, () => set, { window: 2 });
  const commands = publisher(client, `${target.mqtt.base}/command`, () => command, { window: 2 });
  const timer = setInterval(() => {
    n += 1;
    void (n % 2 === 0 ? keyring : commands).burst(1);
  }, 500);
  await new Promise((r) => setTimeout(r, 1000));
  return {
    stop: async () => {
      clearInterval(timer);
      const a = await keyring.stop();
      const b = await commands.stop();
      await client.endAsync(true);
      return {
        sent: a.sent + b.sent,
        failed: a.failed + b.failed,
        megabytes: Math.round(((a.sent + b.sent) * SIZE) / 2 ** 20),
      };
    },
  };
}
