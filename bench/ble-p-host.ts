import { createHash, createPrivateKey, type KeyObject, sign } from 'node:crypto';
import {
  answerSignedBytes,
  decodeChallenge,
  decodeResult,
  encodeAnswer,
  encodePasskey,
  passkeyChallengePreimage,
} from '../src/ble/protocol/mode-p.js';
import {
  ANSWER_CHAR_UUID,
  CHALLENGE_CHAR_UUID,
  RESULT_CHAR_UUID,
} from '../src/ble/protocol/peripheral-constants.js';
import { silentLogger } from '../src/core/logger.js';
import { b64url, concatBytes } from '../src/crypto/encoding.js';
import { startBluezStandIn } from '../src/sim/bluez/index.js';
import type { BluezStandIn, StandInCentral } from '../src/sim/bluez/types.js';

/**
 * Forked by bench/ble-peripheral.ts: the BlueZ stand-in (bluetoothd) and a reference phone in a
 * process of their own, so the agent's process does only the agent's work. The phone plays the
 * phone-key page of mode P as a central: it connects, subscribes to the result, reads a challenge,
 * signs an answer (a web key as WebCrypto signs, P1363; or a passkey assertion as an authenticator
 * gives it, DER) and writes it. Times are process.hrtime (CLOCK_MONOTONIC, shared by both
 * processes), in ns as strings.
 */

export type PhoneKeyKind = 'webkey' | 'passkey';

export interface PhoneCredentials {
  /** The web key's private key (PKCS#8 DER, base64url) and its phone credential id. */
  readonly webKey: { readonly pkcs8: string; readonly keyId: string };
  /** The passkey's private key (PKCS#8 DER, base64url), WebAuthn credential id (base64url), rpId and origin. */
  readonly passkey: {
    readonly pkcs8: string;
    readonly credentialId: string;
    readonly rpId: string;
    readonly origin: string;
  };
}

export type PHostRequest =
  | { readonly type: 'start'; readonly busAddress: string; readonly credentials: PhoneCredentials }
  | { readonly type: 'tap'; readonly id: number; readonly kind: PhoneKeyKind; readonly mtu: number }
  | { readonly type: 'stop' };

export interface TapReport {
  readonly type: 'tapped';
  readonly id: number;
  /** Just before the phone's challenge read went to the stand-in. */
  readonly readAt: string;
  /** Just before the phone's answer write went to the stand-in. */
  readonly writeAt: string;
  readonly challengeBytes: number;
  readonly answerBytes: number;
  /** The phone's own compute: decoding the challenge and signing the answer. */
  readonly phoneMs: number;
  /** The result notified after the decision: outcome and code. */
  readonly outcome: string;
  readonly code: string;
  /** Whether the granted result carried the vehicle's signature. */
  readonly signed: boolean;
}

export type PHostReply =
  | { readonly type: 'ready' }
  | TapReport
  | { readonly type: 'error'; readonly message: string };

let standIn: BluezStandIn | undefined;
let keys: { webKey: KeyObject; passkey: KeyObject; credentials: PhoneCredentials } | undefined;

function send(reply: PHostReply): void {
  process.send?.(reply);
}

const sha256 = (bytes: Uint8Array): Uint8Array => new Uint8Array(createHash('sha256').update(bytes).digest());
const privateKey = (pkcs8: string): KeyObject =>
  createPrivateKey({ key: Buffer.from(pkcs8, 'base64url'), format: 'der', type: 'pkcs8' });

/** The answer a phone writes to `challenge` for an unlock with a user gesture. */
function answerFor(kind: PhoneKeyKind, challenge: Uint8Array): Uint8Array {
  if (keys === undefined) throw new Error('not started');
  const { nonce } = decodeChallenge(challenge);
  const fields = { intent: 'unlock', explicitIntent: true } as const;
  if (kind === 'webkey') {
    const { keyId } = keys.credentials.webKey;
    const signed = answerSignedBytes(challenge, { ...fields, keyId });
    const signature = new Uint8Array(sign('sha256', signed, { key: keys.webKey, dsaEncoding: 'ieee-p1363' }));
    return encodeAnswer({ ...fields, keyId, nonce, signature });
  }
  const { credentialId, rpId, origin } = keys.credentials.passkey;
  // What navigator.credentials.get returns for a synced passkey (counter 0), user verified (UP|UV).
  const authenticatorData = concatBytes(
    sha256(new TextEncoder().encode(rpId)),
    Uint8Array.of(0x05, 0, 0, 0, 0),
  );
  const clientDataJSON = new TextEncoder().encode(
    JSON.stringify({
      type: 'webauthn.get',
      challenge: b64url(sha256(passkeyChallengePreimage(challenge, fields))),
      origin,
      crossOrigin: false,
    }),
  );
  const signature = new Uint8Array(
    sign('sha256', concatBytes(authenticatorData, sha256(clientDataJSON)), {
      key: keys.passkey,
      dsaEncoding: 'der',
    }),
  );
  return encodePasskey({
    ...fields,
    credentialId: new Uint8Array(Buffer.from(credentialId, 'base64url')),
    nonce,
    authenticatorData,
    clientDataJSON,
    signature,
  });
}

/** One unlock as a phone does it: connect, subscribe, read the challenge, sign, write, await the result. */
async function tap(host: BluezStandIn, request: Extract<PHostRequest, { type: 'tap' }>): Promise<void> {
  const central: StandInCentral = host.connectCentral({ mtu: request.mtu });
  try {
    const notified = new Promise<Uint8Array>((resolve) => {
      const off = central.onNotification((bytes) => {
        // The first notification is the `pending` the vehicle sets when it takes the answer.
        if (decodeResult(bytes).outcome === 'pending') return;
        off();
        resolve(bytes);
      });
    });
    await central.subscribe(RESULT_CHAR_UUID);
    const readAt = process.hrtime.bigint();
    const challenge = await central.read(CHALLENGE_CHAR_UUID);
    const t0 = performance.now();
    const answer = answerFor(request.kind, challenge);
    const phoneMs = performance.now() - t0;
    const writeAt = process.hrtime.bigint();
    await central.write(ANSWER_CHAR_UUID, answer);
    const result = decodeResult(await notified);
    send({
      type: 'tapped',
      id: request.id,
      readAt: readAt.toString(),
      writeAt: writeAt.toString(),
      challengeBytes: challenge.length,
      answerBytes: answer.length,
      phoneMs,
      outcome: result.outcome,
      code: result.code,
      signed: result.signature.length > 0,
    });
  } finally {
    central.disconnect();
  }
}

process.on('message', (raw: unknown) => {
  const request = raw as PHostRequest;
  void (async () => {
    try {
      switch (request.type) {
        case 'start':
          keys = {
            webKey: privateKey(request.credentials.webKey.pkcs8),
            passkey: privateKey(request.credentials.passkey.pkcs8),
            credentials: request.credentials,
          };
          standIn = await startBluezStandIn({ busAddress: request.busAddress, logger: silentLogger });
          send({ type: 'ready' });
          break;
        case 'tap':
          if (standIn === undefined) throw new Error('not started');
          await tap(standIn, request);
          break;
        case 'stop':
          await standIn?.stop();
          process.disconnect?.();
          break;
      }
    } catch (err) {
      send({ type: 'error', message: err instanceof Error ? err.message : String(err) });
    }
  })();
});
