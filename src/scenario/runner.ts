import { AgentError, toAgentError } from '../core/errors.js';
import type { LockState } from '../core/types.js';
import type {
  AuditMatch,
  BrokerAction,
  Expectation,
  NetworkAction,
  RelayExpectation,
  Scenario,
  Step,
  StepAction,
} from './schema.js';
import { SIM_STEPS } from './schema.js';

/**
 * Plays a parsed scenario step by step through a driver (the running agent's control socket, the
 * broker; src/scenario/agent-driver.ts) and judges each step's expectations. No I/O of its own:
 * tests drive it with a fake driver.
 */

/** What a present, tap or approach came to. */
export interface DecisionOutcome {
  readonly granted: boolean;
  readonly code?: string;
  readonly role?: string;
  readonly credentialId?: string;
}

/** A cloud command's result: `ok`, or the code it was refused with (or the transport's). */
export interface CloudOutcome {
  readonly result: string;
  readonly message?: string;
}

/** One relay transition as `status` shows it. */
export interface RelayEvent {
  readonly channel: string;
  readonly energised: boolean;
  readonly at: string;
}

export type AuditRecord = Readonly<Record<string, unknown>> & { readonly seq: number };

export interface ScenarioDriver {
  present(a: Extract<StepAction, { kind: 'present' }>): Promise<DecisionOutcome>;
  presentUid(a: Extract<StepAction, { kind: 'present-uid' }>): Promise<DecisionOutcome>;
  tap(a: Extract<StepAction, { kind: 'tap' }>): Promise<DecisionOutcome>;
  approach(a: Extract<StepAction, { kind: 'approach' }>): Promise<DecisionOutcome>;
  cloud(a: Extract<StepAction, { kind: 'cloud' }>): Promise<CloudOutcome>;
  /** Publishes the last signed command again. */
  cloudAgain(timeoutMs: number): Promise<CloudOutcome>;
  broker(action: BrokerAction): Promise<void>;
  network(action: NetworkAction): Promise<void>;
  clockAdvance(ms: number): Promise<void>;
  clearLimits(): Promise<void>;
  lock(): Promise<LockState>;
  relayTimeline(): Promise<readonly RelayEvent[]>;
  /** Audit records after `seq` (the newest, at most 100). */
  auditAfter(seq: number): Promise<readonly AuditRecord[]>;
  /** The last audit sequence number. */
  auditHead(): Promise<number>;
  linkConnected(): Promise<boolean>;
  /** The credential id a name in the scenario stands for (a demo key, a card seen earlier). */
  credentialId(name: string): string | undefined;
  /** Remembers that `name` presented as `credentialId` (a card's id is known once it tapped). */
  learn(name: string, credentialId: string): void;
  sleep(ms: number): Promise<void>;
  /** Milliseconds of a monotonic clock. */
  now(): number;
}

export interface StepReport {
  readonly index: number;
  readonly name: string;
  readonly passed: boolean;
  /** What did not hold (empty when passed). */
  readonly failures: readonly string[];
  /** What happened, for the report (the decision, the result). */
  readonly observed?: string;
  readonly ms: number;
}

export interface ScenarioReport {
  readonly name: string;
  readonly passed: number;
  readonly failed: number;
  readonly steps: readonly StepReport[];
}

const POLL_MS = 100;

function describeDecision(d: DecisionOutcome): string {
  return d.granted ? `granted${d.role ? ` (${d.role})` : ''}` : `denied: ${d.code ?? 'no code'}`;
}

/** The decision expectations, judged on the step's own outcome. */
export function judgeDecision(expect: Expectation, d: DecisionOutcome): string[] {
  const failures: string[] = [];
  if (expect.granted !== undefined && d.granted !== expect.granted)
    failures.push(`expected ${expect.granted ? 'granted' : 'denied'}, got ${describeDecision(d)}`);
  if (expect.denied !== undefined && (d.granted || d.code !== expect.denied))
    failures.push(`expected denied: ${expect.denied}, got ${describeDecision(d)}`);
  if (expect.role !== undefined && d.role !== expect.role)
    failures.push(`expected role ${expect.role}, got ${d.role ?? 'none'}`);
  return failures;
}

/** Transitions in `after` that were not yet in `before` (the timeline is a bounded list that grows at its end). */
export function newTransitions(before: readonly RelayEvent[], after: readonly RelayEvent[]): RelayEvent[] {
  const last = before.at(-1);
  if (last === undefined) return [...after];
  for (let i = after.length - 1; i >= 0; i--) {
    const e = after[i];
    if (e !== undefined && e.at === last.at && e.channel === last.channel && e.energised === last.energised)
      return after.slice(i + 1);
  }
  // The last one known has scrolled out of the bounded list: all of it is new.
  return [...after];
}

/** Whether a relay channel did what was expected during the step. */
export function judgeRelay(
  channel: string,
  expected: RelayExpectation,
  fresh: readonly RelayEvent[],
  timeline: readonly RelayEvent[],
): string | undefined {
  const mine = fresh.filter((e) => e.channel === channel);
  const current = timeline.findLast((e) => e.channel === channel)?.energised ?? false;
  const seen = mine.map((e) => (e.energised ? 'on' : 'off')).join(' ') || 'no change';
  switch (expected) {
    case 'pulsed': {
      const on = mine.findIndex((e) => e.energised);
      const pulsed = on >= 0 && mine.slice(on + 1).some((e) => !e.energised);
      return pulsed ? undefined : `relay ${channel}: expected a pulse, saw ${seen}`;
    }
    case 'energised':
      return current ? undefined : `relay ${channel}: expected energised, it is released (${seen})`;
    case 'released':
      return current ? `relay ${channel}: expected released, it is energised` : undefined;
    case 'untouched':
      return mine.length === 0 ? undefined : `relay ${channel}: expected untouched, saw ${seen}`;
  }
}

/** Whether an audit record has every field of the match (`credential` is a name or an id). */
export function auditMatches(
  record: Readonly<Record<string, unknown>>,
  match: AuditMatch,
  resolve: (name: string) => string | undefined,
): boolean {
  return Object.entries(match).every(([field, want]) => {
    if (field === 'credential') {
      const id = resolve(String(want)) ?? String(want);
      return record.credentialId === id || record.subject === id;
    }
    return record[field] === want || (record[field] !== undefined && String(record[field]) === String(want));
  });
}

function describeMatch(match: AuditMatch): string {
  return Object.entries(match)
    .map(([k, v]) => `${k}: ${String(v)}`)
    .join(', ');
}

interface StepStart {
  readonly auditSeq: number;
  readonly timeline: readonly RelayEvent[];
}

/** The state expectations (lock, relay, audit, link): what does not hold yet (empty: all hold). */
async function pendingState(
  driver: ScenarioDriver,
  expect: Expectation,
  start: StepStart,
): Promise<string[]> {
  const failures: string[] = [];
  if (expect.lock !== undefined) {
    const lock = await driver.lock();
    if (lock !== expect.lock) failures.push(`expected lock ${expect.lock}, it is ${lock}`);
  }
  if (expect.relay !== undefined) {
    const timeline = await driver.relayTimeline();
    const fresh = newTransitions(start.timeline, timeline);
    for (const [channel, expected] of Object.entries(expect.relay)) {
      const problem = judgeRelay(channel, expected, fresh, timeline);
      if (problem !== undefined) failures.push(problem);
    }
  }
  if (expect.audit !== undefined) {
    const records = await driver.auditAfter(start.auditSeq);
    const resolve = (name: string) => driver.credentialId(name);
    for (const match of expect.audit) {
      if (!records.some((r) => auditMatches(r, match, resolve)))
        failures.push(
          `expected an audit record {${describeMatch(match)}}; new records: ${
            records.map((r) => `${String(r.type)}${r.result ? `/${String(r.result)}` : ''}`).join(', ') ||
            'none'
          }`,
        );
    }
  }
  if (expect.link !== undefined) {
    const connected = await driver.linkConnected();
    if (connected !== (expect.link === 'connected'))
      failures.push(
        `expected the cloud link ${expect.link}, it is ${connected ? 'connected' : 'disconnected'}`,
      );
  }
  return failures;
}

function hasState(expect: Expectation): boolean {
  return (
    expect.lock !== undefined ||
    expect.relay !== undefined ||
    expect.audit !== undefined ||
    expect.link !== undefined
  );
}

/** Runs an action; a decision or cloud outcome when it has one. */
async function act(
  driver: ScenarioDriver,
  action: StepAction,
): Promise<{ decision?: DecisionOutcome; cloud?: CloudOutcome }> {
  switch (action.kind) {
    case 'present': {
      const decision = await driver.present(action);
      return { decision };
    }
    case 'present-uid':
      return { decision: await driver.presentUid(action) };
    case 'tap': {
      const decision = await driver.tap(action);
      if (decision.credentialId !== undefined) driver.learn(action.card, decision.credentialId);
      return { decision };
    }
    case 'approach':
      return { decision: await driver.approach(action) };
    case 'cloud':
      return { cloud: await driver.cloud(action) };
    case 'cloud-again':
      return { cloud: await driver.cloudAgain(action.timeoutMs) };
    case 'broker':
      await driver.broker(action.action);
      return {};
    case 'network':
      await driver.network(action.action);
      return {};
    case 'clock':
      await driver.clockAdvance(action.advanceMs);
      return {};
    case 'clear-limits':
      await driver.clearLimits();
      return {};
    case 'wait':
      await driver.sleep(action.ms);
      return {};
    case 'check':
      return {};
  }
}

export async function runStep(driver: ScenarioDriver, step: Step): Promise<StepReport> {
  const t0 = driver.now();
  const expect = step.expect;
  const failures: string[] = [];
  let observed: string | undefined;
  try {
    const start: StepStart = {
      auditSeq: expect?.audit !== undefined ? await driver.auditHead() : 0,
      timeline: expect?.relay !== undefined ? await driver.relayTimeline() : [],
    };
    let outcome: Awaited<ReturnType<typeof act>>;
    try {
      outcome = await act(driver, step.action);
    } catch (err) {
      const e = toAgentError(err);
      // A sim command the agent does not offer: it is not running on simulated hardware.
      if (SIM_STEPS.has(step.action.kind) && (e.code === 'unknown_command' || e.code === 'sim_required'))
        throw new AgentError(
          'sim_required',
          `${step.action.kind} needs the agent on simulated hardware (relay.driver sim); this agent does not offer it`,
        );
      throw e;
    }
    if (outcome.decision !== undefined) {
      observed = describeDecision(outcome.decision);
      if (expect !== undefined) failures.push(...judgeDecision(expect, outcome.decision));
    }
    if (outcome.cloud !== undefined) {
      observed = outcome.cloud.result === 'ok' ? 'ok' : `refused: ${outcome.cloud.result}`;
      if (expect?.result !== undefined && outcome.cloud.result !== expect.result)
        failures.push(
          `expected result ${expect.result}, got ${outcome.cloud.result}${outcome.cloud.message ? ` (${outcome.cloud.message})` : ''}`,
        );
    }
    if (expect !== undefined && hasState(expect)) {
      // State takes its time (a pulse ends, a record is written, a link notices): poll until it
      // holds or the window closes, then report what still did not hold.
      const deadline = driver.now() + expect.withinMs;
      let pending = await pendingState(driver, expect, start);
      while (pending.length > 0 && driver.now() < deadline) {
        await driver.sleep(POLL_MS);
        pending = await pendingState(driver, expect, start);
      }
      failures.push(...pending.map((p) => `${p} (within ${expect.withinMs} ms)`));
    }
  } catch (err) {
    const e = toAgentError(err);
    failures.push(`[${e.code}] ${e.message}`);
  }
  return {
    index: step.index,
    name: step.name,
    passed: failures.length === 0,
    failures,
    ...(observed === undefined ? {} : { observed }),
    ms: Math.round(driver.now() - t0),
  };
}

/** Plays every step in order (a failed step does not stop the ones after it) and reports. */
export async function runScenario(
  scenario: Scenario,
  driver: ScenarioDriver,
  onStep: (report: StepReport) => void = () => {},
): Promise<ScenarioReport> {
  const steps: StepReport[] = [];
  for (const step of scenario.steps) {
    const report = await runStep(driver, step);
    steps.push(report);
    onStep(report);
  }
  const failed = steps.filter((s) => !s.passed).length;
  return { name: scenario.name, passed: steps.length - failed, failed, steps };
}

/** One report line for a step. */
export function stepLine(s: StepReport): string {
  const head = `${s.passed ? 'pass' : 'FAIL'}  ${String(s.index).padStart(3)}  ${s.name}`;
  const seen = s.observed === undefined ? '' : `: ${s.observed}`;
  const why = s.failures.map((f) => `\n            ${f}`).join('');
  return `${head}${seen}  (${s.ms} ms)${why}`;
}
