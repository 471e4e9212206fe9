// Type-only imports: the shapes some results take, described by the parts that produce them.
import type { CredentialStatus } from '../access/credential-lookup.js';
import type { MergeResult } from '../access/keyring.js';
import type { EnrollmentView } from '../ble/enrollment.js';
import { AgentError } from '../core/errors.js';
import type { Intent, PublicJwk } from '../core/types.js';
import type { CardEnrollmentView } from '../nfc/enrollment.js';
import type { IntegrityStatus } from './state-integrity.js';

/**
 * The control socket's commands in one table: for each, its argument type, its result type and a
 * strict runtime parser. The control server runs the parser before any handler (a bad request gets
 * `bad_arguments` and never reaches the agent), the CLI's typed call and the status page's sim
 * actions name commands through it. No I/O here: host, cli and status all import it.
 */

/** Arguments as they arrive on the wire (a JSON object). */
export type WireArgs = Readonly<Record<string, unknown>>;

// ── argument and result types the control API promises (the sim reader implements these) ──

export interface SimChallenge {
  readonly challengeId: string;
  readonly challenge: string;
  readonly vehicleId: string;
}

export interface SimAnswer {
  readonly challengeId: string;
  readonly credentialId: string;
  readonly intent: Intent;
  readonly explicitIntent: boolean;
  /** base64url 64-byte r‖s over simKeyMessage(...). */
  readonly signature: string;
  /** Extra delay the simulated key claims before answering (to exercise the deadline). */
  readonly delayMs?: number;
}

export interface SimUidArgs {
  readonly uid: string;
  readonly intent: Intent;
}

/** What a decision on the simulated reader looks like to a control client. */
export type DecisionReply =
  | {
      readonly granted: true;
      readonly intent: Intent;
      readonly credentialId: string;
      readonly role: string;
      readonly lock: string;
    }
  | { readonly granted: false; readonly code: string; readonly credentialId?: string };

/** The rate limits in force (`limits`): the CLI explains a rate_limited denial with it. */
export interface LimitsReply {
  /** The agent's trusted time, against which `until` is to be read. */
  readonly now: string;
  readonly policy: {
    readonly maxDenials: number;
    readonly windowMs: number;
    readonly cooldownMs: number;
    readonly maxUnknownCards: number;
    readonly uidThrottleMs: number;
  };
  /** Locked-out credentials, soonest end first (at most 50; `more` counts the rest). */
  readonly lockedOut: readonly { readonly credentialId: string; readonly until: string }[];
  readonly more: number;
  /** UID-only grants are refused until then. */
  readonly uidThrottledUntil?: string;
  /** Whether `sim.limits.clear` is offered (a simulated vehicle). */
  readonly clearable: boolean;
}

/** What `sim.limits.clear` lifted. */
export interface LimitsCleared {
  readonly credentials: number;
  readonly uidThrottle: boolean;
}

export interface VehicleInfo {
  readonly vehicleId: string;
  readonly rootId: string;
  readonly vehicleKeyId: string;
  readonly vehicleKey: PublicJwk;
}

/** A simulated phone's approach (`sim.phone.approach`), as the BLE simulator reports it. */
export interface ApproachReply {
  readonly outcome: 'decision' | 'enrollment' | 'refused' | 'failed' | 'skipped' | 'timeout';
  readonly granted: boolean;
  readonly code?: string;
  readonly role?: string;
  readonly lock?: string;
  readonly answerMs?: number;
  readonly enrolled?: string;
  readonly credentialId: string;
}

/** A simulated card's tap on the PN532 (`sim.card.tap`): a decision, or an enrollment step. */
export interface TapReply {
  readonly granted?: boolean;
  readonly code?: string;
  readonly role?: string;
  readonly lock?: string;
  readonly credentialId?: string;
  readonly answerMs?: number;
  readonly enrollment?: 'authorise' | 'enroll';
  readonly ok?: boolean;
  readonly message?: string;
  readonly state?: string;
}

/** One card of the simulated wallet (`sim.card.list`). */
export interface SimCardSummary {
  readonly label: string;
  readonly kind: string;
  readonly uid: string;
  readonly counter?: number;
}

/** An enrollment desk's answer: its open enrollment, or none. */
export type PhoneEnrollmentReply = EnrollmentView | { readonly state: 'none' };
export type CardEnrollmentReply = CardEnrollmentView | { readonly state: 'none' };

export interface KeysAddArgs {
  readonly ops: readonly string[];
}

export interface AuditTailArgs {
  readonly n: number;
}

export interface TestAuditArgs {
  readonly count: number;
  readonly bytes: number;
}

export interface TestStallArgs {
  readonly ms: number;
}

export interface SimBleAdapterArgs {
  readonly powered: boolean;
}

export interface SimBleBluezArgs {
  readonly owned: boolean;
}

export interface CardAuthoriseArgs {
  /** The owner's compact JWS over the card enrollment's challenge. */
  readonly jws: string;
}

/** A command without arguments: whatever it is sent is ignored (as it always was). */
export type NoArgs = Readonly<Record<string, never>>;

// ── parsers ──

const noArgs = (_args: WireArgs): NoArgs => ({});

/**
 * Commands whose handler (built in src/app/, next to the part it drives) parses its own arguments
 * strictly: the table passes the object through unchanged.
 */
const ownParser = (args: WireArgs): WireArgs => args;

export function parseIntent(value: unknown): Intent {
  if (value === undefined) return 'unlock';
  if (value === 'unlock' || value === 'lock' || value === 'toggle') return value;
  throw new AgentError('bad_arguments', 'intent must be unlock, lock or toggle');
}

function parseKeysAdd(args: WireArgs): KeysAddArgs {
  const ops: unknown = args.ops;
  if (!Array.isArray(ops) || ops.length === 0 || ops.length > 10_000) {
    throw new AgentError('bad_arguments', 'ops must be a non-empty list of JWS strings');
  }
  const strings: string[] = [];
  for (const op of ops) {
    if (typeof op !== 'string')
      throw new AgentError('bad_arguments', 'ops must be a non-empty list of JWS strings');
    strings.push(op);
  }
  return { ops: strings };
}

function parseAuditTail(args: WireArgs): AuditTailArgs {
  return { n: typeof args.n === 'number' ? Math.min(Math.max(1, args.n), 100) : 20 };
}

function parseSimAnswer(args: WireArgs): SimAnswer {
  const { challengeId, credentialId, explicitIntent, signature, delayMs } = args;
  if (typeof challengeId !== 'string' || typeof credentialId !== 'string' || typeof signature !== 'string') {
    throw new AgentError('bad_arguments', 'challengeId, credentialId and signature must be strings');
  }
  if (typeof explicitIntent !== 'boolean')
    throw new AgentError('bad_arguments', 'explicitIntent must be a boolean');
  if (delayMs !== undefined && (typeof delayMs !== 'number' || !Number.isInteger(delayMs) || delayMs < 0)) {
    throw new AgentError('bad_arguments', 'delayMs must be a non-negative integer');
  }
  return {
    challengeId,
    credentialId,
    intent: parseIntent(args.intent),
    explicitIntent,
    signature,
    ...(delayMs !== undefined ? { delayMs } : {}),
  };
}

function parseSimUid(args: WireArgs): SimUidArgs {
  if (typeof args.uid !== 'string') throw new AgentError('bad_arguments', 'uid must be a hex string');
  return { uid: args.uid, intent: parseIntent(args.intent) };
}

function parseTestAudit(args: WireArgs): TestAuditArgs {
  return {
    count: typeof args.count === 'number' ? Math.min(Math.max(0, Math.floor(args.count)), 10_000) : 1,
    bytes: typeof args.bytes === 'number' ? Math.min(Math.max(0, args.bytes), 4096) : 0,
  };
}

function parseTestStall(args: WireArgs): TestStallArgs {
  return { ms: typeof args.ms === 'number' ? Math.min(Math.max(0, args.ms), 30_000) : 1000 };
}

function parseSimBleAdapter(args: WireArgs): SimBleAdapterArgs {
  if (typeof args.powered !== 'boolean') throw new AgentError('bad_arguments', 'powered must be a boolean');
  return { powered: args.powered };
}

function parseSimBleBluez(args: WireArgs): SimBleBluezArgs {
  if (typeof args.owned !== 'boolean') throw new AgentError('bad_arguments', 'owned must be a boolean');
  return { owned: args.owned };
}

function parseCardAuthorise(args: WireArgs): CardAuthoriseArgs {
  if (typeof args.jws !== 'string') throw new AgentError('bad_arguments', 'jws must be a compact JWS');
  return { jws: args.jws };
}

// ── the table ──

/**
 * Every control command: its arguments (as its parser returns them) and its result. Results typed
 * `unknown` belong to parts that describe their own status shapes (the readers, the cloud link,
 * the stores); clients print them as they come.
 */
export interface ControlApi {
  status: { args: NoArgs; result: Readonly<Record<string, unknown>> };
  vehicle: { args: NoArgs; result: VehicleInfo };
  'keys.list': { args: NoArgs; result: readonly CredentialStatus[] };
  'keys.add': { args: KeysAddArgs; result: MergeResult };
  'audit.tail': { args: AuditTailArgs; result: readonly unknown[] };
  limits: { args: NoArgs; result: LimitsReply };
  'sim.limits.clear': { args: NoArgs; result: LimitsCleared };
  'state.status': { args: NoArgs; result: unknown };
  'state.findings': { args: NoArgs; result: IntegrityStatus };
  'control.status': { args: NoArgs; result: unknown };
  'cloud.status': { args: NoArgs; result: unknown };
  'status-page.status': { args: NoArgs; result: unknown };
  'sim.challenge': { args: NoArgs; result: SimChallenge };
  'sim.answer': { args: SimAnswer; result: DecisionReply };
  'sim.uid': { args: SimUidArgs; result: DecisionReply };
  'ble.status': { args: NoArgs; result: unknown };
  'enroll.open': { args: WireArgs; result: PhoneEnrollmentReply };
  'enroll.status': { args: NoArgs; result: PhoneEnrollmentReply };
  'enroll.cancel': { args: NoArgs; result: PhoneEnrollmentReply };
  'sim.phone.approach': { args: WireArgs; result: ApproachReply };
  'sim.ble.adapter': { args: SimBleAdapterArgs; result: unknown };
  'sim.ble.flood': { args: WireArgs; result: unknown };
  'sim.ble.bluez': { args: SimBleBluezArgs; result: unknown };
  'nfc.status': { args: NoArgs; result: unknown };
  'enroll.card.request': { args: WireArgs; result: CardEnrollmentReply };
  'enroll.card.authorise': { args: CardAuthoriseArgs; result: CardEnrollmentReply };
  'enroll.card.status': { args: NoArgs; result: CardEnrollmentReply };
  'enroll.card.cancel': { args: NoArgs; result: CardEnrollmentReply };
  'sim.card.list': { args: NoArgs; result: readonly SimCardSummary[] };
  'sim.card.add': { args: WireArgs; result: unknown };
  'sim.card.tap': { args: WireArgs; result: TapReply };
  'sim.nfc.fault': { args: WireArgs; result: unknown };
  'test.audit': { args: TestAuditArgs; result: { readonly count: number; readonly lastSeq: number } };
  'test.crash': { args: NoArgs; result: { readonly crashing: boolean } };
  'test.stall': { args: TestStallArgs; result: { readonly stalledMs: number } };
}

export type CommandName = keyof ControlApi;
export type ArgsOf<C extends CommandName> = ControlApi[C]['args'];
export type ResultOf<C extends CommandName> = ControlApi[C]['result'];

/** A handler for one command, typed by the table. */
export type TypedHandler<C extends CommandName> = (args: ArgsOf<C>) => Promise<ResultOf<C>> | ResultOf<C>;
/** Handlers for some of the commands (the agent registers only the parts it runs). */
export type TypedHandlers = { readonly [C in CommandName]?: TypedHandler<C> };

/** The runtime half of the table: each command's argument parser. */
export const ARG_PARSERS: { readonly [C in CommandName]: (args: WireArgs) => ArgsOf<C> } = {
  status: noArgs,
  vehicle: noArgs,
  'keys.list': noArgs,
  'keys.add': parseKeysAdd,
  'audit.tail': parseAuditTail,
  limits: noArgs,
  'sim.limits.clear': noArgs,
  'state.status': noArgs,
  'state.findings': noArgs,
  'control.status': noArgs,
  'cloud.status': noArgs,
  'status-page.status': noArgs,
  'sim.challenge': noArgs,
  'sim.answer': parseSimAnswer,
  'sim.uid': parseSimUid,
  'ble.status': noArgs,
  'enroll.open': ownParser,
  'enroll.status': noArgs,
  'enroll.cancel': noArgs,
  'sim.phone.approach': ownParser,
  'sim.ble.adapter': parseSimBleAdapter,
  'sim.ble.flood': ownParser,
  'sim.ble.bluez': parseSimBleBluez,
  'nfc.status': noArgs,
  'enroll.card.request': ownParser,
  'enroll.card.authorise': parseCardAuthorise,
  'enroll.card.status': noArgs,
  'enroll.card.cancel': noArgs,
  'sim.card.list': noArgs,
  'sim.card.add': ownParser,
  'sim.card.tap': ownParser,
  'sim.nfc.fault': ownParser,
  'test.audit': parseTestAudit,
  'test.crash': noArgs,
  'test.stall': parseTestStall,
};

export function isCommandName(name: string): name is CommandName {
  return Object.hasOwn(ARG_PARSERS, name);
}

export const COMMAND_NAMES: readonly CommandName[] = Object.keys(ARG_PARSERS).filter(isCommandName);

/**
 * A table-typed handler as the control server (and the status page) call it: wire arguments go
 * through the command's parser first, so a bad request never reaches the handler.
 */
export function bindHandler<C extends CommandName>(
  name: C,
  handler: TypedHandler<C>,
): [C, (args: WireArgs) => Promise<ResultOf<C>> | ResultOf<C>] {
  return [name, (args) => handler(parseArgs(name, args))];
}

/** Parses a command's wire arguments by the table (bad_arguments on anything it refuses). */
export function parseArgs<C extends CommandName>(name: C, args: WireArgs): ArgsOf<C> {
  const parse: (args: WireArgs) => ArgsOf<C> = ARG_PARSERS[name];
  return parse(args);
}
