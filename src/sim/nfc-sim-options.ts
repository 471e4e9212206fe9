/**
 * Names and hints of the simulated NFC side, without loading it (no serialport, no noble): the
 * composition root shows the hints before the emulator is up. The fault names and a tap's options
 * live in the control table (src/host/control-api.ts), which parses `sim.card.tap`.
 */

import type { EmulatorFaultName, SimTapArgs } from '../host/control-api.js';

export type { EmulatorFaultName };
export type SimTapOptions = SimTapArgs;

/**
 * What to try in the demo, for the agent's "try:" log and the demo README. Failed proofs count
 * against the credential they name (policy.maxDenials within policy.windowMs lock it out), so the
 * failures are spread over the owner's key, the driver's and the NTAG card, at most two each:
 * followed in order, twice over, the list shows every outcome and locks nothing out.
 */
const DEMO_TAPS: readonly { readonly args: string; readonly note: string }[] = [
  { args: 'fido-owner', note: "the owner's FIDO security key: granted (each tap toggles the lock)" },
  { args: 'fido-driver', note: "a driver's FIDO key: granted" },
  { args: 'ntag-driver', note: 'an NTAG 424 DNA card personalised with the site key: granted' },
  { args: 'tag-insecure', note: 'a UID-only tag enrolled as insecureUid: granted' },
  { args: 'tag-plain', note: 'a UID-only tag not marked insecureUid: insecure_uid_disabled' },
  {
    args: 'fido-owner --counter 0',
    note: 'an extracted copy of the owner key with an old counter: clone_suspected',
  },
  { args: 'magic-tag --clone-of fido-driver', note: "a tag showing the driver key's UID: clone_suspected" },
  {
    args: 'ntag-blank --clone-of ntag-driver',
    note: 'an NTAG 424 with the enrolled UID but not its key: bad_proof',
  },
  { args: 'ntag-blank', note: 'a factory NTAG 424 nobody enrolled: unknown_credential' },
  { args: 'fido-stranger', note: 'a FIDO key never enrolled: unknown_credential' },
  { args: 'fido-driver --slow 800', note: 'a card answering late (as through a relay): timeout' },
  { args: 'fido-owner --remove-after 20', note: 'the card leaves during the exchange: card_removed' },
  {
    args: 'fido-new',
    note: 'after `vehicle-agent enroll card --kind fido --role driver --owner-fido` and a tap of fido-owner: enrolled',
  },
];

/** `sim tap` lines for the agent's "try:" log and the demo README. */
export function nfcDemoHints(): string[] {
  return DEMO_TAPS.map((t) => `vehicle-agent sim tap ${t.args}   (${t.note})`);
}
