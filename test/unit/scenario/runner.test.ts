import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import type { LockState } from '../../../src/core/types.js';
import {
  type AuditRecord,
  auditMatches,
  type DecisionOutcome,
  judgeDecision,
  judgeRelay,
  newTransitions,
  type RelayEvent,
  runScenario,
  type ScenarioDriver,
} from '../../../src/scenario/runner.js';
import { parseScenario } from '../../../src/scenario/schema.js';

const on = (channel: string, at: string): RelayEvent => ({ channel, energised: true, at });
const off = (channel: string, at: string): RelayEvent => ({ channel, energised: false, at });

describe('decision expectations', () => {
  const granted: DecisionOutcome = { granted: true, role: 'driver' };
  const expired: DecisionOutcome = { granted: false, code: 'expired' };
  it.each([
    [{ granted: true }, granted, []],
    [{ granted: true }, expired, ['expected granted, got denied: expired']],
    [{ granted: false }, granted, ['expected denied, got granted (driver)']],
    [{ denied: 'expired' }, expired, []],
    [{ denied: 'revoked' }, expired, ['expected denied: revoked, got denied: expired']],
    [{ denied: 'expired' }, granted, ['expected denied: expired, got granted (driver)']],
    [{ granted: true, role: 'owner' }, granted, ['expected role owner, got driver']],
  ] as const)('%j against %j', (expect_, outcome, failures) => {
    expect(judgeDecision({ ...expect_, withinMs: 0 }, outcome)).toEqual(failures);
  });
});

describe('relay expectations', () => {
  const before = [on('unlock', 't1'), off('unlock', 't2')];
  it('only transitions after the step began count', () => {
    expect(newTransitions(before, [...before, on('lock', 't3')])).toEqual([on('lock', 't3')]);
    expect(newTransitions([], before)).toEqual(before);
    // The last known one scrolled out of the bounded timeline: everything shown is new.
    expect(newTransitions(before, [on('lock', 't9')])).toEqual([on('lock', 't9')]);
  });

  it.each([
    ['unlock', 'pulsed', [on('unlock', 'a'), off('unlock', 'b')], undefined],
    ['unlock', 'pulsed', [on('unlock', 'a')], 'relay unlock: expected a pulse, saw on'],
    ['unlock', 'pulsed', [off('unlock', 'a')], 'relay unlock: expected a pulse, saw off'],
    [
      'unlock',
      'pulsed',
      [on('lock', 'a'), off('lock', 'b')],
      'relay unlock: expected a pulse, saw no change',
    ],
    ['unlock', 'untouched', [on('lock', 'a')], undefined],
    ['lock', 'untouched', [on('lock', 'a')], 'relay lock: expected untouched, saw on'],
    ['lock', 'energised', [on('lock', 'a')], undefined],
    ['lock', 'released', [on('lock', 'a')], 'relay lock: expected released, it is energised'],
    ['lock', 'released', [], undefined],
  ] as const)('%s %s after %j', (channel, expected, fresh, problem) => {
    expect(judgeRelay(channel, expected, fresh, [...before, ...fresh])).toBe(problem);
  });
});

describe('audit expectations', () => {
  const record = { seq: 5, type: 'access', result: 'denied', code: 'expired', credentialId: 'phone:abc' };
  const resolve = (name: string) => (name === 'guest' ? 'phone:abc' : undefined);
  it.each([
    [{ type: 'access' }, true],
    [{ type: 'access', result: 'granted' }, false],
    [{ credential: 'guest' }, true],
    [{ credential: 'phone:abc' }, true],
    [{ credential: 'driver' }, false],
    [{ seq: 5 }, true],
    [{ seq: '5' }, true],
    [{ missing: 'x' }, false],
  ])('%j', (match, ok) => {
    expect(auditMatches(record, match, resolve)).toBe(ok);
  });
});

/** A vehicle in memory: a lock, a relay timeline, an audit log; denies anything but `driver`. */
class FakeDriver implements ScenarioDriver {
  lockState: LockState = 'locked';
  timeline: RelayEvent[] = [];
  audit: AuditRecord[] = [];
  simulated = true;
  clock = 0;
  private tick = 0;
  readonly calls: string[] = [];

  private grant(name: string): DecisionOutcome {
    this.calls.push(name);
    if (!this.simulated) throw new AgentError('unknown_command', 'unknown command sim.challenge');
    const granted = name === 'driver';
    this.audit.push({
      seq: this.audit.length + 1,
      type: 'access',
      result: granted ? 'granted' : 'denied',
      credentialId: `phone:${name}`,
    });
    if (granted && this.lockState !== 'unlocked') {
      this.timeline.push(on('unlock', `t${++this.tick}`), off('unlock', `t${++this.tick}`));
      this.lockState = 'unlocked';
    }
    return granted ? { granted, role: 'driver' } : { granted, code: 'unknown_credential' };
  }

  present = async (a: { key: string }) => this.grant(a.key);
  presentUid = async () => this.grant('uid');
  tap = async (a: { card: string }) => ({ ...this.grant(a.card), credentialId: `ntag424:${a.card}` });
  approach = async (a: { key: string }) => this.grant(a.key);
  cloud = async () => ({ result: 'ok' });
  cloudAgain = async () => ({ result: 'ok' });
  broker = async () => {};
  network = async () => {};
  clockAdvance = async () => {};
  clearLimits = async () => {};
  lock = async () => this.lockState;
  relayTimeline = async () => [...this.timeline];
  auditAfter = async (seq: number) => this.audit.filter((r) => r.seq > seq);
  auditHead = async () => this.audit.length;
  linkConnected = async () => true;
  credentialId = (name: string) => (name === 'driver' ? 'phone:driver' : undefined);
  learn = () => {};
  sleep = async (ms: number) => {
    this.clock += ms;
  };
  now = () => this.clock;
}

const SCENARIO = `name: fake
steps:
  - present: driver
    expect: {granted: true, relay: {unlock: pulsed}, lock: unlocked, audit: {type: access, result: granted, credential: driver}}
  - present: stranger
    expect: {denied: unknown_credential, relay: {unlock: untouched}}
`;

describe('running a scenario', () => {
  it('passes when every expectation holds', async () => {
    const report = await runScenario(parseScenario(SCENARIO), new FakeDriver());
    expect(report).toMatchObject({ passed: 2, failed: 0 });
    expect(report.steps.map((s) => s.observed)).toEqual(['granted (driver)', 'denied: unknown_credential']);
  });

  it('fails a step whose expectation is wrong, says why, and goes on with the rest', async () => {
    const wrong = SCENARIO.replace('denied: unknown_credential', 'granted: true').replace(
      'result: granted, credential: driver',
      'result: granted, credential: stranger',
    );
    const driver = new FakeDriver();
    const report = await runScenario(parseScenario(wrong), driver);
    expect(report).toMatchObject({ passed: 0, failed: 2 });
    expect(report.steps[0]?.failures).toEqual([
      expect.stringMatching(
        /^expected an audit record \{type: access, result: granted, credential: stranger\}; new records: access\/granted \(within 5000 ms\)$/,
      ),
    ]);
    expect(report.steps[1]?.failures).toEqual(['expected granted, got denied: unknown_credential']);
    expect(driver.calls).toEqual(['driver', 'stranger']);
  });

  it('a state expectation that never comes true fails once its window closes', async () => {
    const driver = new FakeDriver();
    const report = await runScenario(
      parseScenario('name: t\nsteps:\n  - expect: {lock: unlocked, within: 2s}\n'),
      driver,
    );
    expect(report.steps[0]?.failures).toEqual(['expected lock unlocked, it is locked (within 2000 ms)']);
    expect(driver.clock).toBeGreaterThanOrEqual(2000);
  });

  it('a sim step against an agent on real hardware says it needs the simulator', async () => {
    const driver = new FakeDriver();
    driver.simulated = false;
    const report = await runScenario(parseScenario('name: t\nsteps:\n  - tap: ntag-driver\n'), driver);
    expect(report.steps[0]?.failures).toEqual([
      expect.stringMatching(/^\[sim_required\] tap needs the agent on simulated hardware/),
    ]);
  });
});
