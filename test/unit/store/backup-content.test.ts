import { describe, expect, it } from 'vitest';
import { decodeStoredOp, digestOfOps } from '../../../src/access/keyring.js';
import { AgentError } from '../../../src/core/errors.js';
import { encodeKeyPair, generateKeyPair, publicJwkOf } from '../../../src/crypto/keys.js';
import {
  BACKUP_CONTENT_FORMAT,
  type BackupContent,
  parseBackupContent,
  verifyBackupContent,
} from '../../../src/store/backup.js';
import { grantBy, makeKey, makeRoot, revokeBy, VID } from '../../helpers/keyring-fixtures.js';

/**
 * The checks a restore makes on decrypted content before it writes anything: the passphrase
 * proves who made the file, not that its content is a vehicle's own, so the content is checked
 * like anything from outside.
 */

const root = makeRoot();
const vehiclePair = generateKeyPair('P-256');
const driver = makeKey('phone', 'driver');
const ops = [grantBy(root, driver.credential), revokeBy(root, driver.id)];
const digest = (jws: readonly string[]) =>
  digestOfOps(jws.map((j) => ({ id: decodeStoredOp(j, '').op.id, jws: j })));

function content(over: Partial<BackupContent> = {}): BackupContent {
  const rootKey = root.credential.publicKey;
  if (!rootKey) throw new Error('no root key');
  return {
    format: BACKUP_CONTENT_FORMAT,
    createdAt: '2026-12-05T00:00:00.000Z',
    vehicle: {
      format: 1,
      vehicleId: VID,
      createdAt: '2026-01-01T00:00:00.000Z',
      rootKey,
      vehicleKey: publicJwkOf(vehiclePair.publicKey),
      vehicleKeyPem: encodeKeyPair(vehiclePair).privatePem,
    },
    keyring: { digest: digest(ops), ops },
    counters: { fido: { 'fido:abc': 5 }, commands: {} },
    clockFloor: 1_800_000_000_000,
    ...over,
  };
}

const bytes = (value: unknown) => Buffer.from(JSON.stringify(value));

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof AgentError) return `${err.code}: ${err.message}`;
    throw err;
  }
  return 'accepted';
}

describe('backup content', () => {
  it('reads back what was written and verifies', () => {
    const parsed = parseBackupContent(bytes(content()));
    expect(parsed).toEqual(content());
    expect(verifyBackupContent(parsed, new Map()).map((s) => s.jws)).toEqual(ops);
  });

  const shapes: [string, unknown, RegExp][] = [
    ['not JSON', 'x', /not JSON/],
    ['another format', { ...content(), format: 'vehicle-agent/backup/2' }, /format/],
    ['no vehicle key', { ...content(), vehicle: { ...content().vehicle, vehicleKeyPem: 3 } }, /vehicle/],
    ['ops not strings', { ...content(), keyring: { digest: 'x', ops: [1] } }, /keyring/],
    ['negative counter', { ...content(), counters: { fido: { a: -1 }, commands: {} } }, /counters\.fido\.a/],
    [
      'fractional counter',
      { ...content(), counters: { fido: {}, commands: { k: 1.5 } } },
      /counters\.commands\.k/,
    ],
    ['no clock', { ...content(), clockFloor: 'now' }, /clockFloor/],
    ['bad config', { ...content(), config: { path: 1, text: '' } }, /config/],
  ];
  for (const [name, value, message] of shapes) {
    it(`refuses ${name}`, () => {
      const r = codeOf(() =>
        parseBackupContent(typeof value === 'string' ? Buffer.from(value) : bytes(value)),
      );
      expect(r).toMatch(/^backup_invalid: /);
      expect(r).toMatch(message);
    });
  }

  it('refuses a vehicle key that is not the private half of the vehicle public key', () => {
    const other = encodeKeyPair(generateKeyPair('P-256')).privatePem;
    const c = content({ vehicle: { ...content().vehicle, vehicleKeyPem: other } });
    expect(codeOf(() => verifyBackupContent(c, new Map()))).toMatch(/^backup_invalid: .*vehicleKeyPem/);
  });

  it('refuses an operation that does not verify, naming it', () => {
    const stranger = makeKey('signer', 'owner');
    const forged = grantBy(stranger, makeKey('phone', 'driver').credential);
    const c = content({ keyring: { digest: digest([...ops, forged]), ops: [...ops, forged] } });
    expect(codeOf(() => verifyBackupContent(c, new Map()))).toMatch(
      /^backup_invalid: keyring operation 3 .*op_unknown_signer/,
    );
  });

  it('refuses operations that do not give the stated digest (one left out)', () => {
    const c = content({ keyring: { digest: digest(ops), ops: ops.slice(0, 1) } });
    expect(codeOf(() => verifyBackupContent(c, new Map()))).toMatch(/^backup_invalid: .*digest/);
  });
});
