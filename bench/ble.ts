import { type ChildProcess, fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { Keyring, signGrant } from '../src/access/keyring.js';
import { Agent, type LockControl } from '../src/agent/agent.js';
import { createRelay } from '../src/app/relays.js';
import { BleLink } from '../src/ble/link.js';
import { KEY_TO_VEHICLE_UUID, SERVICE_UUID, VEHICLE_TO_KEY_UUID } from '../src/ble/protocol/constants.js';
import { type BleOutcome, BleReader } from '../src/ble/reader.js';
import { loadConfig } from '../src/config/load.js';
import { MonotonicFloorClock } from '../src/core/clock.js';
import { silentLogger } from '../src/core/logger.js';
import type { Credential } from '../src/core/types.js';
import { signP256 } from '../src/crypto/challenge.js';
import { b64url, fromB64url } from '../src/crypto/encoding.js';
import { generateKeyPair, keyCredentialId, publicJwkOf } from '../src/crypto/keys.js';
import { busSocket, type MessageBus } from '../src/sim/bluez/dbus.js';
import type { LinkDelays } from '../src/sim/bluez/types.js';
import { startPrivateDbus } from '../src/sim/dbus-daemon.js';
import { STANDIN_V2 } from '../test/helpers/gpioset-standin.js';
import type { ApproachReport, HostReply, HostRequest } from './ble-peer-host.js';
import { atDeployedNice } from './deployed-nice.js';
import { GpiosetRig, type LineEvent, msBetween, turnTime } from './line-timing.js';
import { round, summarise } from './stats.js';

/**
 * BLE unlock latency, from the advertisement being seen (the stand-in exports the device) to the
 * unlock relay's line energised, over real node-ble and a real private dbus-daemon. The agent side
 * (link, reader, agent loop, lock controller) runs here, its relays in the relay guard process
 * with GPIO lines held by a stand-in gpioset (2.x, interactive) whose record says when the line
 * changed: the clock stops there, seen from outside the agent. The BlueZ stand-in and the phone
 * run in a child process, as bluetoothd and the phone would. Per unlock it also counts the
 * D-Bus method calls to org.bluez (the stand-in's per-device and adapter counts), and computes the
 * agent overhead: total minus the stand-in's modelled radio delays on the critical path minus the
 * phone's own compute time (decoding and signing with noble). That overhead holds:
 *   agent_own          the agent's own work, timed at its D-Bus socket: from bytes arriving
 *                      (before dbus-next parses them) to its next bytes leaving (after marshalling),
 *                      and from the answer's notification to the lock controller being told. The
 *                      agent overhead proper.
 *   relay_step         from the lock controller being told to the line changing: the controller,
 *                      the command to the relay guard, the guard, the `set` line to gpioset.
 *   bus_and_stand_in   the rest: dbus-daemon routing both ways, and the stand-in's own work
 *                      (dbus-next in JavaScript where bluetoothd is C) and its timers' lateness.
 * Figures only; no assertions.
 */

/** The unlock line, as the bench configures the GPIO relays. */
const UNLOCK_LINE = 17;
/** Radio delays per call, roughly a fast BLE link (7.5–15 ms connection interval). */
const MODELLED: LinkDelays = { connectMs: 20, startNotifyMs: 8, writeMs: 8, notifyMs: 8, disconnectMs: 8 };
const ZERO: LinkDelays = { connectMs: 0, startNotifyMs: 0, writeMs: 0, notifyMs: 0, disconnectMs: 0 };

interface Sample {
  readonly totalMs: number;
  /** Nominal modelled radio time on the path to the relay. */
  readonly modelledMs: number;
  /** The time the stand-in actually spent in those delays (its timers fire late by up to ~1 ms). */
  readonly waitedMs: number;
  /** Overhead with the nominal delays subtracted (charges the simulator's timer lateness to the agent). */
  readonly overheadNominalMs: number;
  readonly phoneMs: number;
  readonly overheadMs: number;
  /** The agent's own work on the path (see turnTime). */
  readonly ownMs: number;
  /** From the lock controller told to the line changing (seen from outside). */
  readonly relayStepMs: number;
  readonly bluezCalls: number;
  /** The answer time the reader measured against its deadline: hello's last chunk handed to the link → answer held. */
  readonly answerMs: number;
}

const ns = (text: string): bigint => BigInt(text);

/**
 * Records when the agent's D-Bus connection receives bytes (before dbus-next parses them) and
 * when the agent hands bytes to it (after marshalling): between the two is the agent's own work.
 * Reaches into BleLink's connection and dbus-next's stream, which only a benchmark may do.
 */
function tapBusTraffic(link: BleLink, events: LineEvent[]): void {
  // The link's discovery part holds the bus connection (src/ble/discovery.ts).
  const discovery: unknown = Reflect.get(link, 'discovery');
  const conn: unknown = discovery === undefined ? undefined : Reflect.get(discovery as object, 'conn');
  const dbus: unknown = conn === undefined ? undefined : Reflect.get(conn as object, 'dbus');
  const stream = dbus === undefined ? undefined : busSocket(dbus as MessageBus);
  if (stream === undefined) throw new Error('cannot find the agent D-Bus socket to time it');
  stream.prependListener('data', () => events.push({ at: process.hrtime.bigint(), dir: 'in' }));
  const write = stream.write;
  stream.write = function (this: Socket, ...args: Parameters<Socket['write']>) {
    events.push({ at: process.hrtime.bigint(), dir: 'out' });
    return Reflect.apply(write, this, args) as boolean;
  } as Socket['write'];
}

export async function benchBle(
  options: { samples?: number; warmup?: number } = {},
): Promise<Record<string, number>> {
  const samples = options.samples ?? 200;
  const warmup = options.warmup ?? 20;
  const bus = await startPrivateDbus();
  const host: ChildProcess = fork(fileURLToPath(new URL('./ble-peer-host.js', import.meta.url)), [], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const replies: ((reply: HostReply) => void)[] = [];
  host.on('message', (reply: HostReply) => {
    for (const listener of [...replies]) listener(reply);
  });
  const nextReply = <T extends HostReply['type']>(
    type: T,
    id?: number,
  ): Promise<Extract<HostReply, { type: T }>> =>
    new Promise((resolve, reject) => {
      const listener = (reply: HostReply): void => {
        if (reply.type === 'error') {
          replies.splice(replies.indexOf(listener), 1);
          reject(new Error(`peer host: ${reply.message}`));
        } else if (reply.type === type && (id === undefined || (reply as ApproachReport).id === id)) {
          replies.splice(replies.indexOf(listener), 1);
          resolve(reply as Extract<HostReply, { type: T }>);
        }
      };
      replies.push(listener);
    });
  const request = (r: HostRequest): void => {
    host.send(r);
  };

  const gpioset = new GpiosetRig(STANDIN_V2);
  const env = {
    ...gpioset.configEnv,
    VEHICLE_AGENT_LOCK__PULSE_MS: '20',
    VEHICLE_AGENT_LOCK__AUTO_RELOCK_MS: '0',
  };
  const { config } = loadConfig({ env });
  // Started at the agent's deployed niceness, which the relay guard inherits, as under systemd.
  const { result: relay } = await atDeployedNice(() =>
    createRelay(config, silentLogger, { env: gpioset.env }),
  );
  let reader: BleReader | undefined;
  let agent: Agent | undefined;
  try {
    const ready = nextReply('ready');
    request({ type: 'start', busAddress: bus.address });
    await ready;

    const vehicleId = 'BENCH-BLE';
    const vehicle = generateKeyPair('P-256');
    const root = generateKeyPair('P-256');
    const rootKey = publicJwkOf(root.publicKey);
    const keyring = new Keyring({ vehicleId, rootKey, vehicleKey: publicJwkOf(vehicle.publicKey) });
    const phonePair = generateKeyPair('P-256');
    const phoneJwk = publicJwkOf(phonePair.publicKey);
    const credential: Credential = {
      id: keyCredentialId('phone', phoneJwk),
      kind: 'phone',
      role: 'driver',
      publicKey: phoneJwk,
      options: {},
    };
    keyring.merge([signGrant(credential, vehicleId, root.privateKey, keyCredentialId('signer', rootKey), 1)]);
    const { d } = phonePair.privateKey.export({ format: 'jwk' });
    const secretKey = b64url(fromB64url(String(d)));

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

    const link = new BleLink({
      serviceUuid: SERVICE_UUID,
      writeUuid: VEHICLE_TO_KEY_UUID,
      notifyUuid: KEY_TO_VEHICLE_UUID,
      logger: silentLogger,
      busAddress: bus.address,
      sessionSpacingMs: 0,
      // The taps here come faster than the default connect budget (8 a second, burst 4): its
      // wait between the advertisement and Connect was timed as the agent's own work.
      maxConnectsPerSecond: 1000,
    });
    const bleReader = new BleReader({
      link,
      answerWindowMs: 1500,
      grantCooldownMs: 0,
      denialCooldownMs: 0,
    });
    reader = bleReader;
    const newAgent = new Agent({
      vehicleId,
      keyring,
      keyringStore: { persist: async () => {} },
      counters: { get: () => undefined, stage: async () => ({ durable: Promise.resolve() }) },
      clock: new MonotonicFloorClock(0),
      audit: { append: async () => undefined },
      lock,
      readers: [bleReader],
      policy: {
        rateLimit: { maxDenials: 1000, windowMs: 60_000, cooldownMs: 1000 },
        answerDeadlineMs: { phone: 1500 },
      },
      log: silentLogger,
      signAsVehicle: (message) => signP256(vehicle.privateKey, message),
    });
    agent = newAgent;
    await newAgent.start();
    if (bleReader.health().state !== 'ok')
      throw new Error(`BLE link not ready: ${bleReader.health().detail}`);
    const busEvents: LineEvent[] = [];
    tapBusTraffic(link, busEvents);

    let nextId = 0;
    const once = async (delays: LinkDelays): Promise<Sample> => {
      const id = nextId++;
      const bytes = randomBytes(6);
      bytes[0] = ((bytes[0] ?? 0) | 0xc0) & 0xff;
      const address = [...bytes].map((b) => b.toString(16).padStart(2, '0').toUpperCase()).join(':');
      toldAt = 0n;
      const changesBefore = gpioset.changeCount(UNLOCK_LINE);
      const outcome = new Promise<BleOutcome>((resolve) => {
        const off = bleReader.onOutcome((o) => {
          if (o.address !== address || o.kind === 'failed') return;
          off();
          resolve(o);
        });
      });
      const report = nextReply('done', id);
      request({
        type: 'approach',
        id,
        address,
        secretKey,
        pin: { vehicleId, publicKey: publicJwkOf(vehicle.publicKey) },
        delays,
      });
      const [o, r] = await Promise.all([outcome, report]);
      if (o.kind !== 'decision' || !o.decision.granted || toldAt === 0n) {
        throw new Error(`bench unlock was not granted: ${JSON.stringify(o)}`);
      }
      const energisedAt = await gpioset.waitChange(UNLOCK_LINE, changesBefore, true);
      const seenAt = ns(r.seenAt);
      const totalMs = msBetween(seenAt, energisedAt);
      // Radio time on the path to the relay: the connect, the CCCD write, and every write and
      // notification that completed before the lock controller was told (result and disconnect come after).
      const before = r.events.filter((e) => ns(e.at) <= toldAt);
      const modelledMs =
        delays.startNotifyMs +
        before.filter((e) => e.type === 'connected').length * delays.connectMs +
        before.filter((e) => e.type === 'write').length * delays.writeMs +
        before.filter((e) => e.type === 'notify').length * delays.notifyMs;
      const waitedMs = before.at(-1)?.waitedMs ?? 0;
      const bluezCalls =
        Object.values(r.deviceCalls).reduce((a, b) => a + b, 0) +
        Object.values(r.adapterCalls).reduce((a, b) => a + b, 0);
      const ownMs = turnTime(busEvents, seenAt, toldAt, 'in');
      busEvents.length = 0;
      // Let the 20 ms unlock pulse end, so the next grant energises the relay again.
      await gpioset.waitChange(UNLOCK_LINE, changesBefore + 1, false);
      await new Promise((resolve) => setTimeout(resolve, 10));
      return {
        totalMs,
        modelledMs,
        waitedMs,
        phoneMs: r.phoneMs,
        overheadMs: totalMs - waitedMs - r.phoneMs,
        overheadNominalMs: totalMs - modelledMs - r.phoneMs,
        ownMs,
        relayStepMs: msBetween(toldAt, energisedAt),
        bluezCalls,
        answerMs: o.presentation.answerMs ?? Number.NaN,
      };
    };

    const run = async (delays: LinkDelays): Promise<Sample[]> => {
      for (let i = 0; i < warmup; i++) await once(delays);
      const out: Sample[] = [];
      for (let i = 0; i < samples; i++) out.push(await once(delays));
      return out;
    };
    const { result: modelled, nice } = await atDeployedNice(() => run(MODELLED));
    const zero = await run(ZERO);
    const linkStats = bleReader.stats().link;

    const pick = (list: Sample[], key: keyof Sample) => summarise(list.map((s) => s[key]));
    const total = pick(modelled, 'totalMs');
    const overhead = pick(modelled, 'overheadMs');
    const zeroTotal = pick(zero, 'totalMs');
    const zeroOverhead = pick(zero, 'overheadMs');
    const own = pick(modelled, 'ownMs');
    const rig = summarise(modelled.map((m) => m.overheadMs - m.ownMs - m.relayStepMs));
    return {
      ble_samples: samples,
      ble_unlock_p50_ms: round(total.p50, 1),
      ble_unlock_p99_ms: round(total.p99, 1),
      ble_modelled_link_p50_ms: round(pick(modelled, 'modelledMs').p50, 1),
      ble_modelled_link_waited_p50_ms: round(pick(modelled, 'waitedMs').p50, 1),
      ble_phone_compute_p50_ms: round(pick(modelled, 'phoneMs').p50, 2),
      ble_agent_overhead_p50_ms: round(overhead.p50, 2),
      ble_agent_overhead_p99_ms: round(overhead.p99, 2),
      ble_agent_own_p50_ms: round(own.p50, 2),
      ble_agent_own_p99_ms: round(own.p99, 2),
      ble_relay_step_p50_ms: round(pick(modelled, 'relayStepMs').p50, 2),
      ble_relay_step_p99_ms: round(pick(modelled, 'relayStepMs').p99, 2),
      ble_bus_and_stand_in_p50_ms: round(rig.p50, 2),
      ble_bus_and_stand_in_p99_ms: round(rig.p99, 2),
      ble_agent_overhead_nominal_p50_ms: round(pick(modelled, 'overheadNominalMs').p50, 2),
      ble_agent_overhead_nominal_p99_ms: round(pick(modelled, 'overheadNominalMs').p99, 2),
      ble_zero_delay_unlock_p50_ms: round(zeroTotal.p50, 2),
      ble_zero_delay_unlock_p99_ms: round(zeroTotal.p99, 2),
      ble_zero_delay_overhead_p50_ms: round(zeroOverhead.p50, 2),
      ble_zero_delay_overhead_p99_ms: round(zeroOverhead.p99, 2),
      // What policy.bleAnswerDeadlineMs is held against (docs/ble-protocol.md §5).
      ble_answer_p50_ms: round(pick(modelled, 'answerMs').p50, 1),
      ble_answer_p99_ms: round(pick(modelled, 'answerMs').p99, 1),
      ble_answer_max_ms: round(Math.max(...modelled.map((m) => m.answerMs)), 1),
      ble_zero_delay_answer_p99_ms: round(pick(zero, 'answerMs').p99, 1),
      ble_dbus_calls_to_bluez_per_unlock: pick([...modelled, ...zero], 'bluezCalls').p50,
      ble_gatt_retries: linkStats.gattRetries,
      ble_bus_reconnects: linkStats.busConnections - 1,
      ble_agent_nice: nice,
    };
  } finally {
    await agent?.stop();
    if (agent === undefined) await reader?.stop();
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

/** `node dist/bench/ble.js [--json]`: runs this suite alone (bench/run.ts runs it with the others). */
if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  benchBle().then(
    (figures) => {
      if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify(figures, null, 2)}\n`);
      else
        for (const [k, v] of Object.entries(figures))
          process.stdout.write(`  ${k.padEnd(36)} ${String(v).padStart(10)}\n`);
    },
    (err: unknown) => {
      process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
