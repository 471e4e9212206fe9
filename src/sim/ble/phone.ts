import { randomBytes } from 'node:crypto';
import { p256 } from '@noble/curves/nist.js';
import { PROTOCOL_VERSION } from '../../ble/protocol/constants.js';
import {
  decodeEnrollMessage,
  type EnrollOffer,
  encodeEnrollApproval,
  encodeEnrollRequest,
  enrollApprovalSignedMessage,
  enrollRequestSignedMessage,
  isEnrollMessage,
} from '../../ble/protocol/enroll.js';
import {
  type AnswerFields,
  answerSignedMessage,
  decodeMessage,
  encodeAbort,
  encodeAnswer,
  type VehicleHello,
} from '../../ble/protocol/messages.js';
import { AgentError, isAgentError } from '../../core/errors.js';
import { type Logger, silentLogger } from '../../core/logger.js';
import type { Intent, PublicJwk } from '../../core/types.js';
import { b64url, fromB64url } from '../../crypto/encoding.js';
import { keyCredentialId, p256JwkFromRaw, rawPublicKey } from '../../crypto/keys.js';
import { PHONE_FAULTS, type PhoneFault } from '../../host/control-api.js';

/**
 * The reference key side of the vehicle-key protocol: what a phone app or a BLE key fob does,
 * and the simulated phone of sim mode and tests. It signs with @noble/curves, so it shares no
 * crypto code with the vehicle (node:crypto). Message level only: phone-peer.ts carries the
 * messages over GATT (chunking, timing, transport faults).
 */

/**
 * Fault injection. Message-level faults act here; transport faults (garbage_chunks, oversized,
 * drop_notification) act in phone-peer.ts.
 *   wrong_key          signs with a key that is not the enrolled one, under the enrolled key id
 *   bad_signature      flips one bit of an otherwise correct signature
 *   replay             sends the answer it made for an earlier hello (a fresh one the first time)
 *   wrong_vehicle      signs over another vehicle id than the hello's
 *   wrong_intent       signs one intent and sends another (what a tampering relay would do)
 *   garbage            sends a correctly framed message that is not a valid message
 *   garbage_chunks     sends random chunks that are not valid framing
 *   oversized          sends a frame longer than the maximum frame size
 *   drop_notification  loses the last notification of the answer
 *   silent             never answers
 *   ignore_pinning     answers any vehicle's hello without checking it (a careless phone)
 */
// The list lives in the control table (src/host may not import src/sim); the faults act here.
export { PHONE_FAULTS, type PhoneFault };

export interface PhoneBehaviour {
  readonly intent: Intent;
  /** False = passive proximity: the phone answers without the user doing anything. */
  readonly explicitIntent: boolean;
  /** Modelled time to sign and answer (a secure element takes tens of ms); a slow answer. */
  readonly answerDelayMs: number;
  /** Make the signature high-S (s > n/2), as WebCrypto, Secure Enclave and StrongBox often do. */
  readonly highS: boolean;
  readonly fault: PhoneFault | undefined;
  /**
   * Enrollment extension E1: answer a hello with an enroll_request instead of an answer, and
   * approve the vehicle's offer by signing its request hash (what an owner's app does when the
   * owner taps "approve").
   */
  readonly approveEnrollment: boolean;
  /** With approveEnrollment: approve only an offer naming this credential id. */
  readonly enrollmentFor: string | undefined;
}

export const DEFAULT_PHONE_BEHAVIOUR: PhoneBehaviour = {
  intent: 'unlock',
  explicitIntent: true,
  answerDelayMs: 0,
  highS: false,
  fault: undefined,
  approveEnrollment: false,
  enrollmentFor: undefined,
};

export interface PrivateP256Jwk {
  readonly kty: 'EC';
  readonly crv: 'P-256';
  readonly x: string;
  readonly y: string;
  readonly d: string;
}

export interface PinnedVehicle {
  readonly vehicleId: string;
  /** The vehicle's P-256 public key, pinned at enrollment. */
  readonly publicKey: PublicJwk;
}

/** What the owner enrolls for this key (an owner-signed grant names it). */
export interface PhoneEnrollment {
  readonly kind: 'phone';
  readonly credentialId: string;
  readonly publicKey: PublicJwk;
}

export type PhoneEvent =
  | {
      readonly type: 'answered';
      readonly vehicleId: string;
      readonly intent: Intent;
      readonly explicitIntent: boolean;
    }
  | { readonly type: 'refused'; readonly code: string; readonly vehicleId?: string }
  | { readonly type: 'result'; readonly granted: boolean; readonly code?: string }
  | {
      readonly type: 'enroll-offered';
      readonly credentialId: string;
      readonly role: string;
      readonly approved: boolean;
    }
  | { readonly type: 'aborted'; readonly code: string };

/** One message for the phone to send, after `delayMs`: its answer to a hello, or an abort. */
export interface PhoneReply {
  readonly kind: 'answer' | 'abort';
  readonly message: Uint8Array;
  readonly delayMs: number;
}

export interface PhoneKeyOptions {
  /** 32-byte P-256 secret scalar; a new one is drawn when absent. */
  readonly secretKey?: Uint8Array;
  readonly vehicles: readonly PinnedVehicle[];
  readonly behaviour?: Partial<PhoneBehaviour>;
  readonly randomBytes?: (length: number) => Uint8Array;
  readonly log?: Logger;
  readonly onEvent?: (event: PhoneEvent) => void;
}

const P256_N = p256.Point.CURVE().n;
/** Random bytes noble reduces into a secret scalar without measurable bias. */
const SEED_BYTES = p256.lengths.seed ?? 48;

function bytesToBigInt(bytes: Uint8Array): bigint {
  let value = 0n;
  for (const b of bytes) value = (value << 8n) | BigInt(b);
  return value;
}

function bigIntTo32(value: bigint): Uint8Array {
  const out = new Uint8Array(32);
  let v = value;
  for (let i = 31; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

/** The same signature with s replaced by n - s (both verify; only low-S is canonical). */
export function toHighS(signature: Uint8Array): Uint8Array {
  const s = bytesToBigInt(signature.subarray(32, 64));
  const high = s > P256_N / 2n ? s : P256_N - s;
  const out = signature.slice();
  out.set(bigIntTo32(high), 32);
  return out;
}

function defaultRandom(length: number): Uint8Array {
  return new Uint8Array(randomBytes(length));
}

/** Events kept for inspection (tests, the sim CLI); older ones are dropped. */
const MAX_EVENTS = 100;

export class PhoneKey {
  readonly publicKey: PublicJwk;
  readonly credentialId: string;
  behaviour: PhoneBehaviour;
  readonly events: PhoneEvent[] = [];
  private readonly secretKey: Uint8Array;
  private readonly pinned: Map<string, Uint8Array>;
  private readonly random: (length: number) => Uint8Array;
  private readonly log: Logger;
  private readonly onEvent: ((event: PhoneEvent) => void) | undefined;
  /** The other key used by the wrong_key fault. */
  private impostorKey: Uint8Array | undefined;
  /** The last honest answer, sent again by the replay fault. */
  private previousAnswer: Uint8Array | undefined;
  /** The hello we answered with an enroll_request: its offer must carry the same challenge. */
  private enrollHello: VehicleHello | undefined;

  constructor(options: PhoneKeyOptions) {
    this.random = options.randomBytes ?? defaultRandom;
    const secret = options.secretKey ?? p256.utils.randomSecretKey(this.random(SEED_BYTES));
    if (!p256.utils.isValidSecretKey(secret))
      throw new AgentError('key_invalid', 'phone secret key is not a valid P-256 scalar');
    this.secretKey = secret.slice();
    this.publicKey = p256JwkFromRaw(p256.getPublicKey(this.secretKey, false));
    this.credentialId = keyCredentialId('phone', this.publicKey);
    this.pinned = new Map(options.vehicles.map((v) => [v.vehicleId, rawPublicKey(v.publicKey)]));
    this.behaviour = { ...DEFAULT_PHONE_BEHAVIOUR, ...options.behaviour };
    this.log = options.log ?? silentLogger;
    this.onEvent = options.onEvent;
  }

  /** The 32-byte secret scalar, to store the key (a real phone keeps it in its secure element). */
  exportSecretKey(): Uint8Array {
    return this.secretKey.slice();
  }

  /** The key as a private JWK (what `parseKeyText` in crypto/keys.ts reads), to save it to a file. */
  privateJwk(): PrivateP256Jwk {
    return {
      ...this.publicKey,
      kty: 'EC',
      crv: 'P-256',
      y: this.publicKey.y ?? '',
      d: b64url(this.secretKey),
    };
  }

  /** Restores a key saved with privateJwk(); AgentError 'key_invalid' when it is not a P-256 private JWK. */
  static secretFromJwk(jwk: unknown): Uint8Array {
    const { kty, crv, d } = (typeof jwk === 'object' && jwk !== null ? jwk : {}) as Record<string, unknown>;
    let secret: Uint8Array | undefined;
    try {
      secret = kty === 'EC' && crv === 'P-256' && typeof d === 'string' ? fromB64url(d) : undefined;
    } catch {
      secret = undefined;
    }
    if (secret === undefined || !p256.utils.isValidSecretKey(secret)) {
      throw new AgentError('key_invalid', 'not a P-256 private JWK (kty EC, crv P-256, d)');
    }
    return secret;
  }

  enrollment(): PhoneEnrollment {
    return { kind: 'phone', credentialId: this.credentialId, publicKey: this.publicKey };
  }

  setBehaviour(change: Partial<PhoneBehaviour>): void {
    this.behaviour = { ...this.behaviour, ...change };
  }

  pin(vehicle: PinnedVehicle): void {
    this.pinned.set(vehicle.vehicleId, rawPublicKey(vehicle.publicKey));
  }

  /**
   * Handles one complete message from the vehicle. Returns what to send back, if anything:
   * an answer to a hello from a pinned vehicle, an abort for anything it refuses; nothing for
   * results and aborts (recorded as events).
   */
  receive(message: Uint8Array): PhoneReply | undefined {
    if (isEnrollMessage(message)) return this.onEnrollMessage(message);
    let decoded: ReturnType<typeof decodeMessage>;
    try {
      decoded = decodeMessage(message);
    } catch (err) {
      const code = isAgentError(err) && err.code === 'unsupported' ? 'unsupported' : 'malformed';
      return this.refuse(code);
    }
    switch (decoded.type) {
      case 'hello':
        return this.onHello(decoded);
      case 'result':
        this.emit(
          decoded.granted
            ? { type: 'result', granted: true }
            : { type: 'result', granted: false, code: decoded.code },
        );
        return undefined;
      case 'abort':
        this.emit({ type: 'aborted', code: decoded.code });
        return undefined;
      default:
        return this.refuse('malformed');
    }
  }

  private onHello(hello: VehicleHello): PhoneReply | undefined {
    const behaviour = this.behaviour;
    if (behaviour.fault !== 'ignore_pinning') {
      const vehicleKey = this.pinned.get(hello.vehicleId);
      // Answer only our own vehicles: anyone can send a hello, and every answer is a signature.
      if (vehicleKey === undefined) return this.refuse('wrong_vehicle', hello.vehicleId);
      if (!p256.verify(hello.signature, hello.signedMessage, vehicleKey, { lowS: false })) {
        return this.refuse('bad_proof', hello.vehicleId);
      }
    }
    if (behaviour.fault === 'silent') return undefined;
    const delayMs = behaviour.answerDelayMs;
    if (behaviour.approveEnrollment) {
      this.enrollHello = hello;
      // Signed by this key: the vehicle reveals its offer only to a proven owner key.
      const fields = { vehicleId: hello.vehicleId, challenge: hello.challenge, keyId: this.credentialId };
      let signature: Uint8Array = p256.sign(enrollRequestSignedMessage(fields), this.signingKey());
      if (behaviour.highS) signature = toHighS(signature);
      if (behaviour.fault === 'bad_signature') signature[20] = (signature[20] ?? 0) ^ 0x01;
      return { kind: 'answer', message: encodeEnrollRequest(fields, signature), delayMs };
    }
    if (behaviour.fault === 'garbage') {
      // Our version and an unassigned type, then noise: never a valid message by accident.
      const noise = this.random(1 + ((this.random(1)[0] ?? 0) % 200));
      return { kind: 'answer', message: Uint8Array.of(PROTOCOL_VERSION, 0xee, ...noise), delayMs };
    }
    if (behaviour.fault === 'replay' && this.previousAnswer !== undefined) {
      return { kind: 'answer', message: this.previousAnswer, delayMs };
    }
    const fields: AnswerFields = {
      intent: behaviour.intent,
      explicitIntent: behaviour.explicitIntent,
      vehicleId: behaviour.fault === 'wrong_vehicle' ? otherVehicleId(hello.vehicleId) : hello.vehicleId,
      challenge: hello.challenge,
      keyId: this.credentialId,
    };
    let signature: Uint8Array = p256.sign(answerSignedMessage(fields), this.signingKey());
    if (behaviour.highS) signature = toHighS(signature);
    if (behaviour.fault === 'bad_signature') signature[20] = (signature[20] ?? 0) ^ 0x01;
    const sent: AnswerFields =
      behaviour.fault === 'wrong_intent'
        ? { ...fields, intent: fields.intent === 'lock' ? 'unlock' : 'lock' }
        : fields;
    const message = encodeAnswer(sent, signature);
    if (behaviour.fault === undefined || behaviour.fault === 'replay') this.previousAnswer = message;
    this.emit({
      type: 'answered',
      vehicleId: hello.vehicleId,
      intent: sent.intent,
      explicitIntent: sent.explicitIntent,
    });
    return { kind: 'answer', message, delayMs };
  }

  /** E1: the vehicle's offer (approve it when asked to) or anything else of E1 (refused). */
  private onEnrollMessage(message: Uint8Array): PhoneReply | undefined {
    let offer: EnrollOffer;
    try {
      const decoded = decodeEnrollMessage(message);
      if (decoded.type !== 'enroll_offer') return this.refuse('malformed');
      offer = decoded;
    } catch (err) {
      return this.refuse(isAgentError(err) && err.code === 'unsupported' ? 'unsupported' : 'malformed');
    }
    const hello = this.enrollHello;
    this.enrollHello = undefined;
    const behaviour = this.behaviour;
    const vehicleKey = this.pinned.get(offer.vehicleId);
    // The offer must come from the vehicle whose hello we answered, in the same exchange.
    if (hello === undefined || hello.vehicleId !== offer.vehicleId || vehicleKey === undefined) {
      return this.refuse('wrong_vehicle', offer.vehicleId);
    }
    if (!sameBytes(hello.challenge, offer.challenge)) return this.refuse('replay', offer.vehicleId);
    if (!p256.verify(offer.signature, offer.signedMessage, vehicleKey, { lowS: false })) {
      return this.refuse('bad_proof', offer.vehicleId);
    }
    const approved =
      behaviour.approveEnrollment &&
      (behaviour.enrollmentFor === undefined || behaviour.enrollmentFor === offer.credentialId);
    this.emit({ type: 'enroll-offered', credentialId: offer.credentialId, role: offer.role, approved });
    if (!approved) return this.refuse('unauthorized', offer.vehicleId);
    if (behaviour.fault === 'silent') return undefined;
    const fields = {
      vehicleId: offer.vehicleId,
      challenge: offer.challenge,
      requestHash: offer.requestHash,
      keyId: this.credentialId,
    };
    let signature: Uint8Array = p256.sign(enrollApprovalSignedMessage(fields), this.signingKey());
    if (behaviour.highS) signature = toHighS(signature);
    if (behaviour.fault === 'bad_signature') signature[20] = (signature[20] ?? 0) ^ 0x01;
    return { kind: 'answer', message: encodeEnrollApproval(fields, signature), delayMs: 0 };
  }

  private signingKey(): Uint8Array {
    if (this.behaviour.fault !== 'wrong_key') return this.secretKey;
    this.impostorKey ??= p256.utils.randomSecretKey(this.random(SEED_BYTES));
    return this.impostorKey;
  }

  private refuse(code: string, vehicleId?: string): PhoneReply {
    this.log.debug({ code, vehicleId }, 'phone refused a vehicle message');
    this.emit(vehicleId === undefined ? { type: 'refused', code } : { type: 'refused', code, vehicleId });
    return { kind: 'abort', message: encodeAbort(code), delayMs: 0 };
  }

  private emit(event: PhoneEvent): void {
    this.events.push(event);
    if (this.events.length > MAX_EVENTS) this.events.shift();
    this.onEvent?.(event);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

function otherVehicleId(vehicleId: string): string {
  return vehicleId === 'another-vehicle' ? 'yet-another-vehicle' : 'another-vehicle';
}
