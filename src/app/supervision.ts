import { basename, join } from 'node:path';
import type { Agent } from '../agent/agent.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../core/logger.js';
import { type Supervision, startSupervision } from '../host/supervision.js';
import { openStores } from '../store/store-registry.js';
import type { CleanupStack } from './cleanup-stack.js';
import type { RelayHandle } from './relays.js';
import type { OpenState } from './state.js';

/**
 * Supervision beside the agent, never in front of it (src/host/supervision.ts, systemd/): health
 * checks and sd_notify (READY/WATCHDOG/STOPPING when run by systemd). Undone last: the notify
 * helper outlives the relays' release, so STOPPING and the stop are reported.
 */
export function startSupervisor(deps: {
  readonly config: Config;
  readonly stateDir: string;
  readonly relay: RelayHandle;
  readonly agent: Agent;
  readonly state: OpenState;
  /** $NOTIFY_SOCKET and $WATCHDOG_USEC, taken from the environment before any child started. */
  readonly notifyEnv: NodeJS.ProcessEnv;
  readonly log: Logger;
  readonly cleanup: CleanupStack;
}): Supervision {
  const { state, relay } = deps;
  const supervision = startSupervision({
    stateDir: deps.stateDir,
    lock: relay.lockController,
    onLockChange: (listener) => relay.onLockChange(listener),
    maxOnMs: deps.config.lock.maxOnMs,
    notifyEnv: deps.notifyEnv,
    log: deps.log.child({ module: 'supervision' }),
    // Real write failures of the state stores (docs/storage.md), for /healthz and /metrics.
    storage: () => ({
      stores: [
        { name: 'keyring', ...state.vehicle.keyringStore.writeHealth },
        { name: 'counters', ...state.counters.writeHealth },
        { name: 'audit', ...state.audit.writeHealth },
        // The cloud link's stores (command counters and results, the outbox cursor), as they open.
        ...openStores
          .under(join(deps.stateDir, 'cloud'))
          .map(({ path, health }) => ({ name: `cloud.${basename(path)}`, ...health })),
      ],
      audit: deps.agent.auditDrops(),
      auditRetention: state.audit.rotationStats(),
    }),
    extraChecks: [state.integrity.healthCheck()],
  });
  deps.cleanup.deferLast('supervision', () => supervision.close());
  return supervision;
}
