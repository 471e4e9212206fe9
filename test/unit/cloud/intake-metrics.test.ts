import { describe, expect, it } from 'vitest';
import { renderMetrics } from '../../../src/status/metrics.js';
import { metricFamilies, type StateSnapshot } from '../../../src/status/snapshot.js';
import { parseExposition } from '../../helpers/prometheus.js';

/** The cloud link's intake counts (cloud.status → intake) as /metrics shows them. */
describe('cloud intake metrics', () => {
  const snapshot = {
    vehicleId: 'VA-TEST',
    lock: 'locked',
    readers: {},
    keyring: {
      credentials: 0,
      active: 0,
      revoked: 0,
      byRole: {},
      byKind: {},
      expiringSoon: 0,
      outsideWindow: 0,
      insecureUid: 0,
    },
    subsystems: {},
    auditSeq: 1,
    uptimeS: 1,
    sim: { enabled: false, actions: [] },
    cloud: {
      connected: true,
      outbox: { pending: 0, dropped: 0 },
      intake: {
        topics: {
          command: { accepted: 12, tooLarge: 1, overBudget: 2988, bytes: 4000 },
          keyring: { accepted: 3, tooLarge: 0, overBudget: 40, bytes: 300 },
        },
        refused: {
          'command:bad_signature': 12,
          'command:cloud_budget_exceeded': 2988,
          'keyring:jws_malformed': 3,
        },
        paced: 7,
        pacedMs: 140,
        summarised: 3001,
      },
    },
  } as unknown as StateSnapshot;

  it('exposes every budget verdict, every refusal code, the pace and the summaries', () => {
    const process = { cpuUserS: 0, cpuSystemS: 0, rssBytes: 0, heapUsedBytes: 0, startTimeS: 0, openFds: 0 };
    const text = renderMetrics(metricFamilies(snapshot, new Map(), process, 0));
    const families = parseExposition(text);
    expect(families.get('vehicle_agent_cloud_messages_total')?.type).toBe('counter');
    expect(text).toContain(
      'vehicle_agent_cloud_messages_total{topic="command",verdict="over_budget"} 2988\n',
    );
    expect(text).toContain('vehicle_agent_cloud_messages_total{topic="command",verdict="too_large"} 1\n');
    expect(text).toContain('vehicle_agent_cloud_messages_total{topic="keyring",verdict="accepted"} 3\n');
    expect(text).toContain('vehicle_agent_cloud_refused_total{topic="command",code="bad_signature"} 12\n');
    expect(text).toContain('vehicle_agent_cloud_refused_total{topic="keyring",code="jws_malformed"} 3\n');
    expect(text).toContain('vehicle_agent_cloud_intake_paced_total 7\n');
    expect(text).toContain('vehicle_agent_cloud_intake_paced_ms_total 140\n');
    expect(text).toContain('vehicle_agent_cloud_refusals_summarised_total 3001\n');
  });
});
