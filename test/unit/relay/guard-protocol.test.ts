import { describe, expect, it } from 'vitest';
import {
  decodeCommand,
  decodeEvent,
  encodeCommand,
  encodeEvent,
  type GuardCommand,
  type GuardEvent,
  guardLimitMs,
  LineSplitter,
  MAX_LINE_BYTES,
  parseGuardSpec,
  releaseDeadline,
} from '../../../src/relay/guard-protocol.js';
import { seededRandom } from '../../helpers/seeded-random.js';

describe('guard commands', () => {
  const table: [GuardCommand, string][] = [
    [{ type: 'on', id: 1, channel: 'unlock', limitMs: 600 }, 'on 1 unlock 600\n'],
    [{ type: 'on', id: 99, channel: 'lock', limitMs: 10_000 }, 'on 99 lock 10000\n'],
    [{ type: 'off', id: 2, channel: 'lock' }, 'off 2 lock\n'],
    [{ type: 'alloff', id: 3 }, 'alloff 3\n'],
    [{ type: 'ping', id: 4 }, 'ping 4\n'],
    [{ type: 'close', id: 5 }, 'close 5\n'],
  ];

  it('encode to one line each and decode back', () => {
    for (const [command, line] of table) {
      expect(encodeCommand(command)).toBe(line);
      expect(decodeCommand(line.slice(0, -1))).toEqual({ ok: true, value: command });
    }
  });

  it('refuse anything else, with a reason', () => {
    for (const line of [
      '',
      'on',
      'on 1',
      'on 1 unlock',
      'on 1 unlock 0', // a limit of nothing
      'on 1 unlock -5',
      'on 1 unlock 1e3',
      'on 1 unlock 86400001', // over a day
      'on 1 door 500',
      'on 1 unlock 500 extra',
      'on x unlock 500',
      'on -1 unlock 500',
      'on 1.5 unlock 500',
      'off 1',
      'off 1 __proto__',
      'alloff',
      'alloff 1 2',
      'ping 1 x',
      'reboot 1',
      'ON 1 unlock 500',
      ' on 1 unlock 500',
      'on  1 unlock 500',
      `on 1 unlock ${'9'.repeat(20)}`,
      `ping ${'1'.repeat(MAX_LINE_BYTES)}`,
    ]) {
      const decoded = decodeCommand(line);
      expect(decoded.ok, line).toBe(false);
      if (!decoded.ok) expect(decoded.reason).not.toBe('');
    }
  });
});

describe('guard events', () => {
  const table: [GuardEvent, string][] = [
    [
      { type: 'ready', pid: 1234, detail: 'gpio (gpioset 2.x), max-on 10000 ms' },
      'ready 1234 gpio (gpioset 2.x), max-on 10000 ms\n',
    ],
    [{ type: 'ok', id: 7 }, 'ok 7\n'],
    [
      { type: 'err', id: 7, message: 'relay channel lock is not wired' },
      'err 7 relay channel lock is not wired\n',
    ],
    [
      { type: 'level', channel: 'unlock', energised: true, atMs: 1_796_463_004_178.125 },
      'level unlock 1 1796463004178.125\n',
    ],
    [{ type: 'level', channel: 'lock', energised: false, atMs: 5 }, 'level lock 0 5\n'],
    [
      { type: 'expired', channel: 'unlock', onId: 3, heldMs: 601, cause: 'limit' },
      'expired unlock 3 601 limit\n',
    ],
    [
      { type: 'expired', channel: 'lock', onId: 4, heldMs: 10_000, cause: 'max-on' },
      'expired lock 4 10000 max-on\n',
    ],
    [{ type: 'health', state: 'ok' }, 'health ok\n'],
    [
      { type: 'health', state: 'degraded', detail: 'gpioset holding unlock exited (code 1)' },
      'health degraded gpioset holding unlock exited (code 1)\n',
    ],
    [
      { type: 'log', level: 'warn', message: 'held', fields: { channel: 'unlock', n: 2 } },
      'log warn {"channel":"unlock","n":2,"msg":"held"}\n',
    ],
  ];

  it('encode to one line each and decode back', () => {
    for (const [event, line] of table) {
      expect(encodeEvent(event)).toBe(line);
      expect(decodeEvent(line.slice(0, -1))).toEqual({ ok: true, value: event });
    }
  });

  it('keep free text on one line', () => {
    const line = encodeEvent({ type: 'err', id: 1, message: 'first\nsecond\r\n\tthird\u0000' });
    expect(line).toBe('err 1 first second third\n');
    const log = encodeEvent({ type: 'log', level: 'info', message: 'a\nb', fields: { text: 'x\ny' } });
    expect(log.indexOf('\n')).toBe(log.length - 1);
    expect(decodeEvent(log.slice(0, -1))).toEqual({
      ok: true,
      value: { type: 'log', level: 'info', message: 'a b', fields: { text: 'x\ny' } },
    });
  });

  it('refuse malformed events', () => {
    for (const line of [
      '',
      'ok',
      'ok x',
      'ok 1 2',
      'ready',
      'ready pid',
      'level unlock 2 5',
      'level door 1 5',
      'level unlock 1',
      'level unlock 1 -5',
      'level unlock 1 NaN',
      'expired unlock 1 5',
      'expired unlock 1 5 forever',
      'health fine',
      'log loud {}',
      'log info not json',
      'log info [1,2]',
      'log info null',
      'hello 1',
    ]) {
      expect(decodeEvent(line).ok, line).toBe(false);
    }
  });

  it('never throw on garbage, from either side', () => {
    const next = seededRandom(13).next;
    const alphabet = ' \n\t01-9aeiklnopr=.{}"[]\u00e9\u0000';
    for (let i = 0; i < 5000; i++) {
      const length = Math.floor(next() * 40);
      let line = '';
      for (let j = 0; j < length; j++) line += alphabet[Math.floor(next() * alphabet.length)];
      // Half the cases start with a real verb, so the argument parsers see garbage too.
      const verbs = ['on ', 'off ', 'ok ', 'level ', 'expired ', 'log info ', 'health ', 'ready '];
      if (next() < 0.5) line = (verbs[Math.floor(next() * verbs.length)] ?? '') + line;
      expect(() => decodeCommand(line)).not.toThrow();
      expect(() => decodeEvent(line)).not.toThrow();
    }
  });
});

describe('LineSplitter', () => {
  it('joins chunks into lines and keeps what has no newline yet', () => {
    const s = new LineSplitter();
    expect(s.push('ok 1\nok')).toEqual(['ok 1']);
    expect(s.push(' 2\n\nok 3')).toEqual(['ok 2', '']);
    expect(s.push('\n')).toEqual(['ok 3']);
    expect(s.dropped).toBe(0);
  });

  it('drops an overlong line whole, even across chunks, and goes on after it', () => {
    const s = new LineSplitter();
    const half = 'x'.repeat(MAX_LINE_BYTES);
    expect(s.push(half)).toEqual([]);
    expect(s.push(half)).toEqual([]);
    expect(s.push('tail of the long one\nok 9\n')).toEqual(['ok 9']);
    expect(s.dropped).toBe(1);
    expect(s.push(`${'y'.repeat(MAX_LINE_BYTES + 1)}\nok 10\n`)).toEqual(['ok 10']);
    expect(s.dropped).toBe(2);
  });
});

describe('releaseDeadline', () => {
  it('is the earlier of now + limit and since + max-on', () => {
    const table: [{ now: number; since: number; limitMs: number; maxOnMs: number }, number, string][] = [
      // a pulse: its limit comes first
      [{ now: 0, since: 0, limitMs: 600, maxOnMs: 10_000 }, 600, 'limit'],
      // a limit beyond max-on is cut to max-on
      [{ now: 0, since: 0, limitMs: 20_000, maxOnMs: 10_000 }, 10_000, 'max-on'],
      // a hold extended at 4 s by 5.25 s: 9.25 s, still inside max-on
      [{ now: 4000, since: 0, limitMs: 5250, maxOnMs: 10_000 }, 9250, 'limit'],
      // extended again at 8 s: max-on from the first energising wins
      [{ now: 8000, since: 0, limitMs: 5250, maxOnMs: 10_000 }, 10_000, 'max-on'],
      // equal: the hard limit is named
      [{ now: 0, since: 0, limitMs: 10_000, maxOnMs: 10_000 }, 10_000, 'max-on'],
      // confirmation came late (now > since): the limit runs from the confirmation
      [{ now: 40, since: 0, limitMs: 600, maxOnMs: 10_000 }, 640, 'limit'],
    ];
    for (const [args, at, cause] of table) expect(releaseDeadline(args)).toEqual({ at, cause });
  });

  it('never lets a channel stay on past max-on from its first energising, for any limits', () => {
    const next = seededRandom(7).next;
    for (let i = 0; i < 2000; i++) {
      const since = Math.floor(next() * 1e6);
      const now = since + Math.floor(next() * 20_000);
      const maxOnMs = 1 + Math.floor(next() * 20_000);
      const limitMs = 1 + Math.floor(next() * 40_000);
      const { at } = releaseDeadline({ now, since, limitMs, maxOnMs });
      expect(at).toBeLessThanOrEqual(since + maxOnMs);
      expect(at).toBeLessThanOrEqual(now + limitMs);
    }
  });
});

describe('guardLimitMs', () => {
  it('adds the margin to the stated on-time, at most max-on; max-on when none is stated', () => {
    const table: [number | undefined, number, number, number][] = [
      [350, 250, 10_000, 600],
      [5000, 250, 10_000, 5250],
      [9900, 250, 10_000, 10_000],
      [20_000, 250, 10_000, 10_000],
      [undefined, 250, 10_000, 10_000],
      [0, 0, 10_000, 1],
    ];
    for (const [after, margin, maxOn, expected] of table)
      expect(guardLimitMs(after, margin, maxOn)).toBe(expected);
  });
});

describe('parseGuardSpec', () => {
  const gpio = {
    maxOnMs: 10_000,
    logLevel: 'info',
    driver: {
      kind: 'gpio',
      gpiosetPath: 'gpioset',
      consumer: 'vehicle-agent',
      interactive: true,
      channels: { unlock: { chip: 'gpiochip0', line: 17, activeLow: true, bias: 'pull-up' } },
    },
  };

  it('reads each driver kind', () => {
    expect(parseGuardSpec(JSON.stringify(gpio))).toEqual(gpio);
    const sim = { maxOnMs: 500, logLevel: 'debug', driver: { kind: 'sim', channels: ['unlock', 'lock'] } };
    expect(parseGuardSpec(JSON.stringify(sim))).toEqual(sim);
    const lcus = {
      maxOnMs: 500,
      logLevel: 'error',
      driver: { kind: 'lcus', path: '/dev/ttyUSB0', baudRate: 9600, channels: { unlock: 1, lock: 2 } },
    };
    expect(parseGuardSpec(JSON.stringify(lcus))).toEqual(lcus);
  });

  it('refuses anything unexpected with config_invalid', () => {
    const variants: unknown[] = [
      'not json',
      null,
      [],
      { ...gpio, maxOnMs: 0 },
      { ...gpio, maxOnMs: 1.5 },
      { ...gpio, logLevel: 'loud' },
      { ...gpio, driver: { ...gpio.driver, kind: 'relay-hat' } },
      { ...gpio, driver: { ...gpio.driver, channels: {} } },
      { ...gpio, driver: { ...gpio.driver, channels: { door: gpio.driver.channels.unlock } } },
      {
        ...gpio,
        driver: { ...gpio.driver, channels: { unlock: { ...gpio.driver.channels.unlock, line: -1 } } },
      },
      {
        ...gpio,
        driver: { ...gpio.driver, channels: { unlock: { ...gpio.driver.channels.unlock, bias: 'up' } } },
      },
      { ...gpio, driver: { ...gpio.driver, gpiosetPath: '' } },
      { ...gpio, driver: { ...gpio.driver, interactive: 'yes' } },
      { maxOnMs: 1, logLevel: 'info', driver: { kind: 'sim', channels: ['door'] } },
      {
        maxOnMs: 1,
        logLevel: 'info',
        driver: { kind: 'lcus', path: '/dev/x', baudRate: 9600, channels: { unlock: 0 } },
      },
    ];
    for (const v of variants) {
      const text = typeof v === 'string' ? v : JSON.stringify(v);
      expect(() => parseGuardSpec(text), text).toThrow(expect.objectContaining({ code: 'config_invalid' }));
    }
  });
});
