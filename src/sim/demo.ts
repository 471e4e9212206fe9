import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Keyring, signGrant, signRevoke } from '../access/keyring.js';
import type { Credential } from '../core/types.js';
import { fromHex } from '../crypto/encoding.js';
import {
  credentialIdFor,
  type EncodedKeyPair,
  encodeKeyPair,
  generateKeyPair,
  keyCredentialId,
  parseKeyText,
  publicJwkOf,
  uidHash,
} from '../crypto/keys.js';
import { KeyringStore } from '../store/keyring-store.js';
import { writeNewFile } from '../store/new-file.js';
import { STATE_FILES, type VehicleIdentity } from '../store/provision.js';

/**
 * A demo vehicle for `npm start`: keys in <stateDir>/demo (0600) and a keyring that shows every
 * outcome. `vehicle-agent sim present <name>` plays the key named here.
 */
export interface DemoKey {
  readonly name: string;
  readonly role: Credential['role'];
  readonly note: string;
  readonly enrolled: boolean;
  readonly window?: 'current' | 'past' | 'future';
  readonly revoked?: boolean;
  readonly passive?: boolean;
}

export const DEMO_KEYS: readonly DemoKey[] = [
  { name: 'driver', role: 'driver', note: 'a driver phone key: granted', enrolled: true },
  {
    name: 'owner-phone',
    role: 'owner',
    note: "the owner's phone key, which also approves a pending enrollment (phone approach owner-phone --approve-enrollment)",
    enrolled: true,
  },
  {
    name: 'passive',
    role: 'driver',
    note: 'a driver phone key enrolled for passive (hands-free) unlock',
    enrolled: true,
    passive: true,
  },
  {
    name: 'guest',
    role: 'guest',
    note: 'a guest phone key valid for 7 days from init',
    enrolled: true,
    window: 'current',
  },
  {
    name: 'expired-guest',
    role: 'guest',
    note: 'a guest whose window has passed: expired',
    enrolled: true,
    window: 'past',
  },
  {
    name: 'future-guest',
    role: 'guest',
    note: 'a guest whose window has not started: not_yet_valid',
    enrolled: true,
    window: 'future',
  },
  { name: 'revoked', role: 'driver', note: 'a revoked phone key: revoked', enrolled: true, revoked: true },
  {
    name: 'stranger',
    role: 'driver',
    note: 'a phone key never enrolled: unknown_credential',
    enrolled: false,
  },
];

export const DEMO_TAGS = [
  { uid: '04A2B3C4D5E6F7', insecure: true, note: 'a UID-only tag marked insecureUid: granted' },
  {
    uid: '04DEADBEEF0001',
    insecure: false,
    note: 'a UID-only tag not marked insecure: insecure_uid_disabled',
  },
] as const;

const DAY = 86_400_000;

function windowFor(kind: DemoKey['window'], now: number): Pick<Credential, 'notBefore' | 'notAfter'> {
  switch (kind) {
    case 'current':
      return { notBefore: now - 60_000, notAfter: now + 7 * DAY };
    case 'past':
      return { notBefore: now - 14 * DAY, notAfter: now - 7 * DAY };
    case 'future':
      return { notBefore: now + 7 * DAY, notAfter: now + 14 * DAY };
    default:
      return {};
  }
}

/** Writes demo keys and signs their grants with the demo owner key; returns the keyring ops. */
export async function seedDemo(
  stateDir: string,
  identity: VehicleIdentity,
  owner: EncodedKeyPair,
  now = Date.now(),
): Promise<string[]> {
  const demoDir = join(stateDir, STATE_FILES.demo);
  await mkdir(demoDir, { recursive: true, mode: 0o700 });
  await writeNewFile(join(demoDir, 'owner.pem'), owner.privatePem, 0o600);
  const ownerKey = parseKeyText(owner.privatePem);
  const rootId = identity.rootId;
  const iat = Math.floor(now / 1000);
  const ops: string[] = [];
  const lines = ['Demo keys for vehicle-agent (simulated hardware). Try:', ''];
  for (const k of DEMO_KEYS) {
    const pair = generateKeyPair('P-256');
    await writeNewFile(join(demoDir, `${k.name}.pem`), encodeKeyPair(pair).privatePem, 0o600);
    const publicKey = publicJwkOf(pair.publicKey);
    const credential: Credential = {
      id: keyCredentialId('phone', publicKey),
      kind: 'phone',
      role: k.role,
      name: `demo ${k.name}`,
      publicKey,
      options: k.passive ? { passive: true } : {},
      ...windowFor(k.window, now),
    };
    if (k.enrolled) ops.push(signGrant(credential, identity.vehicleId, ownerKey, rootId, iat));
    if (k.revoked) ops.push(signRevoke(credential.id, identity.vehicleId, ownerKey, rootId, iat, 'demo'));
    lines.push(`  vehicle-agent sim present ${k.name.padEnd(14)} # ${k.note}`);
  }
  for (const t of DEMO_TAGS) {
    const hash = uidHash(identity.vehicleId, fromHex(t.uid));
    const credential: Credential = {
      id: credentialIdFor('uid', Buffer.from(hash, 'utf8')),
      kind: 'uid',
      role: 'driver',
      name: `demo tag ${t.uid}`,
      uidHash: hash,
      options: t.insecure ? { insecureUid: true } : {},
    };
    ops.push(signGrant(credential, identity.vehicleId, ownerKey, rootId, iat));
    lines.push(`  vehicle-agent sim present --uid ${t.uid}  # ${t.note}`);
  }
  // NFC cards (src/sim/nfc-demo.ts): loaded here only, so the plain demo stays light.
  const { seedNfcDemo, nfcDemoHints } = await import('./nfc-demo.js');
  ops.push(...(await seedNfcDemo(stateDir, identity.vehicleId, { key: ownerKey, id: rootId }, iat)));
  for (const hint of nfcDemoHints()) lines.push(`  ${hint}`);
  lines.push(
    '',
    'owner.pem is the owner root key: it signs grants and revokes (vehicle-agent keys ... --key demo/owner.pem).',
  );
  await writeNewFile(join(demoDir, 'README.txt'), `${lines.join('\n')}\n`, 0o600);
  // Verify every op through a real keyring before writing the snapshot.
  const keyring = new Keyring({
    vehicleId: identity.vehicleId,
    rootKey: identity.rootKey,
    vehicleKey: identity.vehicleKey,
  });
  const result = keyring.merge(ops);
  if (result.rejected.length > 0)
    throw new Error(`demo keyring rejected ops: ${JSON.stringify(result.rejected)}`);
  await KeyringStore.writeSnapshot(stateDir, keyring);
  return ops;
}

export function demoHints(): string[] {
  return [
    ...DEMO_KEYS.map((k) => `vehicle-agent sim present ${k.name}   (${k.note})`),
    ...DEMO_TAGS.map((t) => `vehicle-agent sim present --uid ${t.uid}   (${t.note})`),
  ];
}
