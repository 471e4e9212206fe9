import { join } from 'node:path';
import type { CredentialLookup, CredentialStatus } from '../access/credential-lookup.js';
import type { EnrollmentHost } from '../agent/reader.js';
import type { Config } from '../config/schema.js';
import type { Clock } from '../core/clock.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { bindHandler } from '../host/control-api.js';
import type { ControlHandler } from '../host/control-server.js';
import { DeferredDriver } from '../nfc/deferred-driver.js';
import { CardEnrollmentDesk, type CounterAccess } from '../nfc/enrollment.js';
import { type ApprovalDesk, OwnerFidoApproval } from '../nfc/owner-approval.js';
import { formatFirmware } from '../nfc/pn532/commands.js';
import type { LinkFactory } from '../nfc/pn532/link.js';
import { NfcReader, type TapOutcome } from '../nfc/reader.js';
import { readSiteKey, SITE_KEY_FILE, SiteKeySource } from '../nfc/site-key.js';
import type { NfcSim } from '../sim/nfc-sim.js';
import { nfcDemoHints } from '../sim/nfc-sim-options.js';

/** The answer of a desk's status or cancel when no enrollment is open. */
const NO_ENROLLMENT = { state: 'none' } as const;

/**
 * Builds the NFC reader for the composition root (src/app/start.ts), which imports this module only
 * when nfc.enabled, so serialport loads only then: the PN532 driver on the configured UART, or in
 * sim mode on the PN532 emulator behind a socat pty pair (in-memory line without socat); the
 * reader; card enrollment at the vehicle; and their control commands.
 */

export interface NfcSetupDeps extends EnrollmentHost {
  readonly config: Config;
  readonly stateDir: string;
  readonly vehicleId: string;
  readonly keyring: CredentialLookup & {
    list(): readonly CredentialStatus[];
    digest(): string;
  };
  readonly counters: CounterAccess;
  readonly clock: Clock;
  readonly log: Logger;
  /** The phone enrollment desk (BLE), when it runs: an owner FIDO key may approve its requests. */
  readonly phoneEnrollment?: ApprovalDesk;
}

export interface NfcSetup {
  readonly reader: NfcReader;
  readonly mode: 'sim' | 'pn532';
  /**
   * Control commands: nfc.status, enroll.card.*, enroll.approval.* (with a phone enrollment desk),
   * and in sim mode sim.card.* and sim.nfc.*.
   */
  readonly handlers: ReadonlyMap<string, ControlHandler>;
  /** "try:" lines for the demo (sim mode). */
  readonly hints: readonly string[];
  /** Ends what the setup started beside the reader (enrollment, emulator, socat). After reader.stop(). */
  stop(): Promise<void>;
}

/** Deadline of one APDU during enrollment: a FIDO REGISTER can take a second on a real key. */
const ENROLL_APDU_TIMEOUT_MS = 5000;
/** How long a sim command waits for the simulator to come up. */
const SIM_START_TIMEOUT_MS = 15_000;

function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new AgentError('reader_timeout', message)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function nfcMode(config: Config): 'sim' | 'pn532' {
  const { driver } = config.nfc;
  if (driver === 'auto') return config.relay.driver === 'sim' ? 'sim' : 'pn532';
  return driver;
}

export function siteKeyPath(config: Config, stateDir: string): string {
  return config.nfc.siteKeyFile ?? join(stateDir, SITE_KEY_FILE);
}

export async function setupNfc(deps: NfcSetupDeps): Promise<NfcSetup> {
  const { config, log, keyring } = deps;
  const nfc = config.nfc;
  const mode = nfcMode(config);
  const handlers = new Map<string, ControlHandler>();

  const answerTimeoutMs = config.policy.nfcAnswerDeadlineMs + nfc.lateGraceMs;
  // serialport, the emulator and socat come up in the background: `ready` does not wait for them
  // (the reader's health says starting; sim commands wait for them).
  const driver = new DeferredDriver();
  let sim: NfcSim | undefined;
  const bringUp = (async (): Promise<NfcSim | undefined> => {
    const [{ Pn532Driver }, { serialLinkFactory }] = await Promise.all([
      import('../nfc/pn532/driver.js'),
      import('../nfc/pn532/link.js'),
    ]);
    let openLink: LinkFactory;
    if (mode === 'sim') {
      const [{ NfcSim }, { ensureSimCards }] = await Promise.all([
        import('../sim/nfc-sim.js'),
        import('../sim/nfc-demo.js'),
      ]);
      sim = await NfcSim.start({
        stateDir: deps.stateDir,
        link: nfc.simLink,
        log: log.child({ module: 'nfc-sim' }),
      });
      await ensureSimCards(sim.cards);
      openLink = sim.openLink;
    } else {
      openLink = serialLinkFactory(nfc.path, nfc.baudRate);
    }
    driver.attach(
      new Pn532Driver({
        openLink,
        log: log.child({ module: 'pn532' }),
        timing: {
          commandTimeoutMs: nfc.commandTimeoutMs,
          livenessIntervalMs: nfc.livenessIntervalMs,
          maxBackoffMs: nfc.maxBackoffMs,
          apduTimeoutMs: Math.max(answerTimeoutMs, ENROLL_APDU_TIMEOUT_MS),
        },
      }),
    );
    return sim;
  })();
  bringUp.catch((err: unknown) => {
    const e = toAgentError(err, 'reader_error');
    driver.failed(`cannot start: ${e.message}`);
    log.error({ module: 'nfc', code: e.code, err: e.message }, 'NFC reader could not start');
  });
  /** The simulator, once up (sim commands wait for it, bounded). */
  const simulator = async (): Promise<NfcSim> => {
    const up = await withTimeout(bringUp, SIM_START_TIMEOUT_MS, 'the NFC simulator did not start in time');
    if (!up) throw new AgentError('unsupported', 'the NFC reader is not in sim mode');
    return up;
  };

  const siteKeys = new SiteKeySource(siteKeyPath(config, deps.stateDir));
  let existingSiteKey: Uint8Array | undefined;
  const tapSiteKey = async (): Promise<Uint8Array | undefined> => {
    existingSiteKey ??= await readSiteKey(siteKeys.file);
    return existingSiteKey;
  };

  // FIDO credentials for key-handle probing, recomputed only when the keyring changes.
  let fidoCache: { digest: string; list: readonly CredentialStatus[] } = { digest: '', list: [] };
  const fidoCredentials = (): readonly CredentialStatus[] => {
    const digest = keyring.digest();
    if (digest !== fidoCache.digest) {
      const list = keyring
        .list()
        .filter((s) => s.credential.kind === 'fido' && s.credential.keyHandle !== undefined);
      fidoCache = { digest, list };
    }
    return fidoCache.list;
  };

  const desk = new CardEnrollmentDesk({
    vehicleId: deps.vehicleId,
    clock: deps.clock,
    keyring,
    fidoCredentials,
    counters: deps.counters,
    signOp: deps.signOp,
    addOps: (jws) => deps.agent().addKeyringOps(jws, 'enroll.card'),
    audit: (event) => deps.agent().audit(event),
    log: log.child({ module: 'nfc-enrollment' }),
    siteKey: () => siteKeys.get(),
    authoriseWindowMs: nfc.enrollAuthoriseMs,
    enrollWindowMs: nfc.enrollWindowMs,
    apduTimeoutMs: ENROLL_APDU_TIMEOUT_MS,
  });

  // Arming the reader to approve a pending phone enrollment with an owner FIDO key.
  const phoneEnrollment = deps.phoneEnrollment;
  const approval =
    phoneEnrollment === undefined
      ? undefined
      : new OwnerFidoApproval({
          vehicleId: deps.vehicleId,
          clock: deps.clock,
          keyring,
          counters: deps.counters,
          desk: phoneEnrollment,
          audit: (event) => deps.agent().audit(event),
          log: log.child({ module: 'nfc-approval' }),
          windowMs: nfc.enrollWindowMs,
          readerBusy: () =>
            desk.phase() === 'idle'
              ? undefined
              : 'a card enrollment holds the reader; finish or cancel it first (enroll card cancel)',
        });

  const reader = new NfcReader({
    id: 'nfc0',
    driver,
    fidoCredentials,
    siteKey: tapSiteKey,
    maxProbes: nfc.maxKeyHandleProbes,
    answerTimeoutMs,
    apduTimeoutMs: Math.min(nfc.commandTimeoutMs * 2, answerTimeoutMs),
    enrollment: desk,
    ...(approval === undefined ? {} : { approval }),
  });

  handlers.set(
    ...bindHandler('nfc.status', () => {
      const fw = driver.firmware();
      return {
        mode,
        ...(sim ? { transport: sim.transport } : mode === 'pn532' ? { path: nfc.path } : {}),
        health: reader.health(),
        ...(fw ? { firmware: formatFirmware(fw) } : {}),
        stats: reader.stats(),
        enrollment: desk.status() ?? { state: 'none' },
        siteKeyFile: siteKeys.file,
      };
    }),
  );
  handlers.set(...bindHandler('enroll.card.request', (args) => desk.request(args)));
  handlers.set(...bindHandler('enroll.card.authorise', (args) => desk.authoriseWithKey(args.jws)));
  handlers.set(...bindHandler('enroll.card.status', () => desk.status() ?? NO_ENROLLMENT));
  handlers.set(...bindHandler('enroll.card.cancel', () => desk.cancel() ?? NO_ENROLLMENT));
  if (approval !== undefined) {
    handlers.set(...bindHandler('enroll.approval.arm', () => approval.arm()));
    handlers.set(...bindHandler('enroll.approval.status', () => approval.status() ?? NO_ENROLLMENT));
    handlers.set(...bindHandler('enroll.approval.cancel', () => approval.cancel() ?? NO_ENROLLMENT));
  }

  if (mode === 'sim') {
    handlers.set(...bindHandler('sim.card.list', async () => (await simulator()).cards.list()));
    handlers.set(
      ...bindHandler('sim.card.add', async ({ kind, label, model }) => {
        const env = await simulator();
        const { newSimCard } = await import('../sim/card-store.js');
        const card = newSimCard(kind, label, model);
        env.cards.add(card);
        await env.cards.save();
        return env.cards.list().find((c) => c.label === label);
      }),
    );
    handlers.set(
      ...bindHandler('sim.card.tap', async (args) => {
        const env = await simulator();
        await withTimeout(driver.started(), SIM_START_TIMEOUT_MS, 'the PN532 driver did not start in time');
        return tapReply(await env.tap(reader, args), deps.lockState);
      }),
    );
    handlers.set(
      ...bindHandler('sim.nfc.fault', async (args) => {
        const env = await simulator();
        if (args.kind === 'wedge') {
          const { recoverOn } = args;
          env.emulator.injectFault({ kind: 'wedge', recoverOn });
          return { wedged: env.emulator.isWedged, recoverOn };
        }
        if (args.kind === 'unwedge') {
          env.emulator.unwedge();
          return { wedged: env.emulator.isWedged };
        }
        env.emulator.injectFault({ kind: args.kind });
        return { injected: args.kind };
      }),
    );
  }

  return {
    reader,
    mode,
    handlers,
    hints: mode === 'sim' ? nfcDemoHints() : [],
    stop: async () => {
      desk.close();
      approval?.close();
      const up = await bringUp.catch(() => undefined);
      await up?.stop();
    },
  };
}

/** The reply to a simulated tap: a decision like `sim present`, or an enrollment step. */
export function tapReply(outcome: TapOutcome, lockState: () => string): Record<string, unknown> {
  if (outcome.type === 'decision') {
    const d = outcome.decision;
    return d.granted
      ? {
          granted: true,
          intent: d.intent,
          credentialId: d.credential.id,
          role: d.credential.role,
          lock: lockState(),
          ...(outcome.proof.answerMs === undefined
            ? {}
            : { answerMs: Math.round(outcome.proof.answerMs * 10) / 10 }),
        }
      : { granted: false, code: d.code, ...(d.credential ? { credentialId: d.credential.id } : {}) };
  }
  if (outcome.type === 'approval') {
    const view = outcome.view;
    return {
      approval: 'owner-fido',
      ok: outcome.ok,
      ...(outcome.code === undefined ? {} : { code: outcome.code }),
      ...(outcome.message === undefined ? {} : { message: outcome.message }),
      ...(view
        ? {
            state: view.state,
            credentialId: view.credentialId,
            ...(view.approvedBy === undefined ? {} : { approvedBy: view.approvedBy }),
          }
        : {}),
    };
  }
  return {
    enrollment: outcome.step,
    ok: outcome.ok,
    ...(outcome.code === undefined ? {} : { code: outcome.code }),
    ...(outcome.message === undefined ? {} : { message: outcome.message }),
    ...(outcome.view
      ? {
          state: outcome.view.state,
          ...(outcome.view.credentialId === undefined ? {} : { credentialId: outcome.view.credentialId }),
          ...(outcome.view.authorisedBy === undefined ? {} : { authorisedBy: outcome.view.authorisedBy }),
        }
      : {}),
  };
}
