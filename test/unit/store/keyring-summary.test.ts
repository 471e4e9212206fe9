import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { credentialToWire } from '../../../src/access/credential-wire.js';
import { crcHex } from '../../../src/store/checksummed.js';
import { decodeSummaryV4, encodeSummary, isSummaryV4 } from '../../../src/store/keyring-summary.js';
import { makeKey, makeRoot, makeUidCredential, newKeyring } from '../../helpers/keyring-fixtures.js';

const phone = makeKey('phone', 'driver');
const revokedPhone = makeKey('phone', 'guest', { notAfter: Date.UTC(2030, 0, 1) });
const card = makeUidCredential('uid', 'c'.repeat(32), 'driver', { options: { insecureUid: true } });
const entries = [
  [credentialToWire(phone.credential), false],
  [credentialToWire(revokedPhone.credential), true],
  [credentialToWire({ ...card, name: 'Zoë’s tag' }), false],
] as const;
const DIGEST = 'a'.repeat(64);

/** A format 4 file with this body and header, both checksums made to match. */
function craft(body: string, header: Record<string, unknown> = {}): Buffer {
  const bytes = Buffer.from(body, 'utf8');
  const lines = body.split('\n').slice(0, -1);
  const order = Uint32Array.from(lines.keys()).sort((a, b) => {
    const [x, y] = [lines[a]?.split(' ')[1] ?? '', lines[b]?.split(' ')[1] ?? ''];
    return x < y ? -1 : x > y ? 1 : 0;
  });
  const json = JSON.stringify({
    format: 4,
    digest: DIGEST,
    opCount: 3,
    count: body.split('\n').length - 1,
    bytes: bytes.length,
    crc: crcHex(bytes),
    order: Buffer.from(order.buffer).toString('base64'),
    ...header,
  });
  return Buffer.concat([Buffer.from(`${crcHex(json)} ${json}\n`), bytes]);
}

describe('keyring summary (format 4)', () => {
  it('round-trips: header, revoked flags, uid index, insecure flag, each credential as written', () => {
    const bytes = encodeSummary(DIGEST, 7, entries);
    expect(isSummaryV4(bytes)).toBe(true);
    const s = decodeSummaryV4(bytes);
    expect(s.digest).toBe(DIGEST);
    expect(s.opCount).toBe(7);
    const t = s.credentials;
    expect(t.size).toBe(3);
    // The keyring's order, whatever the ids' order.
    expect([...t.ids()]).toEqual(entries.map(([w]) => w.id));
    for (const [w, revoked] of entries) {
      expect(t.revoked(w.id)).toBe(revoked);
      expect(t.wire(w.id)).toEqual(w);
    }
    expect(t.revoked('phone:nobody')).toBeUndefined();
    expect(t.wire('phone:nobody')).toBeUndefined();
    expect(t.idsByUid(card.uidHash ?? '')).toEqual([card.id]);
    expect(t.idsByUid('d'.repeat(32))).toEqual([]);
    expect(t.insecureUidIds()).toEqual([card.id]);
  });

  it('finds every id it holds and no other, whatever the ids (binary search over sorted lines)', () => {
    const id = fc.stringMatching(/^(phone|fido|uid):[A-Za-z0-9_-]{1,22}$/);
    fc.assert(
      fc.property(fc.uniqueArray(id, { maxLength: 60 }), fc.array(id, { maxLength: 20 }), (held, asked) => {
        const wires = held.map(
          (i, n) => [{ id: i, kind: 'phone', role: 'driver' } as const, n % 3 === 0] as const,
        );
        const t = decodeSummaryV4(encodeSummary(DIGEST, held.length, wires)).credentials;
        for (const [w, revoked] of wires) {
          expect(t.revoked(w.id)).toBe(revoked);
          expect(t.wire(w.id)).toEqual(w);
        }
        for (const i of asked) expect(t.has(i)).toBe(held.includes(i));
        expect(t.has('')).toBe(false);
        expect(t.has('é')).toBe(false);
      }),
      { numRuns: 200 },
    );
  });

  it('an empty keyring is a header alone', () => {
    const s = decodeSummaryV4(encodeSummary(DIGEST, 0, []));
    expect(s.credentials.size).toBe(0);
  });

  it('detects every flipped bit of the file, header or credential lines', () => {
    const bytes = encodeSummary(DIGEST, 3, entries);
    fc.assert(
      fc.property(fc.nat(bytes.length - 1), fc.integer({ min: 0, max: 7 }), (at, bit) => {
        const copy = Buffer.from(bytes);
        copy[at] = (copy[at] ?? 0) ^ (1 << bit);
        expect(() => decodeSummaryV4(copy)).toThrow();
      }),
      { numRuns: 400 },
    );
  });

  it('detects a file cut short or with bytes added', () => {
    const bytes = encodeSummary(DIGEST, 3, entries);
    for (let len = 0; len < bytes.length; len += 7) {
      expect(() => decodeSummaryV4(bytes.subarray(0, len))).toThrow();
    }
    expect(() => decodeSummaryV4(Buffer.concat([bytes, Buffer.from('-- phone:x - {}\n')]))).toThrow();
  });

  const line = (flags: string, id: string, uid: string, json: string) => `${flags} ${id} ${uid} ${json}\n`;
  const good = (id: string) => JSON.stringify({ id, kind: 'phone', role: 'driver' });
  it.each([
    ['more lines than counted', line('--', 'phone:a', '-', good('phone:a')), { count: 0 }],
    ['fewer lines than counted', line('--', 'phone:a', '-', good('phone:a')), { count: 2 }],
    ['an unknown flag', line('x-', 'phone:a', '-', good('phone:a')), {}],
    ['no uid field', `-- phone:a ${good('phone:a')}\n`, {}],
    ['no JSON object', line('--', 'phone:a', '-', 'null'), {}],
    ['bytes that do not match the header', line('--', 'phone:a', '-', good('phone:a')), { bytes: 3 }],
    ['a header of another format', line('--', 'phone:a', '-', good('phone:a')), { format: 3 }],
    ['a header without digest', line('--', 'phone:a', '-', good('phone:a')), { digest: 5 }],
    ['an order too short', line('--', 'phone:a', '-', good('phone:a')), { order: '' }],
    [
      'an order naming a line twice',
      line('--', 'phone:a', '-', good('phone:a')) + line('--', 'phone:b', '-', good('phone:b')),
      { order: Buffer.alloc(8).toString('base64') },
    ],
    [
      'an order naming no line',
      line('--', 'phone:a', '-', good('phone:a')),
      { order: Buffer.from([1, 0, 0, 0]).toString('base64') },
    ],
  ])('refuses %s, checksums matching', (_what, body, header) => {
    expect(() => decodeSummaryV4(craft(body, header))).toThrow();
  });

  it('an id order that does not sort (checksums matching, a writer bug) can only make a lookup miss, never find another', () => {
    const ids = ['phone:e', 'phone:a', 'phone:d', 'phone:b', 'phone:c'];
    const wrong = Buffer.from(Uint32Array.from([0, 1, 2, 3, 4]).buffer).toString('base64');
    const body = ids.map((i) => line('r-', i, '-', good(i))).join('');
    const t = decodeSummaryV4(craft(body, { order: wrong })).credentials;
    for (const i of [...ids, 'phone:f', 'phone:']) {
      if (t.has(i)) {
        expect(t.wire(i)?.id).toBe(i);
        expect(t.revoked(i)).toBe(true);
      } else expect(t.wire(i)).toBeUndefined();
    }
  });

  it('a line whose JSON does not decode (checksums matching) denies that credential only, as suspect', () => {
    const root = makeRoot();
    const body = line('--', phone.id, '-', '{not json') + line('--', 'phone:b', '-', good('phone:b'));
    const ring = newKeyring(root);
    const never = { read: () => new Promise<never>(() => {}), readSync: () => [] };
    const { digest, opCount, credentials } = decodeSummaryV4(craft(body));
    ring.loadSnapshot({ digest, opCount, credentials, ops: never });
    expect(ring.byId(phone.id)).toMatchObject({ revoked: true, suspect: expect.any(String) });
    expect(ring.activeRole(phone.id)).toBeUndefined();
    expect(ring.activeRole('phone:b')).toBe('driver');
    expect(ring.activeRole(root.id)).toBe('owner');
  });
});
