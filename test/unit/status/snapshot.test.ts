import { describe, expect, it } from 'vitest';
import type { ControlHandler } from '../../../src/host/control-server.js';
import { renderMetrics } from '../../../src/status/metrics.js';
import {
  collectSnapshot,
  metricFamilies,
  STATUS_KEYS_PAGE,
  summariseKeyring,
} from '../../../src/status/snapshot.js';
import { parseExposition } from '../../helpers/prometheus.js';

const DAY = 86_400_000;
const NOW = Date.UTC(2025, 5, 1);

const listed = [
  { credential: { kind: 'phone', role: 'owner', options: {} }, revoked: false },
  { credential: { kind: 'phone', role: 'driver', options: {} }, revoked: false },
  { credential: { kind: 'phone', role: 'driver', options: {} }, revoked: true },
  { credential: { kind: 'phone', role: 'guest', notAfter: NOW + 2 * DAY, options: {} }, revoked: false },
  { credential: { kind: 'phone', role: 'guest', notAfter: NOW - DAY, options: {} }, revoked: false },
  { credential: { kind: 'phone', role: 'guest', notBefore: NOW + DAY, options: {} }, revoked: false },
  { credential: { kind: 'uid', role: 'driver', options: { insecureUid: true } }, revoked: false },
  { credential: { kind: 'ntag424', role: 'driver', notAfter: NOW + 30 * DAY, options: {} }, revoked: false },
];

describe('keyring summary', () => {
  it('counts by role and kind, revoked, expiring within 7 days, outside their window, UID-only', () => {
    expect(summariseKeyring(listed, NOW, { operations: 9, digest: 'ab'.repeat(32) })).toEqual({
      credentials: 8,
      operations: 9,
      digest: 'ab'.repeat(32),
      active: 7,
      revoked: 1,
      byRole: { owner: 1, driver: 3, guest: 3, service: 0 },
      byKind: { phone: 5, fido: 0, ntag424: 1, uid: 1, signer: 0, passkey: 0 },
      expiringSoon: 1,
      outsideWindow: 2,
      insecureUid: 1,
    });
  });

  it('exposes counts only: no names, ids or keys', () => {
    const summary = summariseKeyring(
      [{ credential: { kind: 'phone', role: 'driver', options: {} }, revoked: false }],
      NOW,
    );
    expect(JSON.stringify(summary)).not.toMatch(/name|publicKey|"id"/);
  });
});

function handlers(extra: [string, ControlHandler][] = []): Map<string, ControlHandler> {
  return new Map<string, ControlHandler>([
    [
      'status',
      () => ({
        vehicleId: 'VA-TEST',
        lock: 'unlocked',
        readers: {
          nfc0: { state: 'ok', since: 1 },
          ble0: { state: 'down', detail: 'adapter off', since: 2 },
        },
        relay: { driver: 'gpio', health: { state: 'degraded', detail: 'holder died', since: 3 } },
        keyring: { operations: 8, credentials: 8, digest: 'cd'.repeat(32) },
        clock: { now: '2025-06-01T00:00:00.000Z', trust: 'behind' },
        decisions: { granted: 4, denied: 2 },
        rateLimits: {
          lockedOutCredentials: 1,
          credentialLockouts: 3,
          uidThrottledUntil: '2025-06-01T00:05:00Z',
          uidThrottles: 1,
          noiseDenials: 500,
          noiseSummarised: 480,
        },
      }),
    ],
    ['keys.list', () => ({ credentials: listed, total: listed.length })],
    ...extra,
  ]);
}

describe('collectSnapshot', () => {
  it('reads status, summarises the keyring and takes every <name>.status handler as a subsystem', async () => {
    const s = await collectSnapshot({
      handlers: handlers([
        ['nfc.status', () => ({ mode: 'pn532', health: { state: 'ok' } })],
        ['cloud.status', () => ({ connected: false, protocol: '5', outbox: { pending: 12, dropped: 0 } })],
        [
          'broken.status',
          () => {
            throw new Error('nope');
          },
        ],
        ['slow.status', () => new Promise(() => {})],
        ['sim.uid', () => ({})],
      ]),
      health: () => undefined,
      auditSeq: () => 41,
      demoDir: '/nonexistent',
      simControls: true,
      wallNow: () => NOW,
    });
    expect(s.vehicleId).toBe('VA-TEST');
    expect(s.lock).toBe('unlocked');
    expect(s.readers.ble0?.state).toBe('down');
    expect(s.relay).toEqual({
      driver: 'gpio',
      health: { state: 'degraded', detail: 'holder died', since: 3 },
    });
    expect(s.keyring.active).toBe(7);
    expect(s.keyring.digest).toBe('cd'.repeat(32));
    expect(s.cloud).toEqual({ connected: false, protocol: '5', outbox: { pending: 12, dropped: 0 } });
    expect(Object.keys(s.subsystems).sort()).toEqual(['broken', 'cloud', 'nfc', 'slow']);
    expect(s.subsystems.broken).toEqual({ error: { code: 'internal', message: 'nope' } });
    expect(s.subsystems.slow).toMatchObject({ error: { code: 'busy' } });
    expect(s.auditSeq).toBe(41);
    expect(s.sim.enabled).toBe(true);
    expect(s.sim.actions.map((a) => a.id)).toEqual(['uid']);
  });

  it('keeps only what has the shape it reads from a malformed status reply and credential list', async () => {
    const s = await collectSnapshot({
      handlers: new Map<string, ControlHandler>([
        [
          'status',
          () => ({
            vehicleId: 7,
            readers: {
              nfc0: { state: 'ok' },
              ble0: 'down',
              sim: { state: 3 },
              x: { state: 'ok', detail: 1 },
            },
            relay: { driver: 'gpio', health: 'ok' },
          }),
        ],
        [
          'keys.list',
          () => ({
            credentials: [listed[0], null, { credential: 'x' }, { credential: { options: 1 } }],
            total: 'x',
          }),
        ],
      ]),
      health: () => undefined,
      auditSeq: () => 0,
      demoDir: '/nonexistent',
      simControls: false,
      wallNow: () => NOW,
    });
    expect(s.vehicleId).toBe('unknown');
    expect(s.readers).toEqual({ nfc0: { state: 'ok' } });
    expect(s.relay).toBeUndefined();
    expect(s.keyring.credentials).toBe(1);
  });

  it('asks keys.list for one page and says how many of the credentials its counts cover', async () => {
    const asked: unknown[] = [];
    const s = await collectSnapshot({
      handlers: handlers([
        [
          'keys.list',
          (args) => {
            asked.push(args);
            return { credentials: listed, next: 'phone:x', total: 100_000 };
          },
        ],
      ]),
      health: () => undefined,
      auditSeq: () => 0,
      demoDir: '/nonexistent',
      simControls: false,
      wallNow: () => NOW,
    });
    expect(asked).toEqual([{ limit: STATUS_KEYS_PAGE }]);
    expect(s.keyring.credentials).toBe(100_000);
    expect(s.keyring.counted).toBe(listed.length);
    expect(s.keyring.active).toBe(7);
  });

  it('fails with a coded error when the agent has no status handler', async () => {
    await expect(
      collectSnapshot({
        handlers: new Map(),
        health: () => undefined,
        auditSeq: () => 0,
        demoDir: '/nonexistent',
        simControls: true,
      }),
    ).rejects.toMatchObject({ code: 'unknown_command' });
  });
});

describe('metric families', () => {
  it('renders lock state, decisions by code, reader and relay health, cloud and process figures', async () => {
    const snapshot = await collectSnapshot({
      handlers: handlers([
        ['cloud.status', () => ({ connected: true, outbox: { pending: 3, dropped: 1 } })],
        [
          'ble.status',
          () => ({
            stats: {
              link: {
                sessionsOpened: 40,
                sessionsFailed: 2,
                sessionsEvicted: 7,
                unprovenTimeouts: 5,
                sightingsDeferred: 90,
                unprovenSessions: 3,
                waitingDevices: 12,
                connects: 300,
                connectsDeferred: 250,
                trackedDevices: 256,
                trackedDevicesEvicted: 4000,
              },
            },
          }),
        ],
      ]),
      health: () => ({
        healthy: false,
        at: '2025-06-01T00:00:00.000Z',
        checks: { eventLoop: { ok: true }, state: { ok: false, detail: 'EROFS' } },
      }),
      auditSeq: () => 41,
      demoDir: '/nonexistent',
      simControls: false,
      wallNow: () => NOW,
    });
    const decisions = new Map([
      ['granted', new Map([['', 4]])],
      [
        'denied',
        new Map([
          ['bad_proof', 1],
          ['rate_limited', 1],
        ]),
      ],
    ]);
    const text = renderMetrics(
      metricFamilies(
        snapshot,
        decisions,
        {
          cpuUserS: 1.5,
          cpuSystemS: 0.5,
          rssBytes: 1e8,
          heapUsedBytes: 5e7,
          startTimeS: 1_700_000_000,
          openFds: 21,
        },
        2,
      ),
    );
    const families = parseExposition(text);
    expect(families.get('vehicle_agent_lock_state')?.type).toBe('gauge');
    expect(text).toContain('vehicle_agent_lock_state{state="unlocked"} 1\n');
    expect(text).toContain('vehicle_agent_lock_state{state="locked"} 0\n');
    expect(families.get('vehicle_agent_decisions_total')?.type).toBe('counter');
    expect(text).toContain('vehicle_agent_decisions_total{result="denied",code="bad_proof"} 1\n');
    expect(text).toContain('vehicle_agent_decisions_total{result="granted",code=""} 4\n');
    expect(text).toContain('vehicle_agent_reader_up{reader="nfc0"} 1\n');
    expect(text).toContain('vehicle_agent_reader_up{reader="ble0"} 0\n');
    expect(text).toContain('vehicle_agent_reader_health{reader="ble0",state="down"} 1\n');
    // Rate limits and BLE admission: counts only, no credential ids on the page.
    expect(text).toContain('vehicle_agent_credentials_locked_out 1\n');
    expect(text).toContain('vehicle_agent_credential_lockouts_total 3\n');
    expect(text).toContain('vehicle_agent_uid_throttled 1\n');
    expect(text).toContain('vehicle_agent_noise_denials_summarised_total 480\n');
    expect(text).toContain('vehicle_agent_ble_sessions_total{outcome="evicted"} 7\n');
    expect(text).toContain('vehicle_agent_ble_sessions_total{outcome="unproven_timeout"} 5\n');
    expect(text).toContain('vehicle_agent_ble_sightings_deferred_total 90\n');
    expect(text).toContain('vehicle_agent_ble_devices_waiting 12\n');
    expect(text).toContain('vehicle_agent_ble_connects_total 300\n');
    expect(text).toContain('vehicle_agent_ble_connects_deferred_total 250\n');
    expect(text).toContain('vehicle_agent_ble_devices_tracked 256\n');
    expect(text).toContain('vehicle_agent_ble_devices_forgotten_total 4000\n');
    expect(JSON.stringify(snapshot.rateLimits)).not.toMatch(/phone:|fido:|credentialId/);
    expect(text).toContain('vehicle_agent_relay_health{driver="gpio",state="degraded"} 1\n');
    expect(text).toContain('vehicle_agent_audit_seq 41\n');
    expect(text).toContain('vehicle_agent_keyring_credentials{role="guest"} 3\n');
    expect(text).toContain('vehicle_agent_clock_trusted 0\n');
    expect(text).toContain('vehicle_agent_cloud_connected 1\n');
    expect(text).toContain('vehicle_agent_outbox_pending 3\n');
    expect(text).toContain('vehicle_agent_healthy 0\n');
    expect(text).toContain('vehicle_agent_health_check{check="state"} 0\n');
    expect(text).toContain('process_cpu_seconds_total 2\n');
    expect(text).toContain('process_open_fds 21\n');
    expect(text).toContain('vehicle_agent_status_streams 2\n');
  });

  it('renders write failures per state store and audit events lost, from the health report', async () => {
    const snapshot = await collectSnapshot({
      handlers: handlers([]),
      health: () => ({
        healthy: true,
        degraded: true,
        at: '2025-06-01T00:00:00.000Z',
        checks: { storage: { ok: false, detail: 'counters: writes failing (ENOSPC)', advisory: true } },
        storage: {
          stores: [
            {
              name: 'counters',
              store: '/s/counters.journal',
              state: 'failing',
              failures: 4,
              refused: 2,
              pending: 1,
              failingSince: 1_748_736_000_000,
              lastError: { code: 'ENOSPC', message: 'full', at: 1_748_736_001_000 },
              busyMs: 1500,
            },
            {
              name: 'keyring',
              store: '/s/keyring.journal',
              state: 'ok',
              failures: 0,
              refused: 0,
              pending: 0,
            },
          ],
          audit: { dropped: 7, since: 1_748_736_000_000, total: 9, inFlight: 0 },
        },
      }),
      auditSeq: () => 1,
      demoDir: '/nonexistent',
      simControls: false,
      wallNow: () => NOW,
    });
    const text = renderMetrics(
      metricFamilies(
        snapshot,
        new Map(),
        { cpuUserS: 0, cpuSystemS: 0, rssBytes: 0, heapUsedBytes: 0, startTimeS: 0, openFds: 0 },
        0,
      ),
    );
    const families = parseExposition(text);
    expect(families.get('vehicle_agent_store_write_failures_total')?.type).toBe('counter');
    expect(text).toContain('vehicle_agent_store_write_failures_total{store="counters"} 4\n');
    expect(text).toContain('vehicle_agent_store_write_failures_total{store="keyring"} 0\n');
    expect(text).toContain('vehicle_agent_store_writes_refused_total{store="counters"} 2\n');
    expect(text).toContain('vehicle_agent_store_write_failing{store="counters"} 1\n');
    expect(text).toContain('vehicle_agent_store_write_failing{store="keyring"} 0\n');
    expect(text).toContain('vehicle_agent_store_write_failing_since_seconds{store="counters"} 1748736000\n');
    expect(text).not.toContain('vehicle_agent_store_write_failing_since_seconds{store="keyring"}');
    expect(text).toContain('vehicle_agent_store_last_write_error{store="counters",code="ENOSPC"} 1\n');
    expect(text).toContain('vehicle_agent_store_write_busy_seconds{store="counters"} 1.5\n');
    expect(text).toContain('vehicle_agent_audit_events_dropped_total 9\n');
    expect(text).toContain('vehicle_agent_audit_events_unrecorded 7\n');
    expect(text).toContain('vehicle_agent_healthy 1\n');
  });
});
