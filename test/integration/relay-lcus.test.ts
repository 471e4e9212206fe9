import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/logger.js';
import { LcusRelay } from '../../src/relay/lcus.js';
import { openSerialLink, type SerialLink } from '../../src/relay/serial-link.js';
import { LcusBoardEmulator } from '../../src/sim/lcus-board.js';
import { requireTool, stopProcess } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

/** The far end of the line: an emulated board and every byte it received. */
interface Board {
  readonly link: SerialLink;
  readonly emulator: LcusBoardEmulator;
  readonly received: number[];
}

let dir: string;
let agentSide: string;
let boardSide: string;
let socat: ChildProcess | undefined;
let board: Board | undefined;
let relay: LcusRelay | undefined;
/** Links the driver opened, so a test can put garbage on the line the driver uses. */
let driverLinks: SerialLink[] = [];

async function startSocat(): Promise<void> {
  socat = spawn('socat', [`pty,raw,echo=0,link=${agentSide}`, `pty,raw,echo=0,link=${boardSide}`], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  await waitFor(() => existsSync(agentSide) && existsSync(boardSide), 'socat to create the pty links');
}

async function stopSocat(): Promise<void> {
  if (socat) await stopProcess(socat);
  socat = undefined;
  await waitFor(() => !existsSync(agentSide), 'socat to remove its links');
}

async function attachBoard(): Promise<Board> {
  const link = await openSerialLink(boardSide, 9600);
  const emulator = new LcusBoardEmulator();
  const received: number[] = [];
  link.onData((bytes) => received.push(...bytes));
  emulator.attach(link);
  board = { link, emulator, received };
  return board;
}

function driver(): LcusRelay {
  relay = new LcusRelay({
    path: agentSide,
    baudRate: 9600,
    channels: { unlock: 1, lock: 8 },
    logger: silentLogger,
    reopenBackoffMs: { initialMs: 50, maxMs: 200 },
    openLink: async (path, baudRate) => {
      const link = await openSerialLink(path, baudRate);
      driverLinks.push(link);
      return link;
    },
  });
  return relay;
}

const hex = (bytes: readonly number[]) => Buffer.from(bytes).toString('hex');

async function receivedHex(b: Board, expected: string): Promise<void> {
  await waitFor(() => hex(b.received).length >= expected.length, `${expected} on the board side`).catch(
    () => {},
  );
  expect(hex(b.received)).toBe(expected);
}

beforeEach(async () => {
  requireTool(
    'socat',
    'install socat (apt-get install socat): the test links the driver and the board emulator through a pty pair',
  );
  dir = mkdtempSync(join(tmpdir(), 'lcus-'));
  agentSide = join(dir, 'agent');
  boardSide = join(dir, 'board');
  driverLinks = [];
  await startSocat();
});

afterEach(async () => {
  await relay?.close();
  relay = undefined;
  await board?.link.close();
  board = undefined;
  if (socat) await stopProcess(socat);
  socat = undefined;
  rmSync(dir, { recursive: true, force: true });
});

describe('LCUS USB relay board over a pty pair', () => {
  it('sends the exact command bytes and the board follows them', async () => {
    const b = await attachBoard();
    const r = driver();
    await r.init();
    await receivedHex(b, 'a00100a1a00800a8');
    await r.set('unlock', true);
    await receivedHex(b, 'a00100a1a00800a8a00101a2');
    expect(b.emulator.states()).toEqual([true, false, false, false, false, false, false, false]);
    await r.set('lock', true);
    await r.set('unlock', false);
    await receivedHex(b, 'a00100a1a00800a8a00101a2a00801a9a00100a1');
    expect(b.emulator.isOn(1)).toBe(false);
    expect(b.emulator.isOn(8)).toBe(true);
    expect(b.emulator.timeline().map((e) => [e.channel, e.on])).toEqual([
      [1, false],
      [8, false],
      [1, true],
      [8, true],
      [1, false],
    ]);
    expect(r.health().state).toBe('ok');
  });

  it('the board resyncs after garbage on the line and ignores a frame with a wrong sum', async () => {
    const b = await attachBoard();
    const r = driver();
    await r.init();
    const line = driverLinks[0];
    if (line === undefined) throw new Error('the driver opened no link');
    // noise, "channel 8 on" with a wrong sum (a9 is right), and a truncated frame (a0 07) …
    await line.write(Uint8Array.of(0xff, 0x00, 0x55, 0xa0, 0x08, 0x01, 0xaa, 0x13, 0xa0, 0x07));
    // … directly followed by a good frame from the driver.
    await r.set('unlock', true);
    await waitFor(() => b.emulator.isOn(1), 'channel 1 to switch on');
    expect(b.emulator.isOn(8)).toBe(false);
    expect(b.emulator.stats()).toMatchObject({ frames: 3, badChannel: 0, badState: 0 });
    expect(b.emulator.stats().badChecksum).toBeGreaterThanOrEqual(2);
    expect(b.emulator.stats().skippedBytes).toBeGreaterThanOrEqual(8);
  });

  it('when the line goes away: relay_failed and down, then it reopens and switches everything off', async () => {
    const first = await attachBoard();
    const r = driver();
    await r.init();
    await receivedHex(first, 'a00100a1a00800a8');
    await first.link.close();
    board = undefined;
    await stopSocat();

    await expect(r.set('unlock', true)).rejects.toMatchObject({ code: 'relay_failed' });
    expect(r.health().state).toBe('down');
    // While the device is missing, a command fails at once rather than hanging.
    await expect(r.set('unlock', true)).rejects.toMatchObject({ code: 'relay_failed' });

    await startSocat();
    const second = await attachBoard();
    await waitFor(() => r.health().state === 'ok', 'the driver to reopen the port');
    // The failed unlock is not replayed: the board is told every channel is off.
    await receivedHex(second, 'a00100a1a00800a8');
    expect(second.emulator.states().every((on) => !on)).toBe(true);
    await r.set('lock', true);
    await receivedHex(second, 'a00100a1a00800a8a00801a9');
  });

  it('close switches every channel off, then commands are refused', async () => {
    const b = await attachBoard();
    const r = driver();
    await r.init();
    await r.set('unlock', true);
    await r.close();
    await receivedHex(b, 'a00100a1a00800a8a00101a2a00100a1a00800a8');
    expect(b.emulator.states().every((on) => !on)).toBe(true);
    await expect(r.set('unlock', true)).rejects.toMatchObject({ code: 'relay_failed' });
    expect(r.health().state).toBe('disabled');
  });
});
