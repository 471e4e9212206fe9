import { describe, expect, it } from 'vitest';
import { escapeLabelValue, formatValue, oneHot, renderMetrics } from '../../../src/status/metrics.js';
import { parseExposition } from '../../helpers/prometheus.js';

describe('Prometheus text format', () => {
  it('renders HELP, TYPE and samples with labels', () => {
    const text = renderMetrics([
      {
        name: 'vehicle_agent_decisions_total',
        help: 'Access decisions.',
        type: 'counter',
        samples: [
          { labels: { result: 'granted', code: '' }, value: 3 },
          { labels: { result: 'denied', code: 'bad_proof' }, value: 1 },
        ],
      },
      { name: 'vehicle_agent_up', help: 'Up.', type: 'gauge', samples: [{ value: 1 }] },
      { name: 'vehicle_agent_empty', help: 'Nothing yet.', type: 'gauge', samples: [] },
    ]);
    expect(text).toBe(
      [
        '# HELP vehicle_agent_decisions_total Access decisions.',
        '# TYPE vehicle_agent_decisions_total counter',
        'vehicle_agent_decisions_total{result="granted",code=""} 3',
        'vehicle_agent_decisions_total{result="denied",code="bad_proof"} 1',
        '# HELP vehicle_agent_up Up.',
        '# TYPE vehicle_agent_up gauge',
        'vehicle_agent_up 1',
        '# HELP vehicle_agent_empty Nothing yet.',
        '# TYPE vehicle_agent_empty gauge',
        '',
      ].join('\n'),
    );
    expect(parseExposition(text).get('vehicle_agent_decisions_total')?.samples).toHaveLength(2);
  });

  it('escapes label values and help text', () => {
    expect(escapeLabelValue('a"b\\c\nd')).toBe('a\\"b\\\\c\\nd');
    const text = renderMetrics([
      {
        name: 'm',
        help: 'line one\nline \\ two',
        type: 'gauge',
        samples: [{ labels: { reader: 'odd "reader"\n' }, value: 0 }],
      },
    ]);
    expect(text).toContain('# HELP m line one\\nline \\\\ two\n');
    expect(text).toContain('m{reader="odd \\"reader\\"\\n"} 0\n');
    parseExposition(text);
  });

  it('formats special values', () => {
    expect(formatValue(Number.NaN)).toBe('NaN');
    expect(formatValue(Number.POSITIVE_INFINITY)).toBe('+Inf');
    expect(formatValue(Number.NEGATIVE_INFINITY)).toBe('-Inf');
    expect(formatValue(0.25)).toBe('0.25');
  });

  it('refuses bad names and a family rendered twice', () => {
    expect(() => renderMetrics([{ name: '9bad', help: '', type: 'gauge', samples: [] }])).toThrow();
    expect(() =>
      renderMetrics([
        { name: 'm', help: '', type: 'gauge', samples: [{ labels: { 'bad-label': 'x' }, value: 1 }] },
      ]),
    ).toThrow(/bad label name/);
    expect(() =>
      renderMetrics([
        { name: 'm', help: '', type: 'gauge', samples: [{ labels: { __name__: 'x' }, value: 1 }] },
      ]),
    ).toThrow(/bad label name/);
    expect(() =>
      renderMetrics([
        { name: 'm', help: '', type: 'gauge', samples: [] },
        { name: 'm', help: '', type: 'gauge', samples: [] },
      ]),
    ).toThrow(/twice/);
  });

  it('makes one-hot enum gauges', () => {
    expect(oneHot('state', ['locked', 'unlocked'], 'unlocked', { vehicle: 'v' })).toEqual([
      { labels: { vehicle: 'v', state: 'locked' }, value: 0 },
      { labels: { vehicle: 'v', state: 'unlocked' }, value: 1 },
    ]);
  });
});
