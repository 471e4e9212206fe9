import { AgentError } from '../../core/errors.js';
import { COMMON_OPTIONS, loadFor, out, parse } from '../args.js';
import { controlRequest } from '../control-client.js';

export const STATUS_HELP = `vehicle-agent status [--json]

Shows the running agent's lock state, reader health, keyring summary, clock trust and recent audit
events. Exits 3 when the agent is not running.`;

interface StatusReply {
  readonly vehicleId: string;
  readonly lock: string;
  readonly readers: Record<string, { state: string; detail?: string }>;
  readonly relay?: {
    driver: string;
    health: { state: string; detail?: string };
    timeline?: { channel: string; energised: boolean; at: string }[];
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
  let reply: StatusReply;
  try {
    reply = (await controlRequest(loaded.socketPath, 'status', {})) as StatusReply;
  } catch (err) {
    if (err instanceof AgentError && err.code === 'control_unavailable') {
      if (values.json) out(JSON.stringify({ running: false }));
      else out(`agent not running (no control socket at ${loaded.socketPath})`);
      return 3;
    }
    throw err;
  }
  if (values.json) {
    out(JSON.stringify({ running: true, ...reply }));
    return 0;
  }
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
  const cloud = reply.cloud as CloudReply | undefined;
  if (cloud) {
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
  const recent = reply.recent as
    | { seq: number; ts: string; type: string; result?: string; code?: string; subject?: string }[]
    | undefined;
  if (recent && recent.length > 0) {
    out('recent audit events:');
    for (const r of recent)
      out(
        `  #${r.seq} ${r.ts} ${r.type}${r.result ? ` ${r.result}` : ''}${r.code ? ` ${r.code}` : ''}${r.subject ? ` ${r.subject}` : ''}`,
      );
  }
  return 0;
}
