import { randomBytes } from 'node:crypto';
import { AgentError, toAgentError } from '../core/errors.js';
import type { HandlerMap } from './sim-actions.js';

/**
 * The phone-key page's simulated radio (sim mode only): a desktop browser has no way to reach the
 * agent's GATT application on the private D-Bus of the BlueZ stand-in, so the status server
 * forwards the page's GATT operations to the same in-process simulated central as
 * `sim.central.connect/read/write/disconnect`. The agent's real GATT application, registration
 * and mode P service run exactly as for a phone over the air.
 *
 * It gives a caller what being a BLE central in radio range gives, nothing more: connect, read
 * the challenge and the result of its own connection, write an answer. A connection is named to
 * the caller by a random link id (never the D-Bus device path, which is sequential), so one client
 * cannot read or end another's connection. Connections are few (the oldest goes when a new one
 * needs room, as a peripheral with few link slots would), end when idle, and calls in flight are
 * capped; the status server adds its Host check, loopback-only peers and its request budget.
 */

/** The commands the radio forwards to; it is offered only while the agent serves all of them. */
export const SIM_RADIO_COMMANDS = [
  'sim.central.connect',
  'sim.central.read',
  'sim.central.write',
  'sim.central.disconnect',
] as const;

/** Largest request body: an answer is at most 512 bytes, 1024 hex digits. */
export const SIM_RADIO_MAX_BODY_BYTES = 2048;
const MAX_LINKS = 4;
const IDLE_MS = 60_000;
const MAX_IN_FLIGHT = 4;
const LINK_ID = /^[A-Za-z0-9_-]{22}$/;
const HEX_ANSWER = /^(?:[0-9a-fA-F]{2}){1,512}$/;

export interface SimRadioOptions {
  readonly handlers: HandlerMap;
  /** Connections open at once; default 4. */
  readonly maxLinks?: number;
  /** A connection unused this long is ended at the next call; default 60 000 ms. */
  readonly idleMs?: number;
  /** Calls being forwarded at once; beyond, `busy`; default 4. */
  readonly maxInFlight?: number;
  readonly now?: () => number;
}

export type SimRadioReply =
  | { readonly link: string }
  | { readonly hex: string }
  | Readonly<Record<string, never>>;

export interface SimRadio {
  /** Whether the agent runs the simulated central (sim mode with the BLE peripheral). */
  offered(): boolean;
  /** One operation of a request body; coded errors for anything refused. */
  call(body: Readonly<Record<string, unknown>>): Promise<SimRadioReply>;
  /** Connections open now. */
  links(): number;
  /** Ends every connection (the server is closing). */
  close(): Promise<void>;
}

interface Link {
  readonly device: string;
  lastUsed: number;
}

type Op =
  | { readonly op: 'connect' }
  | { readonly op: 'read'; readonly link: string; readonly characteristic: 'challenge' | 'result' }
  | { readonly op: 'write'; readonly link: string; readonly hex: string }
  | { readonly op: 'disconnect'; readonly link: string };

const FIELDS: Readonly<Record<Op['op'], readonly string[]>> = {
  connect: ['op'],
  read: ['op', 'link', 'characteristic'],
  write: ['op', 'link', 'hex'],
  disconnect: ['op', 'link'],
};

/** A request body as one operation (pure): every field checked, nothing else allowed. */
export function parseSimRadioOp(body: Readonly<Record<string, unknown>>): Op {
  const { op } = body;
  if (op !== 'connect' && op !== 'read' && op !== 'write' && op !== 'disconnect')
    throw new AgentError('bad_arguments', 'op must be connect, read, write or disconnect');
  for (const key of Object.keys(body)) {
    if (!FIELDS[op].includes(key))
      throw new AgentError('bad_arguments', `${op} takes no field ${key.slice(0, 40)}`);
  }
  if (op === 'connect') return { op };
  const { link } = body;
  if (typeof link !== 'string' || !LINK_ID.test(link))
    throw new AgentError('bad_arguments', 'link must be the id connect gave');
  if (op === 'disconnect') return { op, link };
  if (op === 'read') {
    const { characteristic } = body;
    if (characteristic !== 'challenge' && characteristic !== 'result')
      throw new AgentError('bad_arguments', 'characteristic must be challenge or result');
    return { op, link, characteristic };
  }
  const { hex } = body;
  if (typeof hex !== 'string' || !HEX_ANSWER.test(hex))
    throw new AgentError('bad_arguments', 'hex must be 1 to 512 bytes in hex');
  return { op, link, hex };
}

export function createSimRadio(options: SimRadioOptions): SimRadio {
  const { handlers } = options;
  const maxLinks = options.maxLinks ?? MAX_LINKS;
  const idleMs = options.idleMs ?? IDLE_MS;
  const maxInFlight = options.maxInFlight ?? MAX_IN_FLIGHT;
  const now = options.now ?? (() => performance.now());
  const links = new Map<string, Link>();
  let inFlight = 0;

  const forward = async (name: (typeof SIM_RADIO_COMMANDS)[number], args: Record<string, unknown>) => {
    const handler = handlers.get(name);
    if (handler === undefined) throw new AgentError('not_found', 'the agent runs no simulated radio now');
    return (await handler(args)) as unknown;
  };

  /** Ends a connection at the stand-in; it may be gone already (the agent restarted its peripheral). */
  const end = async (id: string): Promise<void> => {
    const link = links.get(id);
    if (link === undefined) return;
    links.delete(id);
    await forward('sim.central.disconnect', { device: link.device }).catch(() => undefined);
  };

  const endIdle = async (): Promise<void> => {
    const at = now();
    for (const [id, link] of links) if (at - link.lastUsed >= idleMs) await end(id);
  };

  const deviceOf = (id: string): string => {
    const link = links.get(id);
    if (link === undefined)
      throw new AgentError('not_found', 'no such link (closed, replaced or idle too long): connect again');
    link.lastUsed = now();
    return link.device;
  };

  const run = async (op: Op): Promise<SimRadioReply> => {
    await endIdle();
    switch (op.op) {
      case 'connect': {
        // Room for the newcomer: the connection used longest ago gives way.
        while (links.size >= maxLinks) {
          let oldest: [string, Link] | undefined;
          for (const entry of links) if (!oldest || entry[1].lastUsed < oldest[1].lastUsed) oldest = entry;
          if (oldest === undefined) break;
          await end(oldest[0]);
        }
        const reply = await forward('sim.central.connect', {});
        const device = (reply as { device?: unknown } | undefined)?.device;
        if (typeof device !== 'string')
          throw new AgentError('internal', 'sim.central.connect named no device');
        const id = randomBytes(16).toString('base64url');
        links.set(id, { device, lastUsed: now() });
        return { link: id };
      }
      case 'read': {
        const reply = await forward('sim.central.read', {
          device: deviceOf(op.link),
          characteristic: op.characteristic,
        });
        const hex = (reply as { hex?: unknown } | undefined)?.hex;
        if (typeof hex !== 'string') throw new AgentError('internal', 'sim.central.read gave no bytes');
        return { hex };
      }
      case 'write':
        await forward('sim.central.write', {
          device: deviceOf(op.link),
          characteristic: 'answer',
          hex: op.hex,
        });
        return {};
      case 'disconnect':
        deviceOf(op.link);
        await end(op.link);
        return {};
    }
  };

  return {
    offered: () => SIM_RADIO_COMMANDS.every((name) => handlers.has(name)),
    call: async (body) => {
      const op = parseSimRadioOp(body);
      if (inFlight >= maxInFlight)
        throw new AgentError('busy', `${maxInFlight} radio calls are in flight; try again shortly`);
      inFlight += 1;
      try {
        return await run(op);
      } catch (err) {
        throw toAgentError(err);
      } finally {
        inFlight -= 1;
      }
    },
    links: () => links.size,
    close: async () => {
      for (const id of [...links.keys()]) await end(id);
    },
  };
}
