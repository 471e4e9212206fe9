import { describe, expect, it, vi } from 'vitest';
import type { CredentialWire } from '../../../src/access/credential-wire.js';
import type { Keyring } from '../../../src/access/keyring.js';
import type { SnapshotCredentials } from '../../../src/access/snapshot-credentials.js';
import { grantBy, makeKey, makeRoot, newKeyring, revokeBy } from '../../helpers/keyring-fixtures.js';

/** Every credential id, by reading pages of `limit` until there is no `next`. */
function pageThrough(ring: Keyring, limit: number): string[] {
  const ids: string[] = [];
  let after: string | undefined;
  for (let n = 0; n < 10_000; n++) {
    const page = ring.page(after, limit);
    expect(page.credentials.length).toBeLessThanOrEqual(limit);
    ids.push(...page.credentials.map((s) => s.credential.id));
    if (page.next === undefined) return ids;
    after = page.next;
  }
  throw new Error('pages never ended');
}

const sortedIds = (ring: Keyring) =>
  ring
    .list()
    .map((s) => s.credential.id)
    .sort();

describe('Keyring.page at 20 000 credentials', () => {
  // A snapshot table: 20 000 credentials without signing 20 000 grants; it counts the decodes.
  const size = 20_000;
  const byId = new Map<string, CredentialWire>();
  for (let i = 0; i < size; i++) {
    const id = `phone:${((i * 7919) % size).toString(36).padStart(22, '0')}`;
    byId.set(id, { id, kind: 'phone', role: 'driver' });
  }
  const decoded: string[] = [];
  const table: SnapshotCredentials = {
    size,
    ids: () => byId.keys(),
    has: (id) => byId.has(id),
    revoked: (id) => (byId.has(id) ? false : undefined),
    wire: (id) => {
      decoded.push(id);
      return byId.get(id);
    },
    idsByUid: () => [],
    insecureUidIds: () => [],
  };
  const never = { read: () => new Promise<never>(() => {}), readSync: () => [] };

  it('builds only the page: O(limit) credentials decoded, list() never called', () => {
    const ring = newKeyring(makeRoot());
    ring.loadSnapshot({ digest: 'd', opCount: size, credentials: table, ops: never });
    const list = vi.spyOn(ring, 'list');
    decoded.length = 0;
    const first = ring.page(undefined, 100);
    expect(first.credentials).toHaveLength(100);
    expect(first.total).toBe(size + 1);
    const second = ring.page(first.next, 100);
    expect(second.credentials).toHaveLength(100);
    expect(decoded.length).toBeLessThanOrEqual(200);
    expect(list).not.toHaveBeenCalled();
    // id order, and the second page goes on where the first stopped
    const ids = [...first.credentials, ...second.credentials].map((s) => s.credential.id);
    expect(ids).toEqual([...ids].sort());
    expect((second.credentials[0]?.credential.id ?? '') > (first.next ?? '')).toBe(true);
  });

  it('pageIndexReady sorts the ids in slices, the loop turning between them; a page after it sorts nothing', async () => {
    const ring = newKeyring(makeRoot());
    ring.loadSnapshot({ digest: 'd', opCount: size, credentials: table, ops: never });
    let turns = 0;
    const ticker = setInterval(() => turns++, 0);
    try {
      await ring.pageIndexReady();
    } finally {
      clearInterval(ticker);
    }
    expect(turns).toBeGreaterThan(3);
    const sort = vi.spyOn(Array.prototype, 'sort');
    try {
      const all = pageThrough(ring, 2000);
      expect(sort).not.toHaveBeenCalled();
      expect(all).toHaveLength(size + 1);
    } finally {
      sort.mockRestore();
    }
  });

  it('pages through every credential once, in id order', () => {
    const ring = newKeyring(makeRoot());
    ring.loadSnapshot({ digest: 'd', opCount: size, credentials: table, ops: never });
    const all = pageThrough(ring, 2000);
    expect(all).toHaveLength(size + 1);
    expect(all).toEqual([...all].sort());
    expect(new Set(all).size).toBe(all.length);
  });
});

describe('Keyring.page cursor', () => {
  const root = makeRoot();
  const ring = newKeyring(root);
  const keys = Array.from({ length: 12 }, () => makeKey('phone', 'driver'));
  for (const k of keys) ring.add(grantBy(root, k.credential));
  const sorted = sortedIds(ring);

  it('after a revoked id goes on with the next id, the revoked one listed as revoked', () => {
    const revoked = sorted[4] as string;
    ring.add(revokeBy(root, revoked));
    expect(ring.page(sorted[3], 1).credentials).toEqual([expect.objectContaining({ revoked: true })]);
    expect(ring.page(revoked, 2).credentials.map((s) => s.credential.id)).toEqual(sorted.slice(5, 7));
  });

  it('after an id the keyring never held starts at the first id sorting after it', () => {
    const absent = `${sorted[6]}~`;
    expect(ring.page(absent, 1).credentials[0]?.credential.id).toBe(sorted[7]);
    expect(ring.page('', 3).credentials.map((s) => s.credential.id)).toEqual(sorted.slice(0, 3));
  });

  it('after the last id is an empty page without next; a page that ends the list has no next', () => {
    expect(ring.page(sorted.at(-1), 5)).toEqual({ credentials: [], total: sorted.length });
    const tail = ring.page(sorted.at(-3), 5);
    expect(tail.credentials).toHaveLength(2);
    expect(tail.next).toBeUndefined();
    expect(ring.page(sorted.at(-4), 3).next).toBeUndefined();
    expect(ring.page(sorted.at(-5), 3).next).toBe(sorted.at(-2));
  });

  it('a grant after the first page is listed by the pages that follow (the id index is kept up to date)', () => {
    expect(pageThrough(ring, 5)).toEqual(sortedIds(ring));
    for (let i = 0; i < 3; i++)
      ring.add(grantBy(root, makeKey('phone', 'guest', { notAfter: Date.now() + 1e6 }).credential));
    const now = sortedIds(ring);
    expect(now).toHaveLength(sorted.length + 3);
    expect(pageThrough(ring, 4)).toEqual(now);
  });
});
