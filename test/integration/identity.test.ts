import { createHash, createPrivateKey, createPublicKey, sign, verify } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli, runCliJson } from '../helpers/agent-process.js';

/** `vehicle-agent identity`: what a phone pins, checked against the state and the formula, not the code. */
const dir = mkdtempSync(join(tmpdir(), 'va-identity-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const stateDir = join(dir, 'state');

interface View {
  vehicleId: string;
  publicKey: { kty: string; crv: string; x: string; y: string };
  publicKeyRawHex: string;
  publicKeyRawB64url: string;
  publicKeyPem: string;
  fingerprint: string;
  ownerRootId: string;
  pin: { vehicleId: string; publicKey: unknown };
}

describe('vehicle-agent identity', () => {
  const init = runCliJson<{ vehicleId: string; vehicleKeyId: string; ownerRootId: string }>([
    'init',
    '--demo',
    '--vehicle-id',
    'VA-IDENTITY-TEST',
    '--state-dir',
    stateDir,
  ]);

  it('prints the vehicle id, its public key in three forms and a fingerprint made as documented', () => {
    expect(init.code, init.stderr).toBe(0);
    const { code, value: v } = runCliJson<View>(['identity', '--state-dir', stateDir]);
    expect(code).toBe(0);
    expect(v.vehicleId).toBe('VA-IDENTITY-TEST');
    expect(v.fingerprint).toBe(init.value.vehicleKeyId);
    expect(v.ownerRootId).toBe(init.value.ownerRootId);
    expect(v.pin).toEqual({ vehicleId: v.vehicleId, publicKey: v.publicKey });

    // The three forms are one key: the raw point is 04 ‖ x ‖ y of the JWK, the PEM imports to it.
    const raw = Buffer.from(v.publicKeyRawHex, 'hex');
    expect(raw).toEqual(
      Buffer.concat([
        Buffer.of(4),
        Buffer.from(v.publicKey.x, 'base64url'),
        Buffer.from(v.publicKey.y, 'base64url'),
      ]),
    );
    expect(Buffer.from(v.publicKeyRawB64url, 'base64url')).toEqual(raw);
    expect(createPublicKey(v.publicKeyPem).export({ format: 'jwk' })).toEqual({
      kty: 'EC',
      crv: 'P-256',
      x: v.publicKey.x,
      y: v.publicKey.y,
    });

    // The fingerprint as the help and docs define it, computed here from the printed raw point.
    const digest = createHash('sha256').update('vehicle-agent/credential/v1/signer/').update(raw).digest();
    expect(v.fingerprint).toBe(`signer:${digest.subarray(0, 16).toString('base64url')}`);

    // It is the vehicle's own key: what the vehicle key file signs verifies under the printed key.
    const vehicleKey = createPrivateKey(readFileSync(join(stateDir, 'vehicle-key.pem')));
    const message = Buffer.from('a phone checks the vehicle with this key');
    expect(
      verify('sha256', message, createPublicKey(v.publicKeyPem), sign('sha256', message, vehicleKey)),
    ).toBe(true);
  });

  it('prints the same for people, with the fingerprint and the pin line', () => {
    const json = runCliJson<View>(['identity', '--state-dir', stateDir]).value;
    const text = runCli(['identity', '--state-dir', stateDir]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain(`vehicle id:   ${json.vehicleId}`);
    expect(text.stdout).toContain(`fingerprint:  ${json.fingerprint}`);
    expect(text.stdout).toContain(json.publicKeyRawHex);
    expect(text.stdout).toContain(`pin (JSON for the phone app): ${JSON.stringify(json.pin)}`);
  });

  it('only reads: a missing mirror is not rebuilt behind a running agent', () => {
    const mirror = join(stateDir, 'vehicle.mirror.json');
    unlinkSync(mirror);
    const before = readdirSync(stateDir).map((f) => [f, statSync(join(stateDir, f)).mtimeMs]);
    const r = runCli(['identity', '--state-dir', stateDir]);
    expect(r.code, r.stderr).toBe(0);
    expect(existsSync(mirror)).toBe(false);
    expect(readdirSync(stateDir).map((f) => [f, statSync(join(stateDir, f)).mtimeMs])).toEqual(before);
  });

  it('says how to provision when the state directory holds no vehicle', () => {
    const r = runCli(['identity', '--state-dir', join(dir, 'empty')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('[not_provisioned]');
    expect(r.stderr).toContain('vehicle-agent init');
  });
});
