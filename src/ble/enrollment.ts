import type { CredentialLookup } from '../access/credential-lookup.js';
import { credentialToWire, parseCredentialWire } from '../access/credential-wire.js';
import {
  type AuthProof,
  authRequestHash,
  type GrantOp,
  type MergeResult,
  newOpId,
} from '../access/keyring.js';
import { roleAllows } from '../access/policy.js';
import type { Clock } from '../core/clock.js';
import { type Code, isCode } from '../core/codes.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Credential } from '../core/types.js';
import { bytesEqual, toHex } from '../crypto/encoding.js';
import {
  approvalMatches,
  authProofFor,
  type EnrollApproval,
  type EnrollOfferFields,
  type EnrollRequest,
  offerSummary,
  verifyEnrollApproval,
  verifyEnrollRequest,
} from './protocol/enroll.js';

/**
 * Enrollment at the vehicle, authorised by an owner key (docs/keyring.md).
 * Someone with access to the vehicle's control socket opens a request naming the new credential;
 * it stays open for a bounded window and closes when an owner's phone key approves it over BLE by
 * signing its request hash (protocol extension E1), when it expires, or when it is cancelled.
 * A key learns what is pending (the vehicle-signed offer) only after its signed enroll_request
 * proved it an enrolled, valid owner key (authorise); anyone else learns nothing about it.
 * Nothing else opens or approves it: an unlock, however recent, authorises nothing.
 * On approval the desk writes a grant signed by the vehicle key carrying the owner's signature
 * as its AuthProof, which every keyring verifies on its own (verifyBleEnrollAuth).
 * An owner FIDO key tapped at the reader approves too, but only once someone armed that
 * (src/nfc/owner-approval.ts): it checks the key and hands the desk its proof (approveWith).
 */

/** How an owner approved (audit records' `method`). */
export type ApprovalMethod = 'owner-phone' | 'owner-fido';

/** The pending request as another approval path needs it. */
export interface PendingApproval {
  readonly opId: string;
  readonly credentialId: string;
  /** keyring authRequestHash of the grant (what the owner signs). */
  readonly requestHash: Uint8Array;
  /** Monotonic ms the request has left. */
  readonly leftMs: number;
}

export type EnrollmentState = 'pending' | 'completed' | 'expired' | 'cancelled';

export interface EnrollmentView {
  readonly state: EnrollmentState;
  readonly opId: string;
  readonly credentialId: string;
  readonly kind: Credential['kind'];
  readonly role: Credential['role'];
  /** Hex SHA-256 the owner's key signs (keyring authRequestHash of the grant). */
  readonly requestHash: string;
  readonly openedAt: string;
  readonly expiresAt: string;
  /** The owner key that approved (completed only). */
  readonly approvedBy?: string;
  /** How it approved (completed only). */
  readonly approvedWith?: ApprovalMethod;
}

export interface EnrollmentDeskOptions {
  readonly vehicleId: string;
  readonly clock: Clock;
  readonly keyring: CredentialLookup;
  /** Signs a keyring op with the vehicle key as a JWS (kid = the vehicle key's credential id). */
  readonly signOp: (op: GrantOp) => string;
  /** Verifies, applies and persists ops (Agent.addKeyringOps). */
  readonly addOps: (jws: readonly string[]) => Promise<MergeResult>;
  readonly audit: (event: { readonly type: string; readonly [key: string]: unknown }) => void;
  readonly log: Logger;
  /** Default and longest window a request stays open. */
  readonly windowMs: number;
  readonly maxWindowMs: number;
}

/** Where a key's own enrollment request stands (EnrollmentDesk.requestFor). */
export type PeerEnrollmentState =
  | { readonly state: 'pending'; readonly view: EnrollmentView }
  | { readonly state: 'enrolled' }
  | { readonly state: 'refused'; readonly code: Code };
/** Whether a key that asked (enroll_request) may see the offer: it proved an enrolled owner key. */
export type AskOutcome =
  | { readonly allowed: true; readonly by: string }
  | { readonly allowed: false; readonly code: Code; readonly by?: string };

export type ApprovalOutcome =
  | { readonly approved: true; readonly credentialId: string; readonly by: string }
  | { readonly approved: false; readonly code: Code; readonly by?: string };

interface Request {
  readonly op: GrantOp;
  readonly credential: Credential;
  readonly requestHash: Uint8Array;
  readonly openedAt: number;
  /** Monotonic ms. */
  readonly expiresAtMono: number;
  readonly expiresAt: number;
  state: EnrollmentState;
  approvedBy?: string;
  approvedWith?: ApprovalMethod;
  /** An approval is being written: a second one must not race it. */
  busy: boolean;
}

export class EnrollmentDesk {
  private readonly options: EnrollmentDeskOptions;
  private request: Request | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;

  constructor(options: EnrollmentDeskOptions) {
    if (options.windowMs < 1 || options.maxWindowMs < options.windowMs) {
      throw new AgentError('internal', 'enrollment window must be positive and within the maximum');
    }
    this.options = options;
  }

  /**
   * Opens a request for `credential` (validated as a grant would be). One request at a time: an
   * open one must be cancelled first (AgentError busy).
   */
  open(credential: Credential, windowMs: number = this.options.windowMs): EnrollmentView {
    const { clock, vehicleId, maxWindowMs } = this.options;
    this.refresh();
    if (this.request?.state === 'pending') {
      throw new AgentError('busy', 'an enrollment request is already open; cancel it first');
    }
    if (!Number.isInteger(windowMs) || windowMs < 1 || windowMs > maxWindowMs) {
      throw new AgentError('bad_arguments', `the enrollment window must be 1..${maxWindowMs} ms`);
    }
    let wire: ReturnType<typeof credentialToWire>;
    try {
      wire = credentialToWire(parseCredentialWire(credentialToWire(credential)));
    } catch (err) {
      throw new AgentError('bad_arguments', toAgentError(err).message);
    }
    if (credential.role === 'guest' && credential.notAfter === undefined) {
      throw new AgentError('bad_arguments', 'a guest needs an end of validity (notAfter)');
    }
    if (this.options.keyring.byId(credential.id) !== undefined) {
      throw new AgentError('bad_arguments', `${credential.id} is already in the keyring`);
    }
    const now = clock.now();
    const op: GrantOp = {
      v: 1,
      op: 'grant',
      id: newOpId(),
      vid: vehicleId,
      iat: Math.floor(now / 1000),
      cred: wire,
    };
    const request: Request = {
      op,
      credential,
      requestHash: authRequestHash(op),
      openedAt: now,
      expiresAtMono: clock.monotonic() + windowMs,
      expiresAt: now + windowMs,
      state: 'pending',
      busy: false,
    };
    this.request = request;
    clearTimeout(this.expiryTimer);
    this.expiryTimer = setTimeout(() => this.refresh(), windowMs + 1);
    this.expiryTimer.unref();
    this.options.audit({
      type: 'enroll.open',
      opId: op.id,
      credentialId: credential.id,
      role: credential.role,
      kind: credential.kind,
      expiresAt: new Date(request.expiresAt).toISOString(),
    });
    this.options.log.info(
      { credentialId: credential.id, role: credential.role, windowMs },
      'enrollment request open: waiting for an owner key to approve it',
    );
    return this.view(request);
  }

  /** The latest request (pending, or how the last one ended), or undefined when none was opened. */
  status(): EnrollmentView | undefined {
    this.refresh();
    return this.request === undefined ? undefined : this.view(this.request);
  }

  cancel(): EnrollmentView | undefined {
    this.refresh();
    const request = this.request;
    if (request?.state === 'pending') {
      request.state = 'cancelled';
      clearTimeout(this.expiryTimer);
      this.options.audit({
        type: 'enroll.cancelled',
        opId: request.op.id,
        credentialId: request.credential.id,
      });
    }
    return request === undefined ? undefined : this.view(request);
  }

  /**
   * A key asks to be enrolled from the phone-key page (mode P): the request for its credential,
   * found by credential id (derived from its public key), or a new one when none is pending. The
   * page asks again later, on any connection, to learn the state. A refusal (the request was
   * cancelled) stays the answer until another request replaces it; an expired one is opened anew.
   */
  requestFor(credential: Credential): PeerEnrollmentState {
    this.refresh();
    const status = this.options.keyring.byId(credential.id);
    if (status !== undefined)
      return status.revoked ? { state: 'refused', code: 'revoked' } : { state: 'enrolled' };
    const request = this.request;
    if (request?.credential.id === credential.id) {
      if (request.state === 'pending') return { state: 'pending', view: this.view(request) };
      if (request.state === 'cancelled') return { state: 'refused', code: 'enrollment_closed' };
    } else if (request?.state === 'pending') {
      return { state: 'refused', code: 'busy' };
    }
    try {
      return { state: 'pending', view: this.open(credential) };
    } catch (err) {
      const e = toAgentError(err);
      return { state: 'refused', code: e.code };
    }
  }

  /**
   * Checks a key's enroll_request from the session whose hello carried `challenge`: it names this
   * vehicle and this session, and is signed by an enrolled, unrevoked, currently valid phone key
   * whose role may grant keys. The signature is checked before anything else about the key, so a
   * peer without an enrolled key's private key learns only unknown_credential or bad_proof.
   * Refusals by a key whose signature verified are audited (enroll.refused); others are not (noise).
   */
  authorise(request: EnrollRequest, challenge: Uint8Array): AskOutcome {
    const { keyring, vehicleId, clock } = this.options;
    const by = request.keyId;
    if (request.vehicleId !== vehicleId) return { allowed: false, code: 'wrong_vehicle' };
    if (!bytesEqual(request.challenge, challenge)) return { allowed: false, code: 'bad_proof' };
    const status = keyring.byId(by);
    if (status === undefined) return { allowed: false, code: 'unknown_credential' };
    const { credential } = status;
    if (
      credential.kind !== 'phone' ||
      credential.publicKey === undefined ||
      verifyEnrollRequest(request, credential.publicKey) !== 'valid'
    )
      return { allowed: false, code: 'bad_proof' };
    const now = clock.now();
    let code: Code | undefined;
    if (status.revoked) code = 'revoked';
    else if (credential.notBefore !== undefined && now < credential.notBefore) code = 'not_yet_valid';
    else if (credential.notAfter !== undefined && now >= credential.notAfter) code = 'expired';
    else if (!roleAllows(credential.role, 'keys.grant')) code = 'role_not_allowed';
    if (code === undefined) return { allowed: true, by };
    this.refresh();
    const pending = this.request;
    this.options.audit({
      type: 'enroll.refused',
      by,
      method: 'owner-phone',
      step: 'request',
      ...(pending?.state === 'pending' ? { opId: pending.op.id, credentialId: pending.credential.id } : {}),
      code,
    });
    return { allowed: false, code, by };
  }

  /** Monotonic ms the pending request has left (0 when none is pending). */
  windowLeftMs(): number {
    this.refresh();
    const request = this.request;
    if (request?.state !== 'pending') return 0;
    return Math.max(0, request.expiresAtMono - this.options.clock.monotonic());
  }

  /** What to offer a key that asks (enroll_request): the pending request, if any. */
  offer(challenge: Uint8Array): EnrollOfferFields | undefined {
    this.refresh();
    const request = this.request;
    if (request?.state !== 'pending') return undefined;
    return {
      vehicleId: this.options.vehicleId,
      challenge,
      requestHash: request.requestHash,
      ...offerSummary(request.credential),
    };
  }

  /**
   * Takes an owner's approval received in the session whose hello carried `challenge`. Checks the
   * request is still open, the approval names it and this session, and that the key is an enrolled,
   * unrevoked, currently valid owner key whose signature verifies; then writes the grant.
   */
  async approve(approval: EnrollApproval, challenge: Uint8Array, askedBy?: string): Promise<ApprovalOutcome> {
    // The key that proved itself to see the offer is the one that may approve it in this session.
    const outcome =
      askedBy !== undefined && approval.keyId !== askedBy
        ? ({ approved: false, code: 'bad_proof', by: approval.keyId } as const)
        : await this.decide(approval, challenge);
    const request = this.request;
    this.options.audit({
      type: outcome.approved ? 'enroll.approved' : 'enroll.refused',
      by: approval.keyId,
      method: 'owner-phone',
      ...(request ? { opId: request.op.id, credentialId: request.credential.id } : {}),
      ...(outcome.approved ? {} : { code: outcome.code }),
    });
    return outcome;
  }

  private async decide(approval: EnrollApproval, challenge: Uint8Array): Promise<ApprovalOutcome> {
    const { keyring, vehicleId, clock } = this.options;
    this.refresh();
    const by = approval.keyId;
    const request = this.request;
    if (request?.state !== 'pending' || request.busy)
      return { approved: false, code: 'enrollment_closed', by };
    if (approval.vehicleId !== vehicleId) return { approved: false, code: 'wrong_vehicle', by };
    if (!approvalMatches(approval, { vehicleId, challenge, requestHash: request.requestHash })) {
      // Signed for another session or another request: nothing this request can use.
      return { approved: false, code: 'bad_proof', by };
    }
    const status = keyring.byId(by);
    if (status === undefined) return { approved: false, code: 'unknown_credential', by };
    if (status.revoked) return { approved: false, code: 'revoked', by };
    const { credential } = status;
    if (credential.kind !== 'phone' || credential.publicKey === undefined)
      return { approved: false, code: 'bad_proof', by };
    if (verifyEnrollApproval(approval, credential.publicKey) !== 'valid')
      return { approved: false, code: 'bad_proof', by };
    const now = clock.now();
    if (credential.notBefore !== undefined && now < credential.notBefore)
      return { approved: false, code: 'not_yet_valid', by };
    if (credential.notAfter !== undefined && now >= credential.notAfter)
      return { approved: false, code: 'expired', by };
    if (!roleAllows(credential.role, 'keys.grant')) return { approved: false, code: 'role_not_allowed', by };
    return await this.writeGrant(request, authProofFor(approval), 'owner-phone');
  }

  /** The pending request, for an approval path outside this desk (undefined when none is pending). */
  pendingApproval(): PendingApproval | undefined {
    this.refresh();
    const request = this.request;
    if (request?.state !== 'pending') return undefined;
    return {
      opId: request.op.id,
      credentialId: request.credential.id,
      requestHash: request.requestHash,
      leftMs: Math.max(0, request.expiresAtMono - this.options.clock.monotonic()),
    };
  }

  /**
   * Writes the pending grant with an approval proven elsewhere (an owner FIDO key at the reader,
   * checked by src/nfc/owner-approval.ts): `auth` must be over `requestHash`, which must still be
   * the pending request's. Audits the approval; a refusal is the caller's to audit.
   */
  async approveWith(
    requestHash: Uint8Array,
    auth: AuthProof,
    method: ApprovalMethod,
  ): Promise<ApprovalOutcome> {
    this.refresh();
    const request = this.request;
    const by = auth.by;
    if (request?.state !== 'pending' || request.busy || !bytesEqual(request.requestHash, requestHash))
      return { approved: false, code: 'enrollment_closed', by };
    const outcome = await this.writeGrant(request, auth, method);
    if (outcome.approved)
      this.options.audit({
        type: 'enroll.approved',
        by,
        method,
        opId: request.op.id,
        credentialId: request.credential.id,
      });
    return outcome;
  }

  private async writeGrant(
    request: Request,
    auth: AuthProof,
    method: ApprovalMethod,
  ): Promise<ApprovalOutcome> {
    const by = auth.by;
    request.busy = true;
    try {
      const jws = this.options.signOp({ ...request.op, auth });
      const result = await this.options.addOps([jws]);
      const rejected = result.rejected[0];
      if (rejected !== undefined) {
        this.options.log.warn({ code: rejected.code, err: rejected.message }, 'approved grant was refused');
        return { approved: false, code: isCode(rejected.code) ? rejected.code : 'internal', by };
      }
    } catch (err) {
      const e = toAgentError(err, 'state_io');
      this.options.log.error({ code: e.code, err: e.message }, 'cannot write the approved grant');
      return { approved: false, code: e.code, by };
    } finally {
      request.busy = false;
    }
    request.state = 'completed';
    request.approvedBy = by;
    request.approvedWith = method;
    clearTimeout(this.expiryTimer);
    this.options.log.info(
      { credentialId: request.credential.id, by, method },
      'enrollment approved by an owner key',
    );
    return { approved: true, credentialId: request.credential.id, by };
  }

  /** Ends the desk (agent stopping): an open request is dropped. */
  close(): void {
    clearTimeout(this.expiryTimer);
    if (this.request?.state === 'pending') this.request.state = 'cancelled';
  }

  private refresh(): void {
    const request = this.request;
    if (request?.state !== 'pending' || request.busy) return;
    if (this.options.clock.monotonic() < request.expiresAtMono) return;
    request.state = 'expired';
    this.options.audit({ type: 'enroll.expired', opId: request.op.id, credentialId: request.credential.id });
    this.options.log.info({ credentialId: request.credential.id }, 'enrollment request expired');
  }

  private view(request: Request): EnrollmentView {
    return {
      state: request.state,
      opId: request.op.id,
      credentialId: request.credential.id,
      kind: request.credential.kind,
      role: request.credential.role,
      requestHash: toHex(request.requestHash),
      openedAt: new Date(request.openedAt).toISOString(),
      expiresAt: new Date(request.expiresAt).toISOString(),
      ...(request.approvedBy !== undefined ? { approvedBy: request.approvedBy } : {}),
      ...(request.approvedWith !== undefined ? { approvedWith: request.approvedWith } : {}),
    };
  }
}
