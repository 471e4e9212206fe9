import { AgentError, toAgentError } from '../core/errors.js';
import { CREDENTIAL_KINDS, type HealthState, LOCK_STATES, ROLES } from '../core/types.js';
import { isRecord } from '../host/control-api.js';
import type { HealthReport, StorageFigures } from '../host/health-monitor.js';
import type { DecisionCounts } from './audit-feed.js';
import { type MetricFamily, oneHot, type Sample } from './metrics.js';
import {
  buildSimActions,
  describeActions,
  type HandlerMap,
  type SimActionInfo,
  type SimDemo,
  simDemo,
} from './sim-actions.js';

/**
 * What the status page shows, collected from the control handlers (the same ones the control
 * socket serves): `status` for lock, readers, relay, keyring and clock; `keys.list` for the
 * keyring summary; and every `<name>.status` handler (ble.status, cloud.status, …) as a
 * subsystem, so readers and the cloud link added later show up without changes here.
 */

const HEALTH_STATES: readonly HealthState[] = ['ok', 'degraded', 'down', 'disabled'];
const SUBSYSTEM_HANDLER = /^[a-z][a-z0-9-]*\.status$/;
const SUBSYSTEM_TIMEOUT_MS = 1000;
const EXPIRING_MS = 7 * 86_400_000;

export interface ReaderView {
  readonly state: string;
  readonly detail?: string;
  readonly since?: number;
}

/** Rate limits (issue 12): counts only, never which credential (that is in the audit log). */
export interface RateLimitView {
  readonly lockedOutCredentials: number;
  readonly credentialLockouts: number;
  readonly uidThrottled: boolean;
  readonly uidThrottles: number;
  readonly noiseDenials: number;
  readonly noiseSummarised: number;
}

export interface KeyringSummary {
  readonly credentials: number;
  /**
   * Set when the counts below cover only the first `counted` credentials in id order (one
   * keys.list page, STATUS_KEYS_PAGE): a large keyring is not listed whole on every poll.
   */
  readonly counted?: number;
  readonly operations?: number;
  readonly digest?: string;
  readonly active: number;
  readonly revoked: number;
  readonly byRole: Readonly<Record<string, number>>;
  readonly byKind: Readonly<Record<string, number>>;
  /** Active credentials whose notAfter falls within 7 days. */
  readonly expiringSoon: number;
  /** Active credentials outside their validity window right now. */
  readonly outsideWindow: number;
  readonly insecureUid: number;
}

export interface StateSnapshot {
  readonly vehicleId: string;
  readonly lock: string;
  readonly readers: Readonly<Record<string, ReaderView>>;
  readonly relay?: { readonly driver: string; readonly health: ReaderView };
  readonly keyring: KeyringSummary;
  readonly clock?: { readonly now: string; readonly trust: string };
  readonly decisions?: { readonly granted: number; readonly denied: number };
  readonly rateLimits?: RateLimitView;
  readonly cloud?: Readonly<Record<string, unknown>>;
  readonly subsystems: Readonly<Record<string, unknown>>;
  readonly health?: HealthReport;
  readonly auditSeq: number;
  readonly uptimeS: number;
  readonly sim: { readonly enabled: boolean; readonly actions: readonly SimActionInfo[] };
}

interface ListedCredential {
  readonly credential: {
    readonly kind?: unknown;
    readonly role?: unknown;
    readonly notBefore?: unknown;
    readonly notAfter?: unknown;
    readonly options?: { readonly insecureUid?: unknown };
  };
  readonly revoked?: unknown;
}

/** Credentials the status page counts by role, kind and state: the first keys.list page. */
export const STATUS_KEYS_PAGE = 500;

/** Counts only: no names, keys or ids leave the agent through the page. */
export function summariseKeyring(
  list: readonly ListedCredential[],
  nowMs: number,
  fromStatus?: { operations?: unknown; digest?: unknown },
  total: number = list.length,
): KeyringSummary {
  const byRole: Record<string, number> = Object.fromEntries(ROLES.map((r) => [r, 0]));
  const byKind: Record<string, number> = Object.fromEntries(CREDENTIAL_KINDS.map((k) => [k, 0]));
  let revoked = 0;
  let expiringSoon = 0;
  let outsideWindow = 0;
  let insecureUid = 0;
  for (const entry of list) {
    if (entry.revoked === true) {
      revoked++;
      continue;
    }
    const c = entry.credential;
    const role = typeof c.role === 'string' ? c.role : 'unknown';
    const kind = typeof c.kind === 'string' ? c.kind : 'unknown';
    byRole[role] = (byRole[role] ?? 0) + 1;
    byKind[kind] = (byKind[kind] ?? 0) + 1;
    const notBefore = typeof c.notBefore === 'number' ? c.notBefore : undefined;
    const notAfter = typeof c.notAfter === 'number' ? c.notAfter : undefined;
    if ((notBefore !== undefined && nowMs < notBefore) || (notAfter !== undefined && nowMs > notAfter)) {
      outsideWindow++;
    } else if (notAfter !== undefined && notAfter - nowMs <= EXPIRING_MS) {
      expiringSoon++;
    }
    if (c.options?.insecureUid === true) insecureUid++;
  }
  return {
    credentials: total,
    ...(total > list.length ? { counted: list.length } : {}),
    ...(typeof fromStatus?.operations === 'number' ? { operations: fromStatus.operations } : {}),
    ...(typeof fromStatus?.digest === 'string' ? { digest: fromStatus.digest } : {}),
    active: list.length - revoked,
    revoked,
    byRole,
    byKind,
    expiringSoon,
    outsideWindow,
    insecureUid,
  };
}

async function callWithTimeout(
  handlers: HandlerMap,
  name: string,
  args: Readonly<Record<string, unknown>> = {},
): Promise<unknown> {
  const handler = handlers.get(name);
  if (!handler) throw new AgentError('unknown_command', `no ${name} handler`);
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      Promise.resolve().then(() => handler(args)),
      new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new AgentError('busy', `${name} did not answer within ${SUBSYSTEM_TIMEOUT_MS} ms`)),
          SUBSYSTEM_TIMEOUT_MS,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function asRecord(value: unknown): Readonly<Record<string, unknown>> {
  return isRecord(value) ? value : {};
}

function isReaderView(value: unknown): value is ReaderView {
  return (
    isRecord(value) &&
    typeof value.state === 'string' &&
    (value.detail === undefined || typeof value.detail === 'string') &&
    (value.since === undefined || typeof value.since === 'number')
  );
}

function isListedCredential(value: unknown): value is ListedCredential {
  return (
    isRecord(value) &&
    isRecord(value.credential) &&
    (value.credential.options === undefined || isRecord(value.credential.options))
  );
}

/** The readers' health by id; an entry that is not a health report is left out. */
function readerViews(value: unknown): Record<string, ReaderView> {
  return Object.fromEntries(
    Object.entries(asRecord(value)).filter((e): e is [string, ReaderView] => isReaderView(e[1])),
  );
}

export interface SnapshotDeps {
  readonly handlers: HandlerMap;
  readonly health: () => HealthReport | undefined;
  readonly auditSeq: () => number;
  readonly demoDir: string;
  readonly demoCredentials?: Omit<SimDemo, 'dir'>;
  readonly simControls: boolean;
  readonly wallNow?: () => number;
}

export async function collectSnapshot(deps: SnapshotDeps): Promise<StateSnapshot> {
  const { handlers } = deps;
  const status = asRecord(await callWithTimeout(handlers, 'status'));
  // One page, not the keyring: at 100 000 keys the whole list held the agent 0.4-1.6 s per poll.
  const listed = asRecord(
    handlers.has('keys.list')
      ? await callWithTimeout(handlers, 'keys.list', { limit: STATUS_KEYS_PAGE })
      : { credentials: [], total: 0 },
  );
  const page = Array.isArray(listed.credentials) ? listed.credentials.filter(isListedCredential) : [];
  const subsystems: Record<string, unknown> = {};
  const names = [...handlers.keys()].filter((n) => SUBSYSTEM_HANDLER.test(n)).sort();
  await Promise.all(
    names.map(async (name) => {
      try {
        subsystems[name.slice(0, -'.status'.length)] = await callWithTimeout(handlers, name);
      } catch (err) {
        const e = toAgentError(err);
        subsystems[name.slice(0, -'.status'.length)] = { error: { code: e.code, message: e.message } };
      }
    }),
  );
  const cloud = subsystems.cloud ?? status.cloud;
  const relay = asRecord(status.relay);
  const actions = deps.simControls
    ? describeActions(await buildSimActions(handlers, simDemo(deps.demoDir, deps.demoCredentials)))
    : [];
  const health = deps.health();
  const clock = asRecord(status.clock);
  const decisions = asRecord(status.decisions);
  const rateLimits = rateLimitView(asRecord(status.rateLimits));
  return {
    vehicleId: typeof status.vehicleId === 'string' ? status.vehicleId : 'unknown',
    lock: typeof status.lock === 'string' ? status.lock : 'unknown',
    readers: readerViews(status.readers),
    ...(typeof relay.driver === 'string' && isReaderView(relay.health)
      ? { relay: { driver: relay.driver, health: relay.health } }
      : {}),
    keyring: summariseKeyring(
      page,
      (deps.wallNow ?? Date.now)(),
      asRecord(status.keyring),
      typeof listed.total === 'number' ? listed.total : page.length,
    ),
    ...(typeof clock.now === 'string' && typeof clock.trust === 'string'
      ? { clock: { now: clock.now, trust: clock.trust } }
      : {}),
    ...(typeof decisions.granted === 'number' && typeof decisions.denied === 'number'
      ? { decisions: { granted: decisions.granted, denied: decisions.denied } }
      : {}),
    ...(rateLimits !== undefined ? { rateLimits } : {}),
    ...(cloud !== undefined ? { cloud: asRecord(cloud) } : {}),
    subsystems,
    ...(health !== undefined ? { health } : {}),
    auditSeq: deps.auditSeq(),
    uptimeS: Math.round(process.uptime()),
    sim: { enabled: actions.length > 0, actions },
  };
}

/** Copies the counts of the agent's rate-limit status, and nothing else. */
function rateLimitView(r: Record<string, unknown>): RateLimitView | undefined {
  const n = (key: string): number | undefined => num(r[key]);
  const locked = n('lockedOutCredentials');
  if (locked === undefined) return undefined;
  return {
    lockedOutCredentials: locked,
    credentialLockouts: n('credentialLockouts') ?? 0,
    uidThrottled: typeof r.uidThrottledUntil === 'string',
    uidThrottles: n('uidThrottles') ?? 0,
    noiseDenials: n('noiseDenials') ?? 0,
    noiseSummarised: n('noiseSummarised') ?? 0,
  };
}

// ── Prometheus ─────────────────────────────────────────────────────────────────

export interface ProcessFigures {
  readonly cpuUserS: number;
  readonly cpuSystemS: number;
  readonly rssBytes: number;
  readonly heapUsedBytes: number;
  readonly startTimeS: number;
  readonly openFds?: number;
}

function num(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

/** The cloud link's intake budgets (docs/mqtt.md "Floods"): what arrived, what was dropped and why. */
function cloudIntakeFamilies(intake: Record<string, unknown>): MetricFamily[] {
  const topics = asRecord(intake.topics);
  const verdicts: Sample[] = [];
  for (const [topic, raw] of Object.entries(topics)) {
    const c = asRecord(raw);
    for (const [verdict, key] of [
      ['accepted', 'accepted'],
      ['too_large', 'tooLarge'],
      ['over_budget', 'overBudget'],
    ] as const) {
      const value = num(c[key]);
      if (value !== undefined) verdicts.push({ labels: { topic, verdict }, value });
    }
  }
  const refused: Sample[] = [];
  for (const [key, raw] of Object.entries(asRecord(intake.refused))) {
    const at = key.indexOf(':');
    const value = num(raw);
    if (at > 0 && value !== undefined)
      refused.push({ labels: { topic: key.slice(0, at), code: key.slice(at + 1) }, value });
  }
  const one = (value: unknown): Sample[] => (num(value) === undefined ? [] : [{ value: num(value) ?? 0 }]);
  return [
    {
      name: 'vehicle_agent_cloud_messages_total',
      help: 'Messages from the broker by topic and budget verdict (accepted, too_large, over_budget).',
      type: 'counter',
      samples: verdicts,
    },
    {
      name: 'vehicle_agent_cloud_refused_total',
      help: 'Messages from the broker refused, by topic and code.',
      type: 'counter',
      samples: refused,
    },
    {
      name: 'vehicle_agent_cloud_intake_paced_total',
      help: 'Times the MQTT intake waited for its pace (cloud.intake.messagesPerS, bytesPerS).',
      type: 'counter',
      samples: one(intake.paced),
    },
    {
      name: 'vehicle_agent_cloud_intake_paced_ms_total',
      help: 'Time the MQTT intake spent waiting for its pace, ms.',
      type: 'counter',
      samples: one(intake.pacedMs),
    },
    {
      name: 'vehicle_agent_cloud_refusals_summarised_total',
      help: 'Refused messages audited in a cloud.summary record instead of one record each.',
      type: 'counter',
      samples: one(intake.summarised),
    },
  ];
}

/** Pure: every metric family from a snapshot, the decision counts and process figures. */
export function metricFamilies(
  snapshot: StateSnapshot,
  decisions: DecisionCounts,
  proc: ProcessFigures,
  streams: number,
): MetricFamily[] {
  const families: MetricFamily[] = [
    { name: 'vehicle_agent_up', help: 'The agent answers.', type: 'gauge', samples: [{ value: 1 }] },
    {
      name: 'vehicle_agent_lock_state',
      help: 'Lock state: 1 for the current state.',
      type: 'gauge',
      samples: oneHot('state', LOCK_STATES, snapshot.lock),
    },
    {
      name: 'vehicle_agent_decisions_total',
      help: 'Access decisions since the agent started, by result and denial code.',
      type: 'counter',
      samples: [...decisions].flatMap(([result, byCode]) =>
        [...byCode].map(([code, n]): Sample => ({ labels: { result, code }, value: n })),
      ),
    },
    {
      name: 'vehicle_agent_reader_up',
      help: 'Reader health is ok.',
      type: 'gauge',
      samples: Object.entries(snapshot.readers).map(([reader, h]) => ({
        labels: { reader },
        value: h.state === 'ok' ? 1 : 0,
      })),
    },
    {
      name: 'vehicle_agent_reader_health',
      help: 'Reader health: 1 for the current state.',
      type: 'gauge',
      samples: Object.entries(snapshot.readers).flatMap(([reader, h]) =>
        oneHot('state', HEALTH_STATES, h.state, { reader }),
      ),
    },
    {
      name: 'vehicle_agent_relay_health',
      help: 'Relay driver health: 1 for the current state.',
      type: 'gauge',
      samples: snapshot.relay
        ? oneHot('state', HEALTH_STATES, snapshot.relay.health.state, { driver: snapshot.relay.driver })
        : [],
    },
    {
      name: 'vehicle_agent_audit_seq',
      help: 'Sequence number of the last durable audit record.',
      type: 'gauge',
      samples: [{ value: snapshot.auditSeq }],
    },
    {
      name: 'vehicle_agent_keyring_credentials',
      help: 'Credentials in the keyring that are not revoked, by role.',
      type: 'gauge',
      samples: Object.entries(snapshot.keyring.byRole).map(([role, n]) => ({ labels: { role }, value: n })),
    },
    {
      name: 'vehicle_agent_keyring_revoked',
      help: 'Revoked credentials in the keyring.',
      type: 'gauge',
      samples: [{ value: snapshot.keyring.revoked }],
    },
    {
      name: 'vehicle_agent_clock_trusted',
      help: 'The system clock is not behind the last trusted time.',
      type: 'gauge',
      samples: snapshot.clock ? [{ value: snapshot.clock.trust === 'trusted' ? 1 : 0 }] : [],
    },
  ];
  const cloud = snapshot.cloud;
  if (cloud !== undefined) {
    const connected = cloud.connected;
    const outbox = asRecord(cloud.outbox);
    families.push(
      {
        name: 'vehicle_agent_cloud_connected',
        help: 'The cloud link is connected to the broker.',
        type: 'gauge',
        samples: typeof connected === 'boolean' ? [{ value: connected ? 1 : 0 }] : [],
      },
      {
        name: 'vehicle_agent_outbox_pending',
        help: 'Audit events waiting for the broker to acknowledge them.',
        type: 'gauge',
        samples: num(outbox.pending) === undefined ? [] : [{ value: num(outbox.pending) ?? 0 }],
      },
      {
        name: 'vehicle_agent_outbox_dropped',
        help: 'Audit events skipped because the outbox was full.',
        type: 'gauge',
        samples: num(outbox.dropped) === undefined ? [] : [{ value: num(outbox.dropped) ?? 0 }],
      },
    );
    families.push(...cloudIntakeFamilies(asRecord(cloud.intake)));
  }
  families.push(...admissionFamilies(snapshot));
  const health = snapshot.health;
  families.push(
    {
      name: 'vehicle_agent_healthy',
      help: 'Every supervision check passes (what the systemd watchdog pings on).',
      type: 'gauge',
      samples: health ? [{ value: health.healthy ? 1 : 0 }] : [],
    },
    {
      name: 'vehicle_agent_health_check',
      help: 'One supervision check passes.',
      type: 'gauge',
      samples: health
        ? Object.entries(health.checks).map(([check, r]) => ({ labels: { check }, value: r.ok ? 1 : 0 }))
        : [],
    },
    ...storageFamilies(health?.storage),
    {
      name: 'vehicle_agent_status_streams',
      help: 'Live event streams open on the status page.',
      type: 'gauge',
      samples: [{ value: streams }],
    },
    {
      name: 'process_cpu_user_seconds_total',
      help: 'User CPU time.',
      type: 'counter',
      samples: [{ value: proc.cpuUserS }],
    },
    {
      name: 'process_cpu_system_seconds_total',
      help: 'System CPU time.',
      type: 'counter',
      samples: [{ value: proc.cpuSystemS }],
    },
    {
      name: 'process_cpu_seconds_total',
      help: 'User and system CPU time.',
      type: 'counter',
      samples: [{ value: proc.cpuUserS + proc.cpuSystemS }],
    },
    {
      name: 'process_resident_memory_bytes',
      help: 'Resident memory.',
      type: 'gauge',
      samples: [{ value: proc.rssBytes }],
    },
    {
      name: 'nodejs_heap_used_bytes',
      help: 'V8 heap in use.',
      type: 'gauge',
      samples: [{ value: proc.heapUsedBytes }],
    },
    {
      name: 'process_start_time_seconds',
      help: 'Start time since the epoch.',
      type: 'gauge',
      samples: [{ value: proc.startTimeS }],
    },
    {
      name: 'process_open_fds',
      help: 'Open file descriptors.',
      type: 'gauge',
      samples: proc.openFds === undefined ? [] : [{ value: proc.openFds }],
    },
  );
  return families;
}

// ── Local interfaces' budgets (control socket, status page): issue 12, findings 5 and 6 ──────

/** What the status server counts (server.ts StatusServerStats), as far as the metrics need it. */
export interface StatusPageCounts {
  readonly connections: number;
  readonly pending: number;
  readonly streams: number;
  readonly answered: Readonly<Record<string, number>>;
  readonly refused: Readonly<Record<string, number>>;
  readonly closed: Readonly<Record<string, number>>;
}

function byLabel(label: string, values: unknown): Sample[] {
  return Object.entries(asRecord(values)).flatMap(([key, n]) =>
    num(n) === undefined ? [] : [{ labels: { [label]: snake(key) }, value: num(n) ?? 0 }],
  );
}

function snake(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();
}

/**
 * Pure: the control socket's counters (its `control.status` subsystem) and the status page's
 * own, as metric families. Every budget and every drop has a series.
 */
export function localInterfaceFamilies(
  subsystems: Readonly<Record<string, unknown>>,
  page: StatusPageCounts | undefined,
): MetricFamily[] {
  const control = asRecord(subsystems.control);
  const work = asRecord(control.work);
  const one = (value: unknown): Sample[] => (num(value) === undefined ? [] : [{ value: num(value) ?? 0 }]);
  const families: MetricFamily[] = [
    {
      name: 'vehicle_agent_control_connections',
      help: 'Control socket connections open.',
      type: 'gauge',
      samples: one(control.connections),
    },
    {
      name: 'vehicle_agent_control_requests_total',
      help: 'Control socket requests handed to a handler.',
      type: 'counter',
      samples: one(control.requests),
    },
    {
      name: 'vehicle_agent_control_bad_requests_total',
      help: 'Control socket lines refused as not a valid request.',
      type: 'counter',
      samples: one(control.badRequests),
    },
    {
      name: 'vehicle_agent_control_refused_total',
      help: 'Control socket newcomers and requests refused: full (no room), budget (over a connection budget), rate (over the connection rate).',
      type: 'counter',
      samples: byLabel('reason', control.refused),
    },
    {
      name: 'vehicle_agent_control_closed_total',
      help: 'Control socket connections closed by the agent, by reason.',
      type: 'counter',
      samples: byLabel('reason', control.closed),
    },
    {
      name: 'vehicle_agent_control_work_seconds_total',
      help: 'Main-thread time the control socket spent reading, parsing and answering.',
      type: 'counter',
      samples: num(work.usedMs) === undefined ? [] : [{ value: (num(work.usedMs) ?? 0) / 1000 }],
    },
    {
      name: 'vehicle_agent_control_work_deferrals_total',
      help: 'Times control requests waited for the work budget.',
      type: 'counter',
      samples: one(work.deferrals),
    },
    {
      name: 'vehicle_agent_control_work_wait_seconds_total',
      help: 'Time control requests waited for the work budget.',
      type: 'counter',
      samples: num(work.waitedMs) === undefined ? [] : [{ value: (num(work.waitedMs) ?? 0) / 1000 }],
    },
  ];
  if (page !== undefined) {
    families.push(
      {
        name: 'vehicle_agent_status_page_connections',
        help: 'Status page connections open: pending (sending headers or idle), streams, all.',
        type: 'gauge',
        samples: [
          { labels: { state: 'all' }, value: page.connections },
          { labels: { state: 'pending' }, value: page.pending },
          { labels: { state: 'stream' }, value: page.streams },
        ],
      },
      {
        name: 'vehicle_agent_status_page_requests_total',
        help: 'Status page requests within their class budget (anonymous, admin, health).',
        type: 'counter',
        samples: byLabel('class', page.answered),
      },
      {
        name: 'vehicle_agent_status_page_refused_total',
        help: 'Status page requests and connections refused: over a class budget, foreign Host, connection or stream cap.',
        type: 'counter',
        samples: byLabel('reason', page.refused),
      },
      {
        name: 'vehicle_agent_status_page_closed_total',
        help: 'Status page connections closed by the agent: evicted while pending, timed out, not reading.',
        type: 'counter',
        samples: byLabel('reason', page.closed),
      },
    );
  }
  return families;
}

/** Real write failures per state store (docs/storage.md), from the last health run. */
function storageFamilies(storage: StorageFigures | undefined): MetricFamily[] {
  const stores = storage?.stores ?? [];
  const perStore = (value: (s: StorageFigures['stores'][number]) => number | undefined): Sample[] =>
    stores.flatMap((s) => {
      const v = value(s);
      return v === undefined ? [] : [{ labels: { store: s.name }, value: v }];
    });
  const audit = storage?.audit;
  return [
    {
      name: 'vehicle_agent_store_write_failures_total',
      help: 'Writes (appends, compactions) to a state store that failed since start.',
      type: 'counter',
      samples: perStore((s) => s.failures),
    },
    {
      name: 'vehicle_agent_store_writes_refused_total',
      help: 'Writes refused without being tried (the store was restoring, or too many were waiting).',
      type: 'counter',
      samples: perStore((s) => s.refused),
    },
    {
      name: 'vehicle_agent_store_write_failing',
      help: 'The last write to the store failed and none has succeeded since (2: stopped until restart).',
      type: 'gauge',
      samples: perStore((s) => (s.state === 'latched' ? 2 : s.failingSince !== undefined ? 1 : 0)),
    },
    {
      name: 'vehicle_agent_store_write_failing_since_seconds',
      help: 'Unix time of the first failure of the current failing streak.',
      type: 'gauge',
      samples: perStore((s) => (s.failingSince === undefined ? undefined : s.failingSince / 1000)),
    },
    {
      name: 'vehicle_agent_store_last_write_error',
      help: 'The last write error of the store (errno or code), 1 per store; absent when none yet.',
      type: 'gauge',
      samples: stores.flatMap((s) =>
        s.lastError === undefined ? [] : [{ labels: { store: s.name, code: s.lastError.code }, value: 1 }],
      ),
    },
    {
      name: 'vehicle_agent_store_write_pending',
      help: 'Writes waiting for the disk.',
      type: 'gauge',
      samples: perStore((s) => s.pending),
    },
    {
      name: 'vehicle_agent_store_write_busy_seconds',
      help: 'How long the write in progress has been running (0 when idle); long means a stalled disk.',
      type: 'gauge',
      samples: perStore((s) => (s.busyMs ?? 0) / 1000),
    },
    {
      name: 'vehicle_agent_audit_events_dropped_total',
      help: 'Audit events the disk did not take since start (recorded later as audit.dropped).',
      type: 'counter',
      samples: audit === undefined ? [] : [{ value: audit.total }],
    },
    {
      name: 'vehicle_agent_audit_events_unrecorded',
      help: 'Audit events lost and not yet recorded by an audit.dropped record.',
      type: 'gauge',
      samples: audit === undefined ? [] : [{ value: audit.dropped }],
    },
    ...auditRetentionFamilies(storage?.auditRetention),
  ];
}

/** Audit rotation against the cloud outbox (docs/storage.md "Rotation and the cloud outbox"). */
function auditRetentionFamilies(retention: StorageFigures['auditRetention']): MetricFamily[] {
  const one = (value: number | undefined): Sample[] => (value === undefined ? [] : [{ value }]);
  return [
    {
      name: 'vehicle_agent_audit_files_retained',
      help: 'Audit files kept past audit.keepFiles because the cloud outbox has not sent their records.',
      type: 'gauge',
      samples: one(retention?.retainedFiles),
    },
    {
      name: 'vehicle_agent_audit_max_files',
      help: 'The audit file cap (audit.maxFiles): past it, unsent records are deleted.',
      type: 'gauge',
      samples: one(retention?.maxFiles),
    },
    {
      name: 'vehicle_agent_audit_unsent_deleted_total',
      help: 'Audit records deleted at the file cap before the cloud outbox sent them (audit_retention_exceeded).',
      type: 'counter',
      samples: one(retention?.unsentRecords),
    },
    {
      name: 'vehicle_agent_audit_unsent_missing',
      help: 'Records the cloud outbox still needs that rotation already deleted.',
      type: 'gauge',
      samples: one(retention?.unsentMissing),
    },
  ];
}

/**
 * Rate limits and radio admission (issue 12), a block of their own: per-credential lockouts and
 * the UID throttle from the agent's status (counts only), BLE session admission from ble.status.
 */
function admissionFamilies(snapshot: StateSnapshot): MetricFamily[] {
  const limits = snapshot.rateLimits;
  const link = asRecord(asRecord(asRecord(snapshot.subsystems.ble).stats).link);
  const counter = (name: string, help: string, value: number | undefined): MetricFamily => ({
    name,
    help,
    type: 'counter',
    samples: value === undefined ? [] : [{ value }],
  });
  const gauge = (name: string, help: string, value: number | undefined): MetricFamily => ({
    name,
    help,
    type: 'gauge',
    samples: value === undefined ? [] : [{ value }],
  });
  return [
    gauge(
      'vehicle_agent_credentials_locked_out',
      'Credentials locked out now after repeated failed proofs.',
      limits?.lockedOutCredentials,
    ),
    counter(
      'vehicle_agent_credential_lockouts_total',
      'Credential lockouts started since the agent started.',
      limits?.credentialLockouts,
    ),
    gauge(
      'vehicle_agent_uid_throttled',
      'UID-only grants are refused now after unknown cards were tried.',
      limits === undefined ? undefined : limits.uidThrottled ? 1 : 0,
    ),
    counter(
      'vehicle_agent_uid_throttles_total',
      'UID throttles started since the agent started.',
      limits?.uidThrottles,
    ),
    counter(
      'vehicle_agent_noise_denials_total',
      'Reader denials that named no enrolled credential, or were refused by a rate limit.',
      limits?.noiseDenials,
    ),
    counter(
      'vehicle_agent_noise_denials_summarised_total',
      'Noise denials counted into audit summaries instead of written one by one.',
      limits?.noiseSummarised,
    ),
    {
      name: 'vehicle_agent_ble_sessions_total',
      help: 'BLE sessions by how they ended up: opened, failed, evicted after their unproven turn, dropped at the unproven deadline.',
      type: 'counter',
      samples: (
        [
          ['opened', link.sessionsOpened],
          ['failed', link.sessionsFailed],
          ['evicted', link.sessionsEvicted],
          ['unproven_timeout', link.unprovenTimeouts],
        ] as const
      ).flatMap(([outcome, v]) =>
        num(v) === undefined ? [] : [{ labels: { outcome }, value: num(v) ?? 0 }],
      ),
    },
    counter(
      'vehicle_agent_ble_sightings_deferred_total',
      'BLE sightings that found every session slot taken and waited for a turn.',
      num(link.sightingsDeferred),
    ),
    gauge(
      'vehicle_agent_ble_sessions_unproven',
      'BLE sessions now without a signature-checked answer.',
      num(link.unprovenSessions),
    ),
    gauge(
      'vehicle_agent_ble_devices_waiting',
      'BLE devices waiting for a session slot now.',
      num(link.waitingDevices),
    ),
    counter(
      'vehicle_agent_ble_connects_total',
      'Connects the BLE link made (bounded by ble.maxConnectsPerSecond).',
      num(link.connects),
    ),
    counter(
      'vehicle_agent_ble_connects_deferred_total',
      'BLE sightings that found the connect budget spent and waited for a turn.',
      num(link.connectsDeferred),
    ),
    gauge(
      'vehicle_agent_ble_devices_tracked',
      'Remote BLE devices the link keeps track of now (at most ble.maxTrackedDevices).',
      num(link.trackedDevices),
    ),
    counter(
      'vehicle_agent_ble_devices_forgotten_total',
      'Remote BLE devices forgotten because ble.maxTrackedDevices were tracked.',
      num(link.trackedDevicesEvicted),
    ),
  ];
}
