import type { CredentialLookup, CredentialStatus } from '../access/credential-lookup.js';
import type { AuthProof } from '../access/keyring.js';
import { roleAllows } from '../access/policy.js';
import type { ApprovalMethod, ApprovalOutcome, PendingApproval } from '../ble/enrollment.js';
import type { Clock } from '../core/clock.js';
import type { Code } from '../core/codes.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { fidoApprovalAuthProof, fidoApprovalChallenge, verifyFidoApproval } from './approve-auth.js';
import type { CounterAccess } from './enrollment.js';
import { counterVerdict, type U2fAssertion } from './u2f.js';

/**
 * Approval of a pending phone or web-key enrollment by an owner FIDO key tapped at the reader
 * (`vehicle-agent enroll approve --owner-fido`, docs/ble.md). It must be armed on purpose: a
 * passer-by can open a request from the phone-key page, and an owner tapping to unlock must never
 * approve it by accident. Armed, the reader hands the next FIDO taps here instead of unlocking;
 * each is checked (signature over the request's approval challenge, owner role, validity, a
 * rising counter) and audited. A refused tap leaves the arming in place (the owner may have
 * picked up the wrong key): it ends with an approval, at the end of its window
 * (min(nfc.enrollWindowMs, the request's time left)), when the request closes, or on cancel.
 */

/** What the arming needs of the enrollment desk (src/ble/enrollment.ts EnrollmentDesk). */
export interface ApprovalDesk {
  pendingApproval(): PendingApproval | undefined;
  approveWith(requestHash: Uint8Array, auth: AuthProof, method: ApprovalMethod): Promise<ApprovalOutcome>;
}

export type ApprovalArmState = 'armed' | 'approved' | 'expired' | 'closed' | 'cancelled';

export interface ApprovalArmView {
  readonly state: ApprovalArmState;
  readonly method: 'owner-fido';
  /** The request being approved. */
  readonly opId: string;
  readonly credentialId: string;
  /** When the arming ends (armed) or ended. */
  readonly expiresAt: string;
  readonly approvedBy?: string;
  /** The last refused tap, if any. */
  readonly lastRefusal?: { readonly code: Code; readonly message: string; readonly by?: string };
}

export type ApprovalStep =
  | { readonly ok: true; readonly view: ApprovalArmView }
  | { readonly ok: false; readonly code: Code; readonly message: string; readonly view?: ApprovalArmView };

export interface OwnerApprovalOptions {
  readonly vehicleId: string;
  readonly clock: Clock;
  readonly keyring: CredentialLookup;
  readonly counters: CounterAccess;
  readonly desk: ApprovalDesk;
  readonly audit: (event: { readonly type: string; readonly [key: string]: unknown }) => void;
  readonly log: Logger;
  /** Longest arming (nfc.enrollWindowMs); shorter when the request ends sooner. */
  readonly windowMs: number;
  /** Why the reader cannot take an approval tap now (a card enrollment holds it), or undefined. */
  readonly readerBusy?: () => string | undefined;
}

interface Arming {
  readonly opId: string;
  readonly credentialId: string;
  readonly requestHash: Uint8Array;
  state: ApprovalArmState;
  endsAtMono: number;
  endsAt: number;
  approvedBy?: string;
  lastRefusal?: { code: Code; message: string; by?: string };
  /** A tap is being decided: a second must not race it, nor the window close under it. */
  busy: boolean;
}

const METHOD = 'owner-fido';

export class OwnerFidoApproval {
  private readonly options: OwnerApprovalOptions;
  private arming: Arming | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(options: OwnerApprovalOptions) {
    if (options.windowMs < 1) throw new AgentError('internal', 'the approval window must be positive');
    this.options = options;
  }

  /**
   * Arms the reader: its next FIDO taps approve the pending request. Arming again for the same
   * request restarts the window; nothing pending is enrollment_closed.
   */
  arm(): ApprovalArmView {
    const { clock, windowMs, desk } = this.options;
    this.refresh();
    if (this.arming?.busy) throw new AgentError('busy', 'an approval tap is being decided');
    const pending = desk.pendingApproval();
    if (pending === undefined)
      throw new AgentError('enrollment_closed', 'no enrollment request is waiting for approval');
    const held = this.options.readerBusy?.();
    if (held !== undefined) throw new AgentError('busy', held);
    const ms = Math.max(1, Math.min(windowMs, pending.leftMs));
    const arming: Arming = {
      opId: pending.opId,
      credentialId: pending.credentialId,
      requestHash: pending.requestHash,
      state: 'armed',
      endsAtMono: clock.monotonic() + ms,
      endsAt: clock.now() + ms,
      busy: false,
    };
    this.arming = arming;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), ms + 1);
    this.timer.unref();
    this.options.audit({
      type: 'enroll.approval.armed',
      method: METHOD,
      opId: arming.opId,
      credentialId: arming.credentialId,
      expiresAt: new Date(arming.endsAt).toISOString(),
    });
    this.options.log.info(
      { credentialId: arming.credentialId, windowMs: ms },
      'reader armed: the next owner FIDO key tapped approves the pending enrollment',
    );
    return this.view(arming);
  }

  status(): ApprovalArmView | undefined {
    this.refresh();
    return this.arming === undefined ? undefined : this.view(this.arming);
  }

  cancel(): ApprovalArmView | undefined {
    this.refresh();
    const arming = this.arming;
    if (arming?.state === 'armed' && !arming.busy) this.end(arming, 'cancelled');
    return arming === undefined ? undefined : this.view(arming);
  }

  /** Ends the arming (agent stopping). */
  close(): void {
    clearTimeout(this.timer);
    if (this.arming?.state === 'armed') this.arming.state = 'cancelled';
  }

  /** The U2F challenge parameter a tap signs while armed, or undefined (the tap is an ordinary one). */
  challenge(): Uint8Array | undefined {
    this.refresh();
    const arming = this.arming;
    return arming?.state === 'armed' ? fidoApprovalChallenge(arming.requestHash) : undefined;
  }

  /** A tap the reader could not put to the owner check (not an enrolled FIDO key, removed, …). */
  noteRefusedTap(code: Code, message: string): void {
    this.refresh();
    this.refused(this.arming, undefined, code, message);
  }

  /** An owner's key answered the approval challenge at the reader. */
  async approve(credentialId: string, assertion: U2fAssertion): Promise<ApprovalStep> {
    this.refresh();
    const arming = this.arming;
    const { keyring, vehicleId, counters, desk } = this.options;
    const refuse = (code: Code, message: string): ApprovalStep => {
      this.refused(arming, credentialId, code, message);
      return { ok: false, code, message, ...(arming ? { view: this.view(arming) } : {}) };
    };
    if (arming?.state !== 'armed' || arming.busy)
      return refuse('enrollment_closed', 'the reader is not armed to approve an enrollment');
    const status = keyring.byId(credentialId);
    if (status === undefined) return refuse('unknown_credential', 'this key is not enrolled');
    if (!verifyFidoApproval(status.credential, vehicleId, arming.requestHash, assertion))
      return refuse('bad_proof', 'the FIDO signature over the approval challenge does not verify');
    const denial = this.ownerDenial(status);
    if (denial) return refuse(denial, `this key may not approve an enrollment (${denial})`);
    if (counterVerdict(counters.get(credentialId), assertion.counter) !== 'ok')
      return refuse('clone_suspected', 'the signature counter did not rise');
    arming.busy = true;
    let outcome: ApprovalOutcome;
    try {
      // Recorded before the grant: a copy of this assertion can never be used again.
      await counters.set(credentialId, Math.max(assertion.counter, counters.get(credentialId) ?? 0));
      outcome = await desk.approveWith(
        arming.requestHash,
        fidoApprovalAuthProof(credentialId, vehicleId, assertion),
        METHOD,
      );
    } catch (err) {
      const e = toAgentError(err, 'state_io');
      outcome = { approved: false, code: e.code, by: credentialId };
    } finally {
      arming.busy = false;
    }
    if (!outcome.approved) {
      const step = refuse(outcome.code, `the approval was not written (${outcome.code})`);
      // The request is gone: nothing left to approve.
      if (desk.pendingApproval()?.opId !== arming.opId) this.end(arming, 'closed');
      return step;
    }
    arming.approvedBy = credentialId;
    this.end(arming, 'approved');
    return { ok: true, view: this.view(arming) };
  }

  private ownerDenial(status: CredentialStatus): Code | undefined {
    const { credential } = status;
    if (status.revoked) return 'revoked';
    const now = this.options.clock.now();
    if (credential.notBefore !== undefined && now < credential.notBefore) return 'not_yet_valid';
    if (credential.notAfter !== undefined && now >= credential.notAfter) return 'expired';
    if (!roleAllows(credential.role, 'keys.grant')) return 'role_not_allowed';
    return undefined;
  }

  private refused(arming: Arming | undefined, by: string | undefined, code: Code, message: string): void {
    if (arming?.state === 'armed')
      arming.lastRefusal = { code, message, ...(by === undefined ? {} : { by }) };
    this.options.audit({
      type: 'enroll.refused',
      method: METHOD,
      step: 'approve',
      ...(by === undefined ? {} : { by }),
      ...(arming ? { opId: arming.opId, credentialId: arming.credentialId } : {}),
      code,
    });
    this.options.log.warn({ code, by, err: message }, 'enrollment approval tap refused');
  }

  private end(arming: Arming, state: Exclude<ApprovalArmState, 'armed'>): void {
    arming.state = state;
    clearTimeout(this.timer);
    if (state === 'approved') return; // the desk audits enroll.approved
    this.options.audit({
      type: 'enroll.approval.ended',
      method: METHOD,
      opId: arming.opId,
      credentialId: arming.credentialId,
      state,
    });
  }

  /** Ends an arming whose window passed or whose request is no longer the pending one. */
  private refresh(): void {
    const arming = this.arming;
    if (arming?.state !== 'armed' || arming.busy) return;
    if (this.options.clock.monotonic() >= arming.endsAtMono) this.end(arming, 'expired');
    else if (this.options.desk.pendingApproval()?.opId !== arming.opId) this.end(arming, 'closed');
  }

  private view(arming: Arming): ApprovalArmView {
    return {
      state: arming.state,
      method: METHOD,
      opId: arming.opId,
      credentialId: arming.credentialId,
      expiresAt: new Date(arming.endsAt).toISOString(),
      ...(arming.approvedBy === undefined ? {} : { approvedBy: arming.approvedBy }),
      ...(arming.lastRefusal === undefined ? {} : { lastRefusal: { ...arming.lastRefusal } }),
    };
  }
}
