import { connect, createServer, type Server, type Socket } from 'node:net';

/**
 * A wire tap for the chaos soak: a loopback TCP relay in front of a broker that reads the MQTT
 * packets going through it, so a lost event can be traced to the part that lost it (the vehicle
 * never sent it, the broker never acknowledged it, the broker never passed it on, or the cloud
 * client never reported it). It reads CONNECT (for the protocol version), PUBLISH and PUBACK and
 * steps over everything else; it never changes a byte.
 */

export type MqttWireEvent =
  | { readonly kind: 'connect'; readonly protocolVersion: number }
  | {
      readonly kind: 'publish';
      readonly topic: string;
      readonly qos: number;
      readonly dup: boolean;
      readonly packetId?: number;
      readonly payload: Buffer;
    }
  | { readonly kind: 'puback'; readonly packetId: number; readonly reasonCode: number }
  /** Bytes that are not MQTT: the stream is not read further. */
  | { readonly kind: 'garbage'; readonly problem: string };

const CONNECT = 1;
const PUBLISH = 3;
const PUBACK = 4;

/** Packets larger than this are stepped over unread (a keyring set, say), not buffered. */
const MAX_READ_BYTES = 1 << 20;

/**
 * Splits one direction of an MQTT byte stream into packets. The protocol version decides whether
 * PUBLISH and PUBACK carry properties (MQTT 5): a client-to-broker parser learns it from CONNECT;
 * the other direction's parser is told (`protocolVersion`).
 */
export class MqttStreamParser {
  protocolVersion: number;
  private buffer: Buffer = Buffer.alloc(0);
  /** Bytes of an oversized packet still to step over. */
  private skipping = 0;
  private broken = false;

  constructor(protocolVersion = 4) {
    this.protocolVersion = protocolVersion;
  }

  push(chunk: Buffer): MqttWireEvent[] {
    if (this.broken) return [];
    let data = chunk;
    if (this.skipping > 0) {
      const skipped = Math.min(this.skipping, data.length);
      this.skipping -= skipped;
      data = data.subarray(skipped);
    }
    this.buffer = this.buffer.length === 0 ? data : Buffer.concat([this.buffer, data]);
    const events: MqttWireEvent[] = [];
    for (;;) {
      const header = readFixedHeader(this.buffer);
      if (header === 'incomplete') break;
      if (typeof header === 'string') {
        this.broken = true;
        this.buffer = Buffer.alloc(0);
        events.push({ kind: 'garbage', problem: header });
        break;
      }
      const total = header.headerBytes + header.remaining;
      if (header.remaining > MAX_READ_BYTES) {
        this.skipping = Math.max(0, total - this.buffer.length);
        this.buffer = this.buffer.subarray(Math.min(total, this.buffer.length));
        continue;
      }
      if (this.buffer.length < total) break;
      const body = this.buffer.subarray(header.headerBytes, total);
      this.buffer = this.buffer.subarray(total);
      const event = this.decode(header.type, header.flags, body);
      if (event !== undefined) events.push(event);
      if (event?.kind === 'garbage') {
        this.broken = true;
        this.buffer = Buffer.alloc(0);
        break;
      }
    }
    // Keep only what is still needed, not the chunk it was cut from.
    if (this.buffer.length > 0) this.buffer = Buffer.from(this.buffer);
    return events;
  }

  private decode(type: number, flags: number, body: Buffer): MqttWireEvent | undefined {
    try {
      if (type === CONNECT) {
        const nameLength = body.readUInt16BE(0);
        const protocolVersion = body.readUInt8(2 + nameLength);
        this.protocolVersion = protocolVersion;
        return { kind: 'connect', protocolVersion };
      }
      if (type === PUBLISH) {
        const qos = (flags >> 1) & 3;
        if (qos === 3) return { kind: 'garbage', problem: 'PUBLISH with QoS 3' };
        const topicLength = body.readUInt16BE(0);
        if (2 + topicLength > body.length) return { kind: 'garbage', problem: 'PUBLISH topic past its end' };
        const topic = body.toString('utf8', 2, 2 + topicLength);
        let at = 2 + topicLength;
        let packetId: number | undefined;
        if (qos > 0) {
          packetId = body.readUInt16BE(at);
          at += 2;
        }
        if (this.protocolVersion === 5) {
          const properties = readVarint(body, at);
          if (properties === undefined) return { kind: 'garbage', problem: 'PUBLISH properties cut' };
          at += properties.bytes + properties.value;
          if (at > body.length) return { kind: 'garbage', problem: 'PUBLISH properties past its end' };
        }
        return {
          kind: 'publish',
          topic,
          qos,
          dup: (flags & 8) !== 0,
          ...(packetId === undefined ? {} : { packetId }),
          payload: Buffer.from(body.subarray(at)),
        };
      }
      if (type === PUBACK) {
        const packetId = body.readUInt16BE(0);
        // MQTT 5 leaves the reason code out when it is 0 (success).
        const reasonCode = this.protocolVersion === 5 && body.length > 2 ? body.readUInt8(2) : 0;
        return { kind: 'puback', packetId, reasonCode };
      }
      return undefined;
    } catch {
      return { kind: 'garbage', problem: `packet type ${type} cut short` };
    }
  }
}

type FixedHeader = { type: number; flags: number; remaining: number; headerBytes: number };

function readFixedHeader(buffer: Buffer): FixedHeader | 'incomplete' | string {
  if (buffer.length < 2) return 'incomplete';
  const first = buffer.readUInt8(0);
  const type = first >> 4;
  if (type === 0) return 'packet type 0 (reserved)';
  const length = readVarint(buffer, 1);
  if (length === undefined) return buffer.length >= 5 ? 'remaining length over 4 bytes' : 'incomplete';
  return { type, flags: first & 0x0f, remaining: length.value, headerBytes: 1 + length.bytes };
}

/** An MQTT variable byte integer at `at`, or undefined when cut short or over 4 bytes. */
function readVarint(buffer: Buffer, at: number): { value: number; bytes: number } | undefined {
  let value = 0;
  for (let i = 0; i < 4; i++) {
    if (at + i >= buffer.length) return undefined;
    const byte = buffer.readUInt8(at + i);
    value += (byte & 0x7f) * 128 ** i;
    if ((byte & 0x80) === 0) return { value, bytes: i + 1 };
  }
  return undefined;
}

export interface TapEvent {
  /** Numbers the connections through the tap, from 1. */
  readonly connection: number;
  /** `up`: client to broker; `down`: broker to client. */
  readonly direction: 'up' | 'down';
  readonly atMs: number;
  readonly event: MqttWireEvent;
}

/** A relay on a loopback port that forwards to `targetPort` and reports every packet it reads. */
export class MqttTap {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private connections = 0;
  port = 0;

  constructor(
    private readonly targetPort: number,
    private readonly onEvent: (e: TapEvent) => void,
  ) {}

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  async start(port = 0): Promise<void> {
    const server = createServer((client) => this.relay(client));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    const address = server.address();
    this.port = typeof address === 'object' && address !== null ? address.port : 0;
  }

  private relay(client: Socket): void {
    const connection = ++this.connections;
    const up = new MqttStreamParser();
    const down = new MqttStreamParser();
    const upstream = connect(this.targetPort, '127.0.0.1');
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        this.sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    const report = (direction: 'up' | 'down', events: MqttWireEvent[]) => {
      for (const event of events) this.onEvent({ connection, direction, atMs: Date.now(), event });
    };
    client.on('data', (chunk: Buffer) => {
      upstream.write(chunk);
      report('up', up.push(chunk));
      down.protocolVersion = up.protocolVersion;
    });
    upstream.on('data', (chunk: Buffer) => {
      client.write(chunk);
      report('down', down.push(chunk));
    });
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    this.server = undefined;
  }
}

/** What the wire showed of one outbox seq. */
export interface SeqTrace {
  /** PUBLISHes of it by the vehicle: connection and time. */
  readonly published: { readonly connection: number; readonly atMs: number }[];
  /** The broker's PUBACKs of those: connection, time and reason code (0x10: no subscriber matched). */
  readonly acked: { readonly connection: number; readonly atMs: number; readonly reasonCode: number }[];
  /** The broker's PUBLISHes of it to the cloud client. */
  readonly delivered: number[];
}

/**
 * Follows the outbox's events over two taps, the vehicle's (vehicle to broker) and the cloud's
 * (broker to cloud), by seq: what was sent, acknowledged and passed on.
 */
export class DeliveryLedger {
  private readonly traces = new Map<number, SeqTrace>();
  /** `${connection}:${packetId}` of a vehicle PUBLISH awaiting its PUBACK → its seq. */
  private readonly awaiting = new Map<string, number>();
  /** Events the broker acknowledged with 0x10 "no matching subscribers": nobody received them. */
  noSubscriberAcks = 0;

  constructor(private readonly eventsTopic: (topic: string) => boolean) {}

  private traceOf(seq: number): SeqTrace {
    let trace = this.traces.get(seq);
    if (trace === undefined) {
      trace = { published: [], acked: [], delivered: [] };
      this.traces.set(seq, trace);
    }
    return trace;
  }

  /** A packet on the vehicle's tap. */
  vehicle(e: TapEvent): void {
    const { event } = e;
    if (e.direction === 'up' && event.kind === 'publish' && this.eventsTopic(event.topic)) {
      const seq = seqOf(event.payload);
      if (seq === undefined) return;
      this.traceOf(seq).published.push({ connection: e.connection, atMs: e.atMs });
      if (event.packetId !== undefined) this.awaiting.set(`${e.connection}:${event.packetId}`, seq);
    } else if (e.direction === 'down' && event.kind === 'puback') {
      const key = `${e.connection}:${event.packetId}`;
      const seq = this.awaiting.get(key);
      if (seq === undefined) return;
      this.awaiting.delete(key);
      if (event.reasonCode === 0x10) this.noSubscriberAcks += 1;
      this.traceOf(seq).acked.push({ connection: e.connection, atMs: e.atMs, reasonCode: event.reasonCode });
    }
  }

  /** A packet on the cloud's tap. */
  cloud(e: TapEvent): void {
    const { event } = e;
    if (e.direction !== 'down' || event.kind !== 'publish' || !this.eventsTopic(event.topic)) return;
    const seq = seqOf(event.payload);
    if (seq !== undefined) this.traceOf(seq).delivered.push(e.atMs);
  }

  trace(seq: number): SeqTrace {
    return this.traces.get(seq) ?? { published: [], acked: [], delivered: [] };
  }
}

function seqOf(payload: Buffer): number | undefined {
  try {
    const seq = (JSON.parse(payload.toString('utf8')) as { seq?: unknown }).seq;
    return typeof seq === 'number' ? seq : undefined;
  } catch {
    return undefined;
  }
}

/** The part that lost a seq the cloud never received, from its trace. */
export function lossVerdict(inAuditLog: boolean, trace: SeqTrace, receivedByCloud: boolean): string {
  if (receivedByCloud) return 'received';
  if (!inAuditLog) return 'never written to the audit log (agent)';
  if (trace.published.length === 0) return 'written to the audit log but never published (agent outbox)';
  const acks = trace.acked.filter((a) => a.reasonCode < 0x80);
  if (acks.length === 0)
    return trace.acked.length > 0
      ? 'published but refused by the broker (PUBACK reason >= 0x80)'
      : 'published but never PUBACKed (the outbox stepped over it without an acknowledgement)';
  if (trace.delivered.length === 0) return 'PUBACKed by the broker but never delivered to the cloud (broker)';
  return 'delivered to the cloud connection but never reported by the cloud client (soak harness)';
}
