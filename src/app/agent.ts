import type { KeyObject } from 'node:crypto';
import { Agent } from '../agent/agent.js';
import type { CredentialReader } from '../agent/reader.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../core/logger.js';
import { signP256 } from '../crypto/challenge.js';
import type { IntegrityFinding } from '../store/integrity.js';
import type { RelayHandle } from './relays.js';
import type { OpenState } from './state.js';

/** The agent on top of the open state, the lock controller and the readers, from the `policy` config. */
export function createAgent(deps: {
  readonly config: Config;
  readonly state: OpenState;
  readonly relay: RelayHandle;
  readonly readers: readonly CredentialReader[];
  readonly vehicleKey: KeyObject;
  readonly log: Logger;
}): Agent {
  const { config, state, relay } = deps;
  const { policy } = config;
  const agent = new Agent({
    vehicleId: state.vehicle.identity.vehicleId,
    keyring: state.vehicle.keyring,
    keyringStore: state.vehicle.keyringStore,
    counters: state.counters,
    clock: state.trustedClock.clock,
    audit: state.audit,
    lock: relay.lockController,
    readers: deps.readers,
    policy: {
      rateLimit: {
        maxDenials: policy.maxDenials,
        windowMs: policy.windowMs,
        cooldownMs: policy.cooldownMs,
        maxUnknownCards: policy.maxUnknownCards,
        uidThrottleMs: policy.uidThrottleMs,
      },
      answerDeadlineMs: {
        phone: policy.bleAnswerDeadlineMs,
        fido: policy.nfcAnswerDeadlineMs,
        ntag424: policy.nfcAnswerDeadlineMs,
      },
    },
    denialSummaryMs: policy.denialSummaryMs,
    log: deps.log.child({ module: 'agent' }),
    signAsVehicle: (message) => signP256(deps.vehicleKey, message),
    stateDeadlines: {
      counterWriteMs: policy.counterWriteDeadlineMs,
      counterSyncMs: policy.counterSyncDeadlineMs,
    },
    maxAuditInFlight: config.audit.maxPendingEvents,
  });
  relay.onLockChange((lockState, cause) => agent.audit({ type: 'lock', state: lockState, cause }));
  relay.onWatchdog((channel, release) =>
    agent.audit({
      type: 'relay.watchdog',
      code: release.code,
      channel,
      by: release.by,
      cause: release.cause,
      heldMs: release.heldMs,
    }),
  );
  return agent;
}

/** Damage the stores found (docs/storage.md), in the audit log: what was found at start, and later. */
export function auditStateDamage(agent: Agent, state: OpenState): void {
  const auditFinding = (f: IntegrityFinding) => {
    const { file, code, problem, action, denied } = state.integrity.relative(f);
    agent.audit({
      type: 'state.damage',
      code,
      file,
      problem,
      action,
      ...(denied ? { denied: denied.length } : {}),
    });
  };
  // The audit log records its own damage in the chain (audit.damage).
  for (const f of state.integrity.findings()) if (f.code !== 'audit_chain_broken') auditFinding(f);
  state.vehicle.keyringStore.onFinding(auditFinding);
}

/** UID-only credentials can be cloned in minutes: say which are enabled, once at start. */
export function warnInsecureCredentials(state: OpenState, log: Logger): void {
  const insecure = state.vehicle.keyring.insecureUidCredentials();
  if (insecure.length === 0) return;
  const insecureNames = insecure
    .map((s) => `${s.credential.name ?? s.credential.id} (${s.credential.role})`)
    .join(', ');
  log.warn(
    {
      module: 'main',
      credentials: insecure.map((s) => ({
        id: s.credential.id,
        name: s.credential.name ?? '(unnamed)',
        role: s.credential.role,
      })),
    },
    `${insecure.length} UID-only credential(s) enabled (insecureUid): ${insecureNames}. ` +
      'A UID can be cloned in minutes: replace them with FIDO keys or NTAG 424 DNA cards (docs/cards.md)',
  );
}
