import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
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

/** Per command with arguments: good cases (wire args -> parsed) and bad ones (-> message). */
const CASES: Partial<Record<CommandName, { good: [WireArgs, unknown][]; bad: [WireArgs, string][] }>> = {
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
  'enroll.card.authorise': {
    good: [[{ jws: 'a.b.c' }, { jws: 'a.b.c' }]],
    bad: [
      [{}, 'jws must be a compact JWS'],
      [{ jws: ['a.b.c'] }, 'jws must be a compact JWS'],
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
    for (const name of ['status', 'vehicle', 'keys.list', 'sim.challenge', 'test.crash'] as const) {
      expect(parseArgs(name, { junk: 1 })).toEqual({});
    }
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
