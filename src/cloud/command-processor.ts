import type { MergeResult } from '../access/keyring.js';
import { isCode } from '../core/codes.js';
import { toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { LockState } from '../core/types.js';
import {
  type CommandCheck,
  type CommandLimits,
  type CommandResult,
  checkCommand,
  errorResult,
  okResult,
  type SignerLookup,
  type VerifiedCommand,
} from './command.js';

/**
 * Carries out signed commands: the pure checks (command.ts), then the durable side. One command at
 * a time, so a counter check and its update cannot interleave with another command's.
 *
 * Order of effects for an accepted command: persist the counter, act, remember the result.
 * A crash between the first two loses the command (its redelivery is a counter_replay), never
 * acts twice; a crash before the result is remembered likewise answers a redelivery with
 * counter_replay instead of acting again.
 */

/** Durable key → value map (JournaledMap satisfies it). */
export interface DurableMap<V> {
  get(key: string): V | undefined;
  set(key: string, value: V): Promise<void>;
  delete(key: string): Promise<boolean>;
  entries(): IterableIterator<[string, V]>;
  readonly size: number;
}

export interface RememberedResult {
  readonly result: CommandResult;
  /** When it was stored, ms (trusted time). */
  readonly at: number;
}

/** What commands act on: the Agent satisfies this. */
export interface CommandAgent {
  /** `jti`: the command's id, carried into the audit record of the act. */
  actuate(intent: 'unlock' | 'lock', by: string, source: string, jti?: string): Promise<LockState>;
  addKeyringOps(jwsList: readonly string[], source: string): Promise<MergeResult>;
  audit(event: { readonly type: string; readonly [key: string]: unknown }): void;
  readonly keyring: SignerLookup & {
    /** Sorts the ids for page() in slices, if not done (Keyring.pageIndexReady). */
    pageIndexReady(): Promise<void>;
    /** One page in id order (Keyring.page): a whole list at 100 000 keys fits no MQTT message. */
    page(
      after: string | undefined,
      limit: number,
    ): {
      readonly credentials: readonly {
        readonly credential: {
          readonly id: string;
          readonly kind: string;
          readonly role: string;
          readonly name?: string;
          readonly notBefore?: number;
          readonly notAfter?: number;
        };
        readonly revoked: boolean;
      }[];
      readonly next?: string;
      readonly total: number;
    };
  };
}

export interface CommandProcessorOptions {
  readonly vehicleId: string;
  readonly agent: CommandAgent;
  readonly clock: { now(): number; advanceTo(wallMs: number): void };
  readonly limits: CommandLimits;
  /** Last accepted counter per signing key (kid). */
  readonly counters: DurableMap<number>;
  /** Results of accepted commands by signer and jti. */
  readonly results: DurableMap<RememberedResult>;
  /** How many results to remember (oldest forgotten first). */
  readonly maxResults: number;
  /** The current state document (for state.refresh); publishing it is the caller's business. */
  readonly stateSnapshot: () => Record<string, unknown>;
  /** Called after an accepted state.refresh so the caller republishes `state`. */
  readonly onStateRefresh?: () => void;
  /** Audit label of the transport, e.g. "cloud". */
  readonly source: string;
  readonly log: Logger;
  /** Rejections audited per minute at most (a flood becomes one summary event). Default 30. */
  readonly auditRejectionsPerMinute?: number;
  /**
   * Takes over auditing rejections (the cloud link summarises them with its other network noise,
   * one record per code and interval); without it the per-minute limit above applies.
   */
  readonly onRejected?: (rejection: CommandRejection) => void;
}

/** A refused command, as audited. */
export interface CommandRejection {
  readonly code: string;
  readonly jti?: string;
  readonly by?: string;
  readonly action?: string;
}

/** Results larger than this are remembered without their data. */
const MAX_REMEMBERED_BYTES = 8 * 1024;

function resultKey(kid: string, jti: string): string {
  return `${kid}\n${jti}`;
}

export class CommandProcessor {
  private readonly o: CommandProcessorOptions;
  private queue: Promise<unknown> = Promise.resolve();
  private auditWindowStart = 0;
  private auditedInWindow = 0;
  private suppressed = 0;

  constructor(options: CommandProcessorOptions) {
    this.o = options;
  }

  /** Checks and (when accepted) carries out one command; resolves with the result to publish. */
  handle(compact: string, retained: boolean): Promise<CommandResult> {
    return this.serialize(() => this.process(compact, retained));
  }

  /** handle() for a caller already inside serialize() (queueing again there would deadlock). */
  handleQueued(compact: string, retained: boolean): Promise<CommandResult> {
    return this.process(compact, retained);
  }

  /** Runs `task` in the same one-at-a-time queue as commands. */
  serialize<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task);
    this.queue = run.catch(() => {});
    return run;
  }

  /** Resolves when every queued command is done. */
  async drain(): Promise<void> {
    await this.queue;
  }

  private check(compact: string, retained: boolean): CommandCheck {
    const { counters, results, limits, vehicleId, agent, clock } = this.o;
    return checkCommand(compact, {
      vehicleId,
      nowMs: clock.now(),
      limits,
      keys: agent.keyring,
      retained,
      lastCounter: (kid) => counters.get(kid),
      previousResult: (kid, jti) => results.get(resultKey(kid, jti))?.result,
    });
  }

  private async process(compact: string, retained: boolean): Promise<CommandResult> {
    const { log, counters, clock } = this.o;
    const check = this.check(compact, retained);
    if (check.verdict === 'rejected') {
      this.auditRejection(check);
      log.info(
        { code: check.result.code, jti: check.result.jti, kid: check.kid, cmd: check.cmd },
        'command refused',
      );
      return check.result;
    }
    if (check.verdict === 'duplicate') {
      log.info(
        { jti: check.result.jti, kid: check.kid },
        'command seen before: same result again, not carried out',
      );
      return check.result;
    }
    const command = check.command;
    try {
      await counters.set(command.kid, command.ctr);
    } catch (err) {
      const e = toAgentError(err, 'state_io');
      log.error({ code: e.code, err: e.message }, 'cannot persist the command counter; refusing');
      return errorResult(command.jti, 'state_io', 'the vehicle could not record the command counter');
    }
    // The owner is trusted for time as for keys: a signed iat moves the clock floor forward.
    if (command.role === 'owner') clock.advanceTo(command.iat * 1000);
    const result = await this.execute(command);
    await this.remember(command, result);
    log.info(
      { cmd: command.cmd, jti: command.jti, kid: command.kid, code: result.code },
      'command carried out',
    );
    return result;
  }

  private async execute(command: VerifiedCommand): Promise<CommandResult> {
    const { agent, source } = this.o;
    const { jti, kid } = command;
    try {
      switch (command.cmd) {
        case 'unlock':
        case 'lock': {
          const lock = await agent.actuate(command.cmd, kid, source, jti);
          return okResult(jti, `${command.cmd} done`, { lock });
        }
        case 'keys.grant':
        case 'keys.revoke': {
          if (command.args.kind !== 'ops') return errorResult(jti, 'bad_arguments');
          agent.audit({ type: 'command', source, by: kid, action: command.cmd, jti });
          const merged = await agent.addKeyringOps(command.args.ops, source);
          const data = {
            added: merged.added.map((op) => op.id),
            duplicates: merged.duplicates,
            rejected: merged.rejected,
          };
          const first = merged.rejected[0];
          if (first)
            return {
              ...errorResult(jti, isCode(first.code) ? first.code : 'op_malformed', first.message),
              data,
            };
          return okResult(jti, `${merged.added.length} operation(s) added`, data);
        }
        case 'keys.list': {
          agent.audit({ type: 'command', source, by: kid, action: command.cmd, jti });
          if (command.args.kind !== 'page') return errorResult(jti, 'bad_arguments');
          await agent.keyring.pageIndexReady();
          const page = agent.keyring.page(command.args.after, command.args.limit);
          const keys = page.credentials.map(({ credential: c, revoked }) => ({
            id: c.id,
            kind: c.kind,
            role: c.role,
            ...(c.name !== undefined ? { name: c.name } : {}),
            ...(c.notBefore !== undefined ? { notBefore: new Date(c.notBefore).toISOString() } : {}),
            ...(c.notAfter !== undefined ? { notAfter: new Date(c.notAfter).toISOString() } : {}),
            revoked,
          }));
          return okResult(jti, `${keys.length} of ${page.total} credential(s)`, {
            keys,
            total: page.total,
            ...(page.next !== undefined ? { next: page.next } : {}),
          });
        }
        case 'state.refresh': {
          agent.audit({ type: 'command', source, by: kid, action: command.cmd, jti });
          this.o.onStateRefresh?.();
          return okResult(jti, 'state published', this.o.stateSnapshot());
        }
      }
    } catch (err) {
      const e = toAgentError(err);
      this.o.log.error({ code: e.code, err: e.message, cmd: command.cmd }, 'command failed');
      return errorResult(jti, e.code, e.message);
    }
  }

  private async remember(command: VerifiedCommand, result: CommandResult): Promise<void> {
    const { results, maxResults, clock, log } = this.o;
    // A large answer (a long keys.list) is remembered without its data: a repeat still learns
    // the outcome, and the store keeps small records.
    const small =
      result.data !== undefined && JSON.stringify(result).length > MAX_REMEMBERED_BYTES
        ? { jti: result.jti, status: result.status, code: result.code, message: result.message }
        : result;
    try {
      await results.set(resultKey(command.kid, command.jti), { result: small, at: clock.now() });
      const excess = results.size - maxResults;
      if (excess > 0) {
        const oldest: string[] = [];
        for (const [key] of results.entries()) {
          if (oldest.length >= excess) break;
          oldest.push(key);
        }
        for (const key of oldest) await results.delete(key);
      }
    } catch (err) {
      // The counter already protects against acting twice; only the repeated answer is lost.
      const e = toAgentError(err, 'state_io');
      log.warn({ code: e.code, err: e.message }, 'cannot remember a command result');
    }
  }

  private auditRejection(check: Extract<CommandCheck, { verdict: 'rejected' }>): void {
    if (this.o.onRejected) {
      this.o.onRejected({
        code: check.result.code,
        ...(check.result.jti !== null ? { jti: check.result.jti } : {}),
        ...(check.kid !== undefined ? { by: check.kid } : {}),
        ...(check.cmd !== undefined ? { action: check.cmd } : {}),
      });
      return;
    }
    const now = this.o.clock.now();
    const limit = this.o.auditRejectionsPerMinute ?? 30;
    if (now - this.auditWindowStart >= 60_000) {
      if (this.suppressed > 0)
        this.o.agent.audit({
          type: 'command.rejected.suppressed',
          source: this.o.source,
          count: this.suppressed,
        });
      this.auditWindowStart = now;
      this.auditedInWindow = 0;
      this.suppressed = 0;
    }
    if (this.auditedInWindow >= limit) {
      this.suppressed += 1;
      return;
    }
    this.auditedInWindow += 1;
    this.o.agent.audit({
      type: 'command.rejected',
      source: this.o.source,
      code: check.result.code,
      ...(check.result.jti !== null ? { jti: check.result.jti } : {}),
      ...(check.kid !== undefined ? { by: check.kid } : {}),
      ...(check.cmd !== undefined ? { action: check.cmd } : {}),
    });
  }
}
