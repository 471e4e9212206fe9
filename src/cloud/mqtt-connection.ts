import { lookup } from 'node:dns/promises';
import { isIP, connect as netConnect, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import { connect, type IClientOptions, MqttClient } from 'mqtt';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { type BackoffPolicy, roundBackoffDelay } from './backoff.js';
import { type Endpoint, parseBrokerUrl } from './broker-url.js';
import { TokenBucket } from './intake.js';
import { type OversizedPublish, PublishSizeGuard } from './publish-size-guard.js';

/**
 * The one home of mqtt.js: a connection that keeps itself up, beside the agent and never in its
 * way. Each attempt is a fresh mqtt.js client with mqtt.js's own reconnect switched off, so
 * reconnects follow our backoff with jitter and no message state leaks from one connection into
 * the next (the outbox decides what to send again, from disk).
 *
 * - Several broker URLs (the nodes of a cluster): each attempt takes the next one in turn, so a dead
 *   node costs one failed attempt, and a connection that drops goes on to the next node. The
 *   backoff grows once per round over the list, so failing over to a live node is quick while a
 *   fleet whose whole cluster is gone still backs off.
 * - MQTT 5 first; with protocol 'auto', a broker that refuses v5 (CONNACK "unacceptable protocol
 *   version") gets 3.1.1 from the next attempt on. So does one that closes the connection on a v5
 *   CONNECT without any CONNACK (RabbitMQ's MQTT plugin): there 3.1.1 is on trial, and if it is
 *   closed unanswered too the close was not about the version, so 5 comes back. Each URL keeps
 *   its own version (the nodes need not run the same broker).
 * - A broker without retained messages: MQTT 5 CONNACK "Retain Available" 0 makes every publish
 *   go out unretained, and a CONNACK "Retain not supported" (0x9A, the will is retained) gets the
 *   next attempt with an unretained will. The contract never needs retained delivery.
 * - TLS with CA, client certificate and key; the broker name is checked against its certificate.
 * - DNS is resolved here, one lookup at a time with a deadline, so a dead resolver ties up at most
 *   one libuv thread (the agent's file writes share that pool).
 * - Nothing here is awaited by the unlock path: publish() rejects at once when offline.
 */

export { parseBrokerUrl } from './broker-url.js';

export type ProtocolChoice = 'auto' | '5' | '3.1.1';

export interface MqttTlsMaterial {
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
}

export interface MqttMessageSpec {
  readonly topic: string;
  readonly payload: string;
  readonly qos: 0 | 1;
  readonly retain: boolean;
}

export interface MqttConnectionOptions {
  /** Broker URLs, tried in turn (at least one). */
  readonly urls: readonly string[];
  readonly clientId: string;
  readonly tls: MqttTlsMaterial;
  readonly protocol: ProtocolChoice;
  readonly keepaliveS: number;
  /** One attempt (DNS, TCP, TLS, CONNECT → CONNACK) gives up after this long. */
  readonly connectTimeoutMs: number;
  /** Broker-side session lifetime while offline; 0 asks for a clean session every time. */
  readonly sessionExpiryS: number;
  readonly backoff: BackoffPolicy;
  /** A connection up this long resets the backoff. Default 10 s. */
  readonly stableAfterMs?: number;
  readonly will?: MqttMessageSpec;
  /** MQTT 5: the broker sends nothing larger (a flood of huge messages is dropped at the broker). */
  readonly maxPacketBytes?: number;
  /** MQTT 5 Receive Maximum: QoS 1 messages the broker may have unacknowledged to us at once. */
  readonly receiveMaximum?: number;
  /**
   * MQTT 3.1.1: the payload of a larger message is dropped as it streams in (publish-size-guard.ts)
   * and the message handed on empty with `oversizedBytes`; dropped bytes are read at most this
   * fast. Default 4 MiB/s.
   */
  readonly oversizedBytesPerS?: number;
  readonly log: Logger;
  readonly random?: () => number;
  /** Host name → address. Default: the system resolver, single flight, with the connect deadline. */
  readonly resolveHost?: (host: string) => Promise<string>;
}

export interface MqttSession {
  /** Increments with every successful connection. */
  readonly generation: number;
  readonly protocolVersion: 4 | 5;
  readonly sessionPresent: boolean;
  /** The broker's Receive Maximum (QoS 1 publishes it accepts unacknowledged); 65535 when unsaid. */
  readonly receiveMaximum: number;
  /** MQTT 5 Retain Available: false when the broker keeps no retained messages (publishes then go unretained). */
  readonly retainAvailable: boolean;
}

export interface IncomingMessage {
  readonly topic: string;
  readonly payload: Buffer;
  readonly retain: boolean;
  readonly dup: boolean;
  /** MQTT 3.1.1: the message was over maxPacketBytes; its payload was dropped unread. */
  readonly oversizedBytes?: number;
}

export interface MqttConnectionHandlers {
  onConnect(session: MqttSession): void;
  onDisconnect(session: MqttSession): void;
  /**
   * One message at a time: the next one is not read, and this one is not acknowledged (PUBACK),
   * until the returned promise settles. So a command is acked only once carried out or durably
   * refused, and a slow handler makes the broker hold the backlog (Receive Maximum), not us.
   */
  onMessage(message: IncomingMessage): void | Promise<void>;
}

export interface Subscription {
  readonly topic: string;
  readonly qos: 0 | 1;
  /** MQTT 5 retain-as-published: keep the retain flag on live messages (to refuse retained commands). */
  readonly rap?: boolean;
}

function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new AgentError('broker_unavailable', `${what} took over ${ms} ms`)),
      ms,
    );
    promise.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

export class MqttConnection {
  private readonly options: MqttConnectionOptions;
  private readonly handlers: MqttConnectionHandlers;
  private readonly endpoints: readonly Endpoint[];
  /** The endpoint of the current (or last) attempt. */
  private current = 0;
  private readonly random: () => number;
  private client: MqttClient | undefined;
  private session: MqttSession | undefined;
  private generation = 0;
  /** Retries since the last stable connection: the backoff grows once per round over the URLs. */
  private attempt = 0;
  /** Per endpoint: the MQTT version of its next attempt. */
  private readonly versions: (4 | 5)[];
  /** Per endpoint: 3.1.1 chosen after a close without CONNACK, not yet answered by a CONNACK. */
  private readonly versionOnTrial: boolean[];
  /** Per endpoint: false once the broker said it keeps no retained messages. */
  private readonly retainAvailable: boolean[];
  private stopped = true;
  private retryTimer: NodeJS.Timeout | undefined;
  private stableTimer: NodeJS.Timeout | undefined;
  private readonly lookupsInFlight = new Map<string, Promise<string>>();
  /** Rejecters of publishes waiting for a PUBACK on the current connection. */
  private readonly pending = new Set<(err: Error) => void>();
  private failuresLogged = 0;
  private lastFailure: string | undefined;

  constructor(options: MqttConnectionOptions, handlers: MqttConnectionHandlers) {
    this.options = options;
    this.handlers = handlers;
    if (options.urls.length === 0) throw new AgentError('config_invalid', 'no broker URL');
    this.endpoints = options.urls.map((url) => parseBrokerUrl(url, options.tls));
    this.random = options.random ?? Math.random;
    this.versions = this.endpoints.map(() => (options.protocol === '3.1.1' ? 4 : 5));
    this.versionOnTrial = this.endpoints.map(() => false);
    this.retainAvailable = this.endpoints.map(() => true);
  }

  get connected(): boolean {
    return this.session !== undefined;
  }

  get protocolVersion(): 4 | 5 {
    return this.versions[this.current] ?? 5;
  }

  get currentSession(): MqttSession | undefined {
    return this.session;
  }

  /** The URL of the broker connected to (or last tried). */
  get brokerUrl(): string {
    return this.options.urls[this.current] ?? '';
  }

  /** Why the last attempt failed, if it did. */
  get lastError(): string | undefined {
    return this.lastFailure;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    void this.attemptConnect();
  }

  /**
   * Stops reconnecting; publishes `farewell` (the offline status: a clean DISCONNECT suppresses
   * the will) when connected, waits at most `graceMs`, then closes.
   */
  async stop(farewell?: MqttMessageSpec, graceMs = 1000): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.stableTimer);
    const client = this.client;
    if (client === undefined) return;
    if (farewell && this.connected) {
      await withDeadline(this.publish(farewell.topic, farewell.payload, farewell), graceMs, 'farewell').catch(
        () => {},
      );
    }
    this.dropClient(new AgentError('broker_unavailable', 'the cloud link stopped'));
    await withDeadline(
      new Promise<void>((resolve) => client.end(false, {}, () => resolve())),
      graceMs,
      'disconnect',
    ).catch(() => client.end(true));
  }

  /** Resolves on PUBACK (QoS 1) or once written (QoS 0); rejects at once when offline. */
  publish(topic: string, payload: string | Buffer, opts: { qos: 0 | 1; retain: boolean }): Promise<void> {
    const client = this.client;
    if (client === undefined || this.session === undefined)
      return Promise.reject(new AgentError('broker_unavailable', 'not connected to the broker'));
    return new Promise<void>((resolve, reject) => {
      const settle = (err?: Error) => {
        this.pending.delete(rejecter);
        if (err) reject(err);
        else resolve();
      };
      const rejecter = (err: Error) => settle(err);
      this.pending.add(rejecter);
      // A broker that keeps no retained messages disconnects a client that sends one.
      const retain = opts.retain && this.session?.retainAvailable !== false;
      client.publish(topic, payload, { qos: opts.qos, retain }, (err) => settle(err ?? undefined));
    });
  }

  subscribe(subscriptions: readonly Subscription[]): Promise<void> {
    const client = this.client;
    if (client === undefined || this.session === undefined)
      return Promise.reject(new AgentError('broker_unavailable', 'not connected to the broker'));
    const v5 = this.protocolVersion === 5;
    const map: Record<string, { qos: 0 | 1; rap?: boolean }> = {};
    for (const s of subscriptions) map[s.topic] = v5 && s.rap ? { qos: s.qos, rap: true } : { qos: s.qos };
    return new Promise<void>((resolve, reject) => {
      client.subscribe(map, (err, granted) => {
        if (err) return reject(err);
        const refused = (granted ?? []).filter((g) => g.qos > 2);
        if (refused.length > 0)
          return reject(
            new AgentError(
              'broker_unavailable',
              `the broker refused ${refused.map((g) => g.topic).join(', ')}`,
            ),
          );
        resolve();
      });
    });
  }

  private resolve(host: string): Promise<string> {
    if (isIP(host) !== 0) return Promise.resolve(host);
    if (this.options.resolveHost) return this.options.resolveHost(host);
    // Single flight per name: a lookup that outlived its deadline is reused, never doubled.
    let current = this.lookupsInFlight.get(host);
    if (current === undefined) {
      current = lookup(host).then(
        (r) => r.address,
        (err: unknown) => {
          throw new AgentError('broker_unavailable', `cannot resolve ${host}: ${(err as Error).message}`);
        },
      );
      const settled = current;
      this.lookupsInFlight.set(host, settled);
      const forget = () => {
        if (this.lookupsInFlight.get(host) === settled) this.lookupsInFlight.delete(host);
      };
      void settled.then(forget, forget);
    }
    return withDeadline(current, this.options.connectTimeoutMs, `resolving ${host}`);
  }

  private async attemptConnect(): Promise<void> {
    if (this.stopped) return;
    const endpointIndex = this.current;
    const endpoint = this.endpoints[endpointIndex];
    if (endpoint === undefined) return;
    const { host, port, protocol } = endpoint;
    let address: string;
    try {
      address = await this.resolve(host);
    } catch (err) {
      this.noteFailure(err);
      this.scheduleRetry();
      return;
    }
    if (this.stopped) return;
    const o = this.options;
    const version = this.protocolVersion;
    const clean = o.sessionExpiryS === 0;
    const options: IClientOptions = {
      protocol,
      host: address,
      port,
      ...(isIP(host) === 0 ? { servername: host } : {}),
      ...(o.tls.ca ? { ca: o.tls.ca } : {}),
      ...(o.tls.cert ? { cert: o.tls.cert } : {}),
      ...(o.tls.key ? { key: o.tls.key } : {}),
      rejectUnauthorized: true,
      clientId: o.clientId,
      protocolVersion: version,
      clean,
      ...(version === 5
        ? {
            properties: {
              ...(clean ? {} : { sessionExpiryInterval: o.sessionExpiryS }),
              ...(o.maxPacketBytes !== undefined ? { maximumPacketSize: o.maxPacketBytes } : {}),
              ...(o.receiveMaximum !== undefined ? { receiveMaximum: o.receiveMaximum } : {}),
            },
          }
        : {}),
      keepalive: o.keepaliveS,
      connectTimeout: o.connectTimeoutMs,
      reconnectPeriod: 0,
      resubscribe: false,
      queueQoSZero: false,
      ...(o.will
        ? {
            will: {
              topic: o.will.topic,
              payload: Buffer.from(o.will.payload),
              qos: o.will.qos,
              retain: o.will.retain && this.retainAvailable[endpointIndex] !== false,
            },
          }
        : {}),
    };
    // MQTT 3.1.1 cannot tell the broker a size limit: the stream goes through the size guard.
    const oversized: OversizedPublish[] = [];
    const guardLimit = version === 4 ? o.maxPacketBytes : undefined;
    const skipRate = o.oversizedBytesPerS ?? 4 * 1024 * 1024;
    const client =
      guardLimit !== undefined
        ? new MqttClient(
            () =>
              guardedStream(
                protocol === 'mqtts'
                  ? tlsConnect({
                      host: address,
                      port,
                      ...(isIP(host) === 0 ? { servername: host } : {}),
                      ...(o.tls.ca ? { ca: o.tls.ca } : {}),
                      ...(o.tls.cert ? { cert: o.tls.cert } : {}),
                      ...(o.tls.key ? { key: o.tls.key } : {}),
                      rejectUnauthorized: true,
                    })
                  : netConnect({ host: address, port }),
                new PublishSizeGuard(guardLimit, (p) => oversized.push(p)),
                new TokenBucket(skipRate, skipRate, performance.now()),
              ),
            options,
          )
        : connect(options);
    this.client = client;
    let session: MqttSession | undefined;
    let refusedVersion = false;
    let refusedRetain = false;
    let errored = false;
    client.on('connect', (connack) => {
      if (this.client !== client) return;
      this.generation += 1;
      const receiveMaximum = connack.properties?.receiveMaximum ?? 65_535;
      const retainAvailable = connack.properties?.retainAvailable !== false;
      if (!retainAvailable) this.retainAvailable[endpointIndex] = false;
      this.versionOnTrial[endpointIndex] = false;
      session = {
        generation: this.generation,
        protocolVersion: version,
        sessionPresent: connack.sessionPresent,
        receiveMaximum,
        retainAvailable,
      };
      this.session = session;
      if (this.failuresLogged > 0 || this.generation > 1)
        o.log.info(
          {
            protocol: version === 5 ? '5' : '3.1.1',
            session: connack.sessionPresent,
            broker: o.urls[endpointIndex],
          },
          'cloud link up again',
        );
      else
        o.log.info(
          {
            protocol: version === 5 ? '5' : '3.1.1',
            session: connack.sessionPresent,
            broker: o.urls[endpointIndex],
          },
          'cloud link up',
        );
      this.failuresLogged = 0;
      clearTimeout(this.stableTimer);
      this.stableTimer = setTimeout(() => {
        this.attempt = 0;
      }, o.stableAfterMs ?? 10_000);
      this.stableTimer.unref();
      this.handlers.onConnect(session);
    });
    // mqtt.js sends the PUBACK of a QoS 1 message, and parses the next packet, only when
    // handleMessage calls back: called back once the handler is done (acked after acted).
    client.handleMessage = (packet, done) => {
      if (this.client !== client || !session || packet.cmd !== 'publish') return done();
      const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
      const cut =
        payload.length === 0 && oversized[0]?.topic === packet.topic ? oversized.shift() : undefined;
      let handled: void | Promise<void>;
      try {
        handled = this.handlers.onMessage({
          topic: packet.topic,
          payload,
          retain: packet.retain,
          dup: packet.dup,
          ...(cut ? { oversizedBytes: cut.bytes } : {}),
        });
      } catch (err) {
        o.log.error({ err: String(err) }, 'inbound message handler failed');
        return done();
      }
      if (handled === undefined) return done();
      handled.then(
        () => done(),
        (err: unknown) => {
          o.log.error({ err: String(err) }, 'inbound message handler failed');
          done();
        },
      );
    };
    client.on('error', (err: Error & { code?: unknown }) => {
      if (this.client !== client) return;
      // 1: 3.1.1 "unacceptable protocol version"; 132 (0x84): MQTT 5 "unsupported protocol version".
      if (o.protocol === 'auto' && version === 5 && (err.code === 1 || err.code === 132)) {
        refusedVersion = true;
        this.versions[endpointIndex] = 4;
        o.log.warn({ broker: o.urls[endpointIndex] }, 'the broker refused MQTT 5; using MQTT 3.1.1');
      } else if (err.code === 154 && this.retainAvailable[endpointIndex] !== false) {
        // 0x9A "Retain not supported": our will is retained; the next attempt's is not.
        refusedRetain = true;
        this.retainAvailable[endpointIndex] = false;
        o.log.warn(
          { broker: o.urls[endpointIndex] },
          'the broker keeps no retained messages; publishing unretained',
        );
      } else {
        errored = true;
        this.noteFailure(err);
      }
    });
    client.on('close', () => {
      if (this.client !== client) return;
      const was = session;
      this.dropClient(new AgentError('broker_unavailable', 'the connection to the broker closed'));
      client.end(true);
      // Closed by the broker after our CONNECT with no CONNACK and no error: a refused TCP
      // connection, a TLS failure, a reset and a CONNACK timeout all come as errors first.
      const closedUnanswered = !was && !errored && !refusedVersion && !refusedRetain;
      if (closedUnanswered && o.protocol === 'auto' && version === 5) {
        this.versions[endpointIndex] = 4;
        this.versionOnTrial[endpointIndex] = true;
        o.log.warn(
          { broker: o.urls[endpointIndex] },
          'the broker closed the connection on an MQTT 5 CONNECT without answering; trying MQTT 3.1.1',
        );
        if (!this.stopped) this.retryTimer = setTimeout(() => void this.attemptConnect(), 0);
        return;
      }
      if (closedUnanswered && version === 4 && this.versionOnTrial[endpointIndex]) {
        // 3.1.1 was closed unanswered too: the broker's refusal was not about the version.
        this.versions[endpointIndex] = 5;
        this.versionOnTrial[endpointIndex] = false;
      }
      if (closedUnanswered) this.noteFailure(new Error('no CONNACK: the broker closed the connection'));
      if (was) {
        clearTimeout(this.stableTimer);
        o.log.warn({ code: 'broker_unavailable' }, 'cloud link down; reconnecting');
        this.handlers.onDisconnect(was);
      }
      if (refusedVersion || refusedRetain) {
        // Not a failure of the broker: try 3.1.1 (or an unretained will) straight away.
        if (!this.stopped) this.retryTimer = setTimeout(() => void this.attemptConnect(), 0);
        return;
      }
      this.scheduleRetry();
    });
  }

  private dropClient(reason: Error): void {
    this.session = undefined;
    this.client = undefined;
    for (const reject of [...this.pending]) reject(reason);
    this.pending.clear();
  }

  private noteFailure(err: unknown): void {
    const message = err instanceof Error ? err.message : String(err);
    this.lastFailure = message;
    // The first failure of an outage is a warning; the retries after it are debug noise.
    if (this.failuresLogged === 0)
      this.options.log.warn(
        { code: 'broker_unavailable', err: message, broker: this.brokerUrl },
        'cannot reach the broker; retrying',
      );
    else
      this.options.log.debug(
        { code: 'broker_unavailable', err: message, broker: this.brokerUrl },
        'broker still unreachable',
      );
    this.failuresLogged += 1;
  }

  private scheduleRetry(): void {
    if (this.stopped) return;
    const delay = roundBackoffDelay(this.attempt, this.endpoints.length, this.options.backoff, this.random);
    this.attempt += 1;
    this.current = (this.current + 1) % this.endpoints.length;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.attemptConnect(), delay);
    this.retryTimer.unref();
  }
}

/**
 * The broker's byte stream through a PublishSizeGuard, as the Duplex mqtt.js reads and writes.
 * Dropped payload bytes are paced by `skipBudget` (the socket pauses), so a stream of huge
 * messages costs at most that much TLS decryption a second.
 */
function guardedStream(socket: Socket, guard: PublishSizeGuard, skipBudget: TokenBucket): Duplex {
  let resumeTimer: NodeJS.Timeout | undefined;
  let wanted = true;
  let pacing = false;
  const duplex = new Duplex({
    write(chunk: Buffer, _encoding, callback) {
      socket.write(chunk, (err) => callback(err ?? null));
    },
    final(callback) {
      socket.end(() => callback());
    },
    read() {
      wanted = true;
      if (!pacing) socket.resume();
    },
    destroy(err, callback) {
      clearTimeout(resumeTimer);
      socket.destroy(err ?? undefined);
      callback(err);
    },
  });
  socket.on('data', (chunk: Buffer) => {
    const before = guard.skipped;
    for (const part of guard.push(chunk)) if (!duplex.push(part)) wanted = false;
    const skipped = guard.skipped - before;
    const wait = skipped > 0 ? skipBudget.takeWithDebt(skipped, performance.now()) : 0;
    if (wait > 0) {
      pacing = true;
      socket.pause();
      clearTimeout(resumeTimer);
      resumeTimer = setTimeout(() => {
        pacing = false;
        if (wanted) socket.resume();
      }, wait);
    } else if (!wanted) socket.pause();
  });
  socket.on('end', () => duplex.push(null));
  socket.on('error', (err) => duplex.destroy(err));
  socket.on('close', () => duplex.destroy());
  return duplex;
}
