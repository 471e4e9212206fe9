import type { PublicJwk } from '../../core/types.js';
import { b64url, toHex } from '../../crypto/encoding.js';
import { publicKeyFromJwk, rawPublicKey } from '../../crypto/keys.js';
import { loadIdentity, type VehicleIdentity } from '../../store/provision.js';
import { COMMON_OPTIONS, loadFor, out, parse } from '../args.js';

export const IDENTITY_HELP = `vehicle-agent identity [--json] [--state-dir DIR] [--config FILE]

Prints what a phone or key fob pins to trust this vehicle (docs/ble-protocol.md §7): the vehicle
id and the vehicle's P-256 public key, as a JWK, as the raw uncompressed point (65 bytes,
04 ‖ X ‖ Y, hex) and as SPKI PEM, plus its fingerprint. The fingerprint is the vehicle key's id,
the one the agent uses as JWS kid and in the audit log: "signer:" followed by base64url, without
padding (22 characters), of the first 16 bytes of
SHA-256("vehicle-agent/credential/v1/signer/" ‖ raw point). Compare it on the phone and on the
vehicle before trusting a pin made over a channel you do not trust.
The "pin" line (JSON) is what the reference phone takes, e.g. as a QR code.
Reads the state directory only (the agent may be running or not); writes nothing.`;

/** The vehicle's public identity, in every form a phone or a fob may want it. */
export interface IdentityView {
  readonly vehicleId: string;
  readonly publicKey: PublicJwk;
  readonly publicKeyRawHex: string;
  readonly publicKeyRawB64url: string;
  readonly publicKeyPem: string;
  /** The vehicle key id (keyCredentialId('signer', …)). */
  readonly fingerprint: string;
  readonly ownerRootId: string;
  /** What a phone pins: the reference phone's PinnedVehicle. */
  readonly pin: { readonly vehicleId: string; readonly publicKey: PublicJwk };
}

export function identityView(identity: VehicleIdentity): IdentityView {
  const raw = rawPublicKey(identity.vehicleKey);
  return {
    vehicleId: identity.vehicleId,
    publicKey: identity.vehicleKey,
    publicKeyRawHex: toHex(raw),
    publicKeyRawB64url: b64url(raw),
    publicKeyPem: publicKeyFromJwk(identity.vehicleKey).export({ format: 'pem', type: 'spki' }).toString(),
    fingerprint: identity.vehicleKeyId,
    ownerRootId: identity.rootId,
    pin: { vehicleId: identity.vehicleId, publicKey: identity.vehicleKey },
  };
}

export function formatIdentity(v: IdentityView): string {
  return [
    `vehicle id:   ${v.vehicleId}`,
    `fingerprint:  ${v.fingerprint}   (the vehicle key id; vehicle-agent identity --help says how it is made)`,
    `owner root:   ${v.ownerRootId}`,
    'public key (P-256), what a phone pins with the vehicle id:',
    `  JWK:        ${JSON.stringify(v.publicKey)}`,
    `  raw (hex):  ${v.publicKeyRawHex}`,
    `  PEM:`,
    ...v.publicKeyPem
      .trimEnd()
      .split('\n')
      .map((line) => `    ${line}`),
    `pin (JSON for the phone app): ${JSON.stringify(v.pin)}`,
  ].join('\n');
}

export async function identity(argv: readonly string[]): Promise<number> {
  const { values } = parse(argv, COMMON_OPTIONS, false);
  const loaded = loadFor(values);
  // repair = false: a read-only look, never a write behind a running agent's back.
  const view = identityView(await loadIdentity(loaded.stateDir, [], false));
  out(values.json ? JSON.stringify(view) : formatIdentity(view));
  return 0;
}
