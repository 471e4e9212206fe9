import type { CredentialReader, ReaderContext } from '../agent/reader.js';
import { dbusErrorName } from '../ble/bounded-calls.js';
import type { EnrollmentDesk } from '../ble/enrollment.js';
import { ANSWER_CHAR_UUID, CHALLENGE_CHAR_UUID, RESULT_CHAR_UUID } from '../ble/peripheral/gatt-layout.js';
import type { BlePeripheral, PeripheralStats } from '../ble/peripheral/peripheral.js';
import type { PhoneKeyServicePort } from '../ble/peripheral/service-port.js';
import type { Config } from '../config/schema.js';
import { isCode } from '../core/codes.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Health } from '../core/types.js';
import { bindHandler } from '../host/control-api.js';
import type { ControlHandler } from '../host/control-server.js';
import type { BluezStandIn } from '../sim/bluez/types.js';

/**
 * The vehicle as a BLE peripheral for the composition root (src/app/ble.ts): a credential reader
 * `ble-peripheral` that exports the phone-key GATT application and advertisement through BlueZ
 * (src/ble/peripheral), serving a PhoneKeyServicePort that runs the protocol; and in sim mode the
 * `sim.central.*` commands, which play a phone connecting to it through the BlueZ stand-in.
 */

/** What a phone-key service is built from once the agent starts its readers. */
export interface PhoneKeyServiceDeps {
  /** The agent's decision path (present), vehicle key, keyring and clock. */
  readonly context: ReaderContext;
  /** Enrollment requests from the page wait here for an owner's approval. */
  readonly desk: EnrollmentDesk;
  readonly config: Config;
  readonly log: Logger;
  /** The vehicle key's SubjectPublicKeyInfo DER, sent beside a signed result for the page to pin. */
  readonly vehicleSpki: Uint8Array;
  /** The agent's audit, for what does not go through present() (identify). */
  readonly audit: (event: { readonly type: string; readonly [key: string]: unknown }) => void;
  /** The status page's URL once it listens (its port when statusPage.port is 0). */
  readonly statusPageUrl?: () => string | undefined;
}

export type PhoneKeyServiceFactory = (
  deps: PhoneKeyServiceDeps,
) => PhoneKeyServicePort | Promise<PhoneKeyServicePort>;

/**
 * The phone-key service this build serves: mode P of the protocol (src/ble/phone-key-service.ts)
 * on the agent's decision path. Passkeys' origins: ble.phoneApp.origins and the status page's own
 * (127.0.0.1 and localhost: WebAuthn takes no IP address as the relying party).
 */
export const builtInPhoneKeyService: PhoneKeyServiceFactory = async (deps) => {
  const { createPhoneKeyService, phoneAppOrigins } = await import('../ble/phone-key-service.js');
  const { ble, policy, statusPage } = deps.config;
  // With statusPage.port 0 the page's own origin is known only once it listens.
  const statusPagePort = (): number | undefined => {
    const url = deps.statusPageUrl?.();
    return url === undefined ? statusPage.port : Number(new URL(url).port);
  };
  return createPhoneKeyService({
    context: deps.context,
    vehicleSpki: deps.vehicleSpki,
    answerWindowMs: policy.bleAnswerDeadlineMs,
    allowedOrigins: () =>
      phoneAppOrigins(ble.phoneApp.origins, statusPage.enabled ? statusPagePort() : undefined),
    enrollment: deps.desk,
    audit: deps.audit,
  });
};

export interface PeripheralReaderOptions {
  readonly service: PhoneKeyServiceFactory;
  readonly desk: EnrollmentDesk;
  readonly vehicleSpki: Uint8Array;
  readonly audit: PhoneKeyServiceDeps['audit'];
  readonly statusPageUrl?: PhoneKeyServiceDeps['statusPageUrl'];
  readonly config: Config;
  readonly log: Logger;
  /** The private bus in sim mode (undefined: the system bus). Rejects when sim mode cannot start. */
  readonly busAddress: () => Promise<string | undefined>;
}

/**
 * start() returns at once and brings the peripheral up in the background, as the central reader
 * does: the agent's `ready` does not wait for D-Bus, and a failure leaves this reader down with
 * the reason while the rest of the agent works.
 */
export class PeripheralReader implements CredentialReader {
  readonly id = 'ble-peripheral';
  private state: Health = { state: 'down', detail: 'not started', since: Date.now() };
  private peripheral: BlePeripheral | undefined;
  private bringingUp: Promise<BlePeripheral | undefined> | undefined;
  private stopped = false;

  constructor(private readonly options: PeripheralReaderOptions) {}

  async start(context: ReaderContext): Promise<void> {
    if (this.bringingUp !== undefined) return;
    const { config, log } = this.options;
    this.state = { state: 'down', detail: 'starting', since: Date.now() };
    this.bringingUp = (async () => {
      try {
        const { desk, vehicleSpki, audit, statusPageUrl } = this.options;
        const busAddress = await this.options.busAddress();
        const service = await this.options.service({
          context,
          desk,
          config,
          log,
          vehicleSpki,
          audit,
          ...(statusPageUrl === undefined ? {} : { statusPageUrl }),
        });
        const { BlePeripheral } = await import('../ble/peripheral/peripheral.js');
        const peripheral = new BlePeripheral({
          service,
          logger: log,
          ...(busAddress === undefined ? {} : { busAddress }),
          ...(config.ble.adapter === undefined ? {} : { adapter: config.ble.adapter }),
          advertisedName: config.ble.peripheral.advertisedName ?? '',
        });
        if (this.stopped) return undefined;
        await peripheral.start();
        this.peripheral = peripheral;
        if (this.stopped) await peripheral.stop();
        return peripheral;
      } catch (err) {
        const e = toAgentError(err, 'reader_error');
        this.state = { state: 'down', detail: `${e.code}: ${e.message}`, since: Date.now() };
        log.error({ module: 'ble-peripheral', code: e.code, err: e.message }, 'BLE peripheral not started');
        return undefined;
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await (await this.bringingUp)?.stop();
    this.state = { state: 'down', detail: 'stopped', since: Date.now() };
  }

  health(): Health {
    return this.stopped ? this.state : (this.peripheral?.health() ?? this.state);
  }

  stats(): PeripheralStats | undefined {
    return this.peripheral?.stats();
  }

  /** Waits for the bring-up; undefined when it failed or never started. */
  async whenUp(): Promise<BlePeripheral | undefined> {
    return (await this.bringingUp) ?? this.peripheral;
  }
}

const UUIDS = {
  challenge: CHALLENGE_CHAR_UUID,
  answer: ANSWER_CHAR_UUID,
  result: RESULT_CHAR_UUID,
} as const;

/**
 * `sim.central.*`: a simulated phone connects to the vehicle's GATT application through the
 * stand-in, which calls the application exactly as bluetoothd would. The vehicle's refusals come
 * back as coded errors (its ATT errors carry the agent's code).
 */
export function simCentralHandlers(
  standIn: () => Promise<BluezStandIn>,
  peripheral: PeripheralReader,
): Map<string, ControlHandler> {
  const handlers = new Map<string, ControlHandler>();
  const ready = async (): Promise<BluezStandIn> => {
    const up = await peripheral.whenUp();
    if (up === undefined || !up.registered) {
      throw new AgentError(
        'reader_error',
        `the BLE peripheral is not registered: ${peripheral.health().detail ?? 'down'}`,
      );
    }
    return standIn();
  };
  const central = async (device: string) => {
    const found = (await ready()).central(device);
    if (found === undefined) throw new AgentError('not_found', `no simulated central ${device} is connected`);
    return found;
  };
  handlers.set(
    ...bindHandler('sim.central.connect', async () => {
      const connected = (await ready()).connectCentral();
      return { device: connected.device };
    }),
  );
  handlers.set(
    ...bindHandler('sim.central.read', async ({ device, characteristic }) => {
      try {
        const bytes = await (await central(device)).read(UUIDS[characteristic]);
        return { hex: Buffer.from(bytes).toString('hex') };
      } catch (err) {
        throw attError(err);
      }
    }),
  );
  handlers.set(
    ...bindHandler('sim.central.write', async ({ device, bytes }) => {
      try {
        await (await central(device)).write(UUIDS.answer, bytes);
        return {};
      } catch (err) {
        throw attError(err);
      }
    }),
  );
  handlers.set(
    ...bindHandler('sim.central.disconnect', async ({ device }) => {
      (await central(device)).disconnect();
      return {};
    }),
  );
  return handlers;
}

/** A D-Bus error from the GATT exchange as a coded error (the agent's code when it gave one). */
function attError(err: unknown): AgentError {
  if (err instanceof AgentError) return err;
  const name = dbusErrorName(err) ?? 'error';
  const text = err instanceof Error ? err.message : String(err);
  if (isCode(text)) return new AgentError(text, `the vehicle answered ${name} (${text})`, { att: name });
  if (name === 'org.bluez.Error.InvalidValueLength')
    return new AgentError('malformed', `the vehicle answered ${name}`, { att: name });
  if (name === 'org.bluez.Error.InProgress')
    return new AgentError('busy', `the vehicle answered ${name}`, { att: name });
  return new AgentError('reader_error', `${name}: ${text}`, { att: name });
}
