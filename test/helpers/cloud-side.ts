import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ed25519 } from '@noble/curves/ed25519.js';
import { p256 } from '@noble/curves/nist.js';
import { connect, type IClientOptions, type MqttClient } from 'mqtt';
import { b64url, fromB64url } from '../../src/crypto/encoding.js';
import { keyCredentialId, publicJwkOf } from '../../src/crypto/keys.js';
import type { Broker, ClientCert, TestPki } from './mosquitto.js';

/**
 * The cloud side of the MQTT tests, written independently of src/cloud: mqtt.js used directly,
 * and commands signed with @noble/curves (not node:crypto, which the agent verifies with).
 */

export interface Received {
  readonly topic: string;
  readonly payload: string;
  readonly retain: boolean;
}

export interface TestCloud {
  readonly client: MqttClient;
  readonly received: Received[];
  subscribe(topic: string): Promise<void>;
  publish(topic: string, payload: string, opts?: { retain?: boolean; qos?: 0 | 1 }): Promise<void>;
  waitFor(match: (m: Received) => boolean, timeoutMs?: number, what?: string): Promise<Received>;
  close(): Promise<void>;
}

export async function connectTestCloud(
  broker: Pick<Broker, 'url'>,
  pki: TestPki,
  cert: ClientCert,
  options: Partial<IClientOptions> = {},
): Promise<TestCloud> {
  const client = connect(broker.url, {
    ca: readFileSync(pki.ca),
    cert: readFileSync(cert.cert),
    key: readFileSync(cert.key),
    protocolVersion: 5,
    reconnectPeriod: 200,
    connectTimeout: 5000,
    ...options,
  });
  const received: Received[] = [];
  const waiters = new Set<(m: Received) => void>();
  client.on('message', (topic, payload, packet) => {
    const m = { topic, payload: payload.toString('utf8'), retain: packet.retain };
    received.push(m);
    for (const w of [...waiters]) w(m);
  });
  client.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('test cloud client could not connect')), 10_000);
    client.once('connect', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  return {
    client,
    received,
    subscribe: async (topic) => {
      await client.subscribeAsync(topic, { qos: 1 });
    },
    publish: async (topic, payload, opts = {}) => {
      await client.publishAsync(topic, payload, { qos: opts.qos ?? 1, retain: opts.retain ?? false });
    },
    waitFor: (match, timeoutMs = 15_000, what = 'a message') => {
      const found = received.find(match);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const w = (m: Received) => {
          if (!match(m)) return;
          clearTimeout(timer);
          waiters.delete(w);
          resolve(m);
        };
        const timer = setTimeout(() => {
          waiters.delete(w);
          reject(new Error(`timed out waiting for ${what}`));
        }, timeoutMs);
        waiters.add(w);
      });
    },
    close: async () => {
      await client.endAsync(true);
    },
  };
}

/** Env for `vehicle-agent start` with the cloud link pointed at the test broker. */
export function agentCloudEnv(
  url: string,
  pki: TestPki | undefined,
  cert: ClientCert | undefined,
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    VEHICLE_AGENT_CLOUD__ENABLED: 'true',
    VEHICLE_AGENT_CLOUD__URL: url,
    ...(pki ? { VEHICLE_AGENT_CLOUD__CA_FILE: pki.ca } : {}),
    ...(cert ? { VEHICLE_AGENT_CLOUD__CERT_FILE: cert.cert, VEHICLE_AGENT_CLOUD__KEY_FILE: cert.key } : {}),
    VEHICLE_AGENT_CLOUD__RECONNECT_MIN_MS: '200',
    VEHICLE_AGENT_CLOUD__RECONNECT_MAX_MS: '1000',
    VEHICLE_AGENT_CLOUD__CONNECT_TIMEOUT_MS: '2000',
    VEHICLE_AGENT_CLOUD__KEEPALIVE_S: '5',
    VEHICLE_AGENT_CLOUD__OUTBOX__POLL_MS: '20',
    VEHICLE_AGENT_CLOUD__STATE_INTERVAL_MS: '200',
    VEHICLE_AGENT_POLICY__MAX_DENIALS: '1000',
    ...extra,
  };
}

export interface NobleSigner {
  readonly kid: string;
  sign(payload: Record<string, unknown>, header?: Record<string, unknown>): string;
}

/** A JWS signer over a PEM key file, with noble doing the signing (ES256 or EdDSA). */
export function nobleSigner(pemPath: string, kind: 'signer' | 'phone' = 'signer'): NobleSigner {
  const key = createPrivateKey(readFileSync(pemPath, 'utf8'));
  const jwk = key.export({ format: 'jwk' }) as { crv?: string; d?: string };
  const kid = keyCredentialId(kind, publicJwkOf(key));
  const secret = fromB64url(jwk.d ?? '');
  const ec = jwk.crv === 'P-256';
  return {
    kid,
    sign: (payload, header = {}) => {
      const h = { alg: ec ? 'ES256' : 'EdDSA', kid, typ: 'vehicle-agent.command', ...header };
      const input = `${b64url(Buffer.from(JSON.stringify(h)))}.${b64url(Buffer.from(JSON.stringify(payload)))}`;
      const bytes = new TextEncoder().encode(input);
      const sig = ec ? p256.sign(bytes, secret) : ed25519.sign(bytes, secret);
      return `${input}.${b64url(sig)}`;
    },
  };
}
