import type { CredentialLookup, CredentialStatus } from '../access/credential-lookup.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { CredentialKind, ProofVerdict } from '../core/types.js';
import { fromB64url } from '../crypto/encoding.js';
import { cachedPublicKey, uidHash } from '../crypto/keys.js';
import { SW, type Transceive, transmit } from './apdu.js';
import {
  authenticateEv2First,
  NTAG424_TAP_KEY_NO,
  ntag424CardKey,
  selectNdefApplication,
} from './ntag424.js';
import type { TargetKind } from './pn532/commands.js';
import {
  authenticateCommand,
  parseAuthenticateResponse,
  selectU2f,
  U2F_CONTROL,
  U2F_FLAG_USER_PRESENT,
  type U2fAssertion,
  u2fCheckKeyHandle,
  u2fStatusError,
  vehicleAppParam,
  verifyAssertion,
} from './u2f.js';

/**
 * What a tap proves: the card protocols of a tap, run over one card session. Given the card the
 * reader saw, find the credentials it claims (by the salted UID hash, or, for a FIDO key that
 * randomises its UID, by trying enrolled key handles check-only), run the credential's protocol
 * with a fresh challenge, and report a verdict for the decision. Never throws.
 *
 * Verdicts when a card shows the UID of a FIDO or NTAG 424 credential:
 *   cloned   the card cannot take part in that credential's protocol at all: no ISO-DEP, no FIDO
 *            applet or NTAG application, or a FIDO key that says the key handle is not its own.
 *            A copy of the UID on another card (clone_suspected).
 *   invalid  the card runs the protocol and fails it: a signature that does not verify, an
 *            NTAG 424 that does not hold the card key (wrong AES key) (bad_proof).
 * Transport outcomes: removed (card_removed), timeout (reader_timeout: the card did not answer
 * within the deadline plus grace), reader_error, malformed, frame_too_large.
 */

/** One card in the field, as the reader hands it to the card protocols. */
export interface CardSession {
  readonly uid: Uint8Array;
  readonly kind: TargetKind;
  /** One APDU exchange; rejects with card_removed, reader_timeout or reader_error. */
  transceive(apdu: Uint8Array, timeoutMs: number): Promise<Uint8Array>;
}

export interface TapDeps {
  readonly vehicleId: string;
  readonly keyring: CredentialLookup;
  /** Every FIDO credential with a key handle (revoked ones too), for key-handle probing. */
  readonly fidoCredentials: () => readonly CredentialStatus[];
  /** The NTAG 424 site key, or undefined when there is none yet. */
  readonly siteKey: () => Promise<Uint8Array | undefined>;
  /** Upper bound on key handles tried on an unknown ISO-DEP card. */
  readonly maxProbes: number;
  /** Deadline for the APDU that carries the challenge (the answer deadline plus grace). */
  readonly answerTimeoutMs: number;
  /** Deadline for other APDUs (select, check-only). */
  readonly apduTimeoutMs: number;
  /** Monotonic ms (performance.now). */
  readonly now: () => number;
  /** Fresh 32-byte challenge. */
  readonly challenge: () => Uint8Array;
}

export interface TapProof {
  readonly kind: CredentialKind;
  readonly credentialId: string | undefined;
  /** Audit identity: the credential id, or `uid:<salted hash>` for an unknown card. */
  readonly subject: string;
  readonly proof: ProofVerdict;
  readonly counter?: number;
  /** From sending the challenge to the card's answer. */
  readonly answerMs?: number;
  /** Code of the error behind a failed proof, for logs. */
  readonly cause?: string;
}

/** ISO 14443-3 random UID (RID): 4 bytes starting with 08. Such a card is not found by its UID. */
export function isRandomUid(uid: Uint8Array): boolean {
  return uid.length === 4 && uid[0] === 0x08;
}

/** The strongest kind first: a UID shared by a FIDO key and a UID credential is checked as FIDO. */
const KIND_RANK: Readonly<Record<CredentialKind, number>> = {
  fido: 0,
  ntag424: 1,
  uid: 2,
  phone: 3,
  signer: 4,
  passkey: 5,
};

function byStrength(candidates: readonly CredentialStatus[]): CredentialStatus[] {
  return [...candidates].sort(
    (a, b) =>
      KIND_RANK[a.credential.kind] - KIND_RANK[b.credential.kind] || Number(a.revoked) - Number(b.revoked),
  );
}

/** Maps a card-protocol error to a verdict. `claimed`: the card's UID names a credential. */
export function verdictFor(error: AgentError, claimed: boolean): ProofVerdict {
  switch (error.code) {
    case 'card_removed':
      return 'removed';
    case 'reader_timeout':
    case 'timeout':
      return 'timeout';
    case 'malformed':
      return 'malformed';
    case 'frame_too_large':
      return 'frame_too_large';
    case 'bad_proof':
    case 'rate_limited':
    case 'unauthorized':
      return 'invalid';
    case 'unknown_credential':
    case 'unsupported':
      return claimed ? 'cloned' : 'invalid';
    case 'intent_required':
      return 'unsupported';
    default:
      return 'reader_error';
  }
}

/** A transceive bound to a session with a deadline per APDU. */
function over(session: CardSession, timeoutMs: number): Transceive {
  return (apdu) => session.transceive(apdu, timeoutMs);
}

export interface FidoAnswer {
  readonly assertion: U2fAssertion;
  readonly answerMs: number;
}

/**
 * U2F AUTHENTICATE with P1 = 03 (over NFC the tap is the user's presence) after an optional
 * SELECT; times the challenge APDU. Verifies nothing: the caller checks the signature.
 */
export async function fidoAssert(
  session: CardSession,
  deps: Pick<TapDeps, 'answerTimeoutMs' | 'apduTimeoutMs' | 'now'>,
  request: { appParam: Uint8Array; challenge: Uint8Array; keyHandle: Uint8Array; select: boolean },
): Promise<FidoAnswer> {
  if (request.select) await selectU2f(over(session, deps.apduTimeoutMs));
  const command = authenticateCommand(
    U2F_CONTROL.ENFORCE_PRESENCE,
    request.challenge,
    request.appParam,
    request.keyHandle,
  );
  const sent = deps.now();
  const response = await transmit(over(session, deps.answerTimeoutMs), command);
  const answerMs = deps.now() - sent;
  if (response.sw !== SW.OK) throw u2fStatusError(response.sw, 'authenticate');
  return { assertion: parseAuthenticateResponse(response.data), answerMs };
}

/**
 * On an ISO-DEP card that matched nothing by UID: SELECT the FIDO applet and ask (check-only,
 * P1 = 07: no signature, the counter does not move) whether it owns one of `candidates`.
 * Resolves with the owner's credential, or undefined; 'unsupported' when it has no U2F applet.
 */
export async function probeKeyHandles(
  session: CardSession,
  deps: Pick<TapDeps, 'apduTimeoutMs' | 'vehicleId'>,
  candidates: readonly CredentialStatus[],
): Promise<CredentialStatus | undefined> {
  const transceive = over(session, deps.apduTimeoutMs);
  await selectU2f(transceive);
  const appParam = vehicleAppParam(deps.vehicleId);
  for (const candidate of candidates) {
    const handle = candidate.credential.keyHandle;
    if (handle === undefined) continue;
    const owned = await u2fCheckKeyHandle(transceive, {
      appParam,
      keyHandle: fromB64url(handle),
      select: false,
    });
    if (!owned.ok) throw owned.error;
    if (owned.value) return candidate;
  }
  return undefined;
}

/** The FIDO credentials to try on an unknown ISO-DEP card, active ones first, bounded. */
export function probeCandidates(
  uid: Uint8Array,
  all: readonly CredentialStatus[],
  max: number,
): CredentialStatus[] {
  // A fixed UID that matched nothing cannot be a key enrolled with its UID recorded.
  const random = isRandomUid(uid);
  return byStrength(
    all.filter((s) => s.credential.keyHandle !== undefined && (random || !s.credential.uidHash)),
  ).slice(0, max);
}

/** Runs the proof of one tap. Never throws. */
export async function proveTap(session: CardSession, deps: TapDeps): Promise<TapProof> {
  const hash = uidHash(deps.vehicleId, session.uid);
  const uidSubject = `uid:${hash}`;
  const claimed = isRandomUid(session.uid) ? [] : byStrength(deps.keyring.byUidHash(hash));
  const first = claimed[0];
  if (first !== undefined) {
    const kind = first.credential.kind;
    if (kind === 'fido')
      return await proveFido(
        session,
        deps,
        claimed.filter((c) => c.credential.kind === 'fido'),
        true,
      );
    if (kind === 'ntag424') return await proveNtag424(session, deps, first);
    return { kind: 'uid', credentialId: first.credential.id, subject: first.credential.id, proof: 'none' };
  }
  if (session.kind !== 'iso14443-4')
    return { kind: 'uid', credentialId: undefined, subject: uidSubject, proof: 'none' };
  const candidates = probeCandidates(session.uid, deps.fidoCredentials(), deps.maxProbes);
  let found: CredentialStatus | undefined;
  try {
    found = await probeKeyHandles(session, deps, candidates);
  } catch (err) {
    const error = toAgentError(err, 'reader_error');
    if (error.code === 'unsupported') {
      // Not a U2F key (an NTAG 424 or another smart card nobody enrolled).
      return { kind: 'uid', credentialId: undefined, subject: uidSubject, proof: 'none' };
    }
    return {
      kind: 'fido',
      credentialId: undefined,
      subject: uidSubject,
      proof: verdictFor(error, false),
      cause: error.code,
    };
  }
  if (found === undefined)
    return { kind: 'fido', credentialId: undefined, subject: uidSubject, proof: 'invalid' };
  return await proveFido(session, deps, [found], false, false);
}

/** U2F AUTHENTICATE against each claimed credential until one is the card's own. */
async function proveFido(
  session: CardSession,
  deps: TapDeps,
  candidates: readonly CredentialStatus[],
  byUid: boolean,
  select = true,
): Promise<TapProof> {
  const primary = candidates[0];
  if (primary === undefined) throw new AgentError('internal', 'proveFido needs a candidate');
  const base = { kind: 'fido' as const, credentialId: primary.credential.id, subject: primary.credential.id };
  if (session.kind !== 'iso14443-4') return { ...base, proof: 'cloned', cause: 'not ISO-DEP' };
  const appParam = vehicleAppParam(deps.vehicleId);
  let selected = !select;
  let last: AgentError = new AgentError('unknown_credential');
  for (const candidate of candidates) {
    const { keyHandle, publicKey } = candidate.credential;
    const ids = { credentialId: candidate.credential.id, subject: candidate.credential.id };
    if (keyHandle === undefined || publicKey === undefined) continue;
    try {
      const challenge = deps.challenge();
      const answer = await fidoAssert(session, deps, {
        appParam,
        challenge,
        keyHandle: fromB64url(keyHandle),
        select: !selected,
      });
      selected = true;
      const { assertion, answerMs } = answer;
      if (!verifyAssertion(cachedPublicKey(publicKey), appParam, challenge, assertion))
        return { ...base, ...ids, proof: 'invalid', answerMs, cause: 'bad_proof' };
      if ((assertion.flags & U2F_FLAG_USER_PRESENT) === 0)
        return { ...base, ...ids, proof: 'invalid', answerMs, cause: 'no user presence' };
      return { ...base, ...ids, proof: 'valid', counter: assertion.counter, answerMs };
    } catch (err) {
      last = toAgentError(err, 'reader_error');
      // 6A80: not this key's handle; another claimed credential may be the card's own.
      if (last.code === 'unknown_credential') {
        selected = true;
        continue;
      }
      return { ...base, ...ids, proof: verdictFor(last, byUid), cause: last.code };
    }
  }
  return { ...base, proof: verdictFor(last, byUid), cause: last.code };
}

/** AuthenticateEV2First with the card's diversified tap key. */
async function proveNtag424(
  session: CardSession,
  deps: TapDeps,
  status: CredentialStatus,
): Promise<TapProof> {
  const base = {
    kind: 'ntag424' as const,
    credentialId: status.credential.id,
    subject: status.credential.id,
  };
  if (session.kind !== 'iso14443-4') return { ...base, proof: 'cloned', cause: 'not ISO-DEP' };
  let siteKey: Uint8Array | undefined;
  try {
    siteKey = await deps.siteKey();
  } catch (err) {
    return { ...base, proof: 'reader_error', cause: toAgentError(err).code };
  }
  if (siteKey === undefined) return { ...base, proof: 'reader_error', cause: 'no NTAG 424 site key' };
  try {
    const key = ntag424CardKey(siteKey, session.uid, NTAG424_TAP_KEY_NO);
    await selectNdefApplication(over(session, deps.apduTimeoutMs));
    const sent = deps.now();
    await authenticateEv2First(over(session, deps.answerTimeoutMs), key, NTAG424_TAP_KEY_NO);
    return { ...base, proof: 'valid', answerMs: deps.now() - sent };
  } catch (err) {
    const error = toAgentError(err, 'reader_error');
    return { ...base, proof: verdictFor(error, true), cause: error.code };
  }
}
