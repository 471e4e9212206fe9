import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { linkModel } from '../../../bench/ble-link-model.js';

/**
 * The modelled radio time of a mode P tap (bench/ble-link-model.ts): two connection events per
 * ATT request on the path, Read Blob continuations and long writes counted as the stand-in and
 * BlueZ perform them.
 */
describe('linkModel', () => {
  it.each([
    // A web key's tap at MTU 247: one read, one write request → two events.
    { mtu: 247, challengeBytes: 60, answerBytes: 129, reads: 1, writes: 1, longWrite: false, events: 2 },
    // A passkey's answer past MTU−3: two Prepare Writes then the Execute → 2 + 2·2 events.
    { mtu: 247, challengeBytes: 60, answerBytes: 301, reads: 1, writes: 2, longWrite: true, events: 6 },
    // At MTU 517 the same passkey answer is one Write Request.
    { mtu: 517, challengeBytes: 60, answerBytes: 301, reads: 1, writes: 1, longWrite: false, events: 2 },
    // The write limit is MTU−3 exactly: 244 bytes fit, 245 do not.
    { mtu: 247, challengeBytes: 60, answerBytes: 244, reads: 1, writes: 1, longWrite: false, events: 2 },
    { mtu: 247, challengeBytes: 60, answerBytes: 245, reads: 1, writes: 2, longWrite: true, events: 6 },
    // At the minimum MTU the 60-byte challenge takes a Read and two Read Blobs (22 bytes each).
    { mtu: 23, challengeBytes: 60, answerBytes: 129, reads: 3, writes: 8, longWrite: true, events: 22 },
    // A value that fills MTU−1 exactly needs one more (empty) Read Blob to end.
    { mtu: 23, challengeBytes: 44, answerBytes: 20, reads: 3, writes: 1, longWrite: false, events: 6 },
  ])('MTU $mtu, challenge $challengeBytes B, answer $answerBytes B → $events events', (row) => {
    const model = linkModel({ intervalMs: 30, ...row });
    expect(model).toEqual({
      reads: row.reads,
      writes: row.writes,
      longWrite: row.longWrite,
      events: row.events,
      ms: row.events * 30,
    });
  });

  it('scales with the connection interval and never counts fewer than two events', () => {
    fc.assert(
      fc.property(
        fc.double({ min: 7.5, max: 4000, noNaN: true }),
        fc.integer({ min: 23, max: 517 }),
        fc.integer({ min: 1, max: 512 }),
        fc.integer({ min: 1, max: 512 }),
        (intervalMs, mtu, challengeBytes, answerBytes) => {
          const model = linkModel({ intervalMs, mtu, challengeBytes, answerBytes });
          expect(model.events).toBeGreaterThanOrEqual(2);
          expect(model.ms).toBeCloseTo(model.events * intervalMs, 6);
          // A bigger MTU never makes the path longer.
          const wider = linkModel({ intervalMs, mtu: Math.min(517, mtu + 1), challengeBytes, answerBytes });
          expect(wider.events).toBeLessThanOrEqual(model.events);
        },
      ),
    );
  });

  it.each([
    { intervalMs: 0, mtu: 247, challengeBytes: 60, answerBytes: 129 },
    { intervalMs: Number.NaN, mtu: 247, challengeBytes: 60, answerBytes: 129 },
    { intervalMs: 30, mtu: 22, challengeBytes: 60, answerBytes: 129 },
    { intervalMs: 30, mtu: 247.5, challengeBytes: 60, answerBytes: 129 },
    { intervalMs: 30, mtu: 247, challengeBytes: 0, answerBytes: 129 },
    { intervalMs: 30, mtu: 247, challengeBytes: 60, answerBytes: 513 },
  ])('refuses %o', (input) => {
    expect(() => linkModel(input)).toThrow(RangeError);
  });
});
