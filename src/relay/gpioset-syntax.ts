import { AgentError } from '../core/errors.js';

/** The two command-line dialects of libgpiod's gpioset (1.x and 2.x). */
export type GpiosetMajor = 1 | 2;

export type GpioBias = 'pull-up' | 'pull-down' | 'disable';

/** One relay input on a GPIO line. */
export interface GpioLine {
  /** Chip as gpioset takes it: `gpiochip0`, `0` or `/dev/gpiochip0`. */
  readonly chip: string;
  /** Line offset on the chip (the BCM number on a Raspberry Pi). */
  readonly line: number;
  /** The relay board energises on a low level (most opto-isolated boards). */
  readonly activeLow: boolean;
  /**
   * Bias requested with the line. When nothing holds the line (the agent is gone) the bias is
   * what keeps it at a level: pull-up for an active-low board keeps that relay off.
   */
  readonly bias?: GpioBias;
}

/**
 * Reads the major version from `gpioset --version`: 1.x prints "gpioset (libgpiod) v1.6.3",
 * 2.0–2.2 print "gpioset (libgpiod) v2.1", later 2.x "gpioset v2.3 (libgpiod v2.3)".
 */
export function parseGpiosetVersion(output: string): GpiosetMajor {
  const firstLine = output.split('\n', 1)[0] ?? '';
  const match = /\bv(\d+)\.\d+/.exec(firstLine);
  const major = match?.[1];
  if (major === '1') return 1;
  if (major === '2') return 2;
  throw new AgentError(
    'relay_failed',
    `unrecognised gpioset version output: ${JSON.stringify(firstLine.slice(0, 80))}`,
    {
      allowed: 'libgpiod gpioset 1.x or 2.x',
    },
  );
}

/** The electrical level that puts the relay in the wanted state. */
export function levelFor(line: GpioLine, energised: boolean): 0 | 1 {
  return energised !== line.activeLow ? 1 : 0;
}

/**
 * Arguments for a gpioset that drives one line at `level` and keeps holding it:
 * 1.x: `--mode=wait` holds until a newline or end of file on stdin;
 * 2.x: the default mode holds until a signal; `--banner` confirms the line was requested.
 * The level is electrical: active-low inversion is done by levelFor, not by `--active-low`.
 */
export function holderArgs(major: GpiosetMajor, line: GpioLine, level: 0 | 1, consumer: string): string[] {
  const bias = line.bias !== undefined ? [`--bias=${line.bias}`] : [];
  const lineValue = `${line.line}=${level}`;
  if (major === 1) return ['--mode=wait', ...bias, line.chip, lineValue];
  return ['--banner', `--consumer=${consumer}`, ...bias, `--chip=${line.chip}`, lineValue];
}

/**
 * gpioset 2.x ignores stdin in its holding mode and its `--interactive` mode loops forever on end
 * of file, so neither dies with the agent. This POSIX sh guard runs gpioset in the background and
 * kills it when stdin reaches end of file, which the kernel delivers when the agent exits, even
 * by SIGKILL. The guard exits with gpioset's status, so a gpioset that dies is seen as the guard
 * exiting. Arguments: the gpioset path, then its arguments.
 */
export const GPIOSET_V2_GUARD = [
  'exec 3<&0 </dev/null',
  '"$@" &',
  'g=$!',
  '{ read -r _ <&3; kill -TERM "$g" 2>/dev/null; } &',
  'w=$!',
  'exec 3<&-',
  'wait "$g"',
  's=$?',
  'kill "$w" 2>/dev/null',
  'exit "$s"',
].join('\n');
