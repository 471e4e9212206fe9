import { join } from 'node:path';
import type { Config } from '../config/schema.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { denyCounterSuspects, StateIntegrity } from '../host/state-integrity.js';
import { AuditLog } from '../store/audit-log.js';
import { openTrustedClock, type TrustedClockStore } from '../store/clock-store.js';
import { COUNTER_MAP_OPTIONS, JournaledMap } from '../store/journaled-map.js';
import { isProvisioned, STATE_FILES } from '../store/provision.js';
import { openVehicleState, type VehicleState } from '../store/vehicle-state.js';
import type { CleanupStack } from './cleanup-stack.js';

/** Everything the agent keeps in its state directory, open, each with its close on the stack. */
export interface OpenState {
  readonly vehicle: VehicleState;
  readonly trustedClock: TrustedClockStore;
  readonly counters: JournaledMap<number>;
  readonly audit: AuditLog;
  readonly integrity: StateIntegrity;
  /** Present with the cloud enabled: lets audit rotation follow the outbox once the link runs. */
  readonly outbox: OutboxRetention | undefined;
}

/**
 * Opens identity and keyring, the trusted clock, the signature counters and the audit log, in
 * that order (docs/storage.md). The caller holds the instance lock and has provisioned the
 * vehicle (`provision` below says why it is not).
 */
export async function openState(
  config: Config,
  stateDir: string,
  log: Logger,
  cleanup: CleanupStack,
): Promise<OpenState> {
  // Pure verifiers of owner approvals carried by vehicle-signed grants (BLE enrollment, E1;
  // card enrollment at the reader, src/nfc/enroll-auth.ts).
  const [{ BLE_AUTH_VERIFIERS }, { NFC_AUTH_VERIFIERS }] = await Promise.all([
    import('../ble/protocol/enroll.js'),
    import('../nfc/enroll-auth.js'),
  ]);
  const vehicle = await openVehicleState(
    stateDir,
    log,
    new Map([...BLE_AUTH_VERIFIERS, ...NFC_AUTH_VERIFIERS]),
  );
  cleanup.defer('keyring', () => vehicle.close());

  const trustedClock = await openTrustedClock(stateDir, log.child({ module: 'clock' }));
  cleanup.defer('clock', () => trustedClock.close());
  const { clock } = trustedClock;

  const counters = await JournaledMap.open<number>(join(stateDir, STATE_FILES.counters), {
    ...COUNTER_MAP_OPTIONS,
    parseValue: (v) => {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
        throw new Error('counter must be a non-negative integer');
      return v;
    },
    logger: log.child({ module: 'counters' }),
  });
  cleanup.defer('counters', () => counters.close());

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
  cleanup.defer('audit', () => audit.close());

  // Damaged state files (docs/storage.md): counters lost in every copy deny their credentials.
  denyCounterSuspects(vehicle.keyring, counters.suspects());
  const integrity = new StateIntegrity(stateDir, [
    () => vehicle.findings(),
    () => trustedClock.findings,
    () => counters.findings,
    () => audit.findings,
  ]);
  return { vehicle, trustedClock, counters, audit, integrity, outbox };
}

/**
 * Makes sure the state directory holds a vehicle: a real one is provisioned by `vehicle-agent
 * init`; in sim mode with the demo on, `provisionDemo` makes one.
 */
export async function ensureProvisioned(
  stateDir: string,
  provisionDemo: (() => Promise<void>) | undefined,
): Promise<void> {
  if (await isProvisioned(stateDir)) return;
  if (!provisionDemo) {
    throw new AgentError(
      'not_provisioned',
      `${stateDir} holds no provisioned vehicle: run \`vehicle-agent init --owner-key OWNER.pub.pem\``,
    );
  }
  await provisionDemo();
}

export interface OutboxRetention {
  readonly retainFrom: () => number;
  readonly follow: (ackedSeq: () => number) => void;
}

/**
 * The first audit seq the cloud outbox still needs (AuditLogOptions.retainFrom): from its
 * persisted cursor until the link starts, then from the live one (`follow`). An unreadable
 * cursor keeps everything (up to audit.maxFiles) rather than stop the agent.
 */
async function outboxRetention(stateDir: string, log: Logger): Promise<OutboxRetention> {
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
