import { expectedCredentialId } from '../../../src/access/credential-wire.js';
import { AgentError } from '../../../src/core/errors.js';
import type { Credential, Role } from '../../../src/core/types.js';
import { b64url } from '../../../src/crypto/encoding.js';
import { p256JwkFromRaw, uidHash } from '../../../src/crypto/keys.js';
import { parseCommand } from '../../../src/nfc/apdu.js';
import { personaliseForSite } from '../../../src/nfc/ntag424.js';
import type { CardSession } from '../../../src/nfc/tap.js';
import { tapChallenge, u2fRegister, vehicleAppParam } from '../../../src/nfc/u2f.js';
import type { SimulatedFidoU2fKey } from '../../../src/sim/cards/fido-u2f.js';
import type { SimulatedNtag424 } from '../../../src/sim/cards/ntag424.js';
import type { SimulatedCard } from '../../../src/sim/cards/types.js';

/** Shared helpers for the NFC unit tests: a card session straight onto a simulated card. */

export interface CountingSession extends CardSession {
  /** INS of every APDU sent, in order. */
  readonly sent: number[];
  /** P1 of every APDU sent. */
  readonly p1s: number[];
}

/** A session over `card` without a reader; `removeAfter` APDUs the card "leaves" (card_removed). */
export function sessionOver(
  card: SimulatedCard,
  options: { removeAfter?: number; uid?: Uint8Array } = {},
): CountingSession {
  const sent: number[] = [];
  const p1s: number[] = [];
  const kind = card.type === 'iso14443-4' ? 'iso14443-4' : card.type;
  card.reset();
  return {
    uid: options.uid ?? card.uid,
    kind,
    sent,
    p1s,
    transceive: async (apdu) => {
      if (options.removeAfter !== undefined && sent.length >= options.removeAfter) {
        throw new AgentError('card_removed', 'the card left');
      }
      const command = parseCommand(apdu);
      sent.push(command.ins);
      p1s.push(command.p1);
      return card.transceive(apdu).response;
    },
  };
}

/** Registers a simulated FIDO key for `vehicleId` and returns its credential. */
export async function enrolFido(
  card: SimulatedFidoU2fKey,
  vehicleId: string,
  role: Role,
  options: { withUid?: boolean } = {},
): Promise<Credential> {
  const result = await u2fRegister(async (apdu) => card.transceive(apdu).response, {
    appParam: vehicleAppParam(vehicleId),
    challenge: tapChallenge(),
  });
  if (!result.ok) throw result.error;
  const identity = {
    publicKey: p256JwkFromRaw(result.value.publicKey),
    keyHandle: b64url(result.value.keyHandle),
    ...(options.withUid === false ? {} : { uidHash: uidHash(vehicleId, card.uid) }),
  };
  return { id: expectedCredentialId('fido', identity), kind: 'fido', role, options: {}, ...identity };
}

/** Personalises a simulated NTAG 424 with `siteKey` and returns its credential. */
export async function enrolNtag(
  card: SimulatedNtag424,
  vehicleId: string,
  siteKey: Uint8Array,
  role: Role,
): Promise<Credential> {
  const result = await personaliseForSite(async (apdu) => card.transceive(apdu).response, siteKey, card.uid);
  if (!result.ok) throw result.error;
  const hash = uidHash(vehicleId, card.uid);
  return {
    id: expectedCredentialId('ntag424', { uidHash: hash }),
    kind: 'ntag424',
    role,
    uidHash: hash,
    options: {},
  };
}
