import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type OversizedPublish, PublishSizeGuard } from '../../../src/cloud/publish-size-guard.js';

/** An MQTT 3.1.1 packet: fixed header byte, remaining length (varint), body. */
function packet(first: number, body: Buffer): Buffer {
  const len: number[] = [];
  let x = body.length;
  do {
    let b = x % 128;
    x = Math.floor(x / 128);
    if (x > 0) b |= 0x80;
    len.push(b);
  } while (x > 0);
  return Buffer.concat([Buffer.from([first, ...len]), body]);
}

function publish(topic: string, payload: Buffer, qos: 0 | 1 = 1, id = 7, retain = false): Buffer {
  const t = Buffer.from(topic);
  const head = Buffer.alloc(2);
  head.writeUInt16BE(t.length);
  const pid = Buffer.alloc(qos > 0 ? 2 : 0);
  if (qos > 0) pid.writeUInt16BE(id);
  return packet(0x30 | (qos << 1) | (retain ? 1 : 0), Buffer.concat([head, t, pid, payload]));
}

const PINGRESP = Buffer.from([0xd0, 0x00]);
const PUBACK = packet(0x40, Buffer.from([0x00, 0x05]));

function run(limit: number, input: Buffer, chunk = input.length) {
  const seen: OversizedPublish[] = [];
  const guard = new PublishSizeGuard(limit, (p) => seen.push(p));
  const out: Buffer[] = [];
  for (let at = 0; at < input.length; at += chunk) out.push(...guard.push(input.subarray(at, at + chunk)));
  return { out: Buffer.concat(out), seen, skipped: guard.skipped };
}

describe('PublishSizeGuard (MQTT 3.1.1)', () => {
  it.each([
    { name: 'a small publish', input: publish('a/command', Buffer.from('hello')) },
    { name: 'a publish of exactly the limit', input: publish('a', Buffer.alloc(1000 - 5)) },
    { name: 'other packets (PINGRESP, PUBACK)', input: Buffer.concat([PINGRESP, PUBACK]) },
    { name: 'a QoS 0 publish', input: publish('t', Buffer.from('x'), 0) },
    { name: 'an empty retained publish', input: publish('t', Buffer.alloc(0), 1, 9, true) },
  ])('passes $name through unchanged', ({ input }) => {
    expect(run(1000, input)).toEqual({ out: input, seen: [], skipped: 0 });
  });

  it.each([
    { qos: 1 as const, headerBytes: 2 + 9 + 2 },
    { qos: 0 as const, headerBytes: 2 + 9 },
  ])('cuts an oversized QoS $qos publish to its topic and packet id, and says so', ({ qos, headerBytes }) => {
    const big = publish('a/keyring', Buffer.alloc(5000, 0x41), qos, 300, true);
    const { out, seen, skipped } = run(1000, Buffer.concat([big, PINGRESP]), 333);
    // The same packet (type, flags, topic, id) with an empty payload, then the next packet whole.
    expect(out).toEqual(Buffer.concat([publish('a/keyring', Buffer.alloc(0), qos, 300, true), PINGRESP]));
    expect(out[1]).toBe(headerBytes);
    expect(seen).toEqual([{ topic: 'a/keyring', bytes: headerBytes + 5000 }]);
    expect(skipped).toBe(5000);
  });

  it('keeps at most the variable header of an oversized publish, whatever its size', () => {
    const huge = publish('t', Buffer.alloc(3 * 1024 * 1024));
    const { out, seen } = run(64 * 1024, huge, 16 * 1024);
    expect(out.length).toBeLessThan(16);
    expect(seen).toHaveLength(1);
  });

  it('hands a malformed oversized publish (topic longer than the packet) on whole, for mqtt.js to refuse', () => {
    const body = Buffer.alloc(2000);
    body.writeUInt16BE(60_000);
    const bad = packet(0x32, body);
    expect(run(1000, bad, 100).out).toEqual(bad);
  });

  it('property: however the stream is chunked, packets under the limit come out byte for byte and oversized ones are cut', () => {
    const packetArb = fc.oneof(
      fc
        .tuple(
          fc.string({ minLength: 1, maxLength: 20 }),
          fc.integer({ min: 0, max: 3000 }),
          fc.constantFrom(0, 1),
        )
        .map(([t, n, q]) => ({ topic: t, size: n, qos: q as 0 | 1 })),
      fc.constant(null),
    );
    fc.assert(
      fc.property(
        fc.array(packetArb, { maxLength: 12 }),
        fc.integer({ min: 1, max: 700 }),
        (specs, chunk) => {
          const limit = 1500;
          const input: Buffer[] = [];
          const expected: Buffer[] = [];
          const cut: string[] = [];
          for (const s of specs) {
            if (s === null) {
              input.push(PINGRESP);
              expected.push(PINGRESP);
              continue;
            }
            const p = publish(s.topic, Buffer.alloc(s.size, 1), s.qos);
            input.push(p);
            const remaining = 2 + Buffer.byteLength(s.topic) + (s.qos > 0 ? 2 : 0) + s.size;
            if (remaining > limit) {
              expected.push(publish(s.topic, Buffer.alloc(0), s.qos));
              cut.push(s.topic);
            } else expected.push(p);
          }
          const r = run(limit, Buffer.concat(input), chunk);
          expect(r.out).toEqual(Buffer.concat(expected));
          expect(r.seen.map((p) => p.topic)).toEqual(cut);
        },
      ),
    );
  });
});
