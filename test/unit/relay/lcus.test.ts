import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/core/logger.js';
import { LcusRelay, lcusCommand } from '../../../src/relay/lcus.js';
import type { SerialLink } from '../../../src/relay/serial-link.js';
import { LcusBoardEmulator } from '../../../src/sim/lcus-board.js';
import { ManualTimers, settle } from '../../helpers/manual-timers.js';

const hex = (bytes: Uint8Array | readonly number[]) => Buffer.from(bytes).toString('hex');

describe('lcusCommand', () => {
  it('encodes A0, channel, state and the sum modulo 256', () => {
    expect(hex(lcusCommand(1, true))).toBe('a00101a2');
    expect(hex(lcusCommand(1, false))).toBe('a00100a1');
    expect(hex(lcusCommand(2, true))).toBe('a00201a3');
    expect(hex(lcusCommand(8, false))).toBe('a00800a8');
    expect(hex(lcusCommand(0x60, true))).toBe('a0600101');
  });

  it('refuses channels the wire format cannot carry', () => {
    for (const bad of [0, -1, 256, 1.5])
      expect(() => lcusCommand(bad, true)).toThrow(expect.objectContaining({ code: 'relay_failed' }));
  });
});

describe('LcusBoardEmulator', () => {
  it('obeys frames split across reads', () => {
    const board = new LcusBoardEmulator();
    for (const byte of [0xa0, 0x03, 0x01, 0xa4]) board.feed(Uint8Array.of(byte));
    expect(board.isOn(3)).toBe(true);
    expect(board.timeline().map((e) => [e.channel, e.on])).toEqual([[3, true]]);
  });

  it('hunts for A0 through garbage and recovers a frame that follows a broken one', () => {
    const board = new LcusBoardEmulator();
    // garbage, a truncated frame (A0 07), then a good frame for channel 1
    board.feed(Uint8Array.of(0xff, 0x13, 0x37, 0xa0, 0x07, 0xa0, 0x01, 0x01, 0xa2));
    expect(board.states()).toEqual([true, false, false, false, false, false, false, false]);
    expect(board.stats()).toEqual({ frames: 1, skippedBytes: 5, badChecksum: 1, badChannel: 0, badState: 0 });
  });

  it('ignores a wrong sum, a channel it lacks and a state other than 0 or 1', () => {
    const board = new LcusBoardEmulator({ channels: 4 });
    board.feed(Uint8Array.of(0xa0, 0x01, 0x01, 0xa3)); // sum should be a2
    board.feed(Uint8Array.of(0xa0, 0x05, 0x01, 0xa6)); // channel 5 on a 4-channel board
    board.feed(Uint8Array.of(0xa0, 0x02, 0x02, 0xa4)); // state 2
    board.feed(Uint8Array.of(0xa0, 0x00, 0x01, 0xa1)); // channel 0
    expect(board.states()).toEqual([false, false, false, false]);
    expect(board.stats()).toMatchObject({ frames: 0, badChannel: 2, badState: 1 });
    expect(board.stats().badChecksum).toBeGreaterThanOrEqual(1);
  });
});

/** A link in memory whose writes can be made to fail, for the driver's failure paths. */
class FakeLink implements SerialLink {
  readonly written: number[] = [];
  failWrites = false;
  closed = false;
  private closeListener: ((err: Error | undefined) => void) | undefined;
  constructor(private readonly board: LcusBoardEmulator) {}
  async write(bytes: Uint8Array): Promise<void> {
    if (this.failWrites) throw new Error('EIO: i/o error, write');
    this.written.push(...bytes);
    this.board.feed(bytes);
  }
  writeSync(bytes: Uint8Array): void {
    this.written.push(...bytes);
    this.board.feed(bytes);
  }
  onData(): () => void {
    return () => {};
  }
  onClose(listener: (err: Error | undefined) => void): void {
    this.closeListener = listener;
  }
  /** The device vanishing (USB unplugged). */
  vanish(): void {
    this.closed = true;
    this.closeListener?.(new Error('device disconnected'));
  }
  async close(): Promise<void> {
    this.closed = true;
  }
}

function rig() {
  const timers = new ManualTimers();
  const board = new LcusBoardEmulator();
  const links: FakeLink[] = [];
  const opens: number[] = [];
  let deviceMissing = false;
  const relay = new LcusRelay({
    path: '/dev/ttyUSB-test',
    channels: { unlock: 1, lock: 2 },
    logger: silentLogger,
    timers,
    reopenBackoffMs: { initialMs: 100, maxMs: 400 },
    openLink: async () => {
      opens.push(timers.now());
      if (deviceMissing) throw new Error('ENOENT: no such file or directory');
      const link = new FakeLink(board);
      links.push(link);
      return link;
    },
  });
  return {
    timers,
    board,
    links,
    opens,
    relay,
    setDeviceMissing: (missing: boolean) => {
      deviceMissing = missing;
    },
  };
}

describe('LcusRelay', () => {
  it('init switches every wired channel off; set sends one frame', async () => {
    const r = rig();
    await r.relay.init();
    expect(hex(r.links[0]?.written ?? [])).toBe('a00100a1a00200a2');
    await r.relay.set('unlock', true);
    expect(hex(r.links[0]?.written.slice(8) ?? [])).toBe('a00101a2');
    expect(r.board.isOn(1)).toBe(true);
    expect(r.relay.health().state).toBe('ok');
  });

  it('a failing write rejects with relay_failed, goes down, and reopens with backoff to resend the wanted states', async () => {
    const r = rig();
    await r.relay.init();
    await r.relay.set('unlock', true);
    const first = r.links[0];
    if (first === undefined) throw new Error('no link');
    first.failWrites = true;
    await expect(r.relay.set('unlock', false)).rejects.toMatchObject({ code: 'relay_failed' });
    expect(r.relay.health().state).toBe('down');
    expect(first.closed).toBe(true);
    r.setDeviceMissing(true);
    await r.timers.advance(1000);
    // Attempts at 100, then +200, +400, +400 … after the failure at 0.
    expect(r.opens.slice(1)).toEqual([100, 300, 700]);
    expect(r.relay.health().state).toBe('down');
    r.setDeviceMissing(false);
    await r.timers.advance(400);
    expect(r.relay.health().state).toBe('ok');
    // The board came back not knowing anything: it is told the wanted state of every channel.
    expect(hex(r.links[1]?.written ?? [])).toBe('a00100a1a00200a2');
    expect(r.board.isOn(1)).toBe(false);
  });

  it('a command while the port is down tries to open it at once', async () => {
    const r = rig();
    await r.relay.init();
    r.links[0]?.vanish();
    expect(r.relay.health().state).toBe('down');
    await r.relay.set('lock', true);
    expect(r.opens).toEqual([0, 0]);
    // Reopened after a failure: the wanted state of every channel, then the command itself.
    expect(hex(r.links[1]?.written ?? [])).toBe('a00100a1a00201a3a00201a3');
    expect(r.relay.health().state).toBe('ok');
    await r.timers.advance(10_000);
    expect(r.opens).toHaveLength(2);
  });

  it('allOff never rejects, even with the device gone', async () => {
    const r = rig();
    await r.relay.init();
    r.setDeviceMissing(true);
    r.links[0]?.vanish();
    await expect(r.relay.allOff()).resolves.toBeUndefined();
    await r.relay.close();
    await settle();
    expect(r.relay.health().state).toBe('disabled');
    await expect(r.relay.set('unlock', true)).rejects.toMatchObject({ code: 'relay_failed' });
  });

  it('allOffSync writes the off frames synchronously', async () => {
    const r = rig();
    await r.relay.init();
    await r.relay.set('unlock', true);
    await r.relay.set('lock', true);
    r.relay.allOffSync();
    expect(r.board.states().slice(0, 2)).toEqual([false, false]);
  });
});

describe('relay driver configuration', () => {
  it('refuses two relays on one board channel', () => {
    expect(
      () =>
        new LcusRelay({
          path: '/dev/null',
          channels: { unlock: 3, lock: 3 },
          logger: silentLogger,
          openLink: () => Promise.reject(new Error('not opened')),
        }),
    ).toThrow(expect.objectContaining({ code: 'config_invalid' }));
  });
});
