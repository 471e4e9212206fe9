import { createPrivateKey } from 'node:crypto';
import type { Agent } from '../agent/agent.js';
import { loadConfigFor } from '../config/load.js';
import { toAgentError } from '../core/errors.js';
import type { Health } from '../core/types.js';
import { bindHandler } from '../host/control-api.js';
import { coreControlHandlers, coreStatus, testHookHandlers } from '../host/control-handlers.js';
import { startControlServer } from '../host/control-server.js';
import { takeNotifyEnvironment } from '../host/sd-notify.js';
import type { IntegrityState } from '../host/state-integrity.js';
import { createLogger } from '../logging.js';
import { acquireInstanceLock } from '../store/instance-lock.js';
import { ensureStateDir } from '../store/provision.js';
import { auditStateDamage, createAgent, warnInsecureCredentials } from './agent.js';
import { CleanupStack } from './cleanup-stack.js';
import { startCloud } from './cloud.js';
import { buildReaders } from './readers.js';
import { announceReady } from './readiness.js';
import { createRelay } from './relays.js';
import { demoProvisioner, logDemoHints, simClockControl, simLimitControl, simReaderEnabled } from './sim.js';
import { ensureProvisioned, openState } from './state.js';
import { startStatusPageIfEnabled } from './status-page.js';
import { startSupervisor } from './supervision.js';

/** Ops decoded per turn of the event loop in the background decode after a fast start. */
const BACKGROUND_DECODE_SLICE = 500;

/**
 * The composition root: where the agent is put together, in this order (docs/architecture.md):
 * config and logger → relays (de-energised first) → state → readers → agent → control socket →
 * cloud link → supervision and status page. Each part is made by one module of src/app/, which
 * picks the real or the simulated kind; concrete drivers load by dynamic import, so node-ble,
 * serialport, mqtt or gpioset never load unless configured. Everything started is undone by one
 * cleanup stack, in reverse order.
 */

export interface RunningAgent {
  readonly agent: Agent;
  readonly socketPath: string;
  stop(reason: string): Promise<void>;
}

export async function startAgent(options: {
  config?: string | undefined;
  stateDir?: string | undefined;
}): Promise<RunningAgent> {
  const loaded = loadConfigFor({ file: options.config, stateDir: options.stateDir });
  const { config, stateDir, socketPath } = loaded;
  const log = createLogger({ level: config.log.level, format: config.log.format });
  // Before any child starts, so none inherits $NOTIFY_SOCKET (see src/host/sd-notify.ts).
  const notifyEnv = takeNotifyEnvironment(process.env);
  const startedAt = performance.now();
  log.info(
    { module: 'main', config: loaded.file ?? '(none: simulated hardware)', stateDir },
    'vehicle-agent starting',
  );

  // Relays first: the relay guard starts before anything else and de-energises every relay while
  // the state opens (whatever state a crash left them in); relay.start() below waits for it.
  // They are released first on every way out (before readers, links and stores wind down, which
  // can take seconds on a loaded Pi) and again last, a no-op when the first succeeded.
  const relay = await createRelay(config, log.child({ module: 'relay' }));
  const cleanup = new CleanupStack();
  cleanup.defer('relays', () => relay.close());
  try {
    await ensureStateDir(stateDir);
    const instance = await acquireInstanceLock(stateDir, 'agent');
    cleanup.defer('instance lock', () => instance.release());
    await ensureProvisioned(stateDir, demoProvisioner(config, stateDir, log));
    const state = await openState(config, stateDir, log, cleanup);
    const { identity, keyring } = state.vehicle;
    const vehicleKey = createPrivateKey(identity.vehicleKeyPem);
    const lock = relay.lockController;

    let agent: Agent | undefined;
    let statusPageUrl: string | undefined;
    const readers = await buildReaders({
      statusPageUrl: () => statusPageUrl,
      config,
      stateDir,
      vehicle: state.vehicle,
      vehicleKey,
      counters: state.counters,
      clock: state.trustedClock.clock,
      lock,
      agent: () => {
        if (!agent) throw new Error('the agent is not built yet');
        return agent;
      },
      log,
      cleanup,
    });
    agent = createAgent({ config, state, relay, readers: readers.readers, vehicleKey, log });
    await relay.start();
    await agent.start();
    const started = agent;
    cleanup.defer('agent', () => started.stop());
    auditStateDamage(agent, state);
    warnInsecureCredentials(state, log);

    // The control socket (src/host/control-server.ts): the core commands, the readers' own, and
    // the parts' status, added as they start. The status page serves the same map.
    const simLimits = simLimitControl(config, agent);
    const core = {
      agent,
      keyring,
      identity,
      audit: state.audit,
      relayStatus: () => relay.status(),
      limitsClearable: simLimits.size > 0,
    };
    const handlers = coreControlHandlers(core);
    for (const [name, handler] of simLimits) handlers.set(name, handler);
    for (const [name, handler] of simClockControl(config, state.trustedClock.clock))
      handlers.set(name, handler);
    for (const [name, handler] of readers.handlers) handlers.set(name, handler);
    for (const [name, handler] of testHookHandlers(process.env, {
      appendAudit: (e) => state.audit.append(e),
    }))
      handlers.set(name, handler);
    handlers.set(...bindHandler('state.status', () => state.integrity.summary()));
    handlers.set(...bindHandler('state.findings', () => state.integrity.status()));
    const control = await startControlServer(
      socketPath,
      handlers,
      log.child({ module: 'control' }),
      config.control,
    );
    cleanup.defer('control socket', () => control.close());
    handlers.set(...bindHandler('control.status', () => control.stats()));

    const cloudDeps = { config, stateDir, identity, vehicleKey, agent, state, handlers, log, cleanup };
    const cloudHealth = await startCloud({ ...cloudDeps, coreStatus: coreStatus(core) });
    const supervision = startSupervisor({ config, stateDir, relay, agent, state, notifyEnv, log, cleanup });
    const statusPageHealth = await startStatusPageIfEnabled({
      config,
      stateDir,
      handlers,
      audit: state.audit,
      supervision,
      log,
      cleanup,
      onListening: (url) => {
        statusPageUrl = url;
      },
    });

    if (simReaderEnabled(config)) logDemoHints(log, readers.hints, config.policy);
    // READY=1 once readers and relays are started, even with a reader down (the others must
    // work); `ready` says which parts are up. STOPPING=1 as the orderly stop begins.
    announceReady({
      parts: [
        { part: 'relay', health: () => relay.status().health },
        ...readers.readers.map((r) => ({ part: r.id, health: () => r.health() })),
        { part: 'state', health: () => integrityHealth(state.integrity.summary().state) },
        { part: 'cloud', health: () => cloudHealth },
        { part: 'status page', health: () => statusPageHealth },
      ],
      lockState: () => lock.state(),
      supervision,
      fields: {
        vehicleId: identity.vehicleId,
        lock: lock.state(),
        relay: config.relay.driver,
        readers: readers.readers.map((r) => r.id),
        socket: socketPath,
        startMs: Math.round(performance.now() - startedAt),
      },
      log,
      cleanup,
    });
    cleanup.defer('notify stopping', () => supervision.stopping());

    // A keyring loaded from its snapshot decodes its ops now, in slices between other work: 500
    // ops a slice, 5-15 ms here (2000 took 20-60 ms, over 100 ms with the machine loaded), so a
    // key at the reader waits little behind one; on a Pi each takes several times longer.
    keyring.materializeInBackground(BACKGROUND_DECODE_SLICE).catch((err: unknown) => {
      const e = toAgentError(err, 'state_corrupt');
      log.error(
        { module: 'keyring', code: e.code, err: e.message },
        'keyring operations could not be decoded',
      );
    });

    let stopping: Promise<void> | undefined;
    const stop = (reason: string): Promise<void> => {
      stopping ??= (async () => {
        log.info({ module: 'main', reason }, 'stopping');
        // The relays before anything else, whatever the stack holds (see above).
        await relay.close().catch(() => {});
        await cleanup.unwind(log);
        log.info({ module: 'main', relays: 'de-energised' }, 'stopped');
      })();
      return stopping;
    };
    return { agent, socketPath, stop };
  } catch (err) {
    await cleanup.unwind();
    throw err;
  }
}

function integrityHealth(state: IntegrityState): Pick<Health, 'state' | 'detail'> {
  return state === 'degraded'
    ? { state: 'degraded', detail: 'damaged state files: vehicle-agent state check' }
    : { state: 'ok' };
}
