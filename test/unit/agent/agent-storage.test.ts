import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  Agent,
  type AuditSink,
  type CounterStore,
  type KeyringPersistence,
  type LockControl,
} from '../../../src/agent/agent.js';
import { MonotonicFloorClock } from '../../../src/core/clock.js';
import { AgentError } from '../../../src/core/errors.js';
import { silentLogger } from '../../../src/core/logger.js';
import type { LockState, Presentation } from '../../../src/core/types.js';
import { KeyringStore } from '../../../src/store/keyring-store.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  newKeyring,
  revokeBy,
  type TestKey,
} from '../../helpers/keyring-fixtures.js';
import { settle } from '../../helpers/manual-timers.js';
import { fillUp, freeUp, mountTmpfs, type ScratchFs } from '../../helpers/scratch-fs.js';
import { waitFor } from '../../helpers/wait.js';

/**
 * The agent when the state disk fails: a counter write that does not finish in time, audit
 * appends the disk does not take, keyring changes that cannot be stored.
 */

class FakeLock implements LockControl {
  current: LockState = 'locked';
  readonly actions: string[] = [];
  state(): LockState {
    return this.current;
  }
  async unlock(cause: string): Promise<LockState> {
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

/** An audit sink whose appends wait until the test settles them. */
class HeldAudit implements AuditSink {
  readonly written: Record<string, unknown>[] = [];
  private readonly held: { event: Record<string, unknown>; settle: (ok: boolean) => void }[] = [];
  hold = true;
  fail = false;

  append(event: { readonly type: string }): Promise<unknown> {
    if (this.fail) return Promise.reject(new AgentError('state_io', 'cannot append: ENOSPC'));
    if (!this.hold) {
      this.written.push({ ...event });
      return Promise.resolve(event);
    }
    return new Promise((resolve, reject) => {
      this.held.push({
        event: { ...event },
        settle: (ok) => {
          if (!ok) return reject(new AgentError('state_io', 'cannot append: EIO'));
          this.written.push({ ...event });
          resolve(event);
        },
      });
    });
  }

  get waiting(): number {
    return this.held.length;
  }

  release(ok = true): void {
    this.hold = false;
    for (const h of this.held.splice(0)) h.settle(ok);
  }
}

interface SetupOptions {
  readonly counters?: CounterStore;
  readonly audit?: AuditSink;
  readonly keyringStore?: KeyringPersistence;
  readonly maxAuditInFlight?: number;
  readonly keyring?: ReturnType<typeof newKeyring>;
  readonly root?: TestKey;
}

function setup(options: SetupOptions = {}) {
  const root = options.root ?? makeRoot();
  const keyring = options.keyring ?? newKeyring(root);
  const fido = makeKey('phone', 'driver');
  const phone = makeKey('phone', 'driver');
  keyring.merge([grantBy(root, fido.credential), grantBy(root, phone.credential)]);
  const events: Record<string, unknown>[] = [];
  const audit: AuditSink = options.audit ?? {
    append: async (e) => {
      events.push({ ...e });
      return e;
    },
  };
  const stuck: CounterStore = {
    get: () => undefined,
    stage: () => new Promise(() => {}), // a write the frozen disk never finishes
  };
  const lock = new FakeLock();
  const agent = new Agent({
    vehicleId: 'VIN-TEST-0001',
    keyring,
    keyringStore: options.keyringStore ?? { persist: async () => {} },
    counters: options.counters ?? stuck,
    clock: new MonotonicFloorClock(0),
    audit,
    lock,
    readers: [],
    policy: { rateLimit: { maxDenials: 100, windowMs: 60_000, cooldownMs: 60_000 }, answerDeadlineMs: {} },
    log: silentLogger,
    signAsVehicle: () => new Uint8Array(64),
    stateDeadlines: { counterWriteMs: 30, counterSyncMs: 60 },
    ...(options.maxAuditInFlight !== undefined ? { maxAuditInFlight: options.maxAuditInFlight } : {}),
  });
  const presentation = (key: TestKey, over: Partial<Presentation> = {}): Presentation => ({
    reader: 'nfc0',
    kind: 'phone',
    credentialId: key.id,
    subject: key.id,
    intent: 'unlock',
    explicitIntent: true,
    proof: 'valid',
    ...over,
  });
  return { agent, lock, events, keyring, root, fido, phone, presentation };
}

describe('agent: a signature counter the disk does not take in time', () => {
  it('denies the FIDO tap with state_io, leaves the relay alone, says why; a key without a counter opens', async () => {
    const { agent, lock, events, fido, phone, presentation } = setup();
    const denied = await agent.present(presentation(fido, { counter: 7 }));
    expect(denied).toMatchObject({ granted: false, code: 'state_io' });
    expect(lock.actions).toEqual([]);
    await agent.flush();
    expect(events.at(-1)).toMatchObject({
      type: 'access',
      result: 'denied',
      code: 'state_io',
      detail: expect.stringMatching(/not written within 30 ms/),
    });
    // The same stuck disk: a credential without a counter never waits on it.
    expect(await agent.present(presentation(phone))).toMatchObject({ granted: true });
    expect(lock.actions).toEqual([`unlock nfc0:${phone.id}`]);
  });

  it('withdraws a grant whose written counter is not fsynced in time', async () => {
    const counters: CounterStore = {
      get: () => undefined,
      stage: async () => ({ durable: new Promise<void>(() => {}) }),
    };
    const { agent, lock, events, fido, presentation } = setup({ counters });
    expect(await agent.present(presentation(fido, { counter: 7 }))).toMatchObject({
      granted: false,
      code: 'state_io',
    });
    expect(lock.actions).toEqual([`unlock nfc0:${fido.id}`, `retract nfc0:${fido.id}:retracted`]);
    await agent.flush();
    expect(events.find((e) => e.type === 'access.retracted')).toMatchObject({
      code: 'state_io',
      detail: expect.stringMatching(/not fsynced within 60 ms/),
    });
  });
});

describe('agent: audit appends the disk does not take', () => {
  it('keeps at most maxAuditInFlight waiting, counts the rest, and records the loss once writes resume', async () => {
    const audit = new HeldAudit();
    const { agent, phone, presentation } = setup({ audit, maxAuditInFlight: 5 });
    for (let i = 0; i < 20; i++) expect((await agent.present(presentation(phone))).granted).toBe(true);
    await vi.waitFor(() => expect(audit.waiting).toBe(5));
    expect(agent.auditDrops()).toMatchObject({ dropped: 15, total: 15, inFlight: 5 });
    expect(agent.auditDrops().since).toBeGreaterThan(0);
    audit.release();
    await agent.flush();
    const dropped = audit.written.filter((e) => e.type === 'audit.dropped');
    expect(dropped).toEqual([
      expect.objectContaining({
        code: 'state_io',
        count: 15,
        types: { access: 15 },
        since: expect.any(String),
      }),
    ]);
    expect(audit.written.filter((e) => e.type === 'access')).toHaveLength(5);
    expect(agent.auditDrops()).toMatchObject({ dropped: 0, total: 15, inFlight: 0 });
  });

  it('counts appends that fail (a full disk) and records them after the first that succeeds', async () => {
    const audit = new HeldAudit();
    audit.hold = false;
    audit.fail = true;
    const { agent, phone, presentation } = setup({ audit });
    for (let i = 0; i < 3; i++) await agent.present(presentation(phone));
    await agent.flush();
    expect(agent.auditDrops()).toMatchObject({ dropped: 3, inFlight: 0 });
    audit.fail = false;
    await agent.present(presentation(phone));
    await agent.flush();
    expect(audit.written.map((e) => e.type)).toEqual(['access', 'audit.dropped']);
    expect(audit.written[1]).toMatchObject({ count: 3 });
  });
});

describe('agent: the record of lost audit events', () => {
  it('keeps the count when the audit.dropped record itself cannot be written, and records it later', async () => {
    const written: Record<string, unknown>[] = [];
    let failing = new Set(['access', 'audit.dropped']);
    const audit: AuditSink = {
      append: async (e) => {
        if (failing.has(e.type)) throw new AgentError('state_io', 'cannot append: EIO');
        written.push({ ...e });
        return e;
      },
    };
    const { agent, phone, presentation } = setup({ audit });
    await agent.present(presentation(phone));
    await agent.present(presentation(phone));
    await agent.flush();
    expect(agent.auditDrops().dropped).toBe(2);
    failing = new Set(['audit.dropped']);
    await agent.present(presentation(phone));
    await agent.flush();
    expect(agent.auditDrops()).toMatchObject({ dropped: 2, total: 2 });
    failing = new Set();
    await agent.present(presentation(phone));
    await agent.flush();
    expect(written.filter((e) => e.type === 'audit.dropped')).toEqual([
      expect.objectContaining({ count: 2, types: { access: 2 } }),
    ]);
    expect(agent.auditDrops()).toMatchObject({ dropped: 0, total: 2 });
  });
});

describe('agent: keyring changes are stored first, applied second', () => {
  /** A store whose writes fail while `failing`, or wait while `gate` is set. */
  function fakeStore() {
    const store = {
      failing: false,
      gate: undefined as Promise<void> | undefined,
      persisted: [] as string[],
      /** Writes begun, finished or not. */
      started: 0,
      persist: async (ops: readonly { readonly jws: string }[]) => {
        store.started += 1;
        if (store.gate) await store.gate;
        if (store.failing)
          throw new AgentError('state_io', 'cannot append to keyring.journal: ENOSPC', { errno: 'ENOSPC' });
        store.persisted.push(...ops.map((o) => o.jws));
      },
    };
    return store;
  }

  it('a grant that cannot be stored fails with state_io, is audited, and the key does not work', async () => {
    const store = fakeStore();
    const { agent, keyring, root, lock, events, presentation } = setup({ keyringStore: store });
    const newcomer = makeKey('phone', 'driver');
    const digest = keyring.digest();
    store.failing = true;
    const err = await agent.addKeyringOps([grantBy(root, newcomer.credential)], 'control').catch((e) => e);
    expect(err).toBeInstanceOf(AgentError);
    expect(err).toMatchObject({ code: 'state_io', details: { errno: 'ENOSPC' } });
    expect(keyring.byId(newcomer.id)).toBeUndefined();
    expect(keyring.digest()).toBe(digest);
    expect(await agent.present(presentation(newcomer))).toMatchObject({
      granted: false,
      code: 'unknown_credential',
    });
    expect(lock.actions).toEqual([]);
    await agent.flush();
    expect(events.find((e) => e.type === 'keyring.failed')).toMatchObject({
      source: 'control',
      code: 'state_io',
      ops: [{ op: 'grant', credentialId: newcomer.id }],
    });
    expect(events.some((e) => e.type === 'keyring.grant')).toBe(false);

    // The disk takes writes again: the same grant goes through.
    store.failing = false;
    const ok = await agent.addKeyringOps([grantBy(root, newcomer.credential)], 'control');
    expect(ok.added).toHaveLength(1);
    expect(await agent.present(presentation(newcomer))).toMatchObject({ granted: true });
  });

  it('a revoke that cannot be stored fails with state_io and the key keeps working', async () => {
    const store = fakeStore();
    const { agent, keyring, root, phone, presentation } = setup({ keyringStore: store });
    store.failing = true;
    await expect(agent.addKeyringOps([revokeBy(root, phone.id)], 'cloud')).rejects.toMatchObject({
      code: 'state_io',
    });
    expect(keyring.byId(phone.id)?.revoked).toBe(false);
    expect(await agent.present(presentation(phone))).toMatchObject({ granted: true });
  });

  it('runs changes one at a time, so the second sees the first (an owner granted, then a key it signs)', async () => {
    const store = fakeStore();
    const { agent, keyring, root } = setup({ keyringStore: store });
    const owner2 = makeKey('signer', 'owner');
    const guest = makeKey('phone', 'driver');
    let open: () => void = () => {};
    store.gate = new Promise((resolve) => {
      open = resolve;
    });
    const first = agent.addKeyringOps([grantBy(root, owner2.credential)], 'control');
    const second = agent.addKeyringOps([grantBy(owner2, guest.credential)], 'cloud');
    await waitFor(() => store.started === 1, 'the first write to begin');
    await settle();
    // Nothing applied, and the second change not begun, while the first write is out.
    expect(store.started).toBe(1);
    expect(keyring.byId(owner2.id)).toBeUndefined();
    store.gate = undefined;
    open();
    expect((await first).added).toHaveLength(1);
    const result = await second;
    expect(result.rejected).toEqual([]);
    expect(result.added).toHaveLength(1);
    expect(keyring.activeRole(guest.id)).toBe('driver');
    expect(store.persisted).toHaveLength(2);
  });
});

describe('agent keyring on a real full disk (tmpfs)', () => {
  let fs: ScratchFs | undefined;
  afterEach(() => {
    fs?.dispose();
    fs = undefined;
  });

  it('a grant refused for ENOSPC stays out after a compaction and a reopen; it lands once space returns', async () => {
    fs = mountTmpfs(512 * 1024);
    const stateDir = fs.dir;
    const root = makeRoot();
    const keyring = newKeyring(root);
    const store = await KeyringStore.open(stateDir, keyring, silentLogger);
    const { agent } = setup({ keyring, root, keyringStore: store });
    // The fixture's own grants were merged in memory only: put them on disk first.
    await store.compact();
    const newcomer = makeKey('phone', 'driver');
    const filler = fillUp(stateDir);
    await expect(agent.addKeyringOps([grantBy(root, newcomer.credential)], 'control')).rejects.toMatchObject({
      code: 'state_io',
    });
    expect(keyring.byId(newcomer.id)).toBeUndefined();
    freeUp(filler);
    // A compaction now writes the keyring as it is: without the refused grant.
    await store.compact();
    await store.close();
    const reloaded = newKeyring(root);
    const reopened = await KeyringStore.open(stateDir, reloaded, silentLogger);
    await reloaded.materializeInBackground();
    expect(reloaded.byId(newcomer.id)).toBeUndefined();
    expect(reloaded.list()).toHaveLength(keyring.list().length);

    const { agent: again } = setup({ keyring: reloaded, root, keyringStore: reopened });
    expect((await again.addKeyringOps([grantBy(root, newcomer.credential)], 'control')).added).toHaveLength(
      1,
    );
    await reopened.close();
    const third = newKeyring(root);
    const last = await KeyringStore.open(stateDir, third, silentLogger);
    await third.materializeInBackground();
    expect(third.activeRole(newcomer.id)).toBe('driver');
    await last.close();
  });
});
