import { createHash, type KeyObject, randomBytes } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { AgentError } from '../core/errors.js';
import {
  CREDENTIAL_KINDS,
  type Credential,
  type CredentialKind,
  type PublicJwk,
  ROLES,
  type Role,
} from '../core/types.js';
import { canonicalJson } from '../crypto/canonical.js';
import { b64url } from '../crypto/encoding.js';
import { type ParsedJws, parseJws, signJws, verifyJws } from '../crypto/jws.js';
import { keyCredentialId, publicKeyFromJwk, sha256 } from '../crypto/keys.js';
import type { CredentialLookup, CredentialStatus } from './credential-lookup.js';
import { type CredentialWire, credentialToWire, parseCredentialWire } from './credential-wire.js';
import {
  type JournalOverlay,
  SnapshotCredentialMap,
  type SnapshotCredentials,
} from './snapshot-credentials.js';
import { byCodeUnits, sortInSlices } from './sort-in-slices.js';

/**
 * The keyring: a set of signed grant and revoke operations (docs/keyring.md).
 * Merge is a set union keyed by operation id, so local enrollment and cloud edits never conflict.
 * The effective state is a pure function of the set, whatever order operations arrived in:
 *   - a revoke is final: a credential with any accepted revoke is revoked, and no replayed grant
 *     (old or new) brings it back;
 *   - grants count only when their signer chain reaches the pinned owner root through owners that
 *     are not revoked (revoking an owner key also retires what it granted);
 *   - grants need an owner signer; revokes an owner or service signer. A signer's authority to
 *     revoke survives its own revocation (a revoke can only lock out, never open).
 * Signatures are verified when an operation is added; the stored set is our own state and is
 * loaded without re-verifying (100 000 signature checks would take seconds on a Pi).
 *
 * A change is made in two steps so it can be persisted in between: `prepare` verifies a set of
 * operations against the keyring without changing it, the caller writes the verified ones to
 * disk, and `apply` adds them. A change whose write fails is never applied: no key works that the
 * disk does not hold, and a revoke that could not be stored is reported, not half-done.
 */

export const KEYRING_OP_TYP = 'vehicle-agent.keyring-op';

export interface GrantOp {
  readonly v: 1;
  readonly op: 'grant';
  readonly id: string;
  readonly vid: string;
  readonly iat: number;
  readonly cred: CredentialWire;
  readonly auth?: AuthProof;
}

export interface RevokeOp {
  readonly v: 1;
  readonly op: 'revoke';
  readonly id: string;
  readonly vid: string;
  readonly iat: number;
  readonly credId: string;
  readonly reason?: string;
  readonly auth?: AuthProof;
}

export type KeyringOp = GrantOp | RevokeOp;

/**
 * Authorisation by an owner credential that cannot sign a JWS itself (a FIDO key at the vehicle):
 * the operation is signed by the vehicle key and carries the owner credential's proof over the
 * hash of the operation without `auth` (see `authRequestHash`).
 */
export interface AuthProof {
  readonly by: string;
  readonly method: string;
  readonly proof: Readonly<Record<string, unknown>>;
}

/** Verifies an AuthProof for `method` made by `authoriser` over `requestHash`. Pure. */
export type AuthVerifier = (
  authoriser: Credential,
  requestHash: Uint8Array,
  proof: Readonly<Record<string, unknown>>,
) => boolean;

/** Where a snapshot's ops come from when they are needed (the keyring store's ops file). */
export interface PendingOpsSource {
  read(): Promise<readonly { readonly jws: string; readonly signer: string }[]>;
  readSync(): readonly { readonly jws: string; readonly signer: string }[];
}

/** A decoded op with the authority it carries. */
export interface SignedOp {
  readonly op: KeyringOp;
  /** Credential id whose authority the op carries: the JWS signer, or auth.by. */
  readonly signer: string;
}

export interface StoredOp extends SignedOp {
  readonly jws: string;
}

/**
 * An op the keyring holds, in the compact form it keeps (not the decoded op): what derivation,
 * the digest and duplicate checks need. `hash` (base64url SHA-256 of the JWS) tells another op
 * under the same id apart; `jws` is held only while no OpTextSource keeps the text (keepTextsIn).
 */
export interface HeldOp {
  readonly id: string;
  readonly op: 'grant' | 'revoke';
  /** The credential the op grants or revokes. */
  readonly credId: string;
  readonly signer: string;
  readonly iat: number;
  readonly hash: string;
  readonly jws: string | undefined;
}

/**
 * Keeps the signed text of the ops a keyring holds, so the keyring need not (the keyring store:
 * its ops files and journals). About 700 bytes an op that decisions never read.
 */
export interface OpTextSource {
  /** The JWS of every op `holds` accepts, in any order. */
  readTexts(holds: (opId: string) => boolean): Promise<string[]>;
}

export interface AddResult {
  readonly status: 'added' | 'duplicate';
  readonly op: KeyringOp;
}

export interface MergeResult {
  readonly added: readonly KeyringOp[];
  readonly duplicates: number;
  readonly rejected: readonly { readonly index: number; readonly code: string; readonly message: string }[];
}

/** Operations verified by `prepare`, not yet in the keyring: persist `added`, then `apply`. */
export interface PreparedOps {
  /** New verified operations, in the order they were accepted. */
  readonly added: readonly StoredOp[];
  readonly duplicates: number;
  readonly rejected: MergeResult['rejected'];
}

/**
 * The effective state. Built from the ops (`liveOwners` set), it holds what it was derived from,
 * so that one op can be folded in without going over the whole keyring (see `fold`); built from a
 * snapshot whose ops are not decoded yet, `byId` holds the snapshot's credentials (no op) and
 * `revoked` those it said were revoked.
 */
interface Effective {
  /** Credential id → the grant that decides it (a live one over a dead one, then the newest). */
  readonly byId: Map<string, HeldGrant>;
  /** Salted UID hash → ids of the credentials registered under it. */
  readonly byUid: Map<string, string[]>;
  /** Credentials with a revoke op, and suspects; never the root. */
  readonly revoked: Set<string>;
  /** Owners whose chain to the root has no revoked link; undefined for a snapshot. */
  readonly liveOwners: Set<string> | undefined;
}

export interface KeyringOptions {
  readonly vehicleId: string;
  readonly rootKey: PublicJwk;
  /** The vehicle's own public key: signs operations authorised by an AuthProof. */
  readonly vehicleKey?: PublicJwk;
  readonly authVerifiers?: ReadonlyMap<string, AuthVerifier>;
}

const OP_ID = /^[A-Za-z0-9_-]{16,64}$/;

export function newOpId(): string {
  return b64url(randomBytes(16));
}

/** Hash an AuthProof signs: SHA-256 of the canonical JSON of the op without `auth`. */
export function authRequestHash(op: Omit<KeyringOp, 'auth'> & { auth?: unknown }): Uint8Array {
  const { auth: _auth, ...rest } = op;
  return sha256(canonicalJson(rest));
}

function malformed(message: string): AgentError {
  return new AgentError('op_malformed', message);
}

function parseOpPayload(payload: Record<string, unknown>): KeyringOp {
  const { v, op, id, vid, iat, auth } = payload;
  if (v !== 1) throw malformed('keyring op v must be 1');
  if (typeof id !== 'string' || !OP_ID.test(id))
    throw malformed('keyring op id must be 16-64 base64url characters');
  if (typeof vid !== 'string' || vid.length === 0) throw malformed('keyring op needs vid');
  if (typeof iat !== 'number' || !Number.isInteger(iat) || iat < 0)
    throw malformed('keyring op iat must be seconds since the epoch');
  let parsedAuth: AuthProof | undefined;
  if (auth !== undefined) {
    const a = auth as Record<string, unknown>;
    if (
      typeof auth !== 'object' ||
      auth === null ||
      typeof a.by !== 'string' ||
      typeof a.method !== 'string' ||
      typeof a.proof !== 'object' ||
      a.proof === null
    ) {
      throw malformed('keyring op auth must be {by, method, proof}');
    }
    parsedAuth = { by: a.by, method: a.method, proof: a.proof as Record<string, unknown> };
  }
  const base = { v: 1 as const, id, vid, iat, ...(parsedAuth ? { auth: parsedAuth } : {}) };
  if (op === 'grant') {
    const cred = parseCredentialWire(payload.cred);
    const allowed = new Set(['v', 'op', 'id', 'vid', 'iat', 'cred', 'auth']);
    for (const key of Object.keys(payload))
      if (!allowed.has(key)) throw malformed(`grant has unknown field ${key}`);
    return { ...base, op, cred: credentialToWire(cred) };
  }
  if (op === 'revoke') {
    const { credId, reason } = payload;
    if (typeof credId !== 'string' || credId.length === 0 || credId.length > 100)
      throw malformed('revoke needs credId');
    if (reason !== undefined && (typeof reason !== 'string' || reason.length > 200))
      throw malformed('revoke reason must be a short string');
    const allowed = new Set(['v', 'op', 'id', 'vid', 'iat', 'credId', 'reason', 'auth']);
    for (const key of Object.keys(payload))
      if (!allowed.has(key)) throw malformed(`revoke has unknown field ${key}`);
    return { ...base, op, credId, ...(reason !== undefined ? { reason } : {}) };
  }
  throw malformed('keyring op must be grant or revoke');
}

/** Decodes a stored op without verifying its signature (trusted local state). */
export function decodeStoredOp(jws: string, signer: string): StoredOp {
  const parsed = parseJws(jws);
  return { jws, op: parseOpPayload(parsed.payload), signer };
}

/**
 * Fast decode of an op from our own state files, for start-up: the full validation and the
 * signature ran when the op was added, so only the shape the keyring relies on is checked here
 * (about 10x faster than decodeStoredOp; 100 000 ops load in well under a second).
 */
export function decodeTrustedOp(jws: string, signer: string): StoredOp {
  const first = jws.indexOf('.');
  const second = jws.indexOf('.', first + 1);
  let op: KeyringOp;
  try {
    op = JSON.parse(Buffer.from(jws.slice(first + 1, second), 'base64url').toString('utf8')) as KeyringOp;
  } catch {
    throw malformed('stored keyring op is not a JWS with a JSON payload');
  }
  const ok =
    typeof op === 'object' &&
    op !== null &&
    typeof op.id === 'string' &&
    (op.op === 'revoke'
      ? typeof op.credId === 'string'
      : op.op === 'grant' &&
        typeof op.cred === 'object' &&
        op.cred !== null &&
        typeof op.cred.id === 'string' &&
        typeof op.cred.role === 'string');
  if (!ok || first < 0 || second < 0) throw malformed('stored keyring op has an unexpected shape');
  return { jws, op, signer };
}

/** A revoke as the keyring holds it. */
class HeldRevoke implements HeldOp {
  constructor(
    readonly id: string,
    readonly credId: string,
    readonly signer: string,
    readonly iat: number,
    readonly hash: string,
    public jws: string | undefined,
  ) {}

  get op(): 'revoke' {
    return 'revoke';
  }
}

/** CredentialOptions as bits, so a grant holds a number rather than an object. */
const PASSIVE = 1;
const INSECURE_UID = 2;

/**
 * A grant as the keyring holds it: the op's own fields and its credential in compact form (times
 * in ms, options as bits, the public key as raw bytes in a one-byte string), one object per grant.
 * The Credential a decision reads is built from it on lookup (credentialOf). A credential from a
 * snapshot, whose op is not decoded yet, is one with an empty op id, signer and hash.
 */
class HeldGrant implements HeldOp {
  constructor(
    readonly id: string,
    readonly credId: string,
    readonly signer: string,
    readonly iat: number,
    readonly hash: string,
    public jws: string | undefined,
    readonly kind: CredentialKind,
    readonly role: Role,
    readonly flags: number,
    readonly name: string | undefined,
    readonly notBefore: number | undefined,
    readonly notAfter: number | undefined,
    /** rawKeyOf the public key, or the JWK itself when its text would not survive the round trip. */
    readonly key: string | PublicJwk | undefined,
    readonly uidHash: string | undefined,
    readonly keyHandle: string | undefined,
    readonly rpId: string | undefined,
  ) {}

  get op(): 'grant' {
    return 'grant';
  }
}

/** One copy of each kind and role string (a decoded op has its own copy of each). */
const KINDS = new Map<string, CredentialKind>(CREDENTIAL_KINDS.map((k) => [k, k]));
const ROLE_NAMES = new Map<string, Role>(ROLES.map((r) => [r, r]));

/** A grant's credential (validated when the op was added, or our own snapshot) in compact form. */
function heldGrantOf(
  w: CredentialWire,
  opId: string,
  signer: string,
  iat: number,
  hash: string,
  jws: string | undefined,
): HeldGrant {
  return new HeldGrant(
    opId,
    w.id,
    signer,
    iat,
    hash,
    jws,
    KINDS.get(w.kind) ?? w.kind,
    ROLE_NAMES.get(w.role) ?? w.role,
    (w.options?.passive === true ? PASSIVE : 0) | (w.options?.insecureUid === true ? INSECURE_UID : 0),
    w.name,
    w.notBefore === undefined ? undefined : Date.parse(w.notBefore),
    w.notAfter === undefined ? undefined : Date.parse(w.notAfter),
    w.publicKey === undefined ? undefined : rawKeyOf(w.publicKey),
    w.uidHash,
    w.keyHandle,
    w.rpId,
  );
}

/** Base64url of 32 bytes in canonical form (no padding, the unused low bits zero). */
const B64URL_32 = /^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/;
const rawKeyScratch = Buffer.alloc(64);

/**
 * A public key as raw bytes in a one-byte string (P-256: x ‖ y, 64 bytes; Ed25519: 32 bytes):
 * about 80 bytes instead of a JWK object with two base64url strings. A JWK whose coordinates are
 * not canonical base64url of 32 bytes is kept as it is, so jwkOf always gives back the same JWK.
 */
function rawKeyOf(jwk: PublicJwk): string | PublicJwk {
  if (jwk.kty === 'EC' && jwk.y !== undefined && B64URL_32.test(jwk.x) && B64URL_32.test(jwk.y)) {
    rawKeyScratch.write(jwk.x, 0, 'base64url');
    rawKeyScratch.write(jwk.y, 32, 'base64url');
    return rawKeyScratch.toString('latin1', 0, 64);
  }
  if (jwk.kty === 'OKP' && B64URL_32.test(jwk.x)) {
    rawKeyScratch.write(jwk.x, 0, 'base64url');
    return rawKeyScratch.toString('latin1', 0, 32);
  }
  return jwk;
}

/** The JWK rawKeyOf was made from. */
function jwkOf(key: string | PublicJwk): PublicJwk {
  if (typeof key !== 'string') return key;
  const raw = Buffer.from(key, 'latin1');
  if (raw.length === 64)
    return {
      kty: 'EC',
      crv: 'P-256',
      x: raw.toString('base64url', 0, 32),
      y: raw.toString('base64url', 32, 64),
    };
  return { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') };
}

/** The Credential a held grant carries, built anew on each lookup (callers may keep it). */
function credentialOf(g: HeldGrant): Credential {
  const options: { passive?: boolean; insecureUid?: boolean } = {};
  if (g.flags & PASSIVE) options.passive = true;
  if (g.flags & INSECURE_UID) options.insecureUid = true;
  const c: { -readonly [K in keyof Credential]: Credential[K] } = {
    id: g.credId,
    kind: g.kind,
    role: g.role,
    options,
  };
  if (g.name !== undefined) c.name = g.name;
  if (g.notBefore !== undefined) c.notBefore = g.notBefore;
  if (g.notAfter !== undefined) c.notAfter = g.notAfter;
  if (g.key !== undefined) c.publicKey = jwkOf(g.key);
  if (g.uidHash !== undefined) c.uidHash = g.uidHash;
  if (g.keyHandle !== undefined) c.keyHandle = g.keyHandle;
  if (g.rpId !== undefined) c.rpId = g.rpId;
  return c;
}

export class Keyring implements CredentialLookup {
  readonly vehicleId: string;
  readonly rootId: string;
  readonly vehicleKeyId: string | undefined;
  private readonly rootCredential: Credential;
  private readonly vehicleKeyObject: KeyObject | undefined;
  private readonly authVerifiers: ReadonlyMap<string, AuthVerifier>;
  /** Op id → the op in compact form (a grant's record is also what `effective` points at). */
  private readonly ops = new Map<string, HeldGrant | HeldRevoke>();
  private readonly signers = new Map<string, string>();
  /** Set once the ops' texts are kept elsewhere (see keepTextsIn). */
  private textSource: OpTextSource | undefined;
  /**
   * Grants accepted but not folded into `effective` yet (a verification pass folds at its end),
   * by credential id: an op later in the same pass may be signed by the key one of them grants.
   */
  private readonly unfolded = new Map<string, HeldGrant>();
  /** Key objects made from the held raw keys when first asked for (a key object costs far more). */
  private readonly keyObjects = new Map<string, KeyObject>();
  /** Owners reachable from the root ignoring revocations; may sign grants. Grows only. */
  private readonly everOwners = new Set<string>();
  /** Everyone who may sign revokes (ever owners and ever service keys). Grows only. */
  private readonly everRevokers = new Set<string>();
  /** Grants whose signer was not an owner when they came, by signer (it may become one later). */
  private readonly waitingGrants = new Map<string, HeldGrant[]>();
  private effective: Effective;
  /** The set digest's running sum over the ops (see digest()). */
  private readonly sum = new DigestSum();
  private digestCache: string | undefined;
  /**
   * While `prepare` tries ops on the keyring itself: how to undo each change, newest last. Every
   * change a new op makes goes through `changed`, so a trial costs the size of the set, not of
   * the keyring.
   */
  private undo: (() => void)[] | undefined;
  /** Credential id → why it is denied as suspect (see markSuspect). */
  private readonly suspects = new Map<string, string>();
  /**
   * Ops loaded from a snapshot but not decoded yet (see loadSnapshot): decisions need only the
   * effective credentials, so 100 000 ops are decoded after start-up, in the background or on
   * first need, instead of before the vehicle can open.
   */
  private pendingSource: PendingOpsSource | undefined;
  /** While the keyring runs on a snapshot: its credentials, each decoded on first lookup. */
  private snapshotCredentials: SnapshotCredentialMap | undefined;
  private pendingRaw: readonly { readonly jws: string; readonly signer: string }[] | undefined;
  private pendingAt = 0;
  private pendingCount = 0;
  private snapshotDigest: string | undefined;
  /**
   * The snapshot's live owners (the summary's), while on it; undefined when it did not name them.
   * A suspect owner retires what it granted, which the snapshot does not record.
   */
  private snapshotLiveOwners: ReadonlySet<string> | undefined;
  /** The source a background read took, until its ops are decoded (see materialize). */
  private readingSource: PendingOpsSource | undefined;
  private background: Promise<void> | undefined;

  constructor(options: KeyringOptions) {
    this.vehicleId = options.vehicleId;
    this.rootId = keyCredentialId('signer', options.rootKey);
    this.rootCredential = {
      id: this.rootId,
      kind: 'signer',
      role: 'owner',
      name: 'owner root',
      publicKey: options.rootKey,
      options: {},
    };
    this.keyObjects.set(this.rootId, publicKeyFromJwk(options.rootKey));
    this.vehicleKeyId = options.vehicleKey ? keyCredentialId('signer', options.vehicleKey) : undefined;
    this.vehicleKeyObject = options.vehicleKey ? publicKeyFromJwk(options.vehicleKey) : undefined;
    this.authVerifiers = options.authVerifiers ?? new Map();
    this.everOwners.add(this.rootId);
    this.everRevokers.add(this.rootId);
    this.effective = {
      byId: new Map(),
      byUid: new Map(),
      revoked: new Set(),
      liveOwners: new Set([this.rootId]),
    };
  }

  /** Whether decisions still come from the snapshot (its ops not decoded yet; see loadSnapshot). */
  get onSnapshot(): boolean {
    return this.snapshotCredentials !== undefined;
  }

  /**
   * Owners whose chain to the root is live, the root excluded (the store writes them into the
   * summary: a revoke of one of them retires what it granted). Undefined while on a snapshot.
   */
  liveOwnerIds(): string[] | undefined {
    const live = this.effective.liveOwners;
    if (this.snapshotCredentials !== undefined || live === undefined) return undefined;
    return [...live].filter((id) => id !== this.rootId);
  }

  /**
   * The digest's running sum (64 hex digits; see digestOfOps), which the store keeps in the
   * summary so that ops added since can be counted in without decoding the rest (digestWithOps).
   * Undefined while on a snapshot.
   */
  digestSum(): string | undefined {
    return this.snapshotDigest === undefined ? this.sum.hex() : undefined;
  }

  get size(): number {
    return this.ops.size + (this.pendingSource || this.pendingRaw ? this.pendingCount - this.pendingAt : 0);
  }

  has(opId: string): boolean {
    this.materialize();
    return this.ops.has(opId);
  }

  /** Every op held; `jws` unless an OpTextSource keeps its text on disk (see opTexts). */
  heldOps(): IterableIterator<HeldOp> {
    this.materialize();
    return this.ops.values();
  }

  /**
   * Every op held with its text, for a keyring that holds the texts itself (provisioning, the
   * CLI, tests); one whose texts are on disk (keepTextsIn) refuses: read them with opTexts.
   */
  *storedOps(): IterableIterator<StoredOp> {
    for (const held of this.heldOps()) {
      if (held.jws === undefined)
        throw new AgentError('state_io', 'the keyring keeps its op texts on disk: read them with opTexts()');
      // The keyring keeps no decoded op: decoded again from the text it holds (validated on add).
      yield decodeTrustedOp(held.jws, held.signer);
    }
  }

  /**
   * From now on the ops' signed texts are kept by `source` (the store: on disk), and those held in
   * memory that `stored` says the store holds are dropped. Decisions and changes need only the
   * compact ops. A text is dropped only once it is on disk (here, when read from the ops files,
   * or textsStored): one merged in memory only stays until a compaction writes it.
   */
  keepTextsIn(source: OpTextSource, stored: (opId: string) => boolean): void {
    this.textSource = source;
    for (const [id, held] of this.ops) if (held.jws !== undefined && stored(id)) held.jws = undefined;
  }

  /** The store has written these ops' texts to disk (a compaction): their copies here go. */
  textsStored(opIds: Iterable<string>): void {
    if (this.textSource === undefined) return;
    for (const id of opIds) {
      const held = this.ops.get(id);
      if (held !== undefined) held.jws = undefined;
    }
  }

  /** The JWS of every op held, read back from the OpTextSource for those whose text it keeps. */
  async opTexts(): Promise<string[]> {
    // Ops merged while the source is read keep their texts in memory: taken after the read, so
    // the texts name the set the keyring holds when this returns (a merge during the read went
    // missing before: a vehicle set with 1 205 of 20 014 ops under the full set's digest). A
    // compaction in between can move a text out of memory after the source passed it over: then
    // the count falls short, and the read is made again.
    for (let attempt = 1; ; attempt++) {
      await this.whenMaterialized();
      if (this.textSource === undefined)
        return [...this.ops.values()].flatMap((h) => (h.jws === undefined ? [] : [h.jws]));
      const fromSource = await this.textSource.readTexts((id) => {
        const held = this.ops.get(id);
        return held !== undefined && held.jws === undefined;
      });
      const inMemory = [...this.ops.values()].flatMap((h) => (h.jws === undefined ? [] : [h.jws]));
      if (fromSource.length + inMemory.length === this.ops.size) return [...fromSource, ...inMemory];
      if (attempt >= 3)
        throw new AgentError('state_io', 'the keyring changed while its op texts were read; try again', {
          read: fromSource.length + inMemory.length,
          held: this.ops.size,
        });
    }
  }

  /**
   * The JWS of the held ops named in `ids`, read back from the OpTextSource for those whose text
   * it keeps, without the others' texts in memory (the vehicle's set publishes a few parts). An op
   * moved to disk during the read can be missing: callers check what they got.
   */
  async opTextsOf(ids: ReadonlySet<string>): Promise<string[]> {
    await this.whenMaterialized();
    const fromSource =
      this.textSource === undefined
        ? []
        : await this.textSource.readTexts((id) => ids.has(id) && this.ops.get(id)?.jws === undefined);
    // Taken after the read, as in opTexts: a text still in memory now was not read from the source.
    const inMemory: string[] = [];
    for (const id of ids) {
      const jws = this.ops.get(id)?.jws;
      if (jws !== undefined) inMemory.push(jws);
    }
    return [...fromSource, ...inMemory];
  }

  /**
   * Fast start-up from our own snapshot: the effective credentials as they were computed when the
   * snapshot was written; the ops themselves are read and decoded later (materializeInBackground,
   * or at once by anything that needs them). Call on a fresh keyring only.
   */
  loadSnapshot(snapshot: {
    readonly digest: string;
    readonly opCount: number;
    /** Indexed, each decoded on its first lookup (snapshot-credentials.ts). */
    readonly credentials: SnapshotCredentials;
    /** Every op: the snapshot's, then any added since (decoded once, duplicates ignored). */
    readonly ops: PendingOpsSource;
    /**
     * What ops added since the snapshot (the store's journal) change until the ops are decoded
     * (see journalOverlay); `digest` and `opCount` then count them too (digestWithOps).
     */
    readonly overlay?: JournalOverlay;
    /** Its live owners, the root excluded (the summary's), when it names them. */
    readonly liveOwners?: ReadonlySet<string> | undefined;
  }): void {
    this.snapshotCredentials = new SnapshotCredentialMap(
      { credential: this.rootCredential, revoked: false },
      snapshot.credentials,
      credentialFromTrustedWire,
      this.suspects,
      snapshot.overlay,
    );
    this.effective = { byId: new Map(), byUid: new Map(), revoked: new Set(), liveOwners: undefined };
    this.pendingSource = snapshot.ops;
    this.pendingCount = snapshot.opCount;
    this.pendingAt = 0;
    this.snapshotDigest = snapshot.digest;
    this.snapshotLiveOwners = snapshot.liveOwners;
  }

  /** Decodes up to `count` pending ops; true when none is left. */
  private decodeSome(count: number): boolean {
    const raw = this.pendingRaw;
    if (raw === undefined) return true;
    const end = Math.min(raw.length, this.pendingAt + count);
    for (; this.pendingAt < end; this.pendingAt++) {
      const r = raw[this.pendingAt];
      if (r) {
        const { op, signer, jws } = decodeTrustedOp(r.jws, r.signer);
        // An op in the ops files and the journal both (a crash inside a compaction) counts once.
        if (!this.ops.has(op.id)) this.accept(op, signer, jws, true);
      }
    }
    if (this.pendingAt < raw.length) return false;
    this.pendingRaw = undefined;
    this.pendingAt = 0;
    this.snapshotDigest = undefined;
    this.snapshotLiveOwners = undefined;
    this.snapshotCredentials = undefined;
    // The ops are the truth: the effective state is derived from them again (once, in the
    // background), which also gives later changes what they are folded into.
    this.recompute();
    return true;
  }

  private takePendingSource(): PendingOpsSource | undefined {
    const source = this.pendingSource;
    this.pendingSource = undefined;
    return source;
  }

  /**
   * Decodes every pending op now, reading them synchronously if they are not read yet (start-up
   * and CLI paths; the agent awaits `whenMaterialized` first, so it never reads synchronously).
   */
  private materialize(): void {
    // A background read under way has taken the source: read it here too rather than go on
    // with a partial op set (a merge would then recompute from part of the keyring).
    const source =
      this.takePendingSource() ?? (this.pendingRaw === undefined ? this.readingSource : undefined);
    if (source) {
      this.readingSource = undefined;
      this.pendingRaw = source.readSync();
      this.pendingCount = this.pendingRaw.length;
    }
    this.decodeSome(Number.POSITIVE_INFINITY);
  }

  /** Reads and decodes the pending snapshot ops in small slices between other work. */
  materializeInBackground(slice = 2000): Promise<void> {
    this.background ??= this.decodeInBackground(slice);
    return this.background;
  }

  /** Resolves once every op is decoded, reading them asynchronously if they are not yet. */
  whenMaterialized(): Promise<void> {
    if (this.pendingSource === undefined && this.pendingRaw === undefined && this.readingSource === undefined)
      return Promise.resolve();
    return this.materializeInBackground();
  }

  private async decodeInBackground(slice: number): Promise<void> {
    const source = this.takePendingSource();
    if (source) {
      this.readingSource = source;
      let raw: Awaited<ReturnType<PendingOpsSource['read']>>;
      try {
        raw = await source.read();
      } catch (err) {
        // Put the source back, so the next caller tries again rather than go on without the ops
        // (a change verified against a partial keyring would drop the rest when applied).
        if (this.readingSource === source && this.pendingRaw === undefined) this.pendingSource = source;
        this.background = undefined;
        throw err;
      } finally {
        if (this.readingSource === source) this.readingSource = undefined;
      }
      // materialize() may have run meanwhile (a merge arrived): then nothing is left to do.
      if (this.pendingRaw === undefined && this.snapshotDigest !== undefined) {
        this.pendingRaw = raw;
        this.pendingCount = raw.length;
      }
    }
    const decoded = this.pendingRaw?.length ?? 0;
    while (!this.decodeSome(slice)) await new Promise((resolve) => setImmediate(resolve));
    // Reading and decoding a large keyring leaves its texts (twice: both ops files) and the
    // decoded ops as garbage, ~300 MB at 100 000 ops; an idle agent allocates too little for V8
    // to collect it, so its RSS would stay there. Collected once (tens of ms, off the start), a
    // moment later: the texts this function and the store's own checks hold must be gone by then.
    if (decoded >= COLLECT_AFTER_DECODING) setTimeout(collectGarbage, COLLECT_DELAY_MS).unref();
  }

  /** Loads operations from our own durable state: no signature checks, one recompute. */
  loadTrusted(stored: Iterable<StoredOp>): void {
    this.materialize();
    // An op read twice (in the ops files and a journal after a kill inside a compaction) is one
    // op: accepted twice, it would count twice in the digest.
    for (const s of stored) if (!this.ops.has(s.op.id)) this.accept(s.op, s.signer, s.jws);
    this.recompute();
  }

  /** Verifies and adds one operation. Throws AgentError op_* on rejection. */
  add(jws: string): AddResult {
    this.materialize();
    const result = this.verifyAndAccept(jws);
    if (result !== 'duplicate') {
      this.foldAll([result.held]);
      return { status: 'added', op: result.stored.op };
    }
    return { status: 'duplicate', op: parseOpPayload(parseJws(jws).payload) };
  }

  /**
   * Adds a set of operations in any order at once, with no write in between (provisioning, tests).
   * The agent uses prepare → persist → apply instead.
   */
  merge(jwsList: readonly string[]): MergeResult {
    return this.apply(this.prepare(jwsList));
  }

  /**
   * Verifies a set of operations in any order (a keyring snapshot from the cloud, say) without
   * changing the keyring: passes repeat while they make progress, so a grant that arrives before
   * its signer's own grant in the same set is still accepted.
   */
  prepare(jwsList: readonly string[]): PreparedOps {
    this.materialize();
    // Verified on the keyring itself, then rolled back: verification needs the state the set's
    // earlier ops create (a new owner's key, its authority), and this runs synchronously, so no
    // one sees the trial state. The undo log makes the rollback as cheap as the trial.
    const undo: (() => void)[] = [];
    const sum = this.sum.copy();
    const digestCache = this.digestCache;
    this.undo = undo;
    const added: StoredOp[] = [];
    try {
      const { duplicates, rejected } = this.verifyAll(jwsList, added);
      return { added, duplicates, rejected };
    } finally {
      this.undo = undefined;
      for (let i = undo.length - 1; i >= 0; i--) undo[i]?.();
      this.unfolded.clear();
      this.sum.set(sum);
      this.digestCache = digestCache;
    }
  }

  /**
   * Adds operations verified by `prepare` (once they are durable). An op that arrived meanwhile
   * counts as a duplicate; the effective credentials are recomputed once.
   */
  apply(prepared: PreparedOps): MergeResult {
    this.materialize();
    const added: KeyringOp[] = [];
    const accepted: (HeldGrant | HeldRevoke)[] = [];
    let duplicates = prepared.duplicates;
    for (const stored of prepared.added) {
      const existing = this.ops.get(stored.op.id);
      if (existing) {
        // Only the same op can hold its id: prepare refused another op under a taken id.
        if (existing.hash === opHash(stored.jws).toString('base64url')) duplicates++;
        continue;
      }
      accepted.push(this.accept(stored.op, stored.signer, stored.jws));
      added.push(stored.op);
    }
    if (accepted.length > 0) this.foldAll(accepted);
    return { added, duplicates, rejected: prepared.rejected };
  }

  /** The verification passes of `prepare`; accepted ops are added to the keyring and to `added`. */
  private verifyAll(
    jwsList: readonly string[],
    added: StoredOp[],
  ): { duplicates: number; rejected: MergeResult['rejected'] } {
    let duplicates = 0;
    let pending = jwsList.map((jws, index) => ({ jws, index }));
    // Errors no later op can cure, and those of the last pass over the ones that might have been.
    const finalErrors = new Map<number, AgentError>();
    let lastErrors = new Map<number, AgentError>();
    for (;;) {
      const next: typeof pending = [];
      const errors = new Map<number, AgentError>();
      const pass: { stored: StoredOp; held: HeldGrant | HeldRevoke }[] = [];
      for (const item of pending) {
        try {
          const r = this.verifyAndAccept(item.jws);
          if (r !== 'duplicate') pass.push(r);
          else duplicates++;
        } catch (err) {
          const e = err instanceof AgentError ? err : new AgentError('op_malformed', String(err));
          // Only signer problems can be cured by a later op in the same set.
          if (e.code === 'op_unknown_signer' || e.code === 'op_signer_not_allowed') {
            errors.set(item.index, e);
            next.push(item);
          } else finalErrors.set(item.index, e);
        }
      }
      lastErrors = errors;
      const progress = pass.length > 0;
      if (progress) {
        this.foldAll(pass.map((p) => p.held));
        for (const p of pass) added.push(p.stored);
      }
      if (!progress || next.length === 0) break;
      pending = next;
    }
    const rejected = [...finalErrors, ...lastErrors]
      .sort(([a], [b]) => a - b)
      .map(([index, e]) => ({ index, code: e.code, message: e.message }));
    return { duplicates, rejected };
  }

  /** The op as accepted, or 'duplicate' when the keyring holds it already. */
  private verifyAndAccept(jws: string): { stored: StoredOp; held: HeldGrant | HeldRevoke } | 'duplicate' {
    let parsed: ParsedJws<Record<string, unknown>>;
    try {
      parsed = parseJws(jws);
    } catch (err) {
      throw new AgentError('op_malformed', `keyring op: ${(err as Error).message}`);
    }
    const op = parseOpPayload(parsed.payload);
    if (op.vid !== this.vehicleId)
      throw new AgentError('op_wrong_vehicle', `keyring op ${op.id} is for vehicle ${op.vid}`);
    const existing = this.ops.get(op.id);
    if (existing) {
      if (existing.hash === opHash(jws).toString('base64url')) return 'duplicate';
      throw new AgentError('op_malformed', `keyring op id ${op.id} is already used by another operation`);
    }
    const signer = this.verifySignature(parsed, op);
    if (op.op === 'grant' && !this.everOwners.has(signer)) {
      throw new AgentError('op_signer_not_allowed', `only an owner may grant; ${signer} is not an owner`, {
        signer,
      });
    }
    if (op.op === 'revoke') {
      if (!this.everRevokers.has(signer)) {
        throw new AgentError(
          'op_signer_not_allowed',
          `only an owner or service key may revoke; ${signer} may not`,
          { signer },
        );
      }
      if (op.credId === this.rootId) throw new AgentError('op_root_irrevocable');
    }
    return { stored: { jws, op, signer }, held: this.accept(op, signer, jws) };
  }

  /** Returns the credential id whose authority the op carries, or throws. */
  private verifySignature(parsed: ParsedJws<unknown>, op: KeyringOp): string {
    const kid = parsed.header.kid;
    if (op.auth) {
      if (kid !== this.vehicleKeyId || !this.vehicleKeyObject) {
        throw new AgentError('op_unknown_signer', 'an op with an owner proof must be signed by this vehicle');
      }
      if (!verifyJws(parsed, this.vehicleKeyObject))
        throw new AgentError('op_bad_signature', `keyring op ${op.id}: bad vehicle signature`);
      const authoriser = this.anyGrantOf(op.auth.by);
      const verify = this.authVerifiers.get(op.auth.method);
      if (!authoriser)
        throw new AgentError('op_unknown_signer', `keyring op ${op.id}: unknown authoriser ${op.auth.by}`);
      if (!verify)
        throw new AgentError('op_malformed', `keyring op ${op.id}: unknown auth method ${op.auth.method}`);
      if (!verify(authoriser, authRequestHash(op), op.auth.proof)) {
        throw new AgentError('op_bad_signature', `keyring op ${op.id}: owner proof did not verify`);
      }
      return op.auth.by;
    }
    const key = this.keyObjectOf(kid);
    if (!key)
      throw new AgentError('op_unknown_signer', `keyring op ${op.id}: unknown signer ${kid}`, { kid });
    if (!verifyJws(parsed, key))
      throw new AgentError('op_bad_signature', `keyring op ${op.id}: bad signature`);
    return kid;
  }

  private anyGrantOf(credId: string): Credential | undefined {
    if (credId === this.rootId) return this.rootCredential;
    const held = this.effective.byId.get(credId);
    return held === undefined ? undefined : credentialOf(held);
  }

  /**
   * One copy of each signer id: there are few signers, and an id read from a stored line is a
   * slice that would keep the whole line (the op's text) in memory.
   */
  private interned(signer: string): string {
    const held = this.signers.get(signer);
    if (held !== undefined) return held;
    const copy = Buffer.from(signer, 'utf8').toString('utf8');
    this.signers.set(copy, copy);
    return copy;
  }

  /** Records how to undo a change while `prepare` tries ops (see `undo`). */
  private changed(undo: () => void): void {
    this.undo?.push(undo);
  }

  /**
   * Adds an op to the set in compact form with the authority it brings and its share of the
   * digest, in time independent of the keyring's size (`foldAll` then updates the effective
   * credentials). `onDisk`: its text is in the store's files (not kept here once they keep texts).
   */
  private accept(op: KeyringOp, signerId: string, jws: string, onDisk = false): HeldGrant | HeldRevoke {
    const signer = this.interned(signerId);
    const hash = opHash(jws);
    const text = this.textSource === undefined || !onDisk ? jws : undefined;
    const hashText = hash.toString('base64url');
    const held =
      op.op === 'grant'
        ? heldGrantOf(op.cred, op.id, signer, op.iat, hashText, text)
        : // The credential id as a grant holds it already, if one does: one copy of the string.
          new HeldRevoke(
            op.id,
            this.effective.byId.get(op.credId)?.credId ?? op.credId,
            signer,
            op.iat,
            hashText,
            text,
          );
    this.ops.set(op.id, held);
    this.changed(() => this.ops.delete(op.id));
    this.sum.add(hash);
    this.digestCache = undefined;
    if (!(held instanceof HeldGrant)) return held;
    const credId = held.credId;
    if (
      held.key !== undefined &&
      (held.kind === 'signer' || held.kind === 'phone') &&
      !this.effective.byId.has(credId) &&
      !this.unfolded.has(credId)
    ) {
      this.unfolded.set(credId, held);
      this.changed(() => {
        this.unfolded.delete(credId);
        this.keyObjects.delete(credId);
      });
    }
    if (this.everOwners.has(signer)) {
      this.grantAuthority(held);
      return held;
    }
    const waiting = this.waitingGrants.get(signer);
    if (waiting) {
      waiting.push(held);
      this.changed(() => waiting.pop());
    } else {
      this.waitingGrants.set(signer, [held]);
      this.changed(() => this.waitingGrants.delete(signer));
    }
    return held;
  }

  /**
   * A grant by an owner: its credential may now grant (owner) or revoke (owner, service), and the
   * grants that were waiting for a new owner count. Grows everOwners / everRevokers to the same
   * fixpoint as going over every stored grant would.
   */
  private grantAuthority(first: HeldGrant): void {
    const queue: HeldGrant[] = [first];
    for (let grant = queue.pop(); grant !== undefined; grant = queue.pop()) {
      const { credId: id, role } = grant;
      if ((role === 'owner' || role === 'service') && !this.everRevokers.has(id)) {
        this.everRevokers.add(id);
        this.changed(() => this.everRevokers.delete(id));
      }
      if (role === 'owner' && !this.everOwners.has(id)) {
        this.everOwners.add(id);
        this.changed(() => this.everOwners.delete(id));
        const waiting = this.waitingGrants.get(id);
        if (waiting) queue.push(...waiting);
      }
    }
  }

  /**
   * Folds accepted ops into the effective credentials: each touches only its own credential,
   * unless it changes who is a live owner (an owner grant, the revoke of a live owner: rare),
   * which recomputes once.
   */
  private foldAll(added: readonly (HeldGrant | HeldRevoke)[]): void {
    const e = this.effective;
    const live = e.liveOwners;
    const movesOwners = (h: HeldGrant | HeldRevoke) =>
      h instanceof HeldGrant ? h.role === 'owner' : (live?.has(h.credId) ?? true);
    if (live === undefined || added.some(movesOwners)) {
      this.recompute();
      return;
    }
    for (const held of added) this.fold(held, e, live);
    // Every grant folded is in byId now, which is where its key is found.
    this.unfolded.clear();
  }

  private fold(held: HeldGrant | HeldRevoke, e: Effective, liveOwners: ReadonlySet<string>): void {
    const id = held.credId;
    if (held instanceof HeldRevoke) {
      if (id === this.rootId || e.revoked.has(id)) return;
      e.revoked.add(id);
      this.changed(() => e.revoked.delete(id));
      this.refreshUid(id, e.byId.get(id), e);
      return;
    }
    const prev = e.byId.get(id);
    if (!decides(held, liveOwners.has(held.signer), prev, prev !== undefined && liveOwners.has(prev.signer)))
      return;
    e.byId.set(id, held);
    this.changed(() => (prev ? e.byId.set(id, prev) : e.byId.delete(id)));
    this.refreshUid(id, prev, e);
  }

  /**
   * A credential's entry in the UID index after a change: out of its previous grant's UID list,
   * into its deciding grant's (byUidHash orders what it returns).
   */
  private refreshUid(id: string, prev: HeldGrant | undefined, e: Effective): void {
    const best = e.byId.get(id);
    if (best === undefined) return;
    const oldUid = prev?.uidHash;
    if (oldUid !== undefined)
      this.setUidList(
        e,
        oldUid,
        (e.byUid.get(oldUid) ?? []).filter((x) => x !== id),
      );
    const uid = best.uidHash;
    if (uid !== undefined) this.setUidList(e, uid, [...(e.byUid.get(uid) ?? []), id]);
  }

  /** Replaces a UID hash's list (a new array, so an undo can put the old one back). */
  private setUidList(e: Effective, uid: string, list: string[]): void {
    const old = e.byUid.get(uid);
    if (list.length > 0) e.byUid.set(uid, list);
    else e.byUid.delete(uid);
    this.changed(() => (old ? e.byUid.set(uid, old) : e.byUid.delete(uid)));
  }

  /** Recomputes the effective credentials from the op set. O(ops): loading, owner changes, suspects. */
  private recompute(): void {
    const revoked = new Set<string>();
    const ownerGrants: HeldGrant[] = [];
    for (const held of this.ops.values()) {
      if (held instanceof HeldRevoke) revoked.add(held.credId);
      else if (held.role === 'owner') ownerGrants.push(held);
    }
    for (const id of this.suspects.keys()) revoked.add(id);
    revoked.delete(this.rootId);
    // Owners whose chain to the root has no revoked link (few: iterate owner grants only).
    const liveOwners = new Set<string>([this.rootId]);
    let changed = true;
    while (changed) {
      changed = false;
      for (const { credId: id, signer } of ownerGrants) {
        if (!liveOwners.has(id) && liveOwners.has(signer) && !revoked.has(id)) {
          liveOwners.add(id);
          changed = true;
        }
      }
    }
    const byId = new Map<string, HeldGrant>();
    for (const held of this.ops.values()) {
      if (!(held instanceof HeldGrant)) continue;
      const prev = byId.get(held.credId);
      if (decides(held, liveOwners.has(held.signer), prev, prev !== undefined && liveOwners.has(prev.signer)))
        byId.set(held.credId, held);
    }
    const byUid = new Map<string, string[]>();
    for (const [id, held] of byId) {
      const uid = held.uidHash;
      if (uid === undefined) continue;
      const list = byUid.get(uid);
      if (list) list.push(id);
      else byUid.set(uid, [id]);
    }
    const old = this.effective;
    this.changed(() => {
      this.effective = old;
    });
    this.effective = { byId, byUid, revoked, liveOwners };
    this.unfolded.clear();
  }

  /** The status a decision sees, built from the compact record on each lookup. */
  private statusOf(held: HeldGrant): CredentialStatus {
    const e = this.effective;
    const suspect = this.suspects.get(held.credId);
    const revoked =
      suspect !== undefined ||
      e.revoked.has(held.credId) ||
      (e.liveOwners !== undefined && !e.liveOwners.has(held.signer));
    const credential = credentialOf(held);
    return suspect === undefined ? { credential, revoked } : { credential, revoked, suspect };
  }

  byId(id: string): CredentialStatus | undefined {
    if (this.snapshotCredentials !== undefined) return this.snapshotCredentials.get(id);
    const held = this.effective.byId.get(id);
    if (held !== undefined) return this.statusOf(held);
    return id === this.rootId ? { credential: this.rootCredential, revoked: false } : undefined;
  }

  /**
   * The credentials recorded with this UID hash, in credential id order: one order whichever path
   * built the index (a snapshot, a full recompute, or changes applied one by one), so a tap that
   * several credentials claim is decided the same way on every start.
   */
  byUidHash(hash: string): readonly CredentialStatus[] {
    let found: CredentialStatus[];
    if (this.snapshotCredentials !== undefined) found = this.snapshotCredentials.byUid(hash);
    else {
      const ids = this.effective.byUid.get(hash);
      if (ids === undefined) return [];
      found = ids.flatMap((id) => {
        const held = this.effective.byId.get(id);
        return held === undefined ? [] : [this.statusOf(held)];
      });
    }
    if (found.length > 1) found.sort((a, b) => byCodeUnits(a.credential.id, b.credential.id));
    return found;
  }

  /** How many credentials `list` would return, without building the list. */
  get credentialCount(): number {
    if (this.snapshotCredentials !== undefined) return this.snapshotCredentials.size;
    return this.effective.byId.size + (this.effective.byId.has(this.rootId) ? 0 : 1);
  }

  /** Every credential with a grant, revoked ones included, the root first. */
  list(): CredentialStatus[] {
    if (this.snapshotCredentials !== undefined) return [...this.snapshotCredentials.values()];
    const root = this.byId(this.rootId);
    const all = root ? [root] : [];
    for (const [id, held] of this.effective.byId) if (id !== this.rootId) all.push(this.statusOf(held));
    return all;
  }

  /**
   * Granted, unrevoked credentials with the insecureUid option (the start-up warning); on a
   * snapshot, decodes only those.
   */
  insecureUidCredentials(): CredentialStatus[] {
    const candidates =
      this.snapshotCredentials?.insecureUid() ??
      [...this.effective.byId.values()].map((h) => this.statusOf(h));
    return candidates.filter((s) => !s.revoked && s.credential.options.insecureUid === true);
  }

  /** Role of a credential that is granted and not revoked. */
  activeRole(id: string): Role | undefined {
    const s = this.byId(id);
    return s && !s.revoked ? s.credential.role : undefined;
  }

  /** Public key of a signing credential, for command verification. */
  keyOf(id: string): KeyObject | undefined {
    return this.keyObjectOf(id);
  }

  /** From any grant held (authenticity, not authority: a revoked owner's revokes still count). */
  private keyObjectOf(id: string): KeyObject | undefined {
    const cached = this.keyObjects.get(id);
    if (cached) return cached;
    const held = this.effective.byId.get(id) ?? this.unfolded.get(id);
    let jwk: PublicJwk | undefined;
    if (held?.key !== undefined && (held.kind === 'phone' || held.kind === 'signer')) jwk = jwkOf(held.key);
    else if (this.snapshotCredentials !== undefined && !this.snapshotCredentials.deniedByJournal(id)) {
      // Still loading: the snapshot holds every granted key (revoked ones too).
      const credential = this.snapshotCredentials.get(id)?.credential;
      if (credential?.publicKey && (credential.kind === 'phone' || credential.kind === 'signer'))
        jwk = credential.publicKey;
    }
    if (jwk === undefined) return undefined;
    const key = publicKeyFromJwk(jwk);
    if (this.keyObjects.size >= KEY_OBJECT_CACHE) {
      for (const cachedId of this.keyObjects.keys()) {
        if (cachedId === this.rootId) continue;
        this.keyObjects.delete(cachedId);
        break;
      }
    }
    this.keyObjects.set(id, key);
    return key;
  }

  /**
   * The keyring digest (see digestOfOps): equal digests mean equal keyrings, operation content
   * included (a damaged copy of an op changes it). Order-free, so each op adds to it in O(1).
   */
  digest(): string {
    if (this.snapshotDigest !== undefined) return this.snapshotDigest;
    this.digestCache ??= this.sum.digest(this.ops.size);
    return this.digestCache;
  }

  /**
   * Denies a credential because what the vehicle stored about it is damaged in every copy (a
   * lost revoke, a lost signature counter): decisions say `credential_suspect`, its signing
   * authority ends as if it were revoked. Until `clearSuspects` (state repair).
   */
  markSuspect(credentialId: string, reason: string): void {
    this.markSuspects([[credentialId, reason]]);
  }

  /** markSuspect for many at once (one recompute). */
  markSuspects(entries: Iterable<readonly [string, string]>): void {
    let changed = false;
    for (const [id, reason] of entries) {
      if (id === this.rootId || this.suspects.get(id) === reason) continue;
      this.suspects.set(id, reason);
      changed = true;
    }
    if (changed) this.recomputeIfDerived();
  }

  /** Suspect credentials with the reason. */
  suspectCredentials(): ReadonlyMap<string, string> {
    return this.suspects;
  }

  clearSuspects(): void {
    if (this.suspects.size === 0) return;
    this.suspects.clear();
    this.recomputeIfDerived();
  }

  /**
   * Suspects end a credential's authority, so live owners are derived again. Before the ops are
   * decoded the state comes from the snapshot, and lookups read the suspects as they are.
   */
  private recomputeIfDerived(): void {
    if (this.snapshotCredentials !== undefined) {
      // A suspect that may be a live owner also ends the grants it signed, which only the ops
      // tell: decode them now rather than let its grantees in meanwhile (suspects are rare).
      const owners = this.snapshotLiveOwners;
      for (const id of this.suspects.keys()) {
        if (owners === undefined || owners.has(id)) {
          this.materialize();
          return;
        }
      }
      this.snapshotCredentials = this.snapshotCredentials.withCurrentSuspects();
    } else if (this.snapshotDigest === undefined) this.recompute();
  }

  /** Every credential id in sort order, and the map it was taken from at which size (see page). */
  private pageIndex: { from: object; size: number; ids: string[] } | undefined;

  /**
   * One page of `list` in id order (the root among them): at most `limit` credentials whose ids
   * sort after `after` (any string: an id revoked, never held or no longer held works as well),
   * and `next`, the id to go on after, when more are left. Builds only the page's credentials
   * (list() builds all: 0.2-0.3 s at 100 000 keys), so listing never holds up a key at the reader.
   */
  page(
    after: string | undefined,
    limit: number,
  ): { credentials: CredentialStatus[]; next?: string; total: number } {
    const ids = this.sortedIds();
    let lo = 0;
    if (after !== undefined) {
      let hi = ids.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if ((ids[mid] as string) <= after) lo = mid + 1;
        else hi = mid;
      }
    }
    const credentials: CredentialStatus[] = [];
    let i = lo;
    for (; i < ids.length && credentials.length < limit; i++) {
      const status = this.byId(ids[i] as string);
      if (status !== undefined) credentials.push(status);
    }
    const total = this.credentialCount;
    return i < ids.length ? { credentials, next: ids[i - 1] as string, total } : { credentials, total };
  }

  /**
   * The credential ids sorted, kept between pages: sorted again only when the credential map is
   * replaced (start-up, a recompute); a fold only appends to it (a trial's undo deletes only what
   * it appended), so ids added since are merged in without a sort.
   */
  private sortedIds(): readonly string[] {
    const snapshot = this.snapshotCredentials;
    const from: ReadonlyMap<string, unknown> = snapshot ?? this.effective.byId;
    const cached = this.pageIndex;
    if (cached?.from === from && cached.size === from.size) return cached.ids;
    let ids: string[];
    if (cached?.from === from && cached.size < from.size && snapshot === undefined) {
      const added: string[] = [];
      let n = 0;
      for (const id of this.effective.byId.keys())
        if (n++ >= cached.size && id !== this.rootId) added.push(id);
      added.sort(byCodeUnits);
      ids = [];
      let a = 0;
      let b = 0;
      const old = cached.ids;
      while (a < old.length || b < added.length) {
        const x = old[a];
        const y = added[b];
        if (y === undefined || (x !== undefined && x < y)) {
          ids.push(x as string);
          a++;
        } else {
          ids.push(y);
          b++;
        }
      }
    } else {
      ids = snapshot !== undefined ? [...snapshot.idsUndecoded()] : [...this.effective.byId.keys()];
      if (!ids.includes(this.rootId)) ids.push(this.rootId);
      ids.sort(byCodeUnits);
    }
    this.pageIndex = { from, size: from.size, ids };
    return ids;
  }

  /**
   * Sorts the id index for `page` a slice at a time when it is missing or stale (after start-up
   * or a recompute): the agent awaits this before a page, so no sort of the whole keyring holds
   * its loop. A page right after it costs only the page (grants folded meanwhile are merged in).
   */
  async pageIndexReady(): Promise<void> {
    for (let tries = 0; tries < 3; tries++) {
      const snapshot = this.snapshotCredentials;
      const from: ReadonlyMap<string, unknown> = snapshot ?? this.effective.byId;
      const cached = this.pageIndex;
      if (cached?.from === from && cached.size <= from.size) return;
      const size = from.size;
      const ids = snapshot !== undefined ? [...snapshot.idsUndecoded()] : [...this.effective.byId.keys()];
      if (!ids.includes(this.rootId)) ids.push(this.rootId);
      const sorted = await sortInSlices(ids);
      // Kept if the map is the one sorted and only grew meanwhile (sortedIds merges what was added).
      if ((this.snapshotCredentials ?? this.effective.byId) === from && from.size >= size) {
        this.pageIndex = { from, size, ids: sorted };
        return;
      }
    }
  }
}

/**
 * What ops added after a snapshot (`ops`, the store's journal) do to its credentials until every
 * op is decoded, or undefined when the snapshot alone cannot tell (the store then decodes every
 * op before deciding). A revoke denies its credential at once; but revoking a live owner also
 * retires what it granted, which the snapshot does not record, so that (or not knowing the live
 * owners: a summary written before they were kept) needs every op. A grant is denied until the
 * ops are decoded (they may revoke it, or hold a newer grant of it); an owner grant can make
 * other grants live or dead, so that needs every op too. `liveOwners`: the summary's.
 */
export function journalOverlay(
  ops: readonly KeyringOp[],
  liveOwners: ReadonlySet<string> | undefined,
): JournalOverlay | undefined {
  const revoked = new Set<string>();
  const granted = new Set<string>();
  for (const op of ops) {
    if (op.op === 'grant') {
      if (op.cred.role === 'owner') return undefined;
      granted.add(op.cred.id);
    } else {
      if (liveOwners === undefined || liveOwners.has(op.credId)) return undefined;
      revoked.add(op.credId);
    }
  }
  return { revoked, granted };
}

/** Ops decoded in the background from which on the garbage left is worth a full collection. */
const COLLECT_AFTER_DECODING = 5000;
const COLLECT_DELAY_MS = 1000;

let fullGc: (() => void) | undefined;

/**
 * A full garbage collection, without running the whole process with --expose-gc: the flag is set
 * only while a new context is made to take `gc` from, then cleared again.
 */
function collectGarbage(): void {
  if (fullGc === undefined) {
    setFlagsFromString('--expose-gc');
    fullGc = runInNewContext('gc') as () => void;
    setFlagsFromString('--no-expose-gc');
  }
  fullGc();
}

/** Key objects kept at once (signers and recently seen phones); the rest are made when asked for. */
const KEY_OBJECT_CACHE = 1024;

/** SHA-256 of an op's JWS: its share of the keyring digest. */
function opHash(jws: string): Buffer {
  return createHash('sha256').update(jws, 'utf8').digest();
}

/** Whether a grant (live or not) decides its credential over the one that does now. */
function decides(grant: HeldGrant, live: boolean, prev: HeldGrant | undefined, prevLive: boolean): boolean {
  // A live grant beats a dead one; among equals the newest (iat, then id) wins.
  return (
    prev === undefined ||
    (live && !prevLive) ||
    (live === prevLive && (grant.iat > prev.iat || (grant.iat === prev.iat && grant.id > prev.id)))
  );
}

/** The sum mod 2^256 of SHA-256 values, as eight 32-bit limbs, least significant first. */
class DigestSum {
  private limbs = new Uint32Array(8);

  add(hash: Buffer): void {
    let carry = 0;
    for (let i = 0; i < 8; i++) {
      const t = (this.limbs[i] ?? 0) + hash.readUInt32BE(28 - 4 * i) + carry;
      this.limbs[i] = t >>> 0;
      carry = t > 0xffffffff ? 1 : 0;
    }
  }

  copy(): Uint32Array {
    return this.limbs.slice();
  }

  set(limbs: Uint32Array): void {
    this.limbs = limbs.slice();
  }

  /** The sum as 64 hex digits (most significant first), as the digest hashes it. */
  hex(): string {
    let hex = '';
    for (let i = 7; i >= 0; i--) hex += (this.limbs[i] ?? 0).toString(16).padStart(8, '0');
    return hex;
  }

  /** The sum `hex` gave. */
  static fromHex(hex: string): DigestSum {
    const sum = new DigestSum();
    for (let i = 0; i < 8; i++) sum.limbs[i] = Number.parseInt(hex.slice(56 - 8 * i, 64 - 8 * i), 16);
    return sum;
  }

  /** The digest of a set of `count` ops whose hashes sum to this. */
  digest(count: number): string {
    return createHash('sha256').update(`${DIGEST_V2}\n${count}\n${this.hex()}`, 'utf8').digest('hex');
  }
}

/**
 * The digest of a set whose ops' hashes sum to `sumHex` (Keyring.digestSum) with `jwsList` added:
 * a snapshot's set with the ops added since, before any of them is decoded.
 */
export function digestWithOps(sumHex: string, count: number, jwsList: readonly string[]): string {
  const sum = DigestSum.fromHex(sumHex);
  for (const jws of jwsList) sum.add(opHash(jws));
  return sum.digest(count + jwsList.length);
}

const DIGEST_V2 = 'vehicle-agent keyring digest v2';

/**
 * The keyring digest of a set of ops (docs/keyring.md "Digest"): hex SHA-256 of
 * `vehicle-agent keyring digest v2\n<op count>\n<sum>`, where <sum> is the sum mod 2^256 of the
 * SHA-256 of every op's JWS, as 64 hex digits. The order of the ops does not matter, so a keyring
 * adds an op to it in constant time; the cloud computes the same from its op set.
 */
export function digestOfOps(ops: Iterable<{ readonly id: string; readonly jws: string }>): string {
  const sum = new DigestSum();
  let count = 0;
  for (const { jws } of ops) {
    sum.add(opHash(jws));
    count++;
  }
  return sum.digest(count);
}

/** The digest summaries held before v2: SHA-256 over `<id> <base64url SHA-256 of the JWS>\n` by id. */
export function digestOfOpsV1(ops: Iterable<{ readonly id: string; readonly jws: string }>): string {
  const sorted = [...ops].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const h = createHash('sha256');
  for (const { id, jws } of sorted)
    h.update(id)
      .update(' ')
      .update(createHash('sha256').update(jws, 'utf8').digest('base64url'))
      .update('\n');
  return h.digest('hex');
}

/** Credential from an already validated wire form (stored ops were validated on add). Hot at start-up. */
function credentialFromTrustedWire(w: CredentialWire): Credential {
  const c: { -readonly [K in keyof Credential]: Credential[K] } = {
    id: w.id,
    kind: w.kind,
    role: w.role,
    options: w.options ?? {},
  };
  if (w.name !== undefined) c.name = w.name;
  if (w.notBefore !== undefined) c.notBefore = Date.parse(w.notBefore);
  if (w.notAfter !== undefined) c.notAfter = Date.parse(w.notAfter);
  if (w.publicKey !== undefined) c.publicKey = w.publicKey;
  if (w.uidHash !== undefined) c.uidHash = w.uidHash;
  if (w.keyHandle !== undefined) c.keyHandle = w.keyHandle;
  if (w.rpId !== undefined) c.rpId = w.rpId;
  return c;
}

/** Builds and signs a grant with a signer's private key. */
export function signGrant(
  credential: Credential,
  vehicleId: string,
  signerKey: KeyObject,
  signerId: string,
  iatSeconds: number,
  opId: string = newOpId(),
): string {
  const op: GrantOp = {
    v: 1,
    op: 'grant',
    id: opId,
    vid: vehicleId,
    iat: iatSeconds,
    cred: credentialToWire(credential),
  };
  return signJws(op, signerKey, signerId, KEYRING_OP_TYP);
}

export function signRevoke(
  credId: string,
  vehicleId: string,
  signerKey: KeyObject,
  signerId: string,
  iatSeconds: number,
  reason?: string,
  opId: string = newOpId(),
): string {
  const op: RevokeOp = {
    v: 1,
    op: 'revoke',
    id: opId,
    vid: vehicleId,
    iat: iatSeconds,
    credId,
    ...(reason ? { reason } : {}),
  };
  return signJws(op, signerKey, signerId, KEYRING_OP_TYP);
}
