import { type ChildProcess, fork } from 'node:child_process';
import { createHash, generateKeyPairSync } from 'node:crypto';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { Keyring, signGrant } from '../src/access/keyring.js';
import { Agent, type LockControl } from '../src/agent/agent.js';
import { builtInPhoneKeyService, PeripheralReader } from '../src/app/ble-peripheral.js';
import { createRelay } from '../src/app/relays.js';
import { EnrollmentDesk } from '../src/ble/enrollment.js';
import type { PhoneKeyServicePort } from '../src/ble/peripheral/service-port.js';
import { loadConfig } from '../src/config/load.js';
import { MonotonicFloorClock } from '../src/core/clock.js';
import { silentLogger } from '../src/core/logger.js';
import type { Credential } from '../src/core/types.js';
import { signP256 } from '../src/crypto/challenge.js';
import { b64url } from '../src/crypto/encoding.js';
import { credentialIdFor, generateKeyPair, keyCredentialId, publicJwkOf } from '../src/crypto/keys.js';
import { busSocket, type MessageBus } from '../src/sim/bluez/dbus.js';
import { startPrivateDbus } from '../src/sim/dbus-daemon.js';
import { STANDIN_V2 } from '../test/helpers/gpioset-standin.js';
import { linkModel, PHONE_LINK } from './ble-link-model.js';
import type { PHostReply, PHostRequest, PhoneKeyKind, TapReport } from './ble-p-host.js';
import { atDeployedNice } from './deployed-nice.js';
import { GpiosetRig, type LineEvent, msBetween } from './line-timing.js';
import { round, summarise } from './stats.js';

/**
 * Mode P (the vehicle as GATT peripheral, the phone as central: issue 14): a tap on the phone-key
 * page, from the phone's challenge read to the unlock relay's line energised, through the agent's
 * real path: the `ble-peripheral` reader (src/app/ble-peripheral.ts) exporting the GATT
 * application on a real private dbus-daemon, BlePeripheral (src/ble/peripheral/) turning BlueZ's
 * ReadValue / WriteValue into service calls, the mode P phone-key service
 * (src/ble/phone-key-service.ts), the agent's decision, the lock controller and the relay guard
 * with its GPIO lines held by a stand-in gpioset whose record says when the line changed. The
 * BlueZ stand-in and a reference phone run in a child process (bench/ble-p-host.ts), as
 * bluetoothd and the phone would: the phone connects, subscribes to the result, reads a
 * challenge, signs (a web key, or a passkey assertion with UV) and writes the answer.
 *
 * The stand-in adds no radio time; the real link's is modelled apart (bench/ble-link-model.ts).
 * Per tap:
 *   tap_to_relay     phone's challenge read → relay line energised (no radio time).
 *   agent_own        inside the agent: the answer's WriteValue arriving at its D-Bus socket
 *                    (before dbus-next parses it) → the lock controller told to unlock. Split in
 *                    agent_dbus_in (→ the service handed the bytes) and agent_decide (the rest).
 *   agent_challenge  the challenge read's turn in the agent: ReadValue in → its reply out.
 *   relay_step       lock controller told → line changed (controller, relay guard, gpioset).
 *   phone_compute    the reference phone decoding the challenge and signing (node:crypto).
 * Figures only; no assertions.
 */

const UNLOCK_LINE = 17;
const VEHICLE_ID = 'BENCH-BLE-P';

interface Sample {
  readonly totalMs: number;
  readonly ownMs: number;
  readonly dbusInMs: number;
  readonly decideMs: number;
  readonly challengeMs: number;
  readonly relayStepMs: number;
  readonly phoneMs: number;
  /** The rest: dbus-daemon both ways and the stand-in (bluetoothd's part on a Pi). */
  readonly restMs: number;
  readonly challengeBytes: number;
  readonly answerBytes: number;
}

const ns = (text: string): bigint => BigInt(text);

/** Records when the agent's peripheral D-Bus connection receives bytes and when it writes them. */
function tapBusTraffic(bus: MessageBus, events: LineEvent[]): void {
  const stream = busSocket(bus);
  if (stream === undefined) throw new Error('cannot find the peripheral D-Bus socket to time it');
  stream.prependListener('data', () => events.push({ at: process.hrtime.bigint(), dir: 'in' }));
  const write = stream.write;
  stream.write = function (this: Socket, ...args: Parameters<Socket['write']>) {
    events.push({ at: process.hrtime.bigint(), dir: 'out' });
    return Reflect.apply(write, this, args) as boolean;
  } as Socket['write'];
}

const firstAfter = (events: readonly LineEvent[], dir: 'in' | 'out', from: bigint): bigint | undefined =>
  events.find((e) => e.dir === dir && e.at >= from)?.at;

export async function benchBlePeripheral(
  options: { samples?: number; warmup?: number } = {},
): Promise<Record<string, number>> {
  const samples = options.samples ?? 200;
  const warmup = options.warmup ?? 20;
  const bus = await startPrivateDbus();
  const host: ChildProcess = fork(fileURLToPath(new URL('./ble-p-host.js', import.meta.url)), [], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const replies = new Set<(reply: PHostReply) => void>();
  host.on('message', (reply: PHostReply) => {
    for (const listener of [...replies]) listener(reply);
  });
  const nextReply = <T extends PHostReply['type']>(
    type: T,
    id?: number,
  ): Promise<Extract<PHostReply, { type: T }>> =>
    new Promise((resolve, reject) => {
      const listener = (reply: PHostReply): void => {
        if (reply.type === 'error') {
          replies.delete(listener);
          reject(new Error(`phone host: ${reply.message}`));
        } else if (reply.type === type && (id === undefined || (reply as TapReport).id === id)) {
          replies.delete(listener);
          resolve(reply as Extract<PHostReply, { type: T }>);
        }
      };
      replies.add(listener);
    });
  const request = (r: PHostRequest): void => {
    host.send(r);
  };

  const gpioset = new GpiosetRig(STANDIN_V2);
  const env = {
    ...gpioset.configEnv,
    VEHICLE_AGENT_LOCK__PULSE_MS: '20',
    VEHICLE_AGENT_LOCK__AUTO_RELOCK_MS: '0',
  };
  const { config } = loadConfig({ env });
  const { result: relay } = await atDeployedNice(() =>
    createRelay(config, silentLogger, { env: gpioset.env }),
  );
  let agent: Agent | undefined;
  let reader: PeripheralReader | undefined;
  let desk: EnrollmentDesk | undefined;
  try {
    // The keyring: a web key (a phone credential) and a synced passkey, both granted by the root.
    const vehicle = generateKeyPair('P-256');
    const root = generateKeyPair('P-256');
    const rootKey = publicJwkOf(root.publicKey);
    const keyring = new Keyring({
      vehicleId: VEHICLE_ID,
      rootKey,
      vehicleKey: publicJwkOf(vehicle.publicKey),
    });
    const webKey = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const webJwk = publicJwkOf(webKey.publicKey);
    const passkey = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const passkeyId = new Uint8Array(createHash('sha256').update('bench passkey').digest().subarray(0, 16));
    const origin = config.ble.phoneApp.origins[0];
    if (origin === undefined) throw new Error('ble.phoneApp.origins is empty: no origin for the passkey');
    const rpId = new URL(origin).hostname;
    const credentials: Credential[] = [
      { id: keyCredentialId('phone', webJwk), kind: 'phone', role: 'driver', publicKey: webJwk, options: {} },
      {
        id: credentialIdFor('passkey', passkeyId),
        kind: 'passkey',
        role: 'driver',
        publicKey: publicJwkOf(passkey.publicKey),
        keyHandle: b64url(passkeyId),
        rpId,
        options: {},
      },
    ];
    const signer = keyCredentialId('signer', rootKey);
    keyring.merge(credentials.map((c, i) => signGrant(c, VEHICLE_ID, root.privateKey, signer, i + 1)));
    const pkcs8 = (key: typeof webKey.privateKey) =>
      b64url(new Uint8Array(key.export({ format: 'der', type: 'pkcs8' })));

    const ready = nextReply('ready');
    request({
      type: 'start',
      busAddress: bus.address,
      credentials: {
        webKey: { pkcs8: pkcs8(webKey.privateKey), keyId: credentials[0]?.id ?? '' },
        passkey: { pkcs8: pkcs8(passkey.privateKey), credentialId: b64url(passkeyId), rpId, origin },
      },
    });
    await ready;

    // The lock controller told to unlock; the line's change comes from the stand-in's record.
    let toldAt = 0n;
    const controller = relay.lockController;
    const lock: LockControl = {
      state: () => controller.state(),
      unlock: (cause) => {
        toldAt = process.hrtime.bigint();
        return controller.unlock(cause);
      },
      lock: (cause) => controller.lock(cause),
      retract: (cause) => controller.retract(cause),
    };
    await relay.start();

    // The agent's own mode P service, with its write timed as BlePeripheral hands it over.
    let servedAt = 0n;
    const timedService = async (
      deps: Parameters<typeof builtInPhoneKeyService>[0],
    ): Promise<PhoneKeyServicePort> => {
      const service = await builtInPhoneKeyService(deps);
      const write = service.write.bind(service);
      return Object.assign(Object.create(service) as PhoneKeyServicePort, {
        write: (...args: Parameters<PhoneKeyServicePort['write']>) => {
          servedAt = process.hrtime.bigint();
          return write(...args);
        },
      });
    };
    const clock = new MonotonicFloorClock(0);
    const vehicleSpki = new Uint8Array(vehicle.publicKey.export({ format: 'der', type: 'spki' }));
    // Enrollment is not measured; the desk is what the reader needs to be built.
    const enrollmentDesk = new EnrollmentDesk({
      vehicleId: VEHICLE_ID,
      clock,
      keyring,
      signOp: () => {
        throw new Error('no enrollment in this bench');
      },
      addOps: async () => {
        throw new Error('no enrollment in this bench');
      },
      audit: () => {},
      log: silentLogger,
      windowMs: 60_000,
      maxWindowMs: 60_000,
    });
    desk = enrollmentDesk;
    const peripheralReader = new PeripheralReader({
      service: timedService,
      desk: enrollmentDesk,
      vehicleSpki,
      audit: () => {},
      config,
      log: silentLogger,
      busAddress: async () => bus.address,
    });
    reader = peripheralReader;
    const newAgent = new Agent({
      vehicleId: VEHICLE_ID,
      keyring,
      keyringStore: { persist: async () => {} },
      counters: { get: () => undefined, stage: async () => ({ durable: Promise.resolve() }) },
      clock,
      audit: { append: async () => undefined },
      lock,
      readers: [peripheralReader],
      policy: {
        rateLimit: { maxDenials: 1000, windowMs: 60_000, cooldownMs: 1000 },
        answerDeadlineMs: { phone: config.policy.bleAnswerDeadlineMs },
      },
      log: silentLogger,
      signAsVehicle: (message) => signP256(vehicle.privateKey, message),
    });
    agent = newAgent;
    await newAgent.start();
    const peripheral = await peripheralReader.whenUp();
    if (peripheral === undefined || !peripheral.registered)
      throw new Error(`BLE peripheral not registered: ${peripheralReader.health().detail}`);
    const peripheralBus: unknown = Reflect.get(peripheral, 'bus');
    if (peripheralBus === undefined) throw new Error('the peripheral holds no D-Bus connection');
    const busEvents: LineEvent[] = [];
    tapBusTraffic(peripheralBus as MessageBus, busEvents);

    let nextId = 0;
    const once = async (kind: PhoneKeyKind): Promise<Sample> => {
      const id = nextId++;
      toldAt = 0n;
      servedAt = 0n;
      busEvents.length = 0;
      const changesBefore = gpioset.changeCount(UNLOCK_LINE);
      const tapped = nextReply('tapped', id);
      request({ type: 'tap', id, kind, mtu: PHONE_LINK.mtu });
      const report = await tapped;
      if (report.outcome !== 'granted' || !report.signed || toldAt === 0n || servedAt === 0n)
        throw new Error(`bench ${kind} unlock was not granted: ${JSON.stringify(report)}`);
      const energisedAt = await gpioset.waitChange(UNLOCK_LINE, changesBefore, true);
      const readAt = ns(report.readAt);
      const writeAt = ns(report.writeAt);
      const readIn = firstAfter(busEvents, 'in', readAt);
      const readOut = readIn === undefined ? undefined : firstAfter(busEvents, 'out', readIn);
      const writeIn = firstAfter(busEvents, 'in', writeAt);
      if (readIn === undefined || readOut === undefined || writeIn === undefined || writeIn > toldAt)
        throw new Error(`bench ${kind}: the agent's D-Bus traffic does not show the read and the write`);
      const totalMs = msBetween(readAt, energisedAt);
      const ownMs = msBetween(writeIn, toldAt);
      const challengeMs = msBetween(readIn, readOut);
      const relayStepMs = msBetween(toldAt, energisedAt);
      // Let the 20 ms unlock pulse end, so the next grant energises the relay again.
      await gpioset.waitChange(UNLOCK_LINE, changesBefore + 1, false);
      await new Promise((resolve) => setTimeout(resolve, 10));
      return {
        totalMs,
        ownMs,
        dbusInMs: msBetween(writeIn, servedAt),
        decideMs: msBetween(servedAt, toldAt),
        challengeMs,
        relayStepMs,
        phoneMs: report.phoneMs,
        restMs: totalMs - ownMs - challengeMs - relayStepMs - report.phoneMs,
        challengeBytes: report.challengeBytes,
        answerBytes: report.answerBytes,
      };
    };
    const run = async (kind: PhoneKeyKind): Promise<Sample[]> => {
      for (let i = 0; i < warmup; i++) await once(kind);
      const out: Sample[] = [];
      for (let i = 0; i < samples; i++) out.push(await once(kind));
      return out;
    };
    const { result, nice } = await atDeployedNice(async () => ({
      webkey: await run('webkey'),
      passkey: await run('passkey'),
    }));

    const figures: Record<string, number> = { ble_p_samples: samples };
    for (const [kind, list] of Object.entries(result)) {
      const prefix = kind === 'webkey' ? 'ble_p' : 'ble_p_passkey';
      const pick = (key: keyof Sample) => summarise(list.map((s) => s[key]));
      const total = pick('totalMs');
      const model = linkModel({
        ...PHONE_LINK,
        challengeBytes: Math.max(...list.map((s) => s.challengeBytes)),
        answerBytes: Math.max(...list.map((s) => s.answerBytes)),
      });
      Object.assign(figures, {
        [`${prefix}_tap_to_relay_p50_ms`]: round(total.p50, 2),
        [`${prefix}_tap_to_relay_p99_ms`]: round(total.p99, 2),
        [`${prefix}_agent_own_p50_ms`]: round(pick('ownMs').p50, 2),
        [`${prefix}_agent_own_p99_ms`]: round(pick('ownMs').p99, 2),
        [`${prefix}_agent_dbus_in_p50_ms`]: round(pick('dbusInMs').p50, 2),
        [`${prefix}_agent_dbus_in_p99_ms`]: round(pick('dbusInMs').p99, 2),
        [`${prefix}_agent_decide_p50_ms`]: round(pick('decideMs').p50, 2),
        [`${prefix}_agent_decide_p99_ms`]: round(pick('decideMs').p99, 2),
        [`${prefix}_agent_challenge_p50_ms`]: round(pick('challengeMs').p50, 2),
        [`${prefix}_agent_challenge_p99_ms`]: round(pick('challengeMs').p99, 2),
        [`${prefix}_relay_step_p50_ms`]: round(pick('relayStepMs').p50, 2),
        [`${prefix}_relay_step_p99_ms`]: round(pick('relayStepMs').p99, 2),
        [`${prefix}_phone_compute_p50_ms`]: round(pick('phoneMs').p50, 2),
        [`${prefix}_bus_and_stand_in_p50_ms`]: round(pick('restMs').p50, 2),
        [`${prefix}_bus_and_stand_in_p99_ms`]: round(pick('restMs').p99, 2),
        [`${prefix}_answer_bytes`]: Math.max(...list.map((s) => s.answerBytes)),
        [`${prefix}_link_model_events`]: model.events,
        [`${prefix}_link_model_ms`]: model.ms,
        // The link model is a constant: it adds to every percentile alike.
        [`${prefix}_with_link_model_p50_ms`]: round(total.p50 + model.ms, 1),
        [`${prefix}_with_link_model_p99_ms`]: round(total.p99 + model.ms, 1),
      });
    }
    figures.ble_p_link_model_interval_ms = PHONE_LINK.intervalMs;
    figures.ble_p_link_model_mtu = PHONE_LINK.mtu;
    figures.ble_p_agent_nice = nice;
    return figures;
  } finally {
    await agent?.stop();
    if (agent === undefined) await reader?.stop();
    desk?.close();
    await relay.close();
    gpioset.close();
    if (host.connected) {
      const exited = new Promise((resolve) => host.once('exit', resolve));
      request({ type: 'stop' });
      const timer = setTimeout(() => host.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    await bus.stop();
  }
}

/** `node dist/bench/ble-peripheral.js [--json] [--samples=N]`: mode P alone (the ble suite runs it after the central mode). */
if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const samplesArg = process.argv.find((a) => a.startsWith('--samples='));
  const samples = samplesArg === undefined ? undefined : Number(samplesArg.slice('--samples='.length));
  benchBlePeripheral(samples === undefined ? {} : { samples }).then(
    (figures) => {
      if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify(figures, null, 2)}\n`);
      else
        for (const [k, v] of Object.entries(figures))
          process.stdout.write(`  ${k.padEnd(40)} ${String(v).padStart(10)}\n`);
    },
    (err: unknown) => {
      process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
