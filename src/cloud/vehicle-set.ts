import { createHash, type KeyObject } from 'node:crypto';
import { AgentError } from '../core/errors.js';
import { b64url } from '../crypto/encoding.js';
import { parseJws, signJws } from '../crypto/jws.js';
import { MAX_SET_OPS, MAX_SET_PARTS, readEnvelope, readOps } from './keyring-set.js';

/**
 * The vehicle's own keyring set in stable parts (docs/mqtt.md "Chunked sets"). Pure.
 *
 * Each op goes to part `u32be(SHA-256(op JWS)[0..4]) mod P`, P a power of two: an op never moves
 * while P stays, so a change touches the parts of the ops it adds and no other. Doubling P splits
 * part i into i and i + P. The hash is the one the keyring digest sums (docs/keyring.md), so a
 * part's share of the digest is the sum of its ops' hashes, and the set's is the sum of the parts'.
 *
 * Part on `<base>/keyring/vehicle/part/<n>`: {"part": "<JWS>", "ops": [...]}, the JWS (typ
 * vehicle-agent.keyring-part) signs {vid, iat, part, parts, count, opsSum}: this part alone, so an
 * unchanged part stays valid across versions of the set.
 *
 * Manifest on `<base>/keyring/vehicle/manifest`: {"manifest": "<JWS>", "sums": [...], "counts":
 * [...]}, the JWS (typ vehicle-agent.keyring-manifest) signs {vid, iat, setDigest, setCount,
 * parts, tableDigest}, tableDigest = base64url SHA-256 of the lines `<sums[i]> <counts[i]>\n`.
 * setDigest is the keyring digest of the whole set: the sums add up to it.
 */

export const VEHICLE_PART_TYP = 'vehicle-agent.keyring-part';
export const VEHICLE_MANIFEST_TYP = 'vehicle-agent.keyring-manifest';
/** A partition is planned with parts at most this full, so they grow a long while before P doubles. */
export const PART_FILL = 0.75;
/** Room in a part for everything but its ops (envelope and signed header). */
const PART_ENVELOPE_BYTES = 2048;
const HEX64 = /^[0-9a-f]{64}$/;
const DIGEST_V2 = 'vehicle-agent keyring digest v2';
const MOD_MASK = (1n << 256n) - 1n;
const ZERO_SUM = '0'.repeat(64);

export function opHash(jws: string): Buffer {
  return createHash('sha256').update(jws, 'utf8').digest();
}

/** The part an op with this SHA-256 belongs to when the set has `parts` parts (a power of two). */
export function partOfHash(hash: Uint8Array, parts: number): number {
  const u32 =
    (((hash[0] ?? 0) << 24) | ((hash[1] ?? 0) << 16) | ((hash[2] ?? 0) << 8) | (hash[3] ?? 0)) >>> 0;
  return u32 & (parts - 1);
}

export const isPowerOfTwo = (n: number): boolean => Number.isSafeInteger(n) && n >= 1 && (n & (n - 1)) === 0;

/** Sums mod 2^256 of SHA-256 values, one per part, as eight 32-bit limbs each (least significant first). */
export class PartSums {
  private readonly limbs: Uint32Array;
  readonly counts: Uint32Array;

  constructor(readonly parts: number) {
    this.limbs = new Uint32Array(parts * 8);
    this.counts = new Uint32Array(parts);
  }

  add(part: number, hash: Uint8Array): void {
    const base = part * 8;
    let carry = 0;
    for (let i = 0; i < 8; i++) {
      const o = 28 - 4 * i;
      const word =
        (((hash[o] ?? 0) << 24) |
          ((hash[o + 1] ?? 0) << 16) |
          ((hash[o + 2] ?? 0) << 8) |
          (hash[o + 3] ?? 0)) >>>
        0;
      const t = (this.limbs[base + i] ?? 0) + word + carry;
      this.limbs[base + i] = t >>> 0;
      carry = t > 0xffffffff ? 1 : 0;
    }
    this.counts[part] = (this.counts[part] ?? 0) + 1;
  }

  /** Part `part`'s sum as 64 lowercase hex digits. */
  sum(part: number): string {
    let hex = '';
    for (let i = 7; i >= 0; i--) hex += (this.limbs[part * 8 + i] ?? 0).toString(16).padStart(8, '0');
    return hex;
  }

  sums(): string[] {
    return Array.from({ length: this.parts }, (_, p) => this.sum(p));
  }

  count(part: number): number {
    return this.counts[part] ?? 0;
  }
}

/** The sum of hex sums mod 2^256. */
export function addSums(sums: Iterable<string>): string {
  let total = 0n;
  for (const s of sums) total = (total + BigInt(`0x${s}`)) & MOD_MASK;
  return total.toString(16).padStart(64, '0');
}

/** The keyring digest (docs/keyring.md) of `count` ops whose hashes sum to `sum`. */
export function digestOfSum(sum: string, count: number): string {
  return createHash('sha256').update(`${DIGEST_V2}\n${count}\n${sum}`, 'utf8').digest('hex');
}

/** One part's sum and count from its ops. */
export function sumOfOps(ops: readonly string[]): string {
  const s = new PartSums(1);
  for (const op of ops) s.add(0, opHash(op));
  return s.sum(0);
}

/**
 * The part count for ops of these hashes and sizes: the smallest power of two, at least
 * `minParts` (P only grows), whose every part holds at most `PART_FILL` of `maxBytes` and
 * MAX_SET_OPS ops. Throws bad_arguments past MAX_SET_PARTS.
 */
export function planParts(
  ops: readonly { readonly hash: Uint8Array; readonly bytes: number }[],
  minParts: number,
  maxBytes: number,
): number {
  const budget = Math.floor(maxBytes * PART_FILL) - PART_ENVELOPE_BYTES;
  for (let parts = Math.max(1, minParts); parts <= MAX_SET_PARTS; parts *= 2) {
    const bytes = new Float64Array(parts);
    const counts = new Uint32Array(parts);
    let fits = true;
    for (const op of ops) {
      const p = partOfHash(op.hash, parts);
      bytes[p] = (bytes[p] ?? 0) + op.bytes + 3;
      counts[p] = (counts[p] ?? 0) + 1;
      if ((bytes[p] ?? 0) > budget || (counts[p] ?? 0) > MAX_SET_OPS) {
        fits = false;
        break;
      }
    }
    if (fits) return parts;
  }
  throw new AgentError('bad_arguments', `the vehicle keyring set needs more than ${MAX_SET_PARTS} parts`);
}

export interface VehiclePartHeader {
  readonly vid: string;
  readonly iat: number;
  readonly part: number;
  readonly parts: number;
  readonly count: number;
  /** The sum of the part's op hashes mod 2^256, 64 hex digits. */
  readonly opsSum: string;
}

export interface VehiclePart extends VehiclePartHeader {
  readonly ops: readonly string[];
  readonly kid: string;
  readonly jws: string;
}

export interface VehicleManifestHeader {
  readonly vid: string;
  readonly iat: number;
  readonly setDigest: string;
  readonly setCount: number;
  readonly parts: number;
  readonly tableDigest: string;
}

export interface VehicleManifest extends VehicleManifestHeader {
  readonly sums: readonly string[];
  readonly counts: readonly number[];
  readonly kid: string;
  readonly jws: string;
}

/** Signs part `part` of `parts` holding `ops` (their sum computed here). */
export function signVehiclePart(
  vid: string,
  iat: number,
  part: number,
  parts: number,
  ops: readonly string[],
  key: KeyObject,
  kid: string,
): string {
  const header: VehiclePartHeader = { vid, iat, part, parts, count: ops.length, opsSum: sumOfOps(ops) };
  return JSON.stringify({ part: signJws(header, key, kid, VEHICLE_PART_TYP), ops });
}

export function tableDigest(sums: readonly string[], counts: readonly number[]): string {
  const h = createHash('sha256');
  for (let i = 0; i < sums.length; i++) h.update(`${sums[i]} ${counts[i]}\n`, 'utf8');
  return b64url(h.digest());
}

/** Signs the manifest of a set whose parts have these sums and counts. */
export function signVehicleManifest(
  vid: string,
  iat: number,
  sums: readonly string[],
  counts: readonly number[],
  key: KeyObject,
  kid: string,
): string {
  const setCount = counts.reduce((a, b) => a + b, 0);
  const header: VehicleManifestHeader = {
    vid,
    iat,
    setDigest: digestOfSum(addSums(sums), setCount),
    setCount,
    parts: sums.length,
    tableDigest: tableDigest(sums, counts),
  };
  return JSON.stringify({ manifest: signJws(header, key, kid, VEHICLE_MANIFEST_TYP), sums, counts });
}

const malformed = (what: string) => new AgentError('jws_malformed', `vehicle keyring set: ${what}`);
const isCount = (v: unknown, max: number): v is number =>
  typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= max;

/** Whether a message on a vehicle part topic is a stable part (else: a part of the older format). */
export function isVehiclePart(payload: string | Uint8Array): boolean {
  try {
    return typeof readEnvelope(payload).part === 'string';
  } catch {
    return false;
  }
}

/**
 * Parses a part without checking who signed it: the ops must add up to the signed count and sum,
 * and the part must come on its own topic (`topicPart`). Throws jws_malformed or
 * keyring_chunk_mismatch.
 */
export function parseVehiclePart(payload: string | Uint8Array, topicPart: number | undefined): VehiclePart {
  const raw = readEnvelope(payload);
  if (typeof raw.part !== 'string') throw malformed('part must be a JWS');
  const ops = readOps(raw.ops);
  const jws = parseJws(raw.part);
  if (jws.header.typ !== VEHICLE_PART_TYP) throw malformed(`part typ must be ${VEHICLE_PART_TYP}`);
  const m = jws.payload;
  if (
    typeof m.vid !== 'string' ||
    !isCount(m.iat, Number.MAX_SAFE_INTEGER) ||
    !isCount(m.parts, MAX_SET_PARTS) ||
    !isPowerOfTwo(m.parts) ||
    !isCount(m.part, MAX_SET_PARTS) ||
    !isCount(m.count, MAX_SET_OPS) ||
    typeof m.opsSum !== 'string' ||
    !HEX64.test(m.opsSum)
  )
    throw malformed('the part needs vid, iat, part, parts (a power of two), count and opsSum');
  if (m.part >= m.parts || m.part !== topicPart)
    throw new AgentError(
      'keyring_chunk_mismatch',
      `vehicle keyring part ${m.part} of ${m.parts} came on ${topicPart === undefined ? 'another topic' : `the topic of part ${topicPart}`}`,
    );
  const sum = new PartSums(1);
  let foreign = false;
  for (const op of ops) {
    const hash = opHash(op);
    sum.add(0, hash);
    foreign ||= partOfHash(hash, m.parts) !== m.part;
  }
  if (m.count !== ops.length || m.opsSum !== sum.sum(0)) throw malformed('ops do not match the signed part');
  if (foreign)
    throw new AgentError(
      'keyring_chunk_mismatch',
      `an op in vehicle keyring part ${m.part} belongs to another part`,
    );
  return {
    vid: m.vid,
    iat: m.iat,
    part: m.part,
    parts: m.parts,
    count: m.count,
    opsSum: m.opsSum,
    ops,
    kid: jws.header.kid,
    jws: raw.part,
  };
}

/**
 * Parses a manifest without checking who signed it: the table must be the signed one, and its
 * sums and counts must add up to the signed set digest and count. Throws jws_malformed or
 * keyring_set_inconsistent.
 */
export function parseVehicleManifest(payload: string | Uint8Array): VehicleManifest {
  const raw = readEnvelope(payload);
  if (typeof raw.manifest !== 'string') throw malformed('manifest must be a JWS');
  const jws = parseJws(raw.manifest);
  if (jws.header.typ !== VEHICLE_MANIFEST_TYP)
    throw malformed(`manifest typ must be ${VEHICLE_MANIFEST_TYP}`);
  const m = jws.payload;
  if (
    typeof m.vid !== 'string' ||
    !isCount(m.iat, Number.MAX_SAFE_INTEGER) ||
    typeof m.setDigest !== 'string' ||
    !HEX64.test(m.setDigest) ||
    !isCount(m.setCount, MAX_SET_PARTS * MAX_SET_OPS) ||
    !isCount(m.parts, MAX_SET_PARTS) ||
    !isPowerOfTwo(m.parts) ||
    typeof m.tableDigest !== 'string'
  )
    throw malformed(
      'the manifest needs vid, iat, setDigest, setCount, parts (a power of two) and tableDigest',
    );
  const { sums, counts } = raw;
  if (
    !Array.isArray(sums) ||
    !Array.isArray(counts) ||
    sums.length !== m.parts ||
    counts.length !== m.parts ||
    !sums.every((s) => typeof s === 'string' && HEX64.test(s)) ||
    !counts.every((c) => isCount(c, MAX_SET_OPS))
  )
    throw malformed(`the manifest needs ${m.parts} sums and counts`);
  const table = { sums: sums as string[], counts: counts as number[] };
  if (tableDigest(table.sums, table.counts) !== m.tableDigest)
    throw malformed('sums and counts do not match the signed manifest');
  const setCount = table.counts.reduce((a, b) => a + b, 0);
  if (setCount !== m.setCount || digestOfSum(addSums(table.sums), setCount) !== m.setDigest)
    throw new AgentError(
      'keyring_set_inconsistent',
      'the parts the vehicle keyring manifest names do not add up to its set digest and count',
    );
  return {
    vid: m.vid,
    iat: m.iat,
    setDigest: m.setDigest,
    setCount: m.setCount,
    parts: m.parts,
    tableDigest: m.tableDigest,
    ...table,
    kid: jws.header.kid,
    jws: raw.manifest,
  };
}

export interface VehicleSetStatus {
  readonly setDigest: string;
  readonly setCount: number;
  readonly iat: number;
  readonly parts: number;
  /** Every part the manifest names came with the count and sum it names. */
  readonly complete: boolean;
  /** Parts not come yet, or come only as other versions (stale): the ones to ask for. */
  readonly lacking: readonly number[];
}

/**
 * Reads the vehicle's set from its manifest and parts, in any order, holding no ops: per part
 * index the (parts, count, sum) of each version seen. It trusts the newest manifest (greatest iat,
 * then setDigest) from the vehicle, and has the set when every part of that manifest came as the
 * version it names. With `verify` (the vehicle key), a manifest or part whose signature does not
 * verify is refused (bad_signature); without it, a forged manifest can at most make the reader
 * take a smaller set: each op is signed on its own and checked where it is merged.
 */
export class VehicleSetReader {
  private manifest: VehicleManifest | undefined;
  private readonly seen = new Map<number, Set<string>>();

  constructor(
    private readonly options: {
      readonly vid: string;
      readonly verify?: ((jws: string, kid: string) => boolean) | undefined;
    },
  ) {}

  private check(vid: string, jws: string, kid: string): void {
    if (vid !== this.options.vid)
      throw new AgentError(
        'wrong_vehicle',
        `a vehicle keyring set of vehicle ${vid}, not ${this.options.vid}`,
      );
    if (this.options.verify !== undefined && !this.options.verify(jws, kid))
      throw new AgentError('bad_signature', 'the vehicle keyring set signature did not verify');
  }

  /** 'older': a manifest older than the one held (a replay, a retained leftover), ignored. */
  noteManifest(payload: string | Uint8Array): 'newer' | 'same' | 'older' {
    const m = parseVehicleManifest(payload);
    this.check(m.vid, m.jws, m.kid);
    const cur = this.manifest;
    if (cur !== undefined && cur.iat === m.iat && cur.setDigest === m.setDigest) return 'same';
    if (cur !== undefined && (m.iat < cur.iat || (m.iat === cur.iat && m.setDigest < cur.setDigest)))
      return 'older';
    this.manifest = m;
    return 'newer';
  }

  /** Parses, checks and notes a part; returns it (its ops are the caller's to keep or merge). */
  notePart(payload: string | Uint8Array, topicPart: number | undefined): VehiclePart {
    const p = parseVehiclePart(payload, topicPart);
    this.check(p.vid, p.jws, p.kid);
    let versions = this.seen.get(p.part);
    if (versions === undefined) {
      versions = new Set();
      this.seen.set(p.part, versions);
    }
    versions.add(versionKey(p.parts, p.count, p.opsSum));
    return p;
  }

  status(): VehicleSetStatus | undefined {
    const m = this.manifest;
    if (m === undefined) return undefined;
    const lacking: number[] = [];
    for (let i = 0; i < m.parts; i++) {
      // An empty part has nothing to wait for (it is published all the same, clearing leftovers).
      if (m.counts[i] === 0) continue;
      const want = versionKey(m.parts, m.counts[i] ?? 0, m.sums[i] ?? ZERO_SUM);
      if (this.seen.get(i)?.has(want) !== true) lacking.push(i);
    }
    return {
      setDigest: m.setDigest,
      setCount: m.setCount,
      iat: m.iat,
      parts: m.parts,
      complete: lacking.length === 0,
      lacking,
    };
  }
}

function versionKey(parts: number, count: number, sum: string): string {
  return `${parts} ${count} ${sum}`;
}
