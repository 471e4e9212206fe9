import { type DecisionPolicy, decide } from '../access/decision.js';
import type { Keyring, MergeResult } from '../access/keyring.js';
import {
  type ActiveLimits,
  activeLimits,
  DEFAULT_MAX_UNKNOWN_CARDS,
  DEFAULT_UID_THROTTLE_MS,
  EMPTY_LIMITS,
  isNoise,
  isUidThrottled,
  type LimitEvent,
  lockedOutCount,
  type RateLimitState,
  recordOutcome,
} from '../access/rate-limit.js';
import type { MonotonicFloorClock } from '../core/clock.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Decision, Health, LockState, Presentation } from '../core/types.js';
import type { StagedItem } from '../store/group-commit.js';
import { NoiseSummaries } from './noise-summary.js';
import type { CredentialReader, ReaderContext } from './reader.js';

/** What the agent needs from the lock controller. */
export interface LockControl {
  state(): LockState;
  /** Resolves once the relay is energised (or the request was merged into one under way). */
  unlock(cause: string): Promise<LockState>;
  lock(cause: string): Promise<LockState>;
  /** Withdraws an unlock whose grant did not stand: cuts its pulse if it is still on, then locks. */
  retract(cause: string): Promise<LockState>;
}

type AuditInput = { readonly type: string; readonly [key: string]: unknown };

/** Durable audit trail. append() resolves when the record is durable. */
export interface AuditSink {
  append(event: AuditInput): Promise<unknown>;
}

/** Durable last-seen signature counters per credential. */
export interface CounterStore {
  get(credentialId: string): number | undefined;
  /**
   * Records a counter in two steps: resolves once it is written (it survives the agent being
   * killed) with `durable`, which settles once it is fsynced (it survives a power cut).
   */
  stage(credentialId: string, value: number): Promise<StagedItem>;
}

/** Durable keyring operations. */
export interface KeyringPersistence {
  /** Resolves when the ops are on disk; rejects when they are not (and then none of them is). */
  persist(ops: readonly { readonly jws: string; readonly signer: string }[]): Promise<void>;
  /** Compacts if due; called after persisted ops were applied. */
  compactIfDue?(): Promise<void>;
}

/** How long the state disk may take on the unlock path before a grant is refused or withdrawn. */
export interface StateDeadlines {
  /** A signature counter not written within this is a denial (state_io); the relay is untouched. */
  readonly counterWriteMs: number;
  /** A written counter not fsynced within this (from its write) withdraws the grant (state_io). */
  readonly counterSyncMs: number;
}

export const DEFAULT_STATE_DEADLINES: StateDeadlines = { counterWriteMs: 250, counterSyncMs: 2000 };

/** Audit appends in flight beyond which new events are dropped (counted, and audited later). */
export const DEFAULT_MAX_AUDIT_IN_FLIGHT = 2000;

/** Audit events that could not be written: counted until a record of them can be. */
export interface AuditDrops {
  /** Events lost since the last `audit.dropped` record. */
  readonly dropped: number;
  /** Wall ms of the first of them. */
  readonly since?: number;
  /** Events lost since start, recorded or not. */
  readonly total: number;
  /** Appends waiting for the disk. */
  readonly inFlight: number;
}

export interface AgentDeps {
  readonly vehicleId: string;
  readonly keyring: Keyring;
  readonly keyringStore: KeyringPersistence;
  readonly counters: CounterStore;
  readonly clock: MonotonicFloorClock;
  readonly audit: AuditSink;
  readonly lock: LockControl;
  readonly readers: readonly CredentialReader[];
  readonly policy: DecisionPolicy;
  /** Reader noise (denials that named no credential) is audited as one summary per reader, code and this interval. Default 60 s. */
  readonly denialSummaryMs?: number;
  readonly log: Logger;
  readonly signAsVehicle: (message: Uint8Array) => Uint8Array;
  readonly stateDeadlines?: StateDeadlines;
  readonly maxAuditInFlight?: number;
  /** Wall clock for the audit drop figures; default Date.now. */
  readonly wallNow?: () => number;
}

export interface AgentStatus {
  readonly vehicleId: string;
  readonly lock: LockState;
  readonly readers: Readonly<Record<string, Health>>;
  readonly keyring: { readonly operations: number; readonly credentials: number; readonly digest: string };
  readonly clock: { readonly now: string; readonly trust: 'trusted' | 'behind' };
  readonly decisions: { readonly granted: number; readonly denied: number };
  /** Counts only: which credential is locked out is in the audit log, never in status. */
  readonly rateLimits: RateLimitStatus;
}

/** The rate limits in force, with the policy that set them (the `limits` control command). */
export interface RateLimitsView {
  readonly now: number;
  readonly policy: {
    readonly maxDenials: number;
    readonly windowMs: number;
    readonly cooldownMs: number;
    readonly maxUnknownCards: number;
    readonly uidThrottleMs: number;
  };
  readonly active: ActiveLimits;
}

/** At most this many locked-out credentials are listed by `limits` (the rest are counted). */
const MAX_LISTED_LOCKOUTS = 50;

export interface RateLimitStatus {
  /** Credentials locked out now after repeated failed proofs. */
  readonly lockedOutCredentials: number;
  /** Lockouts started since the agent started. */
  readonly credentialLockouts: number;
  /** UID-only grants are refused until then (unknown cards were being tried). */
  readonly uidThrottledUntil?: string;
  /** UID throttles started since the agent started. */
  readonly uidThrottles: number;
  /** Reader denials that named no credential, or were refused by a rate limit. */
  readonly noiseDenials: number;
  /** ... of which counted into audit summaries rather than written one by one. */
  readonly noiseSummarised: number;
}

/**
 * The loop: reader → decision → lock controller → audit. Nothing here waits on the network; the
 * only disk wait before the relay is the write of a signature counter (so a clone cannot be
 * accepted twice across a crash of the agent), bounded by stateDeadlines.counterWriteMs: a disk
 * that does not take it in time denies FIDO taps (state_io) and nothing else. Its fdatasync (a
 * power cut) and the audit record are made durable while the relay switches: a relay takes
 * 5–10 ms to close, an fdatasync about 1 ms, and a grant whose counter cannot be made durable (in
 * counterSyncMs) is retracted, cutting the pulse. Credentials without a counter (NTAG 424, UID,
 * phone keys) never wait on the disk. Audit appends the disk cannot take are bounded in memory,
 * counted, and recorded as one `audit.dropped` event once the log takes writes again.
 */
export class Agent {
  private readonly deps: AgentDeps;
  /** Per-credential lockouts and the UID-guessing throttle (rate-limit.ts); never per reader. */
  private limits: RateLimitState = EMPTY_LIMITS;
  private readonly noise: NoiseSummaries;
  private readonly limitCounts = { credentialLockouts: 0, uidThrottles: 0, noiseDenials: 0 };
  /** Counters reserved by decisions in flight, so two concurrent taps cannot reuse one value. */
  private readonly liveCounters = new Map<string, number>();
  private readonly pendingAudit = new Set<Promise<unknown>>();
  /** Audit events waiting for the next turn of the event loop (see audit()). */
  private readonly auditBacklog: AuditInput[] = [];
  private readonly counts = { granted: 0, denied: 0 };
  private started = false;
  private readonly deadlines: StateDeadlines;
  private readonly maxAuditInFlight: number;
  private readonly wallNow: () => number;
  private auditInFlight = 0;
  private drops: { count: number; since?: number; types: Map<string, number> } = {
    count: 0,
    types: new Map(),
  };
  private dropsTotal = 0;
  /** An audit.dropped record is being written (one at a time). */
  private recordingDrops = false;
  /** Keyring changes run one at a time: prepare, persist, apply (see addKeyringOps). */
  private keyringChain: Promise<unknown> = Promise.resolve();

  constructor(deps: AgentDeps) {
    this.deps = deps;
    this.deadlines = deps.stateDeadlines ?? DEFAULT_STATE_DEADLINES;
    this.maxAuditInFlight = deps.maxAuditInFlight ?? DEFAULT_MAX_AUDIT_IN_FLIGHT;
    this.wallNow = deps.wallNow ?? Date.now;
    this.noise = new NoiseSummaries({
      intervalMs: deps.denialSummaryMs ?? 60_000,
      now: () => deps.clock.now(),
      emit: (summary) => {
        deps.log.info(summary, 'reader noise summarised');
        this.audit(summary);
      },
    });
  }

  /** Audit events lost to the disk (health, /metrics). */
  auditDrops(): AuditDrops {
    return {
      dropped: this.drops.count,
      ...(this.drops.since !== undefined ? { since: this.drops.since } : {}),
      total: this.dropsTotal,
      inFlight: this.auditInFlight,
    };
  }

  get keyring(): Keyring {
    return this.deps.keyring;
  }

  readerContext(readerLog: Logger): ReaderContext {
    const { vehicleId, clock, keyring, signAsVehicle } = this.deps;
    return {
      vehicleId,
      clock,
      log: readerLog,
      keyring,
      signAsVehicle,
      present: (p) => this.present(p),
    };
  }

  async start(): Promise<void> {
    for (const reader of this.deps.readers) {
      const log = this.deps.log.child({ reader: reader.id });
      try {
        await reader.start(this.readerContext(log));
        log.info({ health: reader.health().state }, 'reader started');
      } catch (err) {
        // A reader that cannot start leaves the others working; it reports itself down.
        const e = toAgentError(err, 'reader_error');
        log.error({ code: e.code, err: e.message }, 'reader failed to start');
      }
    }
    this.started = true;
    this.audit({ type: 'agent.start', readers: this.deps.readers.map((r) => r.id) });
  }

  async stop(): Promise<void> {
    if (!this.started) return;
    this.started = false;
    await Promise.allSettled(this.deps.readers.map((r) => r.stop()));
    this.noise.flush();
    this.audit({ type: 'agent.stop' });
    await this.flush();
  }

  /** Waits for audit records in flight. */
  async flush(): Promise<void> {
    // A drain that runs meanwhile adds the appends it starts.
    while (this.pendingAudit.size > 0) await Promise.allSettled([...this.pendingAudit]);
  }

  /** The hot path. Never rejects: failures become coded denials. */
  async present(p: Presentation): Promise<Decision> {
    const { clock, keyring, policy, log } = this.deps;
    const now = clock.now();
    const counterKey = p.credentialId;
    // The higher of the counter reserved in memory and the durable one: other writers (an owner
    // FIDO key authorising an enrollment) advance the durable store directly.
    const lastCounter =
      counterKey === undefined
        ? undefined
        : maxDefined(this.liveCounters.get(counterKey), this.deps.counters.get(counterKey));
    let decision = decide({ presentation: p, keyring, now, limits: this.limits, lastCounter, policy });
    const limited = recordOutcome(this.limits, p, decision, now, policy.rateLimit);
    this.limits = limited.state;
    /** Settles with the error, if any, once the counter of this grant is durable. */
    let counterDurable: Promise<AgentError | undefined> | undefined;
    /** Why a state_io denial happened, for the audit record. */
    let stateDetail: string | undefined;
    if (decision.granted && p.counter !== undefined && counterKey !== undefined) {
      this.liveCounters.set(counterKey, p.counter);
      const { counterWriteMs, counterSyncMs } = this.deadlines;
      try {
        const staged = await withinDeadline(
          this.deps.counters.stage(counterKey, p.counter),
          counterWriteMs,
          () => `the signature counter was not written within ${counterWriteMs} ms (the disk is stalled)`,
        );
        counterDurable = withinDeadline(
          staged.durable,
          counterSyncMs,
          () => `the signature counter was not fsynced within ${counterSyncMs} ms (the disk is stalled)`,
        ).then(
          () => undefined,
          (err: unknown) => toAgentError(err, 'state_io'),
        );
      } catch (err) {
        // Without a recorded counter a clone could be accepted again after a restart: refuse.
        const e = toAgentError(err, 'state_io');
        log.error({ code: e.code, err: e.message }, 'cannot record the signature counter');
        decision = { granted: false, code: 'state_io', credential: decision.credential };
        stateDetail = e.message;
      }
    }
    let lockState: LockState | undefined;
    const auditEvent = {
      type: 'access',
      reader: p.reader,
      kind: p.kind,
      subject: p.subject,
      intent: p.intent,
      explicitIntent: p.explicitIntent,
      result: decision.granted ? 'granted' : 'denied',
      // A refused proof is audited with the reader's specific reason where it has one.
      ...(decision.granted
        ? {}
        : { code: decision.code === 'bad_proof' ? (p.proofDetail ?? decision.code) : decision.code }),
      ...(decision.credential
        ? { credentialId: decision.credential.id, role: decision.credential.role }
        : {}),
      ...(p.answerMs !== undefined ? { answerMs: Math.round(p.answerMs) } : {}),
      // A missed deadline is audited with its deadline and its measured lateness.
      ...(p.lateMs !== undefined ? { deadlineMs: p.deadlineMs, lateMs: p.lateMs } : {}),
      ...(p.counter !== undefined ? { counter: p.counter } : {}),
      ...(stateDetail !== undefined ? { detail: stateDetail } : {}),
    };
    // Noise (nothing identified, or refused by a rate limit) is summarised, not written one by one.
    const noise = isNoise(decision);
    if (noise) this.limitCounts.noiseDenials++;
    if (!noise || this.noise.note(p.reader, decision.granted ? '' : decision.code) === 'record')
      this.audit(auditEvent);
    if (limited.event !== undefined) this.auditLimit(p.reader, limited.event);
    let action: 'unlock' | 'lock' | undefined;
    if (decision.granted) {
      action = this.resolveIntent(decision.intent);
      const cause = `${p.reader}:${p.subject}`;
      // Settled at once into a result: a relay failure must not go unhandled while the fsync runs.
      const actuated = (action === 'unlock' ? this.deps.lock.unlock(cause) : this.deps.lock.lock(cause)).then(
        (state) => ({ state }),
        (err: unknown) => ({ error: toAgentError(err, 'relay_failed') }),
      );
      const notDurable = await counterDurable;
      if (notDurable !== undefined) {
        // The counter did not reach the disk: a power cut now would forget it. Withdraw the grant
        // before the relay has closed (or at once, if the disk was slower than the relay).
        log.error({ code: notDurable.code, err: notDurable.message }, 'signature counter not durable');
        this.audit({
          type: 'access.retracted',
          code: notDurable.code,
          reader: p.reader,
          subject: p.subject,
          credentialId: decision.credential.id,
          detail: notDurable.message,
        });
        if (action === 'unlock')
          await this.deps.lock.retract(`${cause}:retracted`).catch((err: unknown) => {
            const e = toAgentError(err, 'relay_failed');
            log.error({ code: e.code, err: e.message }, 'lock controller failed to retract');
          });
        await actuated;
        decision = { granted: false, code: 'state_io', credential: decision.credential };
      } else {
        const result = await actuated;
        if ('state' in result) {
          lockState = result.state;
        } else {
          const e = result.error;
          log.error({ code: e.code, err: e.message }, 'lock controller failed');
          this.audit({ type: 'relay.failed', code: e.code, reader: p.reader, subject: p.subject, action });
        }
      }
    }
    if (decision.granted) {
      this.counts.granted++;
      log.info(
        {
          reader: p.reader,
          subject: p.subject,
          role: decision.credential.role,
          action,
          lock: lockState,
        },
        'access granted',
      );
    } else {
      this.counts.denied++;
      const line = { reader: p.reader, subject: p.subject, code: decision.code };
      if (isNoise(decision)) log.debug(line, 'access denied');
      else log.info(line, 'access denied');
    }
    return decision;
  }

  /** A rate limit started: logged and audited with what it is keyed on. */
  private auditLimit(reader: string, event: LimitEvent): void {
    const until = new Date(event.until).toISOString();
    if (event.scope === 'credential') {
      this.limitCounts.credentialLockouts++;
      const record = {
        reader,
        scope: event.scope,
        credentialId: event.credentialId,
        failures: event.failures,
        until,
      };
      this.deps.log.warn({ code: 'rate_limited', ...record }, 'credential locked out after failed proofs');
      this.audit({ type: 'rate_limited', code: 'rate_limited', ...record });
    } else {
      this.limitCounts.uidThrottles++;
      const record = { reader, scope: event.scope, unknownCards: event.unknownCards, until };
      this.deps.log.warn(
        { code: 'rate_limited', ...record },
        'UID-only grants throttled after unknown cards',
      );
      this.audit({ type: 'rate_limited', code: 'rate_limited', ...record });
    }
  }

  /**
   * Acts on an authorised command (a verified signed command from the cloud or the CLI): the
   * caller has checked signature, role, freshness and counter. Audited like a reader grant.
   */
  async actuate(
    intent: Presentation['intent'],
    by: string,
    source: string,
    jti?: string,
  ): Promise<LockState> {
    const action = this.resolveIntent(intent);
    this.audit({ type: 'command', source, by, action, ...(jti !== undefined ? { jti } : {}) });
    const state =
      action === 'unlock'
        ? await this.deps.lock.unlock(`${source}:${by}`)
        : await this.deps.lock.lock(`${source}:${by}`);
    this.deps.log.info({ source, by, action, lock: state }, 'command carried out');
    return state;
  }

  private resolveIntent(intent: Presentation['intent']): 'unlock' | 'lock' {
    if (intent !== 'toggle') return intent;
    const state = this.deps.lock.state();
    return state === 'locked' || state === 'locking' ? 'unlock' : 'lock';
  }

  /**
   * Appends to the audit log without blocking the caller; failures are logged with their code.
   * With maxAuditInFlight appends already waiting for the disk, the event is dropped instead, so
   * a frozen disk cannot grow memory without bound; drops and failed appends are counted and
   * recorded as one `audit.dropped` event after the next append that succeeds.
   */
  audit(event: AuditInput): void {
    // Appended on the next turn of the event loop, in call order: preparing a record (JSON,
    // hash chain) takes a few hundred µs, which then runs while the relay switches instead of
    // before it (the lock records of a grant come from inside the lock controller).
    this.auditBacklog.push(event);
    if (this.auditBacklog.length > 1) return; // a drain is already scheduled
    this.track(
      new Promise<void>((resolve) =>
        setImmediate(() => {
          for (const e of this.auditBacklog.splice(0)) {
            if (this.auditInFlight >= this.maxAuditInFlight) this.dropAudit(e);
            else this.track(this.appendAudit(e));
          }
          resolve();
        }),
      ),
    );
  }

  private appendAudit(event: AuditInput): Promise<unknown> {
    this.auditInFlight += 1;
    return this.deps.audit.append(event).then(
      () => {
        this.auditInFlight -= 1;
        this.recordDrops();
      },
      (err: unknown) => {
        this.auditInFlight -= 1;
        const e = toAgentError(err, 'state_io');
        // One line per failing streak, not per event: a full disk fails every append.
        if (this.drops.count === 0)
          this.deps.log.error({ code: e.code, err: e.message, event: event.type }, 'audit append failed');
        this.dropAudit(event);
      },
    );
  }

  private dropAudit(event: AuditInput): void {
    if (this.drops.count === 0) {
      this.drops.since = this.wallNow();
      this.deps.log.error(
        { code: 'state_io', event: event.type, inFlight: this.auditInFlight },
        'audit events are being lost (the disk does not take them); counting until it does',
      );
    }
    this.drops.count += 1;
    this.dropsTotal += 1;
    this.drops.types.set(event.type, (this.drops.types.get(event.type) ?? 0) + 1);
  }

  /** After an append succeeded: records the events lost before it, if any. */
  private recordDrops(): void {
    const lost = this.drops;
    if (lost.count === 0 || this.recordingDrops) return;
    this.recordingDrops = true;
    this.drops = { count: 0, types: new Map() };
    const record = {
      type: 'audit.dropped',
      code: 'state_io',
      count: lost.count,
      ...(lost.since !== undefined ? { since: new Date(lost.since).toISOString() } : {}),
      until: new Date(this.wallNow()).toISOString(),
      types: Object.fromEntries(lost.types),
    };
    this.auditInFlight += 1;
    this.track(
      this.deps.audit.append(record).then(
        () => {
          this.auditInFlight -= 1;
          this.recordingDrops = false;
          this.deps.log.warn(record, 'audit events were lost while the disk failed; recorded how many');
          this.recordDrops(); // those lost meanwhile
        },
        () => {
          // Not recorded: the count stays for the next attempt (this record is not one more loss).
          this.auditInFlight -= 1;
          this.recordingDrops = false;
          this.drops.count += lost.count;
          if (lost.since !== undefined)
            this.drops.since = Math.min(lost.since, this.drops.since ?? lost.since);
          for (const [type, n] of lost.types)
            this.drops.types.set(type, (this.drops.types.get(type) ?? 0) + n);
        },
      ),
    );
  }

  private track(pending: Promise<unknown>): void {
    this.pendingAudit.add(pending);
    void pending.finally(() => this.pendingAudit.delete(pending));
  }

  /**
   * Verifies, persists and then applies keyring operations (from the CLI, the cloud, enrollment),
   * one change at a time. When the ops cannot be written the keyring is left as it was and the
   * caller gets state_io: a grant that is not on disk never opens, a revoke that is not on disk is
   * reported as not done (the key keeps its old state, and says so).
   */
  addKeyringOps(jwsList: readonly string[], source: string): Promise<MergeResult> {
    const run = this.keyringChain.then(() => this.changeKeyring(jwsList, source));
    this.keyringChain = run.catch(() => {});
    return run;
  }

  private async changeKeyring(jwsList: readonly string[], source: string): Promise<MergeResult> {
    const { keyring, keyringStore, log } = this.deps;
    // A keyring loaded from its snapshot reads its ops asynchronously here, never with a
    // synchronous read on the event loop.
    await keyring.whenMaterialized();
    const prepared = keyring.prepare(jwsList);
    for (const r of prepared.rejected) {
      log.warn({ source, code: r.code, err: r.message }, 'keyring operation rejected');
      this.audit({ type: 'keyring.rejected', source, code: r.code });
    }
    if (prepared.added.length === 0) return keyring.apply(prepared);
    try {
      await keyringStore.persist(prepared.added.map((s) => ({ jws: s.jws, signer: s.signer })));
    } catch (err) {
      const e = toAgentError(err, 'state_io');
      const ops = prepared.added.map((s) => s.op);
      log.error(
        { source, code: e.code, err: e.message, ops: ops.map((op) => op.id) },
        'keyring change not stored; the keyring is unchanged',
      );
      this.audit({
        type: 'keyring.failed',
        source,
        code: 'state_io',
        detail: e.message,
        ops: ops.map((op) => ({
          opId: op.id,
          op: op.op,
          credentialId: op.op === 'grant' ? op.cred.id : op.credId,
        })),
      });
      throw new AgentError(
        'state_io',
        `the keyring change could not be stored, so it was not made (${e.message})`,
        { source, opIds: ops.map((op) => op.id), ...(e.details.errno ? { errno: e.details.errno } : {}) },
        { cause: e },
      );
    }
    const result = keyring.apply(prepared);
    for (const op of result.added) {
      this.audit({
        type: `keyring.${op.op}`,
        source,
        opId: op.id,
        credentialId: op.op === 'grant' ? op.cred.id : op.credId,
        ...(op.op === 'grant' ? { role: op.cred.role, kind: op.cred.kind } : {}),
      });
    }
    if (result.added.length > 0)
      log.info({ source, added: result.added.length, digest: keyring.digest() }, 'keyring updated');
    await keyringStore.compactIfDue?.().catch((err: unknown) => {
      const e = toAgentError(err, 'state_io');
      log.warn({ code: e.code, err: e.message }, 'keyring compaction failed; the journal keeps the ops');
    });
    return result;
  }

  /**
   * The rate limits in force. It names locked-out credentials, so it is for the owner's control
   * socket only, never for the status page (whose status carries counts).
   */
  rateLimits(): RateLimitsView {
    const now = this.deps.clock.now();
    const p = this.deps.policy.rateLimit;
    return {
      now,
      policy: {
        maxDenials: p.maxDenials,
        windowMs: p.windowMs,
        cooldownMs: p.cooldownMs,
        maxUnknownCards: p.maxUnknownCards ?? DEFAULT_MAX_UNKNOWN_CARDS,
        uidThrottleMs: p.uidThrottleMs ?? DEFAULT_UID_THROTTLE_MS,
      },
      active: activeLimits(this.limits, now, MAX_LISTED_LOCKOUTS),
    };
  }

  /**
   * Lifts every lockout and the UID throttle, and forgets counted failures. Only a simulated
   * vehicle offers it (`vehicle-agent sim clear-limits`, src/app/sim.ts): on a real one a lockout
   * ends on time. Audited, so a cleared limit is never invisible.
   */
  clearRateLimits(cause: string): { readonly credentials: number; readonly uidThrottle: boolean } {
    const now = this.deps.clock.now();
    const cleared = {
      credentials: lockedOutCount(this.limits, now),
      uidThrottle: isUidThrottled(this.limits, now),
    };
    this.limits = EMPTY_LIMITS;
    this.deps.log.info({ cause, ...cleared }, 'rate limits cleared');
    this.audit({ type: 'rate_limits.cleared', cause, ...cleared });
    return cleared;
  }

  status(): AgentStatus {
    const { clock, keyring, lock, readers, vehicleId } = this.deps;
    const now = clock.now();
    const readerStatus: Record<string, Health> = {};
    for (const r of readers) readerStatus[r.id] = r.health();
    return {
      vehicleId,
      lock: lock.state(),
      readers: readerStatus,
      keyring: { operations: keyring.size, credentials: keyring.credentialCount, digest: keyring.digest() },
      clock: { now: new Date(now).toISOString(), trust: clock.trust() },
      decisions: { ...this.counts },
      rateLimits: {
        lockedOutCredentials: lockedOutCount(this.limits, now),
        credentialLockouts: this.limitCounts.credentialLockouts,
        ...(isUidThrottled(this.limits, now)
          ? { uidThrottledUntil: new Date(this.limits.uidThrottledUntil).toISOString() }
          : {}),
        uidThrottles: this.limitCounts.uidThrottles,
        noiseDenials: this.limitCounts.noiseDenials,
        noiseSummarised: this.noise.suppressed,
      },
    };
  }
}

function maxDefined(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return Math.max(a, b);
}

/**
 * Settles like `work`, or rejects with state_io once `ms` have passed. The work goes on (a write
 * cannot be called back); a late rejection of it is left handled.
 */
function withinDeadline<T>(work: Promise<T>, ms: number, why: () => string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new AgentError('state_io', why(), { deadlineMs: ms })), ms);
    work.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}
