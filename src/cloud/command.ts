import { type KeyObject, randomBytes } from 'node:crypto';
import type { CredentialStatus } from '../access/credential-lookup.js';
import { parsePageArgs as checkPageArgs } from '../access/page-args.js';
import { type Action, roleAllows } from '../access/policy.js';
import { CODES, type Code } from '../core/codes.js';
import { AgentError } from '../core/errors.js';
import type { Role } from '../core/types.js';
import { b64url } from '../crypto/encoding.js';
import { MAX_JWS_LENGTH, type ParsedJws, parseJws, signJws, verifyJws } from '../crypto/jws.js';

/**
 * Signed commands (docs/mqtt.md "Commands"). Pure: no I/O, no clock of its own, no state; the
 * caller passes the time, the keyring, the last accepted counters and earlier results.
 *
 * Checks, in this order, each with its stable code:
 *   1. parse                                   jws_malformed (unknown_command, bad_arguments)
 *   2. vid is this vehicle                     wrong_vehicle
 *   3. kid known, not revoked, in its window   unknown_kid, revoked_kid (not_yet_valid, expired)
 *   4. the signer's role allows cmd            role_not_allowed
 *   5. signature                               bad_signature
 *      (a signer's jti already carried out → the same result again, nothing done twice)
 *   6. exp passed / exp - iat too long         command_expired, lifetime_too_long
 *      (6 and 7 run before 5 for a jti not seen yet: stale or replayed forgeries cost no
 *      signature check)
 *      (iat too far ahead, non-owner signers   command_not_yet_valid)
 *   7. ctr above the last accepted for kid     counter_replay
 *   8. not delivered as a retained message     retained_command
 */

export const COMMAND_TYP = 'vehicle-agent.command';

export const COMMAND_NAMES = [
  'unlock',
  'lock',
  'keys.grant',
  'keys.revoke',
  'keys.list',
  'state.refresh',
] as const satisfies readonly Action[];
export type CommandName = (typeof COMMAND_NAMES)[number];

/** Most keyring operations one keys.grant / keys.revoke command may carry. */
export const MAX_COMMAND_OPS = 100;

/**
 * Credentials one keys.list result holds unless `limit` says otherwise, and the most it may ask:
 * a result must fit the result topic (brokers stop at 128-256 KiB; a listed key is ~150-300 bytes).
 */
export const COMMAND_KEYS_PAGE_DEFAULT = 100;
export const COMMAND_KEYS_PAGE_MAX = 200;

export type CommandArgs =
  | { readonly kind: 'none' }
  | { readonly kind: 'ops'; readonly ops: readonly string[] }
  | { readonly kind: 'page'; readonly limit: number; readonly after?: string };

export interface CommandPayload {
  readonly vid: string;
  readonly cmd: string;
  readonly args?: Readonly<Record<string, unknown>>;
  readonly jti: string;
  readonly iat: number;
  readonly exp: number;
  readonly ctr: number;
}

export interface VerifiedCommand {
  readonly kid: string;
  readonly role: Role;
  readonly cmd: CommandName;
  readonly args: CommandArgs;
  readonly jti: string;
  readonly iat: number;
  readonly exp: number;
  readonly ctr: number;
}

/** What goes on `<base>/command/result`. `code` is "ok" on success, else a stable error code. */
export interface CommandResult {
  readonly jti: string | null;
  readonly status: 'ok' | 'error';
  readonly code: Code | 'ok';
  readonly message: string;
  readonly data?: unknown;
}

export interface CommandLimits {
  /** Longest accepted exp - iat, seconds. */
  readonly maxLifetimeS: number;
  /** How far iat may be ahead of the vehicle's clock for non-owner signers, seconds. */
  readonly maxFutureS: number;
}

/** The slice of the keyring the checks read. */
export interface SignerLookup {
  byId(id: string): CredentialStatus | undefined;
  keyOf(id: string): KeyObject | undefined;
}

export interface CommandContext {
  readonly vehicleId: string;
  /** The agent's trusted time, ms since the epoch. */
  readonly nowMs: number;
  readonly limits: CommandLimits;
  readonly keys: SignerLookup;
  /** Highest counter accepted so far for this kid. */
  lastCounter(kid: string): number | undefined;
  /** The result of an accepted command with this signer and jti, if one is remembered. */
  previousResult(kid: string, jti: string): CommandResult | undefined;
  /** The MQTT retain flag the message arrived with. */
  readonly retained: boolean;
}

export type CommandCheck =
  | {
      readonly verdict: 'rejected';
      readonly result: CommandResult;
      /** Set once the signature verified: a rejection by a genuine signer. */
      readonly authenticated: boolean;
      readonly kid?: string;
      readonly cmd?: string;
    }
  | { readonly verdict: 'duplicate'; readonly result: CommandResult; readonly kid: string }
  | { readonly verdict: 'accepted'; readonly command: VerifiedCommand };

const JTI = /^[\x21-\x7e]{1,128}$/;
const PAYLOAD_FIELDS = new Set(['vid', 'cmd', 'args', 'jti', 'iat', 'exp', 'ctr']);

export function errorResult(jti: string | null, code: Code, detail?: string): CommandResult {
  return { jti, status: 'error', code, message: detail ?? CODES[code] };
}

export function okResult(jti: string, message: string, data?: unknown): CommandResult {
  return data === undefined
    ? { jti, status: 'ok', code: 'ok', message }
    : { jti, status: 'ok', code: 'ok', message, data };
}

function isTime(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Reads the jti of a payload that may be anything, for correlating an early rejection. */
function jtiOf(payload: unknown): string | null {
  const jti = (payload as { jti?: unknown } | null)?.jti;
  return typeof jti === 'string' && JTI.test(jti) ? jti : null;
}

/** The jti of a command that is refused before any check, for correlating its result; null when unreadable. */
export function commandJti(compact: string): string | null {
  try {
    return jtiOf(parseJws(compact).payload);
  } catch {
    return null;
  }
}

function isCommandName(cmd: string): cmd is CommandName {
  return (COMMAND_NAMES as readonly string[]).includes(cmd);
}

/** Structural checks of args for each command. Throws AgentError bad_arguments. */
export function parseCommandArgs(cmd: CommandName, raw: unknown): CommandArgs {
  const args = raw === undefined ? {} : raw;
  if (typeof args !== 'object' || args === null || Array.isArray(args))
    throw new AgentError('bad_arguments', 'args must be an object');
  const keys = Object.keys(args);
  if (cmd === 'keys.list') return parsePageArgs(args as Readonly<Record<string, unknown>>);
  if (cmd !== 'keys.grant' && cmd !== 'keys.revoke') {
    if (keys.length > 0)
      throw new AgentError('bad_arguments', `${cmd} takes no args (got ${keys.join(', ')})`);
    return { kind: 'none' };
  }
  const extra = keys.filter((k) => k !== 'ops');
  if (extra.length > 0)
    throw new AgentError('bad_arguments', `${cmd} args take only ops (got ${extra.join(', ')})`);
  const ops = (args as { ops?: unknown }).ops;
  if (!Array.isArray(ops) || ops.length === 0 || ops.length > MAX_COMMAND_OPS)
    throw new AgentError(
      'bad_arguments',
      `${cmd} needs args.ops: 1 to ${MAX_COMMAND_OPS} signed keyring operations`,
    );
  const want = cmd === 'keys.grant' ? 'grant' : 'revoke';
  for (const [i, op] of ops.entries()) {
    if (typeof op !== 'string' || op.length > MAX_JWS_LENGTH)
      throw new AgentError('bad_arguments', `args.ops[${i}] must be a keyring operation JWS`);
    let kind: unknown;
    try {
      kind = parseJws(op).payload.op;
    } catch (err) {
      throw new AgentError('bad_arguments', `args.ops[${i}]: ${(err as Error).message}`);
    }
    // A service key may send keys.revoke but never add keys: no grant rides inside a revoke.
    if (kind !== want) throw new AgentError('bad_arguments', `${cmd} carries only ${want} operations`);
  }
  return { kind: 'ops', ops: ops as string[] };
}

/** keys.list: `{limit?, after?}`, a page of the keys in id order (the control socket's paging). */
function parsePageArgs(args: Readonly<Record<string, unknown>>): CommandArgs {
  const extra = Object.keys(args).filter((k) => k !== 'limit' && k !== 'after');
  if (extra.length > 0)
    throw new AgentError(
      'bad_arguments',
      `keys.list args take only limit and after (got ${extra.join(', ')})`,
    );
  return {
    kind: 'page',
    ...checkPageArgs(args.limit, args.after, COMMAND_KEYS_PAGE_MAX, COMMAND_KEYS_PAGE_DEFAULT),
  };
}

interface Parsed {
  readonly jws: ParsedJws<Record<string, unknown>>;
  readonly payload: CommandPayload;
  readonly cmd: CommandName;
  readonly args: CommandArgs;
}

function parseCommand(compact: string): Parsed {
  const jws = parseJws(compact);
  const { typ } = jws.header;
  if (typ !== undefined && typ !== COMMAND_TYP)
    throw new AgentError('jws_malformed', `JWS typ must be ${COMMAND_TYP} when present`);
  const p = jws.payload;
  for (const key of Object.keys(p))
    if (!PAYLOAD_FIELDS.has(key)) throw new AgentError('jws_malformed', `unknown payload field ${key}`);
  const { vid, cmd, jti, iat, exp, ctr } = p;
  if (typeof vid !== 'string' || vid.length === 0 || vid.length > 64)
    throw new AgentError('jws_malformed', 'vid must be the vehicle id');
  if (typeof jti !== 'string' || !JTI.test(jti))
    throw new AgentError('jws_malformed', 'jti must be 1-128 printable ASCII characters');
  if (!isTime(iat) || !isTime(exp))
    throw new AgentError('jws_malformed', 'iat and exp must be whole seconds');
  if (exp <= iat) throw new AgentError('jws_malformed', 'exp must be after iat');
  if (!isTime(ctr)) throw new AgentError('jws_malformed', 'ctr must be a non-negative integer');
  if (typeof cmd !== 'string') throw new AgentError('jws_malformed', 'cmd must be a string');
  if (!isCommandName(cmd))
    throw new AgentError('unknown_command', `cmd must be one of ${COMMAND_NAMES.join(', ')}`);
  const args = parseCommandArgs(cmd, p.args);
  const payload: CommandPayload = {
    vid,
    cmd,
    jti,
    iat,
    exp,
    ctr,
    ...(p.args !== undefined ? { args: p.args as Record<string, unknown> } : {}),
  };
  return { jws, payload, cmd, args };
}

/** Runs the checks in order. Never throws: every problem is a coded rejection. */
export function checkCommand(compact: string, ctx: CommandContext): CommandCheck {
  let parsed: Parsed;
  try {
    parsed = parseCommand(compact);
  } catch (err) {
    const e = err instanceof AgentError ? err : new AgentError('jws_malformed', String(err));
    let jti: string | null = null;
    try {
      jti = jtiOf(parseJws(compact).payload);
    } catch {
      // not even a JWS: nothing to correlate with
    }
    return { verdict: 'rejected', authenticated: false, result: errorResult(jti, e.code, e.message) };
  }
  const { jws, payload, cmd, args } = parsed;
  const { jti } = payload;
  const kid = jws.header.kid;
  const reject = (code: Code, detail?: string, authenticated = false): CommandCheck => ({
    verdict: 'rejected',
    authenticated,
    kid,
    cmd,
    result: errorResult(jti, code, detail),
  });

  if (payload.vid !== ctx.vehicleId)
    return reject('wrong_vehicle', `the command is for vehicle ${payload.vid}`);

  const status = ctx.keys.byId(kid);
  const key = ctx.keys.keyOf(kid);
  if (!status || !key) return reject('unknown_kid', `no signing key ${kid} in the keyring`);
  if (status.revoked) return reject('revoked_kid', `key ${kid} is revoked`);
  const { credential } = status;
  if (credential.notBefore !== undefined && ctx.nowMs < credential.notBefore)
    return reject(
      'not_yet_valid',
      `key ${kid} is not valid before ${new Date(credential.notBefore).toISOString()}`,
    );
  if (credential.notAfter !== undefined && ctx.nowMs >= credential.notAfter)
    return reject('expired', `key ${kid} expired at ${new Date(credential.notAfter).toISOString()}`);

  if (!roleAllows(credential.role, cmd))
    return reject('role_not_allowed', `a ${credential.role} key may not send ${cmd}`);

  const previous = ctx.previousResult(kid, jti);
  const nowS = Math.floor(ctx.nowMs / 1000);
  // Cheap refusals before the signature check (a forged flood of stale or replayed commands costs
  // no verification): a new jti that is expired, too long-lived, post-dated or not above the
  // counter would be refused after a valid signature too. A remembered jti goes on to the
  // signature, so a genuine redelivery still gets its first answer.
  if (!previous) {
    const early = timeAndCounter(payload, credential.role, nowS, ctx, kid);
    if (early) return reject(early.code, early.detail);
  }

  if (!verifyJws(jws, key)) return reject('bad_signature');

  if (previous) return { verdict: 'duplicate', result: previous, kid };

  if (ctx.retained) return reject('retained_command', undefined, true);

  return {
    verdict: 'accepted',
    command: {
      kid,
      role: credential.role,
      cmd,
      args,
      jti,
      iat: payload.iat,
      exp: payload.exp,
      ctr: payload.ctr,
    },
  };
}

/** Checks 6 and 7: the command's time window and counter. */
function timeAndCounter(
  payload: CommandPayload,
  role: Role,
  nowS: number,
  ctx: CommandContext,
  kid: string,
): { code: Code; detail: string } | undefined {
  if (payload.exp <= nowS)
    return {
      code: 'command_expired',
      detail: `the command expired at ${new Date(payload.exp * 1000).toISOString()}`,
    };
  if (payload.exp - payload.iat > ctx.limits.maxLifetimeS)
    return {
      code: 'lifetime_too_long',
      detail: `exp - iat is ${payload.exp - payload.iat} s; at most ${ctx.limits.maxLifetimeS} s`,
    };
  // Owners are trusted for time as for keys (their iat moves the vehicle's clock forward);
  // anyone else could pre-sign a command for later use by dating it in the future.
  if (role !== 'owner' && payload.iat > nowS + ctx.limits.maxFutureS)
    return {
      code: 'command_not_yet_valid',
      detail: `iat is ${payload.iat - nowS} s ahead of the vehicle clock; at most ${ctx.limits.maxFutureS} s`,
    };
  const last = ctx.lastCounter(kid);
  if (last !== undefined && payload.ctr <= last)
    return {
      code: 'counter_replay',
      detail: `ctr ${payload.ctr} is not above ${last}, the last accepted for ${kid}`,
    };
  return undefined;
}

export function newJti(): string {
  return b64url(randomBytes(12));
}

/** Signs a command (the CLI, tests and docs use this; any JOSE library can do the same). */
export function signCommand(payload: CommandPayload, privateKey: KeyObject, kid: string): string {
  return signJws(payload, privateKey, kid, COMMAND_TYP);
}
