import { generateKeyPairSync } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { b64url } from '../../../src/crypto/encoding.js';
import { keyCredentialId, publicJwkOf } from '../../../src/crypto/keys.js';
import {
  ARG_PARSERS,
  COMMAND_NAMES,
  type CommandName,
  isCommandName,
  parseArgs,
  type WireArgs,
} from '../../../src/host/control-api.js';
import {
  coreControlHandlers,
  simLimitHandlers,
  simReaderHandlers,
  testHookHandlers,
} from '../../../src/host/control-handlers.js';

const answer = { challengeId: 'c', credentialId: 'k', explicitIntent: true, signature: 's' };
const phoneKey = publicJwkOf(generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey);
const phoneId = keyCredentialId('phone', phoneKey);
const enroll = { kind: 'phone', publicKey: phoneKey, role: 'driver' };
const secret = new Uint8Array(32).fill(7);
const approach = { secretKey: b64url(secret), pin: { vehicleId: 'V', publicKey: phoneKey } };
const approachDefaults = {
  secretKey: secret,
  pin: { vehicleId: 'V', publicKey: phoneKey },
  intent: 'unlock',
  explicitIntent: true,
  fault: undefined,
  answerDelayMs: 0,
  approveEnrollment: false,
  enrollmentFor: undefined,
  rssi: -50,
  timeoutMs: 10_000,
};
const cardRequest = { kind: 'fido', role: 'guest', method: 'owner-fido' };

/** Per command with arguments: good cases (wire args -> parsed) and bad ones (-> message). */
const CASES: Partial<Record<CommandName, { good: [WireArgs, unknown][]; bad: [WireArgs, unknown][] }>> = {
  'keys.add': {
    good: [[{ ops: ['a.b.c'] }, { ops: ['a.b.c'] }]],
    bad: [
      [{}, 'ops must be a non-empty list of JWS strings'],
      [{ ops: [] }, 'ops must be a non-empty list of JWS strings'],
      [{ ops: 'a.b.c' }, 'ops must be a non-empty list of JWS strings'],
      [{ ops: ['a', 5] }, 'ops must be a non-empty list of JWS strings'],
      [{ ops: Array.from({ length: 10_001 }, () => 'x') }, 'ops must be a non-empty list of JWS strings'],
    ],
  },
  'keys.list': {
    good: [
      [{}, { limit: 500 }],
      [
        { limit: 2000, after: phoneId },
        { limit: 2000, after: phoneId },
      ],
      [{ after: 'phone:removed' }, { limit: 500, after: 'phone:removed' }],
      [{ ids: [phoneId, 'phone:none'] }, { ids: [phoneId, 'phone:none'] }],
    ],
    bad: [
      [{ ids: [] }, 'ids must be a list of 1 to 1000 credential ids'],
      [{ ids: phoneId }, 'ids must be a list of 1 to 1000 credential ids'],
      [{ ids: [phoneId, 7] }, 'ids must be a list of 1 to 1000 credential ids'],
      [
        { ids: Array.from({ length: 1001 }, () => phoneId) },
        'ids must be a list of 1 to 1000 credential ids',
      ],
      [{ limit: 0 }, 'limit must be a whole number from 1 to 2000'],
      [{ limit: 2001 }, 'limit must be a whole number from 1 to 2000'],
      [{ limit: 1.5 }, 'limit must be a whole number from 1 to 2000'],
      [{ limit: '10' }, 'limit must be a whole number from 1 to 2000'],
      [{ after: 5 }, 'after must be a credential id (the next of the page before)'],
      [{ after: '' }, 'after must be a credential id (the next of the page before)'],
      [{ ids: [phoneId], limit: 5 }, 'keys.list takes ids or limit/after, not both'],
    ],
  },
  'audit.tail': {
    good: [
      [{}, { n: 20 }],
      [{ n: 5 }, { n: 5 }],
      [{ n: 0 }, { n: 1 }],
      [{ n: 1e9 }, { n: 100 }],
      [{ n: '5' }, { n: 20 }],
    ],
    bad: [],
  },
  'sim.answer': {
    good: [
      [answer, { ...answer, intent: 'unlock' }],
      [
        { ...answer, intent: 'lock', delayMs: 30 },
        { ...answer, intent: 'lock', delayMs: 30 },
      ],
    ],
    bad: [
      [{ ...answer, challengeId: undefined }, 'challengeId, credentialId and signature must be strings'],
      [{ ...answer, credentialId: 7 }, 'challengeId, credentialId and signature must be strings'],
      [{ ...answer, signature: null }, 'challengeId, credentialId and signature must be strings'],
      [{ ...answer, explicitIntent: 'yes' }, 'explicitIntent must be a boolean'],
      [{ ...answer, intent: 'open' }, 'intent must be unlock, lock or toggle'],
      [{ ...answer, delayMs: -1 }, 'delayMs must be a non-negative integer'],
      [{ ...answer, delayMs: 1.5 }, 'delayMs must be a non-negative integer'],
      [{ ...answer, delayMs: '10' }, 'delayMs must be a non-negative integer'],
    ],
  },
  'sim.uid': {
    good: [
      [{ uid: '04A2' }, { uid: '04A2', intent: 'unlock' }],
      [
        { uid: '04A2', intent: 'toggle' },
        { uid: '04A2', intent: 'toggle' },
      ],
    ],
    bad: [
      [{}, 'uid must be a hex string'],
      [{ uid: 4 }, 'uid must be a hex string'],
      [{ uid: '04', intent: 5 }, 'intent must be unlock, lock or toggle'],
    ],
  },
  'sim.ble.adapter': {
    good: [[{ powered: false, extra: 1 }, { powered: false }]],
    bad: [
      [{}, 'powered must be a boolean'],
      [{ powered: 'off' }, 'powered must be a boolean'],
    ],
  },
  'sim.ble.bluez': {
    good: [[{ owned: true }, { owned: true }]],
    bad: [
      [{}, 'owned must be a boolean'],
      [{ owned: 1 }, 'owned must be a boolean'],
    ],
  },
  'sim.central.read': {
    good: [
      [
        { device: '/org/bluez/hci0/dev_4A_11_22_33_44_55', characteristic: 'result' },
        { device: '/org/bluez/hci0/dev_4A_11_22_33_44_55', characteristic: 'result' },
      ],
    ],
    bad: [
      [{ characteristic: 'challenge' }, 'device must be a central from sim.central.connect'],
      [
        { device: '/org/bluez/hci0/dev_4A_11_22_33_44_55/../x', characteristic: 'challenge' },
        'device must be a central from sim.central.connect',
      ],
      [
        { device: '/org/bluez/hci0/dev_4A_11_22_33_44_55', characteristic: 'answer' },
        'characteristic must be challenge or result',
      ],
    ],
  },
  'sim.central.write': {
    good: [
      [
        { device: '/org/bluez/hci0/dev_4A_11_22_33_44_55', characteristic: 'answer', hex: '0222ff' },
        {
          device: '/org/bluez/hci0/dev_4A_11_22_33_44_55',
          characteristic: 'answer',
          bytes: Uint8Array.from([0x02, 0x22, 0xff]),
        },
      ],
    ],
    bad: [
      [
        { device: '/org/bluez/hci0/dev_4A_11_22_33_44_55', characteristic: 'challenge', hex: '00' },
        'characteristic must be answer',
      ],
      [
        { device: '/org/bluez/hci0/dev_4A_11_22_33_44_55', characteristic: 'answer', hex: '0g' },
        'hex must be up to 512 bytes in hex',
      ],
      [
        { device: '/org/bluez/hci0/dev_4A_11_22_33_44_55', characteristic: 'answer', hex: '0'.repeat(1026) },
        'hex must be up to 512 bytes in hex',
      ],
    ],
  },
  'sim.central.disconnect': {
    good: [
      [
        { device: '/org/bluez/hci1/dev_4A_11_22_33_44_55' },
        { device: '/org/bluez/hci1/dev_4A_11_22_33_44_55' },
      ],
    ],
    bad: [[{ device: 7 }, 'device must be a central from sim.central.connect']],
  },
  'enroll.card.authorise': {
    good: [[{ jws: 'a.b.c' }, { jws: 'a.b.c' }]],
    bad: [
      [{}, 'jws must be a compact JWS'],
      [{ jws: ['a.b.c'] }, 'jws must be a compact JWS'],
    ],
  },
  'enroll.open': {
    good: [
      [
        enroll,
        { credential: { id: phoneId, kind: 'phone', role: 'driver', publicKey: phoneKey, options: {} } },
      ],
      [
        { ...enroll, name: 'Ann', passive: true, windowMs: 600_000 },
        {
          credential: {
            id: phoneId,
            kind: 'phone',
            role: 'driver',
            name: 'Ann',
            publicKey: phoneKey,
            options: { passive: true },
          },
          windowMs: 600_000,
        },
      ],
    ],
    bad: [
      [{ ...enroll, kind: 'fido' }, 'kind must be phone'],
      [{ ...enroll, role: 'admin' }, 'role must be one of owner, driver, guest, service'],
      [{ ...enroll, passive: 'yes' }, 'passive must be a boolean'],
      [{ ...enroll, publicKey: undefined }, 'credential publicKey: a phone credential needs publicKey'],
      [
        { ...enroll, publicKey: { kty: 'RSA' } },
        'credential publicKey: must be a P-256 (EC) or Ed25519 (OKP) public JWK',
      ],
      [
        { ...enroll, notAfter: 'soon' },
        'credential notAfter: must be an ISO 8601 date-time with a zone, e.g. 2026-12-24T18:00:00Z',
      ],
      [{ ...enroll, windowMs: 0 }, 'windowMs must be an integer 1..600000'],
      [{ ...enroll, windowMs: 600_001 }, 'windowMs must be an integer 1..600000'],
      [{ ...enroll, windowMs: '60000' }, 'windowMs must be an integer 1..600000'],
    ],
  },
  'sim.phone.approach': {
    good: [
      [approach, approachDefaults],
      [
        {
          ...approach,
          intent: 'lock',
          explicitIntent: false,
          fault: 'vanish',
          answerDelayMs: 60_000,
          approveEnrollment: true,
          enrollmentFor: 'phone:x',
          rssi: -127,
          timeoutMs: 100,
        },
        {
          ...approachDefaults,
          intent: 'lock',
          explicitIntent: false,
          fault: 'vanish',
          answerDelayMs: 60_000,
          approveEnrollment: true,
          enrollmentFor: 'phone:x',
          rssi: -127,
          timeoutMs: 100,
        },
      ],
      [{ ...approach, fault: null }, approachDefaults],
    ],
    bad: [
      [{ ...approach, secretKey: undefined }, 'secretKey must be a base64url 32-byte P-256 scalar'],
      [
        { ...approach, secretKey: b64url(new Uint8Array(31)) },
        'secretKey must be a base64url 32-byte P-256 scalar',
      ],
      [{ ...approach, secretKey: '!!' }, 'secretKey must be a base64url 32-byte P-256 scalar'],
      [{ ...approach, pin: undefined }, 'pin must be {vehicleId, publicKey}'],
      [{ ...approach, pin: { vehicleId: 'V' } }, 'pin must be {vehicleId, publicKey}'],
      [{ ...approach, pin: { vehicleId: 'V', publicKey: 'k' } }, 'pin must be {vehicleId, publicKey}'],
      [{ ...approach, pin: { vehicleId: 7, publicKey: phoneKey } }, 'pin must be {vehicleId, publicKey}'],
      [{ ...approach, intent: 'open' }, 'intent must be one of unlock, lock, toggle'],
      [
        { ...approach, fault: 'bogus' },
        expect.stringMatching(/^fault must be one of wrong_key, .*, vanish$/),
      ],
      [{ ...approach, answerDelayMs: -1 }, 'answerDelayMs must be an integer 0..60000'],
      [{ ...approach, rssi: 21 }, 'rssi must be an integer -127..20'],
      [{ ...approach, timeoutMs: 99 }, 'timeoutMs must be an integer 100..120000'],
      [{ ...approach, enrollmentFor: 5 }, 'enrollmentFor must be a credential id'],
    ],
  },
  'sim.ble.flood': {
    good: [
      [{ action: 'stop', mode: 'loud' }, { action: 'stop' }],
      [{ action: 'start' }, { action: 'start', mode: 'garbage', devices: 16 }],
      [
        { action: 'start', mode: 'hang', devices: 4 },
        { action: 'start', mode: 'hang', devices: 4 },
      ],
    ],
    bad: [
      [{}, 'action must be start or stop'],
      [{ action: 'pause' }, 'action must be start or stop'],
      [{ action: 'start', mode: 'loud' }, 'mode must be one of garbage, silent, hang'],
      [{ action: 'start', devices: '4' }, 'devices must be a number'],
    ],
  },
  'enroll.card.request': {
    good: [
      [cardRequest, cardRequest],
      [
        { ...cardRequest, name: 'key', notBefore: '2026-01-01T00:00:00Z' },
        { ...cardRequest, name: 'key', notBefore: '2026-01-01T00:00:00Z' },
      ],
    ],
    bad: [
      [{ ...cardRequest, kind: 'phone' }, 'kind must be one of fido, ntag424, uid'],
      [{ ...cardRequest, role: 'root' }, 'role must be one of owner, driver, guest, service'],
      [{ ...cardRequest, method: 'pin' }, 'method must be owner-key or owner-fido'],
      [{ ...cardRequest, name: 5 }, 'name must be a string'],
      [{ ...cardRequest, notAfter: 0 }, 'notAfter must be a string'],
    ],
  },
  'sim.card.add': {
    good: [
      [
        { kind: 'uid', label: 't', model: 'mifare-classic-1k' },
        { kind: 'uid', label: 't', model: 'mifare-classic-1k' },
      ],
      [
        { kind: 'fido', label: 'k' },
        { kind: 'fido', label: 'k' },
      ],
    ],
    bad: [
      [{ kind: 'nfc', label: 't' }, 'kind must be fido, ntag424 or uid'],
      [{ kind: 'uid' }, 'label must be a string'],
      [{ kind: 'uid', label: 't', model: 'ntag215' }, 'model must be ntag213 or mifare-classic-1k'],
    ],
  },
  'sim.card.tap': {
    good: [
      [{ card: 'a' }, { card: 'a' }],
      [
        {
          card: 'a',
          removeAfterMs: 0,
          slowMs: 800,
          counter: 0,
          timeoutMs: 5000,
          cloneOf: 'b',
          fault: 'nack',
        },
        {
          card: 'a',
          removeAfterMs: 0,
          slowMs: 800,
          counter: 0,
          timeoutMs: 5000,
          cloneOf: 'b',
          fault: 'nack',
        },
      ],
    ],
    bad: [
      [{}, 'card must be a card label'],
      [{ card: 'a', removeAfterMs: 60_001 }, 'removeAfterMs must be an integer 0..60000'],
      [{ card: 'a', slowMs: -1 }, 'slowMs must be an integer 0..60000'],
      [{ card: 'a', counter: 2 ** 32 }, 'counter must be an integer 0..4294967295'],
      [{ card: 'a', timeoutMs: 1.5 }, 'timeoutMs must be an integer 0..120000'],
      [{ card: 'a', cloneOf: 1 }, 'cloneOf must be a card label'],
      [
        { card: 'a', fault: 'melt' },
        'fault must be one of garbage, lose-ack, nack, error-frame, corrupt-response, remove-during-exchange',
      ],
    ],
  },
  'sim.nfc.fault': {
    good: [
      [{ kind: 'wedge' }, { kind: 'wedge', recoverOn: 'wakeup' }],
      [
        { kind: 'wedge', recoverOn: 'manual' },
        { kind: 'wedge', recoverOn: 'manual' },
      ],
      [{ kind: 'unwedge' }, { kind: 'unwedge' }],
      [{ kind: 'lose-ack' }, { kind: 'lose-ack' }],
    ],
    bad: [
      [
        {},
        'kind must be wedge, unwedge or one of garbage, lose-ack, nack, error-frame, corrupt-response, remove-during-exchange',
      ],
      [
        { kind: 'melt' },
        'kind must be wedge, unwedge or one of garbage, lose-ack, nack, error-frame, corrupt-response, remove-during-exchange',
      ],
    ],
  },
  'test.audit': {
    good: [
      [{}, { count: 1, bytes: 0 }],
      [
        { count: 2.7, bytes: 10 },
        { count: 2, bytes: 10 },
      ],
      [
        { count: 1e9, bytes: 1e9 },
        { count: 10_000, bytes: 4096 },
      ],
    ],
    bad: [],
  },
  'test.stall': {
    good: [
      [{}, { ms: 1000 }],
      [{ ms: -5 }, { ms: 0 }],
      [{ ms: 1e9 }, { ms: 30_000 }],
    ],
    bad: [],
  },
};

describe('control command table', () => {
  for (const name of COMMAND_NAMES) {
    const cases = CASES[name];
    if (cases === undefined) continue;
    for (const [args, parsed] of cases.good) {
      it(`${name} accepts ${JSON.stringify(args).slice(0, 60)}`, () => {
        expect(parseArgs(name, args)).toEqual(parsed);
      });
    }
    for (const [args, message] of cases.bad) {
      it(`${name} refuses ${JSON.stringify(args).slice(0, 60)}`, () => {
        expect(() => parseArgs(name, args)).toThrow(
          expect.objectContaining({ code: 'bad_arguments', message }),
        );
      });
    }
  }

  it('commands without arguments ignore whatever they are sent', () => {
    for (const name of ['status', 'vehicle', 'sim.challenge', 'test.crash'] as const) {
      expect(parseArgs(name, { junk: 1 })).toEqual({});
    }
    expect(parseArgs('keys.list', { junk: 1 })).toEqual({ limit: 500 });
  });

  it('knows exactly its own names', () => {
    expect(COMMAND_NAMES).toEqual(Object.keys(ARG_PARSERS));
    expect(isCommandName('status')).toBe(true);
    expect(isCommandName('toString')).toBe(false);
    expect(isCommandName('__proto__')).toBe(false);
    expect(isCommandName('nope')).toBe(false);
  });
});

describe('handlers resolve through the table', () => {
  const lock = { state: () => 'locked' as const };
  const agent = { status: () => ({}), addKeyringOps: async () => ({}) };

  it('every handler the host builds is a table command, and refuses bad arguments before running', async () => {
    let added = 0;
    const core = coreControlHandlers({
      // Only the members these handlers use: the test is about names and argument checks.
      agent: { ...agent, addKeyringOps: async () => ({ added: ++added }) } as never,
      keyring: { list: () => [] } as never,
      identity: { vehicleId: 'V', rootId: 'r', vehicleKeyId: 'k', vehicleKey: {} } as never,
      audit: { recent: () => [] },
      relayStatus: () => ({}),
    });
    const sim = simReaderHandlers(
      {
        issueChallenge: () => ({ challengeId: 'c', challenge: 'x', vehicleId: 'V' }),
        answer: async () => ({ granted: false, code: 'unknown_credential' }) as never,
        presentUid: async () => ({ granted: false, code: 'unknown_credential' }) as never,
      },
      lock as never,
    );
    const hooks = testHookHandlers({ VEHICLE_AGENT_TEST_HOOKS: '1' });
    const limits = simLimitHandlers(agent as never);
    const names = [...core.keys(), ...sim.keys(), ...hooks.keys(), ...limits.keys()];
    expect(names.filter((n) => !isCommandName(n))).toEqual([]);
    expect(names.sort()).toEqual(
      ['status', 'vehicle', 'keys.list', 'keys.add', 'audit.tail', 'limits']
        .concat(
          ['sim.challenge', 'sim.answer', 'sim.uid', 'sim.limits.clear'],
          ['test.audit', 'test.crash', 'test.stall'],
        )
        .sort(),
    );
    await expect(async () => await core.get('keys.add')?.({ ops: [1] })).rejects.toMatchObject({
      code: 'bad_arguments',
    });
    expect(added).toBe(0);
    await expect(async () => await sim.get('sim.uid')?.({})).rejects.toMatchObject({ code: 'bad_arguments' });
    expect(await core.get('keys.add')?.({ ops: ['a.b.c'] })).toEqual({ added: 1 });
  });
});

describe('keys.list', () => {
  it('with ids answers only those the keyring has, in the order asked, without listing the keyring', async () => {
    const status = (id: string, revoked: boolean) => ({ credential: { id }, revoked, suspect: 'x' });
    const held = new Map([
      ['phone:a', status('phone:a', false)],
      ['phone:b', status('phone:b', true)],
    ]);
    const core = coreControlHandlers({
      agent: {} as never,
      keyring: {
        list: () => {
          throw new Error('the whole keyring was listed');
        },
        byId: (id: string) => held.get(id),
        credentialCount: 2,
      } as never,
      identity: {} as never,
      audit: { recent: () => [] },
      relayStatus: () => ({}),
    });
    expect(await core.get('keys.list')?.({ ids: ['phone:b', 'phone:none', 'phone:a'] })).toEqual({
      credentials: [
        { credential: { id: 'phone:b' }, revoked: true },
        { credential: { id: 'phone:a' }, revoked: false },
      ],
      total: 2,
    });
  });

  it('without ids answers one page (default 500) from keyring.page, never the whole list', async () => {
    const pages: [string | undefined, number][] = [];
    const core = coreControlHandlers({
      agent: {} as never,
      keyring: {
        list: () => {
          throw new Error('the whole keyring was listed');
        },
        pageIndexReady: async () => {},
        page: (after: string | undefined, limit: number) => {
          pages.push([after, limit]);
          return {
            credentials: [{ credential: { id: 'phone:c' }, revoked: false, suspect: 'x' }],
            next: 'phone:c',
            total: 100_000,
          };
        },
      } as never,
      identity: {} as never,
      audit: { recent: () => [] },
      relayStatus: () => ({}),
    });
    const listed = core.get('keys.list');
    expect(await listed?.({ ...parseArgs('keys.list', {}) })).toEqual({
      credentials: [{ credential: { id: 'phone:c' }, revoked: false }],
      next: 'phone:c',
      total: 100_000,
    });
    await listed?.({ ...parseArgs('keys.list', { after: 'phone:c', limit: 2 }) });
    expect(pages).toEqual([
      [undefined, 500],
      ['phone:c', 2],
    ]);
  });
});

describe('every place that names a control command names a table command', () => {
  const root = fileURLToPath(new URL('../../../', import.meta.url));

  it('docs/local-interfaces.md lists exactly the table', () => {
    const doc = readFileSync(join(root, 'docs/local-interfaces.md'), 'utf8');
    const block = /<!-- control-commands -->([\s\S]*?)<!-- \/control-commands -->/.exec(doc)?.[1] ?? '';
    const listed = [...block.matchAll(/`([a-z.-]+)`/g)].map((m) => m[1]);
    expect(listed).toEqual([...COMMAND_NAMES]);
  });

  // Server handlers (src/app, src/host), the CLI's requests and the status page's calls: every
  // command name written as a literal where a handler is registered or a command is sent.
  const SITES = [
    /handlers\.set\(\s*'([^']+)'/g,
    /bindHandler\(\s*'([^']+)'/g,
    /control(?:Request|Call)\([^,]+,\s*'([^']+)'/g,
    /request\(\s*socketPath,\s*'([^']+)'/g,
    /call\(\s*handlers,\s*'([^']+)'/g,
  ];

  function sourceFiles(dir: string): string[] {
    return readdirSync(join(root, dir), { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
    );
  }

  it('handlers registered by src/app and src/host, requests from src/cli, calls from src/status', () => {
    const seen = new Map<string, string>();
    for (const dir of ['src/app', 'src/host', 'src/cli', 'src/status']) {
      for (const file of sourceFiles(dir)) {
        const text = readFileSync(join(root, file), 'utf8');
        for (const site of SITES) for (const m of text.matchAll(site)) if (m[1]) seen.set(m[1], file);
      }
    }
    const strangers = [...seen].filter(([name]) => !isCommandName(name));
    expect(strangers).toEqual([]);
    // The scan finds the handlers of every part (so a changed registration style cannot hide them).
    for (const name of ['status', 'keys.add', 'sim.answer', 'enroll.open', 'sim.card.tap', 'cloud.status'])
      expect(seen.has(name)).toBe(true);
  });
});
