import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CMD } from '../../src/nfc/pn532/commands.js';
import { SimulatedFidoU2fKey } from '../../src/sim/cards/fido-u2f.js';
import { SimulatedNtag424 } from '../../src/sim/cards/ntag424.js';
import type { SimulatedCard } from '../../src/sim/cards/types.js';
import { SimulatedUidTag } from '../../src/sim/cards/uid-tag.js';
import { Pn532Emulator } from '../../src/sim/pn532-emulator.js';
import { requireTool, stopProcess } from '../helpers/processes.js';
import { type PtyPair, startPtyPair } from '../helpers/pty-pair.js';

/**
 * libnfc's own tools (nfc-list from libnfc-bin; nfc-poll and nfc-mfultralight from
 * libnfc-examples) against the PN532 emulator on a socat pty pair, through libnfc's pn532_uart
 * driver: they must see every card kind the emulator offers as they would see the real card, and
 * nfc-poll's presence check (an R(NAK) block by InCommunicateThru for ISO-DEP cards, a READ by
 * InDataExchange for an Ultralight/NTAG, a re-select for a MIFARE Classic) must hold while the
 * card is there and fail once it is gone.
 */

function hex(s: string): Uint8Array {
  return Uint8Array.from(s.replace(/\s+/g, '').match(/../g) ?? [], (b) => Number.parseInt(b, 16));
}

/** libnfc prints bytes as `04  a1  b2`: a pattern for the hex string `bytes`. */
function printed(bytes: string): RegExp {
  return new RegExp(`${(bytes.match(/../g) ?? []).join(' {2}')} {2}\\n`);
}

interface Kind {
  readonly name: string;
  readonly make: () => SimulatedCard;
  readonly uid: string;
  readonly atqa: string;
  readonly sak: string;
  /** ATS as nfc-list prints it (without TL), for ISO-DEP cards. */
  readonly ats?: string;
  /** The PN532 command nfc-poll's presence check sends for this kind. */
  readonly presenceCheck: number;
}

const KINDS: readonly Kind[] = [
  {
    name: 'an NTAG213 (Type 2 tag, UID only)',
    make: () => new SimulatedUidTag({ label: 'ntag', model: 'ntag213', uid: hex('04a1b2c3d4e5f6') }),
    uid: '04a1b2c3d4e5f6',
    atqa: '0044',
    sak: '00',
    presenceCheck: CMD.InDataExchange,
  },
  {
    name: 'a MIFARE Classic 1K (UID only)',
    make: () => new SimulatedUidTag({ label: 'mfc', model: 'mifare-classic-1k', uid: hex('deadbeef') }),
    uid: 'deadbeef',
    atqa: '0004',
    sak: '08',
    presenceCheck: CMD.InListPassiveTarget,
  },
  {
    name: 'an NTAG 424 DNA (ISO-DEP)',
    make: () => new SimulatedNtag424({ label: 'dna', uid: hex('04112233445566') }),
    uid: '04112233445566',
    atqa: '0344',
    sak: '20',
    ats: '7777710280',
    presenceCheck: CMD.InCommunicateThru,
  },
  {
    name: 'a FIDO U2F key (ISO-DEP)',
    make: () => new SimulatedFidoU2fKey({ label: 'fido', uid: hex('04998877665544') }),
    uid: '04998877665544',
    atqa: '0044',
    sak: '20',
    ats: '7877710280',
    presenceCheck: CMD.InCommunicateThru,
  },
];

let cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  cleanups = [];
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'libnfc-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function emulatorRig(): Promise<{ dir: string; pty: PtyPair; emulator: Pn532Emulator }> {
  const dir = await tempDir();
  const pty = await startPtyPair(dir, 'libnfc');
  const emulator = await Pn532Emulator.open(pty.device);
  cleanups.push(async () => {
    await emulator.close();
    await pty.stop();
  });
  return { dir, pty, emulator };
}

/** A libnfc tool on the host end of the pty, with its output (stdout and stderr) as it comes. */
interface Tool {
  readonly child: ChildProcess;
  output(): string;
  /** Resolves with the first output that matches, or rejects when the tool exits first. */
  waitFor(pattern: RegExp | string): Promise<void>;
  readonly exited: Promise<number | null>;
}

function startTool(host: string, command: string, args: readonly string[] = []): Tool {
  requireTool(command, `apt-get install ${command === 'nfc-list' ? 'libnfc-bin' : 'libnfc-examples'}`);
  const child = spawn(command, [...args], {
    env: {
      ...process.env,
      LIBNFC_DEVICE: `pn532_uart:${host}`,
      LIBNFC_AUTO_SCAN: 'false',
      LIBNFC_LOG_LEVEL: '0',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  cleanups.push(() => stopProcess(child));
  let out = '';
  const listeners: (() => void)[] = [];
  const onData = (d: Buffer): void => {
    out += d.toString();
    for (const l of [...listeners]) l();
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  const matches = (p: RegExp | string): boolean => (typeof p === 'string' ? out.includes(p) : p.test(out));
  return {
    child,
    output: () => out,
    exited,
    waitFor: (pattern) =>
      new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (!matches(pattern)) return;
          listeners.splice(listeners.indexOf(check), 1);
          resolve();
        };
        listeners.push(check);
        check();
        void exited.then(() => {
          if (!matches(pattern))
            reject(new Error(`${command} exited before printing ${String(pattern)}:\n${out}`));
        });
      }),
  };
}

/** Runs a tool to its end (bounded: a hang is stopped and fails the test's assertions). */
async function runTool(host: string, command: string, args: readonly string[] = []) {
  const tool = startTool(host, command, args);
  const timer = setTimeout(() => void stopProcess(tool.child), 30_000);
  const code = await tool.exited;
  clearTimeout(timer);
  return { code, out: tool.output() };
}

/** Resolves once the emulator has received `count` more commands from `tool` (bounded). */
async function commandsReceived(emulator: Pn532Emulator, tool: Tool, count: number): Promise<void> {
  const target = emulator.stats().framesIn + count;
  const started = Date.now();
  while (emulator.stats().framesIn < target) {
    if (tool.child.exitCode !== null)
      throw new Error(`${tool.child.spawnfile} ended early:\n${tool.output()}`);
    if (Date.now() - started > 20_000)
      throw new Error(`the emulator got fewer than ${count} commands in 20 s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("libnfc's nfc-list and nfc-poll against the PN532 emulator", () => {
  it('lists nothing when the field is empty, after libnfc has set the chip up its own way', async () => {
    const { pty, emulator } = await emulatorRig();
    const { code, out } = await runTool(pty.host, 'nfc-list', ['-v', '-t', '1']);
    expect(code).toBe(0);
    expect(out).toContain('NFC device: user defined device opened');
    expect(out).toContain('0 ISO14443A passive target(s) found');
    // libnfc's own sequence went through: communication test, firmware, registers, power-down at close.
    const cmds = emulator.commands();
    for (const c of [
      CMD.Diagnose,
      CMD.GetFirmwareVersion,
      CMD.ReadRegister,
      CMD.WriteRegister,
      CMD.PowerDown,
    ])
      expect(cmds).toContain(c);
  });

  it.each(KINDS)('nfc-list shows $name with its UID, ATQA, SAK (and ATS)', async (kind) => {
    const { pty, emulator } = await emulatorRig();
    emulator.placeCard(kind.make());
    const { code, out } = await runTool(pty.host, 'nfc-list', ['-t', '1']);
    expect(code).toBe(0);
    expect(out).toContain('1 ISO14443A passive target(s) found');
    expect(out).toMatch(new RegExp(`UID \\(NFCID1\\): ${printed(kind.uid).source}`));
    expect(out).toMatch(new RegExp(`ATQA \\(SENS_RES\\): ${printed(kind.atqa).source}`));
    expect(out).toMatch(new RegExp(`SAK \\(SEL_RES\\): ${printed(kind.sak).source}`));
    if (kind.ats) expect(out).toMatch(new RegExp(`ATS: ${printed(kind.ats).source}`));
    else expect(out).not.toContain('ATS:');
  });

  it.each(KINDS)('nfc-poll keeps $name present while it is in the field, and sees it leave', async (kind) => {
    const { pty, emulator } = await emulatorRig();
    emulator.placeCard(kind.make());
    const poll = startTool(pty.host, 'nfc-poll');
    await poll.waitFor('Waiting for card removing');
    expect(poll.output()).toMatch(new RegExp(`UID \\(NFCID1\\): ${printed(kind.uid).source}`));
    expect(emulator.commands()).toContain(CMD.InAutoPoll);
    // Many presence checks go by with the card in the field: nfc-poll still waits.
    await commandsReceived(emulator, poll, 60);
    const recent = emulator.commands().slice(-60);
    expect(recent.filter((c) => c === kind.presenceCheck).length).toBeGreaterThanOrEqual(10);
    expect(poll.child.exitCode).toBeNull();
    expect(poll.output()).not.toContain('done.');
    expect(poll.output()).not.toContain('Target Released');

    emulator.removeCard();
    expect(await poll.exited).toBe(0);
    expect(poll.output()).toContain('nfc_initiator_target_is_present: Target Released');
    expect(poll.output()).toContain('done.');
  });

  it("nfc-mfultralight reads an NTAG213's 45 pages, after GET_VERSION names it", async () => {
    const { dir, pty, emulator } = await emulatorRig();
    const tag = new SimulatedUidTag({ label: 'ntag', model: 'ntag213', uid: hex('04a1b2c3d4e5f6') });
    emulator.placeCard(tag);
    const dump = join(dir, 'dump.bin');
    const { code, out } = await runTool(pty.host, 'nfc-mfultralight', ['r', dump]);
    expect(code, out).toBe(0);
    expect(out).toContain('NTAG Type: NTAG213 (144 user bytes)');
    expect(out).toContain('Done, 45 of 45 pages read (0 pages failed)');
    const bytes = new Uint8Array(await readFile(dump));
    expect(bytes).toHaveLength(180);
    // UID with both check bytes, the internal and lock bytes, the NDEF capability container.
    expect(bytes.subarray(0, 16)).toEqual(hex('04a1b29f c3d4e5f6 04480000 e1101200'));
    expect(bytes.subarray(16, 20)).toEqual(hex('0300fe00'));
    expect(emulator.commands()).toContain(CMD.InCommunicateThru);
  });
});

describe('the stand-alone emulator runner (dist/src/sim/pn532-emulator-main.js)', () => {
  const RUNNER = 'dist/src/sim/pn532-emulator-main.js';

  async function runRunner(args: readonly string[]) {
    const child = spawn(process.execPath, [RUNNER, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    cleanups.push(() => stopProcess(child));
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
    return { code, stdout, stderr };
  }

  it('prints its usage for --help and -h and exits 0', async () => {
    for (const flag of ['--help', '-h']) {
      const r = await runRunner([flag]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^usage: node dist\/src\/sim\/pn532-emulator-main\.js --port PTY/);
      expect(r.stdout).toContain('--card MODEL');
      expect(r.stderr).toBe('');
    }
  });

  it.each([
    { args: [], says: '--port is required' },
    { args: ['--bogus'], says: "Unknown option '--bogus'" },
    { args: ['--port'], says: "Option '--port <value>' argument missing" },
    { args: ['--port', '/nonexistent', 'extra'], says: "Unexpected argument 'extra'" },
    { args: ['--port', '/nonexistent', '--card', 'desfire'], says: '--card must be one of ntag213' },
    { args: ['--port', '/nonexistent', '--uid', 'xyz'], says: '--uid must be hex bytes' },
    { args: ['--port', '/nonexistent', '--uid', '0102030405'], says: '--uid must be 4, 7 or 10 bytes' },
    {
      args: ['--port', '/nonexistent', '--card', 'mifare-classic-1k', '--uid', '04a1b2c3d4e5f6'],
      says: '--uid: mifare-classic-1k UID must be 4 bytes',
    },
  ])('refuses bad options ($says) with a clear message and exit 2', async ({ args, says }) => {
    const r = await runRunner(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`pn532-emulator: ${says}`);
    expect(r.stderr).toContain('usage: ');
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
    expect(r.stdout).toBe('');
  });

  it('says so and exits 1 when the port cannot be opened', async () => {
    const dir = await tempDir();
    const r = await runRunner(['--port', join(dir, 'no-such-pty')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`pn532-emulator: cannot open ${join(dir, 'no-such-pty')}`);
  });

  it('serves libnfc, and places and removes its card on command', async () => {
    const dir = await tempDir();
    const pty = await startPtyPair(dir, 'runner');
    cleanups.push(() => pty.stop());
    const runner = spawn(
      process.execPath,
      [RUNNER, '--port', pty.device, '--card', 'mifare-classic-1k', '--uid', 'deadbeef'],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    cleanups.push(() => stopProcess(runner));
    let said = '';
    const saying = (text: string) =>
      new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (said.includes(text)) resolve();
        };
        runner.stdout.on('data', (d: Buffer) => {
          said += d.toString();
          check();
        });
        runner.once('exit', (code) => reject(new Error(`emulator runner exited with ${code}`)));
        check();
      });
    await saying('PN532 emulator on');
    const listed = await runTool(pty.host, 'nfc-list', ['-t', '1']);
    expect(listed.out).toMatch(/UID \(NFCID1\): de {2}ad {2}be {2}ef/);
    expect(listed.out).toMatch(/SAK \(SEL_RES\): 08/);
    runner.stdin.write('remove\n');
    await saying('card removed');
    expect((await runTool(pty.host, 'nfc-list', ['-v', '-t', '1'])).out).toContain(
      '0 ISO14443A passive target(s) found',
    );
    runner.stdin.write('quit\n');
    expect(await new Promise((resolve) => runner.once('exit', resolve))).toBe(0);
  });
});
