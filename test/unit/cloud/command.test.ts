import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Keyring } from '../../../src/access/keyring.js';
import {
  type CommandContext,
  type CommandPayload,
  type CommandResult,
  checkCommand,
  okResult,
  signCommand,
} from '../../../src/cloud/command.js';
import { b64url } from '../../../src/crypto/encoding.js';
import { signJws } from '../../../src/crypto/jws.js';
import { keyCredentialId, publicJwkOf } from '../../../src/crypto/keys.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  NOW_S,
  newKeyring,
  revokeBy,
  type TestKey,
  VID,
} from '../../helpers/keyring-fixtures.js';

const NOW_MS = NOW_S * 1000;
const LIMITS = { maxLifetimeS: 300, maxFutureS: 120 };

function fixture() {
  const root = makeRoot();
  const ring = newKeyring(root);
  const edOwner = makeKey('signer', 'owner', {}, 'Ed25519');
  const driver = makeKey('signer', 'driver');
  const service = makeKey('signer', 'service');
  const guest = makeKey('signer', 'guest', { notBefore: NOW_MS - 3_600_000, notAfter: NOW_MS + 3_600_000 });
  const lateGuest = makeKey('signer', 'guest', {
    notBefore: NOW_MS + 3_600_000,
    notAfter: NOW_MS + 7_200_000,
  });
  const pastGuest = makeKey('signer', 'guest', {
    notBefore: NOW_MS - 7_200_000,
    notAfter: NOW_MS - 3_600_000,
  });
  const revoked = makeKey('signer', 'driver');
  const stranger = makeKey('signer', 'owner');
  for (const k of [edOwner, driver, service, guest, lateGuest, pastGuest, revoked]) {
    ring.add(grantBy(root, k.credential));
  }
  ring.add(revokeBy(root, revoked.id));
  return { root, ring, edOwner, driver, service, guest, lateGuest, pastGuest, revoked, stranger };
}

function payload(over: Partial<CommandPayload> = {}): CommandPayload {
  return {
    vid: VID,
    cmd: 'unlock',
    args: {},
    jti: 'jti-1',
    iat: NOW_S - 5,
    exp: NOW_S + 25,
    ctr: 10,
    ...over,
  };
}

function ctx(ring: Keyring, over: Partial<CommandContext> = {}): CommandContext {
  return {
    vehicleId: VID,
    nowMs: NOW_MS,
    limits: LIMITS,
    keys: ring,
    retained: false,
    lastCounter: () => 9,
    previousResult: () => undefined,
    ...over,
  };
}

function sign(key: TestKey, over: Partial<CommandPayload> = {}): string {
  return signCommand(payload(over), key.privateKey, key.id);
}

function codeOf(compact: string, context: CommandContext): string {
  const r = checkCommand(compact, context);
  return r.verdict === 'accepted' ? 'accepted' : r.result.code;
}

function encodeRaw(header: unknown, body: unknown, sig = 'AAAA'): string {
  return `${b64url(Buffer.from(JSON.stringify(header)))}.${b64url(Buffer.from(JSON.stringify(body)))}.${sig}`;
}

describe('signed command checks', () => {
  const f = fixture();

  it('accepts an owner command signed with ES256 and with EdDSA, and a service lock', () => {
    for (const key of [f.root, f.edOwner]) {
      const r = checkCommand(sign(key), ctx(f.ring));
      expect(r.verdict).toBe('accepted');
      if (r.verdict === 'accepted')
        expect(r.command).toMatchObject({ kid: key.id, role: 'owner', cmd: 'unlock', jti: 'jti-1', ctr: 10 });
    }
    expect(codeOf(sign(f.service, { cmd: 'lock' }), ctx(f.ring))).toBe('accepted');
    expect(codeOf(sign(f.guest), ctx(f.ring))).toBe('accepted');
  });

  it.each<[string, () => string, string]>([
    ['not a JWS at all', () => 'hello', 'jws_malformed'],
    ['two parts', () => 'a.b', 'jws_malformed'],
    ['alg none', () => encodeRaw({ alg: 'none', kid: 'k' }, payload()), 'jws_malformed'],
    ['another typ', () => signJws(payload(), f.root.privateKey, f.root.id, 'JWT'), 'jws_malformed'],
    [
      'an unknown field',
      () => signJws({ ...payload(), extra: 1 }, f.root.privateKey, f.root.id),
      'jws_malformed',
    ],
    [
      'a missing jti',
      () => signJws({ ...payload(), jti: undefined }, f.root.privateKey, f.root.id),
      'jws_malformed',
    ],
    ['exp before iat', () => sign(f.root, { iat: NOW_S, exp: NOW_S - 1 }), 'jws_malformed'],
    ['a fractional counter', () => sign(f.root, { ctr: 1.5 }), 'jws_malformed'],
    ['an unknown cmd', () => sign(f.root, { cmd: 'open.sunroof' }), 'unknown_command'],
    ['args on unlock', () => sign(f.root, { args: { door: 'all' } }), 'bad_arguments'],
    ['keys.grant without ops', () => sign(f.root, { cmd: 'keys.grant', args: {} }), 'bad_arguments'],
    ['keys.list with limit 0', () => sign(f.root, { cmd: 'keys.list', args: { limit: 0 } }), 'bad_arguments'],
    [
      'keys.list over the most a result holds',
      () => sign(f.root, { cmd: 'keys.list', args: { limit: 201 } }),
      'bad_arguments',
    ],
    [
      'keys.list after a number',
      () => sign(f.root, { cmd: 'keys.list', args: { after: 7 } }),
      'bad_arguments',
    ],
    [
      'keys.list with other args',
      () => sign(f.root, { cmd: 'keys.list', args: { ids: [] } }),
      'bad_arguments',
    ],
    [
      'a grant riding inside keys.revoke',
      () =>
        sign(f.service, {
          cmd: 'keys.revoke',
          args: { ops: [grantBy(f.root, makeKey('phone', 'driver').credential)] },
        }),
      'bad_arguments',
    ],
    ['another vehicle', () => sign(f.root, { vid: 'VIN-OTHER' }), 'wrong_vehicle'],
    ['a key the keyring does not know', () => sign(f.stranger), 'unknown_kid'],
    ['a revoked key', () => sign(f.revoked), 'revoked_kid'],
    ['a guest before its window', () => sign(f.lateGuest), 'not_yet_valid'],
    ['a guest after its window', () => sign(f.pastGuest), 'expired'],
    [
      'a driver adding keys',
      () =>
        sign(f.driver, {
          cmd: 'keys.grant',
          args: { ops: [grantBy(f.root, makeKey('phone', 'guest').credential)] },
        }),
      'role_not_allowed',
    ],
    [
      'a service key adding keys',
      () =>
        sign(f.service, {
          cmd: 'keys.grant',
          args: { ops: [grantBy(f.root, makeKey('phone', 'guest').credential)] },
        }),
      'role_not_allowed',
    ],
    ['a guest listing keys', () => sign(f.guest, { cmd: 'keys.list' }), 'role_not_allowed'],
    [
      'a signature by another key under the owner kid',
      () => signCommand(payload(), f.stranger.privateKey, f.root.id),
      'bad_signature',
    ],
    [
      'a payload changed after signing',
      () => {
        const [h, , s] = sign(f.root).split('.');
        return `${h}.${b64url(Buffer.from(JSON.stringify(payload({ cmd: 'lock' }))))}.${s}`;
      },
      'bad_signature',
    ],
    ['an exp in the past', () => sign(f.root, { iat: NOW_S - 60, exp: NOW_S - 30 }), 'command_expired'],
    ['exp exactly now', () => sign(f.root, { iat: NOW_S - 30, exp: NOW_S }), 'command_expired'],
    [
      'a lifetime over the limit',
      () => sign(f.root, { iat: NOW_S - 10, exp: NOW_S + 291 }),
      'lifetime_too_long',
    ],
    [
      'a driver iat far ahead',
      () => sign(f.driver, { iat: NOW_S + 600, exp: NOW_S + 630 }),
      'command_not_yet_valid',
    ],
    ['a counter equal to the last', () => sign(f.root, { ctr: 9 }), 'counter_replay'],
    ['a counter below the last', () => sign(f.root, { ctr: 2 }), 'counter_replay'],
  ])('refuses %s', (_name, build, code) => {
    expect(codeOf(build(), ctx(f.ring))).toBe(code);
  });

  it('refuses a command delivered with the retain flag, after every other check', () => {
    expect(codeOf(sign(f.root), ctx(f.ring, { retained: true }))).toBe('retained_command');
  });

  it('accepts a first command from a key with no counter yet, and the owner dating iat ahead', () => {
    expect(codeOf(sign(f.root, { ctr: 0 }), ctx(f.ring, { lastCounter: () => undefined }))).toBe('accepted');
    expect(codeOf(sign(f.root, { iat: NOW_S + 86_400, exp: NOW_S + 86_430 }), ctx(f.ring))).toBe('accepted');
  });

  it('reports the first failing check in the documented order', () => {
    // wrong vehicle beats a bad signature
    expect(codeOf(signCommand(payload({ vid: 'X-1' }), f.stranger.privateKey, f.root.id), ctx(f.ring))).toBe(
      'wrong_vehicle',
    );
    // role beats signature
    expect(
      codeOf(signCommand(payload({ cmd: 'keys.list' }), f.stranger.privateKey, f.guest.id), ctx(f.ring)),
    ).toBe('role_not_allowed');
    // for a jti not seen yet, expiry and counter come before the signature (cheap refusals of
    // stale or replayed forgeries); a fresh forgery is refused by its signature
    expect(
      codeOf(signCommand(payload({ iat: 1, exp: 2 }), f.stranger.privateKey, f.root.id), ctx(f.ring)),
    ).toBe('command_expired');
    expect(codeOf(signCommand(payload({ ctr: 1 }), f.stranger.privateKey, f.root.id), ctx(f.ring))).toBe(
      'counter_replay',
    );
    expect(codeOf(signCommand(payload(), f.stranger.privateKey, f.root.id), ctx(f.ring))).toBe(
      'bad_signature',
    );
    // a remembered jti goes to the signature first: a forgery of it is a bad signature
    const remembered = { previousResult: () => okResult('jti-1', 'unlock done') };
    expect(
      codeOf(signCommand(payload({ ctr: 1 }), f.stranger.privateKey, f.root.id), ctx(f.ring, remembered)),
    ).toBe('bad_signature');
    // expiry beats the counter, the counter beats the retain flag
    expect(codeOf(sign(f.root, { iat: 1, exp: 2, ctr: 1 }), ctx(f.ring))).toBe('command_expired');
    expect(codeOf(sign(f.root, { ctr: 1 }), ctx(f.ring, { retained: true }))).toBe('counter_replay');
  });

  it('gives a genuine signer the remembered result for a jti it already used, whatever else changed', () => {
    const earlier: CommandResult = okResult('jti-1', 'unlock done', { lock: 'unlocked' });
    const seen = (kid: string, jti: string) => (kid === f.root.id && jti === 'jti-1' ? earlier : undefined);
    // The redelivered message: its counter is no longer above the last, it may even have expired.
    const again = checkCommand(
      sign(f.root, { ctr: 9, iat: NOW_S - 60, exp: NOW_S - 30 }),
      ctx(f.ring, { previousResult: seen }),
    );
    expect(again).toEqual({ verdict: 'duplicate', result: earlier, kid: f.root.id });
    // Another signer cannot reach that entry, and a forged signature never does.
    expect(codeOf(sign(f.edOwner, { ctr: 9 }), ctx(f.ring, { previousResult: seen }))).toBe('counter_replay');
    expect(
      codeOf(signCommand(payload(), f.stranger.privateKey, f.root.id), ctx(f.ring, { previousResult: seen })),
    ).toBe('bad_signature');
  });

  it('echoes the jti of a rejected command when it can be read, and null when not', () => {
    const r = checkCommand(sign(f.stranger, { jti: 'corr-7' }), ctx(f.ring));
    expect(r.verdict === 'rejected' && r.result).toMatchObject({
      jti: 'corr-7',
      status: 'error',
      code: 'unknown_kid',
    });
    const g = checkCommand('garbage', ctx(f.ring));
    expect(g.verdict === 'rejected' && g.result.jti).toBe(null);
  });
});

describe('the command vector in docs/mqtt.md', () => {
  // RFC 8037 appendix A.1 test key: anyone can reproduce the signature (Ed25519 is deterministic).
  const key = createPrivateKey({
    key: {
      kty: 'OKP',
      crv: 'Ed25519',
      d: 'nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A',
      x: '11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo',
    },
    format: 'jwk',
  });
  const kid = keyCredentialId('signer', publicJwkOf(key));
  const vector =
    'eyJhbGciOiJFZERTQSIsImtpZCI6InNpZ25lcjowLXR0TXlZRXdWcVRYRDZ4N2VlODJnIiwidHlwIjoidmVoaWNsZS1hZ2VudC5jb21tYW5kIn0.' +
    'eyJ2aWQiOiJWQS1ET0NTLUVYQU1QTEUiLCJjbWQiOiJ1bmxvY2siLCJhcmdzIjp7fSwianRpIjoiZG9jLWV4YW1wbGUtMSIsImlhdCI6MTc2NzIyNTYwMCwiZXhwIjoxNzY3MjI1NjMwLCJjdHIiOjF9.' +
    'VDk728UqhXXjs1M58hSgl6OOEve8f9h1rwDIAJ1jOSfY3Qs4RanNW5gsFbqjkGvVE6lCvQiWibHdRvbdVoZvBg';

  it('is what signCommand makes, appears in the docs, and verifies for the docs vehicle', () => {
    expect(kid).toBe('signer:0-ttMyYEwVqTXD6x7ee82g');
    const signed = signCommand(
      {
        vid: 'VA-DOCS-EXAMPLE',
        cmd: 'unlock',
        args: {},
        jti: 'doc-example-1',
        iat: 1767225600,
        exp: 1767225630,
        ctr: 1,
      },
      key,
      kid,
    );
    expect(signed).toBe(vector);
    const doc = readFileSync(new URL('../../../docs/mqtt.md', import.meta.url), 'utf8').replace(/\s+/g, '');
    expect(doc).toContain(vector);
    const ring = new Keyring({ vehicleId: 'VA-DOCS-EXAMPLE', rootKey: publicJwkOf(key) });
    const r = checkCommand(vector, {
      vehicleId: 'VA-DOCS-EXAMPLE',
      nowMs: 1767225610_000,
      limits: LIMITS,
      keys: ring,
      retained: false,
      lastCounter: () => undefined,
      previousResult: () => undefined,
    });
    expect(r.verdict).toBe('accepted');
  });
});
