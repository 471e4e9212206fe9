/**
 * Audit summaries for reader noise: denials that identified no credential (garbage over the radio,
 * unknown cards and keys, malformed frames, silent peers) and rate-limit refusals. Anyone in radio
 * range makes as many of those as they like, so they are not written one record each: per reader
 * and code, the first one in an interval is audited in full (a lone event reads as before) and the
 * rest are counted into one `access.summary` record when the interval ends. At most two records
 * per reader, code and interval, whatever the flood. Denials of a credential in the keyring are
 * not noise and are audited one by one (rate-limit.ts bounds them per credential).
 */

/** A type alias (not an interface) so it is assignable to an audit event. */
export type NoiseSummary = {
  readonly type: 'access.summary';
  readonly reader: string;
  readonly result: 'denied';
  readonly code: string;
  /** Denials in the interval that were not written one by one. */
  readonly count: number;
  /** Trusted times (ISO 8601) of the first and the last of them. */
  readonly from: string;
  readonly to: string;
};

export interface NoiseSummaryOptions {
  readonly intervalMs: number;
  /** Trusted wall time (ms). */
  readonly now: () => number;
  readonly emit: (summary: NoiseSummary) => void;
}

interface Window {
  readonly reader: string;
  readonly code: string;
  readonly endsAt: number;
  count: number;
  first: number;
  last: number;
  timer: NodeJS.Timeout | undefined;
}

export class NoiseSummaries {
  private readonly options: NoiseSummaryOptions;
  /** Keyed by reader and code: bounded by readers × denial codes. */
  private readonly windows = new Map<string, Window>();
  private suppressedTotal = 0;

  constructor(options: NoiseSummaryOptions) {
    this.options = options;
  }

  /** Denials folded into summaries so far. */
  get suppressed(): number {
    return this.suppressedTotal;
  }

  /** 'record' when this denial is to be audited in full, 'suppressed' when a summary counts it. */
  note(reader: string, code: string): 'record' | 'suppressed' {
    const now = this.options.now();
    const key = `${reader}\u0000${code}`;
    const open = this.windows.get(key);
    if (open === undefined || now >= open.endsAt) {
      if (open !== undefined) this.close(key, open);
      this.windows.set(key, {
        reader,
        code,
        endsAt: now + this.options.intervalMs,
        count: 0,
        first: 0,
        last: 0,
        timer: undefined,
      });
      return 'record';
    }
    if (open.count === 0) {
      open.first = now;
      // The summary is written when the interval ends, even if the noise stops before.
      open.timer = setTimeout(() => this.close(key, open), Math.max(0, open.endsAt - now));
      open.timer.unref();
    }
    open.count += 1;
    open.last = now;
    this.suppressedTotal += 1;
    return 'suppressed';
  }

  /** Writes every pending summary now (at stop). */
  flush(): void {
    for (const [key, window] of [...this.windows]) this.close(key, window);
  }

  private close(key: string, window: Window): void {
    clearTimeout(window.timer);
    if (this.windows.get(key) === window) this.windows.delete(key);
    if (window.count === 0) return;
    this.options.emit({
      type: 'access.summary',
      reader: window.reader,
      result: 'denied',
      code: window.code,
      count: window.count,
      from: new Date(window.first).toISOString(),
      to: new Date(window.last).toISOString(),
    });
    window.count = 0;
  }
}
