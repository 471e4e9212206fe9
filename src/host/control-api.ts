// Type-only imports: the shapes some results take, described by the parts that produce them.
import type { CredentialStatus } from '../access/credential-lookup.js';
import { expectedCredentialId, parseCredentialWire, parseJwk } from '../access/credential-wire.js';
import type { MergeResult } from '../access/keyring.js';
import { parsePageArgs } from '../access/page-args.js';
import type { EnrollmentView } from '../ble/enrollment.js';
import { AgentError, toAgentError } from '../core/errors.js';
import { type Credential, INTENTS, type Intent, type PublicJwk, ROLES } from '../core/types.js';
import { fromB64url } from '../crypto/encoding.js';
import { CARD_KINDS } from '../nfc/enroll-auth.js';
import type { CardEnrollmentInput, CardEnrollmentView } from '../nfc/enrollment.js';
import type { ApprovalArmView } from '../nfc/owner-approval.js';
import type { IntegrityStatus } from './state-integrity.js';

/**
 * The control socket's commands in one table: for each, its argument type, its result type and a
 * strict runtime parser. The control server runs the parser before any handler (a bad request gets
 * `bad_arguments` and never reaches the agent), the CLI's typed call and the status page's sim
 * actions name commands through it. No I/O here: host, cli and status all import it.
 */

/** Arguments as they arrive on the wire (a JSON object). */
export type WireArgs = Readonly<Record<string, unknown>>;

// ── values the simulator commands take (src/sim implements them and imports these lists) ──

/** Faults a simulated phone can commit (what each does: src/sim/ble/phone.ts). */
export const PHONE_FAULTS = [
  'wrong_key',
  'bad_signature',
  'replay',
  'wrong_vehicle',
  'wrong_intent',
  'garbage',
  'garbage_chunks',
  'oversized',
  'drop_notification',
  'silent',
  'ignore_pinning',
] as const;
export type PhoneFault = (typeof PHONE_FAULTS)[number];

/** Faults `phone approach --fault` takes: the phone's own, and `vanish` (leaves right after the hello). */
export const APPROACH_FAULTS = [...PHONE_FAULTS, 'vanish'] as const;
export type ApproachFault = (typeof APPROACH_FAULTS)[number];

/** What the fake devices of a radio flood do (src/sim/ble-flood.ts). */
export const FLOOD_MODES = ['garbage', 'silent', 'hang'] as const;
export type FloodMode = (typeof FLOOD_MODES)[number];

/** Faults the PN532 emulator can inject (src/sim/nfc-sim.ts). */
export const EMULATOR_FAULTS = [
  'garbage',
  'lose-ack',
  'nack',
  'error-frame',
  'corrupt-response',
  'remove-during-exchange',
] as const;
export type EmulatorFaultName = (typeof EMULATOR_FAULTS)[number];

/** Cards the simulated wallet can make (src/sim/card-store.ts), and the models of a UID-only tag. */
export const SIM_CARD_KINDS = ['fido', 'ntag424', 'uid'] as const;
export type SimCardKind = (typeof SIM_CARD_KINDS)[number];
export const UID_TAG_MODELS = ['ntag213', 'mifare-classic-1k'] as const;
export type UidTagModel = (typeof UID_TAG_MODELS)[number];

/** The longest phone enrollment window anyone may ask for. */
export const MAX_ENROLL_WINDOW_MS = 600_000;
/** How long a simulated approach waits for the reader's outcome unless told. */
const APPROACH_TIMEOUT_MS = 10_000;

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

/** `sim.clock.advance`: how far to move the trusted clock forward (a scenario's clock jump). */
export interface SimClockAdvanceArgs {
  readonly ms: number;
}

/** The trusted time before and after a `sim.clock.advance`. */
export interface SimClockReply {
  readonly before: string;
  readonly now: string;
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
  /** Set when the tap was an approval attempt (the reader was armed by enroll.approval.arm). */
  readonly approval?: 'owner-fido';
  readonly approvedBy?: string;
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
export type ApprovalArmReply = ApprovalArmView | { readonly state: 'none' };

export interface KeysAddArgs {
  readonly ops: readonly string[];
}

export interface AuditTailArgs {
  readonly n: number;
}

/**
 * `keys.list`: one page of the credentials in id order (`limit`, default KEYS_PAGE_DEFAULT, at
 * most KEYS_PAGE_MAX; `after`, the `next` of the page before), or with `ids` only those (the
 * ones the keyring has, in the order asked). Never the whole keyring in one reply: at 100 000 keys
 * that held the agent's event loop for up to 1.6 s, a key at the reader waiting all that time.
 */
export interface KeysListArgs {
  readonly ids?: readonly string[];
  readonly limit?: number;
  readonly after?: string;
}

/** A `keys.list` answer: `next` (the id to pass as `after`) when more are left; `total` in all. */
export interface KeysListResult {
  readonly credentials: readonly CredentialStatus[];
  readonly next?: string;
  readonly total: number;
}

/** Ids one `keys.list` may name. */
export const MAX_LISTED_IDS = 1000;
/** Credentials in a `keys.list` page unless `limit` says otherwise, and the most it may say. */
export const KEYS_PAGE_DEFAULT = 500;
export const KEYS_PAGE_MAX = 2000;

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

/** Characteristics a simulated central reads (src/sim/bluez/peripheral-side.ts). */
export const CENTRAL_READABLE = ['challenge', 'result'] as const;
export type CentralReadable = (typeof CENTRAL_READABLE)[number];
/** The longest value a simulated central writes (ATT's attribute limit). */
const MAX_CENTRAL_WRITE_BYTES = 512;

/** A simulated central, by its BlueZ device path (`sim.central.connect` gives it). */
export interface SimCentralArgs {
  readonly device: string;
}

export interface SimCentralReadArgs {
  readonly device: string;
  readonly characteristic: CentralReadable;
}

/** `sim.central.write` as a client sends it. */
export interface SimCentralWriteRequest {
  readonly device: string;
  readonly characteristic: 'answer';
  /** The bytes, in hex. */
  readonly hex: string;
}

export interface SimCentralWriteArgs {
  readonly device: string;
  readonly characteristic: 'answer';
  readonly bytes: Uint8Array;
}

export interface CardAuthoriseArgs {
  /** The owner's compact JWS over the card enrollment's challenge. */
  readonly jws: string;
}

/** `enroll.open` as a client sends it: the phone credential to enroll, and the window. */
export interface EnrollOpenRequest {
  readonly kind: 'phone';
  readonly publicKey: PublicJwk;
  readonly role: string;
  readonly name?: string;
  readonly notBefore?: string;
  readonly notAfter?: string;
  readonly passive?: boolean;
  readonly windowMs?: number;
}

export interface EnrollOpenArgs {
  readonly credential: Credential;
  /** Absent: the configured window (ble.enrollWindowMs). */
  readonly windowMs?: number;
}

/** `sim.phone.approach` as a client sends it (the fault is the user's text: the agent judges it). */
export interface SimApproachRequest {
  /** base64url 32-byte P-256 scalar. */
  readonly secretKey: string;
  readonly pin: { readonly vehicleId: string; readonly publicKey: PublicJwk };
  readonly intent?: Intent;
  readonly explicitIntent?: boolean;
  readonly fault?: string;
  readonly answerDelayMs?: number;
  readonly approveEnrollment?: boolean;
  readonly enrollmentFor?: string;
  readonly rssi?: number;
  readonly timeoutMs?: number;
}

export interface SimApproachArgs {
  /** The phone's 32-byte P-256 secret (the simulated phone's key store). */
  readonly secretKey: Uint8Array;
  /** The vehicle the phone pinned at enrollment. */
  readonly pin: { readonly vehicleId: string; readonly publicKey: PublicJwk };
  readonly intent: Intent;
  readonly explicitIntent: boolean;
  readonly fault: ApproachFault | undefined;
  readonly answerDelayMs: number;
  /** E1: approve the pending enrollment request instead of unlocking. */
  readonly approveEnrollment: boolean;
  readonly enrollmentFor: string | undefined;
  readonly rssi: number;
  readonly timeoutMs: number;
}

export interface SimBleFloodRequest {
  readonly action: 'start' | 'stop';
  readonly mode?: string;
  readonly devices?: number;
}

export type SimBleFloodArgs =
  | { readonly action: 'stop' }
  | { readonly action: 'start'; readonly mode: FloodMode; readonly devices: number };

/** `sim.card.add` as the CLI sends it: the words typed, which the agent judges. */
export interface SimCardAddRequest {
  readonly kind: string;
  readonly label: string;
  readonly model?: string;
}

export interface SimCardAddArgs {
  readonly kind: SimCardKind;
  readonly label: string;
  readonly model?: UidTagModel;
}

export interface SimTapArgs {
  readonly card: string;
  /** Take the card away this long after it was placed. */
  readonly removeAfterMs?: number;
  /** Every APDU takes this much longer. */
  readonly slowMs?: number;
  /** Present this card with the UID of another card (a UID clone). */
  readonly cloneOf?: string;
  /** A FIDO key only: tap an extracted copy of it whose counter is this value (a cloned key). */
  readonly counter?: number;
  /** An emulator fault for this tap. */
  readonly fault?: EmulatorFaultName;
  /** How long to wait for the reader's outcome (default 10 s). */
  readonly timeoutMs?: number;
}

/** `sim.card.tap` as a client sends it (the fault is the user's text: the agent judges it). */
export type SimTapRequest = Omit<SimTapArgs, 'fault'> & { readonly fault?: string };

/** `sim.nfc.fault` as the CLI sends it: the fault named on the command line. */
export interface SimNfcFaultRequest {
  readonly kind: string;
  readonly recoverOn?: 'wakeup' | 'manual';
}

export type SimNfcFaultArgs =
  | { readonly kind: 'wedge'; readonly recoverOn: 'wakeup' | 'manual' }
  | { readonly kind: 'unwedge' }
  | { readonly kind: EmulatorFaultName };

/** A command without arguments: whatever it is sent is ignored (as it always was). */
export type NoArgs = Readonly<Record<string, never>>;

// ── parsers ──

const noArgs = (_args: WireArgs): NoArgs => ({});

/** A JSON object (not null, not an array): how clients read the results typed `unknown` here. */
export function isRecord(value: unknown): value is Readonly<Record<string, unknown>> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Whether `value` is one of `values` (a type guard over an `as const` list). */
function isOneOf<T extends string>(values: readonly T[], value: unknown): value is T {
  return values.some((v) => v === value);
}

/** `a, b or c`, for messages. */
function spelled(values: readonly string[]): string {
  return values.length < 2 ? values.join('') : `${values.slice(0, -1).join(', ')} or ${values.at(-1)}`;
}

function optionalString(value: unknown, name: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw new AgentError('bad_arguments', `${name} must be a string`);
  return value;
}

/** An optional integer in min..max (undefined when absent). */
function optionalInteger(value: unknown, name: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max)
    throw new AgentError('bad_arguments', `${name} must be an integer ${min}..${max}`);
  return value;
}

export function parseIntent(value: unknown): Intent {
  if (value === undefined) return 'unlock';
  if (value === 'unlock' || value === 'lock' || value === 'toggle') return value;
  throw new AgentError('bad_arguments', 'intent must be unlock, lock or toggle');
}

/** The longest clock jump one `sim.clock.advance` makes (a year). */
export const MAX_CLOCK_ADVANCE_MS = 366 * 86_400_000;

function parseSimClockAdvance(args: WireArgs): SimClockAdvanceArgs {
  const ms = optionalInteger(args.ms, 'ms', 1, MAX_CLOCK_ADVANCE_MS);
  if (ms === undefined)
    throw new AgentError('bad_arguments', `ms must be an integer 1..${MAX_CLOCK_ADVANCE_MS}`);
  return { ms };
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

function parseKeysList(args: WireArgs): KeysListArgs {
  const { ids, limit, after } = args;
  if (ids !== undefined && (limit !== undefined || after !== undefined))
    throw new AgentError('bad_arguments', 'keys.list takes ids or limit/after, not both');
  if (ids !== undefined) {
    if (
      !Array.isArray(ids) ||
      ids.length === 0 ||
      ids.length > MAX_LISTED_IDS ||
      !ids.every((id) => typeof id === 'string' && id.length <= 200)
    )
      throw new AgentError('bad_arguments', `ids must be a list of 1 to ${MAX_LISTED_IDS} credential ids`);
    return { ids: ids as string[] };
  }
  return parsePageArgs(limit, after, KEYS_PAGE_MAX, KEYS_PAGE_DEFAULT);
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

const CENTRAL_DEVICE = /^\/org\/bluez\/hci[0-9]{1,3}\/dev_[0-9A-F]{2}(?:_[0-9A-F]{2}){5}$/;

function parseSimCentral(args: WireArgs): SimCentralArgs {
  const { device } = args;
  if (typeof device !== 'string' || !CENTRAL_DEVICE.test(device))
    throw new AgentError('bad_arguments', 'device must be a central from sim.central.connect');
  return { device };
}

function parseSimCentralRead(args: WireArgs): SimCentralReadArgs {
  const { device } = parseSimCentral(args);
  const { characteristic } = args;
  if (!isOneOf(CENTRAL_READABLE, characteristic))
    throw new AgentError('bad_arguments', `characteristic must be ${spelled(CENTRAL_READABLE)}`);
  return { device, characteristic };
}

function parseSimCentralWrite(args: WireArgs): SimCentralWriteArgs {
  const { device } = parseSimCentral(args);
  const { characteristic, hex } = args;
  if (characteristic !== 'answer') throw new AgentError('bad_arguments', 'characteristic must be answer');
  if (
    typeof hex !== 'string' ||
    !/^(?:[0-9a-fA-F]{2})*$/.test(hex) ||
    hex.length > 2 * MAX_CENTRAL_WRITE_BYTES
  )
    throw new AgentError('bad_arguments', `hex must be up to ${MAX_CENTRAL_WRITE_BYTES} bytes in hex`);
  return { device, characteristic, bytes: Uint8Array.from(Buffer.from(hex, 'hex')) };
}

function parseCardAuthorise(args: WireArgs): CardAuthoriseArgs {
  if (typeof args.jws !== 'string') throw new AgentError('bad_arguments', 'jws must be a compact JWS');
  return { jws: args.jws };
}

function parseEnrollOpen(args: WireArgs): EnrollOpenArgs {
  const { kind, publicKey, role, name, notBefore, notAfter, passive, windowMs } = args;
  if (kind !== 'phone') throw new AgentError('bad_arguments', 'kind must be phone');
  if (!isOneOf(ROLES, role)) throw new AgentError('bad_arguments', `role must be one of ${ROLES.join(', ')}`);
  if (passive !== undefined && typeof passive !== 'boolean')
    throw new AgentError('bad_arguments', 'passive must be a boolean');
  let credential: Credential;
  try {
    const id = expectedCredentialId(
      'phone',
      publicKey === undefined ? {} : { publicKey: parseJwk(publicKey) },
    );
    credential = parseCredentialWire({
      id,
      kind,
      role,
      publicKey,
      ...(name === undefined ? {} : { name }),
      ...(notBefore === undefined ? {} : { notBefore }),
      ...(notAfter === undefined ? {} : { notAfter }),
      options: passive === true ? { passive: true } : {},
    });
  } catch (err) {
    throw new AgentError('bad_arguments', toAgentError(err).message);
  }
  if (
    windowMs !== undefined &&
    (typeof windowMs !== 'number' ||
      !Number.isInteger(windowMs) ||
      windowMs < 1 ||
      windowMs > MAX_ENROLL_WINDOW_MS)
  ) {
    throw new AgentError('bad_arguments', `windowMs must be an integer 1..${MAX_ENROLL_WINDOW_MS}`);
  }
  return { credential, ...(windowMs === undefined ? {} : { windowMs }) };
}

function parseSimApproach(args: WireArgs): SimApproachArgs {
  const { secretKey, pin, intent, explicitIntent, fault, enrollmentFor } = args;
  let secret: Uint8Array;
  try {
    secret = fromB64url(typeof secretKey === 'string' ? secretKey : '');
  } catch {
    secret = new Uint8Array();
  }
  if (secret.length !== 32)
    throw new AgentError('bad_arguments', 'secretKey must be a base64url 32-byte P-256 scalar');
  const pinned = isRecord(pin) ? pin : {};
  let pinnedKey: PublicJwk | undefined;
  try {
    pinnedKey = pinned.publicKey === undefined ? undefined : parseJwk(pinned.publicKey);
  } catch {
    pinnedKey = undefined;
  }
  if (typeof pinned.vehicleId !== 'string' || pinnedKey === undefined)
    throw new AgentError('bad_arguments', 'pin must be {vehicleId, publicKey}');
  const chosen = intent ?? 'unlock';
  if (!isOneOf(INTENTS, chosen))
    throw new AgentError('bad_arguments', `intent must be one of ${INTENTS.join(', ')}`);
  if (fault !== undefined && fault !== null && !isOneOf(APPROACH_FAULTS, fault))
    throw new AgentError('bad_arguments', `fault must be one of ${APPROACH_FAULTS.join(', ')}`);
  const answerDelayMs = optionalInteger(args.answerDelayMs, 'answerDelayMs', 0, 60_000) ?? 0;
  const rssi = optionalInteger(args.rssi, 'rssi', -127, 20) ?? -50;
  const timeoutMs = optionalInteger(args.timeoutMs, 'timeoutMs', 100, 120_000) ?? APPROACH_TIMEOUT_MS;
  if (enrollmentFor !== undefined && typeof enrollmentFor !== 'string')
    throw new AgentError('bad_arguments', 'enrollmentFor must be a credential id');
  return {
    secretKey: secret,
    pin: { vehicleId: pinned.vehicleId, publicKey: pinnedKey },
    intent: chosen,
    explicitIntent: explicitIntent !== false,
    fault: fault === null ? undefined : fault,
    answerDelayMs,
    approveEnrollment: args.approveEnrollment === true,
    enrollmentFor,
    rssi,
    timeoutMs,
  };
}

function parseSimBleFlood(args: WireArgs): SimBleFloodArgs {
  const { action, mode = 'garbage', devices = 16 } = args;
  if (action === 'stop') return { action };
  if (action !== 'start') throw new AgentError('bad_arguments', 'action must be start or stop');
  if (!isOneOf(FLOOD_MODES, mode))
    throw new AgentError('bad_arguments', `mode must be one of ${FLOOD_MODES.join(', ')}`);
  if (typeof devices !== 'number') throw new AgentError('bad_arguments', 'devices must be a number');
  return { action, mode, devices };
}

function parseCardRequest(args: WireArgs): CardEnrollmentInput {
  const { kind, role, method } = args;
  if (!isOneOf(CARD_KINDS, kind))
    throw new AgentError('bad_arguments', `kind must be one of ${CARD_KINDS.join(', ')}`);
  if (!isOneOf(ROLES, role)) throw new AgentError('bad_arguments', `role must be one of ${ROLES.join(', ')}`);
  if (method !== 'owner-key' && method !== 'owner-fido')
    throw new AgentError('bad_arguments', 'method must be owner-key or owner-fido');
  const name = optionalString(args.name, 'name');
  const notBefore = optionalString(args.notBefore, 'notBefore');
  const notAfter = optionalString(args.notAfter, 'notAfter');
  return {
    kind,
    role,
    method,
    ...(name === undefined ? {} : { name }),
    ...(notBefore === undefined ? {} : { notBefore }),
    ...(notAfter === undefined ? {} : { notAfter }),
  };
}

function parseSimCardAdd(args: WireArgs): SimCardAddArgs {
  const { kind, label, model } = args;
  if (!isOneOf(SIM_CARD_KINDS, kind))
    throw new AgentError('bad_arguments', `kind must be ${spelled(SIM_CARD_KINDS)}`);
  if (typeof label !== 'string') throw new AgentError('bad_arguments', 'label must be a string');
  if (model !== undefined && !isOneOf(UID_TAG_MODELS, model))
    throw new AgentError('bad_arguments', `model must be ${spelled(UID_TAG_MODELS)}`);
  return { kind, label, ...(model === undefined ? {} : { model }) };
}

function parseSimTap(args: WireArgs): SimTapArgs {
  const { card, cloneOf, fault } = args;
  if (typeof card !== 'string') throw new AgentError('bad_arguments', 'card must be a card label');
  const removeAfterMs = optionalInteger(args.removeAfterMs, 'removeAfterMs', 0, 60_000);
  const slowMs = optionalInteger(args.slowMs, 'slowMs', 0, 60_000);
  const counter = optionalInteger(args.counter, 'counter', 0, 0xffffffff);
  const timeoutMs = optionalInteger(args.timeoutMs, 'timeoutMs', 0, 120_000);
  if (cloneOf !== undefined && typeof cloneOf !== 'string')
    throw new AgentError('bad_arguments', 'cloneOf must be a card label');
  if (fault !== undefined && !isOneOf(EMULATOR_FAULTS, fault))
    throw new AgentError('bad_arguments', `fault must be one of ${EMULATOR_FAULTS.join(', ')}`);
  return {
    card,
    ...(removeAfterMs === undefined ? {} : { removeAfterMs }),
    ...(slowMs === undefined ? {} : { slowMs }),
    ...(counter === undefined ? {} : { counter }),
    ...(timeoutMs === undefined ? {} : { timeoutMs }),
    ...(cloneOf === undefined ? {} : { cloneOf }),
    ...(fault === undefined ? {} : { fault }),
  };
}

function parseSimNfcFault(args: WireArgs): SimNfcFaultArgs {
  const { kind } = args;
  // Anything but `manual` recovers on the next wake-up, as it always did.
  if (kind === 'wedge') return { kind, recoverOn: args.recoverOn === 'manual' ? 'manual' : 'wakeup' };
  if (kind === 'unwedge') return { kind };
  if (!isOneOf(EMULATOR_FAULTS, kind))
    throw new AgentError(
      'bad_arguments',
      `kind must be wedge, unwedge or one of ${EMULATOR_FAULTS.join(', ')}`,
    );
  return { kind };
}

// ── the table ──

/**
 * Every control command: its arguments (as its parser returns them), what a client sends when that
 * differs (`request`: the user's words the agent judges, or a shape the parser turns into the
 * arguments; otherwise the arguments themselves) and its result. Results typed
 * `unknown` belong to parts that describe their own status shapes (the readers, the cloud link,
 * the stores); clients print them as they come.
 */
export interface ControlApi {
  status: { args: NoArgs; result: Readonly<Record<string, unknown>> };
  vehicle: { args: NoArgs; result: VehicleInfo };
  'keys.list': { args: KeysListArgs; result: KeysListResult };
  'keys.add': { args: KeysAddArgs; result: MergeResult };
  'audit.tail': { args: AuditTailArgs; result: readonly unknown[] };
  limits: { args: NoArgs; result: LimitsReply };
  'sim.limits.clear': { args: NoArgs; result: LimitsCleared };
  'sim.clock.advance': { args: SimClockAdvanceArgs; result: SimClockReply };
  'state.status': { args: NoArgs; result: unknown };
  'state.findings': { args: NoArgs; result: IntegrityStatus };
  'control.status': { args: NoArgs; result: unknown };
  'cloud.status': { args: NoArgs; result: unknown };
  'status-page.status': { args: NoArgs; result: unknown };
  'sim.challenge': { args: NoArgs; result: SimChallenge };
  'sim.answer': { args: SimAnswer; result: DecisionReply };
  'sim.uid': { args: SimUidArgs; result: DecisionReply };
  'ble.status': { args: NoArgs; result: unknown };
  'enroll.open': { args: EnrollOpenArgs; request: EnrollOpenRequest; result: PhoneEnrollmentReply };
  'enroll.status': { args: NoArgs; result: PhoneEnrollmentReply };
  'enroll.cancel': { args: NoArgs; result: PhoneEnrollmentReply };
  'sim.phone.approach': { args: SimApproachArgs; request: SimApproachRequest; result: ApproachReply };
  'sim.ble.adapter': { args: SimBleAdapterArgs; result: unknown };
  'sim.ble.flood': { args: SimBleFloodArgs; request: SimBleFloodRequest; result: unknown };
  'sim.ble.bluez': { args: SimBleBluezArgs; result: unknown };
  'sim.central.connect': { args: NoArgs; result: { readonly device: string } };
  'sim.central.read': { args: SimCentralReadArgs; result: { readonly hex: string } };
  'sim.central.write': {
    args: SimCentralWriteArgs;
    request: SimCentralWriteRequest;
    result: Readonly<Record<string, never>>;
  };
  'sim.central.disconnect': { args: SimCentralArgs; result: Readonly<Record<string, never>> };
  'nfc.status': { args: NoArgs; result: unknown };
  'enroll.card.request': { args: CardEnrollmentInput; result: CardEnrollmentReply };
  'enroll.card.authorise': { args: CardAuthoriseArgs; result: CardEnrollmentReply };
  'enroll.card.status': { args: NoArgs; result: CardEnrollmentReply };
  'enroll.card.cancel': { args: NoArgs; result: CardEnrollmentReply };
  'enroll.approval.arm': { args: NoArgs; result: ApprovalArmView };
  'enroll.approval.status': { args: NoArgs; result: ApprovalArmReply };
  'enroll.approval.cancel': { args: NoArgs; result: ApprovalArmReply };
  'sim.card.list': { args: NoArgs; result: readonly SimCardSummary[] };
  'sim.card.add': { args: SimCardAddArgs; request: SimCardAddRequest; result: unknown };
  'sim.card.tap': { args: SimTapArgs; request: SimTapRequest; result: TapReply };
  'sim.nfc.fault': { args: SimNfcFaultArgs; request: SimNfcFaultRequest; result: unknown };
  'test.audit': { args: TestAuditArgs; result: { readonly count: number; readonly lastSeq: number } };
  'test.crash': { args: NoArgs; result: { readonly crashing: boolean } };
  'test.stall': { args: TestStallArgs; result: { readonly stalledMs: number } };
}

export type CommandName = keyof ControlApi;
export type ArgsOf<C extends CommandName> = ControlApi[C]['args'];
export type ResultOf<C extends CommandName> = ControlApi[C]['result'];
/** What a client sends for each command: its `request` where the table names one, else its arguments. */
export type ControlRequests = {
  [C in CommandName]: ControlApi[C] extends { request: infer R } ? R : ArgsOf<C>;
};
export type RequestOf<C extends CommandName> = ControlRequests[C];

/** A handler for one command, typed by the table. */
export type TypedHandler<C extends CommandName> = (args: ArgsOf<C>) => Promise<ResultOf<C>> | ResultOf<C>;
/** Handlers for some of the commands (the agent registers only the parts it runs). */
export type TypedHandlers = { readonly [C in CommandName]?: TypedHandler<C> };

/** The runtime half of the table: each command's argument parser. */
export const ARG_PARSERS: { readonly [C in CommandName]: (args: WireArgs) => ArgsOf<C> } = {
  status: noArgs,
  vehicle: noArgs,
  'keys.list': parseKeysList,
  'keys.add': parseKeysAdd,
  'audit.tail': parseAuditTail,
  limits: noArgs,
  'sim.limits.clear': noArgs,
  'sim.clock.advance': parseSimClockAdvance,
  'state.status': noArgs,
  'state.findings': noArgs,
  'control.status': noArgs,
  'cloud.status': noArgs,
  'status-page.status': noArgs,
  'sim.challenge': noArgs,
  'sim.answer': parseSimAnswer,
  'sim.uid': parseSimUid,
  'ble.status': noArgs,
  'enroll.open': parseEnrollOpen,
  'enroll.status': noArgs,
  'enroll.cancel': noArgs,
  'sim.phone.approach': parseSimApproach,
  'sim.ble.adapter': parseSimBleAdapter,
  'sim.ble.flood': parseSimBleFlood,
  'sim.ble.bluez': parseSimBleBluez,
  'sim.central.connect': noArgs,
  'sim.central.read': parseSimCentralRead,
  'sim.central.write': parseSimCentralWrite,
  'sim.central.disconnect': parseSimCentral,
  'nfc.status': noArgs,
  'enroll.card.request': parseCardRequest,
  'enroll.card.authorise': parseCardAuthorise,
  'enroll.card.status': noArgs,
  'enroll.card.cancel': noArgs,
  'enroll.approval.arm': noArgs,
  'enroll.approval.status': noArgs,
  'enroll.approval.cancel': noArgs,
  'sim.card.list': noArgs,
  'sim.card.add': parseSimCardAdd,
  'sim.card.tap': parseSimTap,
  'sim.nfc.fault': parseSimNfcFault,
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
