import { existsSync, readFileSync } from 'node:fs';

/**
 * A stand-in gpioset first on PATH that records every run: "start PID MS ARGS..." when it starts
 * and "end PID MS" when it stops holding. Like gpioset 1.x --mode=wait it holds until a newline or
 * end of file on stdin; a line named in GPIOSET_STANDIN_BUSY fails as an already requested line.
 */
export const STANDIN_V1 = `#!/bin/sh
log="\${GPIOSET_STANDIN_LOG:?}"
case "$1" in --version|-v) echo "gpioset (libgpiod) v1.6.3"; echo "Copyright (C) 2017-2018 Bartosz Golaszewski"; exit 0;; esac
for a in "$@"; do
  case "$a" in "\${GPIOSET_STANDIN_BUSY:-none}="*) echo "gpioset: error setting the GPIO line values: Device or resource busy" >&2; exit 1;; esac
done
echo "start $$ $(date +%s%3N) $*" >> "$log"
read -r _ || true
echo "end $$ $(date +%s%3N)" >> "$log"
`;

/**
 * Like gpioset 2.x: prints the banner when asked, ignores stdin and holds until a signal.
 */
export const STANDIN_V2 = `#!/bin/sh
log="\${GPIOSET_STANDIN_LOG:?}"
case "$1" in --version|-v) echo "gpioset (libgpiod) v2.1"; echo "Copyright (C) 2017-2023 Bartosz Golaszewski"; exit 0;; esac
echo "start $$ $(date +%s%3N) $*" >> "$log"
banner=0
for a in "$@"; do [ "$a" = "--banner" ] && banner=1; last="$a"; done
s=
trap 'kill $s 2>/dev/null; echo "end $$ $(date +%s%3N)" >> "$log"; exit 0' TERM INT
[ "$banner" = 1 ] && echo "Setting line '\${last%%=*}'..."
while :; do sleep 1 & s=$!; wait $s; done
`;

export interface Run {
  readonly pid: number;
  readonly startMs: number;
  readonly args: string;
  endMs?: number;
}

export function readRuns(logPath: string): Run[] {
  if (!existsSync(logPath)) return [];
  const runs = new Map<number, Run>();
  for (const line of readFileSync(logPath, 'utf8').split('\n')) {
    const [event, pid, ms, ...args] = line.split(' ');
    if (event === 'start')
      runs.set(Number(pid), { pid: Number(pid), startMs: Number(ms), args: args.join(' ') });
    if (event === 'end') {
      const run = runs.get(Number(pid));
      if (run) run.endMs = Number(ms);
    }
  }
  return [...runs.values()];
}

export const live = (runs: Run[]) => runs.filter((r) => r.endMs === undefined);
