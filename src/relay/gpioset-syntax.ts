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
 * Whether a gpioset 2.x was built with its interactive mode (`./configure
 * --enable-gpioset-interactive`, optional): its `--help` lists `-i, --interactive`.
 */
export function hasInteractiveMode(helpOutput: string): boolean {
  return /(^|\s)--interactive\b/m.test(helpOutput);
}

/**
 * Arguments for a gpioset 2.x that requests one line at `level` and then takes commands on stdin
 * (`set 17=1`), one long-lived holder per relay. Without a tty it prints its prompt before every
 * command it reads, after the previous one is done: the first prompt says the line is held, each
 * later one that the command before it was applied.
 */
export function interactiveHolderArgs(line: GpioLine, level: 0 | 1, consumer: string): string[] {
  const bias = line.bias !== undefined ? [`--bias=${line.bias}`] : [];
  return ['--interactive', `--consumer=${consumer}`, ...bias, `--chip=${line.chip}`, `${line.line}=${level}`];
}

/** The interactive command that drives the line at `level` (the id is the offset it was requested by). */
export function setLevelCommand(line: GpioLine, level: 0 | 1): string {
  return `set ${line.line}=${level}\n`;
}

/** gpioset's interactive prompt; it has no newline. */
export const GPIOSET_PROMPT = 'gpioset> ';

/**
 * Splits what an interactive gpioset printed into the output of each command it finished: every
 * prompt ends one (the first one ends start-up, with no command). `pending` is what came after
 * the last prompt (the command under way). Pure, for the holder's stdout parser.
 */
export function splitAtPrompts(text: string): { readonly done: string[]; readonly pending: string } {
  const parts = text.split(GPIOSET_PROMPT);
  const pending = parts.pop() ?? '';
  return { done: parts, pending };
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

/**
 * The guard for an interactive gpioset 2.x, whose stdin carries the commands and so cannot be the
 * line that tells it its owner died: the owner passes a second pipe on fd 3 that it never writes
 * to. End of file there (the owner closed it, or died, even by SIGKILL) ends gpioset; stdin goes
 * to gpioset as it is. The guard exits with gpioset's status, so a gpioset that dies is seen as
 * the guard exiting. Arguments: the gpioset path, then its arguments.
 */
export const GPIOSET_V2_INTERACTIVE_GUARD = [
  'exec 4<&0 </dev/null',
  '"$@" <&4 3<&- 4<&- &',
  'g=$!',
  'exec 4<&-',
  '{ read -r _ <&3; kill -s TERM "$g" 2>/dev/null; } &',
  'w=$!',
  'exec 3<&-',
  'wait "$g"',
  's=$?',
  'kill "$w" 2>/dev/null',
  'exit "$s"',
].join('\n');
