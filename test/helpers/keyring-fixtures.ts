import type { KeyObject } from 'node:crypto';
import { Keyring, signGrant, signRevoke } from '../../src/access/keyring.js';
import type { Credential, CredentialKind, Role } from '../../src/core/types.js';
import {
  credentialIdFor,
  generateKeyPair,
  type KeyAlgorithm,
  keyCredentialId,
  publicJwkOf,
} from '../../src/crypto/keys.js';

export const VID = 'VIN-TEST-0001';
export const NOW_S = 1_800_000_000;

export interface TestKey {
  readonly id: string;
  readonly privateKey: KeyObject;
  readonly credential: Credential;
}

export function makeKey(
  kind: 'phone' | 'signer',
  role: Role,
  extra: Partial<Credential> = {},
  alg: KeyAlgorithm = 'P-256',
): TestKey {
  const pair = generateKeyPair(alg);
  const publicKey = publicJwkOf(pair.publicKey);
  const id = keyCredentialId(kind, publicKey);
  return {
    id,
    privateKey: pair.privateKey,
    credential: { id, kind, role, publicKey, options: {}, ...extra },
  };
}

export function makeUidCredential(
  kind: Extract<CredentialKind, 'uid' | 'ntag424'>,
  uidHash: string,
  role: Role,
  extra: Partial<Credential> = {},
): Credential {
  return {
    id: credentialIdFor(kind, Buffer.from(uidHash, 'utf8')),
    kind,
    role,
    uidHash,
    options: {},
    ...extra,
  };
}

export function makeRoot(): TestKey {
  return makeKey('signer', 'owner');
}

export function newKeyring(root: TestKey, vehicleKey?: TestKey): Keyring {
  const rootKey = root.credential.publicKey;
  if (!rootKey) throw new Error('root without key');
  const vk = vehicleKey?.credential.publicKey;
  return new Keyring(vk ? { vehicleId: VID, rootKey, vehicleKey: vk } : { vehicleId: VID, rootKey });
}

export function grantBy(signer: TestKey, credential: Credential, iat = NOW_S, vid = VID): string {
  return signGrant(credential, vid, signer.privateKey, signer.id, iat);
}

export function revokeBy(signer: TestKey, credId: string, iat = NOW_S): string {
  return signRevoke(credId, VID, signer.privateKey, signer.id, iat, 'test');
}
