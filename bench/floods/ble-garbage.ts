/**
 * Flood generator: BLE garbage from rotating addresses (issue 12, finding 7).
 *
 *   startBleGarbage(options: BleGarbageOptions): Promise<{ stop(): Promise<Record<string, number>> }>
 *
 *   options.busAddress  the private dbus-daemon (src/sim/dbus-daemon.ts startPrivateDbus) that the
 *                       agent's BLE link uses as its system bus: a real agent process started with
 *                       VEHICLE_AGENT_BLE__DRIVER=bluez and DBUS_SYSTEM_BUS_ADDRESS=<busAddress>,
 *                       or an in-process BleLink given `busAddress`. Not the agent's sim mode: its
 *                       own stand-in owns org.bluez on its own bus (and runs inside the agent).
 *   options.devices     fake keys advertising at once, each on a fresh random address used for one
 *                       session; default 32.
 *   options.mode        'garbage' (answers the hello with a well-framed invalid message; default),
 *                       'silent' (connects, never answers) or 'hang' (never completes the connect).
 *   options.genuine     optional: a genuine phone key enrolled in the agent's keyring
 *                       ({ secretKey: base64url 32-byte P-256 scalar, pin: { vehicleId, publicKey },
 *                       everyMs }) that approaches again and again during the flood; each approach
 *                       is timed from its first advertisement to the vehicle's grant.
 *
 * The generator forks bench/floods/ble-garbage-host.js, which owns org.bluez on that bus (the
 * BlueZ stand-in), so the simulator's CPU is that process's, not the agent's (as bench/ble.ts and
 * bench/ble-peer-host.ts do). start() resolves once the stand-in owns org.bluez and the flood runs
 * (the agent's link picks the adapter up by itself). stop() ends the flood and the host and
 * resolves with counts: ble_flood_addresses, ble_flood_connects, ble_flood_garbage_sent, and with
 * `genuine` ble_genuine_approaches, _granted, _not_granted, _grant_p50_ms, _grant_p90_ms,
 * _grant_max_ms.
 *
 * Run alone (`node dist/bench/floods/ble-garbage.js [--json]`) it measures the time for a genuine
 * phone to be granted while N rotating fake addresses are present, against the agent's BLE reader
 * in this process (link, reader, decision, lock controller, simulated relay) with default policy
 * and ble.* settings.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Keyring, signGrant } from '../../src/access/keyring.js';
import { Agent } from '../../src/agent/agent.js';
import { createRelay } from '../../src/app/relays.js';
import { BleLink } from '../../src/ble/link.js';
import { KEY_TO_VEHICLE_UUID, SERVICE_UUID, VEHICLE_TO_KEY_UUID } from '../../src/ble/protocol/constants.js';
import { BleReader } from '../../src/ble/reader.js';
import { loadConfig } from '../../src/config/load.js';
import { MonotonicFloorClock } from '../../src/core/clock.js';
import { silentLogger } from '../../src/core/logger.js';
import type { Credential } from '../../src/core/types.js';
import { signP256 } from '../../src/crypto/challenge.js';
import { b64url, fromB64url } from '../../src/crypto/encoding.js';
import { generateKeyPair, keyCredentialId, publicJwkOf } from '../../src/crypto/keys.js';
import type { PinnedVehicle } from '../../src/sim/ble/phone.js';
import type { FloodMode } from '../../src/sim/ble-flood.js';
import { startPrivateDbus } from '../../src/sim/dbus-daemon.js';
import type { FloodHostReply, FloodHostRequest } from './ble-garbage-host.js';

export interface BleGarbageOptions {
  readonly busAddress: string;
  readonly devices?: number;
  readonly mode?: FloodMode;
  readonly genuine?: { readonly secretKey: string; readonly pin: PinnedVehicle; readonly everyMs?: number };
}

export interface RunningFlood {
  stop(): Promise<Record<string, number>>;
}

export async function startBleGarbage(options: BleGarbageOptions): Promise<RunningFlood> {
  const host: ChildProcess = fork(fileURLToPath(new URL('./ble-garbage-host.js', import.meta.url)), [], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const next = <T extends FloodHostReply['type']>(type: T): Promise<Extract<FloodHostReply, { type: T }>> =>
    new Promise((resolve, reject) => {
      const onMessage = (reply: FloodHostReply): void => {
        if (reply.type !== type && reply.type !== 'error') return;
        host.off('message', onMessage);
        host.off('exit', onExit);
        if (reply.type === 'error') reject(new Error(`BLE flood host: ${reply.message}`));
        else resolve(reply as Extract<FloodHostReply, { type: T }>);
      };
      const onExit = (code: number | null): void => {
        host.off('message', onMessage);
        reject(new Error(`BLE flood host exited (${code})`));
      };
      host.on('message', onMessage);
      host.once('exit', onExit);
    });
  const request = (r: FloodHostRequest): void => {
    host.send(r);
  };
  const started = next('started');
  request({
    type: 'start',
    busAddress: options.busAddress,
    devices: options.devices ?? 32,
    mode: options.mode ?? 'garbage',
    ...(options.genuine === undefined
      ? {}
      : {
          genuine: {
            secretKey: options.genuine.secretKey,
            pin: options.genuine.pin,
            everyMs: options.genuine.everyMs ?? 500,
          },
        }),
  });
  try {
    await started;
  } catch (err) {
    host.kill('SIGKILL');
    throw err;
  }
  return {
    stop: async () => {
      const stopped = next('stopped');
      const exited = new Promise((resolve) => host.once('exit', resolve));
      request({ type: 'stop' });
      const timer = setTimeout(() => host.kill('SIGKILL'), 10_000);
      try {
        return (await stopped).counts;
      } finally {
        await exited;
        clearTimeout(timer);
      }
    },
  };
}

// ── standalone: a genuine phone's time to grant under a flood ──────────────────

interface Case {
  readonly mode: FloodMode;
  readonly devices: number;
}

const CASES: readonly Case[] = [
  { mode: 'garbage', devices: 0 },
  { mode: 'garbage', devices: 8 },
  { mode: 'garbage', devices: 32 },
  { mode: 'garbage', devices: 128 },
  { mode: 'silent', devices: 8 },
  { mode: 'silent', devices: 32 },
  { mode: 'hang', devices: 32 },
];

/** Grants a genuine phone is timed for, per case. */
const APPROACHES = 8;

export async function benchBleFlood(): Promise<Record<string, number>> {
  const bus = await startPrivateDbus();
  const { config } = loadConfig({
    env: { VEHICLE_AGENT_LOCK__PULSE_MS: '20', VEHICLE_AGENT_LOCK__AUTO_RELOCK_MS: '0' },
  });
  const relay = await createRelay(config, silentLogger);
  let agent: Agent | undefined;
  const figures: Record<string, number> = {};
  try {
    const vehicleId = 'BENCH-BLE-FLOOD';
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
    const genuine = {
      secretKey: b64url(fromB64url(String(d))),
      pin: { vehicleId, publicKey: publicJwkOf(vehicle.publicKey) },
      everyMs: 300,
    };
    await relay.start();
    const ble = config.ble;
    const link = new BleLink({
      serviceUuid: SERVICE_UUID,
      writeUuid: VEHICLE_TO_KEY_UUID,
      notifyUuid: KEY_TO_VEHICLE_UUID,
      logger: silentLogger,
      busAddress: bus.address,
      maxSessions: ble.maxSessions,
      unprovenTurnMs: ble.unprovenTurnMs,
      unprovenDeadlineMs: ble.unprovenDeadlineMs,
      maxWaiting: ble.maxWaiting,
      maxConnectsPerSecond: ble.maxConnectsPerSecond,
      maxTrackedDevices: ble.maxTrackedDevices,
      connectTimeoutMs: ble.connectTimeoutMs,
      servicesTimeoutMs: ble.servicesTimeoutMs,
      sessionSpacingMs: Math.min(ble.denialCooldownMs, 1000),
    });
    const reader = new BleReader({
      link,
      answerWindowMs: config.policy.bleAnswerDeadlineMs,
      lateGraceMs: ble.lateGraceMs,
      // The genuine phone comes back under a fresh address each time; keep the configured holds.
      grantCooldownMs: ble.grantCooldownMs,
      denialCooldownMs: ble.denialCooldownMs,
    });
    agent = new Agent({
      vehicleId,
      keyring,
      keyringStore: { persist: async () => {} },
      counters: { get: () => undefined, stage: async () => ({ durable: Promise.resolve() }) },
      clock: new MonotonicFloorClock(0),
      audit: { append: async () => undefined },
      lock: relay.lockController,
      readers: [reader],
      policy: {
        rateLimit: {
          maxDenials: config.policy.maxDenials,
          windowMs: config.policy.windowMs,
          cooldownMs: config.policy.cooldownMs,
        },
        answerDeadlineMs: { phone: config.policy.bleAnswerDeadlineMs },
      },
      log: silentLogger,
      signAsVehicle: (message) => signP256(vehicle.privateKey, message),
    });
    await agent.start();
    for (const c of CASES) {
      const flood = await startBleGarbage({
        busAddress: bus.address,
        devices: c.devices,
        mode: c.mode,
        genuine,
      });
      const before = reader.stats();
      // Let the flood fill the slots before the count starts; then wait for the grants.
      const deadline = Date.now() + 300_000;
      while (reader.stats().granted - before.granted < APPROACHES && Date.now() < deadline)
        await new Promise((resolve) => setTimeout(resolve, 100));
      const counts = await flood.stop();
      const after = reader.stats();
      const key = `ble_${c.mode}_${c.devices}`;
      figures[`${key}_grant_p50_ms`] = counts.ble_genuine_grant_p50_ms ?? Number.NaN;
      figures[`${key}_grant_p90_ms`] = counts.ble_genuine_grant_p90_ms ?? Number.NaN;
      figures[`${key}_grant_max_ms`] = counts.ble_genuine_grant_max_ms ?? Number.NaN;
      figures[`${key}_granted`] = counts.ble_genuine_granted ?? 0;
      figures[`${key}_fake_sessions`] = counts.ble_flood_connects ?? 0;
      figures[`${key}_evicted`] = after.link.sessionsEvicted - before.link.sessionsEvicted;
      figures[`${key}_denied`] = after.denied - before.denied;
      // Wait for the link to be idle and the stand-in gone before the next case.
      while (link.stats().activeSessions > 0) await new Promise((resolve) => setTimeout(resolve, 50));
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    const status = agent.status();
    figures.ble_flood_credentials_locked_out = status.rateLimits.lockedOutCredentials;
    figures.ble_flood_noise_denials = status.rateLimits.noiseDenials;
    return figures;
  } finally {
    await agent?.stop();
    await relay.close();
    await bus.stop();
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  benchBleFlood().then(
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
