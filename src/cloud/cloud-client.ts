import { randomBytes } from 'node:crypto';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { CommandResult } from './command.js';
import {
  type IncomingMessage,
  MqttConnection,
  type MqttTlsMaterial,
  type ProtocolChoice,
} from './mqtt-connection.js';
import type { VehicleTopics } from './topics.js';

/**
 * The cloud side for one-shot tools (the `vehicle-agent cloud` CLI, tests, benchmarks): connect,
 * do one thing, disconnect. Uses the same connection code as the agent.
 */

export interface CloudClientOptions {
  /** Broker URLs, tried in turn (the nodes of a cluster). */
  readonly urls: readonly string[];
  readonly tls: MqttTlsMaterial;
  readonly protocol?: ProtocolChoice;
  readonly connectTimeoutMs?: number;
  readonly clientId?: string;
  readonly log: Logger;
  /** Called with every message as it comes (a watcher that runs for hours). */
  readonly onMessage?: (m: IncomingMessage) => void;
  /** Default true: keep every message in `received`. A long-running watcher passes false. */
  readonly keepReceived?: boolean;
}

export interface CloudClient {
  publish(topic: string, payload: string, opts: { qos: 0 | 1; retain: boolean }): Promise<void>;
  subscribe(topics: readonly string[]): Promise<void>;
  /** Resolves with the first message (already received or later) that `match` accepts. */
  waitFor(match: (m: IncomingMessage) => boolean, timeoutMs: number, what: string): Promise<IncomingMessage>;
  /** Every message received so far. */
  readonly received: readonly IncomingMessage[];
  close(): Promise<void>;
}

export async function connectCloudClient(options: CloudClientOptions): Promise<CloudClient> {
  const received: IncomingMessage[] = [];
  const waiters = new Set<(m: IncomingMessage) => void>();
  let onUp: (() => void) | undefined;
  const connection = new MqttConnection(
    {
      urls: options.urls,
      clientId: options.clientId ?? `vehicle-agent-cli-${randomBytes(6).toString('hex')}`,
      tls: options.tls,
      protocol: options.protocol ?? 'auto',
      keepaliveS: 30,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      sessionExpiryS: 0,
      backoff: { minMs: 200, maxMs: 1000 },
      log: options.log,
    },
    {
      onConnect: () => onUp?.(),
      onDisconnect: () => {},
      onMessage: (m) => {
        if (options.keepReceived !== false) received.push(m);
        for (const w of [...waiters]) w(m);
        options.onMessage?.(m);
      },
    },
  );
  // Every URL gets its attempt before the client gives up.
  const deadline = (options.connectTimeoutMs ?? 10_000) * options.urls.length;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      void connection.stop();
      reject(
        new AgentError(
          'broker_unavailable',
          `cannot connect to ${options.urls.join(' or ')}${connection.lastError ? `: ${connection.lastError}` : ''}`,
        ),
      );
    }, deadline);
    onUp = () => {
      clearTimeout(timer);
      resolve();
    };
    connection.start();
  });
  return {
    received,
    publish: (topic, payload, opts) => connection.publish(topic, payload, opts),
    subscribe: (topics) => connection.subscribe(topics.map((topic) => ({ topic, qos: 1 }))),
    waitFor: (match, timeoutMs, what) => {
      const found = received.find(match);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const waiter = (m: IncomingMessage) => {
          if (!match(m)) return;
          clearTimeout(timer);
          waiters.delete(waiter);
          resolve(m);
        };
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new AgentError('result_timeout', `no ${what} within ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.add(waiter);
      });
    },
    close: () => connection.stop(),
  };
}

export function parseResult(payload: Buffer): CommandResult | undefined {
  try {
    const v = JSON.parse(payload.toString('utf8')) as Partial<CommandResult>;
    if (typeof v !== 'object' || v === null || (v.status !== 'ok' && v.status !== 'error')) return undefined;
    return v as CommandResult;
  } catch {
    return undefined;
  }
}

/** Publishes a signed command and waits for its result (matched by jti). */
export async function sendCommand(
  client: CloudClient,
  topics: VehicleTopics,
  jws: string,
  jti: string,
  timeoutMs: number,
): Promise<CommandResult> {
  await client.subscribe([topics.commandResult]);
  const answer = client.waitFor(
    (m) => m.topic === topics.commandResult && parseResult(m.payload)?.jti === jti,
    timeoutMs,
    `result for command ${jti} on ${topics.commandResult} (is the vehicle online?)`,
  );
  await client.publish(topics.command, jws, { qos: 1, retain: false });
  const message = await answer;
  const result = parseResult(message.payload);
  if (!result) throw new AgentError('internal', 'unreadable result');
  return result;
}

/**
 * Asks the vehicle to publish `what` again (on <base>/request) and resolves with the messages on
 * `topics` once a live (not retained) one on `answer` came, or after `waitMs` without it (the
 * vehicle offline). Retained messages that came meanwhile are in the list too: they help where
 * the broker delivers them, and nothing depends on them (a broker cluster keeps them per node).
 */
export async function requestFromVehicle(
  client: CloudClient,
  vehicle: VehicleTopics,
  what: 'state' | 'keyring',
  topics: readonly string[],
  answer: string,
  waitMs: number,
): Promise<{ readonly messages: readonly IncomingMessage[]; readonly answered: boolean }> {
  await client.subscribe(topics);
  const start = client.received.length;
  const live = client.waitFor(
    (m) => m.topic === answer && !m.retain && client.received.indexOf(m) >= start,
    waitMs,
    `an answer on ${answer}`,
  );
  await client.publish(vehicle.request, what, { qos: 1, retain: false });
  const answered = await live.then(
    () => true,
    () => false,
  );
  return { messages: client.received.filter((m) => topics.includes(m.topic)), answered };
}
