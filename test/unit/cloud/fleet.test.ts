import { describe, expect, it } from 'vitest';
import { fleetExitCode, fleetLine, parseVehicleList, streamOf } from '../../../src/cloud/fleet.js';
import { AgentError } from '../../../src/core/errors.js';

const P = 'vehicle-agent';
const line = (topic: string, payload: unknown) =>
  fleetLine(P, topic, Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload)));

describe('parseVehicleList', () => {
  it.each([
    { values: ['VA-1'], file: undefined, ids: ['VA-1'] },
    { values: ['VA-1,VA-2', 'VA-3'], file: undefined, ids: ['VA-1', 'VA-2', 'VA-3'] },
    { values: [' VA-1 , VA-1 '], file: undefined, ids: ['VA-1'] },
    { values: [], file: '# fleet\nVA-1\n\nVA-2, VA-3 # two more\nVA-1\n', ids: ['VA-1', 'VA-2', 'VA-3'] },
    { values: ['VA-9'], file: 'VA-1\n', ids: ['VA-9', 'VA-1'] },
    { values: ['a.b_c-D'], file: undefined, ids: ['a.b_c-D'] },
  ])('$values + $file → $ids', ({ values, file, ids }) => {
    expect(parseVehicleList(values, file)).toEqual(ids);
  });

  it.each([
    [['VA-1/command'], undefined],
    [['+'], undefined],
    [['#'], undefined],
    [['VA 1'], undefined],
    [['x'.repeat(129)], undefined],
    [[], '\n# nothing\n'],
    [[''], undefined],
    [[], 'VA-1\nVA-\u0000\n'],
  ])('refuses %j %j with bad_arguments', (values, file) => {
    const attempt = () => parseVehicleList(values, file);
    expect(attempt).toThrow(AgentError);
    try {
      attempt();
    } catch (e) {
      expect((e as AgentError).code).toBe('bad_arguments');
    }
  });
});

describe('streamOf', () => {
  it.each([
    ['vehicle-agent/VA-1/command/result', { vid: 'VA-1', stream: 'result' }],
    ['vehicle-agent/VA-1/state', { vid: 'VA-1', stream: 'state' }],
    ['vehicle-agent/VA-1/events', { vid: 'VA-1', stream: 'event' }],
    ['vehicle-agent/VA-1/status', { vid: 'VA-1', stream: 'status' }],
    ['vehicle-agent/VA-1/command', undefined],
    ['vehicle-agent/VA-1/keyring/vehicle', undefined],
    ['other/VA-1/state', undefined],
    ['vehicle-agent/state', undefined],
    ['vehicle-agent//state', undefined],
  ])('%s → %j', (topic, want) => {
    expect(streamOf(P, topic)).toEqual(want);
  });
});

describe('fleetLine', () => {
  it.each([
    [
      'vehicle-agent/VA-1/command/result',
      { jti: 'j1', status: 'ok', code: 'ok', message: 'unlock done' },
      'result ok unlock done (jti j1)',
    ],
    [
      'vehicle-agent/VA-1/command/result',
      { jti: 'j2', status: 'error', code: 'role_not_allowed', message: 'no' },
      'result refused [role_not_allowed] no (jti j2)',
    ],
    [
      'vehicle-agent/VA-1/state',
      {
        lock: 'locked',
        keyring: { digest: '22c458bf0011', operations: 9 },
        clock: { trust: 'trusted' },
        outbox: { ackedSeq: 57, lastSeq: 58 },
      },
      'state lock=locked keyring=22c458bf (9 ops) clock=trusted outbox=57/58',
    ],
    [
      'vehicle-agent/VA-1/state',
      { lock: 'unlocked' },
      'state lock=unlocked keyring=? (? ops) clock=? outbox=?/?',
    ],
    ['vehicle-agent/VA-1/status', { state: 'offline' }, 'status offline'],
    [
      'vehicle-agent/VA-1/events',
      { seq: 42, type: 'access', result: 'granted', subject: 'phone:abc' },
      'event #42 access result=granted subject=phone:abc',
    ],
    ['vehicle-agent/VA-1/events', { type: 'start' }, 'event #? start'],
    ['vehicle-agent/VA-1/state', 'not json', 'state unreadable (8 bytes)'],
    ['vehicle-agent/VA-1/state', [1, 2], 'state unreadable (5 bytes)'],
    // A hostile payload cannot put control characters (a terminal escape) into the line.
    ['vehicle-agent/VA-1/status', { state: '\u001b[2Jgone' }, 'status ?[2Jgone'],
  ])('%s %j → %s', (topic, payload, text) => {
    expect(line(topic, payload)?.text).toBe(text);
  });

  it('keeps the parsed payload and the seq of an event; long fields are cut', () => {
    const l = line('vehicle-agent/VA-7/events', { seq: 3, type: 'x'.repeat(500) });
    expect(l).toMatchObject({ vid: 'VA-7', stream: 'event', seq: 3, data: { seq: 3 } });
    expect(l?.text.length).toBeLessThan(60);
  });

  it('is undefined for a topic outside the fleet streams', () => {
    expect(line('vehicle-agent/VA-1/command', {})).toBeUndefined();
  });
});

describe('fleetExitCode', () => {
  it.each([
    [[], 0],
    [['ok', 'ok'], 0],
    [['ok', 'refused'], 2],
    [['ok', 'no answer'], 1],
    [['refused', 'no answer'], 1],
  ] as const)('%j → %i', (outcomes, code) => {
    expect(fleetExitCode(outcomes)).toBe(code);
  });
});
