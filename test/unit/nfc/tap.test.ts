import { randomBytes } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import type { CredentialStatus } from '../../../src/access/credential-lookup.js';
import type { Keyring } from '../../../src/access/keyring.js';
import { AgentError } from '../../../src/core/errors.js';
import { fromHex } from '../../../src/crypto/encoding.js';
import { uidHash } from '../../../src/crypto/keys.js';
import { isRandomUid, proveTap, type TapDeps } from '../../../src/nfc/tap.js';
import { U2F_CONTROL, U2F_INS } from '../../../src/nfc/u2f.js';
import { SimulatedFidoU2fKey } from '../../../src/sim/cards/fido-u2f.js';
import { SimulatedNtag424 } from '../../../src/sim/cards/ntag424.js';
import { SimulatedUidTag } from '../../../src/sim/cards/uid-tag.js';
import { grantBy, makeRoot, makeUidCredential, newKeyring, VID } from '../../helpers/keyring-fixtures.js';
import { enrolFido, enrolNtag, sessionOver } from './nfc-fixtures.js';

/** The card protocols of a tap, straight onto simulated cards (the pty path is in integration). */
describe('proveTap', () => {
  const siteKey = new Uint8Array(randomBytes(16));
  const root = makeRoot();
  let keyring: Keyring;
  const owner = new SimulatedFidoU2fKey({ label: 'owner' });
  const ntag = new SimulatedNtag424({ label: 'ntag' });
  const tag = new SimulatedUidTag({ label: 'tag', model: 'ntag213', uid: fromHex('04A2B3C4D5E6F7') });
  const randomUidKey = new SimulatedFidoU2fKey({ label: 'rid', uid: fromHex('08112233') });
  const ids: Record<string, string> = {};

  beforeAll(async () => {
    keyring = newKeyring(root);
    const fido = await enrolFido(owner, VID, 'owner');
    const nt = await enrolNtag(ntag, VID, siteKey, 'driver');
    const rid = await enrolFido(randomUidKey, VID, 'driver', { withUid: false });
    const uidCred = makeUidCredential('uid', uidHash(VID, tag.uid), 'driver', {
      options: { insecureUid: true },
    });
    const result = keyring.merge([fido, nt, rid, uidCred].map((c) => grantBy(root, c)));
    expect(result.rejected).toEqual([]);
    Object.assign(ids, { fido: fido.id, ntag: nt.id, rid: rid.id, uid: uidCred.id });
  });

  function deps(overrides: Partial<TapDeps> = {}): TapDeps {
    return {
      vehicleId: VID,
      keyring,
      fidoCredentials: (): readonly CredentialStatus[] =>
        keyring.list().filter((s) => s.credential.kind === 'fido'),
      siteKey: async () => siteKey,
      maxProbes: 8,
      answerTimeoutMs: 1000,
      apduTimeoutMs: 1000,
      now: () => performance.now(),
      challenge: () => new Uint8Array(randomBytes(32)),
      ...overrides,
    };
  }

  it('proves an enrolled FIDO key with a rising counter and a measured answer time', async () => {
    const first = await proveTap(sessionOver(owner), deps());
    const second = await proveTap(sessionOver(owner), deps());
    expect(first).toMatchObject({ kind: 'fido', credentialId: ids.fido, proof: 'valid' });
    expect(second.counter).toBe((first.counter ?? 0) + 1);
    expect(first.answerMs).toBeGreaterThanOrEqual(0);
  });

  it('proves an NTAG 424 with its diversified key and a UID tag by its UID alone', async () => {
    expect(await proveTap(sessionOver(ntag), deps())).toMatchObject({
      kind: 'ntag424',
      credentialId: ids.ntag,
      proof: 'valid',
    });
    expect(await proveTap(sessionOver(tag), deps())).toMatchObject({
      kind: 'uid',
      credentialId: ids.uid,
      proof: 'none',
    });
  });

  it('calls a UID copy of a FIDO key or an NTAG 424 on a plain tag cloned', async () => {
    const magic = new SimulatedUidTag({ label: 'magic', model: 'ntag213', uid: owner.uid });
    expect(await proveTap(sessionOver(magic), deps())).toMatchObject({
      credentialId: ids.fido,
      proof: 'cloned',
    });
    const magic2 = new SimulatedUidTag({ label: 'magic2', model: 'ntag213', uid: ntag.uid });
    expect(await proveTap(sessionOver(magic2), deps())).toMatchObject({
      credentialId: ids.ntag,
      proof: 'cloned',
    });
  });

  it('calls another FIDO key showing the enrolled UID cloned (the key handle is not its own)', async () => {
    const other = new SimulatedFidoU2fKey({ label: 'other', uid: owner.uid });
    expect(await proveTap(sessionOver(other), deps())).toMatchObject({
      credentialId: ids.fido,
      proof: 'cloned',
    });
  });

  it('calls an NTAG 424 with the enrolled UID but not its key invalid (wrong AES key)', async () => {
    const blank = new SimulatedNtag424({ label: 'blank', uid: ntag.uid });
    expect(await proveTap(sessionOver(blank), deps())).toMatchObject({
      credentialId: ids.ntag,
      proof: 'invalid',
    });
  });

  it('reports a card that leaves mid-exchange and a reader deadline', async () => {
    expect(await proveTap(sessionOver(owner, { removeAfter: 1 }), deps())).toMatchObject({
      credentialId: ids.fido,
      proof: 'removed',
    });
    const slow = {
      ...sessionOver(owner),
      transceive: () => Promise.reject(new AgentError('reader_timeout')),
    };
    expect(await proveTap(slow, deps())).toMatchObject({ credentialId: ids.fido, proof: 'timeout' });
  });

  it('finds a FIDO key with a random UID by its key handle, check-only and bounded', async () => {
    expect(isRandomUid(randomUidKey.uid)).toBe(true);
    const session = sessionOver(randomUidKey);
    const proof = await proveTap(session, deps());
    expect(proof).toMatchObject({ kind: 'fido', credentialId: ids.rid, proof: 'valid' });
    // The probes are check-only (P1 07): exactly one signature was asked for.
    const signing = session.sent.filter(
      (ins, i) => ins === U2F_INS.AUTHENTICATE && session.p1s[i] === U2F_CONTROL.ENFORCE_PRESENCE,
    );
    expect(signing).toHaveLength(1);

    const bounded = sessionOver(new SimulatedFidoU2fKey({ label: 'stranger', uid: fromHex('08AABBCC') }));
    expect(await proveTap(bounded, deps({ maxProbes: 1 }))).toMatchObject({
      credentialId: undefined,
      proof: 'invalid',
    });
    const checks = bounded.sent.filter((ins) => ins === U2F_INS.AUTHENTICATE);
    expect(checks).toHaveLength(1);
  });

  it('reports an unknown card with no credential', async () => {
    const stranger = new SimulatedFidoU2fKey({ label: 'stranger' });
    expect(await proveTap(sessionOver(stranger), deps())).toMatchObject({
      kind: 'fido',
      credentialId: undefined,
      proof: 'invalid',
    });
    const blank = new SimulatedNtag424({ label: 'blank' });
    expect(await proveTap(sessionOver(blank), deps())).toMatchObject({
      credentialId: undefined,
      proof: 'none',
    });
    const unknownTag = new SimulatedUidTag({ label: 't', model: 'mifare-classic-1k' });
    const p = await proveTap(sessionOver(unknownTag), deps());
    expect(p).toMatchObject({ kind: 'uid', credentialId: undefined, proof: 'none' });
    expect(p.subject).toBe(`uid:${uidHash(VID, unknownTag.uid)}`);
  });

  it('never sees a site key it has not got as a valid NTAG 424', async () => {
    expect(await proveTap(sessionOver(ntag), deps({ siteKey: async () => undefined }))).toMatchObject({
      credentialId: ids.ntag,
      proof: 'reader_error',
    });
  });
});
