import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentError } from '../../src/core/errors.js';
import { silentLogger } from '../../src/core/logger.js';
import type { Health } from '../../src/core/types.js';
import { CMD } from '../../src/nfc/pn532/commands.js';
import { Pn532Driver, type Pn532Target, type Pn532Timing } from '../../src/nfc/pn532/driver.js';
import { serialLinkFactory } from '../../src/nfc/pn532/link.js';
import type { ApduAnswer, SimulatedCard } from '../../src/sim/cards/types.js';
import { Pn532Emulator } from '../../src/sim/pn532-emulator.js';
import { type PtyPair, startPtyPair } from '../helpers/pty-pair.js';
import { waitFor } from '../helpers/wait.js';

function hex(s: string): Uint8Array {
  const clean = s.replace(/\s+/g, '');
  return Uint8Array.from(clean.match(/../g) ?? [], (b) => Number.parseInt(b, 16));
}

function pattern(n: number, seed = 0): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);
}

const OK = Uint8Array.of(0x90, 0x00);

/**
 * A test ISO-DEP card:
 *   INS 01  echo the command data (short or extended Lc)
 *   INS 02  answer P1P2 bytes of a pattern
 *   INS 03  answer P1P2 bytes of a pattern, 256 at a time with 61XX (GET RESPONSE = INS C0)
 */
class EchoCard implements SimulatedCard {
  readonly label = 'echo';
  readonly type = 'iso14443-4' as const;
  readonly uid = hex('04 11 22 33 44 55 66');
  readonly atqa = hex('03 44');
  readonly sak = 0x20;
  readonly ats = hex('06 77 75 81 02 80');
  computeMs = 2;
  resets = 0;
  private remaining: Uint8Array | undefined;

  transceive(apdu: Uint8Array): ApduAnswer {
    const ins = apdu[1];
    const p1p2 = ((apdu[2] ?? 0) << 8) | (apdu[3] ?? 0);
    const answer = (response: Uint8Array): ApduAnswer => ({ response, computeMs: this.computeMs });
    if (ins === 0x01) {
      const extended = apdu[4] === 0 && apdu.length > 7;
      const lc = extended ? ((apdu[5] ?? 0) << 8) | (apdu[6] ?? 0) : (apdu[4] ?? 0);
      const start = extended ? 7 : 5;
      return answer(new Uint8Array([...apdu.subarray(start, start + lc), ...OK]));
    }
    if (ins === 0x02) return answer(new Uint8Array([...pattern(p1p2), ...OK]));
    if (ins === 0x03) {
      this.remaining = pattern(p1p2);
      return answer(this.nextPart());
    }
    if (ins === 0xc0 && this.remaining) return answer(this.nextPart());
    return answer(hex('6D 00'));
  }

  private nextPart(): Uint8Array {
    const all = this.remaining ?? new Uint8Array(0);
    const part = all.subarray(0, 256);
    const rest = all.subarray(256);
    this.remaining = rest.length > 0 ? rest : undefined;
    if (rest.length === 0) return new Uint8Array([...part, ...OK]);
    return new Uint8Array([...part, 0x61, Math.min(rest.length, 256) & 0xff]);
  }

  reset(): void {
    this.resets++;
    this.remaining = undefined;
  }
}

/** A UID-only tag (NTAG213-like). */
function uidTag(uid = hex('04 A1 B2 C3 D4 E5 F6')): SimulatedCard {
  return {
    label: 'tag',
    type: 'ntag21x',
    uid,
    atqa: hex('00 44'),
    sak: 0x00,
    transceive: () => ({ response: hex('6D 00'), computeMs: 0 }),
    reset: () => {},
  };
}

const TEST_TIMING: Partial<Pn532Timing> = {
  livenessIntervalMs: 250,
  backoffMs: 50,
  maxBackoffMs: 400,
  downAfterAttempts: 2,
};

interface Rig {
  readonly dir: string;
  pty: PtyPair;
  emulator: Pn532Emulator;
  readonly driver: Pn532Driver;
  readonly healthLog: Health[];
}

let cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  cleanups = [];
});

async function startRig(timing: Partial<Pn532Timing> = {}): Promise<Rig> {
  const dir = await mkdtemp(join(tmpdir(), 'pn532-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const pty = await startPtyPair(dir);
  const emulator = await Pn532Emulator.open(pty.device);
  const driver = new Pn532Driver({
    openLink: serialLinkFactory(pty.host),
    log: silentLogger,
    timing: { ...TEST_TIMING, ...timing },
  });
  const rig: Rig = { dir, pty, emulator, driver, healthLog: [] };
  driver.on('health', (h) => rig.healthLog.push(h));
  cleanups.push(async () => {
    await rig.driver.stop();
    await rig.emulator.close().catch(() => {});
    await rig.pty.stop();
  });
  await driver.start();
  // Keep only what happens after start-up ('degraded: starting' then 'ok').
  rig.healthLog.length = 0;
  return rig;
}

function nextTarget(driver: Pn532Driver, timeoutMs = 10_000): Promise<Pn532Target> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      driver.off('target', onTarget);
      reject(new Error('no target event'));
    }, timeoutMs);
    const onTarget = (target: Pn532Target): void => {
      clearTimeout(timer);
      resolve(target);
    };
    driver.once('target', onTarget);
  });
}

async function rejection(promise: Promise<unknown>): Promise<AgentError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}

/** Waits until the driver has the chip listening again (the emulator's last command). */
async function listening(rig: Rig): Promise<void> {
  await waitFor(() => {
    const cmds = rig.emulator.commands();
    return rig.driver.health().state === 'ok' && cmds[cmds.length - 1] === CMD.InListPassiveTarget;
  }, 'the driver to listen');
}

async function tap(rig: Rig, card: SimulatedCard): Promise<Pn532Target> {
  await listening(rig);
  const next = nextTarget(rig.driver);
  rig.emulator.placeCard(card);
  return next;
}

describe('PN532 driver against the emulator over a socat pty pair', () => {
  it('initialises: HSU wake-up, SAMConfiguration first, firmware 1.6, then listens', async () => {
    const rig = await startRig();
    expect(rig.driver.health().state).toBe('ok');
    expect(rig.driver.health().detail).toBe('PN532 v1.6');
    expect(rig.driver.firmware()).toEqual({ ic: 0x32, version: 1, revision: 6, support: 7 });
    const cmds = rig.emulator.commands();
    // The emulator starts in Low-VBat mode and drops frames not behind a 0x55 wake-up preamble.
    expect(cmds[0]).toBe(CMD.SAMConfiguration);
    expect(cmds).toContain(CMD.GetFirmwareVersion);
    await listening(rig);
  });

  it('reports a tap from the pending listening command, without sending anything after the card arrives', async () => {
    const rig = await startRig({ livenessIntervalMs: 60_000 });
    await listening(rig);
    const before = rig.emulator.commands().length;
    const next = nextTarget(rig.driver);
    rig.emulator.placeCard(uidTag());
    const target = await next;
    // The answer to the InListPassiveTarget already waiting in the chip is the detection.
    expect(rig.emulator.commands().length).toBe(before);
    expect(target.uid).toEqual(hex('04 A1 B2 C3 D4 E5 F6'));
    expect(target.atqa).toEqual(hex('00 44'));
    expect(target.sak).toBe(0);
    expect(target.kind).toBe('ntag21x');
    expect(target.ats).toBeUndefined();
    expect(rig.driver.current()).toBe(target);
    await target.release();
    expect(target.active).toBe(false);
  });

  it('exchanges APDUs: short, long answers (MI + extended frames), long commands, and 61XX collection', async () => {
    const rig = await startRig();
    const card = new EchoCard();
    const target = await tap(rig, card);
    expect(target.kind).toBe('iso14443-4');
    expect(target.ats).toEqual(card.ats);

    expect(await target.exchangeApdu(hex('00 01 00 00 03 0A 0B 0C'))).toEqual(hex('0A 0B 0C 90 00'));
    // 700-byte answer: three InDataExchange parts chained with MI, two in extended frames.
    expect(await target.exchangeApdu(hex('00 02 02 BC 00'))).toEqual(
      new Uint8Array([...pattern(700), ...OK]),
    );
    // 600-byte extended command: sent in three parts with the host MI bit; echoed back.
    const data = pattern(600, 3);
    const command = new Uint8Array([0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x58, ...data]);
    expect(await target.exchangeApdu(command)).toEqual(new Uint8Array([...data, ...OK]));
    // A card answering 61XX: raw by default, assembled with getResponse.
    const raw = await target.exchangeApdu(hex('00 03 02 58 00'));
    expect(raw.length).toBe(258);
    expect(Array.from(raw.subarray(256))).toEqual([0x61, 0x00]);
    const collected = await target.exchangeApdu(hex('00 03 02 58 00'), { getResponse: true });
    expect(collected).toEqual(new Uint8Array([...pattern(600), ...OK]));
    expect(await rejection(target.exchangeApdu(new Uint8Array(0)))).toMatchObject({ code: 'malformed' });
    expect(target.active).toBe(true);

    await target.release();
    expect(await rejection(target.exchangeApdu(hex('00 01 00 00 00')))).toMatchObject({
      code: 'card_removed',
    });
  });

  it('does not report a released card again while it stays in the field; a new tap is reported', async () => {
    const rig = await startRig();
    const card = new EchoCard();
    const first = await tap(rig, card);
    let reported = 0;
    rig.driver.on('target', () => reported++);
    await first.release();
    await listening(rig);
    // A few liveness rounds pass with the halted card still there.
    const commands = rig.emulator.commands().length;
    await waitFor(() => rig.emulator.commands().length >= commands + 4, 'liveness rounds', 30_000);
    expect(reported).toBe(0);
    rig.emulator.removeCard();
    const second = await tap(rig, card);
    expect(second.id).toBeGreaterThan(first.id);
    await second.release();
  });

  it('waits for the card to leave when the reader wakes halted cards', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pn532-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const pty = await startPtyPair(dir);
    const emulator = await Pn532Emulator.open(pty.device, { wakeHaltedCards: true });
    const driver = new Pn532Driver({
      openLink: serialLinkFactory(pty.host),
      log: silentLogger,
      timing: TEST_TIMING,
    });
    cleanups.push(async () => {
      await driver.stop();
      await emulator.close();
      await pty.stop();
    });
    await driver.start();
    const rig: Rig = { dir, pty, emulator, driver, healthLog: [] };
    const card = new EchoCard();
    const first = await tap(rig, card);
    let reported = 0;
    driver.on('target', () => reported++);
    await first.release();
    // The driver keeps checking (bounded InListPassiveTarget + InRelease) instead of listening.
    const releases = () => emulator.commands().filter((c) => c === CMD.InRelease).length;
    const start = releases();
    await waitFor(() => releases() >= start + 3, 'removal checks', 30_000);
    expect(reported).toBe(0);
    emulator.removeCard();
    // The driver listens again once a removal check found the field empty: infinite retries back
    // (RFConfiguration), then InListPassiveTarget. Placing the card before that is the released
    // card coming back, which the driver rightly keeps waiting on.
    await waitFor(() => {
      const cmds = emulator.commands();
      return (
        cmds.lastIndexOf(CMD.RFConfiguration) > cmds.lastIndexOf(CMD.InRelease) &&
        cmds[cmds.length - 1] === CMD.InListPassiveTarget
      );
    }, 'the driver to listen again');
    const second = await tap(rig, card);
    expect(second.id).toBe(first.id + 1);
    await second.release();
  });

  it('rides through line faults: garbage, lost ACK, NACK, error frame, corrupted answer', async () => {
    const rig = await startRig({ livenessIntervalMs: 60_000 });
    const target = await tap(rig, new EchoCard());
    const faults = [
      { kind: 'garbage' },
      { kind: 'lose-ack' },
      { kind: 'nack' },
      { kind: 'error-frame' },
      { kind: 'corrupt-response' },
    ] as const;
    for (const [i, fault] of faults.entries()) {
      rig.emulator.injectFault(fault);
      const answer = await target.exchangeApdu(Uint8Array.of(0x00, 0x01, 0x00, 0x00, 0x01, i));
      expect(answer, fault.kind).toEqual(Uint8Array.of(i, 0x90, 0x00));
    }
    expect(rig.emulator.stats().apdus).toBe(faults.length); // each APDU reached the card exactly once
    expect(rig.driver.health().state).toBe('ok');
    await target.release();
  });

  it('turns a slow card into reader_timeout and ends the session cleanly', async () => {
    const rig = await startRig();
    const card = new EchoCard();
    const target = await tap(rig, card);
    rig.emulator.injectFault({ kind: 'slow-card', extraMs: 3000 });
    const error = await rejection(target.exchangeApdu(hex('00 01 00 00 01 AA'), { timeoutMs: 300 }));
    expect(error.code).toBe('reader_timeout');
    expect(target.active).toBe(false);
    expect(await rejection(target.exchangeApdu(hex('00 01 00 00 01 AA')))).toMatchObject({
      code: 'reader_timeout',
    });
    expect(rig.driver.health().state).toBe('ok');
    rig.emulator.removeCard();
    const again = await tap(rig, card);
    expect(await again.exchangeApdu(hex('00 01 00 00 01 BB'))).toEqual(hex('BB 90 00'));
    await again.release();
  });

  it('turns a card pulled away mid-exchange into card_removed', async () => {
    const rig = await startRig();
    const card = new EchoCard();
    card.computeMs = 80;
    const target = await tap(rig, card);
    rig.emulator.injectFault({ kind: 'remove-during-exchange' });
    const error = await rejection(target.exchangeApdu(hex('00 01 00 00 01 AA')));
    expect(error.code).toBe('card_removed');
    expect(error.details).toMatchObject({ pn532Error: 0x01 });
    expect(target.active).toBe(false);
    await listening(rig);
    expect(rig.driver.health().state).toBe('ok');
  });

  it('detects a wedged chip, re-initialises it with a wake-up, and reports health on the way', async () => {
    const rig = await startRig();
    await listening(rig);
    const samBefore = rig.emulator.commands().filter((c) => c === CMD.SAMConfiguration).length;
    rig.emulator.injectFault({ kind: 'wedge', recoverOn: 'wakeup' });
    await waitFor(() => rig.healthLog.some((h) => h.state === 'degraded'), 'degraded health');
    await waitFor(() => rig.driver.health().state === 'ok' && !rig.emulator.isWedged, 'recovery');
    expect(rig.emulator.commands().filter((c) => c === CMD.SAMConfiguration).length).toBe(samBefore + 1);
    expect(rig.healthLog.map((h) => h.state)).toEqual(['degraded', 'ok']);
    const target = await tap(rig, new EchoCard());
    expect(await target.exchangeApdu(hex('00 01 00 00 01 42'))).toEqual(hex('42 90 00'));
    await target.release();
  });

  it('keeps retrying a chip that stays wedged (health down) and recovers when it comes back', async () => {
    const rig = await startRig();
    await listening(rig);
    rig.emulator.injectFault({ kind: 'wedge', recoverOn: 'manual' });
    await waitFor(() => rig.driver.health().state === 'down', 'down health', 15_000);
    expect(rig.driver.health().detail).toMatch(/ACK|answer/);
    rig.emulator.unwedge();
    await waitFor(() => rig.driver.health().state === 'ok', 'recovery', 15_000);
    const target = await tap(rig, uidTag());
    expect(target.kind).toBe('ntag21x');
    await target.release();
  });

  it('fails a card exchange with reader_error when the chip goes silent, then recovers', async () => {
    const rig = await startRig({ livenessIntervalMs: 60_000 });
    const target = await tap(rig, new EchoCard());
    rig.emulator.injectFault({ kind: 'wedge', recoverOn: 'wakeup' });
    const error = await rejection(target.exchangeApdu(hex('00 01 00 00 01 AA'), { timeoutMs: 400 }));
    expect(['reader_timeout', 'reader_error']).toContain(error.code);
    expect(target.active).toBe(false);
    await waitFor(
      () => rig.healthLog.some((h) => h.state === 'degraded') && rig.driver.health().state === 'ok',
      'recovery',
    );
  });

  it('re-initialises after an error storm', async () => {
    const rig = await startRig({ stormThreshold: 8, livenessIntervalMs: 60_000 });
    const target = await tap(rig, new EchoCard());
    for (let i = 0; i < 6; i++) rig.emulator.injectFault({ kind: 'garbage' });
    const samBefore = rig.emulator.commands().filter((c) => c === CMD.SAMConfiguration).length;
    for (let i = 0; i < 6 && target.active; i++) {
      await target.exchangeApdu(hex('00 01 00 00 01 AA')).catch(() => {});
    }
    await waitFor(() => {
      const sams = rig.emulator.commands().filter((c) => c === CMD.SAMConfiguration).length;
      return sams > samBefore && rig.driver.health().state === 'ok';
    }, 're-initialisation');
    expect(rig.healthLog.map((h) => h.state)).toContain('degraded');
    expect(target.active).toBe(false);
  });

  it('survives the serial port going away and comes back when it returns', async () => {
    const rig = await startRig();
    await listening(rig);
    // Unplug: the pty pair disappears (like a USB-serial adapter pulled out).
    await rig.pty.stop();
    await rig.emulator.close().catch(() => {});
    await waitFor(() => rig.driver.health().state === 'down', 'down health', 15_000);
    // Plug back in: same device names, a fresh chip.
    rig.pty = await startPtyPair(rig.dir);
    rig.emulator = await Pn532Emulator.open(rig.pty.device);
    await waitFor(() => rig.driver.health().state === 'ok', 'recovery', 15_000);
    const target = await tap(rig, new EchoCard());
    expect(await target.exchangeApdu(hex('00 01 00 00 01 07'))).toEqual(hex('07 90 00'));
    await target.release();
  });
});
