import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/core/logger.js';
import { GpioRelay } from '../../../src/relay/gpio.js';
import {
  type GpioLine,
  hasInteractiveMode,
  holderArgs,
  interactiveHolderArgs,
  levelFor,
  parseGpiosetVersion,
  setLevelCommand,
  splitAtPrompts,
} from '../../../src/relay/gpioset-syntax.js';

describe('parseGpiosetVersion', () => {
  it('reads 1.x and both 2.x banners', () => {
    // Debian 12's gpiod, verbatim.
    expect(
      parseGpiosetVersion('gpioset (libgpiod) v1.6.3\nCopyright (C) 2017-2018 Bartosz Golaszewski\n'),
    ).toBe(1);
    expect(
      parseGpiosetVersion('gpioset (libgpiod) v2.1\nCopyright (C) 2017-2023 Bartosz Golaszewski\n'),
    ).toBe(2);
    expect(parseGpiosetVersion('gpioset v2.3 (libgpiod v2.3)\n')).toBe(2);
  });

  it('refuses anything else with relay_failed', () => {
    for (const output of [
      '',
      'gpioset (libgpiod) v3.0',
      'sh: gpioset: not found',
      '\nv1.6.3 on the second line',
    ]) {
      expect(() => parseGpiosetVersion(output)).toThrow(expect.objectContaining({ code: 'relay_failed' }));
    }
  });
});

describe('levelFor', () => {
  it('inverts active-low lines', () => {
    const high: GpioLine = { chip: 'gpiochip0', line: 17, activeLow: false };
    const low: GpioLine = { chip: 'gpiochip0', line: 27, activeLow: true };
    expect([levelFor(high, true), levelFor(high, false), levelFor(low, true), levelFor(low, false)]).toEqual([
      1, 0, 0, 1,
    ]);
  });
});

describe('holderArgs', () => {
  const line: GpioLine = { chip: 'gpiochip0', line: 17, activeLow: false };
  it('1.x: wait mode (holds until end of file on stdin), options before the chip', () => {
    expect(holderArgs(1, line, 1, 'vehicle-agent')).toEqual(['--mode=wait', 'gpiochip0', '17=1']);
    expect(holderArgs(1, { ...line, bias: 'pull-up' }, 0, 'x')).toEqual([
      '--mode=wait',
      '--bias=pull-up',
      'gpiochip0',
      '17=0',
    ]);
  });
  it('2.x: default (holding) mode, banner, consumer and chip options', () => {
    expect(holderArgs(2, line, 0, 'vehicle-agent')).toEqual([
      '--banner',
      '--consumer=vehicle-agent',
      '--chip=gpiochip0',
      '17=0',
    ]);
    expect(holderArgs(2, { ...line, chip: '/dev/gpiochip4', bias: 'pull-down' }, 1, 'va')).toEqual([
      '--banner',
      '--consumer=va',
      '--bias=pull-down',
      '--chip=/dev/gpiochip4',
      '17=1',
    ]);
  });
});

describe('gpioset 2.x interactive mode', () => {
  const line: GpioLine = { chip: 'gpiochip0', line: 17, activeLow: false, bias: 'pull-down' };

  it('is found in --help only when the build has it', () => {
    // libgpiod 2.1's help, abridged, with and without --enable-gpioset-interactive.
    const common =
      'Usage: gpioset [OPTIONS] <line=value>...\n  -h, --help\t\tdisplay this help and exit\n' +
      '  -l, --active-low\ttreat the line as active low\n';
    expect(
      hasInteractiveMode(
        `${common}  -i, --interactive\tset the lines then wait for additional set commands\n`,
      ),
    ).toBe(true);
    expect(hasInteractiveMode(common)).toBe(false);
    expect(hasInteractiveMode('')).toBe(false);
    expect(hasInteractiveMode('  --interactively-named-option')).toBe(false);
  });

  it('holds the line at its first level and drives it with set commands by offset', () => {
    expect(interactiveHolderArgs(line, 0, 'vehicle-agent')).toEqual([
      '--interactive',
      '--consumer=vehicle-agent',
      '--bias=pull-down',
      '--chip=gpiochip0',
      '17=0',
    ]);
    expect(interactiveHolderArgs({ chip: 'gpiochip0', line: 17, activeLow: true }, 1, 'va')).toEqual([
      '--interactive',
      '--consumer=va',
      '--chip=gpiochip0',
      '17=1',
    ]);
    expect(setLevelCommand(line, 1)).toBe('set 17=1\n');
    expect(setLevelCommand(line, 0)).toBe('set 17=0\n');
  });

  it('splits its output at prompts: one piece per finished command, the rest pending', () => {
    const table: [string, string[], string][] = [
      ['', [], ''],
      ['gpioset> ', [''], ''],
      ['gpioset> gpioset> ', ['', ''], ''],
      ["gpioset> unknown line: '18'\ngpioset> ", ['', "unknown line: '18'\n"], ''],
      ['gpioset', [], 'gpioset'],
      ['gpioset> "17"=active\n', [''], '"17"=active\n'],
    ];
    for (const [text, done, pending] of table) expect(splitAtPrompts(text)).toEqual({ done, pending });
  });
});

describe('GpioRelay configuration', () => {
  it('refuses two relays on one line', () => {
    const line: GpioLine = { chip: 'gpiochip0', line: 17, activeLow: false };
    expect(
      () =>
        new GpioRelay({
          channels: { unlock: line, lock: { ...line, activeLow: true } },
          logger: silentLogger,
        }),
    ).toThrow(expect.objectContaining({ code: 'config_invalid' }));
  });
});
