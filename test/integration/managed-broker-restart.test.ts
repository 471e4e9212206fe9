import { connect, type MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { DeliveryLedger, lossVerdict, MqttTap } from '../../bench/mqtt-tap.js';
import { SoakCloud } from '../../bench/soak-cloud.js';
import { freePort, ManagedBroker } from '../../src/scenario/managed-broker.js';
import { waitFor } from '../helpers/wait.js';

/**
 * The outbox gap the chaos soak saw (issue 17: seqs 219, 220, 424, 425 never received) was its
 * broker's: run as root, the Mosquitto the soak and the scenario runner start (ManagedBroker)
 * dropped to the mosquitto user and could not write its persistence file into its root-only
 * folder, so a restart lost every session. The cloud collector came back with no subscription
 * and mqtt.js subscribed again; an event the vehicle published in between was PUBACKed ("no
 * matching subscribers", 0x10) and went nowhere, and the vehicle's outbox rightly moved on.
 * These run the real Mosquitto through ManagedBroker, with the soak's wire taps and collector.
 */

const pace = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('the managed broker keeps sessions and queued events over a restart', () => {
  let broker: ManagedBroker | undefined;
  let cloud: SoakCloud | undefined;
  const taps: MqttTap[] = [];
  const clients: MqttClient[] = [];

  afterEach(async () => {
    for (const c of clients.splice(0)) await c.endAsync(true).catch(() => {});
    await cloud?.close().catch(() => {});
    for (const t of taps.splice(0)) await t.close();
    await broker?.close();
    broker = undefined;
    cloud = undefined;
  });

  /** Broker, a collector and a vehicle path each through a tap, and the ledger of both taps. */
  async function setUp(collectorReconnectMs = 100) {
    const b = new ManagedBroker(await freePort());
    broker = b;
    await b.start();
    const ledger = new DeliveryLedger((topic) => topic.endsWith('/events'));
    const cloudTap = new MqttTap(Number(new URL(b.directUrl).port), (e) => ledger.cloud(e));
    // In front of the relay, as in the soak: the vehicle's way to the broker.
    const vehicleTap = new MqttTap(b.port, (e) => ledger.vehicle(e));
    taps.push(cloudTap, vehicleTap);
    await cloudTap.start();
    await vehicleTap.start();
    const collector = new SoakCloud({ clientId: 'collector', reconnectPeriodMs: collectorReconnectMs });
    cloud = collector;
    await collector.start(cloudTap.url, 'va');
    return { broker: b, collector, ledger, collectorUrl: cloudTap.url, vehicle: publisher(vehicleTap.url) };
  }

  /** A vehicle-like publisher: persistent MQTT 5 session, back at once after any drop. */
  function publisher(url: string): { client: MqttClient; send(seq: number): Promise<boolean> } {
    const client = connect(url, {
      clientId: 'vehicle',
      clean: false,
      protocolVersion: 5,
      properties: { sessionExpiryInterval: 600 },
      reconnectPeriod: 50,
      connectTimeout: 1000,
    });
    client.on('error', () => {});
    clients.push(client);
    return {
      client,
      // true once PUBACKed (mqtt.js keeps it through a reconnect until then)
      send: (seq) =>
        new Promise((resolve) =>
          client.publish('va/X/events', JSON.stringify({ seq }), { qos: 1 }, (err) => resolve(!err)),
        ),
    };
  }

  it.each([
    ['across a broker restart', true],
    ['without a restart (the control)', false],
  ])('events published while the collector is away, %s, reach it when it is back', async (_name, restart) => {
    const { broker: b, collector, ledger, collectorUrl, vehicle } = await setUp();
    await waitFor(() => vehicle.client.connected, 'the publisher connected');
    expect(await vehicle.send(1)).toBe(true);
    await waitFor(() => collector.seqs.has(1), 'seq 1 at the collector');
    // Away by construction, not by a reconnect delay; its session stays (clean false).
    await collector.close();
    expect(await vehicle.send(2)).toBe(true); // queued in the session: in the persistence file
    if (restart) {
      await b.broker('restart');
      await waitFor(() => vehicle.client.connected, 'the publisher back after the restart');
    }
    expect(await vehicle.send(3)).toBe(true); // queued in the session as restored
    const back = new SoakCloud({ clientId: 'collector' });
    cloud = back;
    await back.start(collectorUrl, 'va');
    expect(await vehicle.send(4)).toBe(true);
    // What the session queued comes before new messages: once 4 is in, 2 and 3 are in or never will be.
    await waitFor(() => back.seqs.has(4), 'seq 4 at the collector');
    expect([2, 3].map((seq) => lossVerdict(true, ledger.trace(seq), back.seqs.has(seq)))).toEqual([
      'received',
      'received',
    ]);
    // The taps saw it all on the wire: sent once, PUBACKed 0 (not 0x10, no subscriber), delivered.
    for (const seq of [2, 3, 4]) {
      const trace = ledger.trace(seq);
      expect(trace.published).toHaveLength(1);
      expect(trace.acked.map((a) => a.reasonCode)).toEqual([0]);
      expect(trace.delivered.length).toBeGreaterThan(0);
    }
  });

  it('a collector connected at the restart and slow to come back (1.5 s) gets every event the vehicle had PUBACKed', async () => {
    const { broker: b, collector, vehicle } = await setUp(1500);
    await waitFor(() => vehicle.client.connected, 'the publisher connected');
    const acked = new Set<number>();
    let stop = false;
    let seq = 0;
    const inFlight = new Set<Promise<void>>();
    // Events all along, as the soak's vehicle sends them, at most 20 awaiting a PUBACK; the pace
    // is the input (events keep coming while the broker restarts), nothing waits on it.
    const flow = (async () => {
      while (!stop) {
        if (inFlight.size < 20 && vehicle.client.connected) {
          const n = ++seq;
          const p = vehicle.send(n).then((ok) => {
            if (ok) acked.add(n);
            inFlight.delete(p);
          });
          inFlight.add(p);
        }
        await pace(10);
      }
    })();
    await waitFor(() => acked.size >= 5, 'events before the restart');
    const before = seq;
    await b.broker('restart');
    // The publisher is back at once; the collector only after 1.5 s: events go to its session.
    await waitFor(() => [...acked].some((n) => n > before + 5), 'events PUBACKed after the restart', 20_000);
    await waitFor(() => collector.connected, 'the collector back', 20_000);
    stop = true;
    await flow;
    const sent = [...acked].sort((x, y) => x - y);
    await waitFor(() => sent.every((n) => collector.seqs.has(n)), 'every PUBACKed event at the collector', {
      timeoutMs: 20_000,
      detail: () => sent.filter((n) => !collector.seqs.has(n)),
    });
  });
});
