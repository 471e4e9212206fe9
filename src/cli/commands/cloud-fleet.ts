import { readFileSync } from 'node:fs';
import type { CommandResult } from '../../cloud/command.js';
import {
  FLEET_STREAMS,
  type FleetOutcome,
  type FleetStream,
  fleetExitCode,
  fleetLine,
  parseVehicleList,
  STREAM_SUFFIX,
} from '../../cloud/fleet.js';
import { validateTopicPrefix, vehicleTopics } from '../../cloud/topics.js';
import { AgentError } from '../../core/errors.js';
import { silentLogger } from '../../core/logger.js';
import { out, parse } from '../args.js';
import { BROKER_OPTIONS, brokerOptions } from './cloud.js';
import { buildCommand, COMMAND_OPTIONS, commandName } from './signing.js';

/** Commands published at once before waiting for their PUBACKs (keeps a large fleet in step). */
const PUBLISH_WINDOW = 100;

const VEHICLE_OPTIONS = {
  vehicles: { type: 'string', multiple: true },
  'vehicles-file': { type: 'string' },
} as const;

export async function fleet(argv: readonly string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'send') return await fleetSend(rest);
  if (sub === 'watch') return await fleetWatch(rest);
  throw new AgentError('bad_arguments', 'cloud fleet needs send or watch (see vehicle-agent cloud --help)');
}

function vehicleList(
  values: {
    readonly vehicles?: readonly string[] | undefined;
    readonly 'vehicles-file'?: string | undefined;
  },
  required: boolean,
): string[] | undefined {
  const file = values['vehicles-file'];
  if (!required && values.vehicles === undefined && file === undefined) return undefined;
  let text: string | undefined;
  if (file !== undefined) {
    try {
      text = readFileSync(file === '-' ? 0 : file, 'utf8');
    } catch (err) {
      throw new AgentError(
        'bad_arguments',
        `--vehicles-file: cannot read ${file}: ${(err as Error).message}`,
      );
    }
  }
  return parseVehicleList(values.vehicles ?? [], text);
}

/**
 * The event seqs seen from one vehicle, for de-duplication: a redelivery repeats records within
 * the outbox window, so only the most recent ones are kept (bounded memory on a long watch).
 */
class SeenSeqs {
  private readonly seqs = new Set<number>();
  private highest = 0;
  private static readonly KEEP = 10_000;

  /** False when `seq` was seen (or is too old to tell, which only a redelivery can be). */
  add(seq: number): boolean {
    if (this.seqs.has(seq) || seq <= this.highest - SeenSeqs.KEEP) return false;
    this.seqs.add(seq);
    if (seq > this.highest) {
      this.highest = seq;
      if (this.seqs.size > 2 * SeenSeqs.KEEP)
        for (const s of this.seqs) if (s <= this.highest - SeenSeqs.KEEP) this.seqs.delete(s);
    }
    return true;
  }
}

const stamp = () => new Date().toISOString().slice(11, 23);

async function fleetSend(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    ...COMMAND_OPTIONS,
    ...BROKER_OPTIONS,
    ...VEHICLE_OPTIONS,
    timeout: { type: 'string', default: '30000' },
  });
  const cmd = commandName(positionals[0]);
  const timeoutMs = Number(values.timeout);
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 3_600_000)
    throw new AgentError('bad_arguments', '--timeout must be milliseconds (1 to 3600000)');
  if (values.jti !== undefined)
    throw new AgentError(
      'bad_arguments',
      '--jti is per command: cloud fleet send gives each vehicle its own',
    );
  const vids = vehicleList(values, true) ?? [];
  const prefix = validateTopicPrefix(values.prefix);
  // Signed before connecting: a bad key or argument fails before anything is sent.
  const commands = vids.map((vid) => {
    const built = buildCommand(cmd, { ...values, vehicle: vid });
    return { vid, jti: built.payload.jti, jws: built.jws };
  });
  const broker = brokerOptions(values);
  const { connectCloudClient, parseResult } = await import('../../cloud/cloud-client.js');
  const pending = new Map(commands.map((c) => [c.vid, c.jti]));
  const outcomes = new Map<string, FleetOutcome>();
  let allAnswered: (() => void) | undefined;
  const report = (vid: string, result: CommandResult) => {
    const outcome: FleetOutcome = result.status === 'ok' ? 'ok' : 'refused';
    outcomes.set(vid, outcome);
    pending.delete(vid);
    if (values.json) out(JSON.stringify({ vid, ...result }));
    else out(`${stamp()} ${vid} ${outcome === 'ok' ? 'ok' : `refused [${result.code}]`} ${result.message}`);
    if (pending.size === 0) allAnswered?.();
  };
  const resultPrefix = `${prefix}/`;
  const resultSuffix = `/${STREAM_SUFFIX.result}`;
  const client = await connectCloudClient({
    ...broker,
    log: silentLogger,
    keepReceived: false,
    onMessage: (m) => {
      if (!m.topic.startsWith(resultPrefix) || !m.topic.endsWith(resultSuffix)) return;
      const vid = m.topic.slice(resultPrefix.length, m.topic.length - resultSuffix.length);
      const result = parseResult(m.payload);
      if (result !== undefined && pending.get(vid) === result.jti) report(vid, result);
    },
  });
  try {
    // One wildcard subscription for every result, made before the first command goes out.
    await client.subscribe([`${prefix}/+/${STREAM_SUFFIX.result}`]);
    const done = new Promise<void>((resolve) => {
      allAnswered = resolve;
      if (pending.size === 0) resolve();
    });
    for (let i = 0; i < commands.length; i += PUBLISH_WINDOW)
      await Promise.all(
        commands
          .slice(i, i + PUBLISH_WINDOW)
          .map((c) => client.publish(vehicleTopics(prefix, c.vid).command, c.jws, { qos: 1, retain: false })),
      );
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      done,
      new Promise((resolve) => {
        timer = setTimeout(resolve, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    for (const vid of pending.keys()) {
      outcomes.set(vid, 'no answer');
      if (values.json)
        out(JSON.stringify({ vid, jti: pending.get(vid), status: 'timeout', code: 'result_timeout' }));
      else out(`${stamp()} ${vid} no answer within ${timeoutMs} ms (is the vehicle online?)`);
    }
    const list = [...outcomes.values()];
    const count = (o: FleetOutcome) => list.filter((x) => x === o).length;
    const summary = {
      vehicles: vids.length,
      ok: count('ok'),
      refused: count('refused'),
      noAnswer: count('no answer'),
    };
    if (values.json) out(JSON.stringify({ summary }));
    else
      out(
        `${cmd} to ${summary.vehicles} vehicle(s): ${summary.ok} ok, ${summary.refused} refused, ${summary.noAnswer} no answer`,
      );
    return fleetExitCode(list);
  } finally {
    await client.close();
  }
}

async function fleetWatch(argv: readonly string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      ...BROKER_OPTIONS,
      ...VEHICLE_OPTIONS,
      streams: { type: 'string', default: FLEET_STREAMS.join(',') },
      duration: { type: 'string' },
    },
    false,
  );
  const streams = values.streams.split(',').map((s) => s.trim());
  for (const s of streams)
    if (!(FLEET_STREAMS as readonly string[]).includes(s))
      throw new AgentError('bad_arguments', `--streams: ${s} is not one of ${FLEET_STREAMS.join(', ')}`);
  let durationMs: number | undefined;
  if (values.duration !== undefined) {
    durationMs = Number(values.duration);
    if (!Number.isSafeInteger(durationMs) || durationMs < 1)
      throw new AgentError('bad_arguments', '--duration must be milliseconds');
  }
  const vids = vehicleList(values, false);
  const only = vids === undefined ? undefined : new Set(vids);
  const prefix = validateTopicPrefix(values.prefix);
  const broker = brokerOptions(values);
  const { connectCloudClient } = await import('../../cloud/cloud-client.js');
  // Events come at least once: a seq already printed for the vehicle is a repeat.
  const seen = new Map<string, SeenSeqs>();
  const client = await connectCloudClient({
    ...broker,
    log: silentLogger,
    keepReceived: false,
    onMessage: (m) => {
      const line = fleetLine(prefix, m.topic, m.payload);
      if (line === undefined || (only !== undefined && !only.has(line.vid))) return;
      if (!streams.includes(line.stream)) return;
      if (line.seq !== undefined) {
        const seqs = seen.get(line.vid) ?? new SeenSeqs();
        seen.set(line.vid, seqs);
        if (!seqs.add(line.seq)) return;
      }
      if (values.json)
        out(
          JSON.stringify({
            ts: new Date().toISOString(),
            vid: line.vid,
            stream: line.stream,
            retained: m.retain,
            data: line.data,
          }),
        );
      else out(`${stamp()} ${line.vid} ${line.text}${m.retain ? ' (retained)' : ''}`);
    },
  });
  try {
    await client.subscribe(streams.map((s) => `${prefix}/+/${STREAM_SUFFIX[s as FleetStream]}`));
    // The state of each listed vehicle now, live (a cluster keeps retained state per node).
    if (vids !== undefined && streams.includes('state'))
      for (const vid of vids)
        await client.publish(vehicleTopics(prefix, vid).request, 'state', { qos: 1, retain: false });
    await new Promise<void>((resolve) => {
      const stop = () => resolve();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      if (durationMs !== undefined) setTimeout(stop, durationMs);
    });
    return 0;
  } finally {
    await client.close();
  }
}
