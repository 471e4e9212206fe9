import { createPrivateKey } from 'node:crypto';
import { basename, join } from 'node:path';
import { Agent } from '../agent/agent.js';
import type { CredentialReader } from '../agent/reader.js';
import { COMMON_OPTIONS, loadFor, parse } from '../cli/args.js';
import type { Config } from '../config/schema.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { signP256 } from '../crypto/challenge.js';
import { coreControlHandlers, simReaderHandlers, testHookHandlers } from '../host/control-handlers.js';
import { type ControlHandler, type ControlServer, startControlServer } from '../host/control-server.js';
import { acquireInstanceLock, type InstanceLock } from '../host/instance-lock.js';
import { takeNotifyEnvironment } from '../host/sd-notify.js';
import { startSupervision } from '../host/supervision.js';
import { createLogger } from '../logging.js';
import { demoHints, seedDemo } from '../sim/demo.js';
import { AuditLog } from '../store/audit-log.js';
import { openTrustedClock } from '../store/clock-store.js';
import type { IntegrityFinding } from '../store/integrity.js';
import { COUNTER_MAP_OPTIONS, JournaledMap } from '../store/journaled-map.js';
import { ensureStateDir, isProvisioned, provision, STATE_FILES } from '../store/provision.js';
import { denyCounterSuspects, StateIntegrity } from '../store/state-integrity.js';
import { openStores } from '../store/store-registry.js';
import { openVehicleState, type VehicleState } from '../store/vehicle-state.js';
import { createRelay, type RelayHandle } from './relays.js';

/**
 * The composition root: config → logger → relays (de-energised first) → state → lock controller →
 * readers → agent → control socket. Only this file picks concrete drivers, by dynamic import, so
 * node-ble, serialport or gpioset never load unless configured.
 */

export interface RunningAgent {
  readonly agent: Agent;
  readonly socketPath: string;
  stop(reason: string): Promise<void>;
}

function simReaderEnabled(config: Config): boolean {
  return config.sim.reader === 'on' || (config.sim.reader === 'auto' && config.relay.driver === 'sim');
}

function allSimulated(config: Config): boolean {
  return config.relay.driver === 'sim';
}

export async function startAgent(options: {
  config?: string | undefined;
  stateDir?: string | undefined;
}): Promise<RunningAgent> {
  const loaded = loadFor({ config: options.config, 'state-dir': options.stateDir });
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
  const relay: RelayHandle = await createRelay(config, log.child({ module: 'relay' }));
  // Relays are released first on every way out (before readers, links and stores wind down, which
  // can take seconds on a loaded Pi) and again last, which is a no-op when the first succeeded.
  const releaseRelays = async () => relay.close();
  const cleanup: (() => Promise<void>)[] = [releaseRelays];
  let instance: InstanceLock | undefined;
  let state: VehicleState | undefined;
  try {
    await ensureStateDir(stateDir);
    instance = await acquireInstanceLock(stateDir, 'agent');
    const heldLock = instance;
    cleanup.unshift(() => heldLock.release());
    if (!(await isProvisioned(stateDir))) {
      if (!(allSimulated(config) && config.sim.demo)) {
        throw new AgentError(
          'not_provisioned',
          `${stateDir} holds no provisioned vehicle: run \`vehicle-agent init --owner-key OWNER.pub.pem\``,
        );
      }
      const { identity, ownerKey } = await provision({ stateDir, demoOwner: true });
      if (ownerKey) await seedDemo(stateDir, identity, ownerKey);
      log.info(
        { module: 'main', vehicleId: identity.vehicleId, demo: join(stateDir, STATE_FILES.demo) },
        'provisioned a demo vehicle',
      );
    }
    // Pure verifiers of owner approvals carried by vehicle-signed grants (BLE enrollment, E1;
    // card enrollment at the reader, src/nfc/enroll-auth.ts).
    const [{ BLE_AUTH_VERIFIERS }, { NFC_AUTH_VERIFIERS }] = await Promise.all([
      import('../ble/protocol/enroll.js'),
      import('../nfc/enroll-auth.js'),
    ]);
    state = await openVehicleState(stateDir, log, new Map([...BLE_AUTH_VERIFIERS, ...NFC_AUTH_VERIFIERS]));
    const vehicleState = state;
    cleanup.unshift(() => vehicleState.close());
    const { identity, keyring } = state;

    const trustedClock = await openTrustedClock(stateDir, log.child({ module: 'clock' }));
    const { clock } = trustedClock;
    cleanup.unshift(() => trustedClock.close());

    const counters = await JournaledMap.open<number>(join(stateDir, STATE_FILES.counters), {
      ...COUNTER_MAP_OPTIONS,
      parseValue: (v) => {
        if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
          throw new Error('counter must be a non-negative integer');
        return v;
      },
      logger: log.child({ module: 'counters' }),
    });
    cleanup.unshift(() => counters.close());
    // Rotation keeps what the cloud outbox has not sent (docs/storage.md "Rotation and the cloud
    // outbox"): its live cursor once the link runs, the persisted one until then.
    const outbox = config.cloud.enabled ? await outboxRetention(stateDir, log) : undefined;
    const audit = await AuditLog.open(join(stateDir, STATE_FILES.audit), {
      maxFileBytes: config.audit.maxFileBytes,
      keepFiles: config.audit.keepFiles,
      maxFiles: Math.max(config.audit.maxFiles, config.audit.keepFiles),
      ...(outbox ? { retainFrom: outbox.retainFrom } : {}),
      now: () => clock.now(),
      expectHistory: trustedClock.existedBefore,
      logger: log.child({ module: 'audit' }),
    });
    cleanup.unshift(() => audit.close());
    // Damaged state files (docs/storage.md): counters lost in every copy deny their credentials.
    denyCounterSuspects(keyring, counters.suspects());
    const integrity = new StateIntegrity(stateDir, [
      () => vehicleState.findings(),
      () => trustedClock.findings,
      () => counters.findings,
      () => audit.findings,
    ]);

    const lock = relay.lockController;
    const readers: CredentialReader[] = [];
    const { SimReader } = await import('../sim/sim-reader.js');
    const simReader = simReaderEnabled(config) ? new SimReader('sim') : undefined;
    if (simReader) readers.push(simReader);

    const vehicleKey = createPrivateKey(identity.vehicleKeyPem);

    // ── BLE phone keys (src/ble, docs/ble.md): node-ble loads only when enabled ──
    let bleHandlers: ReadonlyMap<string, ControlHandler> = new Map();
    if (config.ble.enabled) {
      const [{ setupBle }, { signJws }, { KEYRING_OP_TYP }] = await Promise.all([
        import('./ble.js'),
        import('../crypto/jws.js'),
        import('../access/keyring.js'),
      ]);
      const ble = await setupBle({
        config,
        vehicleId: identity.vehicleId,
        keyring,
        clock,
        log,
        signOp: (op) => signJws(op, vehicleKey, identity.vehicleKeyId, KEYRING_OP_TYP),
        agent: () => agent,
        lockState: () => lock.state(),
      });
      readers.push(ble.reader);
      bleHandlers = ble.handlers;
      // Registered before agent.stop(), so it runs after it (the reader stops first).
      cleanup.unshift(() => ble.stop());
    }
    // ── end BLE ──

    // ── NFC keycards (src/nfc, docs/cards.md): serialport loads only when enabled ──
    // A reader that cannot be set up (sim mode failing to start its emulator, say) is logged and
    // the vehicle runs on without it; a PN532 that is absent or fails later recovers by itself.
    let nfcHandlers: ReadonlyMap<string, ControlHandler> = new Map();
    let nfcHints: readonly string[] = [];
    if (config.nfc.enabled) {
      try {
        const [{ setupNfc }, { signJws }, { KEYRING_OP_TYP }] = await Promise.all([
          import('./nfc.js'),
          import('../crypto/jws.js'),
          import('../access/keyring.js'),
        ]);
        const nfc = await setupNfc({
          config,
          stateDir,
          vehicleId: identity.vehicleId,
          keyring,
          counters,
          clock,
          log,
          signOp: (op) => signJws(op, vehicleKey, identity.vehicleKeyId, KEYRING_OP_TYP),
          agent: () => agent,
          lockState: () => lock.state(),
        });
        readers.push(nfc.reader);
        nfcHandlers = nfc.handlers;
        nfcHints = nfc.hints;
        // Registered before agent.stop(), so it runs after it (the reader stops first).
        cleanup.unshift(() => nfc.stop());
      } catch (err) {
        const e = toAgentError(err, 'reader_error');
        log.error(
          { module: 'nfc', code: e.code, err: e.message },
          'NFC reader not started; running without it',
        );
      }
    }
    // ── end NFC ──

    const agent = new Agent({
      vehicleId: identity.vehicleId,
      keyring,
      keyringStore: state.keyringStore,
      counters,
      clock,
      audit,
      lock,
      readers,
      policy: {
        rateLimit: {
          maxDenials: config.policy.maxDenials,
          windowMs: config.policy.windowMs,
          cooldownMs: config.policy.cooldownMs,
          maxUnknownCards: config.policy.maxUnknownCards,
          uidThrottleMs: config.policy.uidThrottleMs,
        },
        answerDeadlineMs: {
          phone: config.policy.bleAnswerDeadlineMs,
          fido: config.policy.nfcAnswerDeadlineMs,
          ntag424: config.policy.nfcAnswerDeadlineMs,
        },
      },
      denialSummaryMs: config.policy.denialSummaryMs,
      log: log.child({ module: 'agent' }),
      signAsVehicle: (message) => signP256(vehicleKey, message),
      stateDeadlines: {
        counterWriteMs: config.policy.counterWriteDeadlineMs,
        counterSyncMs: config.policy.counterSyncDeadlineMs,
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
    await relay.start();
    await agent.start();
    cleanup.unshift(() => agent.stop());
    const auditFinding = (f: IntegrityFinding) => {
      const { file, code, problem, action, denied } = integrity.relative(f);
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
    for (const f of integrity.findings()) if (f.code !== 'audit_chain_broken') auditFinding(f);
    vehicleState.keyringStore.onFinding(auditFinding);

    const insecure = keyring.list().filter((s) => !s.revoked && s.credential.options.insecureUid);
    if (insecure.length > 0) {
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

    const handlers = coreControlHandlers({
      agent,
      keyring,
      identity,
      audit,
      relayStatus: () => relay.status(),
    });
    if (simReader)
      for (const [name, handler] of simReaderHandlers(simReader, lock)) handlers.set(name, handler);
    for (const [name, handler] of bleHandlers) handlers.set(name, handler);
    for (const [name, handler] of nfcHandlers) handlers.set(name, handler);
    for (const [name, handler] of testHookHandlers(process.env, { appendAudit: (e) => audit.append(e) }))
      handlers.set(name, handler);
    handlers.set('state.status', () => integrity.summary());
    handlers.set('state.findings', () => integrity.status());
    const control: ControlServer = await startControlServer(
      socketPath,
      handlers,
      log.child({ module: 'control' }),
      config.control,
    );
    cleanup.unshift(() => control.close());
    handlers.set('control.status', () => control.stats());

    // ── cloud link (src/cloud, docs/mqtt.md): beside the agent, never in front of it ──
    // Loaded only when enabled, so mqtt never loads otherwise. A link that cannot start (a
    // missing certificate, say) is logged and the vehicle runs on without it.
    if (config.cloud.enabled) {
      try {
        const { startCloudLink } = await import('../cloud/cloud-link.js');
        const cloud = await startCloudLink({
          config: config.cloud,
          vehicleId: identity.vehicleId,
          stateDir,
          agent,
          audit,
          clock,
          vehicleSigner: { key: vehicleKey, kid: identity.vehicleKeyId },
          log: log.child({ module: 'cloud' }),
        });
        cleanup.unshift(() => cloud.stop());
        outbox?.follow(() => cloud.status().outbox.ackedSeq);
        // Connection, protocol and outbox depth for `status` readers (the status page, /metrics).
        handlers.set('cloud.status', () => cloud.status());
        // `vehicle-agent status` shows the link too: its intake budgets and drops (issue 12).
        const coreStatus = handlers.get('status');
        if (coreStatus)
          handlers.set('status', async (args) => ({
            ...((await coreStatus(args)) as Record<string, unknown>),
            cloud: cloud.status(),
          }));
      } catch (err) {
        const e = toAgentError(err);
        log.error(
          { module: 'cloud', code: e.code, err: e.message },
          'cloud link not started; running without it',
        );
      }
    }
    // ── end cloud link ──

    // ── supervision and status page (src/host/supervision.ts, src/status, systemd/) ──
    // Beside the agent, never in front of it: health checks, sd_notify (READY/WATCHDOG/STOPPING
    // when run by systemd) and the local HTTP status page, which calls the handlers above.
    const supervision = startSupervision({
      stateDir,
      lock,
      onLockChange: (listener) => relay.onLockChange(listener),
      maxOnMs: config.lock.maxOnMs,
      notifyEnv,
      log: log.child({ module: 'supervision' }),
      // Real write failures of the state stores (docs/storage.md), for /healthz and /metrics.
      storage: () => ({
        stores: [
          { name: 'keyring', ...vehicleState.keyringStore.writeHealth },
          { name: 'counters', ...counters.writeHealth },
          { name: 'audit', ...audit.writeHealth },
          // The cloud link's stores (command counters and results, the outbox cursor), as they open.
          ...openStores
            .under(join(stateDir, 'cloud'))
            .map(({ path, health }) => ({ name: `cloud.${basename(path)}`, ...health })),
        ],
        audit: agent.auditDrops(),
        auditRetention: audit.rotationStats(),
      }),
      extraChecks: [integrity.healthCheck()],
    });
    cleanup.push(() => supervision.close()); // last: the notify helper outlives the relays' release
    if (config.statusPage.enabled) {
      try {
        const { startStatusPage } = await import('./status-page.js');
        const page = await startStatusPage({
          config: config.statusPage,
          stateDir,
          handlers,
          audit,
          health: supervision,
          log: log.child({ module: 'status-page' }),
        });
        cleanup.unshift(async () => {
          page.setStopping();
          await page.close();
        });
        handlers.set('status-page.status', () => page.stats());
      } catch (err) {
        const e = toAgentError(err);
        log.error(
          { module: 'status-page', code: e.code, err: e.message },
          'status page not started; running without it',
        );
      }
    }
    // ── end supervision ──

    if (simReader) {
      for (const hint of [...demoHints(), ...nfcHints]) log.info({ module: 'main' }, `try: ${hint}`);
      log.info(
        { module: 'main' },
        'then: vehicle-agent status   (npx vehicle-agent ... from the project directory)',
      );
    }

    // READY=1 once readers and relays are up; STOPPING=1 as the orderly stop begins.
    supervision.ready(
      `ready: lock ${lock.state()}; readers ${readers.map((r) => `${r.id} ${r.health().state}`).join(', ') || 'none'}`,
    );
    cleanup.unshift(async () => supervision.stopping());

    log.info(
      {
        module: 'main',
        vehicleId: identity.vehicleId,
        lock: lock.state(),
        relay: config.relay.driver,
        readers: readers.map((r) => r.id),
        socket: socketPath,
        startMs: Math.round(performance.now() - startedAt),
      },
      'ready',
    );

    // A keyring loaded from its snapshot decodes its ops now, in slices between other work.
    keyring.materializeInBackground().catch((err: unknown) => {
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
        for (const step of [releaseRelays, ...cleanup]) {
          try {
            await step();
          } catch (err) {
            const e = toAgentError(err);
            log.error({ module: 'main', code: e.code, err: e.message }, 'error while stopping');
          }
        }
        log.info({ module: 'main', relays: 'de-energised' }, 'stopped');
      })();
      return stopping;
    };
    return { agent, socketPath, stop };
  } catch (err) {
    for (const step of cleanup) await step().catch(() => {});
    throw err;
  }
}

/** `vehicle-agent start`: runs until SIGINT/SIGTERM; relays are released on every way out. */
export async function runAgentCli(argv: readonly string[]): Promise<number> {
  const { values } = parse(argv, COMMON_OPTIONS);
  // Handlers go in before start-up, so a signal that arrives while the agent starts (or right
  // after `ready`) still ends in an orderly stop with the relays released, never a default kill.
  let running: RunningAgent | undefined;
  let stopRequested: string | undefined;
  let finish: (code: number) => void = () => {};
  const finished = new Promise<number>((resolve) => {
    finish = resolve;
  });
  const stopWith = (reason: string, code: number) => {
    if (!running) {
      stopRequested ??= reason;
      return;
    }
    void running.stop(reason).then(() => finish(code));
  };
  const onSignal = (signal: NodeJS.Signals) => stopWith(signal, 0);
  const onFatal = (err: unknown) => {
    const e = toAgentError(err);
    process.stderr.write(`vehicle-agent: fatal [${e.code}] ${e.stack ?? e.message}\n`);
    setTimeout(() => process.exit(1), 5000).unref();
    if (!running) process.exit(1);
    void running.stop('fatal error').finally(() => process.exit(1));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('uncaughtException', onFatal);
  process.once('unhandledRejection', onFatal);
  try {
    running = await startAgent({ config: values.config, stateDir: values['state-dir'] });
  } catch (err) {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    throw err;
  }
  if (stopRequested !== undefined) stopWith(stopRequested, 0);
  return await finished;
}

export type { Logger };

/**
 * The first audit seq the cloud outbox still needs (AuditLogOptions.retainFrom): from its
 * persisted cursor until the link starts, then from the live one (`follow`). An unreadable
 * cursor keeps everything (up to audit.maxFiles) rather than stop the agent.
 */
async function outboxRetention(
  stateDir: string,
  log: Logger,
): Promise<{ retainFrom: () => number; follow: (ackedSeq: () => number) => void }> {
  const { readOutboxCursor } = await import('../cloud/outbox.js');
  let persisted = 0;
  try {
    persisted = (await readOutboxCursor(join(stateDir, 'cloud'))) ?? 0;
  } catch (err) {
    const e = toAgentError(err);
    log.warn(
      { module: 'audit', code: e.code, err: e.message },
      'cloud outbox cursor unreadable; audit rotation keeps every unsent record it can',
    );
  }
  let live: (() => number) | undefined;
  return {
    retainFrom: () => (live?.() ?? persisted) + 1,
    follow: (ackedSeq) => {
      live = ackedSeq;
    },
  };
}
