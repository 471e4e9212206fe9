import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CredentialWire } from '../access/credential-wire.js';
import { credentialToWire } from '../access/credential-wire.js';
import { decodeTrustedOp, type Keyring, type PendingOpsSource, type StoredOp } from '../access/keyring.js';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { readFileIfExists, writeFileAtomic } from '../store/atomic.js';
import type { WriteHealth } from '../store/group-commit.js';
import { Journal } from '../store/journal.js';
import type { KeyringPersistence } from './agent.js';
import { STATE_FILES } from './provision.js';

/**
 * The keyring on disk: a snapshot (keyring.json, replaced atomically) plus a journal of operations
 * added since (keyring.journal, one fsynced record per op). Compaction folds the journal into a
 * new snapshot (when it grows, and at stop); a crash between the two steps only leaves duplicates,
 * which load ignores. A corrupt record in the middle of the journal stops start-up (never silently
 * drop a revoke).
 *
 * Snapshot format 2 is two files: keyring.json holds the effective credentials, the op count and
 * the digest; keyring.ops holds the ops, one `<signer> <jws>` line each (written first, so
 * keyring.json, the commit point, never names ops that are not on disk). With an empty journal,
 * start-up reads only keyring.json; the ops are read and decoded in the background after start (or
 * at once by whatever needs them), and if they disagree with the summary they win.
 * Format 1 (ops inside keyring.json) is still read, by the slower path that decodes everything.
 *
 * `persist` only appends; the caller applies the ops to the keyring once they are durable, and
 * compaction (`compactIfDue`, after applying) writes the snapshot from the keyring inside the
 * journal's rewrite, keeping any journal record the keyring does not hold yet. So a snapshot never
 * holds an op whose own write failed, and a compaction never drops one that was written.
 */
interface StoredRecord {
  readonly jws: string;
  readonly signer: string;
}

interface SnapshotV2 {
  readonly format: 2;
  readonly digest: string;
  readonly opCount: number;
  /** [credential, revoked] for every credential with a grant (the root excluded). */
  readonly credentials: readonly (readonly [CredentialWire, boolean])[];
}

interface SnapshotV1 {
  readonly format: 1;
  readonly ops: readonly StoredRecord[];
}

const COMPACT_AFTER = 1000;

function parseRecord(value: unknown): StoredRecord {
  const r = value as Partial<StoredRecord> | null;
  if (typeof r !== 'object' || r === null || typeof r.jws !== 'string' || typeof r.signer !== 'string') {
    throw new Error('a keyring record needs jws and signer strings');
  }
  return { jws: r.jws, signer: r.signer };
}

async function readSnapshot(path: string): Promise<SnapshotV1 | SnapshotV2 | undefined> {
  const bytes = await readFileIfExists(path);
  if (bytes === undefined) return undefined;
  const corrupt = (what: string) =>
    new AgentError('state_corrupt', `${path} is corrupt: ${what}`, { file: path, problem: what });
  let file: Record<string, unknown>;
  try {
    // Plain toString, not a strict decoder: this file is ours, written atomically, and large.
    file = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch (err) {
    throw corrupt(`not valid JSON (${(err as Error).message})`);
  }
  if (typeof file !== 'object' || file === null) throw corrupt('expected an object');
  try {
    if (file.format === 1) {
      if (!Array.isArray(file.ops)) throw new Error('format 1 needs ops');
      return { format: 1, ops: (file.ops as unknown[]).map(parseRecord) };
    }
    if (file.format === 2) {
      const { digest, credentials, opCount } = file;
      if (typeof digest !== 'string' || !Array.isArray(credentials) || !Number.isSafeInteger(opCount)) {
        throw new Error('format 2 needs digest, opCount and credentials');
      }
      for (const c of credentials as unknown[]) {
        const [wire, revoked] = Array.isArray(c) ? c : [];
        const w = wire as Partial<CredentialWire> | undefined;
        if (
          typeof w?.id !== 'string' ||
          typeof w.kind !== 'string' ||
          typeof w.role !== 'string' ||
          typeof revoked !== 'boolean'
        ) {
          throw new Error('a credential entry must be [credential, revoked]');
        }
      }
      return file as unknown as SnapshotV2;
    }
    throw new Error('format must be 1 or 2');
  } catch (err) {
    throw corrupt((err as Error).message);
  }
}

/** Parses keyring.ops: one `<signer> <jws>` line per op. */
function parseOpsText(text: string, path: string, expected: number | undefined): StoredRecord[] {
  const ops: StoredRecord[] = [];
  let at = 0;
  while (at < text.length) {
    let nl = text.indexOf('\n', at);
    if (nl < 0) nl = text.length;
    const space = text.indexOf(' ', at);
    if (space < 0 || space > nl) {
      throw new AgentError(
        'state_corrupt',
        `${path} is corrupt: line ${ops.length + 1} is not "<signer> <jws>"`,
        { file: path },
      );
    }
    ops.push({ signer: text.slice(at, space), jws: text.slice(space + 1, nl) });
    at = nl + 1;
  }
  // More ops than counted is a crash between writing keyring.ops and keyring.json (ops are never
  // removed, and the ops file is written first): fine, the ops win. Fewer is damage.
  if (expected !== undefined && ops.length < expected) {
    throw new AgentError(
      'state_corrupt',
      `${path} is corrupt: ${ops.length} ops where the snapshot counts ${expected}`,
      { file: path },
    );
  }
  return ops;
}

function opsFileSource(path: string, expected: number): PendingOpsSource {
  return {
    read: async () => parseOpsText((await readFileIfExists(path))?.toString('utf8') ?? '', path, expected),
    readSync: () => {
      let text = '';
      try {
        text = readFileSync(path, 'utf8');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
          throw new AgentError('state_io', `cannot read ${path}: ${(err as Error).message}`, { file: path });
        }
      }
      return parseOpsText(text, path, expected);
    },
  };
}

/** Writes keyring.ops, then keyring.json (the commit point). */
async function writeSnapshotFiles(stateDir: string, keyring: Keyring): Promise<void> {
  const lines: string[] = [];
  for (const o of keyring.storedOps()) lines.push(`${o.signer} ${o.jws}\n`);
  const credentials: [CredentialWire, boolean][] = [];
  for (const s of keyring.list()) {
    if (s.credential.id !== keyring.rootId) credentials.push([credentialToWire(s.credential), s.revoked]);
  }
  const file: SnapshotV2 = { format: 2, digest: keyring.digest(), opCount: lines.length, credentials };
  await writeFileAtomic(join(stateDir, STATE_FILES.keyringOps), lines.join(''), { mode: 0o600 });
  await writeFileAtomic(join(stateDir, STATE_FILES.keyringSnapshot), JSON.stringify(file), { mode: 0o600 });
}

function decodeAll(records: readonly StoredRecord[], file: string): StoredOp[] {
  try {
    return records.map((r) => decodeTrustedOp(r.jws, r.signer));
  } catch (err) {
    throw new AgentError(
      'state_corrupt',
      `${file} holds a damaged keyring operation: ${(err as Error).message}`,
      { file },
    );
  }
}

export class KeyringStore implements KeyringPersistence {
  private constructor(
    private readonly stateDir: string,
    private readonly journal: Journal<StoredRecord>,
    private readonly keyring: Keyring,
    private readonly log: Logger,
  ) {}

  /** Loads the stored ops into `keyring` (trusted: they were verified when added). */
  static async open(stateDir: string, keyring: Keyring, log: Logger): Promise<KeyringStore> {
    const snapshotPath = join(stateDir, STATE_FILES.keyringSnapshot);
    const snapshot = await readSnapshot(snapshotPath);
    const { journal, records, recovery } = await Journal.open<StoredRecord>(
      join(stateDir, STATE_FILES.keyringJournal),
      {
        parse: parseRecord,
        logger: log,
      },
    );
    try {
      if (recovery.truncatedBytes > 0)
        log.warn({ bytes: recovery.truncatedBytes }, 'keyring journal: cut a torn last record');
      const opsPath = join(stateDir, STATE_FILES.keyringOps);
      if (snapshot?.format === 2 && records.length === 0) {
        keyring.loadSnapshot({ ...snapshot, ops: opsFileSource(opsPath, snapshot.opCount) });
      } else {
        const base =
          snapshot?.format === 2
            ? opsFileSource(opsPath, snapshot.opCount).readSync()
            : (snapshot?.ops ?? []);
        const stored = decodeAll(base, snapshot?.format === 2 ? opsPath : snapshotPath);
        stored.push(...decodeAll(records, journal.path));
        keyring.loadTrusted(stored);
      }
    } catch (err) {
      await journal.close();
      throw err;
    }
    const store = new KeyringStore(stateDir, journal, keyring, log);
    if (records.length > COMPACT_AFTER) await store.compact();
    return store;
  }

  /** Writes a keyring as the snapshot (init and demo provisioning). */
  static async writeSnapshot(stateDir: string, keyring: Keyring): Promise<void> {
    await writeSnapshotFiles(stateDir, keyring);
  }

  /** Serialises persist and compact: an op appended during a compaction must not be wiped by it. */
  private chain: Promise<void> = Promise.resolve();
  /** Records appended since the last compaction (a compaction keeps those not applied yet). */
  private appended: StoredRecord[] = [];

  private serial(task: () => Promise<void>): Promise<void> {
    const run = this.chain.then(task);
    this.chain = run.catch(() => {});
    return run;
  }

  /**
   * Appends ops to the journal; resolves once they are durable, rejects (state_io) when they could
   * not be written, in which case none of them is in the file (the journal cuts a failed batch
   * off before it reports the failure). Does not touch the keyring: the caller applies them.
   */
  persist(ops: readonly StoredRecord[]): Promise<void> {
    return this.serial(async () => {
      const records = ops.map((o) => ({ jws: o.jws, signer: o.signer }));
      await Promise.all(records.map((r) => this.journal.append(r)));
      this.appended.push(...records);
    });
  }

  /** Compacts when the journal has grown past its limit (call after applying persisted ops). */
  compactIfDue(): Promise<void> {
    return this.serial(async () => {
      if (this.journal.recordCount > COMPACT_AFTER) await this.compactNow();
    });
  }

  compact(): Promise<void> {
    return this.serial(() => this.compactNow());
  }

  /** Write failures, refusals and stalls of the keyring journal (health, /metrics). */
  get writeHealth(): WriteHealth {
    return this.journal.writeHealth;
  }

  private async compactNow(): Promise<void> {
    // Durable but not yet applied (a caller between persist and apply): stays in the journal.
    const keep = this.appended.filter((r) => !this.keyring.has(decodeTrustedOp(r.jws, r.signer).op.id));
    // The snapshot is written inside the rewrite, after every earlier append is durable and
    // before the journal is replaced: a crash leaves the old journal, or the snapshot plus `keep`.
    await this.journal.rewrite(keep, () => writeSnapshotFiles(this.stateDir, this.keyring));
    this.appended = keep;
    this.log.info({ ops: this.keyring.size }, 'keyring compacted');
  }

  /** Folds the journal into the snapshot (so the next start takes the fast path), then closes. */
  async close(): Promise<void> {
    await this.chain;
    if (this.journal.recordCount > 0) {
      await this.compact().catch((err: unknown) =>
        this.log.warn({ code: 'state_io', err: String(err) }, 'keyring compaction at stop failed'),
      );
    }
    await this.journal.close();
  }
}
