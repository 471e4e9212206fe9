import { createHash, type KeyObject, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { setImmediate as yieldToIo } from 'node:timers/promises';
import type { MergeResult } from '../access/keyring.js';
import type { AgentStatus } from '../agent/agent.js';
import { NoiseSummaries } from '../agent/noise-summary.js';
import type { Config } from '../config/schema.js';
import type { Code } from '../core/codes.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { LockState } from '../core/types.js';
import { MAX_JWS_LENGTH } from '../crypto/jws.js';
import type { AuditRecord } from '../store/audit-log.js';
import { COUNTER_MAP_OPTIONS, JournaledMap } from '../store/journaled-map.js';
import { defaultVehicleClientId, subjectCommonName } from './broker-url.js';
import { type CommandResult, commandJti, errorResult } from './command.js';
import { type CommandAgent, CommandProcessor, type RememberedResult } from './command-processor.js';
import { haDiscoveryConfig, parseHaCommand } from './home-assistant.js';
import { IntakePace, TopicBudget } from './intake.js';
import {
  type AssemblyStatus,
  checkKeyringMessage,
  DEFAULT_CHUNK_BYTES,
  MAX_SET_PARTS,
  SetAssembly,
} from './keyring-set.js';
import {
  type IncomingMessage,
  MqttConnection,
  type MqttSession,
  type MqttTlsMaterial,
} from './mqtt-connection.js';
import { type AuditSource, Outbox } from './outbox.js';
import {
  STATUS_OFFLINE,
  STATUS_ONLINE,
  type StateDocument,
  stateDocument,
  stateFingerprint,
} from './state.js';
import { haDiscoveryTopic, partOfTopic, type VehicleTopics, vehicleTopics } from './topics.js';
import { type VehicleSetAsk, VehicleSetPublisher } from './vehicle-set-publisher.js';
import { agentVersion } from './version.js';

/**
 * The cloud link: the MQTT connection, signed commands, keyring sync, the event outbox, state and
 * Home Assistant discovery, wired together. It runs beside the agent: the agent never calls it,
 * and it reaches the agent only through the same methods the control socket uses.
 */

export type CloudConfig = Config['cloud'];

/** What the link needs from the agent (the Agent class satisfies it). */
export interface CloudAgent extends CommandAgent {
  status(): AgentStatus;
  actuate(intent: 'unlock' | 'lock', by: string, source: string, jti?: string): Promise<LockState>;
  addKeyringOps(jwsList: readonly string[], source: string): Promise<MergeResult>;
  readonly keyring: CommandAgent['keyring'] & {
    /** Every op's signed text (read back from disk: the keyring keeps only decoded ops). */
    opTexts(): Promise<string[]>;
    /** The signed texts of the ops named (the parts of the vehicle's set a change touched). */
    opTextsOf(ids: ReadonlySet<string>): Promise<string[]>;
    /** Every op held, with the base64url SHA-256 of its text (no text read). */
    heldOps(): Iterable<{ readonly id: string; readonly hash: string }>;
    digest(): string;
    /** Resolves once the stored ops are read (the keyring reads them in the background at start). */
    whenMaterialized(): Promise<void>;
  };
}

export interface CloudLinkDeps {
  readonly config: CloudConfig;
  readonly vehicleId: string;
  /** <stateDir>; the link keeps its files in <stateDir>/cloud. */
  readonly stateDir: string;
  readonly agent: CloudAgent;
  readonly audit: AuditSource;
  readonly clock: { now(): number; advanceTo(wallMs: number): void };
  /** The vehicle key, to sign the vehicle's keyring set. */
  readonly vehicleSigner: { readonly key: KeyObject; readonly kid: string };
  readonly log: Logger;
  /** Default: the package version. */
  readonly version?: string;
}

/** The inbound topics, each with a budget of its own. */
export type InboundTopic = 'command' | 'keyring' | 'home-assistant' | 'request';

export interface IntakeStats {
  /** Per topic: messages accepted for work, refused for size, dropped over the budget, bytes accepted. */
  readonly topics: Readonly<Record<InboundTopic, TopicBudget['counts']>>;
  /** Refusals by topic and code (size, budget, retained, and every check that failed). */
  readonly refused: Readonly<Record<string, number>>;
  /** Times the intake waited for its pace, and the total wait (ms). */
  readonly paced: number;
  readonly pacedMs: number;
  /** Refusals folded into cloud.summary audit records instead of one record each. */
  readonly summarised: number;
}

export interface CloudLinkStatus {
  readonly connected: boolean;
  readonly protocol: '5' | '3.1.1';
  readonly outbox: ReturnType<Outbox['stats']>;
  readonly intake: IntakeStats;
  readonly keyringSync: KeyringSyncStatus;
}

/** Keyring sync in parts (docs/mqtt.md "Chunked sets"). */
export interface KeyringSyncStatus {
  /** The newest cloud set seen (parts received of parts; complete once they add up). */
  readonly cloud?: AssemblyStatus & {
    /** Parts whose ops were not all merged (a signer's grant still to come): asked for again. */
    readonly retrying: number;
    /** Times the parts were asked for again. */
    readonly resyncs: number;
  };
  /**
   * The vehicle's set as last published: its digest and in how many parts (1: one set message),
   * and what this link published of it since it started (parts, manifests, set messages).
   */
  readonly vehicle?: {
    readonly digest: string;
    readonly parts: number;
    readonly messages: number;
    readonly bytes: number;
    readonly partsPublished: number;
  };
}

export interface CloudLink {
  readonly topics: VehicleTopics;
  status(): CloudLinkStatus;
  stop(): Promise<void>;
}

/** Largest Home Assistant command (LOCK / UNLOCK and a little room). */
const MAX_HA_COMMAND_BYTES = 64;
/** Largest request on <base>/request (`state`, `keyring`, or the vehicle parts a cloud lacks). */
const MAX_REQUEST_BYTES = 4096;
/**
 * Requests a second: each makes the vehicle publish its state or its whole keyring set again, so
 * an unsigned request from anyone on the broker can cost at most this many publishes a second.
 */
const REQUESTS_PER_S = 2;
/** MQTT framing around a payload: fixed header, topic, packet id, properties. */
const PACKET_OVERHEAD_BYTES = 4096;
/**
 * A cloud set whose parts stopped coming this long before all came (some dropped over the intake
 * budget, or ops that waited for a signer's grant in a later part) is asked for again.
 */
const RESYNC_AFTER_MS = 5000;
/**
 * Times in a row a snapshot's parts are asked for again without any part coming in before the
 * link stops asking (until a new snapshot, a reconnect, or a part arrives).
 */
const MAX_IDLE_RESYNCS = 8;
/**
 * A vehicle set in parts is republished for a change after a pause in proportion to what the last
 * round sent (at this many bytes a second: a part and the manifest, about 3 s), at most
 * CHUNKED_REPUBLISH_MS (a bulk change that touched every part); a request is answered at once.
 */
const REPUBLISH_BYTES_PER_S = 64 * 1024;
const CHUNKED_REPUBLISH_MS = 30_000;
/** What the vehicle's set last published was (parts, their sums and counts, the manifest). */
const VEHICLE_SET_FILE = 'keyring-vehicle-set.json';
/** Where the format before stable parts kept its part count (read once, to clear its leftovers). */
const VEHICLE_PARTS_FILE = 'keyring-vehicle-parts';

/** Audit record type of a refusal written in full, per topic (as before the summaries). */
const REFUSAL_TYPE: Record<InboundTopic, string> = {
  command: 'command.rejected',
  keyring: 'keyring.set.rejected',
  'home-assistant': 'ha.command.rejected',
  request: 'request.rejected',
};

function readPem(path: string | undefined, what: string): Buffer | undefined {
  if (path === undefined) return undefined;
  try {
    return readFileSync(path);
  } catch (err) {
    throw new AgentError('config_invalid', `cloud.${what}: cannot read ${path}: ${(err as Error).message}`, {
      field: `cloud.${what}`,
      file: path,
    });
  }
}

export function readTlsMaterial(
  config: Pick<CloudConfig, 'caFile' | 'certFile' | 'keyFile'>,
): MqttTlsMaterial {
  const ca = readPem(config.caFile, 'caFile');
  const cert = readPem(config.certFile, 'certFile');
  const key = readPem(config.keyFile, 'keyFile');
  if ((cert === undefined) !== (key === undefined))
    throw new AgentError(
      'config_invalid',
      'cloud.certFile and cloud.keyFile go together: set both or neither',
      {
        field: 'cloud.keyFile',
      },
    );
  return { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}) };
}

/** Opens the link's state and starts connecting; returns at once (never waits for the broker). */
export async function startCloudLink(deps: CloudLinkDeps): Promise<CloudLink> {
  const { config, vehicleId, agent, log } = deps;
  const version = deps.version ?? agentVersion();
  const topics = vehicleTopics(config.topicPrefix, vehicleId);
  const tls = readTlsMaterial(config);
  const dir = join(deps.stateDir, 'cloud');
  await mkdir(dir, { recursive: true, mode: 0o700 });

  const counters = await JournaledMap.open<number>(join(dir, 'command-counters'), {
    ...COUNTER_MAP_OPTIONS,
    parseValue: (v) => {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
        throw new Error('counter must be an integer');
      return v;
    },
    logger: log.child({ store: 'command-counters' }),
  });
  const results = await JournaledMap.open<RememberedResult>(join(dir, 'command-results'), {
    parseValue: parseRemembered,
    logger: log.child({ store: 'command-results' }),
  });
  const outbox = await Outbox.open({
    source: deps.audit,
    dir,
    maxEvents: config.outbox.maxEvents,
    pollMs: config.outbox.pollMs,
    emit: (event) => agent.audit(event),
    log: log.child({ part: 'outbox' }),
  });

  const ha = config.homeAssistant;
  if (ha.enabled && ha.allowUnsignedCommands) {
    log.warn(
      { code: 'unauthorized', topic: topics.haCommand },
      'Home Assistant unsigned commands are ENABLED: anyone who can publish to this topic on the broker can ' +
        'lock and unlock the vehicle. This trusts the broker; signed commands do not.',
    );
  }

  let untrustedSince: string | undefined;
  let lastFingerprint: string | undefined;
  let vehicleSetPublishing = false;
  // What the next round is asked for beyond a change (see VehicleSetAsk), and whether a change
  // goes now rather than after the pause.
  let askAll = false;
  let askManifest = false;
  let askNow = false;
  const askParts = new Set<number>();
  let nextChangeAt = Number.NEGATIVE_INFINITY;
  // Per keyring topic (the set topic and each part topic): the SHA-256 of the payload last merged
  // in full. A retained set or part comes again on every connect and every resync: one already
  // merged costs a hash, no budget, no parse.
  const mergedPayloads = new Map<string, string>();
  const assembly = new SetAssembly();
  let assemblyDigest: string | undefined;
  const retryingParts = new Set<number>();
  let lastPartAt = Number.NEGATIVE_INFINITY;
  let resyncs = 0;
  let idleResyncs = 0;

  // ── intake budgets (docs/mqtt.md "Floods") ──
  const intake = config.intake;
  const mono = () => performance.now();
  const pace = new IntakePace({ messagesPerS: intake.messagesPerS, bytesPerS: intake.bytesPerS }, mono());
  const budgets: Record<InboundTopic, TopicBudget> = {
    command: new TopicBudget(
      { messagesPerS: intake.commandsPerS, bytesPerS: intake.commandBytesPerS, maxBytes: MAX_JWS_LENGTH },
      mono(),
    ),
    keyring: new TopicBudget(
      {
        messagesPerS: intake.keyringSetsPerS,
        bytesPerS: intake.keyringBytesPerS,
        maxBytes: intake.maxKeyringSetBytes,
      },
      mono(),
    ),
    'home-assistant': new TopicBudget(
      { messagesPerS: intake.haCommandsPerS, bytesPerS: 64 * 1024, maxBytes: MAX_HA_COMMAND_BYTES },
      mono(),
    ),
    request: new TopicBudget(
      { messagesPerS: REQUESTS_PER_S, bytesPerS: 64 * 1024, maxBytes: MAX_REQUEST_BYTES },
      mono(),
    ),
  };
  const refusedCounts = new Map<string, number>();
  let paced = 0;
  let pacedMs = 0;
  // Network noise is summarised like reader noise: per topic and code, one record in full and
  // one summary per interval, whatever the flood (the audit log and the outbox stay small).
  const noise = new NoiseSummaries({
    intervalMs: intake.summaryIntervalMs,
    now: () => deps.clock.now(),
    emit: (s) =>
      agent.audit({
        type: 'cloud.summary',
        source: 'cloud',
        topic: s.reader,
        code: s.code,
        count: s.count,
        from: s.from,
        to: s.to,
      }),
  });
  const refuse = (topic: InboundTopic, code: Code | string, detail: Record<string, unknown> = {}): void => {
    const key = `${topic}:${code}`;
    refusedCounts.set(key, (refusedCounts.get(key) ?? 0) + 1);
    if (noise.note(topic, code) === 'record')
      agent.audit({ type: REFUSAL_TYPE[topic], source: 'cloud', code, ...detail });
  };
  const intakeStats = (): IntakeStats => ({
    topics: {
      command: { ...budgets.command.counts },
      keyring: { ...budgets.keyring.counts },
      'home-assistant': { ...budgets['home-assistant'].counts },
      request: { ...budgets.request.counts },
    },
    refused: Object.fromEntries(refusedCounts),
    paced,
    pacedMs: Math.round(pacedMs),
    summarised: noise.suppressed,
  });

  const keyringSyncStatus = (): KeyringSyncStatus => {
    const s = assembly.status();
    return {
      ...(s !== undefined ? { cloud: { ...s, retrying: retryingParts.size, resyncs } } : {}),
      ...(vehicleSet.published !== undefined
        ? { vehicle: { ...vehicleSet.published, ...vehicleSet.stats } }
        : {}),
    };
  };

  const snapshot = (): StateDocument => {
    const s = agent.status();
    if (s.clock.trust !== 'trusted') untrustedSince ??= s.clock.now;
    else untrustedSince = undefined;
    const o = outbox.stats();
    return stateDocument({
      vehicleId,
      lock: s.lock,
      keyring: s.keyring,
      clock: s.clock,
      readers: s.readers,
      version,
      ...(untrustedSince !== undefined ? { untrustedSince } : {}),
      outbox: { lastSeq: o.lastSeq, ackedSeq: o.ackedSeq, pending: o.pending, dropped: o.dropped },
      mqtt: { protocol: connection.protocolVersion === 5 ? '5' : '3.1.1' },
    });
  };

  const fireAndForget = (what: string, p: Promise<void>): void => {
    p.catch((err: unknown) =>
      log.debug({ code: 'broker_unavailable', err: String(err), what }, 'publish not delivered'),
    );
  };

  const publishState = (): void => {
    if (!connection.connected) return;
    const doc = snapshot();
    lastFingerprint = stateFingerprint(doc);
    fireAndForget('state', connection.publish(topics.state, JSON.stringify(doc), { qos: 1, retain: true }));
  };

  /** A cloud set arriving in parts: the vehicle's own (chunked) set waits until it is in. */
  const cloudSetArriving = (): boolean => {
    const s = assembly.status();
    return s !== undefined && s.received < s.parts && mono() - lastPartAt < RESYNC_AFTER_MS;
  };

  const vehicleSet = await VehicleSetPublisher.open({
    vehicleId,
    signer: deps.vehicleSigner,
    keyring: agent.keyring,
    topics: {
      set: topics.keyringVehicle,
      parts: topics.keyringVehicleParts,
      manifest: topics.keyringVehicleManifest,
    },
    publish: (topic, payload) => connection.publish(topic, payload, { qos: 1, retain: true }),
    nowS: () => Math.floor(deps.clock.now() / 1000),
    maxBytes: DEFAULT_CHUNK_BYTES,
    stateFile: join(dir, VEHICLE_SET_FILE),
    legacyPartsFile: join(dir, VEHICLE_PARTS_FILE),
    log,
  });

  /**
   * The vehicle's set (docs/mqtt.md "Chunked sets"): one set message while it fits, else the
   * parts a change touched and the manifest; on a connect the manifest alone when nothing changed;
   * on a request the parts it names, or everything. One round at a time; asks made meanwhile are
   * taken by the next round (the next tick).
   */
  const publishVehicleSet = (ask: Partial<VehicleSetAsk> & { readonly now?: boolean } = {}): void => {
    askAll ||= ask.all === true;
    askManifest ||= ask.manifest === true;
    askNow ||= ask.now === true;
    for (const p of ask.parts ?? []) if (askParts.size < MAX_SET_PARTS) askParts.add(p);
    if (!connection.connected || vehicleSetPublishing) return;
    vehicleSetPublishing = true;
    let taken: VehicleSetAsk | undefined;
    void agent.keyring
      .whenMaterialized()
      .then(async () => {
        const asked = askAll || askManifest || askParts.size > 0;
        if (!asked && vehicleSet.current()) return;
        // A change in parts waits for its pause, and not while a cloud set comes in parts (each
        // would change it again); a request or a connect is answered.
        if (!asked && !askNow && cloudSetArriving()) return;
        if (!asked && !askNow && vehicleSet.chunked && mono() < nextChangeAt) return;
        taken = { all: askAll, parts: [...askParts], manifest: askManifest };
        askAll = false;
        askManifest = false;
        askNow = false;
        askParts.clear();
        const before = vehicleSet.stats.bytes;
        const outcome = await vehicleSet.round(taken);
        // The keyring changed while it was read: what was asked goes with the next round.
        if (outcome === 'raced') publishVehicleSet(taken);
        taken = undefined;
        const sent = vehicleSet.stats.bytes - before;
        nextChangeAt = mono() + Math.min(CHUNKED_REPUBLISH_MS, (1000 * sent) / REPUBLISH_BYTES_PER_S);
        log.debug({ outcome, bytes: sent, ...vehicleSet.published }, 'vehicle keyring set published');
      })
      .catch((err: unknown) => {
        // Not delivered: asked again by the next round.
        if (taken !== undefined) publishVehicleSet(taken);
        log.debug({ err: String(err) }, 'vehicle keyring set not published');
      })
      .finally(() => {
        vehicleSetPublishing = false;
      });
  };

  const processor = new CommandProcessor({
    vehicleId,
    agent,
    clock: deps.clock,
    limits: { maxLifetimeS: config.commands.maxLifetimeS, maxFutureS: config.commands.maxFutureS },
    counters,
    results,
    maxResults: config.commands.rememberResults,
    stateSnapshot: () => ({ ...snapshot() }),
    onStateRefresh: () => publishState(),
    source: 'cloud',
    log: log.child({ part: 'commands' }),
    onRejected: ({ code, ...detail }) => refuse('command', code, detail),
  });

  const publishResult = (result: CommandResult): void => {
    fireAndForget(
      'result',
      connection.publish(topics.commandResult, JSON.stringify(result), { qos: 1, retain: false }),
    );
  };

  /**
   * A set (part undefined) or one part of a chunked set: checked on its own, its ops merged at
   * once (each verified by the keyring), and noted in the assembly that says when every part of
   * the newest snapshot came.
   */
  const onKeyringMessage = async (
    topic: string,
    payload: Buffer,
    payloadDigest: string,
    part: number | undefined,
  ): Promise<void> => {
    const check = checkKeyringMessage(payload, {
      vehicleId,
      keys: agent.keyring,
      nowMs: deps.clock.now(),
      part,
    });
    if (!check.ok) {
      log.debug({ code: check.code, err: check.message, part }, 'keyring set from the cloud refused');
      refuse('keyring', check.code, part !== undefined ? { part } : {});
      return;
    }
    const message = check.message;
    const note = assembly.note(message);
    const status = assembly.status();
    if (status !== undefined && status.setDigest !== assemblyDigest) {
      // A new snapshot: its parts are counted afresh.
      assemblyDigest = status.setDigest;
      retryingParts.clear();
      resyncs = 0;
    }
    if (note === 'part' || note === 'complete' || retryingParts.has(part ?? 0)) idleResyncs = 0;
    if (part !== undefined) lastPartAt = mono();
    const merged = await agent.addKeyringOps(message.ops, 'cloud');
    // Ops refused now may merge later (their signer's grant in a part still on its way): the
    // payload is not marked merged, so it is taken again when it comes again.
    if (merged.rejected.length === 0) {
      mergedPayloads.set(topic, payloadDigest);
      retryingParts.delete(part ?? 0);
    } else if (note !== 'stale') retryingParts.add(part ?? 0);
    const detail = {
      by: message.kid,
      added: merged.added.length,
      duplicates: merged.duplicates,
      rejected: merged.rejected.length,
    };
    if (message.kind === 'set') {
      log.info(detail, 'keyring set from the cloud merged');
    } else {
      log.debug({ ...detail, part, parts: message.manifest.parts, note }, 'keyring set part merged');
      if (note === 'complete')
        log.info(
          {
            parts: message.manifest.parts,
            operations: message.manifest.setCount,
            retrying: retryingParts.size,
          },
          'keyring set from the cloud merged, all parts',
        );
      else if (note === 'inconsistent') {
        log.warn(
          { code: 'keyring_set_inconsistent', by: message.kid, setDigest: message.manifest.setDigest },
          'the parts of the cloud keyring set do not add up to its digest',
        );
        refuse('keyring', 'keyring_set_inconsistent');
      }
    }
    // Parts change the keyring many times over: the vehicle's set and the state follow once all
    // parts are in (or on the next tick), not after each.
    if (message.kind === 'set' || note === 'complete' || note === 'inconsistent') {
      publishVehicleSet({ now: note === 'complete' || note === 'inconsistent' });
      publishState();
    }
  };

  /** Parts missing or not all merged, quiet for a while: asked for again (retained or answered). */
  const resyncIfStalled = (): void => {
    const s = assembly.status();
    if (s === undefined || !connection.connected || idleResyncs >= MAX_IDLE_RESYNCS) return;
    if (s.received === s.parts && retryingParts.size === 0) return;
    if (mono() - lastPartAt < RESYNC_AFTER_MS) return;
    resyncs += 1;
    idleResyncs += 1;
    lastPartAt = mono();
    log.info(
      { missing: s.parts - s.received, retrying: retryingParts.size, resync: resyncs },
      'keyring set parts asked for again',
    );
    // Subscribing again makes the broker send the retained parts again; those already merged
    // are skipped by their hash.
    connection
      .subscribe([
        { topic: topics.keyring, qos: 1 },
        { topic: `${topics.keyringParts}/+`, qos: 1 },
      ])
      .catch((err: unknown) => log.debug({ err: String(err) }, 'keyring parts not asked for again'));
    requestKeyringSet();
  };

  // Unsigned commands only over MQTT 5: with 3.1.1 the broker clears the retain flag of live
  // messages, so a retained UNLOCK could not be told from a fresh one.
  const takesHaCommands = (): boolean =>
    ha.enabled && ha.allowUnsignedCommands && connection.protocolVersion === 5;

  const topicOf = (topic: string): InboundTopic | undefined => {
    if (topic === topics.command) return 'command';
    if (topic === topics.keyring) return 'keyring';
    const part = partOfTopic(topic, topics.keyringParts);
    if (part !== undefined && part < MAX_SET_PARTS) return 'keyring';
    if (topic === topics.haCommand && takesHaCommands()) return 'home-assistant';
    if (topic === topics.request) return 'request';
    return undefined;
  };

  /** One message: size and budget first (nothing parsed yet), then the retain flag, then the work. */
  const handleMessage = async (message: IncomingMessage): Promise<void> => {
    const topic = topicOf(message.topic);
    if (topic === undefined) return;
    // MQTT 3.1.1: a message over the packet limit arrives cut by the size guard, its payload
    // never buffered.
    if (message.oversizedBytes !== undefined) {
      budgets[topic].countTooLarge();
      return refuse(topic, 'message_too_large', { bytes: message.oversizedBytes });
    }
    // An empty retained message clears a topic; it carries nothing to act on.
    if (message.payload.length === 0) return;
    const bytes = message.payload.length;
    let part: number | undefined;
    let payloadDigest = '';
    if (topic === 'keyring') {
      part = partOfTopic(message.topic, topics.keyringParts);
      payloadDigest = createHash('sha256').update(message.payload).digest('hex');
      // Taken again (a reconnect, a resync): already merged, nothing to do, no budget spent.
      if (mergedPayloads.get(message.topic) === payloadDigest) return;
    }
    const verdict = budgets[topic].admit(bytes, mono());
    if (verdict === 'too_large') return refuse(topic, 'message_too_large', { bytes });
    if (verdict === 'over_budget') return refuse(topic, 'cloud_budget_exceeded');
    switch (topic) {
      case 'command': {
        // A retained command never acts, whoever signed it (a retained message comes again on
        // every connect): refused before any parse or signature check.
        if (message.retain) {
          refuse('command', 'retained_command');
          publishResult(errorResult(commandJti(message.payload.toString('utf8')), 'retained_command'));
          return;
        }
        const result = await processor.handle(message.payload.toString('utf8'), false);
        // Published before this handler returns, so before the PUBACK: a command the broker
        // sees acknowledged has its result on the wire ahead of the acknowledgement.
        publishResult(result);
        return;
      }
      case 'keyring':
        return processor.serialize(() =>
          onKeyringMessage(message.topic, message.payload, payloadDigest, part),
        );
      case 'home-assistant': {
        if (message.retain) return refuse('home-assistant', 'retained_command');
        const intent = parseHaCommand(message.payload);
        if (intent === undefined) return refuse('home-assistant', 'unknown_command');
        await processor.serialize(() => agent.actuate(intent, 'home-assistant', 'home-assistant'));
        publishState();
        return;
      }
      case 'request': {
        // Read-only and budgeted, so unsigned: it only repeats what the vehicle publishes anyway,
        // for a cloud that cannot count on retained delivery (a broker cluster).
        const what = message.payload.toString('utf8').trim();
        if (what === 'state') publishState();
        else if (what === 'keyring') publishVehicleSet({ all: true });
        else {
          const parts = requestedVehicleParts(what);
          if (parts === undefined) refuse('request', 'unknown_command');
          // None named: the manifest (or the one set message), to see what is stale.
          else publishVehicleSet(parts.length === 0 ? { manifest: true } : { parts });
        }
        return;
      }
    }
  };

  /**
   * The connection calls this one message at a time and acknowledges the message (PUBACK) only
   * when it resolves: after the work, then after the intake pace. Between two messages the event
   * loop always gets a turn (setImmediate), so a reader's I/O never waits behind more than one.
   */
  const onMessage = async (message: IncomingMessage): Promise<void> => {
    const wait = pace.charge(message.payload.length, mono());
    try {
      await handleMessage(message);
    } catch (err) {
      const e = toAgentError(err);
      log.error({ code: e.code, err: e.message, topic: message.topic }, 'cloud message failed');
    }
    if (wait > 0) {
      paced += 1;
      pacedMs += wait;
      await new Promise((resolve) => setTimeout(resolve, wait));
    } else {
      await yieldToIo();
    }
  };

  /** Asks the cloud for its keyring set (answered on `keyring`): no retained delivery needed. */
  const requestKeyringSet = (): void => {
    void agent.keyring.whenMaterialized().then(
      () => {
        if (!connection.connected) return;
        const k = agent.status().keyring;
        // cloudSet: the newest cloud set this vehicle has seen, and whether all its parts came
        // and merged; a cloud whose set still has that digest can skip the answer.
        const s = assembly.status();
        const cloudSet =
          s === undefined
            ? undefined
            : {
                digest: s.setDigest,
                iat: s.iat,
                complete: s.complete && retryingParts.size === 0,
                ...(s.received < s.parts ? { missing: assembly.missing(64) } : {}),
              };
        const request = {
          vid: vehicleId,
          digest: k.digest,
          operations: k.operations,
          ...(cloudSet !== undefined ? { cloudSet } : {}),
        };
        fireAndForget(
          'keyring request',
          connection.publish(topics.keyringRequest, JSON.stringify(request), { qos: 1, retain: false }),
        );
      },
      (err: unknown) => log.debug({ err: String(err) }, 'keyring not read; keyring set not requested'),
    );
  };

  const onConnect = (session: MqttSession): void => {
    fireAndForget('status', connection.publish(topics.status, STATUS_ONLINE, { qos: 1, retain: true }));
    idleResyncs = 0;
    publishState();
    // On every connect: the manifest (or the one set message), and the parts changed since the
    // last publish. A broker that lost the parts it retained is covered by a cloud asking.
    publishVehicleSet({ manifest: true });
    if (ha.enabled) {
      fireAndForget(
        'discovery',
        connection.publish(
          haDiscoveryTopic(ha.discoveryPrefix, vehicleId),
          JSON.stringify(haDiscoveryConfig(topics, vehicleId, ha.name, version)),
          { qos: 1, retain: true },
        ),
      );
    }
    const subscriptions = [
      { topic: topics.command, qos: 1 as const, rap: true },
      { topic: topics.keyring, qos: 1 as const },
      { topic: `${topics.keyringParts}/+`, qos: 1 as const },
      { topic: topics.request, qos: 1 as const },
      ...(takesHaCommands() ? [{ topic: topics.haCommand, qos: 1 as const, rap: true }] : []),
    ];
    if (ha.enabled && ha.allowUnsignedCommands && !takesHaCommands())
      log.warn(
        { code: 'retained_command', topic: topics.haCommand },
        'Home Assistant unsigned commands need MQTT 5 (retain as published); not taken over MQTT 3.1.1',
      );
    connection.subscribe(subscriptions).then(
      () => {
        log.debug({ topics: subscriptions.length }, 'cloud link subscribed');
        // Asked once subscribed, so the answer cannot pass by.
        requestKeyringSet();
      },
      (err: unknown) => {
        log.error({ code: 'broker_unavailable', err: String(err) }, 'subscribe failed');
      },
    );
    const window = Math.max(1, Math.min(config.outbox.inFlight, session.receiveMaximum));
    outbox.attach(
      (record: AuditRecord) =>
        connection.publish(topics.events, JSON.stringify(record), { qos: 1, retain: false }),
      window,
    );
  };

  const clientId = config.clientId ?? defaultVehicleClientId(vehicleId);
  warnOnIdentityMismatch(tls, clientId, log);
  const connection = new MqttConnection(
    {
      urls: config.url,
      clientId,
      tls,
      protocol: config.protocol,
      keepaliveS: config.keepaliveS,
      connectTimeoutMs: config.connectTimeoutMs,
      sessionExpiryS: config.sessionExpiryS,
      backoff: {
        minMs: config.reconnectMinMs,
        maxMs: Math.max(config.reconnectMinMs, config.reconnectMaxMs),
      },
      will: { topic: topics.status, payload: STATUS_OFFLINE, qos: 1, retain: true },
      maxPacketBytes: Math.max(intake.maxKeyringSetBytes, MAX_JWS_LENGTH) + PACKET_OVERHEAD_BYTES,
      receiveMaximum: intake.receiveMaximum,
      oversizedBytesPerS: intake.bytesPerS,
      log,
    },
    { onConnect, onDisconnect: () => outbox.detach(), onMessage },
  );

  const stateTimer = setInterval(() => {
    if (!connection.connected) return;
    if (stateFingerprint(snapshot()) !== lastFingerprint) publishState();
    publishVehicleSet();
    resyncIfStalled();
  }, config.stateIntervalMs);
  stateTimer.unref();

  connection.start();
  log.info(
    { urls: config.url, base: topics.base, tls: tls.cert !== undefined ? 'client certificate' : 'none' },
    'cloud link starting',
  );

  let stopping: Promise<void> | undefined;
  return {
    topics,
    status: () => ({
      connected: connection.connected,
      protocol: connection.protocolVersion === 5 ? '5' : '3.1.1',
      outbox: outbox.stats(),
      intake: intakeStats(),
      keyringSync: keyringSyncStatus(),
    }),
    stop: () => {
      stopping ??= (async () => {
        clearInterval(stateTimer);
        noise.flush();
        await Promise.race([processor.drain(), new Promise((r) => setTimeout(r, 2000).unref())]);
        await outbox.close();
        await connection.stop({ topic: topics.status, payload: STATUS_OFFLINE, qos: 1, retain: true });
        await counters.close();
        await results.close();
      })();
      return stopping;
    },
  };
}

/**
 * Brokers that take the client id from the certificate (ejabberd, AWS IoT policies, Mosquitto's
 * use_identity_as_username with an ACL on %c) refuse or confine a client whose id is not its CN:
 * said once at start, with both names, rather than as a refused connection later.
 */
function warnOnIdentityMismatch(tls: MqttTlsMaterial, clientId: string, log: Logger): void {
  if (tls.cert === undefined) return;
  let cn: string | undefined;
  try {
    cn = subjectCommonName(new X509Certificate(tls.cert).subject);
  } catch (err) {
    log.warn({ code: 'config_invalid', err: String(err) }, 'cloud.certFile is not a readable certificate');
    return;
  }
  if (cn !== undefined && cn !== clientId)
    log.warn(
      { code: 'config_invalid', clientId, certificateCn: cn },
      'the MQTT client id is not the certificate CN: brokers that require them to agree will refuse ' +
        'the vehicle (set cloud.clientId to the CN, or issue the certificate with CN = the client id)',
    );
}

/**
 * The parts a request `{"keyring": {"vehicleParts": [n, ...]}}` names (an empty list: none, the
 * manifest alone), or undefined when it is not such a request.
 */
export function requestedVehicleParts(text: string): number[] | undefined {
  if (!text.startsWith('{')) return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return undefined;
  }
  const parts = (raw as { keyring?: { vehicleParts?: unknown } } | null)?.keyring?.vehicleParts;
  if (!Array.isArray(parts)) return undefined;
  if (!parts.every((n) => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0 && n < MAX_SET_PARTS))
    return undefined;
  return parts as number[];
}

function parseRemembered(value: unknown): RememberedResult {
  const v = value as { result?: unknown; at?: unknown } | null;
  const r = v?.result as Partial<CommandResult> | undefined;
  if (
    typeof v !== 'object' ||
    v === null ||
    typeof v.at !== 'number' ||
    typeof r !== 'object' ||
    r === null ||
    (r.status !== 'ok' && r.status !== 'error') ||
    typeof r.code !== 'string' ||
    typeof r.message !== 'string'
  ) {
    throw new Error('not a remembered command result');
  }
  return { result: r as CommandResult, at: v.at };
}
