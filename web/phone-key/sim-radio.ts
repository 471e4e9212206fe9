/**
 * The simulated radio: an agent in sim mode has no radio a browser can reach (its GATT service
 * lives on the private D-Bus of its BlueZ stand-in), so its status server offers this page a
 * stand-in central over HTTP on the same origin (src/status/sim-radio.ts). It is offered only
 * when ./sim-radio.json says so, which an exported copy of the app never has.
 */
import type { VehicleLink, VehicleRadio } from './gatt.js';

/** A refusal of the simulated radio, with the agent's code. */
export class RadioError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Whether the agent serving this page runs the simulated radio (never cached: see sw.ts). */
export async function simulatedRadioOffered(): Promise<boolean> {
  try {
    const response = await fetch('./sim-radio.json', { cache: 'no-store' });
    if (!response.ok) return false;
    const info = (await response.json()) as { simulated?: unknown };
    return info.simulated === true;
  } catch {
    return false;
  }
}

async function call(body: Record<string, string>): Promise<Record<string, unknown>> {
  const response = await fetch('./radio', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    cache: 'no-store',
  });
  const reply = (await response.json().catch(() => ({}))) as Record<string, unknown>;
  if (!response.ok) {
    const error = (reply.error ?? {}) as { code?: unknown; message?: unknown };
    const code = typeof error.code === 'string' ? error.code : `http_${response.status}`;
    throw new RadioError(
      code,
      `simulated radio: ${typeof error.message === 'string' ? error.message : code}`,
    );
  }
  return reply;
}

function bytesOf(hex: unknown): Uint8Array {
  if (typeof hex !== 'string' || !/^(?:[0-9a-f]{2})*$/i.test(hex))
    throw new RadioError('malformed', 'simulated radio: the read gave no bytes');
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = Number.parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function hexOf(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export function simulatedRadio(): VehicleRadio {
  return {
    kind: 'simulated',
    // One vehicle in range: the agent serving this page.
    choose: async () => {},
    connect: async (): Promise<VehicleLink> => {
      const { link } = await call({ op: 'connect' });
      if (typeof link !== 'string') throw new RadioError('malformed', 'simulated radio: no link');
      return {
        readChallenge: async () =>
          bytesOf((await call({ op: 'read', link, characteristic: 'challenge' })).hex),
        writeAnswer: async (bytes) => {
          await call({ op: 'write', link, hex: hexOf(bytes) });
        },
        readResult: async () => bytesOf((await call({ op: 'read', link, characteristic: 'result' })).hex),
        disconnect: () => {
          void call({ op: 'disconnect', link }).catch(() => undefined);
        },
      };
    },
    forget: () => {},
  };
}
