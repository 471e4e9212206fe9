import { describe, expect, it } from 'vitest';
import { TokenBucket } from '../../../src/core/token-bucket.js';
import { renderMetrics } from '../../../src/status/metrics.js';
import { allowedHostHeaders } from '../../../src/status/server.js';
import { localInterfaceFamilies } from '../../../src/status/snapshot.js';
import { parseExposition } from '../../helpers/prometheus.js';

describe('allowedHostHeaders: the exact Host values the status page answers to', () => {
  it.each<[string, number, string[], string[], string, boolean]>([
    // listen host, port, configured extras, machine addresses, Host header, allowed
    ['127.0.0.1', 8080, [], [], '127.0.0.1:8080', true],
    ['127.0.0.1', 8080, [], [], 'localhost:8080', true],
    ['127.0.0.1', 8080, [], [], '[::1]:8080', true],
    ['127.0.0.1', 8080, [], [], 'localhost', false],
    ['127.0.0.1', 8080, [], [], 'localhost:8081', false],
    ['127.0.0.1', 8080, [], [], '127.evil.example:8080', false],
    ['127.0.0.1', 8080, [], [], '127.0.0.1.evil.example:8080', false],
    ['127.0.0.1', 8080, [], [], '127.0.0.1:8081', false],
    ['127.0.0.1', 8080, [], [], '127.0.0.2:8080', false],
    ['127.0.0.1', 80, [], [], 'localhost', true],
    ['127.0.0.1', 80, [], [], 'localhost:80', true],
    ['192.168.1.5', 8080, [], [], '192.168.1.5:8080', true],
    ['::1', 8080, [], [], '[::1]:8080', true],
    ['0.0.0.0', 8080, [], ['10.0.0.7', 'fe80::1'], '10.0.0.7:8080', true],
    ['0.0.0.0', 8080, [], ['10.0.0.7', 'fe80::1'], '[fe80::1]:8080', true],
    ['0.0.0.0', 8080, [], ['10.0.0.7'], 'vehicle.lan:8080', false],
    ['127.0.0.1', 8080, ['vehicle.lan'], [], 'vehicle.lan:8080', true],
    ['127.0.0.1', 8080, [' Vehicle.LAN '], [], 'vehicle.lan:8080', true],
    ['127.0.0.1', 8080, ['vehicle.lan'], [], 'vehicle.lan:9999', false],
    ['127.0.0.1', 8080, ['localhost:9999'], [], 'localhost:9999', true],
    ['127.0.0.1', 8080, ['cafe:9999'], [], 'cafe:9999', true],
    ['127.0.0.1', 8080, ['fd00::7'], [], '[fd00::7]:8080', true],
    ['127.0.0.1', 8080, ['[fd00::7]:9999'], [], '[fd00::7]:9999', true],
    ['127.0.0.1', 8080, [''], [], ':8080', false],
  ])(
    'listening on %s:%i with %j (machine %j): %s allowed %s',
    (listen, port, extra, local, host, allowed) => {
      expect(allowedHostHeaders(listen, port, extra, local).has(host)).toBe(allowed);
    },
  );
});

describe('TokenBucket', () => {
  it('may be overdrawn by measured work, and says when it is usable again', () => {
    let now = 0;
    const bucket = new TokenBucket(100, { burst: 20, now: () => now });
    expect(bucket.available()).toBe(20);
    bucket.spend(50);
    expect(bucket.available()).toBe(-30);
    expect(bucket.msUntil(1)).toBeCloseTo(310);
    now += 310;
    expect(bucket.take(1)).toBe(true);
    now += 10_000;
    expect(bucket.available()).toBe(20); // refills to the burst, no further
  });
});

describe('metric families of the local interfaces', () => {
  it('render every budget and drop of the control socket and the status page', () => {
    const control = {
      connections: 3,
      accepted: 40,
      requests: 12,
      badRequests: 25,
      refused: { full: 1, budget: 2 },
      closed: { idle: 4, slowRequest: 1, slowReader: 0, garbage: 5, tooLong: 0, evicted: 7 },
      work: { usedMs: 1500, deferrals: 3, waitedMs: 250 },
    };
    const page = {
      connections: 20,
      pending: 16,
      streams: 2,
      answered: { anonymous: 100, admin: 5, health: 9 },
      refused: { anonymous: 400, admin: 0, health: 0, host: 3, connections: 1, streams: 2 },
      closed: { evicted: 184, timeout: 6, slowReader: 1, pipelined: 0 },
    };
    const text = renderMetrics(localInterfaceFamilies({ control }, page));
    const families = parseExposition(text);
    expect(families.get('vehicle_agent_control_closed_total')?.type).toBe('counter');
    for (const line of [
      'vehicle_agent_control_connections 3',
      'vehicle_agent_control_bad_requests_total 25',
      'vehicle_agent_control_refused_total{reason="full"} 1',
      'vehicle_agent_control_refused_total{reason="budget"} 2',
      'vehicle_agent_control_closed_total{reason="slow_request"} 1',
      'vehicle_agent_control_closed_total{reason="garbage"} 5',
      'vehicle_agent_control_closed_total{reason="evicted"} 7',
      'vehicle_agent_control_work_seconds_total 1.5',
      'vehicle_agent_control_work_deferrals_total 3',
      'vehicle_agent_control_work_wait_seconds_total 0.25',
      'vehicle_agent_status_page_connections{state="pending"} 16',
      'vehicle_agent_status_page_requests_total{class="admin"} 5',
      'vehicle_agent_status_page_refused_total{reason="anonymous"} 400',
      'vehicle_agent_status_page_refused_total{reason="host"} 3',
      'vehicle_agent_status_page_closed_total{reason="evicted"} 184',
      'vehicle_agent_status_page_closed_total{reason="slow_reader"} 1',
    ]) {
      expect(text).toContain(`${line}\n`);
    }
  });

  it('leave the control families empty (HELP and TYPE only) when the socket reports nothing', () => {
    const families = parseExposition(renderMetrics(localInterfaceFamilies({}, undefined)));
    expect(families.get('vehicle_agent_control_requests_total')?.samples).toEqual([]);
    expect(families.has('vehicle_agent_status_page_requests_total')).toBe(false);
  });
});
