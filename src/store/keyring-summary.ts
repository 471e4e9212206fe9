import type { CredentialWire } from '../access/credential-wire.js';
import type { SnapshotCredentials } from '../access/snapshot-credentials.js';
import { checksummedBody, crcHex } from './checksummed.js';

/**
 * keyring.json, format 4 (docs/keyring.md "On disk"): the effective credentials as the keyring
 * computed them after verifying its ops, laid out so that start-up indexes them without decoding
 * them. A header line, checksummed as every small state file is, then one line per credential:
 *
 *     <crc32> {"format":4,"digest":…,"opCount":…,"count":…,"bytes":…,"crc":…,"order":…,"owners":[…],"sum":…,"folded":…}\n
 *     <r|-><i|-> <credential id> <uid hash|-> <credential wire JSON>\n   (count lines)
 *
 * `bytes` and `crc` cover the credential lines, so a flipped byte anywhere fails the whole file
 * (then rebuilt from the ops). `r`: revoked (or denied: an owner chain broken); `i`: the
 * insecureUid option, so the start-up warning finds those without decoding the others. The lines
 * keep the keyring's own order (listings read the same before and after the ops are decoded);
 * `order` (base64 of uint32 line numbers) sorts them by id. Opening checks both checksums and
 * finds the lines (one pass over the bytes, no JSON parse); lookups binary-search the order, and
 * a credential's JSON is parsed on its first lookup. Format 3 (one JSON line holding every
 * credential as an object) took 2 s to parse at 100 000 credentials.
 *
 * For start-up after a kill, with ops in the journal (KeyringStore.open), optional (absent in
 * files written before): `owners`, the owners whose chain to the root was live, the root excluded
 * (a journal revoke of one retires what it granted, which the lines do not record); `sum`, the
 * digest's running sum (the digest with the journal's ops counted in, without decoding the
 * rest); `folded`, the id of one journal op this file's compaction folded in (still in the
 * journal at start: the agent stopped before the journal was rewritten, so the journal repeats
 * ops this file counts).
 */

export interface SummaryHeader {
  readonly format: 4;
  readonly digest: string;
  readonly opCount: number;
  /** Credential lines. */
  readonly count: number;
  /** Bytes of the credential lines, and their crc32 (8 hex digits). */
  readonly bytes: number;
  readonly crc: string;
  /** The line numbers in the order of their ids: uint32 little-endian, base64. */
  readonly order: string;
  /** Live owners, the root excluded (see the file comment). */
  readonly owners?: readonly string[];
  /** The digest's running sum, 64 hex digits (see the file comment). */
  readonly sum?: string;
  /** The id of a journal op this file folded in (see the file comment). */
  readonly folded?: string;
}

/** What start-up after a kill needs besides the credentials (see the file comment). */
export interface SummaryExtras {
  readonly owners?: readonly string[] | undefined;
  readonly sum?: string | undefined;
  readonly folded?: string | undefined;
}

export interface DecodedSummary {
  readonly digest: string;
  readonly opCount: number;
  readonly credentials: SnapshotCredentials;
  /** Live owners, the root excluded; undefined in a file written before they were kept. */
  readonly owners: ReadonlySet<string> | undefined;
  readonly sum: string | undefined;
  readonly folded: string | undefined;
}

const NL = 0x0a;
const SPACE = 0x20;
const REVOKED = 0x72; // r
const INSECURE = 0x69; // i
const NONE = 0x2d; // -

/** Code unit order, which for ids (ASCII) is their bytes' order. */
function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The file's bytes for these credentials ([wire, revoked], the root excluded). */
export function encodeSummary(
  digest: string,
  opCount: number,
  credentials: Iterable<readonly [CredentialWire, boolean]>,
  extras: SummaryExtras = {},
): Buffer {
  const lines: string[] = [];
  const ids: string[] = [];
  for (const [wire, revoked] of credentials) {
    ids.push(wire.id);
    const flags = `${revoked ? 'r' : '-'}${wire.options?.insecureUid === true ? 'i' : '-'}`;
    lines.push(`${flags} ${wire.id} ${wire.uidHash ?? '-'} ${JSON.stringify(wire)}\n`);
  }
  const body = Buffer.from(lines.join(''), 'utf8');
  const order = Uint32Array.from(ids.keys()).sort((a, b) => compareStrings(ids[a] ?? '', ids[b] ?? ''));
  const header: SummaryHeader = {
    format: 4,
    digest,
    opCount,
    count: lines.length,
    bytes: body.length,
    crc: crcHex(body),
    order: Buffer.from(order.buffer, order.byteOffset, order.byteLength).toString('base64'),
    ...(extras.owners === undefined ? {} : { owners: [...extras.owners].sort(compareStrings) }),
    ...(extras.sum === undefined ? {} : { sum: extras.sum }),
    ...(extras.folded === undefined ? {} : { folded: extras.folded }),
  };
  const json = JSON.stringify(header);
  return Buffer.concat([Buffer.from(`${crcHex(json)} ${json}\n`, 'utf8'), body]);
}

/** Whether these bytes start like format 4 (a checksummed header line naming it). */
export function isSummaryV4(bytes: Buffer): boolean {
  const end = bytes.indexOf(NL);
  return end > 0 && bytes.subarray(0, end).includes('"format":4');
}

/**
 * Checks and indexes a format 4 file; throws (with the problem) when anything does not check out:
 * checksums, counts, a malformed line, an order that is not a permutation. The index is the
 * lines' offsets and the header's id order, plus a map for the few lines with a UID hash: no
 * string per credential is made at open.
 */
export function decodeSummaryV4(bytes: Buffer): DecodedSummary {
  const headerEnd = bytes.indexOf(NL);
  if (headerEnd < 0) throw new Error('no header line');
  const header = parseHeader(checksummedBody(bytes.subarray(0, headerEnd + 1)));
  const body = bytes.subarray(headerEnd + 1);
  if (body.length !== header.bytes)
    throw new Error(`${body.length} bytes of credentials where the header says ${header.bytes}`);
  if (crcHex(body) !== header.crc) throw new Error('credential lines: checksum mismatch');
  // starts[n]: line n's first byte; starts[count]: one past the last line's newline.
  const starts = new Uint32Array(header.count + 1);
  const byUid = new Map<string, number[]>();
  const insecure: number[] = [];
  let at = 0;
  for (let n = 0; n < header.count; n++) {
    const end = body.indexOf(NL, at);
    if (end < 0) throw new Error(`${n} credential lines where the header says ${header.count}`);
    const r = body[at];
    const i = body[at + 1];
    const idEnd = body.indexOf(SPACE, at + 3);
    const uidEnd = idEnd < 0 ? -1 : body.indexOf(SPACE, idEnd + 1);
    if (
      (r !== REVOKED && r !== NONE) ||
      (i !== INSECURE && i !== NONE) ||
      body[at + 2] !== SPACE ||
      idEnd <= at + 3 ||
      uidEnd <= idEnd + 1 ||
      uidEnd >= end ||
      body[uidEnd + 1] !== 0x7b // {
    ) {
      throw new Error(`credential line ${n + 1} is not "<flags> <id> <uid> <json>"`);
    }
    if (body[idEnd + 1] !== NONE || uidEnd !== idEnd + 2) {
      const uid = body.toString('utf8', idEnd + 1, uidEnd);
      const list = byUid.get(uid);
      if (list) list.push(n);
      else byUid.set(uid, [n]);
    }
    if (i === INSECURE) insecure.push(n);
    starts[n] = at;
    at = end + 1;
  }
  if (at !== body.length) throw new Error(`more than the ${header.count} credential lines the header says`);
  starts[header.count] = at;
  const order = readOrder(header);
  return {
    digest: header.digest,
    opCount: header.opCount,
    credentials: new IndexedCredentials(body, starts, order, byUid, insecure),
    owners: header.owners === undefined ? undefined : new Set(header.owners),
    sum: header.sum,
    folded: header.folded,
  };
}

/** The id order from the header: a permutation of the line numbers (anything else is damage). */
function readOrder(header: SummaryHeader): Uint32Array {
  const bytes = Buffer.from(header.order, 'base64');
  if (bytes.length !== header.count * 4) throw new Error('the id order does not cover every line');
  const order = new Uint32Array(header.count);
  const seen = new Uint8Array(header.count);
  for (let k = 0; k < header.count; k++) {
    const n = bytes.readUInt32LE(k * 4);
    if (n >= header.count || seen[n] === 1) throw new Error('the id order is not a permutation of the lines');
    seen[n] = 1;
    order[k] = n;
  }
  return order;
}

function parseHeader(json: Buffer): SummaryHeader {
  const h = JSON.parse(json.toString('utf8')) as Partial<SummaryHeader> | null;
  if (
    typeof h !== 'object' ||
    h === null ||
    h.format !== 4 ||
    typeof h.digest !== 'string' ||
    typeof h.crc !== 'string' ||
    typeof h.order !== 'string' ||
    !Number.isSafeInteger(h.opCount) ||
    !Number.isSafeInteger(h.count) ||
    !Number.isSafeInteger(h.bytes) ||
    (h.count as number) < 0 ||
    (h.bytes as number) < 0 ||
    (h.owners !== undefined && (!Array.isArray(h.owners) || h.owners.some((o) => typeof o !== 'string'))) ||
    (h.sum !== undefined && (typeof h.sum !== 'string' || !/^[0-9a-f]{64}$/.test(h.sum))) ||
    (h.folded !== undefined && typeof h.folded !== 'string')
  ) {
    throw new Error('format 4 header needs digest, opCount, count, bytes, crc and order');
  }
  return h as SummaryHeader;
}

/**
 * The credential lines of a checked file, parsed one by one when asked for. The header's order
 * sorts them by id when written; the checksum stands for that, so it is not checked again at
 * open. Were it wrong, a lookup could only miss (an unknown credential: denied), never find
 * another.
 */
class IndexedCredentials implements SnapshotCredentials {
  constructor(
    private readonly body: Buffer,
    private readonly starts: Uint32Array,
    private readonly order: Uint32Array,
    private readonly uids: ReadonlyMap<string, readonly number[]>,
    private readonly insecure: readonly number[],
  ) {}

  get size(): number {
    return this.starts.length - 1;
  }

  *ids(): IterableIterator<string> {
    for (let n = 0; n < this.size; n++) yield this.idAt(n);
  }

  has(id: string): boolean {
    return this.find(id) >= 0;
  }

  revoked(id: string): boolean | undefined {
    const n = this.find(id);
    return n < 0 ? undefined : this.body[this.start(n)] === REVOKED;
  }

  wire(id: string): CredentialWire | undefined {
    const n = this.find(id);
    if (n < 0) return undefined;
    const start = this.start(n);
    const json = this.body.indexOf(SPACE, start + 4 + id.length) + 1;
    const wire = JSON.parse(this.body.toString('utf8', json, this.start(n + 1) - 1)) as CredentialWire;
    // Checksummed and written by us, so this holds unless the code that wrote it was wrong.
    if (wire?.id !== id || typeof wire.kind !== 'string' || typeof wire.role !== 'string')
      throw new Error(`credential line of ${id} does not hold it`);
    return wire;
  }

  idsByUid(uidHash: string): readonly string[] {
    return (this.uids.get(uidHash) ?? []).map((n) => this.idAt(n));
  }

  insecureUidIds(): string[] {
    return this.insecure.map((n) => this.idAt(n));
  }

  private start(n: number): number {
    return this.starts[n] ?? this.body.length;
  }

  private idAt(n: number): string {
    const from = this.start(n) + 3;
    return this.body.toString('utf8', from, this.body.indexOf(SPACE, from));
  }

  /** Line of `id` (binary search over the id order), or -1. */
  private find(id: string): number {
    let lo = 0;
    let hi = this.size - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const line = this.order[mid] ?? 0;
      const c = this.compareId(line, id);
      if (c === 0) return line;
      if (c < 0) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  /** Line n's id against `id`, byte by byte (ids are ASCII; a non-ASCII one matches no line). */
  private compareId(n: number, id: string): number {
    const body = this.body;
    const from = this.start(n) + 3;
    for (let k = 0; ; k++) {
      const b = body[from + k] ?? SPACE;
      const end = b === SPACE;
      if (k === id.length) return end ? 0 : 1;
      if (end) return -1;
      const c = id.charCodeAt(k);
      if (b !== c) return b < c ? -1 : 1;
    }
  }
}
