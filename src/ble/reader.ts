import { randomBytes } from 'node:crypto';
import type { CredentialReader, ReaderContext } from '../agent/reader.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Health } from '../core/types.js';
import type { BleChannel } from './channel.js';
import { type BleOutcome, KeyExchange, type KeyExchangeOptions } from './exchange.js';
import type { BleCandidate, BleLinkStats } from './link-options.js';

export type { BleOutcome, EnrollmentPort } from './exchange.js';

/**
 * The BLE phone-key reader: for each phone or fob the link offers, it opens a session and runs
 * one exchange of the vehicle-key protocol over it (src/ble/exchange.ts: hello, answer, decision,
 * result, or an E1 enrollment), then disconnects with a cooldown after a grant (one press opens
 * once) and a shorter one after a denial (a hostile device cannot hammer the reader).
 * It uses the link only through BleLinkPort (type imports: node-ble is not loaded from here).
 */

/** What the reader needs of the link (src/ble/link.ts BleLink implements it). */
export interface BleLinkPort {
  start(): Promise<void>;
  stop(): Promise<void>;
  health(): Health;
  stats(): BleLinkStats;
  onCandidate(listener: (candidate: BleCandidate) => void): () => void;
  openSession(address: string): Promise<BleChannel>;
}

export interface BleReaderOptions extends Omit<KeyExchangeOptions, 'id' | 'randomBytes'> {
  readonly id?: string;
  readonly link: BleLinkPort;
  /** The device is not offered again for this long after a grant. */
  readonly grantCooldownMs: number;
  /** ... and for this long after a denial or a failed exchange. */
  readonly denialCooldownMs: number;
  readonly randomBytes?: (length: number) => Uint8Array;
}

export interface BleReaderStats {
  readonly exchanges: number;
  readonly granted: number;
  readonly denied: number;
  readonly refused: number;
  readonly linkFailures: number;
  readonly enrollments: number;
  /** Sessions whose peer showed a signature-checked answer of an enrolled key. */
  readonly proven: number;
  readonly link: BleLinkStats;
}

export class BleReader implements CredentialReader {
  readonly id: string;
  private readonly options: BleReaderOptions;
  private readonly link: BleLinkPort;
  private readonly keyExchange: KeyExchange;
  private readonly inFlight = new Map<string, Promise<void>>();
  private readonly outcomeListeners = new Set<(outcome: BleOutcome) => void>();
  private context: ReaderContext | undefined;
  private offCandidate: (() => void) | undefined;
  private running = false;
  private readonly counters = { exchanges: 0, linkFailures: 0 };

  constructor(options: BleReaderOptions) {
    const window = options.answerWindowMs;
    if (!Number.isInteger(window) || window < 1 || window > 0xffff) {
      throw new AgentError('internal', 'the BLE answer window must be 1..65535 ms');
    }
    this.options = options;
    this.id = options.id ?? 'ble0';
    this.link = options.link;
    this.keyExchange = new KeyExchange({
      ...options,
      id: this.id,
      randomBytes: options.randomBytes ?? ((length) => new Uint8Array(randomBytes(length))),
    });
  }

  async start(context: ReaderContext): Promise<void> {
    if (this.running) return;
    this.context = context;
    this.running = true;
    this.offCandidate = this.link.onCandidate((candidate) => this.onCandidate(candidate));
    await this.link.start();
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.offCandidate?.();
    this.offCandidate = undefined;
    await this.link.stop();
    await Promise.allSettled([...this.inFlight.values()]);
  }

  health(): Health {
    return this.link.health();
  }

  stats(): BleReaderStats {
    const exchange = this.keyExchange.stats();
    return {
      exchanges: this.counters.exchanges,
      granted: exchange.granted,
      denied: exchange.denied,
      refused: exchange.refused,
      linkFailures: this.counters.linkFailures,
      enrollments: exchange.enrollments,
      proven: exchange.proven,
      link: this.link.stats(),
    };
  }

  /** Called after every exchange ends (the device is disconnected by then). */
  onOutcome(listener: (outcome: BleOutcome) => void): () => void {
    this.outcomeListeners.add(listener);
    return () => this.outcomeListeners.delete(listener);
  }

  private onCandidate(candidate: BleCandidate): void {
    const ctx = this.context;
    if (!this.running || ctx === undefined || this.inFlight.has(candidate.address)) return;
    // No reader-wide state refuses a device: rate limits are per credential (the agent's
    // decision), and the link bounds and shares the sessions among devices.
    const run = this.exchange(ctx, candidate.address).finally(() => this.inFlight.delete(candidate.address));
    this.inFlight.set(candidate.address, run);
  }

  /** One exchange with one device. Never rejects. */
  private async exchange(ctx: ReaderContext, address: string): Promise<void> {
    let channel: BleChannel;
    try {
      channel = await this.link.openSession(address);
    } catch (err) {
      const e = toAgentError(err, 'reader_error');
      if (e.code === 'busy') return; // held back by the link (cooldown, one session per device, bound)
      this.counters.linkFailures += 1;
      this.emit({ kind: 'failed', address, code: e.code });
      return;
    }
    this.counters.exchanges += 1;
    let outcome: BleOutcome | undefined;
    try {
      outcome = await this.keyExchange.run(ctx, channel);
    } catch (err) {
      const e = toAgentError(err);
      ctx.log.error({ code: e.code, err: e.message, address }, 'BLE exchange failed');
    } finally {
      const granted = outcome?.kind === 'decision' && outcome.decision.granted;
      const cooldownMs = granted ? this.options.grantCooldownMs : this.options.denialCooldownMs;
      await channel.close({ cooldownMs }).catch(() => {});
    }
    if (outcome !== undefined) this.emit(outcome);
  }

  private emit(outcome: BleOutcome): void {
    for (const listener of this.outcomeListeners) {
      try {
        listener(outcome);
      } catch (err) {
        this.context?.log.error({ err: String(err) }, 'BLE outcome listener threw');
      }
    }
  }
}
