import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { parseResult } from '../cloud/cloud-client.js';
import { newJti, parseCommandArgs, signCommand } from '../cloud/command.js';
import { vehicleTopics } from '../cloud/topics.js';
import { AgentError, toAgentError } from '../core/errors.js';
import { silentLogger } from '../core/logger.js';
import { LOCK_STATES, type LockState } from '../core/types.js';
import { signP256, simKeyMessage } from '../crypto/challenge.js';
import { b64url, fromB64url } from '../crypto/encoding.js';
import { isRecord, type VehicleInfo } from '../host/control-api.js';
import type { ManagedBroker } from '../scenario/managed-broker.js';
import type {
  AuditRecord,
  CloudOutcome,
  DecisionOutcome,
  RelayEvent,
  ScenarioDriver,
} from '../scenario/runner.js';
import type { BrokerAction, NetworkAction, ScenarioBroker, StepAction } from '../scenario/schema.js';
import { readSignerKey } from '../store/key-files.js';
import { phoneSecret } from './commands/phone.js';
import { controlCall } from './control-client.js';

/**
 * The scenario driver against a running agent: its control socket for the sim steps and the
 * checks, the broker (managed here or the rig's, through the scenario's commands) for the cloud.
 */
export interface AgentDriverOptions {
  readonly socketPath: string;
  /** <stateDir>: demo keys are <stateDir>/demo/NAME.pem. */
  readonly stateDir: string;
  /** Key files named in the scenario are relative to this folder (the scenario file's). */
  readonly baseDir: string;
  readonly broker?: ScenarioBroker;
  /** The broker the runner started (broker.managed). */
  readonly managed?: ManagedBroker;
}

export class AgentDriver implements ScenarioDriver {
  private readonly learned = new Map<string, string>();
  private vehicle: VehicleInfo | undefined;
  private lastCommand: { readonly jws: string; readonly jti: string } | undefined;

  constructor(private readonly o: AgentDriverOptions) {}

  /** A key named in the scenario: a demo key (`driver`, `owner`) or a file. */
  private keyPath(name: string): string {
    if (/^[A-Za-z0-9_-]+$/.test(name)) {
      const demo = join(this.o.stateDir, 'demo', `${name}.pem`);
      if (existsSync(demo)) return demo;
    }
    const path = isAbsolute(name) ? name : resolve(this.o.baseDir, name);
    if (!existsSync(path))
      throw new AgentError(
        'bad_arguments',
        `no key "${name}" (neither a demo key in ${this.o.stateDir}/demo nor a file)`,
      );
    return path;
  }

  private async vehicleInfo(): Promise<VehicleInfo> {
    this.vehicle ??= await controlCall(this.o.socketPath, 'vehicle', {});
    return this.vehicle;
  }

  credentialId(name: string): string | undefined {
    const known = this.learned.get(name);
    if (known !== undefined) return known;
    try {
      const path = this.keyPath(name);
      for (const kind of ['phone', 'signer'] as const) {
        try {
          return readSignerKey(path, kind).id;
        } catch {
          // not a key of this kind
        }
      }
    } catch {
      // not a key: the name is taken as it is (an id)
    }
    return undefined;
  }

  learn(name: string, credentialId: string): void {
    this.learned.set(name, credentialId);
  }

  async present(a: Extract<StepAction, { kind: 'present' }>): Promise<DecisionOutcome> {
    const key = readSignerKey(this.keyPath(a.key), 'phone');
    this.learn(a.key, key.id);
    const challenge = await controlCall(this.o.socketPath, 'sim.challenge', {});
    const explicitIntent = !a.passive;
    const signature = signP256(
      key.key,
      simKeyMessage(fromB64url(challenge.challenge), challenge.vehicleId, a.intent, explicitIntent, key.id),
    );
    if (a.tamper) signature[10] = (signature[10] ?? 0) ^ 0x40;
    return decision(
      await controlCall(this.o.socketPath, 'sim.answer', {
        challengeId: challenge.challengeId,
        credentialId: key.id,
        intent: a.intent,
        explicitIntent,
        signature: b64url(signature),
        delayMs: a.delayMs,
      }),
    );
  }

  async presentUid(a: Extract<StepAction, { kind: 'present-uid' }>): Promise<DecisionOutcome> {
    return decision(await controlCall(this.o.socketPath, 'sim.uid', { uid: a.uid, intent: a.intent }));
  }

  async tap(a: Extract<StepAction, { kind: 'tap' }>): Promise<DecisionOutcome> {
    const reply = await controlCall(
      this.o.socketPath,
      'sim.card.tap',
      {
        card: a.card,
        ...(a.slowMs === undefined ? {} : { slowMs: a.slowMs }),
        ...(a.removeAfterMs === undefined ? {} : { removeAfterMs: a.removeAfterMs }),
        ...(a.fault === undefined ? {} : { fault: a.fault }),
        ...(a.cloneOf === undefined ? {} : { cloneOf: a.cloneOf }),
        ...(a.counter === undefined ? {} : { counter: a.counter }),
      },
      20_000,
    );
    if (reply.granted === undefined)
      return { granted: false, code: reply.code ?? `no decision (${reply.enrollment ?? 'nothing read'})` };
    return decision({ granted: reply.granted, ...reply });
  }

  async approach(a: Extract<StepAction, { kind: 'approach' }>): Promise<DecisionOutcome> {
    const path = this.keyPath(a.key);
    this.learn(a.key, readSignerKey(path, 'phone').id);
    const vehicle = await this.vehicleInfo();
    const reply = await controlCall(
      this.o.socketPath,
      'sim.phone.approach',
      {
        secretKey: b64url(phoneSecret(path)),
        pin: { vehicleId: vehicle.vehicleId, publicKey: vehicle.vehicleKey },
        intent: a.intent,
        explicitIntent: !a.passive,
        ...(a.fault === undefined ? {} : { fault: a.fault }),
        answerDelayMs: a.slowMs,
        timeoutMs: 10_000,
      },
      20_000,
    );
    if (reply.outcome === 'decision' || reply.outcome === 'skipped') return decision(reply);
    return { granted: false, code: reply.code ?? reply.outcome };
  }

  async cloud(a: Extract<StepAction, { kind: 'cloud' }>): Promise<CloudOutcome> {
    const signer = readSignerKey(this.keyPath(a.key));
    const vehicle = await this.vehicleInfo();
    parseCommandArgs(a.command, a.args);
    const now = Date.now();
    const iat = Math.floor(now / 1000);
    const payload = {
      vid: vehicle.vehicleId,
      cmd: a.command,
      args: a.args,
      jti: newJti(),
      iat,
      exp: iat + a.ttlS,
      ctr: a.counter ?? now,
    };
    this.lastCommand = { jws: signCommand(payload, signer.key, signer.id), jti: payload.jti };
    return await this.publishCommand(this.lastCommand, a.timeoutMs);
  }

  async cloudAgain(timeoutMs: number): Promise<CloudOutcome> {
    if (this.lastCommand === undefined)
      throw new AgentError('bad_arguments', '`cloud: again` needs an earlier cloud step');
    return await this.publishCommand(this.lastCommand, timeoutMs);
  }

  /** Publishes a signed command to the vehicle and waits for its result (matched by jti). */
  private async publishCommand(
    command: { readonly jws: string; readonly jti: string },
    timeoutMs: number,
  ): Promise<CloudOutcome> {
    const broker = this.o.broker;
    if (broker === undefined) throw new AgentError('bad_arguments', 'the scenario has no broker');
    const vehicle = await this.vehicleInfo();
    const topics = vehicleTopics(broker.prefix, vehicle.vehicleId);
    const { connectCloudClient } = await import('../cloud/cloud-client.js');
    const urls = broker.kind === 'managed' ? [this.o.managed?.directUrl ?? ''] : broker.urls;
    const read = (p: string) => readFileSync(resolve(this.o.baseDir, p));
    const tls =
      broker.kind === 'managed'
        ? {}
        : {
            ...(broker.ca ? { ca: read(broker.ca) } : {}),
            ...(broker.cert ? { cert: read(broker.cert) } : {}),
            ...(broker.key ? { key: read(broker.key) } : {}),
          };
    let client: Awaited<ReturnType<typeof connectCloudClient>>;
    try {
      client = await connectCloudClient({ urls, tls, connectTimeoutMs: 3000, log: silentLogger });
    } catch (err) {
      const e = toAgentError(err);
      return { result: e.code, message: e.message };
    }
    try {
      await client.subscribe([topics.commandResult]);
      const start = client.received.length;
      const answer = client.waitFor(
        (m) =>
          m.topic === topics.commandResult &&
          client.received.indexOf(m) >= start &&
          parseResult(m.payload)?.jti === command.jti,
        timeoutMs,
        'a command result',
      );
      await client.publish(topics.command, command.jws, { qos: 1, retain: false });
      const result = parseResult((await answer).payload);
      if (result === undefined) return { result: 'internal', message: 'unreadable result' };
      return result.status === 'ok'
        ? { result: 'ok' }
        : { result: result.code, ...(result.message ? { message: result.message } : {}) };
    } catch (err) {
      const e = toAgentError(err);
      return { result: e.code, message: e.message };
    } finally {
      await client.close();
    }
  }

  async broker(action: BrokerAction): Promise<void> {
    if (this.o.managed !== undefined) return await this.o.managed.broker(action);
    await this.runCommand(`broker ${action}`);
  }

  async network(action: NetworkAction): Promise<void> {
    if (this.o.managed !== undefined) return this.o.managed.network(action);
    await this.runCommand(`network ${action}`);
  }

  /** A rig's own outage command, from the scenario's broker section, through /bin/sh. */
  private async runCommand(which: `broker ${BrokerAction}` | `network ${NetworkAction}`): Promise<void> {
    const broker = this.o.broker;
    const command = broker?.kind === 'external' ? broker.commands[which] : undefined;
    if (command === undefined)
      throw new AgentError('bad_arguments', `the scenario names no command for ${which}`);
    const code = await new Promise<number | null>((done) => {
      const child = spawn('/bin/sh', ['-c', command], {
        cwd: this.o.baseDir,
        stdio: ['ignore', 'inherit', 'inherit'],
      });
      child.once('error', () => done(127));
      child.once('exit', (c) => done(c));
    });
    if (code !== 0) throw new AgentError('internal', `${which}: \`${command}\` exited ${code}`);
  }

  async clockAdvance(ms: number): Promise<void> {
    await controlCall(this.o.socketPath, 'sim.clock.advance', { ms });
  }

  async clearLimits(): Promise<void> {
    await controlCall(this.o.socketPath, 'sim.limits.clear', {});
  }

  private async status(): Promise<Readonly<Record<string, unknown>>> {
    return await controlCall(this.o.socketPath, 'status', {});
  }

  async lock(): Promise<LockState> {
    const lock = (await this.status()).lock;
    return LOCK_STATES.find((s) => s === lock) ?? 'locked';
  }

  async relayTimeline(): Promise<readonly RelayEvent[]> {
    const relay = (await this.status()).relay;
    const timeline = isRecord(relay) && Array.isArray(relay.timeline) ? relay.timeline : [];
    return timeline.flatMap((e: unknown) =>
      isRecord(e) &&
      typeof e.channel === 'string' &&
      typeof e.energised === 'boolean' &&
      typeof e.at === 'string'
        ? [{ channel: e.channel, energised: e.energised, at: e.at }]
        : [],
    );
  }

  async auditAfter(seq: number): Promise<readonly AuditRecord[]> {
    const records = await controlCall(this.o.socketPath, 'audit.tail', { n: 100 });
    return records.flatMap((r) =>
      isRecord(r) && typeof r.seq === 'number' && r.seq > seq ? [r as AuditRecord] : [],
    );
  }

  async auditHead(): Promise<number> {
    const records = await controlCall(this.o.socketPath, 'audit.tail', { n: 1 });
    const last = records.at(-1);
    return isRecord(last) && typeof last.seq === 'number' ? last.seq : 0;
  }

  async linkConnected(): Promise<boolean> {
    try {
      const status = await controlCall(this.o.socketPath, 'cloud.status', {});
      return isRecord(status) && status.connected === true;
    } catch (err) {
      if (toAgentError(err).code === 'unknown_command') return false;
      throw err;
    }
  }

  async sleep(ms: number): Promise<void> {
    await new Promise((r) => setTimeout(r, ms));
  }

  now(): number {
    return performance.now();
  }
}

function decision(reply: {
  readonly granted: boolean;
  readonly code?: string | undefined;
  readonly role?: string | undefined;
  readonly credentialId?: string | undefined;
}): DecisionOutcome {
  return {
    granted: reply.granted,
    ...(reply.code === undefined ? {} : { code: reply.code }),
    ...(reply.role === undefined ? {} : { role: reply.role }),
    ...(reply.credentialId === undefined ? {} : { credentialId: reply.credentialId }),
  };
}
