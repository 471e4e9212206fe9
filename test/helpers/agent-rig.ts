import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { IClientOptions } from 'mqtt';
import { afterAll, afterEach, beforeAll, beforeEach } from 'vitest';
import { type AgentProcess, startAgentProcess } from './agent-process.js';
import { agentCloudEnv, connectTestCloud, type TestCloud } from './cloud-side.js';
import {
  type Broker,
  type BrokerOptions,
  type ClientCert,
  makeTestPki,
  startBroker,
  type TestPki,
} from './mosquitto.js';

/** Mosquitto with the shipped config, the test PKI and a connected test cloud, in a rig's folder. */
export interface RigCloud {
  readonly pki: TestPki;
  readonly broker: Broker;
  /** The vehicle's client certificate. */
  readonly agentCert: ClientCert;
  /** The cloud's client certificate (the test cloud is connected with it). */
  readonly cloudCert: ClientCert;
  readonly cloud: TestCloud;
}

export interface RigCloudOptions {
  readonly broker?: BrokerOptions;
  /** For the test cloud's MQTT client (a persistent session, a client id). */
  readonly client?: Partial<IClientOptions>;
  /** Topics the test cloud subscribes to before any agent connects. */
  readonly subscribe?: readonly string[];
}

export interface RigAgentOptions {
  /** Default true: resolve once the agent logs `ready`. */
  readonly waitReady?: boolean;
  /** Log messages of which one must be seen before the agent is handed over. */
  readonly waitForLog?: readonly string[];
}

/**
 * The set-up most integration tests share: a temporary folder, agents from dist/ with their state
 * folders in it and, when asked, Mosquitto and a test cloud. Whatever it started it ends in
 * `close()`, in reverse order and by PID (the agents' and the broker's own handles), then it
 * removes the folder.
 */
export class AgentRig {
  private rootDir: string | undefined;
  private cloudSide: RigCloud | undefined;
  /** How to end what was started, in the order it was started. */
  private readonly started: (() => Promise<unknown>)[] = [];
  private readonly prefix: string;

  constructor(prefix: string) {
    this.prefix = prefix;
  }

  /** Makes the folder; `useAgentRig` calls it from its before-hook. */
  open(): void {
    this.rootDir = mkdtempSync(join(tmpdir(), this.prefix));
  }

  get root(): string {
    if (this.rootDir === undefined)
      throw new Error('the agent rig is not open (use it inside a test or hook)');
    return this.rootDir;
  }

  get cloudParts(): RigCloud {
    if (this.cloudSide === undefined) throw new Error('the agent rig has no cloud: call startCloud() first');
    return this.cloudSide;
  }

  /** The state folder `name` under the rig's folder. */
  stateDir(name = 'state'): string {
    return join(this.root, name);
  }

  /** `--state-dir <folder>` for the CLI and the agent. */
  sd(name = 'state'): string[] {
    return ['--state-dir', this.stateDir(name)];
  }

  /** The vehicle id the agent wrote into state folder `name` on its first start. */
  vehicleId(name = 'state'): string {
    const file = join(this.stateDir(name), 'vehicle.json');
    return (JSON.parse(readFileSync(file, 'utf8')) as { vehicleId: string }).vehicleId;
  }

  /** Starts Mosquitto and connects the test cloud; the broker is ended by `close()`. */
  async startCloud(options: RigCloudOptions = {}): Promise<RigCloud> {
    const pki = makeTestPki(join(this.root, 'pki'));
    const agentCert = pki.client('vehicle');
    const cloudCert = pki.client('cloud');
    const broker = await startBroker(pki, join(this.root, 'broker'), options.broker);
    this.started.push(() => broker.stop());
    const cloud = await connectTestCloud(broker, pki, cloudCert, options.client);
    this.started.push(() => cloud.close());
    this.cloudSide = { pki, broker, agentCert, cloudCert, cloud };
    for (const topic of options.subscribe ?? []) await cloud.subscribe(topic);
    return this.cloudSide;
  }

  /** The environment that points an agent at the rig's broker with the vehicle's certificate. */
  cloudEnv(extra: Record<string, string> = {}): Record<string, string> {
    const { broker, pki, agentCert } = this.cloudParts;
    return agentCloudEnv(broker.url, pki, agentCert, extra);
  }

  /** `vehicle-agent start` on state folder `name`; ended by `close()` if the test has not. */
  async startAgent(
    name = 'state',
    env: NodeJS.ProcessEnv = {},
    options: RigAgentOptions = {},
  ): Promise<AgentProcess> {
    const agent = await startAgentProcess(this.sd(name), env, options.waitReady ?? true);
    this.started.push(() => agent.stop());
    const wanted = options.waitForLog;
    if (wanted !== undefined) await agent.waitForLog((r) => wanted.includes(String(r.msg)));
    return agent;
  }

  /**
   * Ends what it started, last first (agents and the broker by their PIDs; stopping one the test
   * already stopped is a no-op), then removes the folder.
   */
  async close(): Promise<void> {
    const errors: unknown[] = [];
    for (const stop of this.started.splice(0).reverse()) {
      try {
        await stop();
      } catch (error) {
        errors.push(error);
      }
    }
    this.cloudSide = undefined;
    // Retried: a test that timed out may still be running and writing into the folder.
    if (this.rootDir !== undefined) rmSync(this.rootDir, { recursive: true, force: true, maxRetries: 5 });
    this.rootDir = undefined;
    if (errors.length > 0) throw new AggregateError(errors, 'the agent rig did not close cleanly');
  }
}

/**
 * An AgentRig whose folder is made before the file's (or, with `each`, every test's) own hooks
 * run and which is closed after them.
 */
export function useAgentRig(prefix: string, scope: 'file' | 'each' = 'file'): AgentRig {
  const rig = new AgentRig(prefix);
  const [before, after] = scope === 'file' ? [beforeAll, afterAll] : [beforeEach, afterEach];
  before(() => rig.open());
  after(() => rig.close(), 30_000);
  return rig;
}
