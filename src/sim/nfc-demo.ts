import type { KeyObject } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { expectedCredentialId } from '../access/credential-wire.js';
import { signGrant } from '../access/keyring.js';
import { AgentError } from '../core/errors.js';
import type { Credential, Role } from '../core/types.js';
import { b64url, fromHex } from '../crypto/encoding.js';
import { p256JwkFromRaw, uidHash } from '../crypto/keys.js';
import type { Transceive } from '../nfc/apdu.js';
import { personaliseForSite } from '../nfc/ntag424.js';
import { loadOrCreateSiteKey, SITE_KEY_FILE } from '../nfc/site-key.js';
import { tapChallenge, u2fRegister, vehicleAppParam } from '../nfc/u2f.js';
import { SIM_DIR, SimCardStore, simCardsPath } from './card-store.js';
import { SimulatedFidoU2fKey } from './cards/fido-u2f.js';
import { SimulatedNtag424 } from './cards/ntag424.js';
import type { PersistableCard } from './cards/state.js';
import { SimulatedUidTag } from './cards/uid-tag.js';

/**
 * Demo NFC cards for `npm start`: simulated cards in <stateDir>/sim/cards.json, some enrolled
 * (a FIDO key registered against the simulated key in-process, an NTAG 424 personalised with the
 * site key) and some not, so `vehicle-agent sim tap <card>` shows every outcome.
 */

interface DemoCard {
  readonly label: string;
  readonly make: () => PersistableCard;
  /** Enrolled with this role (a FIDO key registered, an NTAG 424 personalised). */
  readonly enrol?: Role;
}

/** The wallet. UID tags 04A2B3C4D5E6F7 and 04DEADBEEF0001 are granted by demo.ts (DEMO_TAGS). */
const DEMO_CARDS: readonly DemoCard[] = [
  { label: 'fido-owner', make: () => new SimulatedFidoU2fKey({ label: 'fido-owner' }), enrol: 'owner' },
  { label: 'fido-driver', make: () => new SimulatedFidoU2fKey({ label: 'fido-driver' }), enrol: 'driver' },
  { label: 'ntag-driver', make: () => new SimulatedNtag424({ label: 'ntag-driver' }), enrol: 'driver' },
  {
    label: 'tag-insecure',
    make: () =>
      new SimulatedUidTag({ label: 'tag-insecure', model: 'ntag213', uid: fromHex('04A2B3C4D5E6F7') }),
  },
  {
    label: 'tag-plain',
    make: () => new SimulatedUidTag({ label: 'tag-plain', model: 'ntag213', uid: fromHex('04DEADBEEF0001') }),
  },
  { label: 'magic-tag', make: () => new SimulatedUidTag({ label: 'magic-tag', model: 'ntag213' }) },
  { label: 'ntag-blank', make: () => new SimulatedNtag424({ label: 'ntag-blank' }) },
  { label: 'fido-stranger', make: () => new SimulatedFidoU2fKey({ label: 'fido-stranger' }) },
  { label: 'fido-new', make: () => new SimulatedFidoU2fKey({ label: 'fido-new' }) },
  { label: 'tag-new', make: () => new SimulatedUidTag({ label: 'tag-new', model: 'mifare-classic-1k' }) },
];

export { nfcDemoHints } from './nfc-sim-options.js';

function over(card: PersistableCard): Transceive {
  return async (apdu) => card.transceive(apdu).response;
}

/** The credential a demo card gets, registered or personalised in-process. */
async function enrolCard(
  card: PersistableCard,
  vehicleId: string,
  siteKey: Uint8Array,
): Promise<Omit<Credential, 'role' | 'options'>> {
  const hash = uidHash(vehicleId, card.uid);
  if (card instanceof SimulatedFidoU2fKey) {
    const registered = await u2fRegister(over(card), {
      appParam: vehicleAppParam(vehicleId),
      challenge: tapChallenge(),
    });
    if (!registered.ok) throw registered.error;
    const identity = {
      publicKey: p256JwkFromRaw(registered.value.publicKey),
      keyHandle: b64url(registered.value.keyHandle),
      uidHash: hash,
    };
    return { id: expectedCredentialId('fido', identity), kind: 'fido', ...identity };
  }
  if (card instanceof SimulatedNtag424) {
    const personalised = await personaliseForSite(over(card), siteKey, card.uid);
    if (!personalised.ok) throw personalised.error;
    return { id: expectedCredentialId('ntag424', { uidHash: hash }), kind: 'ntag424', uidHash: hash };
  }
  throw new AgentError('internal', 'only FIDO keys and NTAG 424 cards are enrolled by the NFC demo');
}

/**
 * Creates the demo cards (and the site key) and returns the grants for the enrolled ones, signed
 * by the owner root key; demo.ts adds them to the demo keyring.
 */
export async function seedNfcDemo(
  stateDir: string,
  vehicleId: string,
  owner: { readonly key: KeyObject; readonly id: string },
  iat: number,
): Promise<string[]> {
  await mkdir(join(stateDir, SIM_DIR), { recursive: true, mode: 0o700 });
  const siteKey = await loadOrCreateSiteKey(join(stateDir, SITE_KEY_FILE));
  const store = await SimCardStore.open(simCardsPath(stateDir));
  const ops: string[] = [];
  for (const demo of DEMO_CARDS) {
    if (store.get(demo.label)) continue;
    const card = demo.make();
    if (demo.enrol) {
      const credential: Credential = {
        ...(await enrolCard(card, vehicleId, siteKey)),
        role: demo.enrol,
        name: `demo ${demo.label}`,
        options: {},
      };
      ops.push(signGrant(credential, vehicleId, owner.key, owner.id, iat));
    }
    store.add(card);
  }
  await store.save();
  return ops;
}

/** Cards a state directory without a wallet gets at start (nothing enrolled). */
export async function ensureSimCards(store: SimCardStore): Promise<void> {
  if (store.size > 0) return;
  for (const demo of DEMO_CARDS) {
    if (demo.enrol || store.get(demo.label)) continue;
    store.add(demo.make());
  }
  await store.save();
}
