import { describe, expect, it, vi } from 'vitest';
import type { MergeResult } from '../../../src/access/keyring.js';
import { type CommandPayload, signCommand } from '../../../src/cloud/command.js';
import {
  type CommandAgent,
  CommandProcessor,
  type CommandProcessorOptions,
  type DurableMap,
  type RememberedResult,
} from '../../../src/cloud/command-processor.js';
import { silentLogger } from '../../../src/core/logger.js';
import type { LockState } from '../../../src/core/types.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  NOW_S,
  newKeyring,
  type TestKey,
  VID,
} from '../../helpers/keyring-fixtures.js';

/** An in-memory DurableMap that logs the order of writes relative to actions. */
class MemoryMap<V> implements DurableMap<V> {
  readonly map = new Map<string, V>();
  constructor(
    private readonly name: string,
    private readonly events: string[],
    public failWrites = false,
  ) {}
  get(key: string) {
    return this.map.get(key);
  }
  async set(key: string, value: V) {
    if (this.failWrites) throw new Error('disk full');
    this.events.push(`${this.name}.set`);
    this.map.set(key, value);
  }
  async delete(key: string) {
    return this.map.delete(key);
  }
  entries() {
    return this.map.entries();
  }
  get size() {
    return this.map.size;
  }
}

function rig(maxResults = 100, extra: Partial<CommandProcessorOptions> = {}) {
  const root = makeRoot();
  const ring = newKeyring(root);
  const driver = makeKey('signer', 'driver');
  const service = makeKey('signer', 'service');
  ring.add(grantBy(root, driver.credential));
  ring.add(grantBy(root, service.credential));
  const events: string[] = [];
  const audits: Record<string, unknown>[] = [];
  const actedJtis: (string | undefined)[] = [];
  let clockFloor = NOW_S * 1000;
  const agent: CommandAgent = {
    keyring: ring,
    actuate: async (
      intent: 'unlock' | 'lock',
      by: string,
      _source: string,
      jti?: string,
    ): Promise<LockState> => {
      events.push(`actuate.${intent}.${by === root.id ? 'root' : by}`);
      actedJtis.push(jti);
      return intent === 'unlock' ? 'unlocking' : 'locking';
    },
    addKeyringOps: async (ops: readonly string[], source: string): Promise<MergeResult> => {
      events.push(`addKeyringOps.${source}`);
      const r = ring.merge(ops);
      return r;
    },
    audit: (e) => {
      audits.push(e);
    },
  };
  const counters = new MemoryMap<number>('counter', events);
  const results = new MemoryMap<RememberedResult>('result', events);
  const processor = new CommandProcessor({
    vehicleId: VID,
    agent,
    clock: {
      now: () => clockFloor,
      advanceTo: (ms) => {
        clockFloor = Math.max(clockFloor, ms);
      },
    },
    limits: { maxLifetimeS: 300, maxFutureS: 120 },
    counters,
    results,
    maxResults,
    stateSnapshot: () => ({ lock: 'locked' }),
    source: 'cloud',
    log: silentLogger,
    auditRejectionsPerMinute: 3,
    ...extra,
  });
  let ctr = 100;
  const sign = (key: TestKey, over: Partial<CommandPayload> = {}) =>
    signCommand(
      {
        vid: VID,
        cmd: 'unlock',
        args: {},
        jti: `j-${ctr}`,
        iat: NOW_S - 1,
        exp: NOW_S + 29,
        ctr: ++ctr,
        ...over,
      },
      key.privateKey,
      key.id,
    );
  return {
    root,
    ring,
    driver,
    service,
    events,
    audits,
    actedJtis,
    counters,
    results,
    processor,
    sign,
    now: () => clockFloor,
    tick: (ms: number) => {
      clockFloor += ms;
    },
  };
}

describe('command processor', () => {
  it('persists the counter before acting and remembers the result after', async () => {
    const r = rig();
    const result = await r.processor.handle(r.sign(r.root, { jti: 'a' }), false);
    expect(result).toMatchObject({ jti: 'a', status: 'ok', code: 'ok', data: { lock: 'unlocking' } });
    expect(r.events).toEqual(['counter.set', 'actuate.unlock.root', 'result.set']);
  });

  it('answers a redelivered command with the same result and does not act again', async () => {
    const r = rig();
    const jws = r.sign(r.root, { jti: 'once' });
    const first = await r.processor.handle(jws, false);
    const again = await r.processor.handle(jws, false);
    const retainedAgain = await r.processor.handle(jws, true);
    expect(again).toEqual(first);
    expect(retainedAgain).toEqual(first);
    expect(r.events.filter((e) => e.startsWith('actuate'))).toHaveLength(1);
  });

  it('does not act when the counter cannot be persisted', async () => {
    const r = rig();
    r.counters.failWrites = true;
    const result = await r.processor.handle(r.sign(r.driver), false);
    expect(result).toMatchObject({ status: 'error', code: 'state_io' });
    expect(r.events).toEqual([]);
  });

  it('runs commands one at a time so a counter cannot be used twice', async () => {
    const r = rig();
    const a = r.sign(r.driver, { ctr: 500, jti: 'x1' });
    const b = r.sign(r.driver, { ctr: 500, jti: 'x2' });
    const [ra, rb] = await Promise.all([r.processor.handle(a, false), r.processor.handle(b, false)]);
    expect(ra.code).toBe('ok');
    expect(rb.code).toBe('counter_replay');
  });

  it('grants through the keyring and reports a refused operation with its code', async () => {
    const r = rig();
    const phone = makeKey('phone', 'driver');
    const ok = await r.processor.handle(
      r.sign(r.root, { cmd: 'keys.grant', args: { ops: [grantBy(r.root, phone.credential)] } }),
      false,
    );
    expect(ok).toMatchObject({ status: 'ok', code: 'ok' });
    expect(r.ring.activeRole(phone.id)).toBe('driver');
    // A grant signed by a driver key (not an owner) inside an owner's command is still refused.
    const sneaky = makeKey('phone', 'owner');
    const bad = await r.processor.handle(
      r.sign(r.root, { cmd: 'keys.grant', args: { ops: [grantBy(r.driver, sneaky.credential)] } }),
      false,
    );
    expect(bad).toMatchObject({ status: 'error', code: 'op_signer_not_allowed' });
    expect(r.ring.activeRole(sneaky.id)).toBeUndefined();
  });

  it('lists keys and refreshes state', async () => {
    const r = rig();
    const list = await r.processor.handle(r.sign(r.service, { cmd: 'keys.list' }), false);
    expect(list.status).toBe('ok');
    expect((list.data as { keys: { id: string }[] }).keys.map((k) => k.id)).toContain(r.driver.id);
    const state = await r.processor.handle(r.sign(r.driver, { cmd: 'state.refresh' }), false);
    expect(state).toMatchObject({ status: 'ok', data: { lock: 'locked' } });
  });

  it('moves the trusted time forward for owner commands only', async () => {
    const r = rig();
    await r.processor.handle(r.sign(r.root, { iat: NOW_S + 3600, exp: NOW_S + 3630 }), false);
    expect(r.now()).toBe((NOW_S + 3600) * 1000);
    await r.processor.handle(r.sign(r.driver, { iat: NOW_S + 3700, exp: NOW_S + 3730 }), false);
    expect(r.now()).toBe((NOW_S + 3600) * 1000);
  });

  it('forgets the oldest results beyond its bound', async () => {
    const r = rig(10);
    for (let i = 0; i < 15; i++) await r.processor.handle(r.sign(r.driver, { jti: `n${i}` }), false);
    expect(r.results.size).toBe(10);
    expect([...r.results.map.keys()][0]).toBe(`${r.driver.id}\nn5`);
  });

  it('remembers a large answer without its data', async () => {
    const r = rig();
    for (let i = 0; i < 150; i++)
      r.ring.add(grantBy(r.root, makeKey('phone', 'driver', { name: `key ${i}` }).credential));
    const jws = r.sign(r.service, { cmd: 'keys.list', jti: 'big', args: { limit: 200 } });
    const first = await r.processor.handle(jws, false);
    expect((first.data as { keys: unknown[] }).keys.length).toBeGreaterThan(150);
    const again = await r.processor.handle(jws, false);
    expect(again).toEqual({ jti: 'big', status: 'ok', code: 'ok', message: first.message });
  });

  it('lists keys a page at a time (the whole keyring fits no MQTT message), never the whole list', async () => {
    const r = rig();
    for (let i = 0; i < 130; i++) r.ring.add(grantBy(r.root, makeKey('phone', 'driver').credential));
    const list = vi.spyOn(r.ring, 'list');
    const all = r.ring.credentialCount;
    const seen: string[] = [];
    let after: string | undefined;
    const limits: number[] = [];
    for (let n = 0; n < 10; n++) {
      const args = after === undefined ? {} : { after, limit: 200 };
      const res = await r.processor.handle(
        r.sign(r.service, { cmd: 'keys.list', jti: `p${n}`, args }),
        false,
      );
      const data = res.data as { keys: { id: string }[]; next?: string; total: number };
      expect(data.total).toBe(all);
      limits.push(data.keys.length);
      seen.push(...data.keys.map((k) => k.id));
      if (data.next === undefined) break;
      after = data.next;
    }
    expect(limits).toEqual([100, all - 100]);
    expect(seen).toEqual([...seen].sort());
    expect(new Set(seen).size).toBe(all);
    expect(list).not.toHaveBeenCalled();
  });

  it('hands every refusal to onRejected when given (the cloud link summarises them), none to the audit', async () => {
    const rejections: unknown[] = [];
    const r = rig(100, { onRejected: (x) => rejections.push(x) });
    for (let i = 0; i < 6; i++) await r.processor.handle('junk', false);
    await r.processor.handle(r.sign(r.driver, { jti: 'old', iat: NOW_S - 100, exp: NOW_S - 50 }), false);
    expect(r.audits.filter((a) => String(a.type).startsWith('command.rejected'))).toEqual([]);
    expect(rejections).toHaveLength(7);
    expect(rejections[6]).toEqual({ code: 'command_expired', jti: 'old', by: r.driver.id, action: 'unlock' });
  });

  it('passes the jti of an unlock to the act, for its audit record', async () => {
    const r = rig();
    expect((await r.processor.handle(r.sign(r.driver, { jti: 'the-jti' }), false)).status).toBe('ok');
    expect(r.actedJtis).toEqual(['the-jti']);
  });

  it('audits refusals, and a flood as one summary', async () => {
    const r = rig();
    for (let i = 0; i < 6; i++) await r.processor.handle('junk', false);
    expect(r.audits.filter((a) => a.type === 'command.rejected')).toHaveLength(3);
    r.tick(61_000);
    await r.processor.handle('junk', false);
    expect(r.audits.filter((a) => a.type === 'command.rejected.suppressed')).toEqual([
      { type: 'command.rejected.suppressed', source: 'cloud', count: 3 },
    ]);
    expect(r.audits.filter((a) => a.type === 'command.rejected')).toHaveLength(4);
  });
});
