import {
  createHash,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  sign,
  verify,
} from 'node:crypto';
import type { PublicJwk } from '../../src/core/types.js';
import { keyCredentialId } from '../../src/crypto/keys.js';
import {
  answerSignedBytes,
  ascii,
  type Challenge,
  decodeAnswer,
  decodeEnroll,
  decodePasskeyAnswer,
  ENROLL_KIND,
  encodeChallenge,
  encodeEnrollBody,
  encodeResult,
  enrollSignedBytes,
  type Outcome,
  passkeyChallengePreimage,
  resultSignedBytes,
  TYPE,
} from '../../web/phone-key/codec.js';
import type { SimulatedCentral } from './phone-key-central.js';

/**
 * A reference vehicle for the phone-key page's browser tests, until the agent's own mode P
 * service (p14proto) and the stand-in's simulated central (p14periph) are merged: the spec's
 * checks (docs/ble-protocol.md "Mode P") with the page's codec and a node:crypto vehicle key. It
 * keeps a keyring (active, revoked, expired), enrollment requests the test approves, one
 * challenge per connection with its deadline, and the last result per connection.
 */
export type KeyStatus = 'active' | 'revoked' | 'expired';
interface Entry {
  readonly kind: 'webkey' | 'passkey';
  readonly name: string;
  readonly key: KeyObject;
  readonly rpId: string;
  status: KeyStatus;
  counter: number;
}
interface Request {
  readonly name: string;
  readonly id: string;
  readonly entry: Entry;
  state: 'pending' | 'approved' | 'refused';
}
interface Connection {
  challengeMsg: Uint8Array | undefined;
  challenge: Challenge | undefined;
  result: Uint8Array;
}

export interface VehicleAction {
  readonly intent: number;
  readonly id: string;
  readonly uv?: boolean;
}

function b64url(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64url');
}
function sha256(bytes: Uint8Array | string): Buffer {
  return createHash('sha256').update(bytes).digest();
}

class Denied extends Error {
  constructor(readonly code: string) {
    super(code);
  }
}

export class ReferenceVehicle implements SimulatedCentral {
  readonly vehicleKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  readonly vehicleSpki = new Uint8Array(this.vehicleKey.publicKey.export({ format: 'der', type: 'spki' }));
  readonly keyring = new Map<string, Entry>();
  readonly requests: Request[] = [];
  /** What the vehicle did (granted answers), in order. */
  readonly actions: VehicleAction[] = [];
  private readonly connections = new Map<string, Connection>();
  private next = 0;

  constructor(
    readonly vehicleId: string,
    readonly origins: readonly string[],
    readonly windowMs = 30_000,
  ) {}

  approvePending(): number {
    let n = 0;
    for (const r of this.requests) {
      if (r.state !== 'pending') continue;
      r.state = 'approved';
      this.keyring.set(r.id, r.entry);
      n++;
    }
    return n;
  }

  setStatus(id: string, status: KeyStatus): void {
    const e = this.keyring.get(id);
    if (!e) throw new Error(`no ${id} in the keyring`);
    e.status = status;
  }

  async connect(): Promise<string> {
    const device = `/org/bluez/hci0/dev_REF_${++this.next}`;
    this.connections.set(device, {
      challengeMsg: undefined,
      challenge: undefined,
      result: this.denied('no_challenge'),
    });
    return device;
  }

  async disconnect(device: string): Promise<void> {
    this.connections.delete(device);
  }

  async read(device: string, characteristic: 'challenge' | 'result'): Promise<Uint8Array> {
    const c = this.conn(device);
    if (characteristic === 'result') return c.result;
    const challenge = {
      vehicleId: this.vehicleId,
      nonce: new Uint8Array(randomBytes(32)),
      issuedAtMs: Date.now(),
      windowMs: this.windowMs,
    };
    c.challenge = challenge;
    c.challengeMsg = encodeChallenge(challenge);
    return c.challengeMsg;
  }

  async write(device: string, _characteristic: 'answer', bytes: Uint8Array): Promise<void> {
    const c = this.conn(device);
    const { challenge, challengeMsg } = c;
    // One answer per challenge: a second one (a replay) finds none.
    c.challenge = undefined;
    c.challengeMsg = undefined;
    try {
      if (!challenge || !challengeMsg) throw new Denied('no_challenge');
      if (Date.now() > challenge.issuedAtMs + challenge.windowMs) throw new Denied('challenge_expired');
      c.result = this.answer(bytes, challenge, challengeMsg);
    } catch (err) {
      if (!(err instanceof Denied)) {
        c.result = this.denied('malformed');
        throw new Error(`malformed: ${String(err)}`);
      }
      c.result = this.denied(err.code);
    }
  }

  private conn(device: string): Connection {
    const c = this.connections.get(device);
    if (!c) throw new Error(`${device} is not connected`);
    return c;
  }

  private denied(code: string, outcome: Outcome = 'denied'): Uint8Array {
    return encodeResult({ outcome, code, sig: new Uint8Array(0), vehicleSpki: new Uint8Array(0) });
  }

  private granted(nonce: Uint8Array, id: Uint8Array): Uint8Array {
    const sig = sign('sha256', resultSignedBytes(nonce, 'granted', 'granted', id), {
      key: this.vehicleKey.privateKey,
      dsaEncoding: 'ieee-p1363',
    });
    return encodeResult({
      outcome: 'granted',
      code: 'granted',
      sig: new Uint8Array(sig),
      vehicleSpki: this.vehicleSpki,
    });
  }

  private usable(entry: Entry | undefined): Entry {
    if (!entry) throw new Denied('unknown_credential');
    if (entry.status !== 'active') throw new Denied(entry.status);
    return entry;
  }

  private answer(bytes: Uint8Array, challenge: Challenge, challengeMsg: Uint8Array): Uint8Array {
    const type = bytes[1];
    if (type === TYPE.answer) {
      const a = decodeAnswer(bytes);
      if (!Buffer.from(a.nonce).equals(challenge.nonce)) throw new Denied('replay');
      const entry = this.usable(this.keyring.get(a.keyId));
      const signed = answerSignedBytes(challengeMsg, a.intent, a.flags, a.keyId);
      if (!verify('sha256', signed, { key: entry.key, dsaEncoding: 'ieee-p1363' }, a.sig))
        throw new Denied('bad_proof');
      this.actions.push({ intent: a.intent, id: a.keyId });
      return this.granted(challenge.nonce, ascii(a.keyId));
    }
    if (type === TYPE.passkey) {
      const p = decodePasskeyAnswer(bytes);
      if (!Buffer.from(p.nonce).equals(challenge.nonce)) throw new Denied('replay');
      const id = `passkey:${b64url(p.credId)}`;
      const entry = this.usable(this.keyring.get(id));
      const client = JSON.parse(Buffer.from(p.clientDataJSON).toString('utf8')) as Record<string, unknown>;
      const expected = b64url(sha256(passkeyChallengePreimage(challengeMsg, p.intent, p.flags)));
      if (client.type !== 'webauthn.get' || client.challenge !== expected) throw new Denied('bad_proof');
      if (!this.origins.includes(String(client.origin))) throw new Denied('origin_not_allowed');
      const auth = Buffer.from(p.authenticatorData);
      if (auth.length < 37 || !auth.subarray(0, 32).equals(sha256(entry.rpId))) throw new Denied('bad_proof');
      const flags = auth[32] as number;
      if ((flags & 0x01) === 0) throw new Denied('bad_proof');
      if ((flags & 0x04) === 0) throw new Denied('user_verification_required');
      const signed = Buffer.concat([auth, sha256(p.clientDataJSON)]);
      if (!verify('sha256', signed, { key: entry.key, dsaEncoding: 'der' }, p.sig))
        throw new Denied('bad_proof');
      const counter = auth.readUInt32BE(33);
      if (counter !== 0 && counter <= entry.counter) throw new Denied('counter_replay');
      entry.counter = counter;
      this.actions.push({ intent: p.intent, id, uv: true });
      return this.granted(challenge.nonce, p.credId);
    }
    if (type === TYPE.enroll) {
      const e = decodeEnroll(bytes);
      if (!Buffer.from(e.nonce).equals(challenge.nonce)) throw new Denied('replay');
      const key = createPublicKey({ key: Buffer.from(e.spki), format: 'der', type: 'spki' });
      const webkey = e.kind === ENROLL_KIND.webkey;
      if (webkey) {
        const body = encodeEnrollBody(e);
        if (
          !verify('sha256', enrollSignedBytes(challengeMsg, body), { key, dsaEncoding: 'ieee-p1363' }, e.sig)
        ) {
          throw new Denied('bad_proof');
        }
      } else if (e.kind !== ENROLL_KIND.passkey || e.credId.length === 0 || e.rpId === '') {
        throw new Denied('malformed');
      }
      const id = webkey ? phoneKeyId(key) : `passkey:${b64url(e.credId)}`;
      let request = this.requests.find((r) => r.id === id);
      if (!request) {
        const entry: Entry = {
          kind: webkey ? 'webkey' : 'passkey',
          name: e.name,
          key,
          rpId: e.rpId,
          status: 'active',
          counter: 0,
        };
        request = { name: e.name, id, entry, state: 'pending' };
        this.requests.push(request);
      }
      if (request.state === 'pending') return this.denied('enrollment_pending', 'pending');
      if (request.state === 'refused') throw new Denied('enrollment_closed');
      return this.granted(challenge.nonce, webkey ? ascii(id) : e.credId);
    }
    throw new Error(`unknown message type ${type}`);
  }
}

/** The agent's own credential id of a phone key (src/crypto/keys.ts), from a node:crypto public key. */
export function phoneKeyId(key: KeyObject): string {
  return keyCredentialId('phone', key.export({ format: 'jwk' }) as PublicJwk);
}
