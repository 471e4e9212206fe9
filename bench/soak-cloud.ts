import { connect as connectMqtt, type MqttClient } from 'mqtt';

/**
 * The cloud side of the chaos soak: one collector with a persistent session on the vehicles'
 * events, as docs/mqtt.md advises, that remembers every seq and when it was connected.
 */

export interface CloudEvent {
  readonly seq: number;
  readonly record: Record<string, unknown>;
  readonly again: boolean;
}

export class SoakCloud {
  /** Every seq received. */
  readonly seqs = new Set<number>();
  /** When the collector's connection came up and went down (ms), for the gap report. */
  readonly links: { readonly up: boolean; readonly atMs: number }[] = [];
  private client: MqttClient | undefined;

  constructor(
    private readonly options: {
      readonly clientId?: string;
      /** mqtt.js reconnect period; the soak's 100 ms, longer in the tests. */
      readonly reconnectPeriodMs?: number;
      readonly onEvent?: (e: CloudEvent) => void;
      readonly onLink?: (up: boolean) => void;
    } = {},
  ) {}

  get connected(): boolean {
    return this.client?.connected === true;
  }

  /** Connects to `url` and subscribes to `<prefix>/+/events` with QoS 1. */
  async start(url: string, prefix: string): Promise<void> {
    const client = connectMqtt(url, {
      clientId: this.options.clientId ?? 'soak-cloud',
      clean: false,
      protocolVersion: 4,
      reconnectPeriod: this.options.reconnectPeriodMs ?? 100,
    });
    this.client = client;
    client.on('error', () => {});
    client.on('connect', () => {
      this.links.push({ up: true, atMs: Date.now() });
      this.options.onLink?.(true);
    });
    client.on('close', () => {
      if (this.links.at(-1)?.up === false) return;
      this.links.push({ up: false, atMs: Date.now() });
      this.options.onLink?.(false);
    });
    client.on('message', (_topic, payload) => {
      let record: Record<string, unknown>;
      try {
        record = JSON.parse(payload.toString('utf8')) as Record<string, unknown>;
      } catch {
        return; // not an event record
      }
      if (typeof record.seq !== 'number') return;
      const again = this.seqs.has(record.seq);
      this.seqs.add(record.seq);
      this.options.onEvent?.({ seq: record.seq, record, again });
    });
    await new Promise<void>((resolve) => client.once('connect', () => resolve()));
    await client.subscribeAsync(`${prefix}/+/events`, { qos: 1 });
  }

  /** Whether the collector was connected at `atMs`. */
  connectedAt(atMs: number): boolean {
    let up = false;
    for (const link of this.links) {
      if (link.atMs > atMs) break;
      up = link.up;
    }
    return up;
  }

  async close(): Promise<void> {
    await this.client?.endAsync(true);
    this.client = undefined;
  }
}
