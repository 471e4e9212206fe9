import { EventEmitter } from 'node:events';
import type { CredentialStatus } from '../access/credential-lookup.js';
import type { CredentialReader, ReaderContext } from '../agent/reader.js';
import type { Code } from '../core/codes.js';
import { toAgentError } from '../core/errors.js';
import type { Decision, Health, Presentation } from '../core/types.js';
import { fromB64url } from '../crypto/encoding.js';
import { uidHash } from '../crypto/keys.js';
import type { CardEnrollmentDesk, CardEnrollmentView, EnrollmentStep } from './enrollment.js';
import type { ApprovalArmView, ApprovalStep } from './owner-approval.js';
import type { Pn532Target } from './pn532/driver.js';
import {
  type CardSession,
  fidoAssert,
  isRandomUid,
  probeKeyHandles,
  proveTap,
  type TapDeps,
  type TapProof,
  verdictFor,
} from './tap.js';
import { tapChallenge, type U2fAssertion, vehicleAppParam } from './u2f.js';

/**
 * The NFC reader: cards seen by the PN532 driver become presentations for the agent. The driver
 * keeps the chip listening, so a tap is handled the moment it is reported; each tap runs the
 * card's protocol with a fresh challenge (tap.ts), hands the verdict to the agent (which decides,
 * checks counters and deadlines, and drives the lock), then releases the card. While a card
 * enrollment is open (enrollment.ts), or the reader is armed to approve a phone enrollment with an
 * owner FIDO key (owner-approval.ts), taps go there instead and never unlock.
 * Nothing here throws out of a tap: every failure becomes a coded denial or refusal.
 */

/** What the reader needs from the PN532 driver (Pn532Driver satisfies it). */
export interface NfcDriver {
  on(event: 'target', listener: (target: Pn532Target) => void): unknown;
  off(event: 'target', listener: (target: Pn532Target) => void): unknown;
  start(): Promise<void>;
  stop(): Promise<void>;
  health(): Health;
}

export type TapOutcome =
  | {
      readonly type: 'decision';
      readonly target: number;
      readonly decision: Decision;
      readonly proof: TapProof;
    }
  | {
      readonly type: 'enrollment';
      readonly target: number;
      readonly step: 'authorise' | 'enroll';
      readonly ok: boolean;
      readonly code?: Code;
      readonly message?: string;
      readonly view?: CardEnrollmentView;
    }
  | {
      readonly type: 'approval';
      readonly target: number;
      readonly ok: boolean;
      readonly code?: Code;
      readonly message?: string;
      readonly view?: ApprovalArmView;
    };

/** Where an owner FIDO key's signature at the reader goes (a card enrollment, or an armed approval). */
interface OwnerTapDesk<Step> {
  noteRefusedTap(code: Code, message: string): void;
  accept(credentialId: string, assertion: U2fAssertion): Promise<Step>;
}

/** The approval arming the reader consults (OwnerFidoApproval satisfies it). */
export interface ApprovalTapDesk {
  challenge(): Uint8Array | undefined;
  status(): ApprovalArmView | undefined;
  noteRefusedTap(code: Code, message: string): void;
  approve(credentialId: string, assertion: U2fAssertion): Promise<ApprovalStep>;
}

export type NfcReaderEvents = { tap: [TapOutcome] };

/**
 * The tap settings come as TapDeps describes them: `fidoCredentials` is cached per keyring digest
 * by the caller, `siteKey` never creates a key, and `answerTimeoutMs` is policy.nfcAnswerDeadlineMs
 * plus nfc.lateGraceMs (a card slower than that is abandoned).
 */
export interface NfcReaderOptions
  extends Pick<TapDeps, 'fidoCredentials' | 'siteKey' | 'maxProbes' | 'answerTimeoutMs' | 'apduTimeoutMs'> {
  readonly id: string;
  readonly driver: NfcDriver;
  readonly enrollment?: CardEnrollmentDesk;
  /** Approval of a pending phone enrollment by an owner FIDO key, when armed. */
  readonly approval?: ApprovalTapDesk;
  /** Monotonic ms (default performance.now). */
  readonly now?: () => number;
}

export interface NfcReaderStats {
  readonly taps: number;
  readonly enrollmentTaps: number;
  readonly failures: number;
}

export class NfcReader extends EventEmitter<NfcReaderEvents> implements CredentialReader {
  readonly id: string;
  private readonly options: NfcReaderOptions;
  private readonly now: () => number;
  private context: ReaderContext | undefined;
  private readonly onTargetListener = (target: Pn532Target): void => {
    void this.onTarget(target);
  };
  private handling: Promise<void> = Promise.resolve();
  private readonly counts = { taps: 0, enrollmentTaps: 0, failures: 0 };

  constructor(options: NfcReaderOptions) {
    super();
    this.id = options.id;
    this.options = options;
    this.now = options.now ?? (() => performance.now());
  }

  async start(context: ReaderContext): Promise<void> {
    this.context = context;
    this.options.driver.on('target', this.onTargetListener);
    await this.options.driver.start();
  }

  async stop(): Promise<void> {
    this.options.driver.off('target', this.onTargetListener);
    await this.options.driver.stop();
    await this.handling;
    this.context = undefined;
  }

  health(): Health {
    return this.options.driver.health();
  }

  stats(): NfcReaderStats {
    return { ...this.counts };
  }

  /** Taps are handled one at a time (the driver reports one card at a time anyway). */
  private onTarget(target: Pn532Target): Promise<void> {
    const run = this.handling.then(() => this.handleTarget(target));
    this.handling = run.catch(() => {});
    return run;
  }

  private async handleTarget(target: Pn532Target): Promise<void> {
    const ctx = this.context;
    if (!ctx) {
      await target.release();
      return;
    }
    let outcome: TapOutcome | undefined;
    try {
      const session = this.sessionFor(target);
      const phase = this.options.enrollment?.phase() ?? 'idle';
      // A card enrollment holds the reader first (arming an approval is refused meanwhile).
      const approvalChallenge = phase === 'idle' ? this.options.approval?.challenge() : undefined;
      if (phase === 'owner-tap') outcome = await this.ownerTap(ctx, target.id, session);
      else if (phase === 'new-card') outcome = await this.newCard(target.id, session);
      else if (approvalChallenge)
        outcome = await this.approvalTap(ctx, target.id, session, approvalChallenge);
      else outcome = await this.tap(ctx, target.id, session);
    } catch (err) {
      // A bug, not a card problem: log it and carry on listening.
      this.counts.failures++;
      const e = toAgentError(err);
      ctx.log.error({ code: e.code, err: e.message }, 'NFC tap handling failed');
    } finally {
      await target.release().catch(() => {});
    }
    if (outcome) {
      try {
        this.emit('tap', outcome);
      } catch (err) {
        ctx.log.error({ code: toAgentError(err).code }, 'a tap listener threw');
      }
    }
  }

  private sessionFor(target: Pn532Target): CardSession {
    return {
      uid: target.uid,
      kind: target.kind,
      transceive: (apdu, timeoutMs) => target.exchangeApdu(apdu, { timeoutMs }),
    };
  }

  private tapDeps(ctx: ReaderContext): TapDeps {
    const o = this.options;
    return {
      vehicleId: ctx.vehicleId,
      keyring: ctx.keyring,
      fidoCredentials: o.fidoCredentials,
      siteKey: o.siteKey,
      maxProbes: o.maxProbes,
      answerTimeoutMs: o.answerTimeoutMs,
      apduTimeoutMs: o.apduTimeoutMs,
      now: this.now,
      challenge: tapChallenge,
    };
  }

  /** An ordinary tap: prove, present, report. */
  private async tap(ctx: ReaderContext, targetId: number, session: CardSession): Promise<TapOutcome> {
    this.counts.taps++;
    // Always run the card's protocol: no reader-wide state can refuse a card (rate limits are per
    // credential, and refuse UID-only grants only; the agent's decision applies them).
    const proof = await proveTap(session, this.tapDeps(ctx));
    const presentation: Presentation = {
      reader: this.id,
      kind: proof.kind,
      credentialId: proof.credentialId,
      subject: proof.subject,
      intent: 'toggle',
      explicitIntent: true,
      proof: proof.proof,
      ...(proof.counter === undefined ? {} : { counter: proof.counter }),
      ...(proof.answerMs === undefined ? {} : { answerMs: proof.answerMs }),
    };
    if (proof.cause !== undefined)
      ctx.log.debug({ subject: proof.subject, proof: proof.proof, cause: proof.cause }, 'card proof failed');
    const decision = await ctx.present(presentation);
    return { type: 'decision', target: targetId, decision, proof };
  }

  /** Enrollment is waiting for an owner FIDO key: this tap may only authorise, never unlock. */
  private async ownerTap(ctx: ReaderContext, targetId: number, session: CardSession): Promise<TapOutcome> {
    this.counts.enrollmentTaps++;
    const desk = this.options.enrollment;
    const challenge = desk?.ownerTapChallenge();
    if (!desk || !challenge)
      return refusedTap(targetId, 'authorise', 'enrollment_closed', 'no enrollment is open');
    const result = await this.ownerSignature(ctx, session, challenge, {
      noteRefusedTap: (code, message) => desk.noteRefusedTap(code, message),
      accept: (id, assertion) => desk.authoriseWithFido(id, assertion),
    });
    return 'refused' in result
      ? refusedTap(targetId, 'authorise', result.refused.code, result.refused.message)
      : enrollmentTap(targetId, 'authorise', result.step);
  }

  /** Armed to approve a phone enrollment: this tap may only approve, never unlock. */
  private async approvalTap(
    ctx: ReaderContext,
    targetId: number,
    session: CardSession,
    challenge: Uint8Array,
  ): Promise<TapOutcome> {
    this.counts.enrollmentTaps++;
    const approval = this.options.approval;
    if (!approval)
      return approvalOutcome(targetId, { ok: false, code: 'enrollment_closed', message: 'not armed' });
    const result = await this.ownerSignature(ctx, session, challenge, {
      noteRefusedTap: (code, message) => approval.noteRefusedTap(code, message),
      accept: (id, assertion) => approval.approve(id, assertion),
    });
    if (!('refused' in result)) return approvalOutcome(targetId, result.step);
    const view = approval.status();
    return approvalOutcome(targetId, { ok: false, ...result.refused, ...(view ? { view } : {}) });
  }

  /**
   * Finds which enrolled FIDO key is in the field and has it sign `challenge` with this vehicle's
   * application parameter, then hands the assertion to `desk`. Refusals before the desk's own
   * checks are reported to it (and audited by it) too.
   */
  private async ownerSignature<Step>(
    ctx: ReaderContext,
    session: CardSession,
    challenge: Uint8Array,
    desk: OwnerTapDesk<Step>,
  ): Promise<{ readonly step: Step } | { readonly refused: { code: Code; message: string } }> {
    const deps = this.tapDeps(ctx);
    const refuse = (code: Code, message: string) => {
      desk.noteRefusedTap(code, message);
      return { refused: { code, message } };
    };
    let found: CredentialStatus | undefined;
    let selected = false;
    try {
      const claimed = isRandomUid(session.uid)
        ? []
        : ctx.keyring
            .byUidHash(uidHash(ctx.vehicleId, session.uid))
            .filter((s) => s.credential.kind === 'fido');
      if (session.kind === 'iso14443-4') {
        // The key handle decides, not the UID (FIDO keys often share one, and a key may show
        // another UID than the one recorded): the keys claiming this UID are asked first, then
        // the others, active ones before revoked ones.
        const claimedIds = new Set(claimed.map((s) => s.credential.id));
        const others = deps
          .fidoCredentials()
          .filter((s) => s.credential.keyHandle !== undefined && !claimedIds.has(s.credential.id))
          .sort((a, b) => Number(a.revoked) - Number(b.revoked))
          .slice(0, deps.maxProbes);
        found = await probeKeyHandles(session, deps, [...claimed, ...others]);
        selected = true;
      } else found = claimed[0];
    } catch (err) {
      const e = toAgentError(err, 'reader_error');
      return refuse(e.code === 'unsupported' ? 'unknown_credential' : e.code, e.message);
    }
    const keyHandle = found?.credential.keyHandle;
    if (!found || keyHandle === undefined)
      return refuse('unknown_credential', 'this card is not an enrolled FIDO key');
    if (session.kind !== 'iso14443-4')
      return refuse('clone_suspected', "a plain tag showing an enrolled FIDO key's UID");
    try {
      const answer = await fidoAssert(session, deps, {
        appParam: vehicleAppParam(ctx.vehicleId),
        challenge,
        keyHandle: fromB64url(keyHandle),
        select: !selected,
      });
      return { step: await desk.accept(found.credential.id, answer.assertion) };
    } catch (err) {
      const e = toAgentError(err, 'reader_error');
      return refuse(verdictFor(e, true) === 'cloned' ? 'clone_suspected' : e.code, e.message);
    }
  }

  /** Enrollment is authorised: this card is the new one. */
  private async newCard(targetId: number, session: CardSession): Promise<TapOutcome> {
    this.counts.enrollmentTaps++;
    const desk = this.options.enrollment;
    if (!desk) return refusedTap(targetId, 'enroll', 'enrollment_closed', 'no enrollment is open');
    return enrollmentTap(targetId, 'enroll', await desk.enrollCard(session));
  }
}

function refusedTap(target: number, step: 'authorise' | 'enroll', code: Code, message: string): TapOutcome {
  return { type: 'enrollment', target, step, ok: false, code, message };
}

/** The reader's report of what the enrollment desk made of a tap. */
function enrollmentTap(target: number, step: 'authorise' | 'enroll', result: EnrollmentStep): TapOutcome {
  if (result.ok) return { type: 'enrollment', target, step, ok: true, view: result.view };
  return {
    type: 'enrollment',
    target,
    step,
    ok: false,
    code: result.code,
    message: result.message,
    ...(result.view ? { view: result.view } : {}),
  };
}

/** The reader's report of what the approval arming made of a tap. */
function approvalOutcome(target: number, result: ApprovalStep): TapOutcome {
  if (result.ok) return { type: 'approval', target, ok: true, view: result.view };
  return {
    type: 'approval',
    target,
    ok: false,
    code: result.code,
    message: result.message,
    ...(result.view ? { view: result.view } : {}),
  };
}
