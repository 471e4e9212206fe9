import type { KeyObject } from 'node:crypto';
import type { Agent } from '../agent/agent.js';
import type { Config } from '../config/schema.js';
import { toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Health } from '../core/types.js';
import { bindHandler, type TypedHandler } from '../host/control-api.js';
import type { ControlHandler } from '../host/control-server.js';
import type { VehicleIdentity } from '../store/provision.js';
import type { CleanupStack } from './cleanup-stack.js';
import type { OpenState } from './state.js';

/**
 * The cloud link (src/cloud, docs/mqtt.md): beside the agent, never in front of it. Loaded only
 * when enabled, so mqtt never loads otherwise. A link that cannot start (a missing certificate,
 * say) is logged and the vehicle runs on without it.
 */
export async function startCloud(deps: {
  readonly config: Config;
  readonly stateDir: string;
  readonly identity: VehicleIdentity;
  readonly vehicleKey: KeyObject;
  readonly agent: Agent;
  readonly state: OpenState;
  readonly handlers: Map<string, ControlHandler>;
  /** The core `status` command, which the link's own status joins. */
  readonly coreStatus: TypedHandler<'status'>;
  readonly log: Logger;
  readonly cleanup: CleanupStack;
}): Promise<Pick<Health, 'state' | 'detail'>> {
  const { config, identity, handlers, log } = deps;
  if (!config.cloud.enabled) return { state: 'disabled' };
  try {
    const { startCloudLink } = await import('../cloud/cloud-link.js');
    const cloud = await startCloudLink({
      config: config.cloud,
      vehicleId: identity.vehicleId,
      stateDir: deps.stateDir,
      agent: deps.agent,
      audit: deps.state.audit,
      clock: deps.state.trustedClock.clock,
      vehicleSigner: { key: deps.vehicleKey, kid: identity.vehicleKeyId },
      log: log.child({ module: 'cloud' }),
    });
    deps.cleanup.defer('cloud', () => cloud.stop());
    deps.state.outbox?.follow(() => cloud.status().outbox.ackedSeq);
    // Connection, protocol and outbox depth for `status` readers (the status page, /metrics).
    handlers.set(...bindHandler('cloud.status', () => cloud.status()));
    // `vehicle-agent status` shows the link too: its intake budgets and drops.
    const coreStatus = deps.coreStatus;
    handlers.set(
      ...bindHandler('status', async (args) => ({ ...(await coreStatus(args)), cloud: cloud.status() })),
    );
    // Started: it connects in the background and never holds the unlock path.
    return { state: 'ok' };
  } catch (err) {
    const e = toAgentError(err);
    log.error(
      { module: 'cloud', code: e.code, err: e.message },
      'cloud link not started; running without it',
    );
    return { state: 'down', detail: `${e.code}: ${e.message}` };
  }
}
