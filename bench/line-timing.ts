import type { ByteLink } from '../src/nfc/pn532/link.js';

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
