import { AgentError } from '../../core/errors.js';
import { isRecord } from '../../host/control-api.js';
import { COMMON_OPTIONS, loadFor, out, parse } from '../args.js';
import { controlCall } from '../control-client.js';

export const STATUS_HELP = `vehicle-agent status [--json]

Shows the running agent's lock state, reader health, keyring summary, clock trust, recent audit
events and what its local interfaces (control socket, status page) refused or closed. Exits 3 when
the agent is not running, 75 when it runs but is too busy to answer (try again).`;

/** EX_TEMPFAIL: the agent is running but could not answer now. */
export const EXIT_BUSY = 75;

interface HealthLine {
  readonly state: string;
  readonly detail?: string;
}

interface StatusReply {
  readonly vehicleId: string;
  readonly lock: string;
  readonly readers: Readonly<Record<string, HealthLine>>;
  readonly relay?: {
    driver: string;
    health: HealthLine;
    timeline?: readonly RelaySwitch[];
  };
  readonly keyring: { operations: number; credentials: number; digest: string };
  readonly clock: { now: string; trust: string };
  readonly decisions: { granted: number; denied: number };
  readonly rateLimits?: {
    lockedOutCredentials: number;
    credentialLockouts: number;
    uidThrottledUntil?: string;
    noiseDenials: number;
  };
  readonly [extra: string]: unknown;
}

interface RelaySwitch {
  readonly channel: string;
  readonly energised: boolean;
  readonly at: string;
}

interface AuditLine {
  readonly seq: number;
  readonly ts: string;
  readonly type: string;
  readonly result?: string;
  readonly code?: string;
  readonly subject?: string;
}

/** cloud.status, as the cloud link reports it (src/cloud/cloud-link.ts). */
interface CloudReply {
  readonly connected: boolean;
  readonly protocol: string;
  readonly outbox?: { readonly pending?: number };
  readonly intake?: {
    readonly topics: Record<string, { accepted: number; overBudget: number; tooLarge: number }>;
    readonly refused: Record<string, number>;
    readonly paced: number;
  };
}

export async function status(argv: readonly string[]): Promise<number> {
  const { values } = parse(argv, COMMON_OPTIONS);
  const loaded = loadFor(values);
  let answer: Readonly<Record<string, unknown>>;
  try {
    answer = await controlCall(loaded.socketPath, 'status', {});
  } catch (err) {
    if (err instanceof AgentError && err.code === 'control_unavailable') {
      if (values.json) out(JSON.stringify({ running: false }));
      else out(`agent not running (no control socket at ${loaded.socketPath})`);
      return 3;
    }
    if (err instanceof AgentError && err.code === 'busy') {
      if (values.json) out(JSON.stringify({ running: true, busy: true, error: err.toJSON() }));
      else
        out(`agent running but busy [busy]: ${err.message.replace(/^the agent is running but busy: /, '')}`);
      return EXIT_BUSY;
    }
    throw err;
  }
  const interfaces = await interfaceStats(loaded.socketPath);
  if (values.json) {
    out(JSON.stringify({ running: true, ...answer, ...(interfaces ? { interfaces } : {}) }));
    return 0;
  }
  if (!isStatusReply(answer))
    throw new AgentError('internal', 'the agent answered status with a reply this CLI cannot read');
  const reply = answer;
  out(`vehicle ${reply.vehicleId}: lock ${reply.lock.toUpperCase()}`);
  out(`clock    ${reply.clock.now} (${reply.clock.trust})`);
  out(
    `keyring  ${reply.keyring.credentials} credentials, ${reply.keyring.operations} operations, digest ${reply.keyring.digest.slice(0, 16)}…`,
  );
  out(`decisions ${reply.decisions.granted} granted, ${reply.decisions.denied} denied since start`);
  for (const [id, h] of Object.entries(reply.readers)) {
    out(`reader   ${id.padEnd(6)} ${h.state}${h.detail ? ` (${h.detail})` : ''}`);
  }
  const limits = reply.rateLimits;
  if (limits) {
    out(
      `limits   ${limits.lockedOutCredentials} credential(s) locked out (${limits.credentialLockouts} since start)` +
        `${limits.uidThrottledUntil ? `, UID-only grants THROTTLED until ${limits.uidThrottledUntil}` : ''}` +
        `, ${limits.noiseDenials} noise denials`,
    );
  }
  if (reply.relay) {
    out(
      `relay    ${reply.relay.driver} ${reply.relay.health.state}${reply.relay.health.detail ? ` (${reply.relay.health.detail})` : ''}`,
    );
    for (const t of (reply.relay.timeline ?? []).slice(-6))
      out(`         ${t.at} ${t.channel} ${t.energised ? 'ON' : 'off'}`);
  }
  const cloud = reply.cloud;
  if (isCloudReply(cloud)) {
    out(
      `cloud    ${cloud.connected ? 'connected' : 'NOT connected'} (MQTT ${cloud.protocol}), ` +
        `${cloud.outbox?.pending ?? 0} event(s) pending`,
    );
    const intake = cloud.intake;
    if (intake) {
      const topics = Object.entries(intake.topics)
        .map(([t, c]) => `${t} ${c.accepted} accepted, ${c.overBudget} over budget, ${c.tooLarge} too large`)
        .join('; ');
      const refused = Object.values(intake.refused).reduce((a, n) => a + n, 0);
      out(`intake   ${topics}; ${refused} refused in all; paced ${intake.paced} time(s)`);
    }
  }
  for (const [key, value] of Object.entries(reply)) {
    if (
      [
        'cloud',
        'vehicleId',
        'lock',
        'readers',
        'relay',
        'keyring',
        'clock',
        'decisions',
        'rateLimits',
        'recent',
      ].includes(key)
    )
      continue;
    out(`${key.padEnd(8)} ${JSON.stringify(value)}`);
  }
  if (interfaces?.control) out(`control  ${describeControl(interfaces.control)}`);
  if (interfaces?.statusPage) out(`page     ${describeStatusPage(interfaces.statusPage)}`);
  const recent = reply.recent;
  if (Array.isArray(recent) && recent.length > 0) {
    out('recent audit events:');
    for (const r of recent.filter(isAuditLine))
      out(
        `  #${r.seq} ${r.ts} ${r.type}${r.result ? ` ${r.result}` : ''}${r.code ? ` ${r.code}` : ''}${r.subject ? ` ${r.subject}` : ''}`,
      );
  }
  return 0;
}

interface InterfaceStats {
  control?: Readonly<Record<string, unknown>>;
  statusPage?: Readonly<Record<string, unknown>>;
}

/** The budgets' counters of the control socket and the status page; what is not there is left out. */
async function interfaceStats(socketPath: string): Promise<InterfaceStats | undefined> {
  const ask = async (cmd: 'control.status' | 'status-page.status') => {
    try {
      const stats = await controlCall(socketPath, cmd, {}, 2000);
      return isRecord(stats) ? stats : undefined;
    } catch {
      return undefined; // an older agent, the page not enabled, or busy: the status above stands
    }
  };
  const [control, statusPage] = await Promise.all([ask('control.status'), ask('status-page.status')]);
  if (!control && !statusPage) return undefined;
  return { ...(control ? { control } : {}), ...(statusPage ? { statusPage } : {}) };
}

/** `3 garbage, 1 idle` from {garbage: 3, idle: 1, evicted: 0}; `none` when all are zero. */
function counters(value: unknown): string {
  if (!isRecord(value)) return 'none';
  const parts = Object.entries(value)
    .filter(([, n]) => typeof n === 'number' && n > 0)
    .map(([k, n]) => `${n} ${k}`);
  return parts.length > 0 ? parts.join(', ') : 'none';
}

// ── what the agent's replies must look like for the lines above (they are JSON from the socket) ──

const isString = (value: unknown): value is string => typeof value === 'string';
const isNumber = (value: unknown): value is number => typeof value === 'number';
const optional =
  <T>(guard: (value: unknown) => value is T) =>
  (value: unknown): value is T | undefined =>
    value === undefined || guard(value);

function isHealthLine(value: unknown): value is HealthLine {
  return isRecord(value) && isString(value.state) && optional(isString)(value.detail);
}

function isRelaySwitch(value: unknown): value is RelaySwitch {
  return (
    isRecord(value) && isString(value.channel) && typeof value.energised === 'boolean' && isString(value.at)
  );
}

function isRelay(value: unknown): value is NonNullable<StatusReply['relay']> {
  return (
    isRecord(value) &&
    isString(value.driver) &&
    isHealthLine(value.health) &&
    (value.timeline === undefined || (Array.isArray(value.timeline) && value.timeline.every(isRelaySwitch)))
  );
}

function isRateLimits(value: unknown): value is NonNullable<StatusReply['rateLimits']> {
  return (
    isRecord(value) &&
    isNumber(value.lockedOutCredentials) &&
    isNumber(value.credentialLockouts) &&
    optional(isString)(value.uidThrottledUntil) &&
    isNumber(value.noiseDenials)
  );
}

function isStatusReply(value: unknown): value is StatusReply {
  if (!isRecord(value)) return false;
  const { vehicleId, lock, readers, relay, keyring, clock, decisions, rateLimits } = value;
  return (
    isString(vehicleId) &&
    isString(lock) &&
    isRecord(readers) &&
    Object.values(readers).every(isHealthLine) &&
    optional(isRelay)(relay) &&
    isRecord(keyring) &&
    isNumber(keyring.operations) &&
    isNumber(keyring.credentials) &&
    isString(keyring.digest) &&
    isRecord(clock) &&
    isString(clock.now) &&
    isString(clock.trust) &&
    isRecord(decisions) &&
    isNumber(decisions.granted) &&
    isNumber(decisions.denied) &&
    optional(isRateLimits)(rateLimits)
  );
}

function isCounts(value: unknown): boolean {
  return isRecord(value) && Object.values(value).every(isNumber);
}

function isCloudReply(value: unknown): value is CloudReply {
  if (!isRecord(value) || typeof value.connected !== 'boolean' || !isString(value.protocol)) return false;
  const { outbox, intake } = value;
  if (outbox !== undefined && !(isRecord(outbox) && optional(isNumber)(outbox.pending))) return false;
  if (intake === undefined) return true;
  return (
    isRecord(intake) &&
    isRecord(intake.topics) &&
    Object.values(intake.topics).every(
      (c) => isRecord(c) && isNumber(c.accepted) && isNumber(c.overBudget) && isNumber(c.tooLarge),
    ) &&
    isCounts(intake.refused) &&
    isNumber(intake.paced)
  );
}

function isAuditLine(value: unknown): value is AuditLine {
  return (
    isRecord(value) &&
    isNumber(value.seq) &&
    isString(value.ts) &&
    isString(value.type) &&
    optional(isString)(value.result) &&
    optional(isString)(value.code) &&
    optional(isString)(value.subject)
  );
}

function describeControl(c: Readonly<Record<string, unknown>>): string {
  return (
    `${c.connections} connected, ${c.requests} requests, ${c.badRequests} bad; ` +
    `refused: ${counters(c.refused)}; closed: ${counters(c.closed)}`
  );
}

function describeStatusPage(p: Readonly<Record<string, unknown>>): string {
  return (
    `${p.connections} connected; answered: ${counters(p.answered)}; refused: ${counters(p.refused)}; ` +
    `closed: ${counters(p.closed)}`
  );
}
