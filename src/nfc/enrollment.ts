import { randomBytes } from 'node:crypto';
import type { CredentialLookup, CredentialStatus } from '../access/credential-lookup.js';
import type { AuthProof, GrantOp, MergeResult } from '../access/keyring.js';
import { roleAllows } from '../access/policy.js';
import type { Clock } from '../core/clock.js';
import { type Code, isCode } from '../core/codes.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Role } from '../core/types.js';
import { b64url, toHex } from '../crypto/encoding.js';
import { parseJws } from '../crypto/jws.js';
import { p256JwkFromRaw, sha256, uidHash } from '../crypto/keys.js';
import type { Transceive } from './apdu.js';
import {
  CARD_ENROLL_TYP,
  type CardEnrollRequest,
  type CardIdentity,
  type CardKind,
  canonicalRequest,
  fidoAuthorisationChallenge,
  fidoAuthProof,
  grantFor,
  keyAuthProof,
  parseCardEnrollRequest,
  verifyFidoAuthorisation,
  verifyRequestJws,
} from './enroll-auth.js';
import { personaliseForSite } from './ntag424.js';
import { type CardSession, isRandomUid, probeKeyHandles } from './tap.js';
import { counterVerdict, tapChallenge, type U2fAssertion, u2fRegister, vehicleAppParam } from './u2f.js';

/**
 * Card enrollment at the vehicle (`vehicle-agent enroll card`). A request names the kind of card,
 * its role, name and validity; the reader takes a new card only after the owner authorised that
 * request, and only for a bounded window:
 *
 *   awaiting_owner  an owner authorises: an owner-signed JWS of the request (authoriseWithKey), or
 *                   an owner FIDO key tapped at the reader, signing the request's challenge
 *                   (authoriseWithFido). Anything else is refused; the request expires.
 *   awaiting_card   the next card tapped is registered (FIDO U2F REGISTER with this vehicle's
 *                   application parameter) or personalised (NTAG 424 ChangeKey to its diversified
 *                   keys) or recorded (UID tag), and a grant signed by the vehicle key carrying
 *                   the owner's proof is added to the keyring. A card already enrolled is refused
 *                   (a UID tag or NTAG 424 by its UID, a FIDO key by its key handle: FIDO keys
 *                   often share a UID) and the window stays open until it expires.
 *   completed | expired | cancelled
 *
 * A plain unlock opens nothing: only these calls move the state, and each needs the owner's
 * signature over this request's nonce. See enroll-auth.ts for the proof and its verifiers.
 */

export type AuthorisationMethod = 'owner-key' | 'owner-fido';
export type CardEnrollmentState = 'awaiting_owner' | 'awaiting_card' | 'completed' | 'expired' | 'cancelled';

export interface CardEnrollmentView {
  readonly state: CardEnrollmentState;
  readonly method: AuthorisationMethod;
  readonly kind: CardKind;
  readonly role: Role;
  readonly name?: string;
  /** What the owner signs (the CLI signs exactly this object). */
  readonly request: CardEnrollRequest;
  /** Hex SHA-256 of the canonical request, for people to compare. */
  readonly requestHash: string;
  /** When the current state ends (authorisation, then card window). */
  readonly expiresAt: string;
  readonly authorisedBy?: string;
  readonly credentialId?: string;
  /** The last refused attempt (authorisation or card), if any. */
  readonly lastRefusal?: { readonly code: Code; readonly message: string };
}

export interface CardEnrollmentInput {
  readonly kind: CardKind;
  readonly role: Role;
  readonly name?: string;
  readonly notBefore?: string;
  readonly notAfter?: string;
  readonly method: AuthorisationMethod;
}

export type EnrollmentStep =
  | { readonly ok: true; readonly view: CardEnrollmentView }
  | { readonly ok: false; readonly code: Code; readonly message: string; readonly view?: CardEnrollmentView };

export interface CounterAccess {
  get(credentialId: string): number | undefined;
  set(credentialId: string, value: number): Promise<void>;
}

export interface CardEnrollmentOptions {
  readonly vehicleId: string;
  readonly clock: Clock;
  readonly keyring: CredentialLookup;
  /** Every FIDO credential, to recognise a key that is already enrolled before registering it again. */
  readonly fidoCredentials: () => readonly CredentialStatus[];
  readonly counters: CounterAccess;
  /** Signs a keyring op with the vehicle key (JWS, kid = the vehicle key's credential id). */
  readonly signOp: (op: GrantOp) => string;
  /** Verifies, applies and persists ops (Agent.addKeyringOps). */
  readonly addOps: (jws: readonly string[]) => Promise<MergeResult>;
  readonly audit: (event: { readonly type: string; readonly [key: string]: unknown }) => void;
  readonly log: Logger;
  /** The NTAG 424 site key, created on first need. */
  readonly siteKey: () => Promise<Uint8Array>;
  readonly authoriseWindowMs: number;
  readonly enrollWindowMs: number;
  /** Deadline of one APDU during enrollment (registration is slower than a tap). */
  readonly apduTimeoutMs: number;
}

/** Known FIDO key handles tried on a new FIDO key, to refuse registering an enrolled key twice. */
const MAX_ENROLL_PROBES = 64;

function alreadyEnrolledUid(sameUid: readonly CredentialStatus[]): AgentError {
  const ids = sameUid.map((s) => s.credential.id).join(', ');
  return new AgentError('already_enrolled', `a card with this UID is already in the keyring (${ids})`);
}

interface Authorisation {
  readonly by: string;
  readonly proofFor: (card: CardIdentity) => AuthProof;
}

interface Pending {
  readonly request: CardEnrollRequest;
  readonly method: AuthorisationMethod;
  state: CardEnrollmentState;
  /** Monotonic ms when the current state ends. */
  endsAtMono: number;
  endsAt: number;
  authorisation?: Authorisation;
  credentialId?: string;
  lastRefusal?: { code: Code; message: string };
  busy: boolean;
}

export class CardEnrollmentDesk {
  private readonly options: CardEnrollmentOptions;
  private pending: Pending | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(options: CardEnrollmentOptions) {
    this.options = options;
  }

  /** Opens a request; the reader changes nothing until the owner authorises it. */
  request(input: CardEnrollmentInput): CardEnrollmentView {
    const { clock, vehicleId, authoriseWindowMs } = this.options;
    this.refresh();
    if (this.pending?.state === 'awaiting_owner' || this.pending?.state === 'awaiting_card') {
      throw new AgentError('busy', 'a card enrollment is already open; cancel it first');
    }
    if (input.method !== 'owner-key' && input.method !== 'owner-fido')
      throw new AgentError('bad_arguments', 'method must be owner-key or owner-fido');
    const now = clock.now();
    const iat = Math.floor(now / 1000);
    const request = parseCardEnrollRequest({
      v: 1,
      typ: CARD_ENROLL_TYP,
      vid: vehicleId,
      nonce: b64url(randomBytes(16)),
      iat,
      exp: iat + Math.ceil(authoriseWindowMs / 1000),
      kind: input.kind,
      role: input.role,
      ...(input.name === undefined ? {} : { name: input.name }),
      ...(input.notBefore === undefined ? {} : { notBefore: input.notBefore }),
      ...(input.notAfter === undefined ? {} : { notAfter: input.notAfter }),
    });
    const pending: Pending = {
      request,
      method: input.method,
      state: 'awaiting_owner',
      endsAtMono: clock.monotonic() + authoriseWindowMs,
      endsAt: now + authoriseWindowMs,
      busy: false,
    };
    this.pending = pending;
    this.arm(authoriseWindowMs);
    this.options.audit({
      type: 'enroll.card.request',
      method: input.method,
      kind: request.kind,
      role: request.role,
      expiresAt: new Date(pending.endsAt).toISOString(),
    });
    this.options.log.info(
      { method: input.method, kind: request.kind, role: request.role },
      'card enrollment requested: waiting for the owner to authorise it',
    );
    return this.view(pending);
  }

  status(): CardEnrollmentView | undefined {
    this.refresh();
    return this.pending === undefined ? undefined : this.view(this.pending);
  }

  cancel(): CardEnrollmentView | undefined {
    this.refresh();
    const pending = this.pending;
    if (
      pending &&
      (pending.state === 'awaiting_owner' || pending.state === 'awaiting_card') &&
      !pending.busy
    ) {
      pending.state = 'cancelled';
      clearTimeout(this.timer);
      this.options.audit({ type: 'enroll.card.cancelled', kind: pending.request.kind });
    }
    return pending === undefined ? undefined : this.view(pending);
  }

  /** Ends the desk (agent stopping): an open request is dropped. */
  close(): void {
    clearTimeout(this.timer);
    if (this.pending && (this.pending.state === 'awaiting_owner' || this.pending.state === 'awaiting_card'))
      this.pending.state = 'cancelled';
  }

  /** What the reader does with the next tap. */
  phase(): 'idle' | 'owner-tap' | 'new-card' {
    this.refresh();
    const p = this.pending;
    if (p?.state === 'awaiting_owner' && p.method === 'owner-fido') return 'owner-tap';
    if (p?.state === 'awaiting_card') return 'new-card';
    return 'idle';
  }

  /** The challenge an owner FIDO key signs to authorise the open request (owner-tap phase). */
  ownerTapChallenge(): Uint8Array | undefined {
    return this.phase() === 'owner-tap' && this.pending
      ? fidoAuthorisationChallenge(this.pending.request)
      : undefined;
  }

  /** An owner-tap the reader could not put to the owner check (an unknown card, a card removed). */
  noteRefusedTap(code: Code, message: string): void {
    this.refresh();
    this.refused(this.pending, undefined, code, message);
  }

  /** The owner signed the request with a signing key (the CLI's --owner-key). */
  authoriseWithKey(jws: string): CardEnrollmentView {
    this.refresh();
    const pending = this.pending;
    let kid = 'unknown';
    const refuse = (code: Code, message: string): AgentError => {
      this.refused(pending, kid, code, message);
      return new AgentError(code, message);
    };
    if (pending?.state !== 'awaiting_owner' || pending.method !== 'owner-key')
      throw refuse('enrollment_closed', 'no card enrollment is waiting for an owner-signed request');
    try {
      kid = parseJws(jws).header.kid;
    } catch (err) {
      throw refuse('jws_malformed', toAgentError(err).message);
    }
    const status = this.options.keyring.byId(kid);
    if (status === undefined) throw refuse('unknown_credential', `${kid} is not in the keyring`);
    const signed = verifyRequestJws(jws, status.credential);
    if (signed === undefined) throw refuse('bad_proof', 'the signature does not verify with that key');
    if (canonicalRequest(signed) !== canonicalRequest(pending.request))
      throw refuse('bad_proof', 'the signed request is not the open one (old nonce, or other fields)');
    const denial = this.ownerDenial(status);
    if (denial) throw refuse(denial, `${kid} may not authorise an enrollment (${denial})`);
    this.authorised(pending, {
      by: kid,
      proofFor: (card) => keyAuthProof(kid, jws, card),
    });
    return this.view(pending);
  }

  /**
   * An owner FIDO key answered the owner-tap challenge at the reader. The signature, the owner's
   * role and validity and a rising signature counter are all required.
   */
  async authoriseWithFido(credentialId: string, assertion: U2fAssertion): Promise<EnrollmentStep> {
    this.refresh();
    const pending = this.pending;
    const refuse = (code: Code, message: string): EnrollmentStep => {
      this.refused(pending, credentialId, code, message);
      return { ok: false, code, message, ...(pending ? { view: this.view(pending) } : {}) };
    };
    if (pending?.state !== 'awaiting_owner' || pending.method !== 'owner-fido' || pending.busy)
      return refuse('enrollment_closed', 'no card enrollment is waiting for an owner FIDO key');
    const status = this.options.keyring.byId(credentialId);
    if (status === undefined) return refuse('unknown_credential', 'this key is not enrolled');
    if (!verifyFidoAuthorisation(pending.request, assertion, status.credential))
      return refuse('bad_proof', 'the FIDO signature over the request does not verify');
    const denial = this.ownerDenial(status);
    if (denial) return refuse(denial, `this key may not authorise an enrollment (${denial})`);
    const { counters } = this.options;
    if (counterVerdict(counters.get(credentialId), assertion.counter) !== 'ok')
      return refuse('clone_suspected', 'the signature counter did not rise');
    pending.busy = true;
    try {
      await counters.set(credentialId, Math.max(assertion.counter, counters.get(credentialId) ?? 0));
    } catch (err) {
      const e = toAgentError(err, 'state_io');
      return refuse(e.code, `cannot persist the signature counter: ${e.message}`);
    } finally {
      pending.busy = false;
    }
    const request = pending.request;
    this.authorised(pending, {
      by: credentialId,
      proofFor: (card) => fidoAuthProof(credentialId, request, assertion, card),
    });
    return { ok: true, view: this.view(pending) };
  }

  /** The new card is in the field (awaiting_card): register or personalise it and grant it. */
  async enrollCard(session: CardSession): Promise<EnrollmentStep> {
    this.refresh();
    const pending = this.pending;
    const refuse = (code: Code, message: string): EnrollmentStep => {
      this.refused(pending, undefined, code, message);
      return { ok: false, code, message, ...(pending ? { view: this.view(pending) } : {}) };
    };
    if (pending?.state !== 'awaiting_card' || pending.busy || !pending.authorisation)
      return refuse('enrollment_closed', 'the reader is not waiting for a new card');
    pending.busy = true;
    try {
      let card: CardIdentity;
      try {
        card = await this.readCard(pending.request, session);
      } catch (err) {
        const e = toAgentError(err, 'reader_error');
        return refuse(e.code, e.message);
      }
      const grant = grantFor(pending.request, card);
      if (this.options.keyring.byId(grant.cred.id) !== undefined)
        return refuse('already_enrolled', 'this card is already in the keyring');
      let result: MergeResult;
      try {
        const jws = this.options.signOp({ ...grant, auth: pending.authorisation.proofFor(card) });
        result = await this.options.addOps([jws]);
      } catch (err) {
        const e = toAgentError(err, 'state_io');
        this.options.log.error({ code: e.code, err: e.message }, 'cannot write the enrollment grant');
        return refuse(e.code, e.message);
      }
      const rejected = result.rejected[0];
      if (rejected !== undefined) {
        this.options.log.warn({ code: rejected.code, err: rejected.message }, 'enrollment grant refused');
        return refuse(isCode(rejected.code) ? rejected.code : 'internal', rejected.message);
      }
      pending.state = 'completed';
      pending.credentialId = grant.cred.id;
      clearTimeout(this.timer);
      this.options.audit({
        type: 'enroll.card.completed',
        credentialId: grant.cred.id,
        kind: grant.cred.kind,
        role: grant.cred.role,
        by: pending.authorisation.by,
      });
      this.options.log.info(
        { credentialId: grant.cred.id, kind: grant.cred.kind, role: grant.cred.role },
        'card enrolled',
      );
      if (grant.cred.kind === 'uid')
        this.options.log.warn(
          { credentialId: grant.cred.id, name: grant.cred.name, role: grant.cred.role },
          'a UID-only tag was enrolled (insecureUid): its UID can be cloned in minutes',
        );
      return { ok: true, view: this.view(pending) };
    } finally {
      pending.busy = false;
    }
  }

  // ── the card ───────────────────────────────────────────────────────────────

  private async readCard(request: CardEnrollRequest, session: CardSession): Promise<CardIdentity> {
    const { vehicleId, keyring, apduTimeoutMs } = this.options;
    const random = isRandomUid(session.uid);
    const hash = random ? undefined : uidHash(vehicleId, session.uid);
    const sameUid = hash === undefined ? [] : keyring.byUidHash(hash);
    const transceive: Transceive = (apdu) => session.transceive(apdu, apduTimeoutMs);
    switch (request.kind) {
      case 'uid':
        if (hash === undefined)
          throw new AgentError('unsupported', 'this card shows a random UID: it cannot be enrolled by UID');
        // A UID-only card is its UID: a second one with the same UID is the same card (or its clone).
        if (sameUid.length > 0) throw alreadyEnrolledUid(sameUid);
        return { uidHash: hash };
      case 'ntag424': {
        if (hash === undefined || session.kind !== 'iso14443-4')
          throw new AgentError('unsupported', 'this is not an NTAG 424 DNA with a fixed UID');
        // Its keys are diversified from the UID, so the UID is what names it too.
        if (sameUid.length > 0) throw alreadyEnrolledUid(sameUid);
        const siteKey = await this.options.siteKey();
        const result = await personaliseForSite(transceive, siteKey, session.uid);
        if (!result.ok) {
          if (result.error.code === 'bad_proof')
            throw new AgentError(
              'bad_proof',
              'the card holds keys of another system (not factory, not ours)',
            );
          throw result.error;
        }
        return { uidHash: hash };
      }
      case 'fido':
        return await this.readFidoKey(session, hash, sameUid, transceive);
    }
  }

  /**
   * A FIDO key is named by its key handle and public key, never by its UID: many keys show a
   * fixed UID shared by a whole model, or a random one. It is the same key as an enrolled one only
   * when it owns an enrolled key handle (check-only AUTHENTICATE), and those that share its UID
   * are asked first so the probe bound never hides them. Its UID is recorded (a quick lookup at
   * the tap, which tries every FIDO key claiming that UID) unless a card without a key pair
   * claims it: that card is its UID, so a tap showing it could no longer tell the two apart.
   */
  private async readFidoKey(
    session: CardSession,
    hash: string | undefined,
    sameUid: readonly CredentialStatus[],
    transceive: Transceive,
  ): Promise<CardIdentity> {
    const { vehicleId, apduTimeoutMs } = this.options;
    if (session.kind !== 'iso14443-4') throw new AgentError('unsupported', 'this card is not a FIDO key');
    const uidCard = sameUid.find((s) => s.credential.kind !== 'fido');
    if (uidCard !== undefined)
      throw new AgentError(
        'already_enrolled',
        `this key shows the UID of ${uidCard.credential.id}, a card identified by its UID alone: revoke that card first, or enroll a key with another UID`,
      );
    const sharing = sameUid.filter((s) => s.credential.kind === 'fido');
    const sharingIds = new Set(sharing.map((s) => s.credential.id));
    const others = this.options.fidoCredentials().filter((s) => !sharingIds.has(s.credential.id));
    const known = [...sharing, ...others].slice(0, MAX_ENROLL_PROBES);
    const owner = await probeKeyHandles(session, { vehicleId, apduTimeoutMs }, known);
    if (owner !== undefined)
      throw new AgentError('already_enrolled', `this key is already enrolled as ${owner.credential.id}`);
    const registered = await u2fRegister(transceive, {
      appParam: vehicleAppParam(vehicleId),
      challenge: tapChallenge(),
      select: false,
    });
    if (!registered.ok) throw registered.error;
    return {
      publicKey: p256JwkFromRaw(registered.value.publicKey),
      keyHandle: b64url(registered.value.keyHandle),
      ...(hash === undefined ? {} : { uidHash: hash }),
    };
  }

  // ── state ──────────────────────────────────────────────────────────────────

  /** Why `status` may not authorise an enrollment now, or undefined when it may. */
  private ownerDenial(status: CredentialStatus): Code | undefined {
    const { credential } = status;
    if (status.revoked) return 'revoked';
    const now = this.options.clock.now();
    if (credential.notBefore !== undefined && now < credential.notBefore) return 'not_yet_valid';
    if (credential.notAfter !== undefined && now >= credential.notAfter) return 'expired';
    if (!roleAllows(credential.role, 'keys.grant')) return 'role_not_allowed';
    return undefined;
  }

  private authorised(pending: Pending, authorisation: Authorisation): void {
    const { clock, enrollWindowMs } = this.options;
    pending.authorisation = authorisation;
    pending.state = 'awaiting_card';
    pending.endsAtMono = clock.monotonic() + enrollWindowMs;
    pending.endsAt = clock.now() + enrollWindowMs;
    delete pending.lastRefusal;
    this.arm(enrollWindowMs);
    this.options.audit({
      type: 'enroll.card.authorised',
      by: authorisation.by,
      method: pending.method,
      kind: pending.request.kind,
      role: pending.request.role,
      expiresAt: new Date(pending.endsAt).toISOString(),
    });
    this.options.log.info(
      { by: authorisation.by, windowMs: enrollWindowMs },
      'card enrollment authorised: waiting for the new card',
    );
  }

  private refused(pending: Pending | undefined, by: string | undefined, code: Code, message: string): void {
    if (pending && (pending.state === 'awaiting_owner' || pending.state === 'awaiting_card'))
      pending.lastRefusal = { code, message };
    this.options.audit({
      type: 'enroll.card.refused',
      code,
      ...(by === undefined ? {} : { by }),
      ...(pending ? { kind: pending.request.kind, state: pending.state } : {}),
    });
    this.options.log.warn({ code, by, err: message }, 'card enrollment step refused');
  }

  private arm(ms: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), ms + 1);
    this.timer.unref();
  }

  private refresh(): void {
    const pending = this.pending;
    if (!pending || pending.busy) return;
    if (pending.state !== 'awaiting_owner' && pending.state !== 'awaiting_card') return;
    if (this.options.clock.monotonic() < pending.endsAtMono) return;
    const was = pending.state;
    pending.state = 'expired';
    this.options.audit({ type: 'enroll.card.expired', kind: pending.request.kind, was });
    this.options.log.info({ was }, 'card enrollment expired');
  }

  private view(p: Pending): CardEnrollmentView {
    const { request } = p;
    return {
      state: p.state,
      method: p.method,
      kind: request.kind,
      role: request.role,
      ...(request.name === undefined ? {} : { name: request.name }),
      request,
      requestHash: toHex(sha256(canonicalRequest(request))),
      expiresAt: new Date(p.endsAt).toISOString(),
      ...(p.authorisation ? { authorisedBy: p.authorisation.by } : {}),
      ...(p.credentialId === undefined ? {} : { credentialId: p.credentialId }),
      ...(p.lastRefusal ? { lastRefusal: { ...p.lastRefusal } } : {}),
    };
  }
}
