import { type ChildProcess, fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expectedCredentialId } from '../src/access/credential-wire.js';
import { Keyring, signGrant } from '../src/access/keyring.js';
import { Agent, type LockControl } from '../src/agent/agent.js';
import { createRelay } from '../src/app/relays.js';
import { loadConfig } from '../src/config/load.js';
import { MonotonicFloorClock } from '../src/core/clock.js';
import { silentLogger } from '../src/core/logger.js';
import type { Credential, LockState } from '../src/core/types.js';
import { b64url, fromB64url } from '../src/crypto/encoding.js';
import {
  generateKeyPair,
  keyCredentialId,
  p256JwkFromRaw,
  publicJwkOf,
  uidHash,
} from '../src/crypto/keys.js';
import { Pn532Driver } from '../src/nfc/pn532/driver.js';
import { serialLinkFactory } from '../src/nfc/pn532/link.js';
import { NfcReader, type TapOutcome } from '../src/nfc/reader.js';
import { startSocatPtyPair } from '../src/sim/socat-pty.js';
import { AuditLog } from '../src/store/audit-log.js';
import { JournaledMap } from '../src/store/journaled-map.js';
import { STANDIN_V2 } from '../test/helpers/gpioset-standin.js';
import { atDeployedNice } from './deployed-nice.js';
import { GpiosetRig, type LineEvent, msBetween, TimedByteLink, turnTime } from './line-timing.js';
import type { CardKind, CardsReady, Pn532HostReply, Pn532HostRequest, TapReport } from './pn532-host.js';
import { benchRelayStep } from './relay-step.js';
import { round, summarise } from './stats.js';

/**
 * Tap-to-relay latency per card kind, through the real pieces: the PN532 emulator and its cards
 * in a child process (as the chip and the card are hardware of their own) on one end of a socat
 * pty pair, and here on the other end the driver over serialport, the NFC reader, the agent
 * (decision, durable FIDO counter, audit), the lock controller, the relay guard process and GPIO
 * relays held by a stand-in gpioset (2.x, interactive: one holder per line) that records when the
 * line changes. The clock stops there, as seen from outside the agent. Per tap:
 *   total       card placed to the unlock line energised (the stand-in's record).
 *   floor       what the emulator modelled for the tap: the wire time of every byte exchanged
 *               (86.8 µs each) plus card compute time. The floor, from the bytes.
 *   overhead    total - floor: the agent's own work, the serial transport (serialport's native
 *               I/O, the kernel's ptys and socat between them), the relay step and any lateness
 *               of the emulator's timers on this shared machine.
 *   agent_own   the agent's own work, timed at its end of the line: from bytes reaching its code
 *               (serialport's 'data' event) to its next write(), and from the last answer to the
 *               lock controller being told. The agent overhead proper (driver, card protocol,
 *               crypto, decision, the durable FIDO counter write); on a Pi the UART's kernel
 *               latency replaces transit.
 *   transit     the time the host held the turn seen from the chip's end, minus agent_own: the
 *               serial transport both ways, the rig's socat hop included.
 *   relay_step  from the lock controller being told to the line changing: the controller, the
 *               command to the relay guard, the guard, the `set` line to gpioset.
 * Then the relay step alone for each way of holding a line, before (a gpioset spawned per change)
 * and after (one interactive holder), in the same run: see bench/relay-step.ts.
 * Figures only; no assertions.
 */

const TAPS: Readonly<Record<CardKind, number>> = { fido: 300, ntag424: 400, uid: 400 };
const WARMUP = 5;
const GAP_MS = 30;

/** The unlock line, as the bench configures it (lock.wiring pulse, 20 ms pulses). */
const UNLOCK_LINE = 17;

/**
 * The real lock controller, with the time it is told to unlock recorded. It reports the lock as
 * locked, so every tap (whose intent is toggle) is an unlock, as on a car that relocks by itself.
 */
class TimedLock implements LockControl {
  toldAt: bigint | undefined;
  constructor(private readonly inner: LockControl) {}
  state(): LockState {
    return 'locked';
  }
  unlock(cause: string): Promise<LockState> {
    this.toldAt = process.hrtime.bigint();
    return this.inner.unlock(cause);
  }
  lock(cause: string): Promise<LockState> {
    return this.inner.lock(cause);
  }
  retract(cause: string): Promise<LockState> {
    this.toldAt = undefined; // a retracted grant fails the tap
    return this.inner.retract(cause);
  }
}

const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));

/** The emulator child and a typed request/reply over its IPC channel. */
function startChipHost(): {
  child: ChildProcess;
  ask: <T extends Pn532HostReply['type']>(
    request: Pn532HostRequest,
    type: T,
  ) => Promise<Extract<Pn532HostReply, { type: T }>>;
  stop: () => Promise<void>;
} {
  const child = fork(fileURLToPath(new URL('./pn532-host.js', import.meta.url)), [], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const ask = <T extends Pn532HostReply['type']>(request: Pn532HostRequest, type: T) =>
    new Promise<Extract<Pn532HostReply, { type: T }>>((resolve, reject) => {
      const onMessage = (reply: Pn532HostReply): void => {
        if (reply.type !== type && reply.type !== 'error') return;
        child.off('message', onMessage);
        child.off('exit', onExit);
        if (reply.type === 'error') reject(new Error(`PN532 host: ${reply.message}`));
        else resolve(reply as Extract<Pn532HostReply, { type: T }>);
      };
      const onExit = (): void => {
        child.off('message', onMessage);
        reject(new Error('the PN532 host exited'));
      };
      child.on('message', onMessage);
      child.once('exit', onExit);
      child.send(request);
    });
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    if (child.connected) child.send({ type: 'stop' } satisfies Pn532HostRequest);
    else child.kill('SIGTERM');
    await exited;
    clearTimeout(timer);
  };
  return { child, ask, stop };
}

function credentialsFor(vehicleId: string, ready: CardsReady): Credential[] {
  const hash = (hex: string) => uidHash(vehicleId, Uint8Array.from(Buffer.from(hex, 'hex')));
  const fido = {
    publicKey: p256JwkFromRaw(fromB64url(ready.fido.publicKey)),
    keyHandle: ready.fido.keyHandle,
    uidHash: hash(ready.fido.uid),
  };
  const ntag = { uidHash: hash(ready.ntag424Uid) };
  const tag = { uidHash: hash(ready.uidTagUid) };
  return [
    { id: expectedCredentialId('fido', fido), kind: 'fido', role: 'driver', options: {}, ...fido },
    { id: expectedCredentialId('ntag424', ntag), kind: 'ntag424', role: 'driver', options: {}, ...ntag },
    {
      id: expectedCredentialId('uid', tag),
      kind: 'uid',
      role: 'driver',
      options: { insecureUid: true },
      ...tag,
    },
  ];
}

export async function benchNfc(): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(tmpdir(), 'va-bench-nfc-'));
  const cleanups: (() => Promise<unknown>)[] = [];
  const hostEvents: LineEvent[] = [];
  try {
    const pty = await startSocatPtyPair(dir);
    cleanups.push(() => pty.stop());
    const chip = startChipHost();
    cleanups.unshift(() => chip.stop());

    const vehicleId = 'BENCH-NFC';
    const siteKey = new Uint8Array(randomBytes(16));
    const ready = await chip.ask(
      { type: 'start', device: pty.device, vehicleId, siteKey: b64url(siteKey) },
      'ready',
    );
    const root = generateKeyPair('P-256');
    const rootKey = publicJwkOf(root.publicKey);
    const keyring = new Keyring({ vehicleId, rootKey });
    const iat = Math.floor(Date.now() / 1000);
    const rootId = keyCredentialId('signer', rootKey);
    const merged = keyring.merge(
      credentialsFor(vehicleId, ready).map((c) => signGrant(c, vehicleId, root.privateKey, rootId, iat)),
    );
    if (merged.rejected.length > 0) throw new Error('bench keyring rejected its grants');

    const counters = await JournaledMap.open<number>(join(dir, 'counters'));
    cleanups.unshift(() => counters.close());
    const clock = new MonotonicFloorClock(0);
    const audit = await AuditLog.open(join(dir, 'audit'), { now: () => clock.now() });
    cleanups.unshift(() => audit.close());
    const rig = new GpiosetRig(STANDIN_V2);
    cleanups.push(async () => rig.close());
    const { config } = loadConfig({
      env: { ...rig.configEnv, VEHICLE_AGENT_LOCK__PULSE_MS: '20', VEHICLE_AGENT_LOCK__AUTO_RELOCK_MS: '0' },
    });
    // Started at the agent's deployed niceness, which the relay guard inherits, as under systemd.
    const { result: relay } = await atDeployedNice(() => createRelay(config, silentLogger, { env: rig.env }));
    cleanups.unshift(() => relay.close());
    await relay.start();
    const lock = new TimedLock(relay.lockController);
    const openHost = serialLinkFactory(pty.host);
    const driver = new Pn532Driver({
      openLink: async () => new TimedByteLink(await openHost(), hostEvents),
      log: silentLogger,
    });
    const reader = new NfcReader({
      id: 'nfc0',
      driver,
      fidoCredentials: () => keyring.list().filter((s) => s.credential.kind === 'fido'),
      siteKey: async () => siteKey,
      maxProbes: 8,
      answerTimeoutMs: 1000,
      apduTimeoutMs: 1000,
    });
    const agent = new Agent({
      vehicleId,
      keyring,
      keyringStore: { persist: async () => {} },
      counters,
      clock,
      audit,
      lock,
      readers: [reader],
      policy: {
        rateLimit: { maxDenials: 1000, windowMs: 60_000, cooldownMs: 60_000 },
        answerDeadlineMs: { fido: 500, ntag424: 500 },
      },
      log: silentLogger,
      signAsVehicle: () => new Uint8Array(64),
    });
    await agent.start();
    cleanups.unshift(() => agent.stop());

    const figures: Record<string, number> = {};
    const measured = await atDeployedNice(async () => {
      for (const [kind, count] of Object.entries(TAPS) as [CardKind, number][]) {
        const totals: number[] = [];
        const floors: number[] = [];
        const wire: number[] = [];
        const overheads: number[] = [];
        const owns: number[] = [];
        const transits: number[] = [];
        const relaySteps: number[] = [];
        for (let i = 0; i < count + WARMUP; i++) {
          await sleep(GAP_MS);
          lock.toldAt = undefined;
          hostEvents.length = 0;
          const changesBefore = rig.changeCount(UNLOCK_LINE);
          const outcome = new Promise<TapOutcome>((resolve) => reader.once('tap', resolve));
          const { placedAt } = await chip.ask({ type: 'place', kind }, 'placed');
          const result = await outcome;
          const relayAt = lock.toldAt;
          const report: TapReport = await chip.ask(
            { type: 'remove', relayAt: String(relayAt ?? process.hrtime.bigint()) },
            'tap',
          );
          if (result.type !== 'decision' || !result.decision.granted || relayAt === undefined)
            throw new Error(`bench tap of ${kind} was not granted: ${JSON.stringify(result)}`);
          // The line as the stand-in saw it: on, then off again at the end of the 20 ms pulse
          // (so the next tap starts a pulse of its own).
          const lineAt = await rig.waitChange(UNLOCK_LINE, changesBefore, true);
          await rig.waitChange(UNLOCK_LINE, changesBefore + 1, false);
          if (i < WARMUP) continue;
          const start = BigInt(placedAt);
          const total = msBetween(start, lineAt);
          const floor = report.wireMs + report.computeMs;
          const own = turnTime(hostEvents, start, relayAt, 'in');
          relaySteps.push(msBetween(relayAt, lineAt));
          totals.push(total);
          floors.push(floor);
          wire.push(report.wireMs);
          overheads.push(total - floor);
          owns.push(own);
          transits.push(report.hostHeldMs - own);
        }
        const t = summarise(totals);
        const o = summarise(overheads);
        const own = summarise(owns);
        const transit = summarise(transits);
        figures[`${kind}_tap_to_relay_p50_ms`] = round(t.p50, 2);
        figures[`${kind}_tap_to_relay_p99_ms`] = round(t.p99, 2);
        figures[`${kind}_floor_p50_ms`] = round(summarise(floors).p50, 2);
        figures[`${kind}_floor_wire_p50_ms`] = round(summarise(wire).p50, 2);
        figures[`${kind}_overhead_p50_ms`] = round(o.p50, 2);
        figures[`${kind}_overhead_p99_ms`] = round(o.p99, 2);
        figures[`${kind}_agent_own_p50_ms`] = round(own.p50, 2);
        figures[`${kind}_agent_own_p99_ms`] = round(own.p99, 2);
        figures[`${kind}_transit_p50_ms`] = round(transit.p50, 2);
        figures[`${kind}_transit_p99_ms`] = round(transit.p99, 2);
        const step = summarise(relaySteps);
        figures[`${kind}_relay_step_p50_ms`] = round(step.p50, 2);
        figures[`${kind}_relay_step_p99_ms`] = round(step.p99, 2);
        figures[`${kind}_taps`] = t.n;
      }
    });
    figures.agent_nice = measured.nice;
    const { result: relayStep } = await atDeployedNice(() => benchRelayStep());
    Object.assign(figures, relayStep);
    return figures;
  } finally {
    for (const cleanup of cleanups) await cleanup().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  }
}

// `node dist/bench/nfc.js [--json]`: the suite alone.
if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const figures = await benchNfc();
  if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify({ nfc: figures })}\n`);
  else
    for (const [k, v] of Object.entries(figures))
      process.stdout.write(
        `  ${k.padEnd(44)} ${String(v).padStart(10)}${/agent_own_p99/.test(k) ? '   (target <= 5)' : /overhead_p99/.test(k) ? '   (with the rig: socat, ptys)' : ''}\n`,
      );
}
