import { describe, expect, it } from 'vitest';
import { decodeExpecting, encodeAbort } from '../../../src/ble/protocol/messages.js';
import { AgentSession, RecentChallenges } from '../../../src/ble/protocol/session.js';
import { AgentError } from '../../../src/core/errors.js';
import { PhoneKey } from '../../../src/sim/ble/phone.js';
import { countingRandom, makeVehicle } from './fixtures.js';

const vehicle = makeVehicle('VIN-7');

function setup(recent = new RecentChallenges()) {
  const random = countingRandom();
  const open = (now: number, answerWindowMs = 1000) =>
    AgentSession.open({
      vehicleId: vehicle.vehicleId,
      answerWindowMs,
      now,
      randomBytes: random,
      signAsVehicle: vehicle.sign,
      recentChallenges: recent,
    });
  const phone = new PhoneKey({ vehicles: [{ vehicleId: vehicle.vehicleId, publicKey: vehicle.publicJwk }] });
  const answerTo = (session: AgentSession): Uint8Array => {
    const reply = phone.receive(session.hello);
    if (reply?.kind !== 'answer') throw new Error('phone did not answer');
    return reply.message;
  };
  return { open, phone, answerTo, recent };
}

function errorCode(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    expect(err).toBeInstanceOf(AgentError);
    return (err as AgentError).code;
  }
}

describe('AgentSession', () => {
  it('issues a signed hello with a fresh challenge and the answer window', () => {
    const { open } = setup();
    const a = open(0, 1500);
    const b = open(0, 1500);
    expect(a.challenge).not.toEqual(b.challenge);
    const hello = decodeExpecting(a.hello, 'hello');
    expect(hello).toMatchObject({ vehicleId: 'VIN-7', challenge: a.challenge, answerWindowMs: 1500 });
    expect(a.state).toBe('awaiting_answer');
    expect(a.deadlineAt).toBe(1500);
  });

  it('grants a proof to the enrolled key, with the answer time and intent', () => {
    const { open, phone, answerTo } = setup();
    const session = open(100);
    const receipt = session.receive(answerTo(session), 180);
    expect(receipt).toMatchObject({ kind: 'answer', answerMs: 80 });
    expect(session.state).toBe('answered');
    expect(session.verify(phone.publicKey)).toEqual({
      proof: 'valid',
      keyId: phone.credentialId,
      intent: 'unlock',
      explicitIntent: true,
      answerMs: 80,
    });
  });

  it('flags passive answers', () => {
    const { open, phone, answerTo } = setup();
    phone.setBehaviour({ explicitIntent: false, intent: 'lock' });
    const session = open(0);
    session.receive(answerTo(session), 10);
    expect(session.verify(phone.publicKey)).toMatchObject({
      proof: 'valid',
      explicitIntent: false,
      intent: 'lock',
    });
  });

  it('a valid answer after the window is a timeout; at the window it is still in time', () => {
    const { open, phone, answerTo } = setup();
    const late = open(0, 500);
    late.receive(answerTo(late), 501);
    expect(late.isExpired(501)).toBe(true);
    expect(late.verify(phone.publicKey)).toMatchObject({ proof: 'timeout', answerMs: 501 });
    const onTime = open(0, 500);
    onTime.receive(answerTo(onTime), 500);
    expect(onTime.verify(phone.publicKey).proof).toBe('valid');
  });

  it('a late answer with a bad signature stays invalid', () => {
    const { open, phone, answerTo } = setup();
    phone.setBehaviour({ fault: 'bad_signature' });
    const s = open(0, 500);
    s.receive(answerTo(s), 900);
    expect(s.verify(phone.publicKey).proof).toBe('invalid');
  });

  it('uses a challenge once: a second answer on the same session is a replay', () => {
    const { open, answerTo } = setup();
    const session = open(0);
    const answer = answerTo(session);
    session.receive(answer, 5);
    expect(errorCode(() => session.receive(answer, 6))).toBe('replay');
  });

  it('an answer replayed from an earlier session is replayed, also without the memory it is refused', () => {
    const { open, phone, answerTo } = setup();
    const first = open(0);
    const answer = answerTo(first);
    first.receive(answer, 10);
    expect(first.verify(phone.publicKey).proof).toBe('valid');
    const second = open(1000);
    second.receive(answer, 1010);
    expect(second.verify(phone.publicKey).proof).toBe('replayed');

    const forgetful = setup(new RecentChallenges(1));
    const a = forgetful.open(0);
    const old = forgetful.answerTo(a);
    forgetful.open(1); // pushes a's challenge out of a memory of one
    const c = forgetful.open(2);
    c.receive(old, 3);
    expect(c.verify(forgetful.phone.publicKey).proof).toBe('invalid');
  });

  it('an answer to a concurrent session is replayed too', () => {
    const { open, phone, answerTo } = setup();
    const a = open(0);
    const b = open(0);
    b.receive(answerTo(a), 5);
    expect(b.verify(phone.publicKey).proof).toBe('replayed');
  });

  it('malformed frames close the session; there is no second try', () => {
    const { open, answerTo } = setup();
    const s = open(0);
    expect(errorCode(() => s.receive(Uint8Array.of(1, 2, 3), 1))).toBe('malformed');
    expect(s.state).toBe('closed');
    expect(errorCode(() => s.receive(answerTo(s), 2))).toBe('replay');
    const t = open(0);
    expect(errorCode(() => t.receive(t.hello, 1))).toBe('malformed');
    expect(errorCode(() => open(0).receive(Uint8Array.of(7, 2), 1))).toBe('unsupported');
  });

  it('notes an abort from the key but keeps waiting: an unsigned abort ends nothing', () => {
    const { open, phone, answerTo } = setup();
    const s = open(0);
    expect(s.receive(encodeAbort('unsupported'), 12)).toEqual({
      kind: 'abort',
      code: 'unsupported',
      answerMs: 12,
    });
    expect(s.receive(encodeAbort('wrong_vehicle'), 13)).toMatchObject({ kind: 'abort' });
    expect(s.state).toBe('awaiting_answer');
    expect(s.abortedWith).toBe('unsupported');
    // The key's signed answer still comes, and still decides.
    expect(s.receive(answerTo(s), 40)).toMatchObject({ kind: 'answer', answerMs: 40 });
    expect(s.verify(phone.publicKey)).toMatchObject({ proof: 'valid' });
  });

  it('runs the deadline from helloSent, not from open', () => {
    const { open, phone, answerTo } = setup();
    const s = open(0, 500);
    s.helloSent(300);
    expect(s.deadlineAt).toBe(800);
    expect(s.receive(answerTo(s), 750)).toMatchObject({ answerMs: 450 });
    expect(s.verify(phone.publicKey)).toMatchObject({ proof: 'valid', answerMs: 450 });
  });

  it('verify before an answer is a programming error', () => {
    const { open, phone } = setup();
    expect(errorCode(() => open(0).verify(phone.publicKey))).toBe('internal');
  });

  it('refuses a random source that does not give 32 bytes', () => {
    expect(
      errorCode(() =>
        AgentSession.open({
          vehicleId: 'v',
          answerWindowMs: 1,
          now: 0,
          randomBytes: () => new Uint8Array(16),
          signAsVehicle: vehicle.sign,
        }),
      ),
    ).toBe('internal');
  });
});

describe('RecentChallenges', () => {
  it('forgets the oldest beyond its capacity', () => {
    const r = new RecentChallenges(3);
    const c = (i: number) => new Uint8Array(32).fill(i);
    for (let i = 0; i < 5; i++) r.add(c(i));
    expect([0, 1, 2, 3, 4].map((i) => r.has(c(i)))).toEqual([false, false, true, true, true]);
    expect(r.size).toBe(3);
    r.add(c(4));
    expect(r.size).toBe(3);
  });
});
