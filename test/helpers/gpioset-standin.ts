import { closeSync, existsSync, fstatSync, openSync, readSync } from 'node:fs';

/**
 * A stand-in `gpioset` put first on PATH (there is no gpio-sim here). It records what it was asked
 * in the file named by GPIOSET_STANDIN_LOG, one event a line, each stamped with the wall clock in
 * microseconds (bash's $EPOCHREALTIME, no fork): the same clock as `performance.timeOrigin +
 * performance.now()` in any Node process, so a test or a bench sees when a line changed from
 * outside the process that drives it (see wallMicros and toHrtime below).
 *
 *   start PID US ARGS...   a holder requested its line(s) at the levels in ARGS
 *   set PID US LINE=V      an interactive holder drove LINE to V (0 or 1)
 *   end PID US             the holder let its lines go (they fall to their bias)
 *
 * Dialects, as libgpiod's:
 * - 1.x: `--mode=wait [--bias=B] CHIP LINE=V`: holds until a newline or end of file on stdin.
 * - 2.x: `[--banner] [--consumer=C] [--bias=B] --chip=CHIP LINE=V`: holds until a signal; prints
 *   "Setting line 'LINE'..." with --banner.
 * - 2.x `--interactive` (only when built with it, as in libgpiod; its --help lists it): prints
 *   the prompt "gpioset> " (no newline) before each command, and runs set, get, toggle, sleep,
 *   help and exit. At end of file the real one spins for ever; this one holds the lines silently
 *   until a signal, so only its owner's guard can end it (a test sees a guard that fails to).
 * A line named in GPIOSET_STANDIN_BUSY fails at start as an already requested line; with
 * GPIOSET_STANDIN_SET_FAIL set, an interactive `set` fails as the kernel's refusal does (a message
 * on stderr, then the prompt).
 */
function standIn(options: { readonly version: string; readonly interactive: boolean }): string {
  const helpInteractive = options.interactive
    ? `  -i, --interactive\\tset the lines then wait for additional set commands\\n`
    : '';
  return `#!/usr/bin/env bash
export LC_ALL=C
log="\${GPIOSET_STANDIN_LOG:?}"
stamp() { t=\${EPOCHREALTIME/[.,]/}; }
case "$1" in
  --version|-v) printf '%s\\n' "${options.version}" "Copyright (C) 2017-2023 Bartosz Golaszewski"; exit 0;;
  --help|-h) printf 'Usage: gpioset [OPTIONS] <line=value>...\\n  -c, --chip <chip>\\trestrict scope to a particular chip\\n${helpInteractive}'; exit 0;;
esac
v1=${options.version.includes('v1.') ? 1 : 0}
interactive=0; banner=0; lines=()
declare -A value
for a in "$@"; do
  case "$a" in
    -i|--interactive) [ ${options.interactive ? 1 : 0} = 1 ] && interactive=1 || { echo "gpioset: unrecognized option '$a'" >&2; exit 1; };;
    --banner) banner=1;;
    -*) ;;
    *=*) l=\${a%%=*}; lines+=("$l"); value[$l]=\${a#*=};;
  esac
done
for l in "\${lines[@]}"; do
  if [ "$l" = "\${GPIOSET_STANDIN_BUSY:-none}" ]; then
    echo "gpioset: unable to request lines: Device or resource busy" >&2; exit 1
  fi
done
s=
trap '[ -n "$s" ] && kill $s 2>/dev/null; stamp; echo "end $$ $t" >> "$log"; exit 143' TERM INT
stamp; echo "start $$ $t $*" >> "$log"
if [ "$v1" = 1 ]; then
  read -r _ || true
  stamp; echo "end $$ $t" >> "$log"
  exit 0
fi
[ "$banner" = 1 ] && echo "Setting line '\${lines[-1]}'..."
hold() { while :; do sleep 1 & s=$!; wait $s; done; }
[ "$interactive" = 1 ] || hold
norm() {
  case "$1" in 1|active|on|true) n=1;; 0|inactive|off|false) n=0;; *) n=;; esac
}
known() { [ -n "\${value[$1]+x}" ]; }
while :; do
  printf 'gpioset> '
  IFS= read -r cmd || hold
  set -f; w=($cmd); set +f
  case "\${w[0]}" in
    '') ;;
    set)
      [ "\${#w[@]}" -gt 1 ] || { echo "at least one GPIO line value must be specified"; continue; }
      ok=1; new=()
      for lv in "\${w[@]:1}"; do
        l=\${lv%%=*}; norm "\${lv#*=}"
        if [ "$lv" = "$l" ] || [ -z "$n" ]; then echo "invalid line value: '$lv'"; ok=0; break; fi
        known "$l" || { echo "unknown line: '$l'"; ok=0; break; }
        new+=("$l=$n")
      done
      [ "$ok" = 1 ] || continue
      if [ -n "\${GPIOSET_STANDIN_SET_FAIL:-}" ]; then
        echo "gpioset: unable to set values on 'gpiochip0': Input/output error" >&2; continue
      fi
      stamp
      for lv in "\${new[@]}"; do value[\${lv%%=*}]=\${lv#*=}; echo "set $$ $t $lv" >> "$log"; done;;
    toggle)
      targets=("\${w[@]:1}"); [ "\${#targets[@]}" -gt 0 ] || targets=("\${lines[@]}")
      stamp
      for l in "\${targets[@]}"; do
        known "$l" || { echo "unknown line: '$l'"; continue; }
        value[$l]=$((1 - value[$l])); echo "set $$ $t $l=\${value[$l]}" >> "$log"
      done;;
    get)
      out=(); for l in "\${lines[@]}"; do [ "\${value[$l]}" = 1 ] && out+=("\\"$l\\"=active") || out+=("\\"$l\\"=inactive"); done
      echo "\${out[*]}";;
    sleep) sleep "$(awk -v p="\${w[1]}" 'BEGIN { n = p + 0; if (p ~ /ms$/) n /= 1000; else if (p ~ /us$/) n /= 1000000; print n }')";;
    exit) stamp; echo "end $$ $t" >> "$log"; exit 0;;
    help) printf 'COMMANDS:\\n\\n    exit\\n    get [line]...\\n    help\\n    set <line=value>...\\n    sleep <period>\\n    toggle [line]...\\n';;
    *) echo "unknown command: '\${w[0]}'"; echo "Try the 'help' command";;
  esac
done
`;
}

/** libgpiod 1.6 (Debian 12, Raspberry Pi OS Bullseye). */
export const STANDIN_V1 = standIn({ version: 'gpioset (libgpiod) v1.6.3', interactive: false });
/** libgpiod 2.x built with its interactive mode. */
export const STANDIN_V2 = standIn({ version: 'gpioset (libgpiod) v2.1', interactive: true });
/** libgpiod 2.x built without its interactive mode (it is optional): a holder per level. */
export const STANDIN_V2_PLAIN = standIn({ version: 'gpioset v2.2.1 (libgpiod v2.2.1)', interactive: false });

export interface Run {
  readonly pid: number;
  /** Wall clock, milliseconds (microsecond precision). */
  readonly startMs: number;
  readonly args: string;
  endMs?: number;
}

interface Event {
  readonly kind: 'start' | 'set' | 'end';
  readonly pid: number;
  readonly us: number;
  readonly rest: string;
}

/** The events of whole lines of a record (a line still being written is left for later). */
function parseEvents(lines: readonly string[]): Event[] {
  const events: Event[] = [];
  for (const line of lines) {
    const [kind, pid, us, ...rest] = line.split(' ');
    if (kind !== 'start' && kind !== 'set' && kind !== 'end') continue;
    if (us === undefined || !/^\d+$/.test(us)) continue;
    events.push({ kind, pid: Number(pid), us: Number(us), rest: rest.join(' ') });
  }
  return events;
}

/** One change of a line as seen from outside: driven to 0 or 1, or let go (null: its bias). */
export interface LineChange {
  readonly us: number;
  readonly level: 0 | 1 | null;
  readonly pid: number;
}

/**
 * A stand-in's record read as it grows (each poll() reads only what was appended), turned into
 * the changes of every line: a holder starting with it, an interactive `set`, a holder ending
 * while it held it (the line falls to its bias).
 */
export class StandInRecord {
  private offset = 0;
  private partial = '';
  private readonly runs = new Map<number, Run>();
  private readonly changesByLine = new Map<number, LineChange[]>();
  private readonly linesOf = new Map<number, Set<number>>();

  constructor(private readonly logPath: string) {}

  /** Reads what was appended since the last poll. */
  poll(): this {
    if (!existsSync(this.logPath)) return this;
    const fd = openSync(this.logPath, 'r');
    try {
      const size = fstatSync(fd).size;
      if (size <= this.offset) return this;
      const buffer = Buffer.alloc(size - this.offset);
      const read = readSync(fd, buffer, 0, buffer.length, this.offset);
      this.offset += read;
      const lines = (this.partial + buffer.subarray(0, read).toString('utf8')).split('\n');
      this.partial = lines.pop() ?? '';
      for (const e of parseEvents(lines)) this.apply(e);
    } finally {
      closeSync(fd);
    }
    return this;
  }

  /** Every holder the stand-in ran, in start order. */
  holders(): Run[] {
    return [...this.runs.values()];
  }

  changes(line: number): readonly LineChange[] {
    return this.changesByLine.get(line) ?? [];
  }

  private apply(e: Event): void {
    const changes = (line: number) => {
      let list = this.changesByLine.get(line);
      if (list === undefined) {
        list = [];
        this.changesByLine.set(line, list);
      }
      return list;
    };
    const levels = [...e.rest.matchAll(/(?:^| )(\d+)=([01])(?= |$)/g)].map(
      (m) => [Number(m[1]), m[2] === '1' ? 1 : 0] as const,
    );
    if (e.kind === 'start') {
      this.runs.set(e.pid, { pid: e.pid, startMs: e.us / 1000, args: e.rest });
      this.linesOf.set(e.pid, new Set(levels.map(([line]) => line)));
    }
    if (e.kind === 'start' || e.kind === 'set') {
      for (const [line, level] of levels) changes(line).push({ us: e.us, level, pid: e.pid });
    }
    if (e.kind === 'end') {
      const run = this.runs.get(e.pid);
      if (run) run.endMs = e.us / 1000;
      for (const line of this.linesOf.get(e.pid) ?? [])
        changes(line).push({ us: e.us, level: null, pid: e.pid });
      this.linesOf.delete(e.pid);
    }
  }
}

/** Every holder the stand-in ran, in start order. */
export function readRuns(logPath: string): Run[] {
  return new StandInRecord(logPath).poll().holders();
}

export const live = (runs: Run[]) => runs.filter((r) => r.endMs === undefined);

/** Every change of one GPIO line (by offset), in order. */
export function lineChanges(logPath: string, line: number): LineChange[] {
  return [...new StandInRecord(logPath).poll().changes(line)];
}

/**
 * Periods during which a line was at its energising level: from a change to `energised` to the
 * next change away from it (a release, null, counts as off: the bias holds the relay off).
 */
export function energisedPeriods(
  changes: readonly LineChange[],
  energised: 0 | 1,
): { readonly fromUs: number; readonly toUs: number | undefined }[] {
  const periods: { fromUs: number; toUs: number | undefined }[] = [];
  let open: { fromUs: number; toUs: number | undefined } | undefined;
  for (const c of changes) {
    if (c.level === energised) {
      if (open === undefined) {
        open = { fromUs: c.us, toUs: undefined };
        periods.push(open);
      }
    } else if (open !== undefined) {
      open.toUs = c.us;
      open = undefined;
    }
  }
  return periods;
}

/** The wall clock in microseconds, as the stand-in stamps it. */
export function wallMicros(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/** A stand-in time (µs) on this process's process.hrtime clock (ns), for timing across processes. */
export function toHrtime(us: number): bigint {
  const hr = process.hrtime.bigint();
  const wallNs = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
  return BigInt(us) * 1000n + (hr - wallNs);
}
