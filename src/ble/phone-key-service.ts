import { createPublicKey, randomBytes as nodeRandomBytes } from 'node:crypto';
import type { CredentialStatus } from '../access/credential-lookup.js';
import type { ReaderContext } from '../agent/reader.js';
import type { Code } from '../core/codes.js';
import { AgentError, isAgentError, toAgentError } from '../core/errors.js';
import type { Credential, Decision, Presentation, ProofVerdict, PublicJwk, Role } from '../core/types.js';
import { b64url } from '../crypto/encoding.js';
import { cachedPublicKey, credentialIdFor, keyCredentialId, publicJwkOf, sha256 } from '../crypto/keys.js';
import { verifyP256 } from '../crypto/verify.js';
import type { PeerEnrollmentState } from './enrollment.js';
import type { CentralRef, PhoneKeyServicePort } from './peripheral/service-port.js';
import {
  type AnswerFields,
  answerSignedBytes,
  decodeAnswer,
  decodeEnroll,
  decodePasskey,
  type EnrollFields,
  encodeResult,
  enrollSignedBytes,
  modePType,
  type PasskeyFields,
  passkeyChallengePreimage,
  type ResultOutcome,
  resultSignedBytes,
} from './protocol/mode-p.js';
import { ChallengeBook, type IssuedChallenge } from './protocol/mode-p-session.js';
import { MODE_P_MAX_MESSAGE_BYTES } from './protocol/peripheral-constants.js';
import { verifyPasskeyAssertion } from './protocol/webauthn.js';

/**
 * The phone-key service of mode P (the vehicle as GATT peripheral; docs/ble-protocol.md part
 * "Mode P"): the GATT application (src/ble/peripheral/, D-Bus) hands it each read and write of a
 * central, and it runs the protocol against the agent's own decision path: ReaderContext.present
 * decides, audits, rate-limits and drives the relay exactly as for the central-mode reader, so the
 * two directions cannot disagree on who may open the vehicle. The transport builds the service in
 * its CredentialReader.start(context) with the ReaderContext the agent gives every reader.
 *
 * What a peer gets back: a result message per connection (read, and notified). Only a result the
 * peer earned with a verified signature of an enrolled key is signed by the vehicle key; denied and
 * pending results carry no signature and no vehicle key.
 */

export interface PeerEnrollmentPort {
  /** EnrollmentDesk.requestFor: finds or opens the request for this credential. */
  requestFor(credential: Credential): PeerEnrollmentState;
}

export interface PhoneKeyServiceDeps {
  /** The agent's reader context (decision, audit and relay through present(); the vehicle key). */
  readonly context: ReaderContext;
  /** Reader id in presentations and the audit. Default 'ble-p'. */
  readonly readerId?: string;
  /** The vehicle key's SubjectPublicKeyInfo DER, sent beside a signed result for the page to pin. */
  readonly vehicleSpki: Uint8Array;
  /** Web key answer deadline from the challenge read (policy.bleAnswerDeadlineMs). 1..65535. */
  readonly answerWindowMs: number;
  /** Passkey answer and enrollment deadline from the read: user verification is a human's time. */
  readonly slowAnswerWindowMs?: number;
  /**
   * Origins accepted in a passkey's clientDataJSON (ble.phoneApp.origins plus the status page's);
   * a function is asked at each check (the status page's port may be known only once it listens).
   */
  readonly allowedOrigins: readonly string[] | (() => readonly string[]);
  readonly enrollment?: PeerEnrollmentPort;
  /** Role of a key enrolled from the page (the owner approves it as such). Default driver. */
  readonly enrollRole?: Role;
  /** Audit of what does not go through present() (identify). */
  readonly audit?: (event: { readonly type: string; readonly [key: string]: unknown }) => void;
  readonly randomBytes?: (length: number) => Uint8Array;
  /** Connections remembered at once (challenge and result); the least recently used go first. */
  readonly maxConnections?: number;
}

export interface PhoneKeyServiceStats {
  readonly challenges: number;
  readonly granted: number;
  readonly denied: number;
  readonly malformed: number;
  readonly enrollments: number;
}

export interface PhoneKeyService extends PhoneKeyServicePort {
  /** Resolves when no answer is being processed (tests, stop). */
  idle(): Promise<void>;
  stats(): PhoneKeyServiceStats;
}

const DEFAULT_SLOW_WINDOW_MS = 60_000;
const DEFAULT_MAX_CONNECTIONS = 64;

interface Connection {
  result: Uint8Array | undefined;
  busy: boolean;
}

/** How one answer ended, before it is put on the wire. */
interface Verdict {
  readonly outcome: ResultOutcome;
  readonly code: Code | '';
  /** Set when the peer proved an enrolled key: sign the result over this. */
  readonly signFor?: { readonly nonce: Uint8Array; readonly subject: string | Uint8Array };
}

function denied(code: Code): Verdict {
  return { outcome: 'denied', code };
}

/** A P-256 SubjectPublicKeyInfo as a JWK; undefined for anything else. */
function p256FromSpki(spki: Uint8Array): PublicJwk | undefined {
  try {
    const jwk = publicJwkOf(createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' }));
    return jwk.kty === 'EC' && jwk.crv === 'P-256' ? jwk : undefined;
  } catch {
    return undefined;
  }
}

/** The checks of an identify (no relay action): the decision's order without policy or limits. */
function identifyCode(status: CredentialStatus | undefined, proof: ProofVerdict, now: number): Code | '' {
  if (status === undefined) return 'unknown_credential';
  if (status.suspect !== undefined) return 'credential_suspect';
  if (status.revoked) return 'revoked';
  if (proof !== 'valid') return 'bad_proof';
  const { credential } = status;
  if (credential.notBefore !== undefined && now < credential.notBefore) return 'not_yet_valid';
  if (credential.notAfter !== undefined && now >= credential.notAfter) return 'expired';
  return '';
}

/** A missed deadline as the audit keeps it: the answer time, the deadline and how late it came. */
function lateness(
  elapsedMs: number,
  deadlineMs: number,
): Pick<Presentation, 'answerMs' | 'deadlineMs' | 'lateMs'> {
  return { answerMs: elapsedMs, deadlineMs, lateMs: Math.round(elapsedMs - deadlineMs) };
}

/**
 * The origins a passkey may be used from: ble.phoneApp.origins, plus the status page's own origin
 * (it serves the app at /key/), given its listening port once known (statusPage.port may be 0).
 */
export function phoneAppOrigins(configured: readonly string[], statusPagePort: number | undefined): string[] {
  const origins = new Set(configured);
  if (statusPagePort !== undefined && statusPagePort > 0) {
    origins.add(`http://127.0.0.1:${statusPagePort}`);
    // WebAuthn takes no IP address as the relying party: passkeys need the page at localhost.
    origins.add(`http://localhost:${statusPagePort}`);
  }
  return [...origins];
}

export function createPhoneKeyService(deps: PhoneKeyServiceDeps): PhoneKeyService {
  const ctx = deps.context;
  const readerId = deps.readerId ?? 'ble-p';
  const fixedOrigins = typeof deps.allowedOrigins === 'function' ? undefined : new Set(deps.allowedOrigins);
  const origins = (): ReadonlySet<string> =>
    fixedOrigins ?? new Set((deps.allowedOrigins as () => readonly string[])());
  const random = deps.randomBytes ?? ((length: number) => new Uint8Array(nodeRandomBytes(length)));
  const maxConnections = deps.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  const slowWindowMs = deps.slowAnswerWindowMs ?? DEFAULT_SLOW_WINDOW_MS;
  const book = new ChallengeBook({
    vehicleId: ctx.vehicleId,
    windowMs: deps.answerWindowMs,
    slowWindowMs,
    randomBytes: random,
    maxConnections,
  });
  const connections = new Map<string, Connection>();
  const listeners = new Set<(central: CentralRef, characteristic: 'result', bytes: Uint8Array) => void>();
  const inFlight = new Set<Promise<void>>();
  const counters = { challenges: 0, granted: 0, denied: 0, malformed: 0, enrollments: 0 };

  /** The connection's record, most recently used last; the oldest idle ones are forgotten past the bound. */
  function connectionOf(device: string): Connection {
    let connection = connections.get(device);
    if (connection === undefined) connection = { result: undefined, busy: false };
    connections.delete(device);
    connections.set(device, connection);
    if (connections.size > maxConnections) {
      for (const [key, value] of connections) {
        if (connections.size <= maxConnections) break;
        if (!value.busy && key !== device) connections.delete(key);
      }
    }
    return connection;
  }

  function encode(verdict: Verdict): Uint8Array {
    const { outcome, code, signFor } = verdict;
    if (outcome === 'granted' && signFor !== undefined) {
      const signature = ctx.signAsVehicle(resultSignedBytes(signFor.nonce, outcome, code, signFor.subject));
      return encodeResult({ outcome, code, signature, vehicleSpki: deps.vehicleSpki });
    }
    return encodeResult({ outcome, code, signature: new Uint8Array(0), vehicleSpki: new Uint8Array(0) });
  }

  function publish(
    central: CentralRef,
    connection: Connection,
    verdict: Verdict,
    notify: 'now' | 'next turn' = 'now',
  ): void {
    // The central left (or was forgotten) while this was decided: nothing of it is kept.
    if (connections.get(central.device) !== connection) return;
    if (verdict.outcome === 'granted') counters.granted += 1;
    else if (verdict.outcome === 'denied') counters.denied += 1;
    let bytes: Uint8Array;
    try {
      bytes = encode(verdict);
    } catch (err) {
      const e = toAgentError(err);
      ctx.log.error({ code: e.code, err: e.message }, 'mode P result could not be encoded');
      bytes = encode(denied('internal'));
    }
    connection.result = bytes;
    if (notify === 'next turn') {
      // Unless a newer result (or a disconnect) has replaced it by then.
      setImmediate(() => {
        if (connection.result === bytes && connections.get(central.device) === connection)
          tell(central, bytes);
      });
    } else tell(central, bytes);
  }

  function tell(central: CentralRef, bytes: Uint8Array): void {
    for (const listener of listeners) {
      try {
        listener(central, 'result', bytes);
      } catch (err) {
        ctx.log.error({ err: String(err) }, 'mode P notify listener threw');
      }
    }
  }

  const present = (presentation: Presentation): Promise<Decision> => ctx.present(presentation);

  /** A decision's denial code as the page is told it (the detail of a failed passkey check). */
  function resultFor(
    decision: Decision,
    proved: { readonly nonce: Uint8Array; readonly subject: string | Uint8Array },
    detail: Code | undefined,
    late: boolean,
  ): Verdict {
    if (decision.granted) return { outcome: 'granted', code: '', signFor: proved };
    if (late && decision.code === 'timeout') return denied('challenge_expired');
    if (detail !== undefined && decision.code === 'bad_proof') return denied(detail);
    return denied(decision.code);
  }

  async function answerWebKey(device: string, answer: AnswerFields): Promise<Verdict> {
    const taken = book.take(device, answer.nonce, ctx.clock.monotonic(), 'fast');
    // An answer to no challenge of ours is nobody's proof: said, not counted against the key it names.
    if (!taken.ok && taken.code === 'no_challenge') return denied('no_challenge');
    const status = ctx.keyring.byId(answer.keyId);
    const base = {
      reader: readerId,
      kind: 'phone' as const,
      credentialId: status === undefined ? undefined : answer.keyId,
      subject: answer.keyId,
      intent: answer.intent === 'identify' ? ('unlock' as const) : answer.intent,
      explicitIntent: answer.explicitIntent,
    };
    const proved = { nonce: answer.nonce, subject: answer.keyId };
    if (!taken.ok && taken.code === 'replay')
      return resultFor(await present({ ...base, proof: 'replayed' }), proved, undefined, false);
    if (taken.ok === false && taken.code !== 'challenge_expired') return denied(taken.code);
    const publicKey = status?.credential.kind === 'phone' ? status.credential.publicKey : undefined;
    const signed =
      publicKey !== undefined &&
      verifyP256(
        cachedPublicKey(publicKey),
        answerSignedBytes(taken.challenge.message, answer),
        answer.signature,
      );
    if (!taken.ok) {
      // Late: denied all the same; a late answer of the real key is audited as its timeout.
      const late = await present({
        ...base,
        proof: signed ? 'timeout' : 'invalid',
        ...lateness(taken.elapsedMs, deps.answerWindowMs),
      });
      return resultFor(late, proved, undefined, true);
    }
    const proof: ProofVerdict = signed ? 'valid' : 'invalid';
    if (answer.intent === 'identify') return identify(status, proof, proved);
    return resultFor(await present({ ...base, proof, answerMs: taken.elapsedMs }), proved, undefined, false);
  }

  function identify(
    status: CredentialStatus | undefined,
    proof: ProofVerdict,
    proved: { readonly nonce: Uint8Array; readonly subject: string | Uint8Array },
    detail?: Code,
  ): Verdict {
    const checked = identifyCode(status, proof, ctx.clock.now());
    const code = checked === 'bad_proof' && detail !== undefined ? detail : checked;
    deps.audit?.({
      type: 'ble.identify',
      reader: readerId,
      ...(status === undefined ? {} : { credentialId: status.credential.id }),
      granted: code === '',
      ...(code === '' ? {} : { code }),
    });
    return code === '' ? { outcome: 'granted', code: '', signFor: proved } : denied(code);
  }

  async function answerPasskey(device: string, answer: PasskeyFields): Promise<Verdict> {
    const taken = book.take(device, answer.nonce, ctx.clock.monotonic(), 'slow');
    if (!taken.ok && taken.code === 'no_challenge') return denied('no_challenge');
    const credentialId = credentialIdFor('passkey', answer.credentialId);
    const status = ctx.keyring.byId(credentialId);
    const base = {
      reader: readerId,
      kind: 'passkey' as const,
      credentialId: status === undefined ? undefined : credentialId,
      subject: credentialId,
      intent: answer.intent === 'identify' ? ('unlock' as const) : answer.intent,
      explicitIntent: answer.explicitIntent,
    };
    const proved = { nonce: answer.nonce, subject: answer.credentialId };
    if (!taken.ok && taken.code === 'replay')
      return resultFor(await present({ ...base, proof: 'replayed' }), proved, undefined, false);
    if (taken.ok === false && taken.code !== 'challenge_expired') return denied(taken.code);
    const credential = status?.credential;
    let proof: ProofVerdict = 'invalid';
    let detail: Code | undefined;
    let counter: number | undefined;
    if (
      credential?.kind === 'passkey' &&
      credential.publicKey !== undefined &&
      credential.rpId !== undefined
    ) {
      const verdict = verifyPasskeyAssertion(answer, {
        challenge: sha256(passkeyChallengePreimage(taken.challenge.message, answer)),
        allowedOrigins: origins(),
        rpId: credential.rpId,
        publicKey: credential.publicKey,
      });
      if (verdict.ok) {
        proof = 'valid';
        counter = verdict.counter;
      } else {
        proof = verdict.code === 'malformed' ? 'malformed' : 'invalid';
        if (verdict.code !== 'malformed' && verdict.code !== 'bad_proof') detail = verdict.code;
      }
    }
    if (!taken.ok) {
      const late = await present({
        ...base,
        proof: proof === 'valid' ? 'timeout' : proof,
        ...lateness(taken.elapsedMs, slowWindowMs),
      });
      return resultFor(late, proved, undefined, true);
    }
    if (answer.intent === 'identify') return identify(status, proof, proved, detail);
    const decision = await present({
      ...base,
      proof,
      ...(counter === undefined ? {} : { counter }),
      ...(detail === undefined ? {} : { proofDetail: detail }),
    });
    return resultFor(decision, proved, detail, false);
  }

  function enroll(device: string, request: EnrollFields): Verdict {
    const taken = book.take(device, request.nonce, ctx.clock.monotonic(), 'slow');
    if (!taken.ok) return denied(taken.code);
    const desk = deps.enrollment;
    if (desk === undefined) return denied('enrollment_closed');
    const publicKey = p256FromSpki(request.spki);
    if (publicKey === undefined) return denied('key_invalid');
    const role = deps.enrollRole ?? 'driver';
    let credential: Credential;
    let proved: Verdict['signFor'];
    if (request.kind === 'webkey') {
      const signed = enrollSignedBytes(taken.challenge.message, request);
      if (!verifyP256(cachedPublicKey(publicKey), signed, request.signature)) return denied('bad_proof');
      const id = keyCredentialId('phone', publicKey);
      credential = { id, kind: 'phone', role, name: request.name, publicKey, options: {} };
      proved = { nonce: request.nonce, subject: id };
    } else {
      const keyHandle = b64url(request.credentialId);
      credential = {
        id: credentialIdFor('passkey', request.credentialId),
        kind: 'passkey',
        role,
        name: request.name,
        publicKey,
        keyHandle,
        rpId: request.rpId,
        options: {},
      };
      // A passkey enrollment proves nothing (no signature): its grant is said, never signed.
      proved = undefined;
    }
    const state = desk.requestFor(credential);
    switch (state.state) {
      case 'pending':
        return { outcome: 'pending', code: 'enrollment_pending' };
      case 'enrolled':
        counters.enrollments += 1;
        return { outcome: 'granted', code: '', ...(proved === undefined ? {} : { signFor: proved }) };
      case 'refused':
        return denied(state.code);
    }
  }

  async function process(central: CentralRef, connection: Connection, bytes: Uint8Array): Promise<void> {
    let verdict: Verdict;
    try {
      switch (modePType(bytes)) {
        case 'answer':
          verdict = await answerWebKey(central.device, decodeAnswer(bytes));
          break;
        case 'passkey':
          verdict = await answerPasskey(central.device, decodePasskey(bytes));
          break;
        case 'enroll':
          verdict = enroll(central.device, decodeEnroll(bytes));
          break;
        default:
          verdict = denied('malformed');
      }
    } catch (err) {
      const e = toAgentError(err);
      ctx.log.error({ code: e.code, err: e.message, address: central.address }, 'mode P answer failed');
      verdict = denied(isAgentError(err) ? e.code : 'internal');
    } finally {
      connection.busy = false;
    }
    publish(central, connection, verdict);
  }

  return {
    async read(central, characteristic) {
      try {
        const connection = connectionOf(central.device);
        if (characteristic === 'challenge') {
          const issued: IssuedChallenge = book.issue(central.device, ctx.clock.monotonic(), ctx.clock.now());
          counters.challenges += 1;
          return issued.message;
        }
        return connection.result ?? encode(denied('no_challenge'));
      } catch (err) {
        const e = toAgentError(err);
        ctx.log.error({ code: e.code, err: e.message }, 'mode P read failed');
        return encode(denied('internal'));
      }
    },

    async write(central, _characteristic, bytes) {
      const connection = connectionOf(central.device);
      if (connection.busy) throw new AgentError('busy', 'an answer of this connection is being decided');
      const refuse = (code: Code, message: string): never => {
        counters.malformed += 1;
        publish(central, connection, denied(code));
        throw new AgentError(code, message, { address: central.address });
      };
      if (bytes.length > MODE_P_MAX_MESSAGE_BYTES)
        refuse('frame_too_large', 'a mode P message is at most 512 bytes');
      const type = modePType(bytes);
      if (type !== 'answer' && type !== 'passkey' && type !== 'enroll')
        refuse('malformed', 'not an answer, passkey or enroll message of mode P');
      // Decoded here once so malformed input is an ATT error; decoded again in process (cheap).
      try {
        if (type === 'answer') decodeAnswer(bytes);
        else if (type === 'passkey') decodePasskey(bytes);
        else decodeEnroll(bytes);
      } catch (err) {
        const e = toAgentError(err, 'malformed');
        refuse(e.code === 'frame_too_large' ? 'frame_too_large' : 'malformed', e.message);
      }
      connection.busy = true;
      // A read sees `pending` from now on; its notification waits for the next turn of the event
      // loop: sent now, its D-Bus signal went out ahead of the decision and the relay, and made
      // the agent's own p99 several times longer under load (bench/ble-peripheral.ts).
      publish(
        central,
        connection,
        { outcome: 'pending', code: type === 'enroll' ? 'enrollment_pending' : 'busy' },
        'next turn',
      );
      const copy = new Uint8Array(bytes);
      const run = process(central, connection, copy).finally(() => inFlight.delete(run));
      inFlight.add(run);
    },

    disconnected(central) {
      book.forget(central.device);
      connections.delete(central.device);
    },

    onNotify(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },

    async idle() {
      while (inFlight.size > 0) await Promise.allSettled([...inFlight]);
    },

    stats() {
      return { ...counters };
    },
  };
}
