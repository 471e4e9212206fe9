import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { CredentialStatus } from '../../../src/access/credential-lookup.js';
import { credentialToWire } from '../../../src/access/credential-wire.js';
import { decodeTrustedOp, digestWithOps, journalOverlay, type Keyring } from '../../../src/access/keyring.js';
import { decodeSummaryV4, encodeSummary } from '../../../src/store/keyring-summary.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  makeUidCredential,
  NOW_S,
  newKeyring,
  revokeBy,
} from '../../helpers/keyring-fixtures.js';

/**
 * Issue 19: after a kill -9 the journal's ops are laid over the snapshot (journalOverlay) so that
 * start-up need not decode every op first. Property: over random snapshot ops and random journal
 * ops (grants, re-grants, revokes, revokes of owners, owner grants, revokes before grants), either
 * the overlay refuses (the store then decodes everything first), or every lookup from the
 * overlaid snapshot equals the full derivation or denies (never allows more), and once the ops
 * are decoded every lookup, the digest and the op count equal the full derivation's.
 */
const root = makeRoot();
const owner2 = makeKey('signer', 'owner');
const owner3 = makeKey('signer', 'owner', {}, 'Ed25519');
const phoneOwner = makeKey('phone', 'owner', { name: 'owner phone' });
const service = makeKey('signer', 'service');
const UNTIL = Date.UTC(2031, 0, 1);
const phoneA = makeKey('phone', 'driver', { name: 'Alice' });
const phoneB = makeKey('phone', 'guest', { notAfter: UNTIL });
const phoneC = makeKey('phone', 'driver', { options: { passive: true } });
const phoneD = makeKey('phone', 'driver', { name: 'Dora' });
const UID_A = 'a'.repeat(32);
const cardA = makeUidCredential('ntag424', UID_A, 'driver', { name: 'card A' });
const tagA = makeUidCredential('uid', UID_A, 'guest', { notAfter: UNTIL, options: { insecureUid: true } });
const uids = [UID_A, 'f'.repeat(32)];

const pool: readonly string[] = [
  grantBy(root, owner2.credential),
  grantBy(root, owner3.credential, NOW_S + 1),
  grantBy(owner2, phoneOwner.credential, NOW_S + 2),
  grantBy(root, service.credential),
  grantBy(root, phoneA.credential),
  // a re-grant: newer, narrower
  grantBy(owner2, { ...phoneA.credential, role: 'guest', notAfter: UNTIL }, NOW_S + 4),
  grantBy(owner3, phoneB.credential, NOW_S + 1),
  grantBy(phoneOwner, phoneC.credential, NOW_S + 3),
  grantBy(owner2, phoneD.credential, NOW_S + 2),
  grantBy(root, cardA),
  grantBy(owner2, tagA),
  // an owner granted again in a lesser role (the owner grant still makes it a live owner)
  grantBy(root, { ...owner3.credential, role: 'guest' }, NOW_S + 9),
  revokeBy(root, phoneB.id, NOW_S + 2),
  revokeBy(service, cardA.id, NOW_S + 3),
  revokeBy(root, owner2.id, NOW_S + 6),
  revokeBy(root, owner3.id, NOW_S + 7),
  revokeBy(owner3, phoneD.id, NOW_S + 7),
  revokeBy(phoneOwner, tagA.id, NOW_S + 9),
  revokeBy(root, phoneA.id, NOW_S + 10),
  revokeBy(root, phoneC.id, NOW_S + 11),
];
const ids = [
  root.id,
  owner2.id,
  owner3.id,
  phoneOwner.id,
  service.id,
  phoneA.id,
  phoneB.id,
  phoneC.id,
  phoneD.id,
  cardA.id,
  tagA.id,
  'phone:unknownunknownunknow',
];

const byId = (a: CredentialStatus, b: CredentialStatus) =>
  a.credential.id < b.credential.id ? -1 : a.credential.id > b.credential.id ? 1 : 0;
const allows = (s: CredentialStatus | undefined) => s !== undefined && !s.revoked;
const jwkOf = (ring: Keyring, id: string) => ring.keyOf(id)?.export({ format: 'jwk' });

/** Before the decode: anything the overlaid snapshot allows, the full derivation allows alike. */
function expectNoMoreThan(early: Keyring, full: Keyring): void {
  for (const id of ids) {
    const s = early.byId(id);
    if (allows(s)) expect(s, id).toEqual(full.byId(id));
    else expect(allows(s), id).toBe(false);
    const role = early.activeRole(id);
    if (role !== undefined) expect(role, id).toBe(full.activeRole(id));
    const key = jwkOf(early, id);
    if (key !== undefined) expect(key, id).toEqual(jwkOf(full, id));
  }
  for (const uid of uids) {
    const fullList = full.byUidHash(uid);
    for (const s of early.byUidHash(uid).filter(allows)) expect(fullList, uid).toContainEqual(s);
  }
  const fullList = full.list();
  for (const s of early.list().filter(allows)) expect(fullList).toContainEqual(s);
}

/** After the decode: every lookup exactly as the full derivation. */
function expectSame(ring: Keyring, full: Keyring): void {
  for (const id of ids) {
    expect(ring.byId(id), id).toEqual(full.byId(id));
    expect(ring.activeRole(id), id).toBe(full.activeRole(id));
    expect(jwkOf(ring, id), id).toEqual(jwkOf(full, id));
  }
  for (const uid of uids)
    expect([...ring.byUidHash(uid)].sort(byId)).toEqual([...full.byUidHash(uid)].sort(byId));
  expect(ring.list().sort(byId)).toEqual(full.list().sort(byId));
  expect(ring.credentialCount).toBe(full.credentialCount);
  expect(ring.digest()).toBe(full.digest());
  expect(ring.size).toBe(full.size);
}

/** The owners' own grants: most scenarios start with them, so their revokes have something to retire. */
const ownerGrants = pool.slice(0, 4);

const scenario = fc.record({
  ops: fc.shuffledSubarray([...pool], { minLength: 1 }),
  ownersFirst: fc.boolean(),
  // How many of them (from the end) came after the snapshot, into the journal.
  journalCount: fc.integer({ min: 0, max: 6 }),
  // The ops files hold the journal's ops too: a kill inside a compaction, between the ops files
  // and keyring.json (the summary still the one before).
  opsFilesAhead: fc.boolean(),
});

describe('journal ops laid over a snapshot', () => {
  it('deny at most more than the full derivation before the decode, and equal it after', async () => {
    let overlaid = 0;
    let refused = 0;
    let ownerRevokesRefused = 0;
    await fc.assert(
      fc.asyncProperty(scenario, async ({ ops, ownersFirst, journalCount, opsFilesAhead }) => {
        const full = newKeyring(root);
        full.merge(ownersFirst ? [...ownerGrants, ...ops.filter((o) => !ownerGrants.includes(o))] : ops);
        const accepted = [...full.storedOps()].map((s) => ({ jws: s.jws, signer: s.signer }));
        const cut = Math.max(0, accepted.length - journalCount);
        const snapshotOps = accepted.slice(0, cut);
        const journal = accepted.slice(cut);
        // The keyring the snapshot was written from (its ops are trusted: verified when added).
        const before = newKeyring(root);
        before.loadTrusted(snapshotOps.map((r) => decodeTrustedOp(r.jws, r.signer)));
        const credentials = before
          .list()
          .filter((s) => s.credential.id !== root.id)
          .map((s) => [credentialToWire(s.credential), s.revoked] as const);
        const summary = decodeSummaryV4(
          encodeSummary(before.digest(), snapshotOps.length, credentials, {
            owners: before.liveOwnerIds(),
            sum: before.digestSum(),
          }),
        );
        const records = journal;
        const overlay = journalOverlay(
          records.map((r) => decodeTrustedOp(r.jws, r.signer).op),
          summary.owners,
        );
        if (overlay === undefined) {
          refused++;
          // Refused only for what the snapshot cannot tell: an owner grant or an owner's revoke.
          const needsAll = records.some((r) => {
            const op = decodeTrustedOp(r.jws, r.signer).op;
            return op.op === 'grant' ? op.cred.role === 'owner' : summary.owners?.has(op.credId);
          });
          expect(needsAll).toBe(true);
          if (
            records.some((r) => {
              const op = decodeTrustedOp(r.jws, r.signer).op;
              return op.op === 'revoke' && summary.owners?.has(op.credId);
            })
          )
            ownerRevokesRefused++;
          return;
        }
        overlaid++;
        const lines = opsFilesAhead ? [...snapshotOps, ...records, ...records] : [...snapshotOps, ...records];
        const ring = newKeyring(root);
        const sum = summary.sum ?? '';
        ring.loadSnapshot({
          // As the store computes them: the summary's set with the journal's ops.
          digest: digestWithOps(
            sum,
            summary.opCount,
            records.map((r) => r.jws),
          ),
          opCount: summary.opCount + records.length,
          credentials: summary.credentials,
          ops: { read: () => Promise.resolve(lines), readSync: () => lines },
          overlay,
        });
        expect(ring.onSnapshot).toBe(true);
        expect(ring.digest()).toBe(full.digest());
        expect(ring.size).toBe(full.size);
        expectNoMoreThan(ring, full);
        // Revokes count from the first moment.
        for (const r of records) {
          const op = decodeTrustedOp(r.jws, r.signer).op;
          if (op.op === 'revoke' && op.credId !== root.id) expect(allows(ring.byId(op.credId))).toBe(false);
        }
        await ring.materializeInBackground(3);
        expect(ring.onSnapshot).toBe(false);
        expectSame(ring, full);
      }),
      { numRuns: 250 },
    );
    // Both ways were taken often enough to mean something.
    expect(overlaid).toBeGreaterThan(50);
    expect(refused).toBeGreaterThan(20);
    expect(ownerRevokesRefused).toBeGreaterThan(10);
  });
});
