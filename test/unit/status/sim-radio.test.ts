import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import type { ControlHandler } from '../../../src/host/control-server.js';
import { createSimRadio, parseSimRadioOp, SIM_RADIO_COMMANDS } from '../../../src/status/sim-radio.js';

/** A stand-in central in memory: devices by number, every call recorded, writes can be held. */
function fakeCentral() {
  const calls: [string, Record<string, unknown>][] = [];
  const connected = new Set<string>();
  let next = 0;
  let held: Promise<void> | undefined;
  const handlers = new Map<string, ControlHandler>([
    [
      'sim.central.connect',
      (args) => {
        calls.push(['connect', args]);
        const device = `/org/bluez/hci0/dev_00_00_00_00_00_${(++next).toString(16).padStart(2, '0').toUpperCase()}`;
        connected.add(device);
        return { device };
      },
    ],
    [
      'sim.central.read',
      (args) => {
        calls.push(['read', args]);
        if (!connected.has(String(args.device))) throw new AgentError('not_found', 'gone');
        return { hex: `0224${String(args.device).slice(-2)}` };
      },
    ],
    [
      'sim.central.write',
      async (args) => {
        calls.push(['write', args]);
        if (held) await held;
        if (String(args.hex).startsWith('ff')) throw new AgentError('malformed', 'not a message');
        return {};
      },
    ],
    [
      'sim.central.disconnect',
      (args) => {
        calls.push(['disconnect', args]);
        connected.delete(String(args.device));
        return {};
      },
    ],
  ]);
  return {
    handlers,
    calls,
    connected,
    hold: () => {
      let release = () => {};
      held = new Promise<void>((r) => {
        release = r;
      });
      return () => {
        held = undefined;
        release();
      };
    },
  };
}

const LINK = 'A'.repeat(22);

describe('parseSimRadioOp', () => {
  it.each([
    [{ op: 'connect' }, { op: 'connect' }],
    [
      { op: 'read', link: LINK, characteristic: 'challenge' },
      { op: 'read', link: LINK, characteristic: 'challenge' },
    ],
    [
      { op: 'read', link: LINK, characteristic: 'result' },
      { op: 'read', link: LINK, characteristic: 'result' },
    ],
    [
      { op: 'write', link: LINK, hex: '0222' },
      { op: 'write', link: LINK, hex: '0222' },
    ],
    [
      { op: 'write', link: LINK, hex: 'ab'.repeat(512) },
      { op: 'write', link: LINK, hex: 'ab'.repeat(512) },
    ],
    [
      { op: 'disconnect', link: LINK },
      { op: 'disconnect', link: LINK },
    ],
  ])('takes %j', (body, op) => {
    expect(parseSimRadioOp(body)).toEqual(op);
  });

  it.each([
    ['no op', {}],
    ['an unknown op', { op: 'pair' }],
    ['an op that is not a string', { op: ['connect'] }],
    ['an extra field', { op: 'connect', device: '/org/bluez/hci0/dev_00_00_00_00_00_01' }],
    ['a device path for a link', { op: 'disconnect', link: '/org/bluez/hci0/dev_00_00_00_00_00_01' }],
    ['a short link', { op: 'disconnect', link: 'A'.repeat(21) }],
    ['a link that is not a string', { op: 'disconnect', link: 7 }],
    ['a read of answer', { op: 'read', link: LINK, characteristic: 'answer' }],
    ['a read without characteristic', { op: 'read', link: LINK }],
    ['a write to challenge', { op: 'write', link: LINK, hex: '00', characteristic: 'challenge' }],
    ['an empty write', { op: 'write', link: LINK, hex: '' }],
    ['odd hex', { op: 'write', link: LINK, hex: '022' }],
    ['not hex', { op: 'write', link: LINK, hex: 'zz' }],
    ['over 512 bytes', { op: 'write', link: LINK, hex: 'ab'.repeat(513) }],
  ])('refuses %s as bad_arguments', (_what, body) => {
    expect(() => parseSimRadioOp(body)).toThrow(expect.objectContaining({ code: 'bad_arguments' }));
  });
});

describe('the simulated radio', () => {
  it('is offered only while the agent serves every sim.central command', () => {
    const { handlers } = fakeCentral();
    expect(createSimRadio({ handlers }).offered()).toBe(true);
    for (const name of SIM_RADIO_COMMANDS) {
      const partial = new Map(handlers);
      partial.delete(name);
      expect(createSimRadio({ handlers: partial }).offered(), name).toBe(false);
    }
    expect(createSimRadio({ handlers: new Map() }).offered()).toBe(false);
  });

  it('forwards one connection: connect, read, write, disconnect, under a random link id', async () => {
    const central = fakeCentral();
    const radio = createSimRadio({ handlers: central.handlers });
    const { link } = (await radio.call({ op: 'connect' })) as { link: string };
    expect(link).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(link).not.toContain('dev_');
    const device = [...central.connected][0];
    expect(await radio.call({ op: 'read', link, characteristic: 'challenge' })).toEqual({ hex: '022401' });
    expect(await radio.call({ op: 'write', link, hex: '0222' })).toEqual({});
    await expect(radio.call({ op: 'write', link, hex: 'ff00' })).rejects.toMatchObject({ code: 'malformed' });
    expect(await radio.call({ op: 'disconnect', link })).toEqual({});
    expect(central.calls).toEqual([
      ['connect', {}],
      ['read', { device, characteristic: 'challenge' }],
      ['write', { device, characteristic: 'answer', hex: '0222' }],
      ['write', { device, characteristic: 'answer', hex: 'ff00' }],
      ['disconnect', { device }],
    ]);
    expect(radio.links()).toBe(0);
    await expect(radio.call({ op: 'read', link, characteristic: 'result' })).rejects.toMatchObject({
      code: 'not_found',
    });
  });

  it('two clients get two connections; neither can name the other’s', async () => {
    const central = fakeCentral();
    const radio = createSimRadio({ handlers: central.handlers });
    const a = (await radio.call({ op: 'connect' })) as { link: string };
    const b = (await radio.call({ op: 'connect' })) as { link: string };
    expect(a.link).not.toBe(b.link);
    expect(await radio.call({ op: 'read', link: a.link, characteristic: 'result' })).toEqual({
      hex: '022401',
    });
    expect(await radio.call({ op: 'read', link: b.link, characteristic: 'result' })).toEqual({
      hex: '022402',
    });
    await expect(radio.call({ op: 'disconnect', link: LINK })).rejects.toMatchObject({ code: 'not_found' });
    expect(central.connected.size).toBe(2);
  });

  it('holds at most maxLinks connections: a newcomer ends the one used longest ago', async () => {
    let t = 0;
    const central = fakeCentral();
    const radio = createSimRadio({ handlers: central.handlers, maxLinks: 2, now: () => t });
    const first = (await radio.call({ op: 'connect' })) as { link: string };
    t = 1;
    const second = (await radio.call({ op: 'connect' })) as { link: string };
    t = 2;
    await radio.call({ op: 'read', link: first.link, characteristic: 'result' }); // first is fresher now
    t = 3;
    await radio.call({ op: 'connect' });
    expect(radio.links()).toBe(2);
    expect(central.connected.size).toBe(2);
    await expect(
      radio.call({ op: 'read', link: second.link, characteristic: 'result' }),
    ).rejects.toMatchObject({
      code: 'not_found',
    });
    expect(await radio.call({ op: 'read', link: first.link, characteristic: 'result' })).toEqual({
      hex: '022401',
    });
    for (let i = 0; i < 50; i++) await radio.call({ op: 'connect' });
    expect(central.connected.size).toBe(2);
  });

  it('ends a connection idle for idleMs at the next call', async () => {
    let t = 0;
    const central = fakeCentral();
    const radio = createSimRadio({ handlers: central.handlers, idleMs: 1000, now: () => t });
    const idle = (await radio.call({ op: 'connect' })) as { link: string };
    t = 999;
    await radio.call({ op: 'read', link: idle.link, characteristic: 'result' });
    t = 1998;
    const fresh = (await radio.call({ op: 'connect' })) as { link: string };
    expect(radio.links()).toBe(2);
    t = 1999;
    await radio.call({ op: 'read', link: fresh.link, characteristic: 'result' });
    expect(radio.links()).toBe(1);
    expect(central.connected.size).toBe(1);
    await expect(radio.call({ op: 'read', link: idle.link, characteristic: 'result' })).rejects.toMatchObject(
      {
        code: 'not_found',
      },
    );
  });

  it('refuses calls beyond maxInFlight with busy, and takes them again once those end', async () => {
    const central = fakeCentral();
    const radio = createSimRadio({ handlers: central.handlers, maxInFlight: 2 });
    const { link } = (await radio.call({ op: 'connect' })) as { link: string };
    const release = central.hold();
    const slow = [radio.call({ op: 'write', link, hex: '01' }), radio.call({ op: 'write', link, hex: '02' })];
    await expect(radio.call({ op: 'read', link, characteristic: 'result' })).rejects.toMatchObject({
      code: 'busy',
    });
    // A malformed body is refused before it counts.
    await expect(radio.call({ op: 'nope' })).rejects.toMatchObject({ code: 'bad_arguments' });
    release();
    await Promise.all(slow);
    expect(await radio.call({ op: 'read', link, characteristic: 'result' })).toEqual({ hex: '022401' });
  });

  it('gives coded errors when the agent stops serving the central, and close ends every connection', async () => {
    const central = fakeCentral();
    const handlers = new Map(central.handlers);
    const radio = createSimRadio({ handlers });
    await radio.call({ op: 'connect' });
    await radio.call({ op: 'connect' });
    await radio.close();
    expect(central.connected.size).toBe(0);
    expect(radio.links()).toBe(0);
    handlers.delete('sim.central.connect');
    await expect(radio.call({ op: 'connect' })).rejects.toMatchObject({ code: 'not_found' });
    handlers.set('sim.central.connect', () => ({ nothing: true }));
    await expect(radio.call({ op: 'connect' })).rejects.toMatchObject({ code: 'internal' });
    handlers.set('sim.central.connect', () => {
      throw new Error('stand-in fell over');
    });
    const err = await radio.call({ op: 'connect' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
  });
});
