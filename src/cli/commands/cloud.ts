import { readFileSync } from 'node:fs';
import { CLIENT_ID_PATTERN, parseBrokerUrl } from '../../cloud/broker-url.js';
import type { CommandResult } from '../../cloud/command.js';
import type { MqttTlsMaterial, ProtocolChoice } from '../../cloud/mqtt-connection.js';
import { vehicleTopics } from '../../cloud/topics.js';
import { AgentError } from '../../core/errors.js';
import { silentLogger } from '../../core/logger.js';
import { readSignerKey } from '../../store/key-files.js';
import { out, parse, requireString } from '../args.js';
import { buildCommand, COMMAND_OPTIONS, commandName, readOpsFiles } from './signing.js';

export const CLOUD_HELP = `vehicle-agent cloud send CMD --key KEY.pem --vehicle VID --broker URL [BROKER OPTIONS]
                           [--args JSON] [--ops FILE]... [--ttl S] [--counter N] [--jti ID]
                           [--timeout MS] [--json]
vehicle-agent cloud keyring push --key KEY.pem --vehicle VID --broker URL [BROKER OPTIONS]
                                 --ops FILE... [--replace] [--wait MS] [--part-bytes N]
                                 [--parts-per-s N] [--json]
vehicle-agent cloud state --vehicle VID --broker URL [BROKER OPTIONS] [--wait MS] [--json]
vehicle-agent cloud fleet send CMD --key KEY.pem (--vehicles VID,... | --vehicles-file FILE)
                                   --broker URL [BROKER OPTIONS] [--args JSON] [--ops FILE]...
                                   [--ttl S] [--timeout MS] [--json]
vehicle-agent cloud fleet watch [--vehicles VID,... | --vehicles-file FILE] --broker URL
                                [BROKER OPTIONS] [--streams result,state,event,status]
                                [--duration MS] [--json]

BROKER OPTIONS: --ca CA.crt --cert CLIENT.crt --client-key CLIENT.key [--prefix vehicle-agent]
                [--protocol auto|5|3.1.1] [--client-id ID]
--broker may be given more than once (the nodes of a cluster): each connection attempt takes the
next URL in turn. --client-id: the MQTT client id (default: a random vehicle-agent-cli-…); a
broker that requires the client id to be the certificate CN needs --client-id CN.

cloud send signs a command with --key (see \`vehicle-agent sign --help\`), publishes it to
<prefix>/<VID>/command and prints the vehicle's coded result from <prefix>/<VID>/command/result
(exit 0 ok, 2 refused, 1 no answer within --timeout, default 15000 ms).
cloud keyring push signs the operation set and publishes it (retained where the broker keeps
retained messages) on <prefix>/<VID>/keyring: the operations the vehicle holds (it is asked for
its set on <prefix>/<VID>/request and answers on <prefix>/<VID>/keyring/vehicle, or with the
manifest of its set in parts, of which only the parts not retained on the broker are asked for;
--wait, default 3000 ms, for each answer, e.g. when it is offline), those
retained there, plus the --ops files (union; --replace publishes only the --ops files). The
vehicle merges it; a revoke always wins. A set larger than --part-bytes (default 262144) goes in
parts on <prefix>/<VID>/keyring/part/<n>, --parts-per-s a second (default 4; 0: as fast as the
broker takes them), and the parts of an earlier set above the new count are cleared.
cloud state asks the vehicle for its state document and prints it (exit 1 if no answer within
--wait, default 3000 ms; the retained one, if the broker delivered one, is printed then, marked).
cloud fleet send signs CMD once per vehicle (the same key, command and arguments; each with its
vehicle's id and its own jti), publishes them all and prints each result as it comes, then a
summary (exit 0 all ok, 2 any refused, 1 any without an answer within --timeout, default 30000
ms). --vehicles takes ids separated by commas and may be repeated; --vehicles-file has one id a
line (or commas; # comments).
cloud fleet watch prints one line per message the vehicles publish (results, state, audit events
de-duplicated by seq, status), prefixed with the time and the vehicle id (--json: one JSON object a
line), until Ctrl-C or --duration. With a vehicle list it asks each vehicle for its state first
(retained messages are not needed); without one it follows every vehicle under --prefix.`;

export const BROKER_OPTIONS = {
  broker: { type: 'string', multiple: true },
  ca: { type: 'string' },
  cert: { type: 'string' },
  'client-key': { type: 'string' },
  prefix: { type: 'string', default: 'vehicle-agent' },
  protocol: { type: 'string', default: 'auto' },
  'client-id': { type: 'string' },
  json: { type: 'boolean' },
} as const;

function readFile(path: string | undefined, what: string): Buffer | undefined {
  if (path === undefined) return undefined;
  try {
    return readFileSync(path);
  } catch (err) {
    throw new AgentError('bad_arguments', `--${what}: cannot read ${path}: ${(err as Error).message}`);
  }
}

export function brokerOptions(values: {
  readonly broker?: readonly string[] | undefined;
  readonly ca?: string | undefined;
  readonly cert?: string | undefined;
  readonly 'client-key'?: string | undefined;
  readonly protocol?: string | undefined;
  readonly 'client-id'?: string | undefined;
}): { urls: readonly string[]; tls: MqttTlsMaterial; protocol: ProtocolChoice; clientId?: string } {
  const urls = values.broker ?? [];
  if (urls.length === 0) throw new AgentError('bad_arguments', '--broker is required');
  // A URL that cannot be used is a usage error here, before any connection is tried.
  for (const url of urls) parseBrokerUrl(url, {}, 'bad_arguments');
  const ca = readFile(values.ca, 'ca');
  const cert = readFile(values.cert, 'cert');
  const key = readFile(values['client-key'], 'client-key');
  if ((cert === undefined) !== (key === undefined))
    throw new AgentError('bad_arguments', '--cert and --client-key go together');
  const protocol = values.protocol ?? 'auto';
  if (protocol !== 'auto' && protocol !== '5' && protocol !== '3.1.1')
    throw new AgentError('bad_arguments', '--protocol must be auto, 5 or 3.1.1');
  const clientId = values['client-id'];
  if (clientId !== undefined && !CLIENT_ID_PATTERN.test(clientId))
    throw new AgentError(
      'bad_arguments',
      '--client-id must be 1 to 128 printable ASCII characters, no spaces',
    );
  return {
    ...(clientId !== undefined ? { clientId } : {}),
    urls,
    tls: { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}) },
    protocol,
  };
}

function waitOption(raw: string | undefined): number {
  const ms = Number(raw);
  if (!Number.isSafeInteger(ms) || ms < 1 || ms > 600_000)
    throw new AgentError('bad_arguments', '--wait must be milliseconds (1 to 600000)');
  return ms;
}

function printResult(result: CommandResult, json: boolean | undefined): void {
  if (json) out(JSON.stringify(result));
  else if (result.status === 'ok')
    out(
      `ok: ${result.message}${result.data !== undefined ? `\n${JSON.stringify(result.data, null, 2)}` : ''}`,
    );
  else out(`refused [${result.code}]: ${result.message}`);
}

export async function cloud(argv: readonly string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'send') return await send(rest);
  if (sub === 'keyring' && rest[0] === 'push') return await push(rest.slice(1));
  if (sub === 'state') return await state(rest);
  if (sub === 'fleet') return await import('./cloud-fleet.js').then((m) => m.fleet(rest));
  throw new AgentError('bad_arguments', `cloud needs send, keyring push, state or fleet\n\n${CLOUD_HELP}`);
}

async function send(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    ...COMMAND_OPTIONS,
    ...BROKER_OPTIONS,
    timeout: { type: 'string', default: '15000' },
  });
  const cmd = commandName(positionals[0]);
  const timeoutMs = Number(values.timeout);
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1)
    throw new AgentError('bad_arguments', '--timeout must be milliseconds');
  const built = buildCommand(cmd, values);
  const broker = brokerOptions(values);
  const topics = vehicleTopics(values.prefix, built.payload.vid);
  const { connectCloudClient, sendCommand } = await import('../../cloud/cloud-client.js');
  const client = await connectCloudClient({ ...broker, log: silentLogger });
  try {
    const result = await sendCommand(client, topics, built.jws, built.payload.jti, timeoutMs);
    printResult(result, values.json);
    return result.status === 'ok' ? 0 : 2;
  } finally {
    await client.close();
  }
}

async function push(argv: readonly string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      key: { type: 'string', short: 'k' },
      vehicle: { type: 'string' },
      ops: { type: 'string', multiple: true },
      replace: { type: 'boolean' },
      wait: { type: 'string', default: '3000' },
      'part-bytes': { type: 'string', default: '262144' },
      'parts-per-s': { type: 'string', default: '4' },
      ...BROKER_OPTIONS,
    },
    false,
  );
  const vid = requireString(values.vehicle, 'vehicle');
  const fresh = readOpsFiles(values.ops ?? []);
  if (fresh.length === 0 && values.replace !== true)
    throw new AgentError('bad_arguments', 'give the operations to publish with --ops FILE');
  const waitMs = waitOption(values.wait);
  const partBytes = Number(values['part-bytes']);
  if (!Number.isSafeInteger(partBytes) || partBytes < 70_000 || partBytes > 16 * 1024 * 1024)
    throw new AgentError('bad_arguments', '--part-bytes must be bytes (70000 to 16777216)');
  const partsPerS = Number(values['parts-per-s']);
  if (!Number.isFinite(partsPerS) || partsPerS < 0 || partsPerS > 10_000)
    throw new AgentError('bad_arguments', '--parts-per-s must be 0 to 10000');
  const signer = readSignerKey(requireString(values.key, 'key'));
  const broker = brokerOptions(values);
  const topics = vehicleTopics(values.prefix, vid);
  const { connectCloudClient } = await import('../../cloud/cloud-client.js');
  const sets = await import('../../cloud/keyring-set.js');
  const { partOfTopic } = await import('../../cloud/topics.js');
  const client = await connectCloudClient({ ...broker, log: silentLogger });
  try {
    const union = new Set<string>();
    // Parts of an earlier cloud set retained on the broker, to clear those above the new count.
    let retainedParts = 0;
    if (!values.replace) {
      const gathered = await gatherKeyringSets(client, vid, topics, waitMs, sets, partOfTopic);
      for (const op of gathered.ops) union.add(op);
      retainedParts = gathered.cloudParts;
    }
    const before = union.size;
    for (const op of fresh) union.add(op);
    // Signers' grants first, revokes last: the vehicle merges part by part.
    const ops = sets.orderForMerge([...union]);
    const signed = sets.signKeyringMessages(
      vid,
      ops,
      signer.key,
      signer.id,
      Math.floor(Date.now() / 1000),
      partBytes,
    );
    const clearParts = async (from: number, to: number): Promise<void> => {
      for (let n = from; n < to; n++)
        await client.publish(`${topics.keyringParts}/${n}`, '', { qos: 1, retain: true });
    };
    let parts = 1;
    if (signed.kind === 'set') {
      await client.publish(topics.keyring, signed.message, { qos: 1, retain: true });
      await clearParts(0, retainedParts);
    } else {
      parts = signed.parts.length;
      for (const [n, message] of signed.parts.entries()) {
        if (n > 0 && partsPerS > 0) await new Promise((r) => setTimeout(r, 1000 / partsPerS));
        await client.publish(`${topics.keyringParts}/${n}`, message, { qos: 1, retain: true });
      }
      // An empty retained message clears the one-message set a smaller keyring left.
      await client.publish(topics.keyring, '', { qos: 1, retain: true });
      await clearParts(parts, retainedParts);
    }
    const summary = {
      topic: signed.kind === 'set' ? topics.keyring : topics.keyringParts,
      operations: ops.length,
      new: ops.length - before,
      parts,
    };
    out(
      values.json
        ? JSON.stringify(summary)
        : `published ${ops.length} operation(s) (${summary.new} new) to ${summary.topic}` +
            (parts > 1 ? ` in ${parts} parts (/0 to /${parts - 1})` : ''),
    );
    return 0;
  } finally {
    await client.close();
  }
}

/** Vehicle parts named in one request (each number at most 5 characters: under the 4 KiB limit). */
const PARTS_PER_REQUEST = 500;
/** Times the parts still lacking are asked for again before the CLI goes on with what it has. */
const MAX_PART_ASKS = 3;

/**
 * Asks the vehicle for its set and gathers the ops of every set and part that comes, holding the
 * ops only: a vehicle in stable parts answers with its manifest, the parts retained on the broker
 * are checked against it, and only those missing or stale are asked for (docs/mqtt.md "Chunked
 * sets"); a vehicle with one set message answers with it. Waits `waitMs` for the first answer and
 * for each next message. What the broker retained of the cloud's set is gathered too. Every op is
 * only collected here: the vehicle checks each one's signature when it merges.
 */
async function gatherKeyringSets(
  client: import('../../cloud/cloud-client.js').CloudClient,
  vid: string,
  topics: ReturnType<typeof vehicleTopics>,
  waitMs: number,
  sets: typeof import('../../cloud/keyring-set.js'),
  partOfTopic: typeof import('../../cloud/topics.js').partOfTopic,
): Promise<{ readonly ops: ReadonlySet<string>; readonly cloudParts: number }> {
  const vs = await import('../../cloud/vehicle-set.js');
  const ops = new Set<string>();
  let cloudParts = 0;
  // The one set message, or parts of the format before stable parts (an older vehicle).
  const vehicle = new sets.SetAssembly();
  const reader = new vs.VehicleSetReader({ vid });
  let live = false;
  let liveManifest = false;
  let asks = 0;
  let askedFor = '';
  const ask = async (parts: readonly number[]): Promise<void> => {
    for (let i = 0; i === 0 || i < parts.length; i += PARTS_PER_REQUEST)
      await client.publish(
        topics.request,
        JSON.stringify({ keyring: { vehicleParts: parts.slice(i, i + PARTS_PER_REQUEST) } }),
        { qos: 1, retain: false },
      );
  };
  await client.subscribe([
    topics.keyring,
    `${topics.keyringParts}/+`,
    topics.keyringVehicle,
    `${topics.keyringVehicleParts}/+`,
    topics.keyringVehicleManifest,
  ]);
  let seen = client.received.length;
  // The manifest (or the one set message) first: the retained parts may be all that is needed.
  await ask([]);
  for (;;) {
    for (; seen < client.received.length; seen++) {
      const m = client.received[seen];
      if (m === undefined || m.payload.length === 0) continue;
      if (m.topic === topics.keyringVehicleManifest) {
        try {
          reader.noteManifest(m.payload);
          if (!m.retain) liveManifest = true;
        } catch {
          // an unreadable manifest names nothing
        }
        continue;
      }
      const cloudPart = partOfTopic(m.topic, topics.keyringParts);
      const vehiclePart = partOfTopic(m.topic, topics.keyringVehicleParts);
      const fromVehicle = m.topic === topics.keyringVehicle || vehiclePart !== undefined;
      if (!fromVehicle && m.topic !== topics.keyring && cloudPart === undefined) continue;
      if (cloudPart !== undefined && m.retain) cloudParts = Math.max(cloudParts, cloudPart + 1);
      try {
        if (vehiclePart !== undefined && vs.isVehiclePart(m.payload)) {
          for (const op of reader.notePart(m.payload, vehiclePart).ops) ops.add(op);
          continue;
        }
        const parsed = sets.parseKeyringMessage(m.payload, fromVehicle ? vehiclePart : cloudPart);
        for (const op of parsed.ops) ops.add(op);
        if (fromVehicle) {
          vehicle.note(parsed);
          if (!m.retain) live = true;
        }
      } catch {
        // an unreadable set or part contributes nothing
      }
    }
    const parts = reader.status();
    if (liveManifest && parts?.complete === true) break;
    if (live && vehicle.status()?.complete === true) break;
    // The vehicle's manifest names parts not here (or here in another version): asked for.
    if (liveManifest && parts !== undefined) {
      const key = `${parts.iat} ${parts.lacking.join(',')}`;
      if (key !== askedFor && asks < MAX_PART_ASKS) {
        askedFor = key;
        asks += 1;
        await ask(parts.lacking);
      }
    }
    const more = await client
      .waitFor(() => client.received.length > seen, waitMs, 'the vehicle keyring set')
      .then(
        () => true,
        () => false,
      );
    if (more) continue;
    // Nothing more came: the lacking parts are asked for once more, else it goes on without.
    if (!liveManifest || asks >= MAX_PART_ASKS) break;
    askedFor = '';
  }
  return { ops, cloudParts };
}

async function state(argv: readonly string[]): Promise<number> {
  const { values } = parse(
    argv,
    { vehicle: { type: 'string' }, wait: { type: 'string', default: '3000' }, ...BROKER_OPTIONS },
    false,
  );
  const vid = requireString(values.vehicle, 'vehicle');
  const waitMs = waitOption(values.wait);
  const broker = brokerOptions(values);
  const topics = vehicleTopics(values.prefix, vid);
  const { connectCloudClient, requestFromVehicle } = await import('../../cloud/cloud-client.js');
  const client = await connectCloudClient({ ...broker, log: silentLogger });
  try {
    const { messages, answered } = await requestFromVehicle(
      client,
      topics,
      'state',
      [topics.state],
      topics.state,
      waitMs,
    );
    const latest = answered ? messages.findLast((m) => !m.retain) : messages.findLast((m) => m.retain);
    if (latest === undefined) {
      process.stderr.write(`no state from ${vid} within ${waitMs} ms (is the vehicle online?)\n`);
      return 1;
    }
    const text = latest.payload.toString('utf8');
    let doc: unknown = text;
    try {
      doc = JSON.parse(text) as unknown;
    } catch {
      // not JSON (not from a vehicle-agent): printed as it came
    }
    if (values.json) out(JSON.stringify({ live: answered, state: doc }));
    else out(`${answered ? '' : '(retained; the vehicle did not answer) '}${JSON.stringify(doc, null, 2)}`);
    return answered ? 0 : 1;
  } finally {
    await client.close();
  }
}
