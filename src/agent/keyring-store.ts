import { join } from 'node:path';
import { decodeTrustedOp, type Keyring, type StoredOp } from '../access/keyring.js';
import { AgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { readJsonFileIfExists, writeFileAtomic } from '../store/atomic.js';
import { Journal } from '../store/journal.js';
import type { KeyringPersistence } from './agent.js';
import { STATE_FILES } from './provision.js';

/**
 * The keyring on disk: a snapshot (keyring.json, replaced atomically) plus a journal of operations
 * added since (keyring.journal, one fsynced record per op). Compaction folds the journal into a
 * new snapshot; a crash between the two steps only leaves duplicates, which load ignores.
 * A corrupt record in the middle of the journal stops start-up (never silently drop a revoke).
 */
interface StoredRecord {
  readonly jws: string;
  readonly signer: string;
}

interface SnapshotFile {
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

function parseSnapshot(value: unknown): SnapshotFile {
  const s = value as Partial<SnapshotFile> | null;
  if (typeof s !== 'object' || s === null || s.format !== 1 || !Array.isArray(s.ops))
    throw new Error('expected {format: 1, ops: [...]}');
  return { format: 1, ops: s.ops.map(parseRecord) };
}

export class KeyringStore implements KeyringPersistence {
  private constructor(
    private readonly snapshotPath: string,
    private readonly journal: Journal<StoredRecord>,
    private readonly keyring: Keyring,
    private readonly log: Logger,
  ) {}

  /** Loads the stored ops into `keyring` (trusted: they were verified when added). */
  static async open(stateDir: string, keyring: Keyring, log: Logger): Promise<KeyringStore> {
    const snapshotPath = join(stateDir, STATE_FILES.keyringSnapshot);
    const snapshot = await readJsonFileIfExists(snapshotPath, { parse: parseSnapshot });
    const { journal, records, recovery } = await Journal.open<StoredRecord>(
      join(stateDir, STATE_FILES.keyringJournal),
      {
        parse: parseRecord,
        logger: log,
      },
    );
    if (recovery.truncatedBytes > 0)
      log.warn({ bytes: recovery.truncatedBytes }, 'keyring journal: cut a torn last record');
    const stored: StoredOp[] = [];
    try {
      for (const r of snapshot?.ops ?? []) stored.push(decodeTrustedOp(r.jws, r.signer));
      for (const r of records) stored.push(decodeTrustedOp(r.jws, r.signer));
    } catch (err) {
      throw new AgentError(
        'state_corrupt',
        `${snapshotPath} or its journal holds a damaged keyring operation: ${(err as Error).message}`,
        {
          file: snapshotPath,
        },
      );
    }
    keyring.loadTrusted(stored);
    const store = new KeyringStore(snapshotPath, journal, keyring, log);
    if (records.length > COMPACT_AFTER) await store.compact();
    return store;
  }

  /** Writes a keyring's ops as the snapshot (used by init and demo provisioning). */
  static async writeSnapshot(stateDir: string, ops: Iterable<StoredRecord>): Promise<void> {
    const file: SnapshotFile = { format: 1, ops: [...ops].map((o) => ({ jws: o.jws, signer: o.signer })) };
    await writeFileAtomic(join(stateDir, STATE_FILES.keyringSnapshot), JSON.stringify(file), { mode: 0o600 });
  }

  /** Serialises persist and compact: an op appended during a compaction must not be wiped by it. */
  private chain: Promise<void> = Promise.resolve();

  private serial(task: () => Promise<void>): Promise<void> {
    const run = this.chain.then(task);
    this.chain = run.catch(() => {});
    return run;
  }

  persist(ops: readonly StoredRecord[]): Promise<void> {
    return this.serial(async () => {
      await Promise.all(ops.map((o) => this.journal.append({ jws: o.jws, signer: o.signer })));
      if (this.journal.recordCount > COMPACT_AFTER) await this.compactNow();
    });
  }

  compact(): Promise<void> {
    return this.serial(() => this.compactNow());
  }

  private async compactNow(): Promise<void> {
    const ops = [...this.keyring.storedOps()];
    const file: SnapshotFile = { format: 1, ops: ops.map((o) => ({ jws: o.jws, signer: o.signer })) };
    await writeFileAtomic(this.snapshotPath, JSON.stringify(file), { mode: 0o600 });
    await this.journal.rewrite([]);
    this.log.info({ ops: ops.length }, 'keyring compacted');
  }

  async close(): Promise<void> {
    await this.chain;
    await this.journal.close();
  }
}
