import type { CancelTimer, Timers } from '../../src/relay/timers.js';

interface Entry {
  readonly at: number;
  readonly seq: number;
  readonly callback: () => void;
  cancelled: boolean;
}

/** Lets every promise chain that is ready run (microtasks drain before the next macrotask). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

/**
 * A manual clock for Timers: time moves only in advance(), which runs due callbacks in time order
 * and lets promise chains settle after each, so relay commands that await run as they would.
 */
export class ManualTimers implements Timers {
  private time = 0;
  private seq = 0;
  private entries: Entry[] = [];

  now(): number {
    return this.time;
  }

  schedule(delayMs: number, callback: () => void): CancelTimer {
    const entry: Entry = {
      at: this.time + Math.max(0, delayMs),
      seq: this.seq++,
      callback,
      cancelled: false,
    };
    this.entries.push(entry);
    return () => {
      entry.cancelled = true;
    };
  }

  /** Number of callbacks still scheduled. */
  pending(): number {
    return this.entries.filter((e) => !e.cancelled).length;
  }

  async advance(ms: number): Promise<void> {
    const end = this.time + ms;
    await settle();
    for (;;) {
      this.entries = this.entries.filter((e) => !e.cancelled);
      const due = this.entries.filter((e) => e.at <= end).sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (due === undefined) break;
      this.entries = this.entries.filter((e) => e !== due);
      this.time = due.at;
      due.callback();
      await settle();
    }
    this.time = end;
    await settle();
  }

  /** Advances to an absolute time. */
  advanceTo(at: number): Promise<void> {
    return this.advance(Math.max(0, at - this.time));
  }
}
