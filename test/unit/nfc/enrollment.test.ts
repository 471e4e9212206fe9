import { randomBytes } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import type { CredentialStatus } from '../../../src/access/credential-lookup.js';
import { KEYRING_OP_TYP, Keyring } from '../../../src/access/keyring.js';
import type { Clock } from '../../../src/core/clock.js';
import { silentLogger } from '../../../src/core/logger.js';
import { fromB64url, fromHex } from '../../../src/crypto/encoding.js';
import { signJws } from '../../../src/crypto/jws.js';
import { uidHash } from '../../../src/crypto/keys.js';
import {
  CARD_ENROLL_TYP,
  type CardEnrollRequest,
  type CardKind,
  grantFor,
  keyAuthProof,
  NFC_AUTH_VERIFIERS,
} from '../../../src/nfc/enroll-auth.js';
import { CardEnrollmentDesk, type CardEnrollmentView } from '../../../src/nfc/enrollment.js';
import { fidoAssert, proveTap, type TapDeps } from '../../../src/nfc/tap.js';
import { tapChallenge, vehicleAppParam } from '../../../src/nfc/u2f.js';
import { SimulatedFidoU2fKey } from '../../../src/sim/cards/fido-u2f.js';
import { SimulatedNtag424 } from '../../../src/sim/cards/ntag424.js';
import type { SimulatedCard } from '../../../src/sim/cards/types.js';
import { SimulatedUidTag } from '../../../src/sim/cards/uid-tag.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  makeUidCredential,
  NOW_S,
  type TestKey,
  VID,
} from '../../helpers/keyring-fixtures.js';
import { enrolFido, sessionOver } from './nfc-fixtures.js';

const AUTHORISE_MS = 60_000;
const WINDOW_MS = 30_000;

class FakeClock implements Clock {
  wall = NOW_S * 1000;
  mono = 0;
  now(): number {
    return this.wall;
  }
  monotonic(): number {
    return this.mono;
  }
  advance(ms: number): void {
    this.wall += ms;
    this.mono += ms;
  }
}

function keyringFor(root: TestKey, vehicle: TestKey, verifiers = NFC_AUTH_VERIFIERS): Keyring {
  const rootKey = root.credential.publicKey;
  const vehicleKey = vehicle.credential.publicKey;
  if (!rootKey || !vehicleKey) throw new Error('keys');
  return new Keyring({ vehicleId: VID, rootKey, vehicleKey, authVerifiers: verifiers });
}

function awaiting(view: CardEnrollmentView | undefined): CardEnrollRequest {
  if (!view) throw new Error('no view');
  return view.request;
}

/** Card enrollment at the vehicle: who may open the window, for how long, and what it writes. */
describe('card enrollment', () => {
  const root = makeRoot();
  const vehicle = makeKey('signer', 'owner');
  const driverSigner = makeKey('signer', 'driver');
  const siteKey = new Uint8Array(randomBytes(16));
  const ownerKey = new SimulatedFidoU2fKey({ label: 'owner' });
  const driverKey = new SimulatedFidoU2fKey({ label: 'driver' });
  let keyring: Keyring;
  let clock: FakeClock;
  let desk: CardEnrollmentDesk;
  let counters: Map<string, number>;
  let audit: { type: string; [k: string]: unknown }[];
  let ownerFidoId: string;
  let driverFidoId: string;

  const fidoCredentials = (): readonly CredentialStatus[] =>
    keyring.list().filter((s) => s.credential.kind === 'fido');

  /** An ordinary tap's settings, to check that an enrolled card then proves itself. */
  const tapDeps = (): TapDeps => ({
    vehicleId: VID,
    keyring,
    fidoCredentials,
    siteKey: async () => siteKey,
    maxProbes: 8,
    answerTimeoutMs: 1000,
    apduTimeoutMs: 1000,
    now: () => performance.now(),
    challenge: tapChallenge,
  });

  beforeEach(async () => {
    keyring = keyringFor(root, vehicle);
    const ownerFido = await enrolFido(ownerKey, VID, 'owner');
    const driverFido = await enrolFido(driverKey, VID, 'driver');
    ownerFidoId = ownerFido.id;
    driverFidoId = driverFido.id;
    const merged = keyring.merge(
      [ownerFido, driverFido, driverSigner.credential].map((c) => grantBy(root, c)),
    );
    expect(merged.rejected).toEqual([]);
    clock = new FakeClock();
    counters = new Map();
    audit = [];
    desk = new CardEnrollmentDesk({
      vehicleId: VID,
      clock,
      keyring,
      fidoCredentials,
      counters: {
        get: (id) => counters.get(id),
        set: async (id, v) => {
          counters.set(id, v);
        },
      },
      signOp: (op) => signJws(op, vehicle.privateKey, vehicle.id, KEYRING_OP_TYP),
      addOps: async (jws) => keyring.merge(jws),
      audit: (event) => audit.push(event),
      log: silentLogger,
      siteKey: async () => siteKey,
      authoriseWindowMs: AUTHORISE_MS,
      enrollWindowMs: WINDOW_MS,
      apduTimeoutMs: 1000,
    });
  });

  function signRequest(request: CardEnrollRequest, signer: TestKey = root) {
    return signJws(request, signer.privateKey, signer.id, CARD_ENROLL_TYP);
  }

  /** The reader's part of an owner tap: sign the challenge with `card`'s enrolled handle. */
  async function ownerTap(card = ownerKey, challenge?: Uint8Array) {
    const c = challenge ?? desk.ownerTapChallenge();
    if (!c) throw new Error('no owner-tap challenge');
    const status = keyring.byId(card === ownerKey ? ownerFidoId : driverFidoId);
    const handle = status?.credential.keyHandle;
    if (!status || !handle) throw new Error('no credential');
    const answer = await fidoAssert(
      sessionOver(card),
      { answerTimeoutMs: 1000, apduTimeoutMs: 1000, now: () => performance.now() },
      { appParam: vehicleAppParam(VID), challenge: c, keyHandle: fromB64url(handle), select: true },
    );
    return await desk.authoriseWithFido(status.credential.id, answer.assertion);
  }

  it('changes nothing at the reader until the owner authorises the request', async () => {
    desk.request({ kind: 'uid', role: 'driver', method: 'owner-key' });
    expect(desk.phase()).toBe('idle');
    const early = await desk.enrollCard(sessionOver(new SimulatedUidTag({ label: 't', model: 'ntag213' })));
    expect(early).toMatchObject({ ok: false, code: 'enrollment_closed' });
    expect(keyring.size).toBe(3);
    desk.cancel();
    desk.request({ kind: 'fido', role: 'driver', method: 'owner-fido' });
    expect(desk.phase()).toBe('owner-tap');
  });

  it('enrolls a card after an owner-signed request; the grant verifies in any keyring with the verifiers', async () => {
    const view = desk.request({ kind: 'uid', role: 'driver', name: 'gym tag', method: 'owner-key' });
    const authorised = desk.authoriseWithKey(signRequest(awaiting(view)));
    expect(authorised).toMatchObject({ state: 'awaiting_card', authorisedBy: root.id });
    expect(desk.phase()).toBe('new-card');
    const tag = new SimulatedUidTag({ label: 'gym', model: 'mifare-classic-1k' });
    const done = await desk.enrollCard(sessionOver(tag));
    expect(done).toMatchObject({ ok: true, view: { state: 'completed' } });
    const id = done.ok ? done.view.credentialId : undefined;
    const status = id === undefined ? undefined : keyring.byId(id);
    expect(status?.credential).toMatchObject({
      kind: 'uid',
      role: 'driver',
      name: 'gym tag',
      options: { insecureUid: true },
    });
    expect(desk.phase()).toBe('idle');

    const stored = [...keyring.storedOps()].map((s) => s.jws);
    const elsewhere = keyringFor(root, vehicle);
    expect(elsewhere.merge(stored).rejected).toEqual([]);
    const withoutVerifiers = keyringFor(root, vehicle, new Map());
    const refused = withoutVerifiers.merge(stored);
    expect(refused.rejected).toHaveLength(1);
    expect(audit.map((e) => e.type)).toEqual([
      'enroll.card.request',
      'enroll.card.authorised',
      'enroll.card.completed',
    ]);
  });

  it('refuses authorisations that are not the owner signing this request', async () => {
    const view = desk.request({ kind: 'uid', role: 'owner', method: 'owner-key' });
    const request = awaiting(view);
    const stranger = makeKey('signer', 'owner');
    expect(() => desk.authoriseWithKey(signRequest(request, stranger))).toThrow(
      expect.objectContaining({ code: 'unknown_credential' }),
    );
    expect(() => desk.authoriseWithKey(signRequest(request, driverSigner))).toThrow(
      expect.objectContaining({ code: 'role_not_allowed' }),
    );
    expect(() => desk.authoriseWithKey(signRequest({ ...request, role: 'driver' }))).toThrow(
      expect.objectContaining({ code: 'bad_proof' }),
    );
    const untyped = signJws(request, root.privateKey, root.id);
    expect(() => desk.authoriseWithKey(untyped)).toThrow(expect.objectContaining({ code: 'bad_proof' }));
    // A request signed earlier (another nonce) does not authorise this one.
    desk.cancel();
    desk.request({ kind: 'uid', role: 'owner', method: 'owner-key' });
    expect(() => desk.authoriseWithKey(signRequest(request))).toThrow(
      expect.objectContaining({ code: 'bad_proof' }),
    );
    expect(desk.phase()).toBe('idle');
    expect(desk.status()?.lastRefusal?.code).toBe('bad_proof');
  });

  it('takes an owner FIDO key tapped at the reader, and refuses other keys and tap answers', async () => {
    desk.request({ kind: 'fido', role: 'guest', notAfter: '2027-12-31T00:00:00Z', method: 'owner-fido' });
    // A signature over a random (tap) challenge authorises nothing.
    expect(await ownerTap(ownerKey, tapChallenge())).toMatchObject({ ok: false, code: 'bad_proof' });
    expect(await ownerTap(driverKey)).toMatchObject({ ok: false, code: 'role_not_allowed' });
    expect(desk.phase()).toBe('owner-tap');
    expect(await ownerTap(ownerKey)).toMatchObject({
      ok: true,
      view: { state: 'awaiting_card', authorisedBy: ownerFidoId },
    });
    expect(counters.get(ownerFidoId)).toBe(ownerKey.counter);

    // The owner key tapped again is already enrolled: refused, the window stays open.
    expect(await desk.enrollCard(sessionOver(ownerKey))).toMatchObject({
      ok: false,
      code: 'already_enrolled',
    });
    const newKey = new SimulatedFidoU2fKey({ label: 'new' });
    const done = await desk.enrollCard(sessionOver(newKey));
    expect(done).toMatchObject({ ok: true, view: { state: 'completed', role: 'guest' } });

    // The new key now proves itself on an ordinary tap.
    const proof = await proveTap(sessionOver(newKey), tapDeps());
    expect(proof).toMatchObject({ proof: 'valid', credentialId: done.ok ? done.view.credentialId : 'x' });
    expect(keyring.byId(proof.credentialId ?? '')?.credential.notAfter).toBe(
      Date.parse('2027-12-31T00:00:00Z'),
    );

    // The FIDO proof re-verifies anywhere, and only as signed (here: a changed counter).
    const op = [...keyring.storedOps()].find((o) => o.op.op === 'grant' && o.op.auth !== undefined);
    if (op?.op.op !== 'grant' || !op.op.auth) throw new Error('no enrollment grant');
    const owners = [...keyring.storedOps()].filter((o) => o.op.auth === undefined).map((o) => o.jws);
    expect(keyringFor(root, vehicle).merge([...owners, op.jws]).rejected).toEqual([]);
    const proofOf = op.op.auth.proof;
    const tampered = signJws(
      { ...op.op, auth: { ...op.op.auth, proof: { ...proofOf, counter: Number(proofOf.counter) + 1 } } },
      vehicle.privateKey,
      vehicle.id,
      KEYRING_OP_TYP,
    );
    expect(keyringFor(root, vehicle).merge([...owners, tampered]).rejected[0]?.code).toBe('op_bad_signature');
  });

  it('refuses an owner FIDO key whose counter did not rise (a clone)', async () => {
    counters.set(ownerFidoId, 1000);
    desk.request({ kind: 'uid', role: 'driver', method: 'owner-fido' });
    expect(await ownerTap(ownerKey)).toMatchObject({ ok: false, code: 'clone_suspected' });
    expect(desk.phase()).toBe('owner-tap');
  });

  it('expires: first the authorisation, then the card window', async () => {
    const first = desk.request({ kind: 'uid', role: 'driver', method: 'owner-key' });
    clock.advance(AUTHORISE_MS);
    expect(desk.status()?.state).toBe('expired');
    expect(() => desk.authoriseWithKey(signRequest(awaiting(first)))).toThrow(
      expect.objectContaining({ code: 'enrollment_closed' }),
    );

    const second = desk.request({ kind: 'uid', role: 'driver', method: 'owner-key' });
    desk.authoriseWithKey(signRequest(awaiting(second)));
    clock.advance(WINDOW_MS);
    expect(desk.phase()).toBe('idle');
    expect(desk.status()?.state).toBe('expired');
    const late = await desk.enrollCard(sessionOver(new SimulatedUidTag({ label: 't', model: 'ntag213' })));
    expect(late).toMatchObject({ ok: false, code: 'enrollment_closed' });
    expect(keyring.size).toBe(3);
  });

  it('personalises a factory NTAG 424 and refuses one keyed by another system', async () => {
    const foreign = new SimulatedNtag424({ label: 'foreign', keys: [fromHex('11'.repeat(16))] });
    const view = desk.request({ kind: 'ntag424', role: 'driver', method: 'owner-key' });
    desk.authoriseWithKey(signRequest(awaiting(view)));
    expect(await desk.enrollCard(sessionOver(foreign))).toMatchObject({ ok: false, code: 'bad_proof' });
    const card = new SimulatedNtag424({ label: 'factory' });
    expect(await desk.enrollCard(sessionOver(card))).toMatchObject({ ok: true });
    const proof = await proveTap(sessionOver(card), tapDeps());
    expect(proof).toMatchObject({ kind: 'ntag424', proof: 'valid' });
  });

  it('binds the proof to the grant: another role, card or second grant from one authorisation is refused', () => {
    const view = desk.request({ kind: 'uid', role: 'driver', method: 'owner-key' });
    const request = awaiting(view);
    const jws = signRequest(request);
    const cardA = { uidHash: 'a'.repeat(32) };
    const cardB = { uidHash: 'b'.repeat(32) };
    const sign = (op: object) => signJws(op, vehicle.privateKey, vehicle.id, KEYRING_OP_TYP);
    const grantA = grantFor(request, cardA);
    // The vehicle cannot make the owner's proof say owner instead of driver.
    const promoted = sign({
      ...grantA,
      cred: { ...grantA.cred, role: 'owner' },
      auth: keyAuthProof(root.id, jws, cardA),
    });
    expect(keyring.merge([promoted]).rejected[0]?.code).toBe('op_bad_signature');
    // Nor reuse one authorisation for a second card.
    expect(keyring.merge([sign({ ...grantA, auth: keyAuthProof(root.id, jws, cardA) })]).rejected).toEqual(
      [],
    );
    const second = keyring.merge([
      sign({ ...grantFor(request, cardB), auth: keyAuthProof(root.id, jws, cardB) }),
    ]);
    expect(second.rejected[0]?.code).toBe('op_malformed');
    // Nor pass a non-owner's signature off as authority.
    const r2 = { ...request, nonce: 'AAAAAAAAAAAAAAAAAAAAAA' };
    const cardC = { uidHash: 'c'.repeat(32) };
    const viaDriver = sign({
      ...grantFor(r2, cardC),
      auth: keyAuthProof(driverSigner.id, signRequest(r2, driverSigner), cardC),
    });
    expect(keyring.merge([viaDriver]).rejected[0]?.code).toBe('op_signer_not_allowed');
  });

  /** Opens an owner-signed request for `kind` and returns what the desk makes of `card`. */
  async function enrollOne(kind: CardKind, card: SimulatedCard) {
    const view = desk.request({ kind, role: 'driver', method: 'owner-key' });
    desk.authoriseWithKey(signRequest(awaiting(view)));
    return await desk.enrollCard(sessionOver(card));
  }

  describe('a new card is told from an enrolled one by what names it', () => {
    // A UID-only tag, and an NTAG 424 whose keys derive from its UID, are their UID; a FIDO key is
    // its key handle and public key, whatever UID it shows (many keys share one, or show random ones).
    const tagUid = fromHex('04c0ffee123456');
    const cases: readonly {
      readonly name: string;
      readonly kind: CardKind;
      readonly card: () => SimulatedCard;
      readonly outcome: 'enrolled' | 'already_enrolled';
    }[] = [
      {
        name: 'another FIDO key showing the UID of an enrolled FIDO key',
        kind: 'fido',
        card: () => new SimulatedFidoU2fKey({ label: 'twin', uid: ownerKey.uid }),
        outcome: 'enrolled',
      },
      {
        name: 'an enrolled FIDO key',
        kind: 'fido',
        card: () => ownerKey,
        outcome: 'already_enrolled',
      },
      {
        name: 'an enrolled FIDO key showing a random UID',
        kind: 'fido',
        card: () =>
          ownerKey.clone({ label: 'random-uid', uid: fromHex('08a1b2c3'), counter: ownerKey.counter }),
        outcome: 'already_enrolled',
      },
      {
        name: 'an enrolled FIDO key showing another fixed UID',
        kind: 'fido',
        card: () => driverKey.clone({ label: 'new-uid', uid: fromHex('04998877665544'), counter: 0 }),
        outcome: 'already_enrolled',
      },
      {
        name: 'a FIDO key showing the UID of an enrolled UID-only tag',
        kind: 'fido',
        card: () => new SimulatedFidoU2fKey({ label: 'tag-uid', uid: tagUid }),
        outcome: 'already_enrolled',
      },
      {
        name: 'a new FIDO key with a UID of its own',
        kind: 'fido',
        card: () => new SimulatedFidoU2fKey({ label: 'fresh' }),
        outcome: 'enrolled',
      },
      {
        name: 'a UID tag with the UID of an enrolled UID tag',
        kind: 'uid',
        card: () => new SimulatedUidTag({ label: 'copy', model: 'ntag213', uid: tagUid }),
        outcome: 'already_enrolled',
      },
      {
        name: 'a UID tag with the UID of an enrolled FIDO key',
        kind: 'uid',
        card: () => new SimulatedUidTag({ label: 'magic', model: 'ntag213', uid: ownerKey.uid }),
        outcome: 'already_enrolled',
      },
      {
        name: 'a UID tag with a UID of its own',
        kind: 'uid',
        card: () => new SimulatedUidTag({ label: 'new', model: 'ntag213' }),
        outcome: 'enrolled',
      },
      {
        name: 'an NTAG 424 with the UID of an enrolled UID tag',
        kind: 'ntag424',
        card: () => new SimulatedNtag424({ label: 'dna', uid: tagUid }),
        outcome: 'already_enrolled',
      },
    ];

    beforeEach(() => {
      const tag = makeUidCredential('uid', uidHash(VID, tagUid), 'driver', {
        options: { insecureUid: true },
      });
      expect(keyring.merge([grantBy(root, tag)]).rejected).toEqual([]);
    });

    it.each(cases)('$name: $outcome', async ({ kind, card, outcome }) => {
      const before = keyring.size;
      const presented = card();
      const result = await enrollOne(kind, presented);
      if (outcome === 'already_enrolled') {
        expect(result).toMatchObject({ ok: false, code: 'already_enrolled' });
        expect(keyring.size).toBe(before);
        return;
      }
      expect(result).toMatchObject({ ok: true, view: { state: 'completed' } });
      expect(keyring.size).toBe(before + 1);
      // The new card proves itself on an ordinary tap, and so do the enrolled keys sharing its UID.
      const id = result.ok ? result.view.credentialId : undefined;
      expect(await proveTap(sessionOver(presented), tapDeps())).toMatchObject({
        proof: kind === 'uid' ? 'none' : 'valid',
        credentialId: id,
      });
      if (kind === 'fido') {
        expect(await proveTap(sessionOver(ownerKey), tapDeps())).toMatchObject({
          proof: 'valid',
          credentialId: ownerFidoId,
        });
      }
    });

    it('asks the keys sharing the UID first, so an enrolled key is found behind any number of others', async () => {
      const others = await Promise.all(
        Array.from({ length: 70 }, (_, i) =>
          enrolFido(new SimulatedFidoU2fKey({ label: `k${i}` }), VID, 'driver'),
        ),
      );
      const late = new SimulatedFidoU2fKey({ label: 'late', uid: fromHex('04112233445566') });
      const lateCredential = await enrolFido(late, VID, 'driver');
      expect(keyring.merge([...others, lateCredential].map((c) => grantBy(root, c))).rejected).toEqual([]);
      const result = await enrollOne('fido', late);
      expect(result).toMatchObject({ ok: false, code: 'already_enrolled' });
      expect(result.ok ? '' : result.message).toContain(lateCredential.id);
    });
  });
});
