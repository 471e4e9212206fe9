import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ByteLink } from '../src/nfc/pn532/link.js';
import { StandInRecord, toHrtime } from '../test/helpers/gpioset-standin.js';

/**
 * When bytes crossed one end of a line, for splitting a latency into whose turn it was. Times are
 * process.hrtime (CLOCK_MONOTONIC, shared by processes), so events from two processes compare.
 */
export interface LineEvent {
  readonly at: bigint;
  readonly dir: 'in' | 'out';
}

export const msBetween = (from: bigint, to: bigint): number => Number(to - from) / 1e6;

/**
 * Time this end held the turn between `from` and `until`: from each event of kind `starts`
 * (bytes in, for the side that answers; bytes out, for the side that waits) to the next event of
 * the other kind, and from the last unanswered one to `until`.
 */
export function turnTime(
  events: readonly LineEvent[],
  from: bigint,
  until: bigint,
  starts: 'in' | 'out',
): number {
  let total = 0;
  let open: bigint | undefined;
  for (const e of events) {
    if (e.at < from || e.at > until) continue;
    if (e.dir === starts) open = e.at;
    else if (open !== undefined) {
      total += msBetween(open, e.at);
      open = undefined;
    }
  }
  if (open !== undefined) total += msBetween(open, until);
  return total;
}

/**
 * A ByteLink that records its traffic: 'in' when a chunk reaches the code above it, 'out' when
 * that code writes. `record` makes each event (a caller may attach state to it).
 */
export class TimedByteLink<E extends LineEvent = LineEvent> implements ByteLink {
  constructor(
    private readonly inner: ByteLink,
    private readonly events: E[],
    private readonly record: (dir: 'in' | 'out') => E = (dir) => ({ at: process.hrtime.bigint(), dir }) as E,
  ) {}
  get isOpen(): boolean {
    return this.inner.isOpen;
  }
  write(bytes: Uint8Array): Promise<void> {
    this.events.push(this.record('out'));
    return this.inner.write(bytes);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  onData(listener: (chunk: Uint8Array) => void): void {
    this.inner.onData((chunk) => {
      this.events.push(this.record('in'));
      listener(chunk);
    });
  }
  onClose(listener: (error: Error | undefined) => void): void {
    this.inner.onClose(listener);
  }
}

/**
 * A relay line seen from outside the agent: a stand-in gpioset (test/helpers/gpioset-standin.ts)
 * first on a private PATH records every change of every line it holds, stamped with the wall
 * clock in microseconds; this reads the record as it grows and puts its times on process.hrtime,
 * so a benchmark stops its clock when the line changed, not when the agent meant it to.
 */
export class GpiosetRig {
  /** Environment for whatever runs gpioset (the relay guard): the stand-in first on PATH. */
  readonly env: NodeJS.ProcessEnv;
  /** Configuration (as environment overrides) for GPIO relays on lines 17 (unlock) and 27 (lock). */
  readonly configEnv: Readonly<Record<string, string>> = {
    VEHICLE_AGENT_RELAY__DRIVER: 'gpio',
    VEHICLE_AGENT_RELAY__GPIO__UNLOCK_LINE: '17',
    VEHICLE_AGENT_RELAY__GPIO__LOCK_LINE: '27',
  };
  private readonly dir: string;
  private readonly record: StandInRecord;

  constructor(standIn: string) {
    this.dir = mkdtempSync(join(tmpdir(), 'va-bench-gpioset-'));
    const logPath = join(this.dir, 'gpioset.log');
    writeFileSync(join(this.dir, 'gpioset'), standIn, { mode: 0o755 });
    this.env = {
      ...process.env,
      PATH: `${this.dir}:${process.env.PATH ?? '/usr/bin:/bin'}`,
      GPIOSET_STANDIN_LOG: logPath,
    };
    this.record = new StandInRecord(logPath);
  }

  /** How many changes `line` has had so far. */
  changeCount(line: number): number {
    return this.record.poll().changes(line).length;
  }

  /**
   * Resolves with the time (process.hrtime) of the first change of `line` after the first `from`
   * changes that switches the relay on (`energised`: to 1) or off (to 0, or let go to its bias).
   */
  async waitChange(line: number, from: number, energised: boolean, timeoutMs = 5000): Promise<bigint> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const change = this.record
        .poll()
        .changes(line)
        .slice(from)
        .find((c) => (energised ? c.level === 1 : c.level !== 1));
      if (change !== undefined) return toHrtime(change.us);
      if (performance.now() > deadline) throw new Error(`line ${line} did not change within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  close(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
