import { describe, expect, it } from 'vitest';
import { KEYRING_OP_TYP, Keyring } from '../../../src/access/keyring.js';
import { Agent, type KeyringPersistence } from '../../../src/agent/agent.js';
import { type CommandPayload, signCommand } from '../../../src/cloud/command.js';
import {
  CommandProcessor,
  type DurableMap,
  type RememberedResult,
} from '../../../src/cloud/command-processor.js';
import { MonotonicFloorClock } from '../../../src/core/clock.js';
import { AgentError } from '../../../src/core/errors.js';
import { silentLogger } from '../../../src/core/logger.js';
import type { LockState } from '../../../src/core/types.js';
import { signJws } from '../../../src/crypto/jws.js';
import { CARD_ENROLL_TYP, NFC_AUTH_VERIFIERS } from '../../../src/nfc/enroll-auth.js';
import { CardEnrollmentDesk } from '../../../src/nfc/enrollment.js';
import { SimulatedUidTag } from '../../../src/sim/cards/uid-tag.js';
import {
  grantBy,
  makeKey,
  makeRoot,
  NOW_S,
  newKeyring,
  type TestKey,
  VID,
} from '../../helpers/keyring-fixtures.js';
import { sessionOver } from '../nfc/nfc-fixtures.js';

/**
 * Every way into the keyring goes through Agent.addKeyringOps, so a change that cannot be stored
 * fails the same way on each: a signed cloud command and an enrollment at the NFC reader, each
 * wired to a real Agent whose keyring store cannot write.
 */

function publicKeyOf(key: TestKey) {
  const jwk = key.credential.publicKey;
  if (!jwk) throw new Error('a key without its public part');
  return jwk;
}

/** A keyring store whose every write fails as a full disk does. */
const fullDisk: KeyringPersistence = {
  persist: async () => {
    throw new AgentError('state_io', 'cannot append to keyring.journal: ENOSPC: no space left on device', {
      errno: 'ENOSPC',
    });
  },
};

function agentOn(keyring: Keyring, events: Record<string, unknown>[]): Agent {
  const lock = {
    state: (): LockState => 'locked',
    unlock: async (): Promise<LockState> => 'unlocked',
    lock: async (): Promise<LockState> => 'locked',
    retract: async (): Promise<LockState> => 'locked',
  };
  return new Agent({
    vehicleId: VID,
    keyring,
    keyringStore: fullDisk,
    counters: { get: () => undefined, stage: async () => ({ durable: Promise.resolve() }) },
    clock: new MonotonicFloorClock(0),
    audit: {
      append: async (e) => {
        events.push({ ...e });
        return e;
      },
    },
    lock,
    readers: [],
    policy: { rateLimit: { maxDenials: 10, windowMs: 60_000, cooldownMs: 60_000 }, answerDeadlineMs: {} },
    log: silentLogger,
    signAsVehicle: () => new Uint8Array(64),
  });
}

class MemoryMap<V> implements DurableMap<V> {
  readonly map = new Map<string, V>();
  get(key: string) {
    return this.map.get(key);
  }
  async set(key: string, value: V) {
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

describe('a keyring change that cannot be stored', () => {
  it('from the cloud (a signed keys.grant command): the result is state_io and the key is not granted', async () => {
    const root = makeRoot();
    const keyring = newKeyring(root);
    const events: Record<string, unknown>[] = [];
    const agent = agentOn(keyring, events);
    const processor = new CommandProcessor({
      vehicleId: VID,
      agent,
      clock: { now: () => NOW_S * 1000, advanceTo: () => {} },
      limits: { maxLifetimeS: 300, maxFutureS: 120 },
      counters: new MemoryMap<number>(),
      results: new MemoryMap<RememberedResult>(),
      maxResults: 10,
      stateSnapshot: () => ({ lock: 'locked' }),
      source: 'cloud',
      log: silentLogger,
    });
    const guest = makeKey('phone', 'driver');
    const payload: CommandPayload = {
      vid: VID,
      cmd: 'keys.grant',
      args: { ops: [grantBy(root, guest.credential)] },
      jti: 'j-grant-1',
      iat: NOW_S - 1,
      exp: NOW_S + 29,
      ctr: 1,
    };
    const result = await processor.handle(signCommand(payload, root.privateKey, root.id), false);
    expect(result).toMatchObject({ jti: 'j-grant-1', status: 'error', code: 'state_io' });
    expect(keyring.byId(guest.id)).toBeUndefined();
    await agent.flush();
    expect(events.find((e) => e.type === 'keyring.failed')).toMatchObject({
      source: 'cloud',
      ops: [{ op: 'grant', credentialId: guest.id }],
    });
  });

  it('from an enrollment at the NFC reader: the step fails with state_io and the card is not enrolled', async () => {
    const root = makeRoot();
    const vehicle = makeKey('signer', 'owner');
    const keyring = new Keyring({
      vehicleId: VID,
      rootKey: publicKeyOf(root),
      vehicleKey: publicKeyOf(vehicle),
      authVerifiers: NFC_AUTH_VERIFIERS,
    });
    const events: Record<string, unknown>[] = [];
    const agent = agentOn(keyring, events);
    const desk = new CardEnrollmentDesk({
      vehicleId: VID,
      clock: { now: () => NOW_S * 1000, monotonic: () => 0 },
      keyring,
      fidoCredentials: () => [],
      counters: { get: () => undefined, set: async () => {} },
      signOp: (op) => signJws(op, vehicle.privateKey, vehicle.id, KEYRING_OP_TYP),
      addOps: (jws) => agent.addKeyringOps(jws, 'enroll.card'),
      audit: () => {},
      log: silentLogger,
      siteKey: async () => new Uint8Array(16),
      authoriseWindowMs: 60_000,
      enrollWindowMs: 30_000,
      apduTimeoutMs: 1000,
    });
    const view = desk.request({ kind: 'uid', role: 'driver', name: 'gym tag', method: 'owner-key' });
    if (!view) throw new Error('no request');
    expect(
      desk.authoriseWithKey(signJws(view.request, root.privateKey, root.id, CARD_ENROLL_TYP)),
    ).toMatchObject({
      state: 'awaiting_card',
    });
    const before = keyring.digest();
    const step = await desk.enrollCard(sessionOver(new SimulatedUidTag({ label: 'gym', model: 'ntag213' })));
    expect(step).toMatchObject({ ok: false, code: 'state_io' });
    expect(keyring.digest()).toBe(before);
    expect(keyring.list().filter((s) => s.credential.kind === 'uid')).toEqual([]);
    await agent.flush();
    expect(events.find((e) => e.type === 'keyring.failed')).toMatchObject({ source: 'enroll.card' });
  });
});
