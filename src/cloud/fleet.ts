import { AgentError } from '../core/errors.js';

/**
 * The fleet operator's view (`vehicle-agent cloud fleet`): which vehicles a command goes to, and
 * one line per message the vehicles publish. Pure: no MQTT, no clock, no files.
 */

/** One topic level of [A-Za-z0-9._-]: a vehicle id can never be a wildcard or span levels. */
const VEHICLE_ID = /^[A-Za-z0-9._-]{1,128}$/;
/** More than this many vehicles in one command is a mistake in the list, not a fleet. */
export const MAX_FLEET_VEHICLES = 100_000;

/**
 * Vehicle ids from `--vehicles` values (comma separated) and a file's text (one per line, or
 * comma separated; blank lines and # comments skipped), in order, each once.
 */
export function parseVehicleList(values: readonly string[], fileText?: string): string[] {
  const items: string[] = [];
  for (const v of values) items.push(...v.split(','));
  if (fileText !== undefined)
    for (const line of fileText.split('\n')) {
      const t = line.replace(/#.*$/, '');
      items.push(...t.split(','));
    }
  const ids: string[] = [];
  const seen = new Set<string>();
  for (const raw of items) {
    const id = raw.trim();
    if (id === '') continue;
    if (!VEHICLE_ID.test(id))
      throw new AgentError(
        'bad_arguments',
        `not a vehicle id: ${JSON.stringify(id.slice(0, 40))} (1 to 128 of A-Z a-z 0-9 . _ -)`,
      );
    if (seen.has(id)) continue;
    seen.add(id);
    ids.push(id);
  }
  if (ids.length === 0)
    throw new AgentError('bad_arguments', 'no vehicle ids: give --vehicles or --vehicles-file');
  if (ids.length > MAX_FLEET_VEHICLES)
    throw new AgentError('bad_arguments', `${ids.length} vehicles: at most ${MAX_FLEET_VEHICLES} at once`);
  return ids;
}

export const FLEET_STREAMS = ['result', 'state', 'event', 'status'] as const;
export type FleetStream = (typeof FLEET_STREAMS)[number];

/** The topic suffix (after <prefix>/<vid>/) of each stream. */
export const STREAM_SUFFIX: Readonly<Record<FleetStream, string>> = {
  result: 'command/result',
  state: 'state',
  event: 'events',
  status: 'status',
};

export interface FleetLine {
  readonly vid: string;
  readonly stream: FleetStream;
  /** The payload as JSON, or `{ unreadable: <byte count> }`. */
  readonly data: unknown;
  /** For people: one line, without the vehicle id or the time. */
  readonly text: string;
  /** Events only: the record's seq (the watcher de-duplicates by it). */
  readonly seq?: number;
}

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** Printable and short: a hostile payload cannot move the cursor or flood a line. */
function clean(value: unknown, max = 80): string {
  const text = typeof value === 'string' ? value : (JSON.stringify(value) ?? '');
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is removed
  const printable = text.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
  return printable.length > max ? `${printable.slice(0, max - 1)}…` : printable;
}

/** The vehicle id and stream of a topic under `prefix`, or undefined for anything else. */
export function streamOf(prefix: string, topic: string): { vid: string; stream: FleetStream } | undefined {
  if (!topic.startsWith(`${prefix}/`)) return undefined;
  const rest = topic.slice(prefix.length + 1);
  const slash = rest.indexOf('/');
  if (slash <= 0) return undefined;
  const vid = rest.slice(0, slash);
  const suffix = rest.slice(slash + 1);
  const stream = FLEET_STREAMS.find((s) => STREAM_SUFFIX[s] === suffix);
  return stream === undefined || !VEHICLE_ID.test(vid) ? undefined : { vid, stream };
}

function describe(stream: FleetStream, d: Record<string, unknown>): { text: string; seq?: number } {
  switch (stream) {
    case 'result': {
      const head = d.status === 'ok' ? 'ok' : `refused [${clean(d.code, 40)}]`;
      return { text: `result ${head} ${clean(d.message)} (jti ${clean(d.jti, 40)})` };
    }
    case 'state': {
      const keyring = isRecord(d.keyring) ? d.keyring : {};
      const clock = isRecord(d.clock) ? d.clock : {};
      const outbox = isRecord(d.outbox) ? d.outbox : {};
      const digest = typeof keyring.digest === 'string' ? keyring.digest.slice(0, 8) : '?';
      return {
        text:
          `state lock=${clean(d.lock, 20)} keyring=${clean(digest, 8)} (${clean(keyring.operations ?? '?', 12)} ops) ` +
          `clock=${clean(clock.trust ?? '?', 20)} outbox=${clean(outbox.ackedSeq ?? '?', 12)}/${clean(outbox.lastSeq ?? '?', 12)}`,
      };
    }
    case 'status':
      return { text: `status ${clean(d.state, 20)}` };
    case 'event': {
      const seq = typeof d.seq === 'number' && Number.isSafeInteger(d.seq) ? d.seq : undefined;
      const details = ['result', 'action', 'cmd', 'code', 'subject', 'reason']
        .filter((k) => d[k] !== undefined)
        .map((k) => `${k}=${clean(d[k], 40)}`);
      return {
        text: `event #${seq ?? '?'} ${clean(d.type, 40)}${details.length > 0 ? ` ${details.join(' ')}` : ''}`,
        ...(seq !== undefined ? { seq } : {}),
      };
    }
  }
}

/** One message from a vehicle as a fleet line, or undefined when the topic is not a fleet stream. */
export function fleetLine(prefix: string, topic: string, payload: Buffer): FleetLine | undefined {
  const where = streamOf(prefix, topic);
  if (where === undefined) return undefined;
  let data: unknown;
  try {
    data = JSON.parse(payload.toString('utf8')) as unknown;
  } catch {
    data = undefined;
  }
  if (!isRecord(data)) {
    return {
      ...where,
      data: { unreadable: payload.length },
      text: `${where.stream} unreadable (${payload.length} bytes)`,
    };
  }
  return { ...where, data, ...describe(where.stream, data) };
}

export type FleetOutcome = 'ok' | 'refused' | 'no answer';

/** The exit code of `cloud fleet send`: 0 all ok, 1 any vehicle did not answer, else 2. */
export function fleetExitCode(outcomes: readonly FleetOutcome[]): number {
  if (outcomes.includes('no answer')) return 1;
  return outcomes.includes('refused') ? 2 : 0;
}
