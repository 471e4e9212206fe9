import type { Keyring } from '../access/keyring.js';
import type { Agent, LockControl } from '../agent/agent.js';
import { AgentError } from '../core/errors.js';
import type { Decision, Intent } from '../core/types.js';
import type { VehicleIdentity } from '../store/provision.js';
import type { ControlHandler } from './control-server.js';

/**
 * The control socket's core commands (status, vehicle, keys, audit); the simulated reader's sim.*
 * commands are added by the composition root (src/app/sim.ts). Argument parsing here is strict: a
 * bad request gets bad_arguments and never reaches the agent.
 */
export interface CoreHandlerDeps {
  readonly agent: Agent;
  readonly keyring: Keyring;
  readonly identity: VehicleIdentity;
  readonly audit: { recent(n: number): readonly unknown[] };
  readonly relayStatus: () => unknown;
}

export function coreControlHandlers(deps: CoreHandlerDeps): Map<string, ControlHandler> {
  const { agent, keyring, identity, audit } = deps;
  return new Map<string, ControlHandler>([
    [
      'status',
      () => ({
        ...agent.status(),
        relay: deps.relayStatus(),
        recent: audit.recent(10),
        uptimeS: Math.round(process.uptime()),
      }),
    ],
    [
      'vehicle',
      () => ({
        vehicleId: identity.vehicleId,
        rootId: identity.rootId,
        vehicleKeyId: identity.vehicleKeyId,
        vehicleKey: identity.vehicleKey,
      }),
    ],
    ['keys.list', () => keyring.list().map((s) => ({ credential: s.credential, revoked: s.revoked }))],
    [
      'keys.add',
      async (args) => {
        const ops = args.ops;
        if (
          !Array.isArray(ops) ||
          ops.length === 0 ||
          ops.length > 10_000 ||
          !ops.every((o) => typeof o === 'string')
        ) {
          throw new AgentError('bad_arguments', 'ops must be a non-empty list of JWS strings');
        }
        return await agent.addKeyringOps(ops as string[], 'control');
      },
    ],
    [
      'audit.tail',
      (args) => audit.recent(typeof args.n === 'number' ? Math.min(Math.max(1, args.n), 100) : 20),
    ],
  ]);
}

export function decisionReply(decision: Decision, lock: LockControl): Record<string, unknown> {
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

export function parseIntent(value: unknown): Intent {
  if (value === undefined) return 'unlock';
  if (value === 'unlock' || value === 'lock' || value === 'toggle') return value;
  throw new AgentError('bad_arguments', 'intent must be unlock, lock or toggle');
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
    [
      'test.audit',
      async (args) => {
        if (appendAudit === undefined) throw new AgentError('bad_arguments', 'no audit log to fill');
        const count =
          typeof args.count === 'number' ? Math.min(Math.max(0, Math.floor(args.count)), 10_000) : 1;
        const pad = 'x'.repeat(typeof args.bytes === 'number' ? Math.min(Math.max(0, args.bytes), 4096) : 0);
        const written = await Promise.all(
          Array.from({ length: count }, (_, i) => appendAudit({ type: 'test.filler', n: i, pad })),
        );
        return { count, lastSeq: written.at(-1)?.seq ?? 0 };
      },
    ],
    [
      'test.crash',
      () => {
        setImmediate(() => {
          throw new Error('test.crash: deliberate uncaught error');
        });
        return { crashing: true };
      },
    ],
    [
      'test.stall',
      (args) => {
        const ms = typeof args.ms === 'number' ? Math.min(Math.max(0, args.ms), 30_000) : 1000;
        const until = performance.now() + ms;
        while (performance.now() < until) {
          // busy: nothing else runs
        }
        return { stalledMs: ms };
      },
    ],
  ]);
}
