import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { NoiseSummaries, type NoiseSummary } from '../../../src/agent/noise-summary.js';

describe('NoiseSummaries', () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: 0 });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  const make = () => {
    const out: NoiseSummary[] = [];
    const noise = new NoiseSummaries({ intervalMs: 1000, now: () => Date.now(), emit: (s) => out.push(s) });
    return { noise, out };
  };

  it('audits the first per reader and code in full, counts the rest into one summary at the interval end', () => {
    const { noise, out } = make();
    expect(noise.note('ble0', 'malformed')).toBe('record');
    expect(noise.note('ble0', 'timeout')).toBe('record');
    expect(noise.note('nfc0', 'malformed')).toBe('record');
    for (let i = 0; i < 500; i++) {
      vi.advanceTimersByTime(1);
      expect(noise.note('ble0', 'malformed')).toBe('suppressed');
    }
    expect(out).toEqual([]);
    vi.advanceTimersByTime(500);
    expect(out).toEqual([
      {
        type: 'access.summary',
        reader: 'ble0',
        result: 'denied',
        code: 'malformed',
        count: 500,
        from: new Date(1).toISOString(),
        to: new Date(500).toISOString(),
      },
    ]);
    expect(noise.suppressed).toBe(500);
    // A new interval starts with a full record again.
    expect(noise.note('ble0', 'malformed')).toBe('record');
  });

  it('writes at most two records per reader, code and interval, however long the flood', () => {
    const { noise, out } = make();
    let records = 0;
    for (let t = 0; t < 10_000; t += 2) {
      vi.setSystemTime(t);
      vi.advanceTimersByTime(0);
      if (noise.note('ble0', 'malformed') === 'record') records++;
    }
    noise.flush();
    expect(records + out.length).toBeLessThanOrEqual(2 * 10 + 2);
    expect(records + out.reduce((n, s) => n + s.count, 0)).toBe(5000);
  });

  it('flushes pending summaries at stop and writes none for a lone event', () => {
    const { noise, out } = make();
    noise.note('ble0', 'timeout');
    noise.flush();
    expect(out).toEqual([]);
    noise.note('ble0', 'timeout');
    noise.note('ble0', 'timeout');
    noise.flush();
    expect(out.map((s) => s.count)).toEqual([1]);
  });
});
