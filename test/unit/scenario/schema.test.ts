import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseDuration, parseScenario } from '../../../src/scenario/schema.js';

const scenario = (steps: string, head = 'name: t\n') => `${head}steps:\n${steps}`;

/** Files the parser must refuse: each with scenario_invalid and a message naming what is wrong. */
const BAD: readonly (readonly [string, string, RegExp])[] = [
  ['empty file', '', /must be a mapping with name and steps/],
  ['not YAML', 'name: [unclosed\n', /not valid YAML/],
  ['a list, not a mapping', '- tap: x\n', /must be a mapping/],
  ['duplicate keys', 'name: a\nname: b\nsteps: [{wait: 1s}]\n', /line 2.*not valid YAML/],
  ['no name', 'steps:\n  - wait: 1s\n', /name must be a non-empty string/],
  ['unknown top-level field', 'name: t\nstep: []\n', /has no field "step"/],
  ['no steps', 'name: t\nsteps: []\n', /steps must be a non-empty list/],
  ['a step that is a string', scenario('  - tap\n'), /step 1 \(line 3\): a step must be a mapping/],
  [
    'a step with two actions',
    scenario('  - tap: a\n    present: b\n'),
    /step 1.*does one thing; this one has present and tap/,
  ],
  ['a step with no action', scenario('  - name: nothing\n'), /needs one of/],
  [
    'an unknown step field',
    scenario('  - tap: a\n    expected: {granted: true}\n'),
    /has no field "expected"/,
  ],
  ['an unknown tap option', scenario('  - tap: {card: a, speed: 3}\n'), /tap has no field "speed"/],
  ['an unknown tap fault', scenario('  - tap: {card: a, fault: sparks}\n'), /tap.fault must be one of/],
  [
    'an unknown approach fault',
    scenario('  - approach: {key: driver, fault: nope}\n'),
    /approach.fault must be one of/,
  ],
  ['a bad duration', scenario('  - wait: soon\n'), /wait must be a duration/],
  ['a wait past the limit', scenario('  - wait: 2h\n'), /at most 600000 ms/],
  ['a clock jump back', scenario('  - clock: -1d\n'), /clock \(advance\) must be a duration/],
  ['a zero clock jump', scenario('  - clock: 0s\n'), /must move forward/],
  ['an unknown intent', scenario('  - present: {key: driver, intent: open}\n'), /intent must be one of/],
  ['a bad UID', scenario('  - present: {uid: zz}\n'), /4 to 10 bytes of hex/],
  [
    'an unknown denial code',
    scenario('  - present: driver\n    expect: {denied: nope}\n'),
    /expect.denied must be an error code/,
  ],
  [
    'granted and denied at once',
    scenario('  - present: driver\n    expect: {granted: true, denied: expired}\n'),
    /either granted: true or denied/,
  ],
  [
    'granted on a wait',
    scenario('  - wait: 1s\n    expect: {granted: true}\n'),
    /expected of a present, tap or approach/,
  ],
  [
    'result on a tap',
    scenario('  - tap: a\n    expect: {result: ok}\n'),
    /result is expected of a cloud step/,
  ],
  ['an unknown lock state', scenario('  - expect: {lock: open}\n'), /expect.lock must be one of/],
  [
    'a bad relay expectation',
    scenario('  - expect: {relay: {unlock: flickered}}\n'),
    /expect.relay.unlock must be one of/,
  ],
  [
    'a relay channel that is not a name',
    scenario('  - expect: {relay: {"Un Lock": pulsed}}\n'),
    /not a channel name/,
  ],
  ['an empty audit match', scenario('  - expect: {audit: {}}\n'), /expect.audit\[0\] must be a mapping/],
  [
    'an audit field that is a mapping',
    scenario('  - expect: {audit: {type: {a: 1}}}\n'),
    /must be a string, number or boolean/,
  ],
  ['a cloud step without a broker', scenario('  - cloud: unlock\n'), /needs the scenario's broker section/],
  ['link without a broker', scenario('  - expect: {link: connected}\n'), /expect.link needs/],
  [
    'an unknown cloud command',
    scenario('  - cloud: open-sesame\n', 'name: t\nbroker: {managed: {port: 18883}}\n'),
    /cloud must name a command/,
  ],
  [
    'a managed broker on a low port',
    'name: t\nbroker: {managed: {port: 80}}\nsteps: [{wait: 1s}]\n',
    /port must be a whole number 1024..65535/,
  ],
  [
    'a broker URL of another scheme',
    'name: t\nbroker: {url: "http://x"}\nsteps: [{wait: 1s}]\n',
    /mqtts:\/\/HOST/,
  ],
  [
    'a cert without its key',
    'name: t\nbroker: {url: "mqtts://x", cert: c.crt}\nsteps: [{wait: 1s}]\n',
    /cert and broker.key go together/,
  ],
  [
    'an outage with no command for it',
    'name: t\nbroker: {url: "mqtt://127.0.0.1:1883", down: "true"}\nsteps:\n  - broker: hang\n',
    /broker hang needs a command in the broker section \(hang: \.\.\.\)/,
  ],
  [
    'an alias bomb',
    `name: t\na: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nsteps: [{wait: 1s}]\n`,
    /not usable YAML|has no field/,
  ],
  [
    'a file over 256 KiB',
    `name: t\ndescription: "${'x'.repeat(270_000)}"\nsteps: [{wait: 1s}]\n`,
    /larger than/,
  ],
];

describe('scenario files the parser refuses', () => {
  it.each(BAD)('%s', (_what, text, message) => {
    expect(() => parseScenario(text)).toThrow(
      expect.objectContaining({ code: 'scenario_invalid', message: expect.stringMatching(message) }),
    );
  });
});

describe('scenario files the parser accepts', () => {
  it('a step of each kind, with defaults filled in', () => {
    const parsed = parseScenario(
      [
        'name: every step',
        'broker: {managed: {port: 18883}}',
        'steps:',
        '  - present: driver',
        '    expect: {granted: true, relay: {unlock: pulsed}, audit: {type: access, credential: driver}}',
        '  - present: {uid: 04A2B3C4D5E6F7, intent: lock}',
        '  - tap: {card: ntag-driver, slow: 900ms, fault: nack}',
        '    expect: {denied: timeout, within: 2s}',
        '  - approach: {key: driver, fault: replay, passive: true}',
        '  - cloud: {command: unlock, ttl: 1m, counter: 7}',
        '    expect: {result: counter_replay}',
        '  - cloud: again',
        '  - broker: hang',
        '  - network: down',
        '  - clock: 8d',
        '  - clear-limits: true',
        '  - wait: 250',
        '  - name: settled',
        '    expect: {lock: locked, link: connected}',
      ].join('\n'),
    );
    expect(parsed.broker).toEqual({ kind: 'managed', port: 18883, prefix: 'vehicle-agent' });
    expect(parsed.steps.map((s) => s.action.kind)).toEqual([
      'present',
      'present-uid',
      'tap',
      'approach',
      'cloud',
      'cloud-again',
      'broker',
      'network',
      'clock',
      'clear-limits',
      'wait',
      'check',
    ]);
    expect(parsed.steps[0]).toMatchObject({
      index: 1,
      line: 4,
      name: 'present driver',
      action: { kind: 'present', key: 'driver', intent: 'unlock', passive: false, tamper: false, delayMs: 0 },
      expect: {
        granted: true,
        relay: { unlock: 'pulsed' },
        audit: [{ type: 'access', credential: 'driver' }],
        withinMs: 5000,
      },
    });
    expect(parsed.steps[2]?.action).toEqual({ kind: 'tap', card: 'ntag-driver', slowMs: 900, fault: 'nack' });
    expect(parsed.steps[2]?.expect?.withinMs).toBe(2000);
    expect(parsed.steps[4]?.action).toMatchObject({
      kind: 'cloud',
      command: 'unlock',
      key: 'owner',
      ttlS: 60,
      counter: 7,
    });
    expect(parsed.steps[8]?.action).toEqual({ kind: 'clock', advanceMs: 8 * 86_400_000 });
    expect(parsed.steps[11]?.name).toBe('settled');
  });

  it('an external broker with its outage commands', () => {
    const parsed = parseScenario(
      'name: rig\nbroker:\n  url: [mqtts://a:8883, mqtts://b:8883]\n  ca: ca.crt\n  down: systemctl stop mosquitto\n  up: systemctl start mosquitto\nsteps:\n  - broker: down\n  - broker: up\n',
    );
    expect(parsed.broker).toEqual({
      kind: 'external',
      urls: ['mqtts://a:8883', 'mqtts://b:8883'],
      ca: 'ca.crt',
      prefix: 'vehicle-agent',
      commands: { 'broker down': 'systemctl stop mosquitto', 'broker up': 'systemctl start mosquitto' },
    });
  });

  it('every shipped example scenario', () => {
    const dir = fileURLToPath(new URL('../../../scenarios/', import.meta.url));
    const files = readdirSync(dir).filter((f) => f.endsWith('.yaml'));
    expect(files.length).toBeGreaterThanOrEqual(4);
    for (const file of files)
      expect(parseScenario(readFileSync(join(dir, file), 'utf8')).steps.length).toBeGreaterThan(0);
  });
});

describe('durations', () => {
  it.each([
    [250, 250],
    ['250ms', 250],
    ['2s', 2000],
    ['1.5m', 90_000],
    ['+8d', 8 * 86_400_000],
    ['1h', 3_600_000],
    ['2 s', 2000],
    ['-1s', undefined],
    [-5, undefined],
    [1.5, undefined],
    ['5 minutes', undefined],
    ['', undefined],
    [true, undefined],
  ])('%s', (input, ms) => {
    expect(parseDuration(input)).toBe(ms);
  });
});
