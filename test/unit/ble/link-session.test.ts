import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { type BleCloseReason, MAX_WRITE_BYTES } from '../../../src/ble/channel.js';
import { Session, type SessionOwner } from '../../../src/ble/link-session.js';
import { AgentError } from '../../../src/core/errors.js';

/**
 * One session of the BLE central as the channel the reader holds, without D-Bus: what it
 * replays, what it refuses, and when its timers end it. The owner stands in for the link.
 */
const WRITE_TIMEOUT_MS = 300;

function open() {
  const ends: { reason: BleCloseReason; cooldownMs: number }[] = [];
  const cooldowns: number[] = [];
  const state = { proven: 0, extendAllowed: true };
  const owner: SessionOwner = {
    end: async (session, reason, cooldownMs) => {
      ends.push({ reason, cooldownMs });
      session.finish(reason);
    },
    cooldown: (ms) => cooldowns.push(ms),
    proven: () => {
      state.proven += 1;
    },
    extend: () => state.extendAllowed,
  };
  const session = new Session('AA:BB:CC:DD:EE:01', '/org/bluez/hci0/dev_AA', WRITE_TIMEOUT_MS, owner);
  return { session, ends, cooldowns, state };
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'resolved';
  } catch (err) {
    return err instanceof AgentError ? err.code : 'not an AgentError';
  }
}

describe('BLE central session (link-session.ts)', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('replays notifications that came before the first listener, at most 64 of them', () => {
    const { session } = open();
    for (let i = 0; i < 70; i += 1) session.deliver(Buffer.from([i]));
    const got: number[] = [];
    session.onData((chunk) => got.push(chunk[0] ?? -1));
    expect(got).toEqual(Array.from({ length: 64 }, (_, i) => i));
    session.deliver(Buffer.from([99]));
    expect(got.at(-1)).toBe(99);
  });

  it.each([
    ['empty', 0, 'frame_too_large'],
    ['one byte', 1, 'resolved'],
    ['the ATT limit', MAX_WRITE_BYTES, 'resolved'],
    ['past the ATT limit', MAX_WRITE_BYTES + 1, 'frame_too_large'],
  ])('a write of %s (%i bytes): %s', async (_name, length, code) => {
    const { session } = open();
    const written: number[] = [];
    session.writer = async (bytes) => written.push(bytes.length);
    expect(await codeOf(session.write(new Uint8Array(length)))).toBe(code);
    expect(written).toEqual(code === 'resolved' ? [length] : []);
  });

  it('refuses writes before it is connected and after it ended', async () => {
    const { session } = open();
    expect(await codeOf(session.write(Uint8Array.of(1)))).toBe('reader_error');
    session.writer = async () => undefined;
    await session.close();
    expect(await codeOf(session.write(Uint8Array.of(1)))).toBe('reader_error');
  });

  it('bounds a write by the call timeout', async () => {
    const { session } = open();
    session.writer = () => new Promise(() => {});
    const pending = codeOf(session.write(Uint8Array.of(1)));
    await vi.advanceTimersByTimeAsync(WRITE_TIMEOUT_MS);
    expect(await pending).toBe('reader_timeout');
  });

  it('a pending step fails as soon as the session ends, not at its timeout', async () => {
    const { session } = open();
    const pending = codeOf(session.guard(new Promise(() => {}), 60_000, 'connect'));
    session.abort('disconnected');
    expect(await pending).toBe('reader_error');
  });

  it('tells each close listener once, with the reason, even one added after the end', async () => {
    const owned = open();
    const reasons: BleCloseReason[] = [];
    owned.session.onClose((r) => reasons.push(r));
    owned.session.abort('vanished');
    owned.session.abort('disconnected');
    owned.session.onClose((r) => reasons.push(r));
    expect(reasons).toEqual(['vanished', 'vanished']);
    expect(owned.session.closed).toBe(true);
  });

  it('close() holds the device back for its cooldown, even when the session had ended already', async () => {
    const owned = open();
    owned.session.abort('disconnected');
    await owned.session.close({ cooldownMs: 5000 });
    expect(owned.cooldowns).toEqual([5000]);
    expect(owned.ends.at(-1)).toEqual({ reason: 'closed', cooldownMs: 5000 });
  });

  it('drops an unproven session at its deadline; a proven one stays', async () => {
    const unproven = open();
    let expired = 0;
    unproven.session.armUnproven(1000, () => {
      expired += 1;
    });
    await vi.advanceTimersByTimeAsync(999);
    expect(unproven.session.closed).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(unproven.ends).toEqual([{ reason: 'unproven-timeout', cooldownMs: 0 }]);
    expect(expired).toBe(1);

    const proven = open();
    proven.session.armUnproven(1000, () => {});
    proven.session.markProven();
    proven.session.markProven();
    await vi.advanceTimersByTimeAsync(5000);
    expect(proven.session.closed).toBe(false);
    expect(proven.state.proven).toBe(1);
  });

  it('extendTurn moves both the unproven deadline and the session bound, when the link allows it', async () => {
    const owned = open();
    owned.session.armUnproven(1000, () => {});
    owned.session.armTimeout(2000);
    expect(owned.session.extendTurn(30_000)).toBe(true);
    await vi.advanceTimersByTimeAsync(29_999);
    expect(owned.session.closed).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(owned.ends).toEqual([{ reason: 'unproven-timeout', cooldownMs: 0 }]);

    const refused = open();
    refused.state.extendAllowed = false;
    refused.session.armUnproven(1000, () => {});
    expect(refused.session.extendTurn(30_000)).toBe(false);
    await vi.advanceTimersByTimeAsync(1000);
    expect(refused.ends).toEqual([{ reason: 'unproven-timeout', cooldownMs: 0 }]);
  });

  it('extendTurn moves the session bound of a proven session too (an owner approving for minutes)', async () => {
    const owner = open();
    owner.session.armTimeout(15_000);
    owner.session.markProven();
    owner.state.extendAllowed = false; // a proven session needs no extension slot
    expect(owner.session.extendTurn(120_000)).toBe(true);
    await vi.advanceTimersByTimeAsync(120_000 + WRITE_TIMEOUT_MS - 1);
    expect(owner.session.closed).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(owner.ends).toEqual([{ reason: 'session-timeout', cooldownMs: 0 }]);
  });

  it('ends at the session bound', async () => {
    const owned = open();
    owned.session.armTimeout(15_000);
    await vi.advanceTimersByTimeAsync(15_000);
    expect(owned.ends).toEqual([{ reason: 'session-timeout', cooldownMs: 0 }]);
  });
});
