import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { basename, dirname } from 'node:path';
import { KEY_TO_VEHICLE_UUID, SERVICE_UUID, VEHICLE_TO_KEY_UUID } from '../ble/protocol/constants.js';
import type { BleOutcome } from '../ble/reader.js';
import type { Logger } from '../core/logger.js';
import type { SimApproachArgs } from '../host/control-api.js';
import { type PhoneEvent, type PhoneFault, PhoneKey } from './ble/phone.js';
import { PhonePeer } from './ble/phone-peer.js';
import { startBluezStandIn } from './bluez/index.js';
import type { BluezStandIn, DeviceFaults } from './bluez/types.js';
import { type PrivateDbus, startPrivateDbus } from './dbus-daemon.js';

/**
 * Sim mode for BLE: a private dbus-daemon with the BlueZ stand-in owning org.bluez on it, inside
 * the agent process, and the phones `vehicle-agent phone approach` plays. The agent's BLE link
 * talks to it through real node-ble over that real bus, exactly as it talks to bluetoothd.
 */
export interface BleSimEnvironment {
  readonly busAddress: string;
  /** PID of the private dbus-daemon. */
  readonly dbusPid: number;
  readonly standIn: BluezStandIn;
  /** Stops the stand-in, then ends the dbus-daemon by its PID. */
  stop(): Promise<void>;
}

export async function startBleSim(logger: Logger): Promise<BleSimEnvironment> {
  const bus: PrivateDbus = await startPrivateDbus();
  const guard = guardDaemon(bus.pid, daemonDir(bus.address));
  const stopBus = async (): Promise<void> => {
    guard.disarm();
    await bus.stop();
  };
  try {
    const standIn = await startBluezStandIn({ busAddress: bus.address, logger });
    return {
      busAddress: bus.address,
      dbusPid: bus.pid,
      standIn,
      stop: async () => {
        await standIn.stop();
        await stopBus();
      },
    };
  } catch (err) {
    await stopBus();
    throw err;
  }
}

/**
 * The private dbus-daemon must not outlive the agent, however the agent ends (a fatal error,
 * SIGKILL, a signal before its handlers are installed). A tiny shell reads a pipe from the agent
 * and ends the daemon when the pipe closes, which the kernel does when the agent dies. A normal
 * stop disarms it first (so it never signals a PID that may have been reused).
 */
function guardDaemon(daemonPid: number, dir: string | undefined): { disarm(): void } {
  let watchdog: ChildProcess | undefined;
  try {
    // $1 and $2 are passed as arguments, never spliced into the script.
    const script = 'read -r _; kill -TERM "$1" 2>/dev/null; [ -n "$2" ] && sleep 1 && rm -rf -- "$2"';
    watchdog = spawn('sh', ['-c', script, 'va-dbus-guard', String(Math.trunc(daemonPid)), dir ?? ''], {
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    watchdog.on('error', () => {});
    watchdog.unref();
    // The pipe must not keep the agent's event loop alive.
    (watchdog.stdin as (NodeJS.WritableStream & { unref?: () => void }) | null)?.unref?.();
  } catch {
    watchdog = undefined;
  }
  const onExit = (): void => {
    try {
      process.kill(daemonPid, 'SIGTERM');
    } catch {
      // already gone
    }
  };
  process.once('exit', onExit);
  return {
    disarm: () => {
      process.off('exit', onExit);
      if (watchdog?.pid !== undefined && watchdog.exitCode === null) watchdog.kill('SIGKILL');
    },
  };
}

/** The daemon's own temp directory, from its address (only ever one that startPrivateDbus made). */
function daemonDir(address: string): string | undefined {
  const path = /(?:^|[:,;])path=([^,;]+)/.exec(address)?.[1];
  const dir = path === undefined ? undefined : dirname(path);
  return dir !== undefined && basename(dir).startsWith('vehicle-agent-dbus-') && dir.startsWith(tmpdir())
    ? dir
    : undefined;
}

/** An approach as the control command asks for it (parsed by the control table). */
export type ApproachRequest = SimApproachArgs;

export interface ApproachResult {
  readonly address: string;
  readonly credentialId: string;
  /** How the reader's exchange ended, or `timeout` when it never got to one. */
  readonly outcome: BleOutcome['kind'] | 'timeout';
  readonly granted: boolean;
  readonly code?: string;
  readonly role?: string;
  readonly intent?: string;
  readonly answerMs?: number;
  /** The enrolled credential (enrollment approved). */
  readonly enrolled?: string;
  /** What the phone saw during this approach (hello refused, answered, result…). */
  readonly phone: readonly PhoneEvent[];
}

/** Anything that reports the BLE reader's exchange outcomes (BleReader.onOutcome). */
export interface OutcomeSource {
  onOutcome(listener: (outcome: BleOutcome) => void): () => void;
}

const MAX_PHONES = 64;

/**
 * The simulated phones: one PhoneKey per key (kept, so a `replay` fault has an earlier answer to
 * send), a fresh random device address per approach (phones rotate theirs).
 */
export class SimPhones {
  private readonly phones = new Map<string, PhoneKey>();

  constructor(
    private readonly standIn: BluezStandIn,
    private readonly reader: OutcomeSource,
    private readonly log: Logger,
  ) {}

  async approach(request: ApproachRequest): Promise<ApproachResult> {
    const phone = this.phoneFor(request);
    const eventsBefore = phone.events.length;
    const fault = request.fault === 'vanish' ? undefined : request.fault;
    phone.setBehaviour({
      intent: request.intent,
      explicitIntent: request.explicitIntent,
      answerDelayMs: request.answerDelayMs,
      fault,
      approveEnrollment: request.approveEnrollment,
      enrollmentFor: request.enrollmentFor,
    });
    const peer = new PhonePeer(phone, { log: this.log });
    const address = this.freshAddress();
    const faults: DeviceFaults = request.fault === 'vanish' ? { vanishAfterWrites: 1 } : {};
    const outcome = this.outcomeFor(address, request.timeoutMs);
    this.standIn.addDevice({
      address,
      name: 'Phone',
      rssi: request.rssi,
      serviceUuids: [SERVICE_UUID],
      writeUuid: VEHICLE_TO_KEY_UUID,
      notifyUuid: KEY_TO_VEHICLE_UUID,
      peer,
      faults,
    });
    let result: BleOutcome | undefined;
    try {
      result = await outcome.promise;
    } finally {
      outcome.cancel();
      peer.close();
      this.standIn.removeDevice(address);
    }
    const phoneEvents = phone.events.slice(Math.min(eventsBefore, phone.events.length));
    return summarise(address, phone.credentialId, result, phoneEvents);
  }

  private phoneFor(request: ApproachRequest): PhoneKey {
    const probe = new PhoneKey({ secretKey: request.secretKey, vehicles: [request.pin] });
    const known = this.phones.get(probe.credentialId);
    if (known !== undefined) {
      known.pin(request.pin);
      return known;
    }
    if (this.phones.size >= MAX_PHONES) {
      const oldest = this.phones.keys().next().value;
      if (oldest !== undefined) this.phones.delete(oldest);
    }
    this.phones.set(probe.credentialId, probe);
    return probe;
  }

  private freshAddress(): string {
    for (;;) {
      const bytes = randomBytes(6);
      bytes[0] = ((bytes[0] ?? 0) | 0xc0) & 0xff; // a static random address (top bits 11)
      const address = [...bytes].map((b) => b.toString(16).padStart(2, '0').toUpperCase()).join(':');
      if (this.standIn.device(address) === undefined) return address;
    }
  }

  /** The first outcome for `address` that is not a transient link failure, or undefined at the timeout. */
  private outcomeFor(
    address: string,
    timeoutMs: number,
  ): { promise: Promise<BleOutcome | undefined>; cancel: () => void } {
    let off: () => void = () => {};
    let timer: NodeJS.Timeout | undefined;
    const promise = new Promise<BleOutcome | undefined>((resolve) => {
      off = this.reader.onOutcome((o) => {
        // A failed connect is retried by the link on the next advertisement.
        if (o.address !== address || o.kind === 'failed') return;
        resolve(o);
      });
      timer = setTimeout(() => resolve(undefined), timeoutMs);
    });
    return {
      promise,
      cancel: () => {
        off();
        clearTimeout(timer);
      },
    };
  }
}

function summarise(
  address: string,
  credentialId: string,
  outcome: BleOutcome | undefined,
  phone: readonly PhoneEvent[],
): ApproachResult {
  const base = { address, credentialId, phone };
  if (outcome === undefined) return { ...base, outcome: 'timeout', granted: false, code: 'reader_timeout' };
  switch (outcome.kind) {
    case 'decision': {
      const { decision, presentation } = outcome;
      const answerMs =
        presentation.answerMs === undefined ? {} : { answerMs: Math.round(presentation.answerMs) };
      return decision.granted
        ? {
            ...base,
            outcome: 'decision',
            granted: true,
            role: decision.credential.role,
            intent: decision.intent,
            ...answerMs,
          }
        : { ...base, outcome: 'decision', granted: false, code: decision.code, ...answerMs };
    }
    case 'enrollment':
      return outcome.outcome.approved
        ? { ...base, outcome: 'enrollment', granted: true, enrolled: outcome.outcome.credentialId }
        : { ...base, outcome: 'enrollment', granted: false, code: outcome.outcome.code };
    case 'refused':
    case 'failed':
      return { ...base, outcome: outcome.kind, granted: false, code: outcome.code };
  }
}

export type { PhoneFault };
