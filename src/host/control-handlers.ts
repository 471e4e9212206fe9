import type { CredentialStatus } from '../access/credential-lookup.js';
import type { Keyring } from '../access/keyring.js';
import type { Agent, LockControl } from '../agent/agent.js';
import { AgentError } from '../core/errors.js';
import type { Decision, Intent } from '../core/types.js';
import type { VehicleIdentity } from '../store/provision.js';
import {
  bindHandler,
  type DecisionReply,
  KEYS_PAGE_DEFAULT,
  type LimitsReply,
  type SimAnswer,
  type SimChallenge,
  type TypedHandler,
} from './control-api.js';
import type { ControlHandler } from './control-server.js';

/**
 * The control socket's core commands (status, vehicle, keys, audit) and, when the simulated reader
 * is on, its sim.* commands. Argument parsing here is strict: a bad request gets bad_arguments and
 * never reaches the agent.
 */
export interface CoreHandlerDeps {
  readonly agent: Agent;
  readonly keyring: Keyring;
  readonly identity: VehicleIdentity;
  readonly audit: { recent(n: number): readonly unknown[] };
  readonly relayStatus: () => unknown;
  /** Whether sim.limits.clear is registered (a simulated vehicle), which `limits` tells clients. */
  readonly limitsClearable?: boolean;
}

/** `status`: the agent, its relays, the last audit records. Parts that start later join it. */
export function coreStatus(deps: CoreHandlerDeps): TypedHandler<'status'> {
  return () => ({
    ...deps.agent.status(),
    relay: deps.relayStatus(),
    recent: deps.audit.recent(10),
    uptimeS: Math.round(process.uptime()),
  });
}

export function coreControlHandlers(deps: CoreHandlerDeps): Map<string, ControlHandler> {
  const { agent, keyring, identity, audit } = deps;
  return new Map<string, ControlHandler>([
    bindHandler('status', coreStatus(deps)),
    bindHandler('vehicle', () => ({
      vehicleId: identity.vehicleId,
      rootId: identity.rootId,
      vehicleKeyId: identity.vehicleKeyId,
      vehicleKey: identity.vehicleKey,
    })),
    bindHandler('keys.list', async ({ ids, limit, after }) => {
      const shown = (s: CredentialStatus) => ({ credential: s.credential, revoked: s.revoked });
      if (ids !== undefined) {
        const credentials = ids.flatMap((id) => keyring.byId(id) ?? []).map(shown);
        return { credentials, total: keyring.credentialCount };
      }
      await keyring.pageIndexReady();
      const page = keyring.page(after, limit ?? KEYS_PAGE_DEFAULT);
      return { ...page, credentials: page.credentials.map(shown) };
    }),
    bindHandler('keys.add', async ({ ops }) => await agent.addKeyringOps(ops, 'control')),
    bindHandler('audit.tail', ({ n }) => audit.recent(n)),
    bindHandler('limits', () => limitsReply(agent, deps.limitsClearable ?? false)),
  ]);
}

function limitsReply(agent: Agent, clearable: boolean): LimitsReply {
  const { now, policy, active } = agent.rateLimits();
  const iso = (ms: number) => new Date(ms).toISOString();
  return {
    now: iso(now),
    policy,
    lockedOut: active.credentials.map((c) => ({ credentialId: c.credentialId, until: iso(c.until) })),
    more: active.more,
    ...(active.uidThrottledUntil === undefined ? {} : { uidThrottledUntil: iso(active.uidThrottledUntil) }),
    clearable,
  };
}

/**
 * `sim.limits.clear` (`vehicle-agent sim clear-limits`): lifts every rate limit, so the demo can
 * show a lockout and go on. Registered for a simulated vehicle only (src/app/sim.ts).
 */
export function simLimitHandlers(agent: Agent): Map<string, ControlHandler> {
  return new Map<string, ControlHandler>([
    bindHandler('sim.limits.clear', () => agent.clearRateLimits('control')),
  ]);
}

export function decisionReply(decision: Decision, lock: LockControl): DecisionReply {
  return decision.granted
    ? {
        granted: true,
        intent: decision.intent,
        credentialId: decision.credential.id,
        role: decision.credential.role,
        lock: lock.state(),
      }
    : {
        granted: false,
        code: decision.code,
        ...(decision.credential ? { credentialId: decision.credential.id } : {}),
      };
}

/** What the sim.* reader commands drive (the simulated reader in src/sim/ implements it). */
export interface SimReaderControl {
  issueChallenge(): SimChallenge;
  answer(answer: SimAnswer): Promise<Decision>;
  presentUid(uidHex: string, intent: Intent): Promise<Decision>;
}

/** sim.challenge, sim.answer and sim.uid: `vehicle-agent sim present` plays a key through these. */
export function simReaderHandlers(
  simReader: SimReaderControl,
  lock: LockControl,
): Map<string, ControlHandler> {
  return new Map<string, ControlHandler>([
    bindHandler('sim.challenge', () => simReader.issueChallenge()),
    bindHandler('sim.answer', async (answer) => decisionReply(await simReader.answer(answer), lock)),
    bindHandler('sim.uid', async ({ uid, intent }) =>
      decisionReply(await simReader.presentUid(uid, intent), lock),
    ),
  ]);
}

/**
 * Test-only commands, present only with VEHICLE_AGENT_TEST_HOOKS=1: an error nothing catches (to
 * prove the uncaught-error path releases every relay), an event-loop stall (to prove watchdog
 * pings stop while the loop is stuck), and filler audit records (to drive audit rotation).
 */
export function testHookHandlers(
  env: NodeJS.ProcessEnv,
  deps: {
    readonly appendAudit?: (event: { type: string; [field: string]: unknown }) => Promise<{ seq: number }>;
  } = {},
): Map<string, ControlHandler> {
  if (env.VEHICLE_AGENT_TEST_HOOKS !== '1') return new Map();
  const appendAudit = deps.appendAudit;
  return new Map<string, ControlHandler>([
    bindHandler('test.audit', async ({ count, bytes }) => {
      if (appendAudit === undefined) throw new AgentError('bad_arguments', 'no audit log to fill');
      const pad = 'x'.repeat(bytes);
      const written = await Promise.all(
        Array.from({ length: count }, (_, i) => appendAudit({ type: 'test.filler', n: i, pad })),
      );
      return { count, lastSeq: written.at(-1)?.seq ?? 0 };
    }),
    bindHandler('test.crash', () => {
      setImmediate(() => {
        throw new Error('test.crash: deliberate uncaught error');
      });
      return { crashing: true };
    }),
    bindHandler('test.stall', ({ ms }) => {
      const until = performance.now() + ms;
      while (performance.now() < until) {
        // busy: nothing else runs
      }
      return { stalledMs: ms };
    }),
  ]);
}
