import { EventEmitter } from 'node:events';
import type { Code } from '../../core/codes.js';
import { AgentError, toAgentError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import type { Health, HealthState } from '../../core/types.js';
import { concatBytes } from '../../crypto/encoding.js';
import {
  CMD,
  type ExchangeAnswer,
  expectEmptyAnswer,
  type FirmwareVersion,
  formatFirmware,
  getFirmwareVersion,
  guessTargetKind,
  inDataExchange,
  inListPassiveTarget,
  inRelease,
  MAX_EXCHANGE_DATA,
  PARAM,
  parseFirmwareVersion,
  parseInDataExchange,
  parseStatusOnly,
  parseTypeATargets,
  pn532Error,
  rfMaxRetries,
  samConfiguration,
  setParameters,
  type TargetKind,
  type TypeATarget,
} from './commands.js';
import type { ByteLink, LinkFactory } from './link.js';
import { isAbortError, Pn532Transport, type RequestOptions, type TransportTiming } from './transport.js';

/**
 * PN532 reader driver: keeps the chip initialised and listening, reports cards as they enter the
 * field, carries APDUs to them, and recovers by itself from a wedged or unplugged reader.
 *
 * Listening: InListPassiveTarget with MxRtyPassiveActivation = 0xFF makes the chip retry until a
 * card answers, so a tap is reported the moment it happens (no polling interval). Whenever the
 * driver needs the chip for something else it aborts that command with an ACK and re-arms it after.
 * A liveness check (GetFirmwareVersion) runs every `livenessIntervalMs` while listening, since a
 * listening chip is otherwise silent and a wedge would go unnoticed.
 *
 * After a card is released the driver waits for the field to clear before listening again: it
 * asks with a bounded InListPassiveTarget until the released card no longer answers, so a card
 * held at the reader is not reported over and over.
 */

export interface Pn532Timing extends TransportTiming {
  /** Deadline for housekeeping commands (init, liveness, release). */
  readonly commandTimeoutMs: number;
  /** Default deadline for one exchangeApdu call (all its frames). */
  readonly apduTimeoutMs: number;
  /** Liveness check period while listening. */
  readonly livenessIntervalMs: number;
  /** Period of the "has the released card left?" check. */
  readonly removalPollMs: number;
  /** Pause after aborting the listening command, for an answer already on its way. */
  readonly abortSettleMs: number;
  /** A target nobody exchanged with or released for this long is released. */
  readonly targetIdleMs: number;
  /** First retry delay after a failure; doubles up to maxBackoffMs. */
  readonly backoffMs: number;
  readonly maxBackoffMs: number;
  /** Failed recovery attempts after which health is 'down' (before: 'degraded'). */
  readonly downAfterAttempts: number;
  /** Protocol errors (noise, NACK, error frames, bad checksums) within stormWindowMs that force a re-init. */
  readonly stormThreshold: number;
  readonly stormWindowMs: number;
}

export const DEFAULT_PN532_TIMING: Pn532Timing = {
  ackTimeoutMs: 100,
  interByteGapMs: 50,
  maxResends: 3,
  maxResponseNacks: 2,
  commandTimeoutMs: 500,
  apduTimeoutMs: 2000,
  livenessIntervalMs: 5000,
  removalPollMs: 150,
  abortSettleMs: 5,
  targetIdleMs: 5000,
  backoffMs: 100,
  maxBackoffMs: 5000,
  downAfterAttempts: 3,
  stormThreshold: 20,
  stormWindowMs: 2000,
};

/** Largest answer exchangeApdu assembles (an extended-length response APDU with its SW). */
export const MAX_APDU_ANSWER = 65538;

/** A card in the field, as the chip reported it. */
export interface TargetInfo {
  readonly uid: Uint8Array;
  readonly atqa: Uint8Array;
  readonly sak: number;
  readonly ats?: Uint8Array;
  readonly kind: TargetKind;
}

export interface ExchangeOptions {
  /** Deadline for the whole exchange (default timing.apduTimeoutMs). */
  readonly timeoutMs?: number;
  /** Follow 61XX answers with GET RESPONSE and return the assembled answer (default false). */
  readonly getResponse?: boolean;
}

/**
 * One card session, from the moment the card is reported until release (or until the card
 * leaves, or the reader fails). Its methods fail with a coded error once the session is over, so
 * an APDU can never reach a different card than the one that was reported.
 */
export interface Pn532Target extends TargetInfo {
  /** Increases with every card reported. */
  readonly id: number;
  readonly active: boolean;
  /**
   * Sends a command APDU and resolves with the response APDU (data ‖ SW1 ‖ SW2). Rejects with
   * `card_removed` when the card left, `reader_timeout` when it did not answer in time,
   * `reader_error` when the reader failed; the session ends on any of these.
   */
  exchangeApdu(apdu: Uint8Array, options?: ExchangeOptions): Promise<Uint8Array>;
  /** Ends the session (InRelease); the driver listens again once the card has left. Idempotent. */
  release(): Promise<void>;
}

export type Pn532DriverEvents = {
  target: [Pn532Target];
  health: [Health];
};

export interface Pn532DriverOptions {
  readonly openLink: LinkFactory;
  readonly log: Logger;
  readonly timing?: Partial<Pn532Timing>;
  /** Wall clock for Health.since (default Date.now). */
  readonly now?: () => number;
}

type Mode = 'stopped' | 'recovering' | 'listening' | 'target' | 'clearing';

/** MxRtyPassiveActivation for the "is the card still there" check: two tries, then NbTg = 0. */
const CLEAR_CHECK_RETRIES = 0x01;
const INFINITE = 0xff;

class TargetSession implements Pn532Target {
  readonly id: number;
  readonly tg: number;
  readonly uid: Uint8Array;
  readonly atqa: Uint8Array;
  readonly sak: number;
  readonly ats?: Uint8Array;
  readonly kind: TargetKind;
  endedWith: Code | undefined;
  private readonly driver: Pn532Driver;

  constructor(driver: Pn532Driver, id: number, target: TypeATarget) {
    this.driver = driver;
    this.id = id;
    this.tg = target.tg;
    this.uid = target.uid;
    this.atqa = target.atqa;
    this.sak = target.sak;
    if (target.ats) this.ats = target.ats;
    this.kind = guessTargetKind(target);
  }

  get active(): boolean {
    return this.endedWith === undefined;
  }

  exchangeApdu(apdu: Uint8Array, options: ExchangeOptions = {}): Promise<Uint8Array> {
    return this.driver.exchangeFor(this, apdu, options);
  }

  release(): Promise<void> {
    return this.driver.releaseFor(this);
  }
}

function sameBytes(a: Uint8Array | undefined, b: Uint8Array | undefined): boolean {
  if (!a || !b || a.length !== b.length) return false;
  return a.every((v, i) => v === b[i]);
}

export class Pn532Driver extends EventEmitter<Pn532DriverEvents> {
  private readonly openLink: LinkFactory;
  private readonly log: Logger;
  private readonly timing: Pn532Timing;
  private readonly now: () => number;

  private mode: Mode = 'stopped';
  private healthState: Health;
  private link: ByteLink | undefined;
  private transport: Pn532Transport | undefined;
  private fw: FirmwareVersion | undefined;

  /** Serialises every use of the chip. */
  private chain: Promise<void> = Promise.resolve();
  private queued = 0;
  private listen: Promise<Uint8Array> | undefined;
  private infiniteRetries = false;

  private session: TargetSession | undefined;
  private sessionCount = 0;
  private releasedUid: Uint8Array | undefined;
  private lateTarget: TypeATarget | undefined;

  private livenessTimer: NodeJS.Timeout | undefined;
  private livenessRunning = false;
  private clearTimer: NodeJS.Timeout | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  private recoveryTimer: NodeJS.Timeout | undefined;
  private recovering: Promise<void> | undefined;
  private attempts = 0;
  private protocolErrors: number[] = [];

  constructor(options: Pn532DriverOptions) {
    super();
    this.openLink = options.openLink;
    this.log = options.log;
    this.timing = { ...DEFAULT_PN532_TIMING, ...options.timing };
    this.now = options.now ?? Date.now;
    this.healthState = { state: 'down', detail: 'not started', since: this.now() };
  }

  // ── public surface ────────────────────────────────────────────────────────

  /**
   * Opens the port and initialises the chip. Resolves after the first attempt: initialised and
   * listening, or failed and retrying in the background (see health()).
   */
  async start(): Promise<void> {
    if (this.mode !== 'stopped') return;
    this.mode = 'recovering';
    this.attempts = 0;
    this.setHealth('degraded', 'starting');
    await this.recover('start');
  }

  /** Stops listening, releases any card and closes the port. */
  async stop(): Promise<void> {
    if (this.mode === 'stopped') return;
    this.mode = 'stopped';
    this.clearTimers();
    this.endSession('reader_error');
    const transport = this.transport;
    try {
      await this.withChip(async (t) => {
        await t.request(inRelease(0), { timeoutMs: this.timing.commandTimeoutMs, idempotent: true });
      });
    } catch {
      // Best effort: the port is closed next anyway.
    }
    await this.recovering?.catch(() => {});
    this.clearTimers();
    this.transport = undefined;
    this.link = undefined;
    await transport?.close().catch(() => {});
    this.setHealth('down', 'stopped');
  }

  health(): Health {
    return this.healthState;
  }

  /** Firmware reported by the chip at the last initialisation. */
  firmware(): FirmwareVersion | undefined {
    return this.fw;
  }

  /** The card session in progress, if any. */
  current(): Pn532Target | undefined {
    return this.session?.active ? this.session : undefined;
  }

  // ── chip access ───────────────────────────────────────────────────────────

  /** Runs `fn` with exclusive use of the chip, pausing the listening command around it. */
  private withChip<T>(fn: (transport: Pn532Transport) => Promise<T>): Promise<T> {
    this.queued++;
    const run = this.chain.then(async () => {
      try {
        await this.pauseListening();
        const transport = this.transport;
        if (!transport?.isOpen) throw new AgentError('reader_error', 'the PN532 is not connected');
        return await fn(transport);
      } finally {
        this.queued--;
        this.afterChipUse();
      }
    });
    this.chain = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  private request(transport: Pn532Transport, payload: Uint8Array, options?: Partial<RequestOptions>) {
    return transport.request(payload, {
      timeoutMs: options?.timeoutMs ?? this.timing.commandTimeoutMs,
      idempotent: options?.idempotent ?? true,
    });
  }

  private async pauseListening(): Promise<void> {
    const listen = this.listen;
    if (!listen) return;
    await this.transport?.abort();
    await listen.catch(() => {});
    // An answer already on the wire when the ACK left arrives now, as a stale answer (onStale),
    // rather than being taken for the answer to the next command.
    await new Promise((resolve) => setTimeout(resolve, this.timing.abortSettleMs));
  }

  private afterChipUse(): void {
    if (this.queued > 0) return;
    if (this.lateTarget && this.mode === 'listening') {
      const target = this.lateTarget;
      this.lateTarget = undefined;
      this.beginTarget(target);
      return;
    }
    this.lateTarget = undefined;
    this.armListen();
  }

  private armListen(): void {
    const transport = this.transport;
    if (this.mode !== 'listening' || this.listen || this.queued > 0 || !transport?.isOpen) return;
    const listen = transport.request(inListPassiveTarget(1), { idempotent: true });
    this.listen = listen;
    listen.then(
      (response) => {
        this.listen = undefined;
        this.onListenAnswer(response);
      },
      (err: unknown) => {
        this.listen = undefined;
        if (isAbortError(err)) return;
        this.onChipFailure(err, 'listening');
      },
    );
  }

  private onListenAnswer(response: Uint8Array): void {
    if (this.mode !== 'listening') return;
    let targets: TypeATarget[];
    try {
      targets = parseTypeATargets(response);
    } catch (err) {
      this.log.warn({ code: toAgentError(err).code }, 'unreadable InListPassiveTarget answer');
      targets = [];
    }
    const first = targets[0];
    if (first) {
      this.beginTarget(first);
      return;
    }
    // The chip gave up (it should not with infinite retries): listen again shortly.
    setTimeout(() => this.armListen(), 10).unref();
  }

  private onStale(response: Uint8Array): void {
    if (response[0] !== CMD.InListPassiveTarget + 1) return;
    // A listening command answered just as it was aborted: the chip has selected that card.
    try {
      const first = parseTypeATargets(response)[0];
      if (first && this.mode === 'listening') this.lateTarget = first;
    } catch {
      // ignore a garbled late answer
    }
  }

  // ── cards ─────────────────────────────────────────────────────────────────

  private beginTarget(target: TypeATarget): void {
    this.endSession('card_removed');
    this.sessionCount++;
    const session = new TargetSession(this, this.sessionCount, target);
    this.session = session;
    this.mode = 'target';
    this.stopLiveness();
    this.touchIdle(session);
    this.log.info({ target: session.id, kind: session.kind, sak: session.sak }, 'card in the field');
    try {
      this.emit('target', session);
    } catch (err) {
      this.log.error({ code: toAgentError(err).code }, 'a target listener threw');
    }
  }

  private endSession(code: Code): void {
    const session = this.session;
    if (!session) return;
    if (session.endedWith === undefined) session.endedWith = code;
    this.session = undefined;
    clearTimeout(this.idleTimer);
  }

  private touchIdle(session: TargetSession): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.session !== session) return;
      this.log.warn({ target: session.id }, 'card session idle; releasing it');
      void this.releaseFor(session);
    }, this.timing.targetIdleMs);
    this.idleTimer.unref();
  }

  /** @internal used by Pn532Target.exchangeApdu */
  exchangeFor(session: TargetSession, apdu: Uint8Array, options: ExchangeOptions): Promise<Uint8Array> {
    if (!(apdu instanceof Uint8Array) || apdu.length === 0) {
      return Promise.reject(new AgentError('malformed', 'the APDU must be a non-empty byte array'));
    }
    if (apdu.length > 65544) return Promise.reject(new AgentError('frame_too_large', 'APDU too long'));
    const deadline = performance.now() + (options.timeoutMs ?? this.timing.apduTimeoutMs);
    return this.withChip(async (t) => {
      this.ensureActive(session);
      this.touchIdle(session);
      try {
        let answer = await this.transceive(t, session, apdu, deadline);
        if (options.getResponse) answer = await this.collectGetResponse(t, session, apdu, answer, deadline);
        this.touchIdle(session);
        return answer;
      } catch (err) {
        const error = toAgentError(err, 'reader_error');
        await this.afterExchangeFailure(t, session, error);
        throw error;
      }
    });
  }

  /** @internal used by Pn532Target.release */
  releaseFor(session: TargetSession): Promise<void> {
    if (!session.active) return Promise.resolve();
    return this.withChip(async (t) => {
      if (this.session !== session) return;
      this.endSession('card_removed');
      await this.releaseAndClear(t, session);
    }).catch((err: unknown) => {
      this.onChipFailure(err, 'release');
    });
  }

  private ensureActive(session: TargetSession): void {
    if (session.endedWith !== undefined || this.session !== session || this.mode !== 'target') {
      const code = session.endedWith ?? 'card_removed';
      const message =
        code === 'card_removed'
          ? 'the card session is over'
          : code === 'reader_timeout'
            ? 'the card session ended: the card did not answer in time'
            : 'the card session ended: the reader failed';
      throw new AgentError(code, message, { target: session.id });
    }
  }

  private remaining(deadline: number): number {
    const left = deadline - performance.now();
    if (left <= 0) throw new AgentError('reader_timeout', 'the card did not answer in time');
    return left;
  }

  /** One APDU through InDataExchange, chaining with the MI bit beyond 262 bytes each way. */
  private async transceive(
    t: Pn532Transport,
    session: TargetSession,
    apdu: Uint8Array,
    deadline: number,
  ): Promise<Uint8Array> {
    let answer: ExchangeAnswer = { error: 0, more: false, data: new Uint8Array(0) };
    for (let offset = 0; offset < apdu.length; offset += MAX_EXCHANGE_DATA) {
      const part = apdu.subarray(offset, offset + MAX_EXCHANGE_DATA);
      const more = offset + MAX_EXCHANGE_DATA < apdu.length;
      answer = await this.exchangeFrame(t, inDataExchange(session.tg, part, more), deadline);
    }
    const parts = [answer.data];
    let total = answer.data.length;
    while (answer.more) {
      answer = await this.exchangeFrame(t, inDataExchange(session.tg, new Uint8Array(0)), deadline);
      total += answer.data.length;
      if (total > MAX_APDU_ANSWER) throw new AgentError('frame_too_large', 'card answer exceeds the limit');
      parts.push(answer.data);
    }
    const response = concatBytes(...parts);
    if (response.length < 2) throw new AgentError('malformed', 'card answer shorter than a status word');
    return response;
  }

  private async exchangeFrame(t: Pn532Transport, payload: Uint8Array, deadline: number) {
    const response = await t.request(payload, { timeoutMs: this.remaining(deadline), idempotent: false });
    const answer = parseInDataExchange(response);
    if (answer.error !== 0) throw pn532Error(answer.error, CMD.InDataExchange);
    return answer;
  }

  /** 61XX: the card has XX (00 = 256) more bytes; fetch them with GET RESPONSE until done. */
  private async collectGetResponse(
    t: Pn532Transport,
    session: TargetSession,
    command: Uint8Array,
    first: Uint8Array,
    deadline: number,
  ): Promise<Uint8Array> {
    const cla = (command[0] ?? 0) & 0x80 ? 0x00 : (command[0] ?? 0) & 0x03;
    const parts: Uint8Array[] = [];
    let answer = first;
    let total = 0;
    for (let round = 0; answer.length >= 2 && answer[answer.length - 2] === 0x61; round++) {
      if (round >= 256) throw new AgentError('malformed', 'too many GET RESPONSE rounds');
      parts.push(answer.subarray(0, answer.length - 2));
      total += answer.length - 2;
      if (total > MAX_APDU_ANSWER) throw new AgentError('frame_too_large', 'card answer exceeds the limit');
      const le = answer[answer.length - 1] ?? 0;
      answer = await this.transceive(t, session, Uint8Array.of(cla, 0xc0, 0x00, 0x00, le), deadline);
    }
    parts.push(answer);
    return concatBytes(...parts);
  }

  private async afterExchangeFailure(
    t: Pn532Transport,
    session: TargetSession,
    error: AgentError,
  ): Promise<void> {
    if (this.session !== session) return;
    const chipSilent = error.details.noAnswer === true || error.details.linkClosed === true;
    if (chipSilent) {
      this.endSession('reader_error');
      this.onChipFailure(error, 'exchange');
      return;
    }
    if (error.code === 'card_removed' || error.code === 'reader_timeout' || error.code === 'frame_checksum') {
      // The card session is broken either way: release it and wait for the field to clear.
      this.endSession(error.code === 'frame_checksum' ? 'reader_error' : error.code);
      try {
        await this.releaseAndClear(t, session);
      } catch (err) {
        this.onChipFailure(err, 'release');
      }
    }
    // Other errors (malformed answer, chip status such as buffer overflow) leave the session to the caller.
  }

  private async releaseAndClear(t: Pn532Transport, session: TargetSession): Promise<void> {
    // A non-zero status (the card already gone) is fine: the chip has dropped the target.
    parseStatusOnly(await this.request(t, inRelease(session.tg)), CMD.InRelease);
    this.releasedUid = session.uid;
    this.mode = 'clearing';
    await this.clearCheck(t);
  }

  /** Asks (with a bounded activation) whether a card answers; listens again once none does. */
  private async clearCheck(t: Pn532Transport): Promise<void> {
    if (this.mode !== 'clearing') return;
    if (this.infiniteRetries) {
      expectEmptyAnswer(
        await this.request(t, rfMaxRetries(INFINITE, 0x01, CLEAR_CHECK_RETRIES)),
        CMD.RFConfiguration,
      );
      this.infiniteRetries = false;
    }
    const found = parseTypeATargets(await this.request(t, inListPassiveTarget(1)))[0];
    if (found && sameBytes(found.uid, this.releasedUid)) {
      await this.request(t, inRelease(found.tg));
      this.scheduleClearCheck();
      return;
    }
    expectEmptyAnswer(await this.request(t, rfMaxRetries(INFINITE, 0x01, INFINITE)), CMD.RFConfiguration);
    this.infiniteRetries = true;
    this.releasedUid = undefined;
    if (found) {
      this.beginTarget(found);
      return;
    }
    this.mode = 'listening';
    this.startLiveness();
  }

  private scheduleClearCheck(): void {
    clearTimeout(this.clearTimer);
    this.clearTimer = setTimeout(() => {
      if (this.mode !== 'clearing') return;
      this.withChip((t) => this.clearCheck(t)).catch((err: unknown) =>
        this.onChipFailure(err, 'removal check'),
      );
    }, this.timing.removalPollMs);
  }

  // ── liveness, failures, recovery ──────────────────────────────────────────

  private startLiveness(): void {
    this.stopLiveness();
    this.livenessTimer = setInterval(() => {
      if (this.mode !== 'listening' || this.livenessRunning) return;
      this.livenessRunning = true;
      this.withChip(async (t) => {
        if (this.mode !== 'listening') return;
        parseFirmwareVersion(await this.request(t, getFirmwareVersion()));
      })
        .catch((err: unknown) => this.onChipFailure(err, 'liveness check'))
        .finally(() => {
          this.livenessRunning = false;
        });
    }, this.timing.livenessIntervalMs);
  }

  private stopLiveness(): void {
    clearInterval(this.livenessTimer);
    this.livenessTimer = undefined;
  }

  private onProtocolError(kind: string): void {
    const now = performance.now();
    this.protocolErrors = this.protocolErrors.filter((at) => now - at < this.timing.stormWindowMs);
    this.protocolErrors.push(now);
    if (this.protocolErrors.length >= this.timing.stormThreshold && this.mode !== 'recovering') {
      this.protocolErrors = [];
      this.onChipFailure(
        new AgentError('reader_error', 'PN532 protocol error storm', { last: kind }),
        'error storm',
      );
    }
  }

  private onChipFailure(err: unknown, during: string): void {
    if (isAbortError(err) || this.mode === 'stopped' || this.mode === 'recovering') return;
    const error = toAgentError(err, 'reader_error');
    this.log.warn({ code: error.code, during, detail: error.message }, 'PN532 failure; re-initialising');
    this.mode = 'recovering';
    this.attempts = 0;
    this.endSession('reader_error');
    this.clearTimers();
    this.setHealth('degraded', `${during}: ${error.message}`);
    void this.recover(during);
  }

  /** Re-initialises until it works (or the driver is stopped), backing off between attempts. */
  private recover(reason: string): Promise<void> {
    if (this.recovering) return this.recovering;
    const attempt = async (): Promise<void> => {
      try {
        await this.withChipOrLink(() => this.initialise());
        this.attempts = 0;
        this.recovering = undefined;
        this.log.info({ reason, firmware: this.fw ? formatFirmware(this.fw) : undefined }, 'PN532 ready');
      } catch (err) {
        this.recovering = undefined;
        if (this.mode !== 'recovering') return;
        const error = toAgentError(err, 'reader_error');
        this.attempts++;
        const state: HealthState = this.attempts >= this.timing.downAfterAttempts ? 'down' : 'degraded';
        this.setHealth(state, error.message);
        const delay = Math.min(this.timing.backoffMs * 2 ** (this.attempts - 1), this.timing.maxBackoffMs);
        this.log.warn(
          { code: error.code, attempt: this.attempts, retryInMs: delay },
          'PN532 initialisation failed',
        );
        clearTimeout(this.recoveryTimer);
        this.recoveryTimer = setTimeout(() => {
          if (this.mode === 'recovering') void this.recover(reason);
        }, delay);
      }
    };
    this.recovering = attempt();
    return this.recovering;
  }

  /** Like withChip, but (re)opens the link first when it is closed. */
  private async withChipOrLink(fn: (t: Pn532Transport) => Promise<void>): Promise<void> {
    if (!this.transport?.isOpen) {
      await this.transport?.close().catch(() => {});
      this.transport = undefined;
      this.link = undefined;
      const link = await this.openLink();
      if (this.mode !== 'recovering') {
        await link.close();
        return;
      }
      this.link = link;
      this.transport = new Pn532Transport(
        link,
        this.log,
        {
          onStale: (response) => this.onStale(response),
          onProtocolError: (kind) => this.onProtocolError(kind),
          onClose: (error) => {
            if (this.link !== link) return;
            this.onChipFailure(
              new AgentError('reader_error', `serial port closed${error ? `: ${error.message}` : ''}`),
              'serial port',
            );
          },
        },
        this.timing,
      );
    }
    await this.withChip(fn);
  }

  private async initialise(): Promise<void> {
    const t = this.transport;
    if (!t) throw new AgentError('reader_error', 'the PN532 is not connected');
    await t.wake();
    // A PN532 v1.6 starts in Low-VBat mode and leaves it only with SAMConfiguration.
    expectEmptyAnswer(await this.request(t, samConfiguration(0x01, 0x14, true)), CMD.SAMConfiguration);
    const fw = parseFirmwareVersion(await this.request(t, getFirmwareVersion()));
    if (fw.ic !== 0x32) throw new AgentError('unsupported', `not a PN532 (IC 0x${fw.ic.toString(16)})`);
    expectEmptyAnswer(
      await this.request(t, setParameters(PARAM.automaticAtrRes | PARAM.automaticRats)),
      CMD.SetParameters,
    );
    expectEmptyAnswer(await this.request(t, rfMaxRetries(INFINITE, 0x01, INFINITE)), CMD.RFConfiguration);
    this.infiniteRetries = true;
    await this.request(t, inRelease(0));
    if (this.mode !== 'recovering') return;
    this.fw = fw;
    this.protocolErrors = [];
    this.releasedUid = undefined;
    this.mode = 'listening';
    this.setHealth('ok', formatFirmware(fw));
    this.startLiveness();
  }

  private clearTimers(): void {
    this.stopLiveness();
    clearTimeout(this.clearTimer);
    clearTimeout(this.idleTimer);
    clearTimeout(this.recoveryTimer);
  }

  private setHealth(state: HealthState, detail: string): void {
    if (this.healthState.state === state && this.healthState.detail === detail) return;
    const changed = this.healthState.state !== state;
    this.healthState = { state, detail, since: changed ? this.now() : this.healthState.since };
    if (changed) this.emit('health', this.healthState);
  }
}
