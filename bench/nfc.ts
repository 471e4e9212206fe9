import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { expectedCredentialId } from '../src/access/credential-wire.js';
import { Keyring, signGrant } from '../src/access/keyring.js';
import { Agent, type LockControl } from '../src/agent/agent.js';
import { MonotonicFloorClock } from '../src/core/clock.js';
import { silentLogger } from '../src/core/logger.js';
import type { Credential, LockState } from '../src/core/types.js';
import { b64url } from '../src/crypto/encoding.js';
import {
  generateKeyPair,
  keyCredentialId,
  p256JwkFromRaw,
  publicJwkOf,
  uidHash,
} from '../src/crypto/keys.js';
import { personaliseForSite } from '../src/nfc/ntag424.js';
import { Pn532Driver } from '../src/nfc/pn532/driver.js';
import { type ByteLink, type LinkFactory, openSerialLink, serialLinkFactory } from '../src/nfc/pn532/link.js';
import { NfcReader, type TapOutcome } from '../src/nfc/reader.js';
import { tapChallenge, u2fRegister, vehicleAppParam } from '../src/nfc/u2f.js';
import { SimulatedFidoU2fKey } from '../src/sim/cards/fido-u2f.js';
import { SimulatedNtag424 } from '../src/sim/cards/ntag424.js';
import type { SimulatedCard } from '../src/sim/cards/types.js';
import { SimulatedUidTag } from '../src/sim/cards/uid-tag.js';
import { MemoryLinkPair } from '../src/sim/memory-link.js';
import { Pn532Emulator, type Pn532EmulatorStats } from '../src/sim/pn532-emulator.js';
import { startSocatPtyPair } from '../src/sim/socat-pty.js';
import { AuditLog } from '../src/store/audit-log.js';
import { JournaledMap } from '../src/store/journaled-map.js';
import { round, summarise } from './stats.js';

/**
 * The emulator's end of the serial line, recording when bytes cross it: reads are host commands
 * arriving, writes are the chip's answers leaving (after their modelled wire time).
 */
class TimedLink implements ByteLink {
  readonly events: { at: number; dir: 'in' | 'out' }[] = [];
  constructor(private readonly inner: ByteLink) {}
  get isOpen(): boolean {
    return this.inner.isOpen;
  }
  write(bytes: Uint8Array): Promise<void> {
    this.events.push({ at: performance.now(), dir: 'out' });
    return this.inner.write(bytes);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  onData(listener: (chunk: Uint8Array) => void): void {
    this.inner.onData((chunk) => {
      this.events.push({ at: performance.now(), dir: 'in' });
      listener(chunk);
    });
  }
  onClose(listener: (error: Error | undefined) => void): void {
    this.inner.onClose(listener);
  }
}

/**
 * Time the host side held the turn between `from` and `until`: from each answer leaving the chip
 * to the next command arriving, and from the last answer to `until`. Wire time is modelled on the
 * emulator's side, so this is the agent's own time (pty transit, driver, reader, agent), free of
 * the simulator's own scheduling delays.
 */
function hostTime(events: readonly { at: number; dir: 'in' | 'out' }[], from: number, until: number): number {
  let total = 0;
  let lastOut: number | undefined;
  for (const e of events) {
    if (e.at < from || e.at > until) continue;
    if (e.dir === 'out') lastOut = e.at;
    else if (lastOut !== undefined) {
      total += e.at - lastOut;
      lastOut = undefined;
    }
  }
  if (lastOut !== undefined) total += until - lastOut;
  return total;
}

/**
 * Tap-to-relay latency per card kind, through the real pieces: the PN532 emulator on a socat pty
 * pair (115200-baud wire time and card compute time modelled), the driver over serialport, the
 * NFC reader, the agent (decision, durable FIDO counter, audit) and a lock controller that records
 * when it is told to unlock. Each tap's floor is what the emulator modelled for that tap (wire time
 * of every byte exchanged plus card compute time); overhead = total - floor is the agent's own
 * cost: serial I/O through the kernel, event loop, crypto, decision, counter fsync — plus any
 * lateness of the emulator's own timers, which share the machine. `agent_*` separates that out: the
 * time the host side held the turn, measured at the emulator's end of the line.
 */

const TAPS: Readonly<Record<'fido' | 'ntag424' | 'uid', number>> = { fido: 50, ntag424: 100, uid: 150 };
const GAP_MS = 30;

class RecordingLock implements LockControl {
  unlockedAt: number | undefined;
  onUnlock: (() => void) | undefined;
  state(): LockState {
    return 'locked';
  }
  async unlock(): Promise<LockState> {
    this.unlockedAt = performance.now();
    this.onUnlock?.();
    return 'unlocking';
  }
  async lock(): Promise<LockState> {
    return 'locking';
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function over(card: SimulatedCard) {
  return async (apdu: Uint8Array) => card.transceive(apdu).response;
}

/**
 * Figures through a socat pty pair (the real serialport path, as asked), then the same taps over
 * the in-memory line (no kernel, no socat) to show how much of the overhead is the pty's.
 */
export async function benchNfc(): Promise<Record<string, number>> {
  const pty = await runTaps('pty');
  const memory = await runTaps('memory');
  const figures: Record<string, number> = { ...pty };
  for (const [k, v] of Object.entries(memory))
    if (k.includes('overhead') || k.includes('agent')) figures[`memlink_${k}`] = v;
  return figures;
}

async function runTaps(transport: 'pty' | 'memory'): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(tmpdir(), 'va-bench-nfc-'));
  const cleanups: (() => Promise<unknown>)[] = [];
  try {
    let deviceLink: ByteLink;
    let openLink: LinkFactory;
    if (transport === 'pty') {
      const pty = await startSocatPtyPair(dir);
      cleanups.push(() => pty.stop());
      deviceLink = await openSerialLink(pty.device);
      openLink = serialLinkFactory(pty.host);
    } else {
      const pair = new MemoryLinkPair();
      deviceLink = pair.device;
      openLink = () => pair.openHost();
    }
    const vehicleId = 'BENCH-NFC';
    const root = generateKeyPair('P-256');
    const rootKey = publicJwkOf(root.publicKey);
    const rootId = keyCredentialId('signer', rootKey);
    const keyring = new Keyring({ vehicleId, rootKey });
    const siteKey = new Uint8Array(randomBytes(16));

    const fido = new SimulatedFidoU2fKey({ label: 'fido' });
    const registered = await u2fRegister(over(fido), {
      appParam: vehicleAppParam(vehicleId),
      challenge: tapChallenge(),
    });
    if (!registered.ok) throw registered.error;
    const fidoId = {
      publicKey: p256JwkFromRaw(registered.value.publicKey),
      keyHandle: b64url(registered.value.keyHandle),
      uidHash: uidHash(vehicleId, fido.uid),
    };
    const ntag = new SimulatedNtag424({ label: 'ntag' });
    const personalised = await personaliseForSite(over(ntag), siteKey, ntag.uid);
    if (!personalised.ok) throw personalised.error;
    const tag = new SimulatedUidTag({ label: 'tag', model: 'ntag213' });
    const creds: Credential[] = [
      { id: expectedCredentialId('fido', fidoId), kind: 'fido', role: 'driver', options: {}, ...fidoId },
      {
        id: expectedCredentialId('ntag424', { uidHash: uidHash(vehicleId, ntag.uid) }),
        kind: 'ntag424',
        role: 'driver',
        uidHash: uidHash(vehicleId, ntag.uid),
        options: {},
      },
      {
        id: expectedCredentialId('uid', { uidHash: uidHash(vehicleId, tag.uid) }),
        kind: 'uid',
        role: 'driver',
        uidHash: uidHash(vehicleId, tag.uid),
        options: { insecureUid: true },
      },
    ];
    const iat = Math.floor(Date.now() / 1000);
    const merged = keyring.merge(creds.map((c) => signGrant(c, vehicleId, root.privateKey, rootId, iat)));
    if (merged.rejected.length > 0) throw new Error('bench keyring rejected its grants');

    const link = new TimedLink(deviceLink);
    const emulator = new Pn532Emulator(link);
    cleanups.unshift(() => emulator.close());
    const counters = await JournaledMap.open<number>(join(dir, 'counters'));
    cleanups.unshift(() => counters.close());
    const clock = new MonotonicFloorClock(0);
    const audit = await AuditLog.open(join(dir, 'audit'), { now: () => clock.now() });
    cleanups.unshift(() => audit.close());
    const lock = new RecordingLock();
    const driver = new Pn532Driver({ openLink, log: silentLogger });
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
    const cards: Record<keyof typeof TAPS, SimulatedCard> = { fido, ntag424: ntag, uid: tag };
    for (const [kind, count] of Object.entries(TAPS) as [keyof typeof TAPS, number][]) {
      const totals: number[] = [];
      const floors: number[] = [];
      const overheads: number[] = [];
      const wire: number[] = [];
      const agentTimes: number[] = [];
      for (let i = 0; i < count + 3; i++) {
        await sleep(GAP_MS);
        let atRelay: Pn532EmulatorStats | undefined;
        lock.unlockedAt = undefined;
        lock.onUnlock = () => {
          atRelay = emulator.stats();
        };
        const outcome = new Promise<TapOutcome>((resolve) => reader.once('tap', resolve));
        const before = emulator.stats();
        const placedAt = performance.now();
        emulator.placeCard(cards[kind]);
        const result = await outcome;
        emulator.removeCard();
        if (
          result.type !== 'decision' ||
          !result.decision.granted ||
          lock.unlockedAt === undefined ||
          !atRelay
        )
          throw new Error(`bench tap of ${kind} was not granted: ${JSON.stringify(result)}`);
        if (i < 3) continue; // warm-up
        const total = lock.unlockedAt - placedAt;
        const wireMs = atRelay.wireMs - before.wireMs;
        const floor = wireMs + (atRelay.computeMs - before.computeMs);
        totals.push(total);
        floors.push(floor);
        wire.push(wireMs);
        overheads.push(total - floor);
        agentTimes.push(hostTime(link.events, placedAt, lock.unlockedAt));
        link.events.length = 0;
      }
      const t = summarise(totals);
      const f = summarise(floors);
      const o = summarise(overheads);
      figures[`${kind}_tap_to_relay_p50_ms`] = round(t.p50, 2);
      figures[`${kind}_tap_to_relay_p99_ms`] = round(t.p99, 2);
      figures[`${kind}_floor_p50_ms`] = round(f.p50, 2);
      figures[`${kind}_floor_wire_p50_ms`] = round(summarise(wire).p50, 2);
      figures[`${kind}_overhead_p50_ms`] = round(o.p50, 2);
      figures[`${kind}_overhead_p99_ms`] = round(o.p99, 2);
      const a = summarise(agentTimes);
      figures[`${kind}_agent_p50_ms`] = round(a.p50, 2);
      figures[`${kind}_agent_p99_ms`] = round(a.p99, 2);
      figures[`${kind}_taps`] = t.n;
    }
    return figures;
  } finally {
    for (const cleanup of cleanups) await cleanup().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  }
}

// `node dist/bench/nfc.js [--json]`: the suite alone.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const figures = await benchNfc();
  if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify({ nfc: figures })}\n`);
  else
    for (const [k, v] of Object.entries(figures))
      process.stdout.write(
        `  ${k.padEnd(30)} ${String(v).padStart(10)}${k.includes('overhead_p99') ? '   (target <= 5)' : ''}\n`,
      );
}
