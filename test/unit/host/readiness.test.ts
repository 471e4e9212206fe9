import { describe, expect, it } from 'vitest';
import { isStarting, type PartReport, summarizeReadiness } from '../../../src/host/readiness.js';

describe('summarizeReadiness', () => {
  it.each<{ reports: PartReport[]; parts: Record<string, string>; notUp: string[]; summary: string }>([
    {
      reports: [
        { part: 'relay', health: { state: 'ok' } },
        { part: 'nfc', health: { state: 'ok', detail: 'ignored when ok' } },
        { part: 'cloud', health: { state: 'disabled' } },
      ],
      parts: { relay: 'ok', nfc: 'ok', cloud: 'off' },
      notUp: [],
      summary: 'ready: relay ok, nfc ok, cloud off',
    },
    {
      reports: [
        { part: 'relay', health: { state: 'ok' } },
        { part: 'nfc', health: { state: 'down', detail: 'port /dev/pn532 not found' } },
        { part: 'ble', health: { state: 'degraded' } },
      ],
      parts: { relay: 'ok', nfc: 'down: port /dev/pn532 not found', ble: 'degraded' },
      notUp: ['nfc', 'ble'],
      summary: 'ready, but nfc, ble not up: relay ok, nfc down (port /dev/pn532 not found), ble degraded',
    },
    {
      reports: [{ part: 'status page', health: { state: 'ok', detail: 'http://127.0.0.1:8080/' } }],
      parts: { 'status page': 'ok' },
      notUp: [],
      summary: 'ready: status page ok',
    },
    { reports: [], parts: {}, notUp: [], summary: 'ready: ' },
  ])('$summary', ({ reports, parts, notUp, summary }) => {
    const r = summarizeReadiness(reports);
    expect(r.parts).toEqual(parts);
    expect(r.notUp).toEqual(notUp);
    expect(r.summary).toBe(summary);
  });
});

describe('parts still starting', () => {
  it('are neither up nor faults: listed apart, and the head says ready', () => {
    const r = summarizeReadiness([
      { part: 'relay', health: { state: 'ok' } },
      { part: 'nfc0', health: { state: 'degraded', detail: 'starting' } },
      { part: 'ble0', health: { state: 'down', detail: 'starting (sim)' } },
      { part: 'ble1', health: { state: 'down', detail: 'startingly broken' } },
    ]);
    expect(r.starting).toEqual(['nfc0', 'ble0']);
    expect(r.notUp).toEqual(['ble1']);
    expect(r.parts).toEqual({
      relay: 'ok',
      nfc0: 'starting',
      ble0: 'starting',
      ble1: 'down: startingly broken',
    });
    expect(r.summary).toBe(
      'ready, but ble1 not up: relay ok, nfc0 starting, ble0 starting, ble1 down (startingly broken)',
    );
  });

  it.each<[string, { state: 'ok' | 'degraded' | 'down' | 'disabled'; detail?: string }, boolean]>([
    ['degraded starting', { state: 'degraded', detail: 'starting' }, true],
    ['down starting (sim)', { state: 'down', detail: 'starting (sim)' }, true],
    ['ok starting', { state: 'ok', detail: 'starting' }, false],
    ['disabled starting', { state: 'disabled', detail: 'starting' }, false],
    ['down without detail', { state: 'down' }, false],
    ['down, restarting', { state: 'down', detail: 'restarting' }, false],
  ])('%s → %s', (_name, health, starting) => {
    expect(isStarting(health)).toBe(starting);
  });
});
