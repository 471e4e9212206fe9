import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect, type MqttClient } from 'mqtt';
import { b64url } from '../../src/crypto/encoding.js';
import { readSignerKey } from '../../src/store/key-files.js';
import type { FloodTarget } from '../flood.js';

/**
 * Shared by the MQTT flood generators (bench/floods/mqtt-*.ts): a cloud-side client with the
 * certificate the broker accepts, forged commands, and a publisher that keeps a steady rate or
 * sends a burst with bounded memory. Not a flood itself (no `start`).
 */

export async function floodClient(target: FloodTarget, name: string): Promise<MqttClient> {
  const client = connect(target.mqtt.url, {
    ca: readFileSync(target.mqtt.ca),
    cert: readFileSync(target.mqtt.cert),
    key: readFileSync(target.mqtt.key),
    protocolVersion: 5,
    clientId: `bench-flood-${name}-${process.pid}`,
    reconnectPeriod: 500,
    connectTimeout: 10_000,
  });
  client.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('flood client could not connect')), 15_000);
    client.once('connect', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  return client;
}

/**
 * Signed commands as an attacker without the key makes them: the owner's real kid (it is public:
 * the vehicle publishes its keyring), this vehicle, a fresh lifetime and a rising counter, so every
 * cheap check passes, and a signature of random bytes.
 */
export function forgedCommands(target: FloodTarget): () => string {
  const ownerKid = readSignerKey(`${target.stateDir}/demo/owner.pem`).id;
  const header = b64url(
    Buffer.from(JSON.stringify({ alg: 'ES256', kid: ownerKid, typ: 'vehicle-agent.command' })),
  );
  let ctr = Date.now() * 1000;
  let n = 0;
  return () => {
    const now = Math.floor(Date.now() / 1000);
    n += 1;
    ctr += 1;
    const payload = {
      vid: target.vehicleId,
      cmd: 'unlock',
      args: {},
      jti: `flood-${process.pid}-${n}`,
      iat: now - 1,
      exp: now + 60,
      ctr,
    };
    return `${header}.${b64url(Buffer.from(JSON.stringify(payload)))}.${b64url(randomBytes(64))}`;
  };
}

export interface Publisher {
  /** Publishes `count` messages as fast as the broker takes them (at most `window` unacknowledged). */
  burst(count: number): Promise<void>;
  /** Publishes `perSecond` messages a second until stop(). */
  rate(perSecond: number): void;
  stop(): Promise<{ sent: number; failed: number }>;
}

export function publisher(
  client: MqttClient,
  topic: string,
  next: () => string | Buffer,
  options: { qos?: 0 | 1; window?: number } = {},
): Publisher {
  const qos = options.qos ?? 1;
  const window = options.window ?? 500;
  let sent = 0;
  let failed = 0;
  let inFlight = 0;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const idle = new Set<() => void>();
  const one = () => {
    inFlight += 1;
    client.publish(topic, next(), { qos, retain: false }, (err) => {
      inFlight -= 1;
      if (err) failed += 1;
      else sent += 1;
      for (const w of [...idle]) w();
    });
  };
  const below = (n: number) =>
    new Promise<void>((resolve) => {
      if (inFlight < n) return resolve();
      const w = () => {
        if (inFlight >= n) return;
        idle.delete(w);
        resolve();
      };
      idle.add(w);
    });
  return {
    burst: async (count) => {
      for (let i = 0; i < count && !stopped; i++) {
        if (inFlight >= window) await below(window);
        one();
      }
    },
    rate: (perSecond) => {
      const t0 = performance.now();
      let issued = 0;
      timer = setInterval(() => {
        const due = Math.floor(((performance.now() - t0) / 1000) * perSecond);
        // Never more than the window outstanding: a broker that stops acknowledging slows us.
        while (issued < due && inFlight < window * 4) {
          one();
          issued += 1;
        }
      }, 5);
    },
    stop: async () => {
      stopped = true;
      clearInterval(timer);
      await Promise.race([below(1), new Promise((r) => setTimeout(r, 5000))]);
      return { sent, failed };
    },
  };
}
