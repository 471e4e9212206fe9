import { describe, expect, it } from 'vitest';
import { Agent, type AuditSink, type CounterStore, type LockControl } from '../../../src/agent/agent.js';
import { MonotonicFloorClock } from '../../../src/core/clock.js';
import { silentLogger } from '../../../src/core/logger.js';
import type { LockState, Presentation } from '../../../src/core/types.js';
import { grantBy, makeKey, makeRoot, newKeyring } from '../../helpers/keyring-fixtures.js';

class FakeLock implements LockControl {
  current: LockState = 'locked';
  readonly actions: string[] = [];
  failNext = false;
  state(): LockState {
    return this.current;
  }
  async unlock(cause: string): Promise<LockState> {
    if (this.failNext) {
      this.failNext = false;
      throw new Error('relay gone');
    }
    this.actions.push(`unlock ${cause}`);
    this.current = 'unlocked';
    return this.current;
  }
  async lock(cause: string): Promise<LockState> {
    this.actions.push(`lock ${cause}`);
    this.current = 'locked';
    return this.current;
  }
}

function setup(options: { counterFails?: boolean; auditFails?: boolean } = {}) {
  const root = makeRoot();
  const keyring = newKeyring(root);
  const fido = makeKey('phone', 'driver');
  keyring.add(grantBy(root, fido.credential));
  const events: Record<string, unknown>[] = [];
  const audit: AuditSink = {
    append: async (e) => {
      if (options.auditFails) throw new Error('disk full');
      events.push({ ...e });
      return e;
    },
  };
  const stored = new Map<string, number>();
  const counters: CounterStore = {
    get: (id) => stored.get(id),
    set: async (id, v) => {
      await new Promise((r) => setTimeout(r, 5));
      if (options.counterFails) throw new Error('disk gone');
      stored.set(id, v);
    },
  };
  const lock = new FakeLock();
  const agent = new Agent({
    vehicleId: 'VIN-TEST-0001',
    keyring,
    keyringStore: { persist: async () => {} },
    counters,
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
  return { agent, lock, events, stored, present };
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

  it('refuses a grant whose counter cannot be made durable', async () => {
    const { agent, lock, present } = setup({ counterFails: true });
    const d = await agent.present(present({ counter: 9 }));
    expect(d).toMatchObject({ granted: false, code: 'reader_error' });
    expect(lock.actions).toHaveLength(0);
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

  it('resolves toggle from the lock state', async () => {
    const { agent, lock, present } = setup();
    await agent.present(present({ intent: 'toggle' }));
    expect(lock.current).toBe('unlocked');
    await agent.present(present({ intent: 'toggle' }));
    expect(lock.current).toBe('locked');
  });

  it('rate-limits a reader after repeated denials, audits it, and reports it', async () => {
    const { agent, events, present } = setup();
    for (let i = 0; i < 3; i++) await agent.present(present({ credentialId: undefined }));
    expect(await agent.present(present())).toMatchObject({ granted: false, code: 'rate_limited' });
    await agent.flush();
    expect(events.some((e) => e.type === 'rate_limited' && e.reader === 'nfc0')).toBe(true);
    expect(agent.readerContext(silentLogger).isRateLimited('nfc0')).toBe(true);
    expect(agent.readerContext(silentLogger).isRateLimited('ble0')).toBe(false);
  });
});

describe('agent counters', () => {
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
