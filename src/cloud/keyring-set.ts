import { createHash, type KeyObject } from 'node:crypto';
import { type Action, roleAllows } from '../access/policy.js';
import type { Code } from '../core/codes.js';
import { AgentError } from '../core/errors.js';
import { b64url } from '../crypto/encoding.js';
import { MAX_JWS_LENGTH, parseJws, signJws, verifyJws } from '../crypto/jws.js';
import type { SignerLookup } from './command.js';

export const KEYRING_CHUNK_TYP = 'vehicle-agent.keyring-chunk';
/**
 * Default largest part a publisher makes, bytes: under the message limits of common brokers
 * (AWS IoT Core 128 KiB is the exception: give it a smaller part size) and under the vehicle's
 * default intake limit (cloud.intake.maxKeyringSetBytes, 1 MiB).
 */
export const DEFAULT_CHUNK_BYTES = 256 * 1024;
/** Most parts one set may have (4096 parts of 256 KiB: 1 GiB, ten times a 100 000-key keyring). */
export const MAX_SET_PARTS = 4096;
/** Most operations a chunked set may announce. */
export const MAX_CHUNKED_SET_OPS = 4_000_000;
/** Room in a part for everything but its ops: the envelope and the signed manifest. */
const CHUNK_ENVELOPE_BYTES = 2048;
const SET_DIGEST = /^[0-9a-f]{64}$/;

/**
 * A signed set of keyring operations, as carried on `<base>/keyring` (from the cloud) and
 * `<base>/keyring/vehicle` (from the vehicle). Pure.
 *
 * Message: {"set": "<JWS compact>", "ops": ["<op JWS>", ...]}
 * The JWS (typ vehicle-agent.keyring-set) signs {vid, iat, count, opsDigest} where
 * opsDigest = base64url(SHA-256(ops joined with "\n")), so the signature covers the exact list
 * however long it grows (a compact JWS is capped at 64 KiB; a keyring is not). Each operation is
 * also signed on its own and verified again when merged: the set's signature says who published
 * the list, the operations' signatures say what is allowed.
 *
 * A set too large for one message (docs/mqtt.md "Chunked sets") goes as parts, each on a topic of
 * its own: {"chunk": "<JWS compact>", "ops": [...]} where the JWS (typ vehicle-agent.keyring-chunk)
 * signs {vid, iat, setDigest, setCount, part, parts, count, opsDigest}. setDigest and setCount
 * name the whole set (setDigest is the keyring digest of its ops, the formula of docs/keyring.md),
 * so each part is bound to one published snapshot; since merging is a union of ops each verified
 * on its own, a part merges as soon as it comes, whatever the order, and a receiver never holds
 * more than one part. Whether all parts of a snapshot came is checked from the parts alone
 * (SetAssembly: the sum of their ops' hashes), without keeping their ops.
 */

export const KEYRING_SET_TYP = 'vehicle-agent.keyring-set';
/** Most operations one set may carry. */
export const MAX_SET_OPS = 10_000;
/** Largest set message accepted, bytes. */
export const MAX_SET_BYTES = 16 * 1024 * 1024;

export interface KeyringSetManifest {
  readonly vid: string;
  readonly iat: number;
  readonly count: number;
  readonly opsDigest: string;
}

export interface KeyringSetMessage {
  readonly set: string;
  readonly ops: readonly string[];
}

export type KeyringSetCheck =
  | { readonly ok: true; readonly ops: readonly string[]; readonly kid: string; readonly iat: number }
  | { readonly ok: false; readonly code: Code; readonly message: string };

export function opsDigest(ops: readonly string[]): string {
  return b64url(createHash('sha256').update(ops.join('\n'), 'utf8').digest());
}

export function signKeyringSet(
  vehicleId: string,
  ops: readonly string[],
  privateKey: KeyObject,
  kid: string,
  iatSeconds: number,
): string {
  const manifest: KeyringSetManifest = {
    vid: vehicleId,
    iat: iatSeconds,
    count: ops.length,
    opsDigest: opsDigest(ops),
  };
  const message: KeyringSetMessage = {
    set: signJws(manifest, privateKey, kid, KEYRING_SET_TYP),
    ops: [...ops],
  };
  return JSON.stringify(message);
}

const malformed = (message: string) => new AgentError('jws_malformed', `keyring set: ${message}`);

/** Size, JSON, an object: the envelope of a set or a part. */
export function readEnvelope(payload: string | Uint8Array): Record<string, unknown> {
  const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
  if (size > MAX_SET_BYTES) throw malformed(`larger than ${MAX_SET_BYTES} bytes`);
  let raw: unknown;
  try {
    raw = JSON.parse(typeof payload === 'string' ? payload : Buffer.from(payload).toString('utf8'));
  } catch {
    throw malformed('not JSON');
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw malformed('not an object');
  return raw as Record<string, unknown>;
}

export function readOps(ops: unknown): string[] {
  if (!Array.isArray(ops) || ops.length > MAX_SET_OPS)
    throw malformed(`ops must be a list of at most ${MAX_SET_OPS}`);
  if (!ops.every((o) => typeof o === 'string' && o.length > 0 && o.length <= MAX_JWS_LENGTH))
    throw malformed('ops must be keyring operation JWS strings');
  return ops as string[];
}

/** Parses the message and its manifest without checking who signed it. Throws jws_malformed. */
export function parseKeyringSet(payload: string | Uint8Array): {
  readonly message: KeyringSetMessage;
  readonly manifest: KeyringSetManifest;
  readonly kid: string;
} {
  return parseSetEnvelope(readEnvelope(payload));
}

function parseSetEnvelope(raw: Record<string, unknown>): {
  readonly message: KeyringSetMessage;
  readonly manifest: KeyringSetManifest;
  readonly kid: string;
} {
  const bad = malformed;
  const { set } = raw;
  if (typeof set !== 'string') throw bad('set must be a JWS');
  const ops = readOps(raw.ops);
  const jws = parseJws(set);
  if (jws.header.typ !== KEYRING_SET_TYP) throw bad(`set typ must be ${KEYRING_SET_TYP}`);
  const m = jws.payload;
  if (
    typeof m.vid !== 'string' ||
    typeof m.iat !== 'number' ||
    !Number.isSafeInteger(m.iat) ||
    typeof m.count !== 'number' ||
    typeof m.opsDigest !== 'string'
  ) {
    throw bad('the manifest needs vid, iat, count and opsDigest');
  }
  const manifest: KeyringSetManifest = { vid: m.vid, iat: m.iat, count: m.count, opsDigest: m.opsDigest };
  if (manifest.count !== ops.length || manifest.opsDigest !== opsDigest(ops))
    throw bad('ops do not match the signed manifest');
  return { message: { set, ops }, manifest, kid: jws.header.kid };
}

const SET_ACTIONS: readonly Action[] = ['keys.grant', 'keys.revoke'];

/**
 * Checks a set from the cloud: parse, vehicle id, a signer that is known, not revoked, and whose
 * role may change the keyring (owner or service), and the signature.
 */
export function checkKeyringSet(
  payload: string | Uint8Array,
  ctx: { readonly vehicleId: string; readonly keys: SignerLookup; readonly nowMs: number },
): KeyringSetCheck {
  let parsed: ReturnType<typeof parseKeyringSet>;
  try {
    parsed = parseKeyringSet(payload);
  } catch (err) {
    const e = err instanceof AgentError ? err : new AgentError('jws_malformed', String(err));
    return { ok: false, code: e.code, message: e.message };
  }
  const { manifest, kid, message } = parsed;
  const refused = checkPublisher(message.set, manifest.vid, kid, ctx);
  if (refused) return refused;
  return { ok: true, ops: message.ops, kid, iat: manifest.iat };
}

/** Vehicle, signer (known, live, in its window, allowed to change the keyring), then signature. */
function checkPublisher(
  jws: string,
  vid: string,
  kid: string,
  ctx: { readonly vehicleId: string; readonly keys: SignerLookup; readonly nowMs: number },
): { readonly ok: false; readonly code: Code; readonly message: string } | undefined {
  if (vid !== ctx.vehicleId)
    return { ok: false, code: 'wrong_vehicle', message: `keyring set is for vehicle ${vid}` };
  const status = ctx.keys.byId(kid);
  const key = ctx.keys.keyOf(kid);
  if (!status || !key)
    return { ok: false, code: 'unknown_kid', message: `no signing key ${kid} in the keyring` };
  if (status.revoked) return { ok: false, code: 'revoked_kid', message: `key ${kid} is revoked` };
  const { credential } = status;
  if (
    (credential.notBefore !== undefined && ctx.nowMs < credential.notBefore) ||
    (credential.notAfter !== undefined && ctx.nowMs >= credential.notAfter)
  ) {
    return { ok: false, code: 'role_not_allowed', message: `key ${kid} is outside its validity window` };
  }
  if (!SET_ACTIONS.some((a) => roleAllows(credential.role, a)))
    return {
      ok: false,
      code: 'role_not_allowed',
      message: `a ${credential.role} key may not publish keyring sets`,
    };
  if (!verifyJws(parseJws(jws), key))
    return { ok: false, code: 'bad_signature', message: 'keyring set signature did not verify' };
  return undefined;
}

// ── chunked sets ─────────────────────────────────────────────────────────────

/** What one part's signature binds: the vehicle, the snapshot (setDigest, setCount, parts) and the part. */
export interface KeyringChunkManifest {
  readonly vid: string;
  readonly iat: number;
  /** The keyring digest of the whole set (docs/keyring.md), as 64 lowercase hex digits. */
  readonly setDigest: string;
  readonly setCount: number;
  /** 0-based. */
  readonly part: number;
  readonly parts: number;
  readonly count: number;
  readonly opsDigest: string;
}

export interface KeyringChunkMessage {
  readonly chunk: string;
  readonly ops: readonly string[];
}

/** One snapshot of a set as its parts name it. */
export interface SetSnapshot {
  readonly setDigest: string;
  readonly setCount: number;
  readonly parts: number;
  readonly iat: number;
}

/** A parsed set or part, not yet checked for who signed it. */
export type KeyringMessage =
  | {
      readonly kind: 'set';
      readonly manifest: KeyringSetManifest;
      readonly ops: readonly string[];
      readonly kid: string;
      readonly jws: string;
    }
  | {
      readonly kind: 'chunk';
      readonly manifest: KeyringChunkManifest;
      readonly ops: readonly string[];
      readonly kid: string;
      readonly jws: string;
    };

export type KeyringMessageCheck =
  | { readonly ok: true; readonly message: KeyringMessage }
  | { readonly ok: false; readonly code: Code; readonly message: string };

/**
 * The running sum behind the keyring digest (docs/keyring.md): Σ SHA-256(op JWS) mod 2^256 and the
 * op count. Order-free, so parts can be added in any order and a set's digest checked from its
 * parts without keeping their ops.
 */
export class SetDigestSum {
  private sum = 0n;
  private n = 0;

  add(ops: readonly string[]): this {
    for (const op of ops) {
      this.sum = (this.sum + BigInt(`0x${createHash('sha256').update(op, 'utf8').digest('hex')}`)) & MOD_MASK;
      this.n += 1;
    }
    return this;
  }

  get count(): number {
    return this.n;
  }

  digest(): string {
    const hex = this.sum.toString(16).padStart(64, '0');
    return createHash('sha256').update(`${DIGEST_V2}\n${this.n}\n${hex}`, 'utf8').digest('hex');
  }
}

const MOD_MASK = (1n << 256n) - 1n;
const DIGEST_V2 = 'vehicle-agent keyring digest v2';

/** The keyring digest of a list of op texts (what a vehicle holding exactly these ops shows). */
export function setDigestOf(ops: readonly string[]): string {
  return new SetDigestSum().add(ops).digest();
}

/** Bytes an op list takes in a message: each op JSON-quoted, with a comma. */
function opBytes(op: string): number {
  return Buffer.byteLength(op, 'utf8') + 3;
}

/** Whether `ops` go as one set message of at most `maxBytes` (else: parts). */
export function fitsOneSet(ops: readonly string[], maxBytes: number): boolean {
  if (ops.length > MAX_SET_OPS) return false;
  let bytes = CHUNK_ENVELOPE_BYTES;
  for (const op of ops) {
    bytes += opBytes(op);
    if (bytes > maxBytes) return false;
  }
  return true;
}

/**
 * Cuts `ops` into consecutive parts of at most `maxBytes` each (envelope included) and at most
 * MAX_SET_OPS ops. Returns [start, end) ranges; an empty list is one empty part.
 */
export function chunkRanges(ops: readonly string[], maxBytes = DEFAULT_CHUNK_BYTES): [number, number][] {
  if (maxBytes < CHUNK_ENVELOPE_BYTES + MAX_JWS_LENGTH + 3)
    throw new AgentError(
      'bad_arguments',
      `a keyring set part must hold at least ${CHUNK_ENVELOPE_BYTES + MAX_JWS_LENGTH + 3} bytes (one largest op)`,
    );
  const ranges: [number, number][] = [];
  let start = 0;
  let bytes = CHUNK_ENVELOPE_BYTES;
  for (let i = 0; i < ops.length; i++) {
    const b = opBytes(ops[i] as string);
    if (i > start && (bytes + b > maxBytes || i - start >= MAX_SET_OPS)) {
      ranges.push([start, i]);
      start = i;
      bytes = CHUNK_ENVELOPE_BYTES;
    }
    bytes += b;
  }
  ranges.push([start, ops.length]);
  if (ranges.length > MAX_SET_PARTS)
    throw new AgentError('bad_arguments', `a keyring set of ${ranges.length} parts is over ${MAX_SET_PARTS}`);
  return ranges;
}

/** Signs one part of a snapshot. */
export function signKeyringChunk(
  vehicleId: string,
  snapshot: SetSnapshot,
  part: number,
  ops: readonly string[],
  privateKey: KeyObject,
  kid: string,
): string {
  const manifest: KeyringChunkManifest = {
    vid: vehicleId,
    iat: snapshot.iat,
    setDigest: snapshot.setDigest,
    setCount: snapshot.setCount,
    part,
    parts: snapshot.parts,
    count: ops.length,
    opsDigest: opsDigest(ops),
  };
  const message: KeyringChunkMessage = {
    chunk: signJws(manifest, privateKey, kid, KEYRING_CHUNK_TYP),
    ops: [...ops],
  };
  return JSON.stringify(message);
}

/**
 * The messages for a whole set: one set message when it fits `maxBytes`, else its parts in order
 * (the set digest computed here; a vehicle passes its keyring's own).
 */
export function signKeyringMessages(
  vehicleId: string,
  ops: readonly string[],
  privateKey: KeyObject,
  kid: string,
  iatSeconds: number,
  maxBytes = DEFAULT_CHUNK_BYTES,
):
  | { readonly kind: 'set'; readonly message: string }
  | { readonly kind: 'chunks'; readonly parts: string[] } {
  if (fitsOneSet(ops, maxBytes))
    return { kind: 'set', message: signKeyringSet(vehicleId, ops, privateKey, kid, iatSeconds) };
  const ranges = chunkRanges(ops, maxBytes);
  const snapshot: SetSnapshot = {
    setDigest: setDigestOf(ops),
    setCount: ops.length,
    parts: ranges.length,
    iat: iatSeconds,
  };
  return {
    kind: 'chunks',
    parts: ranges.map(([a, b], part) =>
      signKeyringChunk(vehicleId, snapshot, part, ops.slice(a, b), privateKey, kid),
    ),
  };
}

const isCount = (v: unknown, max: number): v is number =>
  typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= max;

function parseChunkEnvelope(raw: Record<string, unknown>): KeyringMessage & { kind: 'chunk' } {
  const { chunk } = raw;
  if (typeof chunk !== 'string') throw malformed('chunk must be a JWS');
  const ops = readOps(raw.ops);
  const jws = parseJws(chunk);
  if (jws.header.typ !== KEYRING_CHUNK_TYP) throw malformed(`chunk typ must be ${KEYRING_CHUNK_TYP}`);
  const m = jws.payload;
  if (
    typeof m.vid !== 'string' ||
    !isCount(m.iat, Number.MAX_SAFE_INTEGER) ||
    typeof m.setDigest !== 'string' ||
    !SET_DIGEST.test(m.setDigest) ||
    !isCount(m.setCount, MAX_CHUNKED_SET_OPS) ||
    !isCount(m.parts, MAX_SET_PARTS) ||
    !isCount(m.part, MAX_SET_PARTS) ||
    !isCount(m.count, MAX_SET_OPS) ||
    typeof m.opsDigest !== 'string'
  ) {
    throw malformed(
      'the part manifest needs vid, iat, setDigest, setCount, part, parts, count and opsDigest',
    );
  }
  const manifest: KeyringChunkManifest = {
    vid: m.vid,
    iat: m.iat,
    setDigest: m.setDigest,
    setCount: m.setCount,
    part: m.part,
    parts: m.parts,
    count: m.count,
    opsDigest: m.opsDigest,
  };
  if (manifest.parts < 1 || manifest.part >= manifest.parts || manifest.count > manifest.setCount)
    throw new AgentError(
      'keyring_chunk_mismatch',
      `keyring set part ${manifest.part} of ${manifest.parts} with ${manifest.count} of ${manifest.setCount} ops`,
    );
  if (manifest.count !== ops.length || manifest.opsDigest !== opsDigest(ops))
    throw malformed('ops do not match the signed manifest');
  return { kind: 'chunk', manifest, ops, kid: jws.header.kid, jws: chunk };
}

/**
 * Parses a set or a part without checking who signed it. `part`: the index its topic names
 * (`.../part/<n>`), undefined for the set topic itself; a part must come on its own topic and a
 * set on the set topic. Throws jws_malformed or keyring_chunk_mismatch.
 */
export function parseKeyringMessage(payload: string | Uint8Array, part?: number): KeyringMessage {
  const raw = readEnvelope(payload);
  if (typeof raw.chunk === 'string' || raw.set === undefined) {
    const parsed = parseChunkEnvelope(raw);
    if (parsed.manifest.part !== part)
      throw new AgentError(
        'keyring_chunk_mismatch',
        `keyring set part ${parsed.manifest.part} came on ${part === undefined ? 'the set topic' : `the topic of part ${part}`}`,
      );
    return parsed;
  }
  if (part !== undefined)
    throw new AgentError('keyring_chunk_mismatch', `a whole keyring set came on the topic of part ${part}`);
  const { message, manifest, kid } = parseSetEnvelope(raw);
  return { kind: 'set', manifest, ops: message.ops, kid, jws: message.set };
}

/** checkKeyringSet for a set or a part: parse (see parseKeyringMessage), then the publisher. */
export function checkKeyringMessage(
  payload: string | Uint8Array,
  ctx: {
    readonly vehicleId: string;
    readonly keys: SignerLookup;
    readonly nowMs: number;
    readonly part?: number | undefined;
  },
): KeyringMessageCheck {
  let parsed: KeyringMessage;
  try {
    parsed = parseKeyringMessage(payload, ctx.part);
  } catch (err) {
    const e = err instanceof AgentError ? err : new AgentError('jws_malformed', String(err));
    return { ok: false, code: e.code, message: e.message };
  }
  const refused = checkPublisher(parsed.jws, parsed.manifest.vid, parsed.kid, ctx);
  return refused ?? { ok: true, message: parsed };
}

export interface AssemblyStatus {
  readonly setDigest: string;
  readonly iat: number;
  readonly parts: number;
  readonly received: number;
  /** Every part came and their ops add up to setDigest and setCount. */
  readonly complete: boolean;
  /** Every part came and they do not add up: the publisher signed parts of different sets. */
  readonly inconsistent: boolean;
}

export type AssemblyNote = 'part' | 'duplicate' | 'stale' | 'complete' | 'inconsistent';

/**
 * Follows the newest snapshot (greatest iat, then setDigest) whose parts a receiver has seen, in
 * bounded memory: a bit per part and the running digest sum, never the ops. A part of an older
 * snapshot (a replay, a retained leftover) is 'stale': its ops still merge (a union cannot undo
 * a revoke) but it never counts towards the newest, so being complete means every part of that
 * one snapshot came and their ops add up to the digest its publisher signed. Pure.
 */
export class SetAssembly {
  private current:
    | {
        readonly snapshot: SetSnapshot;
        readonly seen: Uint8Array;
        received: number;
        readonly sum: SetDigestSum;
        verdict?: 'complete' | 'inconsistent';
      }
    | undefined;

  /** Notes a checked part (or a whole set, a snapshot of one part) and its ops. */
  note(message: KeyringMessage): AssemblyNote {
    const snapshot: SetSnapshot =
      message.kind === 'chunk'
        ? message.manifest
        : {
            setDigest: setDigestOf(message.ops),
            setCount: message.ops.length,
            parts: 1,
            iat: message.manifest.iat,
          };
    const part = message.kind === 'chunk' ? message.manifest.part : 0;
    const cur = this.current;
    if (cur === undefined || newer(snapshot, cur.snapshot)) {
      this.current = {
        snapshot,
        seen: new Uint8Array(snapshot.parts),
        received: 0,
        sum: new SetDigestSum(),
      };
    } else if (!same(snapshot, cur.snapshot)) return 'stale';
    const c = this.current as NonNullable<typeof this.current>;
    if (c.seen[part] === 1) return 'duplicate';
    c.seen[part] = 1;
    c.received += 1;
    c.sum.add(message.ops);
    if (c.received < snapshot.parts) return 'part';
    c.verdict =
      c.sum.digest() === snapshot.setDigest && c.sum.count === snapshot.setCount
        ? 'complete'
        : 'inconsistent';
    return c.verdict;
  }

  status(): AssemblyStatus | undefined {
    const c = this.current;
    if (c === undefined) return undefined;
    return {
      setDigest: c.snapshot.setDigest,
      iat: c.snapshot.iat,
      parts: c.snapshot.parts,
      received: c.received,
      complete: c.verdict === 'complete',
      inconsistent: c.verdict === 'inconsistent',
    };
  }

  /** The parts of the newest snapshot not seen yet, at most `limit` of them. */
  missing(limit = 64): number[] {
    const c = this.current;
    if (c === undefined) return [];
    const out: number[] = [];
    for (let i = 0; i < c.seen.length && out.length < limit; i++) if (c.seen[i] !== 1) out.push(i);
    return out;
  }
}

function newer(a: SetSnapshot, b: SetSnapshot): boolean {
  return a.iat > b.iat || (a.iat === b.iat && a.setDigest > b.setDigest);
}

function same(a: SetSnapshot, b: SetSnapshot): boolean {
  return a.iat === b.iat && a.setDigest === b.setDigest && a.parts === b.parts && a.setCount === b.setCount;
}

/**
 * Orders ops so that a receiver merging part by part meets a signer's grant before what it
 * signed: owner and service grants first (oldest first), then the other grants, then revokes.
 * Stable; an op that cannot be decoded goes with the other grants (the receiver judges it).
 */
export function orderForMerge(ops: readonly string[]): string[] {
  const rank = (jws: string): [number, number] => {
    try {
      const p = JSON.parse(Buffer.from(jws.split('.')[1] ?? '', 'base64url').toString('utf8')) as {
        op?: unknown;
        iat?: unknown;
        cred?: { role?: unknown };
      };
      const iat = typeof p.iat === 'number' ? p.iat : 0;
      if (p.op === 'revoke') return [2, iat];
      if (p.cred?.role === 'owner' || p.cred?.role === 'service') return [0, iat];
      return [1, iat];
    } catch {
      return [1, 0];
    }
  };
  return ops
    .map((op, i) => ({ op, i, r: rank(op) }))
    .sort((x, y) => x.r[0] - y.r[0] || (x.r[0] === 0 ? x.r[1] - y.r[1] : 0) || x.i - y.i)
    .map((x) => x.op);
}
