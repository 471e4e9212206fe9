import type { Credential } from '../core/types.js';
import type { CredentialStatus } from './credential-lookup.js';
import type { CredentialWire } from './credential-wire.js';

/**
 * The effective credentials of the keyring's own checksummed snapshot (src/store/keyring-summary.ts),
 * indexed at open and decoded one by one when asked for: start-up at 100 000 credentials does not
 * wait for 100 000 objects to be built. The root is not in it.
 */
export interface SnapshotCredentials {
  readonly size: number;
  ids(): Iterable<string>;
  has(id: string): boolean;
  /** Whether the snapshot holds it revoked (or denied); undefined when it holds no such id. */
  revoked(id: string): boolean | undefined;
  /** Its wire form; throws when its line does not decode (the lookup then denies it). */
  wire(id: string): CredentialWire | undefined;
  idsByUid(uidHash: string): readonly string[];
  /** Credentials with the insecureUid option, revoked or not. */
  insecureUidIds(): readonly string[];
}

const UNDECODABLE = 'its entry in the keyring snapshot does not decode';

/**
 * What the journal's ops (added after the snapshot was written, not decoded yet) change in the
 * snapshot's credentials until the ops are decoded (docs/keyring.md "Start-up"): credentials they
 * revoke are revoked, credentials they grant are denied (a grant is decided once every op is
 * decoded: the ops may hold a revoke of it, or a newer grant, that the snapshot does not show).
 */
export interface JournalOverlay {
  /** Credential ids a journal op revokes. */
  readonly revoked: ReadonlySet<string>;
  /** Credential ids a journal op grants: denied until the ops are decoded. */
  readonly granted: ReadonlySet<string>;
}

/** Whether the overlay denies this credential until the ops are decoded. */
export function overlayDenies(overlay: JournalOverlay | undefined, id: string): boolean {
  return overlay !== undefined && (overlay.revoked.has(id) || overlay.granted.has(id));
}

/**
 * The keyring's credential map (byId) while it runs on a snapshot: the root, then the snapshot's
 * credentials, each decoded on its first lookup and kept; suspects (the keyring's live map) are
 * denied. Iterating decodes them all (listing the keys), which lookups never do.
 */
export class SnapshotCredentialMap implements ReadonlyMap<string, CredentialStatus> {
  private readonly decoded = new Map<string, CredentialStatus>();

  constructor(
    private readonly root: CredentialStatus,
    private readonly table: SnapshotCredentials,
    private readonly fromWire: (w: CredentialWire) => Credential,
    private readonly suspects: ReadonlyMap<string, string>,
    private readonly overlay?: JournalOverlay,
  ) {}

  /** The same credentials with the suspects as they are now (after markSuspects). */
  withCurrentSuspects(): SnapshotCredentialMap {
    return new SnapshotCredentialMap(this.root, this.table, this.fromWire, this.suspects, this.overlay);
  }

  /** Whether the journal overlay denies this credential until the ops are decoded. */
  deniedByJournal(id: string): boolean {
    return overlayDenies(this.overlay, id);
  }

  get size(): number {
    return this.table.size + (this.table.has(this.root.credential.id) ? 0 : 1);
  }

  has(id: string): boolean {
    return id === this.root.credential.id || this.table.has(id);
  }

  get(id: string): CredentialStatus | undefined {
    if (id === this.root.credential.id) return this.root;
    const held = this.decoded.get(id);
    if (held !== undefined) return held;
    const revoked = this.table.revoked(id);
    if (revoked === undefined) return undefined;
    let status: CredentialStatus;
    try {
      const wire = this.table.wire(id);
      if (wire === undefined) return undefined;
      status = { credential: this.fromWire(wire), revoked };
    } catch {
      // Fail secure: a credential whose entry cannot be read is denied, nothing else is touched.
      status = {
        credential: { id, kind: 'phone', role: 'guest', options: {} },
        revoked: true,
        suspect: UNDECODABLE,
      };
    }
    const suspect = this.suspects.get(id);
    if (suspect !== undefined) status = { ...status, revoked: true, suspect };
    else if (overlayDenies(this.overlay, id)) status = { ...status, revoked: true };
    this.decoded.set(id, status);
    return status;
  }

  byUid(uidHash: string): CredentialStatus[] {
    const out: CredentialStatus[] = [];
    for (const id of this.table.idsByUid(uidHash)) {
      const s = this.get(id);
      if (s !== undefined) out.push(s);
    }
    return out;
  }

  /** Insecure-UID credentials, decoding only those. */
  insecureUid(): CredentialStatus[] {
    return this.table.insecureUidIds().flatMap((id) => this.get(id) ?? []);
  }

  *entries(): MapIterator<[string, CredentialStatus]> {
    yield [this.root.credential.id, this.root];
    for (const id of this.table.ids()) {
      if (id === this.root.credential.id) continue;
      const s = this.get(id);
      if (s !== undefined) yield [id, s];
    }
  }

  *keys(): MapIterator<string> {
    for (const [id] of this.entries()) yield id;
  }

  /** The ids, the root first, without decoding any credential (a page of the keys list). */
  *idsUndecoded(): IterableIterator<string> {
    yield this.root.credential.id;
    for (const id of this.table.ids()) if (id !== this.root.credential.id) yield id;
  }

  *values(): MapIterator<CredentialStatus> {
    for (const [, s] of this.entries()) yield s;
  }

  [Symbol.iterator](): MapIterator<[string, CredentialStatus]> {
    return this.entries();
  }

  forEach(
    fn: (value: CredentialStatus, key: string, map: ReadonlyMap<string, CredentialStatus>) => void,
  ): void {
    for (const [id, s] of this.entries()) fn(s, id, this);
  }
}

/** byUid beside a SnapshotCredentialMap. */
export class SnapshotUidMap implements ReadonlyMap<string, readonly CredentialStatus[]> {
  constructor(private readonly credentials: SnapshotCredentialMap) {}
  get size(): number {
    return [...this.keys()].length;
  }
  has(uid: string): boolean {
    return this.credentials.byUid(uid).length > 0;
  }
  get(uid: string): readonly CredentialStatus[] | undefined {
    const list = this.credentials.byUid(uid);
    return list.length > 0 ? list : undefined;
  }
  *entries(): MapIterator<[string, readonly CredentialStatus[]]> {
    const byUid = new Map<string, CredentialStatus[]>();
    for (const s of this.credentials.values()) {
      const uid = s.credential.uidHash;
      if (uid === undefined) continue;
      const list = byUid.get(uid);
      if (list) list.push(s);
      else byUid.set(uid, [s]);
    }
    yield* byUid.entries();
  }
  *keys(): MapIterator<string> {
    for (const [uid] of this.entries()) yield uid;
  }
  *values(): MapIterator<readonly CredentialStatus[]> {
    for (const [, list] of this.entries()) yield list;
  }
  [Symbol.iterator](): MapIterator<[string, readonly CredentialStatus[]]> {
    return this.entries();
  }
  forEach(
    fn: (
      value: readonly CredentialStatus[],
      key: string,
      map: ReadonlyMap<string, readonly CredentialStatus[]>,
    ) => void,
  ): void {
    for (const [uid, list] of this.entries()) fn(list, uid, this);
  }
}
