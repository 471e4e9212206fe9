import { randomBytes } from 'node:crypto';
import type { CredentialReader, ReaderContext } from '../agent/reader.js';
import { AgentError } from '../core/errors.js';
import type { Decision, Health, Intent, Presentation } from '../core/types.js';
import { simKeyMessage, verifyP256 } from '../crypto/challenge.js';
import { b64url, fromB64url, fromHex } from '../crypto/encoding.js';
import { publicKeyFromJwk, uidHash } from '../crypto/keys.js';
import type { SimAnswer, SimChallenge } from '../host/control-api.js';
import type { SimReaderControl } from '../host/control-handlers.js';

const CHALLENGE_TTL_MS = 30_000;
const MAX_OUTSTANDING = 64;

/**
 * A reader driven through the local control socket (`vehicle-agent sim present`): the CLI plays a
 * phone key (a real P-256 challenge-response against the keyring) or a UID tag. It exercises the
 * same decision, lock and audit path as the hardware readers.
 */
export class SimReader implements CredentialReader, SimReaderControl {
  readonly id: string;
  private context: ReaderContext | undefined;
  private readonly outstanding = new Map<string, { challenge: Uint8Array; issuedAt: number }>();
  private healthState: Health = { state: 'down', detail: 'not started', since: Date.now() };

  constructor(id = 'sim') {
    this.id = id;
  }

  async start(context: ReaderContext): Promise<void> {
    this.context = context;
    this.healthState = { state: 'ok', since: context.clock.now() };
  }

  async stop(): Promise<void> {
    this.outstanding.clear();
    this.healthState = { state: 'down', detail: 'stopped', since: Date.now() };
  }

  health(): Health {
    return this.healthState;
  }

  private ctx(): ReaderContext {
    if (!this.context) throw new AgentError('reader_error', 'the simulated reader is not started');
    return this.context;
  }

  issueChallenge(): SimChallenge {
    const ctx = this.ctx();
    const now = ctx.clock.monotonic();
    for (const [id, c] of this.outstanding)
      if (now - c.issuedAt > CHALLENGE_TTL_MS) this.outstanding.delete(id);
    if (this.outstanding.size >= MAX_OUTSTANDING)
      throw new AgentError('busy', 'too many outstanding challenges');
    const challengeId = b64url(randomBytes(12));
    const challenge = randomBytes(32);
    this.outstanding.set(challengeId, { challenge, issuedAt: now });
    return { challengeId, challenge: b64url(challenge), vehicleId: ctx.vehicleId };
  }

  /** Verifies a key's answer and hands the presentation to the agent. */
  async answer(a: SimAnswer): Promise<Decision> {
    const ctx = this.ctx();
    const pending = this.outstanding.get(a.challengeId);
    // A challenge is single-use: an unknown or spent id is a replay (or a forgery).
    this.outstanding.delete(a.challengeId);
    const answerMs = pending ? ctx.clock.monotonic() - pending.issuedAt + (a.delayMs ?? 0) : undefined;
    const status = ctx.keyring.byId(a.credentialId);
    const base = {
      reader: this.id,
      kind: 'phone' as const,
      credentialId: status ? a.credentialId : undefined,
      subject: a.credentialId,
      intent: a.intent,
      explicitIntent: a.explicitIntent,
      ...(answerMs !== undefined ? { answerMs } : {}),
    };
    let proof: Presentation['proof'] = 'invalid';
    if (!pending) {
      proof = 'replayed';
    } else if (status?.credential.publicKey && status.credential.kind === 'phone') {
      let signature: Uint8Array;
      try {
        signature = fromB64url(a.signature);
      } catch {
        signature = new Uint8Array();
      }
      const message = simKeyMessage(
        pending.challenge,
        ctx.vehicleId,
        a.intent,
        a.explicitIntent,
        a.credentialId,
      );
      proof = verifyP256(publicKeyFromJwk(status.credential.publicKey), message, signature)
        ? 'valid'
        : 'invalid';
    }
    return ctx.present({ ...base, proof });
  }

  /** A UID-only tag in the field: no proof beyond the UID itself. */
  async presentUid(uidHex: string, intent: Intent): Promise<Decision> {
    const ctx = this.ctx();
    let uid: Uint8Array;
    try {
      uid = fromHex(uidHex);
    } catch {
      throw new AgentError('bad_arguments', 'the UID must be hex, e.g. 04A2B3C4D5E6F7');
    }
    if (uid.length !== 4 && uid.length !== 7 && uid.length !== 10) {
      throw new AgentError('bad_arguments', 'a UID is 4, 7 or 10 bytes');
    }
    const hash = uidHash(ctx.vehicleId, uid);
    const match = ctx.keyring.byUidHash(hash)[0];
    const kind = match?.credential.kind ?? 'uid';
    // A bare UID that matches a FIDO or NTAG 424 credential is a clone: the real card would prove a key.
    const proof = kind === 'uid' ? 'none' : 'cloned';
    return ctx.present({
      reader: this.id,
      kind,
      credentialId: match?.credential.id,
      subject: `uid:${hash}`,
      intent,
      explicitIntent: true,
      proof,
    });
  }
}
