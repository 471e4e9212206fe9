import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { simKeyMessage, verifyP256 } from '../../../src/crypto/challenge.js';
import { b64url, fromB64url } from '../../../src/crypto/encoding.js';
import { keyCredentialId, publicJwkOf } from '../../../src/crypto/keys.js';
import type { ControlHandler } from '../../../src/host/control-server.js';
import { DEMO_KEYS, DEMO_TAGS } from '../../../src/sim/demo.js';
import { buildSimActions, validateActionArgs } from '../../../src/status/sim-actions.js';

const dir = mkdtempSync(join(tmpdir(), 'va-simactions-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const demoDir = { dir, keys: DEMO_KEYS, tags: DEMO_TAGS };
const driver = generateKeyPairSync('ec', { namedCurve: 'P-256' });
writeFileSync(join(dir, 'driver.pem'), driver.privateKey.export({ format: 'pem', type: 'pkcs8' }));

function recorder() {
  const calls: [string, Readonly<Record<string, unknown>>][] = [];
  const h = (
    name: string,
    reply: (args: Readonly<Record<string, unknown>>) => unknown,
  ): [string, ControlHandler] => [
    name,
    (args) => {
      calls.push([name, args]);
      return reply(args);
    },
  ];
  return { calls, h };
}

describe('sim action catalogue', () => {
  it('offers only the actions whose handlers exist', async () => {
    expect(await buildSimActions(new Map(), demoDir)).toEqual([]);
    const { h } = recorder();
    const ids = (await buildSimActions(new Map([h('sim.uid', () => ({}))]), demoDir)).map((a) => a.id);
    expect(ids).toEqual(['uid']);
    const all = await buildSimActions(
      new Map([
        h('sim.challenge', () => ({})),
        h('sim.answer', () => ({})),
        h('sim.uid', () => ({})),
        h('sim.phone.approach', () => ({})),
        h('vehicle', () => ({})),
        h('sim.card.list', () => [{ label: 'yubikey', kind: 'fido-u2f' }, { junk: true }]),
        h('sim.card.tap', () => ({})),
        h('sim.nfc.fault', () => ({})),
        h('status', () => ({})),
      ]),
      demoDir,
    );
    expect(all.map((a) => a.id)).toEqual(['present', 'uid', 'phone', 'approve-enrollment', 'tap', 'call']);
    const present = all.find((a) => a.id === 'present');
    // Only demo keys that exist as files are offered.
    expect(present?.params[0]?.choices?.map((c) => c.value)).toEqual(['driver']);
    expect(all.find((a) => a.id === 'tap')?.params[0]?.choices?.map((c) => c.value)).toEqual(['yubikey']);
    // Handlers without a form stay reachable through `call`, and only sim.* ones.
    expect(all.find((a) => a.id === 'call')?.handlers).toEqual(['sim.nfc.fault']);
  });

  it('validates arguments against choices and patterns before anything runs', async () => {
    const { h } = recorder();
    const [uid] = await buildSimActions(new Map([h('sim.uid', () => ({}))]), demoDir);
    if (!uid) throw new Error('no uid action');
    expect(validateActionArgs(uid, {})).toEqual({ uid: '04A2B3C4D5E6F7', intent: 'unlock' });
    expect(validateActionArgs(uid, { uid: '04aabbccdd', intent: 'lock' })).toEqual({
      uid: '04aabbccdd',
      intent: 'lock',
    });
    for (const bad of [
      { uid: 'zz' },
      { uid: '04AABBCC; rm -rf /' },
      { intent: 'open-sesame' },
      { uid: 4 },
      { extra: '1' },
    ]) {
      expect(() => validateActionArgs(uid, bad)).toThrow(expect.objectContaining({ code: 'bad_arguments' }));
    }
  });

  it('present: answers the challenge with a real P-256 signature over the sim message', async () => {
    const { calls, h } = recorder();
    const challenge = new Uint8Array(32).fill(7);
    const actions = await buildSimActions(
      new Map([
        h('sim.challenge', () => ({ challengeId: 'c1', challenge: b64url(challenge), vehicleId: 'VA-1' })),
        h('sim.answer', () => ({ granted: true })),
      ]),
      demoDir,
    );
    const present = actions.find((a) => a.id === 'present');
    if (!present) throw new Error('no present action');
    expect(await present.run(validateActionArgs(present, { key: 'driver', intent: 'lock' }))).toEqual({
      granted: true,
    });
    const answer = calls.find(([n]) => n === 'sim.answer')?.[1] ?? {};
    const id = keyCredentialId('phone', publicJwkOf(driver.publicKey));
    expect(answer).toMatchObject({
      challengeId: 'c1',
      credentialId: id,
      intent: 'lock',
      explicitIntent: true,
    });
    const message = simKeyMessage(challenge, 'VA-1', 'lock', true, id);
    expect(verifyP256(driver.publicKey, message, fromB64url(answer.signature as string))).toBe(true);

    await present.run(validateActionArgs(present, { key: 'driver', proof: 'tampered' }));
    const tampered = calls.filter(([n]) => n === 'sim.answer')[1]?.[1] ?? {};
    const message2 = simKeyMessage(challenge, 'VA-1', 'unlock', true, id);
    expect(verifyP256(driver.publicKey, message2, fromB64url(tampered.signature as string))).toBe(false);
  });

  it('approve-enrollment: brings the demo owner phone, which signs the pending request itself (E1)', async () => {
    const ownerDir = mkdtempSync(join(tmpdir(), 'va-simactions-owner-'));
    try {
      const owner = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      for (const [name, key] of [
        ['driver', driver],
        ['owner-phone', owner],
      ] as const) {
        writeFileSync(join(ownerDir, `${name}.pem`), key.privateKey.export({ format: 'pem', type: 'pkcs8' }));
      }
      const { calls, h } = recorder();
      const actions = await buildSimActions(
        new Map([
          h('sim.phone.approach', () => ({ outcome: 'enrollment', granted: true })),
          h('vehicle', () => ({ vehicleId: 'VA-1', vehicleKey: { kty: 'EC' } })),
        ]),
        { dir: ownerDir, keys: DEMO_KEYS, tags: DEMO_TAGS },
      );
      const approve = actions.find((a) => a.id === 'approve-enrollment');
      if (!approve) throw new Error('no approve-enrollment action');
      // The owner phone is offered first: the button needs no choice.
      expect(validateActionArgs(approve, {})).toEqual({ key: 'owner-phone' });
      expect(await approve.run(validateActionArgs(approve, {}))).toEqual({
        outcome: 'enrollment',
        granted: true,
      });
      const sent = calls.find(([n]) => n === 'sim.phone.approach')?.[1] ?? {};
      const { d } = owner.privateKey.export({ format: 'jwk' });
      // The phone holds the owner key and is told to approve: the signature is made by the simulated
      // phone over BLE, never by the page or its token.
      expect(sent).toMatchObject({
        secretKey: b64url(fromB64url(String(d))),
        pin: { vehicleId: 'VA-1' },
        approveEnrollment: true,
        explicitIntent: true,
      });
      // Without the approval flag the plain phone action approves nothing.
      const phone = actions.find((a) => a.id === 'phone');
      await phone?.run(validateActionArgs(phone, { key: 'owner-phone' }));
      expect(calls.filter(([n]) => n === 'sim.phone.approach')[1]?.[1]).not.toHaveProperty(
        'approveEnrollment',
      );
    } finally {
      rmSync(ownerDir, { recursive: true, force: true });
    }
  });

  it('approve-enrollment-fido: arms the reader, then taps the demo owner FIDO key, which signs at the reader', async () => {
    const { calls, h } = recorder();
    const actions = await buildSimActions(
      new Map([
        h('sim.card.list', () => [
          { label: 'fido-driver', kind: 'fido-u2f' },
          { label: 'fido-owner', kind: 'fido-u2f' },
          { label: 'tag-new', kind: 'uid' },
        ]),
        h('sim.card.tap', () => ({ approval: 'owner-fido', ok: true, state: 'approved' })),
        h('enroll.approval.arm', () => ({ state: 'armed' })),
      ]),
      demoDir,
    );
    const approve = actions.find((a) => a.id === 'approve-enrollment-fido');
    if (!approve) throw new Error('no approve-enrollment-fido action');
    // Only FIDO keys are offered, the demo owner's first.
    expect(approve.params[0]?.choices?.map((c) => c.value)).toEqual(['fido-driver', 'fido-owner']);
    expect(validateActionArgs(approve, {})).toEqual({ card: 'fido-owner' });
    expect(await approve.run(validateActionArgs(approve, {}))).toMatchObject({ ok: true, state: 'approved' });
    expect(calls.map(([n, a]) => [n, a])).toEqual([
      ['sim.card.list', {}],
      ['enroll.approval.arm', {}],
      ['sim.card.tap', { card: 'fido-owner' }],
    ]);
    // Without the arm handler (no BLE enrollment desk) the action is not offered.
    const without = await buildSimActions(
      new Map([h('sim.card.list', () => []), h('sim.card.tap', () => ({}))]),
      demoDir,
    );
    expect(without.map((a) => a.id)).not.toContain('approve-enrollment-fido');
  });

  it('call: passes a JSON object to the named sim handler and refuses anything else', async () => {
    const { calls, h } = recorder();
    const [call] = await buildSimActions(new Map([h('sim.ble.adapter', (a) => ({ echoed: a }))]), demoDir);
    if (!call) throw new Error('no call action');
    expect(
      await call.run(validateActionArgs(call, { handler: 'sim.ble.adapter', args: '{"powered":false}' })),
    ).toEqual({ echoed: { powered: false } });
    expect(calls).toEqual([['sim.ble.adapter', { powered: false }]]);
    await expect(call.run({ handler: 'sim.ble.adapter', args: '[1]' })).rejects.toMatchObject({
      code: 'bad_arguments',
    });
    await expect(call.run({ handler: 'sim.ble.adapter', args: '{' })).rejects.toMatchObject({
      code: 'bad_arguments',
    });
    expect(() => validateActionArgs(call, { handler: 'keys.add', args: '{}' })).toThrow(
      expect.objectContaining({ code: 'bad_arguments' }),
    );
    expect(calls).toHaveLength(1);
  });
});
