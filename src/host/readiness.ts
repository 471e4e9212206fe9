import type { Health } from '../core/types.js';

/**
 * What `ready` says about each part of the agent: the relay, every reader, the state files, the
 * cloud link and the status page. A reader that is down at start does not hold `ready` back (the
 * other readers must keep working), but the owner must not be told "ready" as if everything were.
 */

export interface PartReport {
  readonly part: string;
  readonly health: Pick<Health, 'state' | 'detail'>;
}

export interface Readiness {
  /** Part name → `ok`, `off`, or `degraded: detail` / `down: detail`. */
  readonly parts: Readonly<Record<string, string>>;
  /** The parts that are neither up nor switched off nor still starting, in the order given. */
  readonly notUp: readonly string[];
  /** The parts whose first start attempt runs in the background (a reader's driver loading). */
  readonly starting: readonly string[];
  /** One line for people: `ready: relay ok, nfc ok, ble down (adapter missing), cloud off, …`. */
  readonly summary: string;
}

/**
 * A reader whose driver is still loading or making its first attempt says so (a deferred start:
 * `starting`, or `starting (sim)` while the BLE stand-in boots), as degraded or down.
 */
export function isStarting(health: PartReport['health']): boolean {
  return health.state !== 'ok' && health.state !== 'disabled' && /^starting\b/.test(health.detail ?? '');
}

function describe(health: PartReport['health']): string {
  if (isStarting(health)) return 'starting';
  if (health.state === 'ok') return 'ok';
  if (health.state === 'disabled') return 'off';
  return health.detail ? `${health.state}: ${health.detail}` : health.state;
}

export function summarizeReadiness(reports: readonly PartReport[]): Readiness {
  const parts: Record<string, string> = {};
  const notUp: string[] = [];
  const starting: string[] = [];
  const phrases: string[] = [];
  for (const { part, health } of reports) {
    const text = describe(health);
    parts[part] = text;
    if (isStarting(health)) starting.push(part);
    else if (health.state === 'degraded' || health.state === 'down') notUp.push(part);
    const detail = text.indexOf(': ');
    phrases.push(detail < 0 ? `${part} ${text}` : `${part} ${health.state} (${text.slice(detail + 2)})`);
  }
  const head = notUp.length === 0 ? 'ready' : `ready, but ${notUp.join(', ')} not up`;
  return { parts, notUp, starting, summary: `${head}: ${phrases.join(', ')}` };
}
