import { describe, expect, it } from 'vitest';
import type { CredentialWire } from '../../../src/access/credential-wire.js';
import type { SnapshotCredentials } from '../../../src/access/snapshot-credentials.js';
import { makeRoot, newKeyring } from '../../helpers/keyring-fixtures.js';

/** A snapshot table that counts how many credentials were decoded. */
function countingTable(entries: readonly (readonly [CredentialWire, boolean])[]) {
  const byId = new Map(entries.map(([w, revoked]) => [w.id, { w, revoked }]));
  const decoded: string[] = [];
  const table: SnapshotCredentials = {
    size: byId.size,
    ids: () => byId.keys(),
    has: (id) => byId.has(id),
    revoked: (id) => byId.get(id)?.revoked,
    wire: (id) => {
      const e = byId.get(id);
      if (e) decoded.push(id);
      return e?.w;
    },
    idsByUid: (uid) => entries.filter(([w]) => w.uidHash === uid).map(([w]) => w.id),
    insecureUidIds: () => entries.filter(([w]) => w.options?.insecureUid).map(([w]) => w.id),
  };
  return { table, decoded };
}

const never = { read: () => new Promise<never>(() => {}), readSync: () => [] };

describe('a keyring on a snapshot', () => {
  const phones = Array.from(
    { length: 50 },
    (_, i): CredentialWire => ({
      id: `phone:${String(i).padStart(22, 'A')}`,
      kind: 'phone',
      role: 'driver',
    }),
  );
  const card: CredentialWire = {
    id: 'uid:card',
    kind: 'uid',
    role: 'driver',
    uidHash: 'c'.repeat(32),
    options: { insecureUid: true },
  };
  const entries = [...phones.map((w, i) => [w, i % 5 === 0] as const), [card, false] as const];

  it('decodes a credential on its first lookup only, and none that is not asked for', () => {
    const ring = newKeyring(makeRoot());
    const { table, decoded } = countingTable(entries);
    ring.loadSnapshot({ digest: 'd', opCount: entries.length, credentials: table, ops: never });
    expect(decoded).toEqual([]);
    expect(ring.credentialCount).toBe(entries.length + 1);
    const asked = phones[3]?.id ?? '';
    expect(ring.activeRole(asked)).toBe('driver');
    expect(ring.byId(asked)?.revoked).toBe(false);
    expect(ring.activeRole(phones[5]?.id ?? '')).toBeUndefined(); // revoked in the snapshot
    expect(ring.byId('phone:unknown')).toBeUndefined();
    expect(decoded).toEqual([asked, phones[5]?.id]);
    expect(ring.insecureUidCredentials().map((s) => s.credential.id)).toEqual([card.id]);
    expect(ring.byUidHash(card.uidHash ?? '').map((s) => s.credential.id)).toEqual([card.id]);
    expect(decoded).toHaveLength(3);
    expect(ring.digest()).toBe('d');
  });

  it('denies suspects marked while on the snapshot, and judges them again once cleared', () => {
    const ring = newKeyring(makeRoot());
    const { table } = countingTable(entries);
    ring.loadSnapshot({
      digest: 'd',
      opCount: entries.length,
      credentials: table,
      ops: never,
      liveOwners: new Set(),
    });
    const id = phones[1]?.id ?? '';
    expect(ring.activeRole(id)).toBe('driver');
    ring.markSuspect(id, 'its counter was lost');
    expect(ring.byId(id)).toMatchObject({ revoked: true, suspect: 'its counter was lost' });
    expect(ring.activeRole(phones[2]?.id ?? '')).toBe('driver');
    ring.clearSuspects();
    expect(ring.activeRole(id)).toBe('driver');
    expect(ring.credentialCount).toBe(entries.length + 1);
  });

  it('decodes every op at once for a suspect it cannot rule out as a live owner (its grantees end too)', () => {
    let reads = 0;
    const counted = {
      read: () => new Promise<never>(() => {}),
      readSync: () => {
        reads += 1;
        return [];
      },
    };
    // A summary that names no live owners (written before they were kept): any suspect.
    const old = newKeyring(makeRoot());
    old.loadSnapshot({ digest: 'd', opCount: 0, credentials: countingTable(entries).table, ops: counted });
    old.markSuspect(phones[1]?.id ?? '', 'its counter was lost');
    expect(old.onSnapshot).toBe(false);
    expect(reads).toBe(1);
    // One that names them: only a live owner's suspicion needs the ops.
    const named = newKeyring(makeRoot());
    named.loadSnapshot({
      digest: 'd',
      opCount: 0,
      credentials: countingTable(entries).table,
      ops: counted,
      liveOwners: new Set(['phone:owner-A']),
    });
    named.markSuspect(phones[1]?.id ?? '', 'its counter was lost');
    expect(named.onSnapshot).toBe(true);
    named.markSuspect('phone:owner-A', 'its revoke journal was damaged');
    expect(named.onSnapshot).toBe(false);
    expect(reads).toBe(2);
  });

  it('lists every credential, the root first, when asked to (keys list)', () => {
    const root = makeRoot();
    const ring = newKeyring(root);
    const { table } = countingTable(entries);
    ring.loadSnapshot({ digest: 'd', opCount: entries.length, credentials: table, ops: never });
    const list = ring.list();
    expect(list[0]?.credential.id).toBe(root.id);
    expect(list.map((s) => s.credential.id).slice(1)).toEqual(entries.map(([w]) => w.id));
    expect(list.filter((s) => s.revoked)).toHaveLength(10);
  });
});
