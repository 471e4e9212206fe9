import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { Agent, type AuditSink, type CounterStore, type LockControl } from '../../../src/agent/agent.js';
import { MonotonicFloorClock } from '../../../src/core/clock.js';
import { silentLogger } from '../../../src/core/logger.js';
import type { LockState, Presentation } from '../../../src/core/types.js';
import { JournaledMap } from '../../../src/store/journaled-map.js';
import { grantBy, makeKey, makeRoot, newKeyring } from '../../helpers/keyring-fixtures.js';
import { settle } from '../../helpers/manual-timers.js';
import { useTempDir } from '../store/temp-dir.js';

class FakeLock implements LockControl {
  current: LockState = 'locked';
  readonly actions: string[] = [];
  failNext = false;
  /** Runs when the relay is told to unlock. */
  onUnlock: () => void = () => {};
  state(): LockState {
    return this.current;
  }
  async unlock(cause: string): Promise<LockState> {
    if (this.failNext) {
      this.failNext = false;
      throw new Error('relay gone');
    }
    this.onUnlock();
    this.actions.push(`unlock ${cause}`);
    this.current = 'unlocked';
    return this.current;
  }
  async lock(cause: string): Promise<LockState> {
    this.actions.push(`lock ${cause}`);
    this.current = 'locked';
    return this.current;
  }
  async retract(cause: string): Promise<LockState> {
    this.actions.push(`retract ${cause}`);
    this.current = 'locked';
    return this.current;
  }
}

/** Counter writes that fail at the write(2) or at the fdatasync, or whose fdatasync a test settles. */
type CounterFault = 'write' | 'sync' | 'manual';

function setup(options: { counterFails?: CounterFault; auditFails?: boolean; counters?: CounterStore } = {}) {
  const root = makeRoot();
  const keyring = newKeyring(root);
  const fido = makeKey('phone', 'driver');
  const other = makeKey('phone', 'driver');
  keyring.add(grantBy(root, fido.credential));
  keyring.add(grantBy(root, other.credential));
  const events: Record<string, unknown>[] = [];
  const audit: AuditSink = {
    append: async (e) => {
      if (options.auditFails) throw new Error('disk full');
      events.push({ ...e });
      return e;
    },
  };
  const stored = new Map<string, number>();
  /** Settles the fdatasync of the last staged counter when counterFails is 'manual'. */
  const sync: { settle?: (error?: Error) => void } = {};
  const counters: CounterStore = {
    get: (id) => stored.get(id),
    stage: async (id, v) => {
      await settle(); // a write that takes a few turns of the loop, as a file's does
      if (options.counterFails === 'write') throw new Error('disk gone');
      stored.set(id, v);
      if (options.counterFails === 'sync') return { durable: Promise.reject(new Error('EIO on fdatasync')) };
      if (options.counterFails === 'manual')
        return {
          durable: new Promise<void>((resolve, reject) => {
            sync.settle = (error) => (error ? reject(error) : resolve());
          }),
        };
      return { durable: settle() };
    },
  };
  const lock = new FakeLock();
  const agent = new Agent({
    vehicleId: 'VIN-TEST-0001',
    keyring,
    keyringStore: { persist: async () => {} },
    counters: options.counters ?? counters,
    clock: new MonotonicFloorClock(0),
    audit,
    lock,
    readers: [],
    policy: { rateLimit: { maxDenials: 3, windowMs: 60_000, cooldownMs: 60_000 }, answerDeadlineMs: {} },
    log: silentLogger,
    signAsVehicle: () => new Uint8Array(64),
  });
  const present = (over: Partial<Presentation> = {}): Presentation => ({
    reader: 'nfc0',
    kind: 'phone',
    credentialId: fido.id,
    subject: fido.id,
    intent: 'unlock',
    explicitIntent: true,
    proof: 'valid',
    ...over,
  });
  return { agent, lock, events, stored, present, sync, fido, other };
}

describe('agent loop', () => {
  it('grants, actuates the lock and audits with the reason', async () => {
    const { agent, lock, events, present } = setup();
    const d = await agent.present(present());
    expect(d.granted).toBe(true);
    expect(lock.actions).toHaveLength(1);
    await agent.flush();
    expect(events[0]).toMatchObject({ type: 'access', result: 'granted', reader: 'nfc0' });
    const denied = await agent.present(present({ proof: 'invalid' }));
    expect(denied).toMatchObject({ granted: false, code: 'bad_proof' });
    expect(lock.actions).toHaveLength(1);
    await agent.flush();
    expect(events.at(-1)).toMatchObject({ type: 'access', result: 'denied', code: 'bad_proof' });
  });

  it('prepares audit records after the relay is told, keeping their order', async () => {
    const { agent, lock, events, present } = setup();
    let appendedAtUnlock = -1;
    lock.onUnlock = () => {
      appendedAtUnlock = events.length;
      // As src/app/start.ts wires it: the lock controller's state change is audited from inside unlock().
      agent.audit({ type: 'lock', state: 'unlocking' });
    };
    expect((await agent.present(present())).granted).toBe(true);
    expect(appendedAtUnlock).toBe(0);
    await agent.flush();
    expect(events.map((e) => e.type)).toEqual(['access', 'lock']);
  });

  it('audits a missed answer deadline with the deadline and the measured lateness', async () => {
    const { agent, events, present } = setup();
    const late = await agent.present(
      present({ proof: 'timeout', answerMs: 1730, deadlineMs: 600, lateMs: 1130 }),
    );
    expect(late).toMatchObject({ granted: false, code: 'timeout' });
    // No answer at all: the lateness is how long the reader waited past the deadline.
    await agent.present(present({ proof: 'timeout', credentialId: undefined, deadlineMs: 600, lateMs: 500 }));
    // In time: the deadline is not repeated in every record.
    await agent.present(present({ answerMs: 120, deadlineMs: 600 }));
    await agent.flush();
    const access = events.filter((e) => e.type === 'access');
    expect(access[0]).toMatchObject({ code: 'timeout', answerMs: 1730, deadlineMs: 600, lateMs: 1130 });
    expect(access[1]).toMatchObject({ code: 'timeout', deadlineMs: 600, lateMs: 500 });
    expect(access[1]).not.toHaveProperty('answerMs');
    expect(access[2]).toMatchObject({ result: 'granted', answerMs: 120 });
    expect(access[2]).not.toHaveProperty('lateMs');
  });

  it('lets only one of two concurrent presentations with the same counter through', async () => {
    const { agent, lock, present } = setup();
    const [a, b] = await Promise.all([
      agent.present(present({ counter: 5 })),
      agent.present(present({ counter: 5 })),
    ]);
    expect([a.granted, b.granted].sort()).toEqual([false, true]);
    expect(lock.actions).toHaveLength(1);
    expect(a.granted ? b : a).toMatchObject({ code: 'clone_suspected' });
  });

  it('refuses a grant whose counter cannot be written, before the relay', async () => {
    const { agent, lock, events, present } = setup({ counterFails: 'write' });
    const d = await agent.present(present({ counter: 9 }));
    expect(d).toMatchObject({ granted: false, code: 'state_io' });
    expect(lock.actions).toHaveLength(0);
    await agent.flush();
    expect(events.at(-1)).toMatchObject({ type: 'access', result: 'denied', code: 'state_io' });
  });

  it('retracts a grant whose counter cannot be made durable: the unlock is cut and the lock locked', async () => {
    const { agent, lock, events, present } = setup({ counterFails: 'sync' });
    const d = await agent.present(present({ counter: 9 }));
    expect(d).toMatchObject({ granted: false, code: 'state_io' });
    const id = present().subject;
    expect(lock.actions).toEqual([`unlock nfc0:${id}`, `retract nfc0:${id}:retracted`]);
    expect(lock.current).toBe('locked');
    await agent.flush();
    expect(events.map((e) => [e.type, e.result ?? e.code])).toEqual([
      ['access', 'granted'],
      ['access.retracted', 'state_io'],
    ]);
    // A lock is never retracted: locking is safe whatever the disk does.
    const locking = await agent.present(present({ counter: 10, intent: 'lock' }));
    expect(locking).toMatchObject({ granted: false, code: 'state_io' });
    expect(lock.actions.at(-1)).toBe(`lock nfc0:${id}`);
  });

  it('commands the relay once the counter is written, and answers once it is fsynced', async () => {
    const { agent, lock, stored, present, sync } = setup({ counterFails: 'manual' });
    let settled = false;
    const decision = agent.present(present({ counter: 9 })).then((d) => {
      settled = true;
      return d;
    });
    await vi.waitFor(() => expect(lock.actions).toHaveLength(1));
    // The counter was written before the relay was told; the fdatasync is still running.
    expect(stored.get(present().subject)).toBe(9);
    await settle(); // everything that can run without the fdatasync has run
    expect(settled).toBe(false);
    sync.settle?.();
    expect(await decision).toMatchObject({ granted: true });
    expect(lock.actions).toHaveLength(1);
  });

  it('keeps working when the audit log fails, and when the relay fails', async () => {
    const { agent, lock, present } = setup({ auditFails: true });
    expect((await agent.present(present())).granted).toBe(true);
    lock.failNext = true;
    expect((await agent.present(present())).granted).toBe(true);
    await agent.flush();
    expect((await agent.present(present({ intent: 'lock' }))).granted).toBe(true);
    expect(lock.current).toBe('locked');
  });

  it('audits a relay that fails while the counter is being fsynced, without an unhandled rejection', async () => {
    const { agent, lock, events, present, sync } = setup({ counterFails: 'manual' });
    lock.failNext = true;
    const decision = agent.present(present({ counter: 12 }));
    await vi.waitFor(() => expect(sync.settle).toBeDefined());
    // The relay's rejection is now waiting while the fsync runs past a few turns of the loop.
    await settle();
    sync.settle?.();
    expect(await decision).toMatchObject({ granted: true });
    await agent.flush();
    expect(events.map((e) => e.type)).toEqual(['access', 'relay.failed']);
  });

  it('resolves toggle from the lock state', async () => {
    const { agent, lock, present } = setup();
    await agent.present(present({ intent: 'toggle' }));
    expect(lock.current).toBe('unlocked');
    await agent.present(present({ intent: 'toggle' }));
    expect(lock.current).toBe('locked');
  });

  it('locks out the credential whose proofs fail, audits it keyed on that credential, and no other', async () => {
    const { agent, events, present, other } = setup();
    for (let i = 0; i < 3; i++)
      expect(await agent.present(present({ proof: 'invalid' }))).toMatchObject({ code: 'bad_proof' });
    expect(await agent.present(present())).toMatchObject({ granted: false, code: 'rate_limited' });
    expect(await agent.present(present({ reader: 'ble0', credentialId: other.id }))).toMatchObject({
      granted: true,
    });
    await agent.flush();
    const limit = events.filter((e) => e.type === 'rate_limited');
    expect(limit).toEqual([
      expect.objectContaining({ scope: 'credential', credentialId: present().credentialId, failures: 3 }),
    ]);
    expect(agent.status().rateLimits).toMatchObject({ lockedOutCredentials: 1, credentialLockouts: 1 });
  });

  it('shows the lockout with its end, and lifts every limit on clearRateLimits, audited', async () => {
    const { agent, events, present } = setup();
    for (let i = 0; i < 3; i++) await agent.present(present({ proof: 'invalid' }));
    const view = agent.rateLimits();
    expect(view.policy).toEqual({
      maxDenials: 3,
      windowMs: 60_000,
      cooldownMs: 60_000,
      maxUnknownCards: 10,
      uidThrottleMs: 300_000,
    });
    expect(view.active.credentials.map((c) => c.credentialId)).toEqual([present().credentialId]);
    // Locked out for the cooldown from the third failure, a moment before `now`.
    const left = (view.active.credentials[0]?.until ?? 0) - view.now;
    expect(left).toBeGreaterThan(50_000);
    expect(left).toBeLessThanOrEqual(60_000);
    expect(await agent.present(present())).toMatchObject({ code: 'rate_limited' });

    expect(agent.clearRateLimits('test')).toEqual({ credentials: 1, uidThrottle: false });
    expect(agent.rateLimits().active).toEqual({ credentials: [], more: 0 });
    expect(await agent.present(present())).toMatchObject({ granted: true });
    await agent.flush();
    expect(events.filter((e) => e.type === 'rate_limits.cleared')).toEqual([
      expect.objectContaining({ cause: 'test', credentials: 1, uidThrottle: false }),
    ]);
  });

  it('lets no amount of noise refuse a valid key, and audits noise as one summary per reader and code', async () => {
    const { agent, events, present } = setup();
    await agent.start();
    for (let i = 0; i < 50; i++) {
      await agent.present(present({ credentialId: undefined, subject: `phone:junk${i}` }));
      await agent.present(present({ credentialId: undefined, proof: 'malformed' }));
    }
    expect(await agent.present(present())).toMatchObject({ granted: true });
    await agent.stop();
    const access = events.filter((e) => e.type === 'access');
    // One full record per code, the first; the rest counted into one summary per code.
    expect(access.filter((e) => e.result === 'denied').map((e) => e.code)).toEqual([
      'unknown_credential',
      'malformed',
    ]);
    const summaries = events.filter((e) => e.type === 'access.summary');
    expect(summaries).toEqual([
      expect.objectContaining({ reader: 'nfc0', code: 'unknown_credential', count: 49 }),
      expect.objectContaining({ reader: 'nfc0', code: 'malformed', count: 49 }),
    ]);
    expect(events.some((e) => e.type === 'rate_limited')).toBe(false);
    expect(agent.status().rateLimits).toMatchObject({
      noiseDenials: 100,
      noiseSummarised: 98,
      lockedOutCredentials: 0,
    });
  });
});

describe('agent counters', () => {
  const tempDir = useTempDir('agent-counters');

  it('has the counter written to its journal when the relay is told, durable when it answers', async () => {
    const base = join(tempDir(), 'counters');
    const map = await JournaledMap.open<number>(base);
    const { agent, lock, present } = setup({ counters: map });
    const journalAtUnlock: string[] = [];
    lock.onUnlock = () => journalAtUnlock.push(readFileSync(`${base}.journal`, 'utf8'));
    try {
      expect(await agent.present(present({ counter: 41 }))).toMatchObject({ granted: true });
    } finally {
      await map.close();
    }
    expect(journalAtUnlock).toHaveLength(1);
    expect(journalAtUnlock[0]).toContain(JSON.stringify({ k: present().subject, v: 41 }));
    const reopened = await JournaledMap.open<number>(base);
    expect(reopened.get(present().subject ?? '')).toBe(41);
    await reopened.close();
  });

  it('honours a durable counter advanced by another writer (an owner FIDO authorisation)', async () => {
    const { agent, stored, present } = setup();
    expect((await agent.present(present({ counter: 5 }))).granted).toBe(true);
    // the enrollment desk records the owner key's counter 10 straight into the store
    stored.set(present().credentialId ?? '', 10);
    expect(await agent.present(present({ counter: 7 }))).toMatchObject({
      granted: false,
      code: 'clone_suspected',
    });
    expect((await agent.present(present({ counter: 11 }))).granted).toBe(true);
  });
});
