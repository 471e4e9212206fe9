import { join } from 'node:path';
import type { Config } from '../config/schema.js';
import { toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Health } from '../core/types.js';
import { bindHandler } from '../host/control-api.js';
import type { ControlHandler } from '../host/control-server.js';
import type { HealthReport } from '../host/health-monitor.js';
import { DEMO_KEYS, DEMO_TAGS } from '../sim/demo.js';
import { loadAdminToken } from '../status/admin-token.js';
import { AuditFeed, type AuditSource } from '../status/audit-feed.js';
import { type StatusServer, startStatusServer } from '../status/server.js';
import type { HandlerMap } from '../status/sim-actions.js';
import { STATE_FILES } from '../store/provision.js';
import type { CleanupStack } from './cleanup-stack.js';

/** Builds the status page for the composition root (src/app/start.ts): token, audit feed, server. */

export interface StatusPageDeps {
  readonly config: Config['statusPage'];
  readonly stateDir: string;
  /** The control handlers (the same map the control socket serves; read at each request). */
  readonly handlers: HandlerMap;
  readonly audit: AuditSource;
  readonly health: {
    lastReport(): HealthReport | undefined;
    check(): Promise<HealthReport>;
  };
  readonly log: Logger;
}

export async function startStatusPage(deps: StatusPageDeps): Promise<StatusServer> {
  const { config, log } = deps;
  const token = await loadAdminToken({
    configured: config.adminToken,
    file: config.adminTokenFile,
    stateDir: deps.stateDir,
  });
  const feed = new AuditFeed(deps.audit, log);
  const server = await startStatusServer({
    host: config.host,
    port: config.port,
    token: token.value,
    maxClients: config.maxClients,
    requestsPerSecond: config.requestsPerSecond,
    adminRequestsPerSecond: config.adminRequestsPerSecond,
    maxConnections: config.maxConnections,
    maxPendingConnections: config.maxPendingConnections,
    headersTimeoutMs: config.headersTimeoutMs,
    requestTimeoutMs: config.requestTimeoutMs,
    keepAliveTimeoutMs: config.keepAliveTimeoutMs,
    allowedHosts: (config.allowedHosts ?? '').split(','),
    simControls: config.simControls,
    handlers: deps.handlers,
    health: () => deps.health.lastReport(),
    checkHealth: () => deps.health.check(),
    feed,
    demoDir: join(deps.stateDir, STATE_FILES.demo),
    demoCredentials: { keys: DEMO_KEYS, tags: DEMO_TAGS },
    log,
  });
  log.info(
    {
      url: server.url,
      adminToken: token.source === 'config' ? 'from config' : `${token.source}: ${token.file ?? ''}`,
    },
    'status page listening',
  );
  // Sim mode with the simulated BLE peripheral: the phone-key page reaches it through the server.
  if (config.simControls && deps.handlers.has('sim.central.connect')) {
    log.info({ url: `${server.url}key/` }, 'try: the phone key page in Chromium or Chrome (simulated radio)');
  }
  return server;
}

/**
 * The local status page (src/status), when enabled: beside the agent, never in front of it. One
 * that cannot start (its port taken, say) is logged and the vehicle runs on without it.
 */
export async function startStatusPageIfEnabled(deps: {
  readonly config: Config;
  readonly stateDir: string;
  readonly handlers: Map<string, ControlHandler>;
  readonly audit: AuditSource;
  readonly supervision: StatusPageDeps['health'];
  readonly log: Logger;
  readonly cleanup: CleanupStack;
  /** Told the page's URL once it listens (its port when statusPage.port is 0). */
  readonly onListening?: (url: string) => void;
}): Promise<Pick<Health, 'state' | 'detail'>> {
  const { config, log } = deps;
  if (!config.statusPage.enabled) return { state: 'disabled' };
  try {
    const page = await startStatusPage({
      config: config.statusPage,
      stateDir: deps.stateDir,
      handlers: deps.handlers,
      audit: deps.audit,
      health: deps.supervision,
      log: log.child({ module: 'status-page' }),
    });
    deps.cleanup.defer('status page', async () => {
      page.setStopping();
      await page.close();
    });
    deps.handlers.set(...bindHandler('status-page.status', () => page.stats()));
    deps.onListening?.(page.url);
    return { state: 'ok', detail: page.url };
  } catch (err) {
    const e = toAgentError(err);
    log.error(
      { module: 'status-page', code: e.code, err: e.message },
      'status page not started; running without it',
    );
    return { state: 'down', detail: `${e.code}: ${e.message}` };
  }
}
