/**
 * One exchange of the vehicle-key protocol (docs/ble-protocol.md) over one open channel: hello
 * signed by the vehicle → the key's answer → keyring lookup and verification → the agent's
 * decision → result; or extension E1, an owner's key approving an enrollment request. Bad frames,
 * a dropped link and late answers become coded denials.
 *
 * It sees the radio only as a BleChannel (src/ble/channel.ts): today the BLE central opens the
 * channel (src/ble/reader.ts with src/ble/link.ts); a peripheral transport, where the phone
 * connects to the vehicle (issue 14), hands its connections to the same `run`. The protocol's
 * pure parts (framing, messages, the session state machine) are in src/ble/protocol/.
 */
import type { ReaderContext } from '../agent/reader.js';
import type { Code } from '../core/codes.js';
import { isAgentError, toAgentError } from '../core/errors.js';
import type { Decision, Presentation, ProofVerdict } from '../core/types.js';
import type { BleChannel, BleCloseReason } from './channel.js';
import type { ApprovalOutcome, AskOutcome } from './enrollment.js';
import { DEFAULT_CHUNK_BYTES } from './protocol/constants.js';
import type { EnrollApproval, EnrollRequest } from './protocol/enroll.js';
import {
  buildEnrollOffer,
  decodeEnrollMessage,
  type EnrollOfferFields,
  isEnrollMessage,
} from './protocol/enroll.js';
import { chunkBytesForMtu, chunkFrame, FrameReassembler } from './protocol/framing.js';
import { decodeMessage, encodeAbort, encodeResult, type KeyAnswer } from './protocol/messages.js';
import { AgentSession, RecentChallenges } from './protocol/session.js';

/** What the reader needs of the enrollment desk (src/ble/enrollment.ts). */
export interface EnrollmentPort {
  /** Whether the key that signed this enroll_request may see the offer (an enrolled owner key). */
  authorise(request: EnrollRequest, challenge: Uint8Array): AskOutcome;
  offer(challenge: Uint8Array): EnrollOfferFields | undefined;
  /** How long the pending request stays open: the owner has that long to approve. */
  windowLeftMs(): number;
  approve(approval: EnrollApproval, challenge: Uint8Array, askedBy: string): Promise<ApprovalOutcome>;
}

/** How one exchange with a device ended. */
export type BleOutcome =
  | {
      readonly kind: 'decision';
      readonly address: string;
      readonly decision: Decision;
      readonly presentation: Presentation;
    }
  | { readonly kind: 'enrollment'; readonly address: string; readonly outcome: ApprovalOutcome }
  /** The key refused the exchange (an abort: not its vehicle, a bad hello, the user declined). */
  | { readonly kind: 'refused'; readonly address: string; readonly code: string }
  /** The link could not open a session (no presentation was made). */
  | { readonly kind: 'failed'; readonly address: string; readonly code: Code };

export interface KeyExchangeOptions {
  /** The reader's id, as presentations name it. */
  readonly id: string;
  /** The answer deadline (relay defence), as policy.answerDeadlineMs.phone. 1..65535. */
  readonly answerWindowMs: number;
  /**
   * A late answer is still read this long after the window, so the audit can name the key that
   * was late; it is denied 'timeout' all the same.
   */
  readonly lateGraceMs?: number;
  /** Bytes per write when the channel does not know the ATT MTU. Default 20 (ATT_MTU 23). */
  readonly chunkBytes?: number;
  readonly enrollment?: EnrollmentPort;
  readonly randomBytes: (length: number) => Uint8Array;
}

export interface KeyExchangeStats {
  readonly granted: number;
  readonly denied: number;
  readonly refused: number;
  readonly enrollments: number;
  /** Sessions whose peer showed a signature-checked answer of an enrolled key. */
  readonly proven: number;
}

type InboxEvent =
  | { readonly kind: 'frame'; readonly frame: Uint8Array; readonly at: number }
  | { readonly kind: 'framing'; readonly proof: 'malformed' | 'frame_too_large' | 'unsupported' }
  | { readonly kind: 'closed'; readonly reason: BleCloseReason }
  | { readonly kind: 'deadline' };

/** How the key is told: a result, an abort (no answer came), or not at all (the link is gone). */
type Reply = 'result' | 'abort' | 'none';

/** Reasons that mean the key itself left (out of range, dropped the link) rather than our side failing. */
const KEY_LEFT: ReadonlySet<BleCloseReason> = new Set(['disconnected', 'vanished']);
/** The link ended a session that proved nothing in its turn: as for a key that never answered. */
const UNPROVEN_ENDED: ReadonlySet<BleCloseReason> = new Set(['evicted', 'unproven-timeout']);

/**
 * What the agent is told when the channel ends before an answer: undefined when the agent is
 * stopping (nothing to decide), else the proof verdict of the denial it records.
 */
export function verdictForClose(reason: BleCloseReason): ProofVerdict | undefined {
  if (reason === 'stopped') return undefined;
  if (UNPROVEN_ENDED.has(reason)) return 'timeout';
  return KEY_LEFT.has(reason) ? 'removed' : 'reader_error';
}

const DEFAULT_LATE_GRACE_MS = 500;
/** E1: room after the request's window for the approval's last chunks and the desk's checks. */
const ENROLL_SLACK_MS = 2000;

/** Reassembled frames and link events of one session, in order, with their arrival times. */
class Inbox {
  private readonly queue: InboxEvent[] = [];
  private waiter: ((event: InboxEvent) => void) | undefined;
  private readonly offs: (() => void)[] = [];

  constructor(channel: BleChannel, now: () => number) {
    const reassembler = new FrameReassembler();
    this.offs.push(
      channel.onData((chunk) => {
        const at = now();
        try {
          const frame = reassembler.push(chunk, at);
          if (frame !== undefined) this.put({ kind: 'frame', frame, at });
        } catch (err) {
          const tooLarge = isAgentError(err) && err.code === 'frame_too_large';
          this.put({ kind: 'framing', proof: tooLarge ? 'frame_too_large' : 'malformed' });
        }
      }),
      channel.onClose((reason) => this.put({ kind: 'closed', reason })),
    );
  }

  /** The next event, or 'deadline' once `timeoutMs` passed. */
  next(timeoutMs: number): Promise<InboxEvent> {
    const queued = this.queue.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve) => {
      const timer = setTimeout(() => finish({ kind: 'deadline' }), Math.max(0, timeoutMs));
      const finish = (event: InboxEvent): void => {
        clearTimeout(timer);
        this.waiter = undefined;
        resolve(event);
      };
      this.waiter = finish;
    });
  }

  dispose(): void {
    for (const off of this.offs) off();
    this.waiter = undefined;
  }

  private put(event: InboxEvent): void {
    const waiter = this.waiter;
    if (waiter !== undefined) waiter(event);
    else this.queue.push(event);
  }
}

/** The protocol side of a reader: runs one exchange per channel; challenges are not reused. */
export class KeyExchange {
  private readonly options: KeyExchangeOptions;
  private readonly recent = new RecentChallenges();
  private readonly counters = { granted: 0, denied: 0, refused: 0, enrollments: 0, proven: 0 };

  constructor(options: KeyExchangeOptions) {
    this.options = options;
  }

  stats(): KeyExchangeStats {
    return { ...this.counters };
  }

  /** One exchange over an open channel; the caller closes the channel after it. */
  async run(ctx: ReaderContext, channel: BleChannel): Promise<BleOutcome | undefined> {
    const inbox = new Inbox(channel, () => ctx.clock.monotonic());
    try {
      return await this.converse(ctx, channel, inbox);
    } finally {
      inbox.dispose();
    }
  }

  private async converse(
    ctx: ReaderContext,
    channel: BleChannel,
    inbox: Inbox,
  ): Promise<BleOutcome | undefined> {
    const address = channel.address;
    const session = AgentSession.open({
      vehicleId: ctx.vehicleId,
      answerWindowMs: this.options.answerWindowMs,
      now: ctx.clock.monotonic(),
      randomBytes: this.options.randomBytes,
      signAsVehicle: (message) => ctx.signAsVehicle(message),
      recentChallenges: this.recent,
    });
    const chunkBytes = this.chunkBytes(channel);
    const grace = this.options.lateGraceMs ?? DEFAULT_LATE_GRACE_MS;
    let receipt: ReturnType<AgentSession['receive']> | undefined;
    const helloSent = await this.send(ctx, channel, session.hello, chunkBytes, () =>
      session.helloSent(ctx.clock.monotonic()),
    );
    let event: InboxEvent = { kind: 'closed', reason: channel.closed ? 'disconnected' : 'failed' };
    while (helloSent) {
      event = await inbox.next(session.deadlineAt + grace - ctx.clock.monotonic());
      if (event.kind !== 'frame' || isEnrollMessage(event.frame)) break;
      try {
        receipt = session.receive(event.frame, event.at);
      } catch (err) {
        receipt = undefined;
        const code = isAgentError(err) && err.code === 'unsupported' ? 'unsupported' : 'malformed';
        event = { kind: 'framing', proof: code };
        break;
      }
      // An abort is unsigned, so anyone in range can send one: it ends nothing (no retry with
      // another version, no other mode); the key's answer may still come, else the deadline decides.
      if (receipt.kind === 'answer') break;
    }
    // The deadline's measured lateness, for the audit (a miss with no answer: how long we waited past it).
    const lateness = (): Pick<Presentation, 'deadlineMs' | 'lateMs'> => {
      const late = ctx.clock.monotonic() - session.deadlineAt;
      return { deadlineMs: session.answerWindowMs, ...(late > 0 ? { lateMs: Math.round(late) } : {}) };
    };
    const unidentified = (
      proof: ProofVerdict,
      reply: Reply = 'result',
      timing: Pick<Presentation, 'deadlineMs' | 'lateMs'> = {},
    ): Promise<BleOutcome | undefined> =>
      this.decide(
        ctx,
        channel,
        chunkBytes,
        {
          reader: this.options.id,
          kind: 'phone',
          credentialId: undefined,
          subject: `ble:${address}`,
          intent: 'unlock',
          explicitIntent: false,
          proof,
          ...timing,
        },
        reply,
      );
    switch (event.kind) {
      case 'deadline': {
        session.close();
        const aborted = session.abortedWith;
        if (aborted !== undefined) {
          // The key refused (e.g. not its vehicle) and sent no answer: not a presentation.
          this.counters.refused += 1;
          ctx.log.debug({ address, code: aborted }, 'the key refused the exchange');
          return { kind: 'refused', address, code: aborted };
        }
        // No complete answer in the window (and its grace): the exchange ends with an abort.
        return unidentified('timeout', 'abort', lateness());
      }
      case 'framing':
        session.close();
        return unidentified(event.proof);
      case 'closed': {
        session.close();
        const verdict = verdictForClose(event.reason);
        if (verdict === undefined) return undefined;
        return unidentified(verdict, 'none', verdict === 'timeout' && helloSent ? lateness() : {});
      }
      case 'frame':
        break;
    }
    if (receipt === undefined || receipt.kind !== 'answer')
      return this.enroll(ctx, channel, inbox, session, event.frame, chunkBytes);
    return this.decide(
      ctx,
      channel,
      chunkBytes,
      this.presentation(ctx, channel, session, receipt.answer, receipt.answerMs),
    );
  }

  /** Looks the key up and verifies its answer against the enrolled public key. */
  private presentation(
    ctx: ReaderContext,
    channel: BleChannel,
    session: AgentSession,
    answer: KeyAnswer,
    answerMs: number,
  ): Presentation {
    const status = ctx.keyring.byId(answer.keyId);
    const publicKey = status?.credential.publicKey;
    let proof: ProofVerdict = 'invalid';
    if (status !== undefined && status.credential.kind === 'phone' && publicKey !== undefined) {
      proof = session.verify(publicKey).proof;
    }
    if (proof === 'valid') {
      // A signature by an enrolled key over our challenge: the session has earned its slot.
      this.counters.proven += 1;
      channel.markProven();
    }
    const lateMs = answerMs - session.answerWindowMs;
    return {
      reader: this.options.id,
      kind: 'phone',
      credentialId: status === undefined ? undefined : answer.keyId,
      subject: answer.keyId,
      intent: answer.intent,
      explicitIntent: answer.explicitIntent,
      proof,
      answerMs,
      deadlineMs: session.answerWindowMs,
      ...(lateMs > 0 ? { lateMs: Math.round(lateMs) } : {}),
    };
  }

  /** Hands the presentation to the agent, then tells the key (result; best effort). */
  private async decide(
    ctx: ReaderContext,
    channel: BleChannel,
    chunkBytes: number,
    presentation: Presentation,
    reply: Reply = 'result',
  ): Promise<BleOutcome> {
    const decision = await ctx.present(presentation);
    if (decision.granted) this.counters.granted += 1;
    else this.counters.denied += 1;
    if (reply === 'abort') {
      await this.send(ctx, channel, encodeAbort(decision.granted ? 'timeout' : decision.code), chunkBytes);
    } else if (reply === 'result') {
      const result = decision.granted
        ? encodeResult({ granted: true })
        : encodeResult({ granted: false, code: decision.code });
      await this.send(ctx, channel, result, chunkBytes);
    }
    return { kind: 'decision', address: channel.address, decision, presentation };
  }

  /** Extension E1: the key asked for the pending enrollment request instead of answering. */
  private async enroll(
    ctx: ReaderContext,
    channel: BleChannel,
    inbox: Inbox,
    session: AgentSession,
    frame: Uint8Array,
    chunkBytes: number,
  ): Promise<BleOutcome | undefined> {
    const address = channel.address;
    session.close();
    const refuse = async (code: Code): Promise<BleOutcome> => {
      await this.send(ctx, channel, encodeResult({ granted: false, code }), chunkBytes);
      return { kind: 'enrollment', address, outcome: { approved: false, code } };
    };
    let request: ReturnType<typeof decodeEnrollMessage>;
    try {
      request = decodeEnrollMessage(frame);
    } catch (err) {
      return refuse(isAgentError(err) && err.code === 'unsupported' ? 'unsupported' : 'malformed');
    }
    if (request.type !== 'enroll_request') return refuse('malformed');
    const desk = this.options.enrollment;
    if (desk === undefined) return refuse('enrollment_closed');
    // Nothing signed and nothing about the pending request before the key proved an owner key.
    const asked = desk.authorise(request, session.challenge);
    if (!asked.allowed) return refuse(asked.code);
    this.counters.proven += 1;
    channel.markProven();
    const offer = desk.offer(session.challenge);
    if (offer === undefined) return refuse('enrollment_closed');
    // The owner approves by hand: an approval given while the request is open must complete it,
    // so this session lasts as long as the request (bounded by its window, at most 10 minutes).
    const answerMs = desk.windowLeftMs();
    if (!channel.extendTurn(answerMs + ENROLL_SLACK_MS)) return refuse('busy');
    if (
      !(await this.send(
        ctx,
        channel,
        buildEnrollOffer(offer, (m) => ctx.signAsVehicle(m)),
        chunkBytes,
      ))
    ) {
      return undefined;
    }
    const event = await inbox.next(answerMs);
    if (event.kind === 'closed') return undefined;
    if (event.kind === 'deadline') return refuse('timeout');
    if (event.kind === 'framing') return refuse(event.proof);
    let approval: EnrollApproval | undefined;
    try {
      if (isEnrollMessage(event.frame)) {
        const decoded = decodeEnrollMessage(event.frame);
        if (decoded.type === 'enroll_approval') approval = decoded;
      } else {
        const decoded = decodeMessage(event.frame);
        if (decoded.type === 'abort') {
          this.counters.refused += 1;
          return { kind: 'refused', address, code: decoded.code };
        }
      }
    } catch {
      approval = undefined;
    }
    if (approval === undefined) return refuse('malformed');
    const outcome = await desk.approve(approval, session.challenge, asked.by);
    if (outcome.approved) this.counters.enrollments += 1;
    await this.send(
      ctx,
      channel,
      outcome.approved
        ? encodeResult({ granted: true })
        : encodeResult({ granted: false, code: outcome.code }),
      chunkBytes,
    );
    return { kind: 'enrollment', address, outcome };
  }

  /**
   * Writes one message in chunks (writes with response, in order). False when the link failed.
   * `beforeLast` runs just before the last chunk is handed to the link.
   */
  private async send(
    ctx: ReaderContext,
    channel: BleChannel,
    message: Uint8Array,
    chunkBytes: number,
    beforeLast?: () => void,
  ): Promise<boolean> {
    if (channel.closed) return false;
    try {
      const chunks = chunkFrame(message, chunkBytes);
      for (const [i, chunk] of chunks.entries()) {
        if (i === chunks.length - 1) beforeLast?.();
        await channel.write(chunk);
      }
      return true;
    } catch (err) {
      const e = toAgentError(err, 'reader_error');
      ctx.log.debug({ address: channel.address, code: e.code, err: e.message }, 'BLE write failed');
      return false;
    }
  }

  private chunkBytes(channel: BleChannel): number {
    // A side that does not know the ATT MTU uses 20-byte chunks, which always fit.
    if (channel.mtu !== undefined) return chunkBytesForMtu(channel.mtu);
    return this.options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  }
}
