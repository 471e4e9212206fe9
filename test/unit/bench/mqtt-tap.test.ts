import fc from 'fast-check';
import { generate, type Packet } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import {
  DeliveryLedger,
  lossVerdict,
  MqttStreamParser,
  type MqttWireEvent,
  type SeqTrace,
  type TapEvent,
} from '../../../bench/mqtt-tap.js';

/**
 * The soak's wire tap reads what mqtt.js writes (mqtt-packet, mqtt.js's own encoder, makes the
 * bytes here), whatever the chunking; and the verdict names the part that lost an event.
 */

function connectPacket(protocolVersion: 4 | 5): Buffer {
  return generate(
    {
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion,
      clientId: 'v',
      clean: false,
      keepalive: 5,
    } as Packet,
    {
      protocolVersion,
    },
  );
}

function publishPacket(protocolVersion: 4 | 5, topic: string, payload: string, messageId?: number): Buffer {
  return generate(
    {
      cmd: 'publish',
      topic,
      payload: Buffer.from(payload),
      qos: messageId === undefined ? 0 : 1,
      dup: false,
      retain: false,
      ...(messageId === undefined ? {} : { messageId }),
      ...(protocolVersion === 5
        ? { properties: { messageExpiryInterval: 30, userProperties: { a: 'b' } } }
        : {}),
    } as Packet,
    { protocolVersion },
  );
}

function pubackPacket(protocolVersion: 4 | 5, messageId: number, reasonCode?: number): Buffer {
  return generate(
    { cmd: 'puback', messageId, ...(reasonCode === undefined ? {} : { reasonCode }) } as Packet,
    { protocolVersion },
  );
}

describe('MqttStreamParser', () => {
  it.each([4, 5] as const)('reads CONNECT, QoS 0 and 1 PUBLISH and PUBACK in MQTT %s', (v) => {
    const up = new MqttStreamParser();
    const events = up.push(
      Buffer.concat([
        connectPacket(v),
        publishPacket(v, 'va/X/events', '{"seq":7}', 301),
        publishPacket(v, 'va/X/state', '{}'),
        generate({ cmd: 'pingreq' } as Packet),
      ]),
    );
    expect(events).toEqual([
      { kind: 'connect', protocolVersion: v },
      {
        kind: 'publish',
        topic: 'va/X/events',
        qos: 1,
        dup: false,
        packetId: 301,
        payload: Buffer.from('{"seq":7}'),
      },
      { kind: 'publish', topic: 'va/X/state', qos: 0, dup: false, payload: Buffer.from('{}') },
    ]);
    const down = new MqttStreamParser(up.protocolVersion);
    const acks = down.push(
      Buffer.concat([pubackPacket(v, 301), ...(v === 5 ? [pubackPacket(v, 302, 0x10)] : [])]),
    );
    expect(acks).toEqual([
      { kind: 'puback', packetId: 301, reasonCode: 0 },
      ...(v === 5 ? [{ kind: 'puback', packetId: 302, reasonCode: 0x10 }] : []),
    ]);
  });

  it('reads the same packets however the stream is cut', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(4 as const, 5 as const),
        fc.array(fc.tuple(fc.string({ maxLength: 300 }), fc.integer({ min: 1, max: 65535 })), {
          minLength: 1,
          maxLength: 8,
        }),
        fc.array(fc.integer({ min: 1, max: 200 }), { minLength: 1, maxLength: 20 }),
        (v, messages, cuts) => {
          const bytes = Buffer.concat([
            connectPacket(v),
            ...messages.map(([payload, id]) => publishPacket(v, 'va/X/events', payload, id)),
          ]);
          const parser = new MqttStreamParser();
          const events: MqttWireEvent[] = [];
          let at = 0;
          for (let i = 0; at < bytes.length; i++) {
            const size = cuts[i % cuts.length] ?? 1;
            events.push(...parser.push(bytes.subarray(at, at + size)));
            at += size;
          }
          expect(
            events.map((e) => (e.kind === 'publish' ? [e.payload.toString(), e.packetId] : e.kind)),
          ).toEqual(['connect', ...messages.map(([payload, id]) => [Buffer.from(payload).toString(), id])]);
        },
      ),
    );
  });

  it('steps over a packet too large to read and goes on with the next', () => {
    const parser = new MqttStreamParser();
    const big = publishPacket(4, 'va/X/keyring', 'k'.repeat(1_200_000), 9);
    const after = publishPacket(4, 'va/X/events', '{"seq":1}', 10);
    const events = [
      ...parser.push(big.subarray(0, 1000)),
      ...parser.push(Buffer.concat([big.subarray(1000), after])),
    ];
    expect(events).toEqual([
      {
        kind: 'publish',
        topic: 'va/X/events',
        qos: 1,
        dup: false,
        packetId: 10,
        payload: Buffer.from('{"seq":1}'),
      },
    ]);
  });

  it.each([
    ['type 0', Buffer.from([0x00, 0x00])],
    ['a length over 4 bytes', Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01])],
    ['QoS 3', Buffer.from([0x36, 0x04, 0x00, 0x01, 0x61, 0x00])],
    ['a topic past the end', Buffer.from([0x30, 0x03, 0x00, 0x09, 0x61])],
  ])('stops at garbage (%s) and reads nothing after it', (_name, bytes) => {
    const parser = new MqttStreamParser();
    const events = parser.push(bytes);
    expect(events).toHaveLength(1);
    expect(events[0]?.kind).toBe('garbage');
    expect(parser.push(publishPacket(4, 't', '{}', 1))).toEqual([]);
  });
});

describe('DeliveryLedger and lossVerdict', () => {
  const at = (connection: number, direction: 'up' | 'down', event: MqttWireEvent, atMs = 1): TapEvent => ({
    connection,
    direction,
    atMs,
    event,
  });
  const publish = (seq: number, packetId: number): MqttWireEvent => ({
    kind: 'publish',
    topic: 'va/X/events',
    qos: 1,
    dup: false,
    packetId,
    payload: Buffer.from(JSON.stringify({ seq, type: 'access' })),
  });

  it('follows a seq from the vehicle to the cloud, matching PUBACKs by connection and packet id', () => {
    const ledger = new DeliveryLedger((t) => t.endsWith('/events'));
    ledger.vehicle(at(1, 'up', publish(5, 40), 10));
    ledger.vehicle(at(1, 'up', publish(6, 41), 11));
    // The same packet id on another connection is another message.
    ledger.vehicle(at(2, 'down', { kind: 'puback', packetId: 40, reasonCode: 0 }, 12));
    ledger.vehicle(at(1, 'down', { kind: 'puback', packetId: 41, reasonCode: 0x10 }, 13));
    ledger.cloud(at(3, 'down', publish(6, 7), 14));
    // A PUBLISH from the cloud client (up) is not a delivery to it.
    ledger.cloud(at(3, 'up', publish(5, 8), 15));
    expect(ledger.trace(5)).toEqual({ published: [{ connection: 1, atMs: 10 }], acked: [], delivered: [] });
    expect(ledger.trace(6)).toEqual({
      published: [{ connection: 1, atMs: 11 }],
      acked: [{ connection: 1, atMs: 13, reasonCode: 0x10 }],
      delivered: [14],
    });
    expect(ledger.trace(99)).toEqual({ published: [], acked: [], delivered: [] });
    expect(ledger.noSubscriberAcks).toBe(1);
  });

  const trace = (over: Partial<SeqTrace>): SeqTrace => ({ published: [], acked: [], delivered: [], ...over });
  const sent = [{ connection: 1, atMs: 1 }];
  const ok = [{ connection: 1, atMs: 2, reasonCode: 0 }];
  it.each<[string, boolean, SeqTrace, boolean, RegExp]>([
    ['received', true, trace({}), true, /^received$/],
    ['not in the log', false, trace({}), false, /never written to the audit log/],
    ['never sent', true, trace({}), false, /never published \(agent outbox\)/],
    ['never acknowledged', true, trace({ published: sent }), false, /never PUBACKed/],
    [
      'refused by the broker',
      true,
      trace({ published: sent, acked: [{ connection: 1, atMs: 2, reasonCode: 0x87 }] }),
      false,
      /refused by the broker/,
    ],
    [
      'lost in the broker',
      true,
      trace({ published: sent, acked: ok }),
      false,
      /never delivered to the cloud \(broker\)/,
    ],
    [
      'lost in the cloud client',
      true,
      trace({ published: sent, acked: ok, delivered: [3] }),
      false,
      /never reported by the cloud client \(soak harness\)/,
    ],
  ])('%s', (_name, inLog, t, received, verdict) => {
    expect(lossVerdict(inLog, t, received)).toMatch(verdict);
  });
});
