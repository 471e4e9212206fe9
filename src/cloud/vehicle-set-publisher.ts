import type { KeyObject } from 'node:crypto';
import { readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { setImmediate as yieldToIo } from 'node:timers/promises';
import type { Logger } from '../core/logger.js';
import { fitsOneSet, MAX_SET_PARTS, setDigestOf, signKeyringSet } from './keyring-set.js';
import {
  addSums,
  digestOfSum,
  isPowerOfTwo,
  opHash,
  PartSums,
  partOfHash,
  planParts,
  signVehicleManifest,
  signVehiclePart,
} from './vehicle-set.js';

/**
 * Publishes the vehicle's keyring set (docs/mqtt.md "Chunked sets"): one set message while it
 * fits, else stable parts and a manifest, republishing only the parts a change touched. What was
 * last published (part count, each part's sum and count, the manifest) is kept in a file, so a
 * reconnect or a restart with the set unchanged publishes the manifest alone.
 */

/** Ops hashed, or grouped, between two turns of the event loop. */
const SLICE = 4096;

export interface VehicleSetKeyring {
  digest(): string;
  /** Every op held: its id and the base64url SHA-256 of its JWS. */
  heldOps(): Iterable<{ readonly id: string; readonly hash: string }>;
  opTexts(): Promise<string[]>;
  opTextsOf(ids: ReadonlySet<string>): Promise<string[]>;
}

export interface VehicleSetTopics {
  readonly set: string;
  /** `<parts>/<n>` is part n. */
  readonly parts: string;
  readonly manifest: string;
}

export interface VehicleSetPublisherDeps {
  readonly vehicleId: string;
  readonly signer: { readonly key: KeyObject; readonly kid: string };
  readonly keyring: VehicleSetKeyring;
  readonly topics: VehicleSetTopics;
  /** Retained, QoS 1; an empty payload clears the topic. */
  publish(topic: string, payload: string): Promise<void>;
  /** Seconds since the epoch. */
  nowS(): number;
  /** Largest message, bytes. */
  readonly maxBytes: number;
  /** The file that keeps what was published (JSON). */
  readonly stateFile: string;
  /** The file the format before stable parts kept its part count in (read for leftovers). */
  readonly legacyPartsFile: string;
  readonly log: Logger;
}

/** What a round is asked to publish beyond a change. */
export interface VehicleSetAsk {
  /** Everything (a request naming nothing). */
  readonly all: boolean;
  /** These parts (a request naming them). */
  readonly parts: readonly number[];
  /** The manifest, or the set message while it fits one (a connect). */
  readonly manifest: boolean;
}

export type RoundOutcome =
  | 'unchanged'
  | 'set'
  | 'parts'
  | 'manifest'
  /** The keyring changed while it was read: the next round tries again. */
  | 'raced';

interface PublishedParts {
  readonly kind: 'parts';
  readonly digest: string;
  readonly iat: number;
  readonly parts: number;
  readonly sums: readonly string[];
  readonly counts: readonly number[];
  readonly manifest: string;
}

interface PublishedSet {
  readonly kind: 'set';
  readonly digest: string;
  readonly iat: number;
}

type Published = PublishedParts | PublishedSet;

export interface PublisherStats {
  /** Messages and bytes published (parts, manifests, set messages; clears not counted). */
  readonly messages: number;
  readonly bytes: number;
  readonly partsPublished: number;
}

export class VehicleSetPublisher {
  private state: Published | undefined;
  /** Part topics that may hold a retained message, whatever state says (a run cut short). */
  private retained: number;
  private counters = { messages: 0, bytes: 0, partsPublished: 0 };

  private constructor(
    private readonly deps: VehicleSetPublisherDeps,
    state: Published | undefined,
    retained: number,
  ) {
    this.state = state;
    this.retained = retained;
  }

  static async open(deps: VehicleSetPublisherDeps): Promise<VehicleSetPublisher> {
    const { published, retained } = await readState(deps.stateFile);
    // The count the format before stable parts kept: its parts are leftovers to clear.
    const legacy = await readCount(deps.legacyPartsFile);
    return new VehicleSetPublisher(deps, published, Math.max(legacy, retained));
  }

  /** The set as last published: its digest and parts (1: one set message). */
  get published(): { readonly digest: string; readonly parts: number } | undefined {
    const s = this.state;
    return s === undefined ? undefined : { digest: s.digest, parts: s.kind === 'parts' ? s.parts : 1 };
  }

  get stats(): PublisherStats {
    return { ...this.counters };
  }

  /** Whether the set is published in parts (a change then costs the parts it touches). */
  get chunked(): boolean {
    return this.state?.kind === 'parts';
  }

  /** Whether the keyring's digest is the one last published. */
  current(): boolean {
    return this.state?.digest === this.deps.keyring.digest();
  }

  /**
   * One round: a change since the last publish (its parts and the manifest), what `ask` names,
   * or nothing. A message that fails to go ends the round (it throws); the next starts again.
   */
  async round(ask: VehicleSetAsk): Promise<RoundOutcome> {
    const s = this.state;
    const digest = this.deps.keyring.digest();
    if (s?.kind === 'parts' && !ask.all) {
      if (digest !== s.digest || ask.parts.length > 0) return await this.changedParts(s, ask.parts);
      if (!ask.manifest) return 'unchanged';
      await this.send(this.deps.topics.manifest, s.manifest);
      return 'manifest';
    }
    if (s?.kind === 'set' && digest === s.digest && !ask.all && !ask.manifest) return 'unchanged';
    return await this.everything(s?.kind === 'parts' ? s.parts : 0);
  }

  private async send(topic: string, payload: string): Promise<void> {
    await this.deps.publish(topic, payload);
    this.counters.messages += 1;
    this.counters.bytes += Buffer.byteLength(payload);
  }

  private async clearParts(from: number, to: number): Promise<void> {
    for (let n = from; n < to; n++) await this.deps.publish(`${this.deps.topics.parts}/${n}`, '');
  }

  /** A strictly rising iat, so a reader's newest manifest is the last one published. */
  private nextIat(): number {
    return Math.max(this.deps.nowS(), (this.state?.iat ?? 0) + 1);
  }

  /** The whole set read from disk: one set message when it fits, else every part of a new partition. */
  private async everything(minParts: number): Promise<RoundOutcome> {
    const { topics } = this.deps;
    const texts = await this.deps.keyring.opTexts();
    const iat = this.nextIat();
    if (fitsOneSet(texts, this.deps.maxBytes)) {
      await this.send(
        topics.set,
        signKeyringSet(this.deps.vehicleId, texts, this.deps.signer.key, this.deps.signer.kid, iat),
      );
      if (this.retained > 0 || this.state?.kind === 'parts') await this.deps.publish(topics.manifest, '');
      await this.clearParts(0, this.retained);
      await this.save({ kind: 'set', digest: setDigestOf(texts), iat });
      return 'set';
    }
    const ops: { hash: Buffer; bytes: number }[] = [];
    for (let i = 0; i < texts.length; i++) {
      const t = texts[i] as string;
      ops.push({ hash: opHash(t), bytes: Buffer.byteLength(t, 'utf8') });
      if (i % SLICE === SLICE - 1) await yieldToIo();
    }
    let parts = planParts(ops, Math.max(2, minParts), this.deps.maxBytes);
    for (;;) {
      const members = await groupByPart(
        ops.map((o) => o.hash),
        parts,
      );
      // Remembered first: a restart half-way still clears what this run leaves.
      await this.remember(Math.max(this.retained, parts));
      const sums = new PartSums(parts);
      let grown = false;
      for (let p = 0; p < parts; p++) {
        const partTexts = (members[p] ?? []).map((i) => texts[i] as string);
        for (const i of members[p] ?? []) sums.add(p, ops[i]?.hash as Buffer);
        const message = signVehiclePart(
          this.deps.vehicleId,
          iat,
          p,
          parts,
          partTexts,
          this.deps.signer.key,
          this.deps.signer.kid,
        );
        if (Buffer.byteLength(message) > this.deps.maxBytes) {
          grown = true;
          break;
        }
        await this.send(`${topics.parts}/${p}`, message);
        this.counters.partsPublished += 1;
        await yieldToIo();
      }
      if (grown) {
        parts *= 2;
        if (parts > MAX_SET_PARTS)
          throw new Error(`the vehicle keyring set needs more than ${MAX_SET_PARTS} parts`);
        continue;
      }
      await this.finish(iat, sums.sums(), Array.from(sums.counts), true);
      return 'parts';
    }
  }

  /**
   * The parts whose sum or count changed since the last publish, and those asked for: their ops'
   * ids found from the hashes the keyring holds (no texts), then only their texts read.
   */
  private async changedParts(s: PublishedParts, asked: readonly number[]): Promise<RoundOutcome> {
    const { keyring } = this.deps;
    const digest = keyring.digest();
    const held = [...keyring.heldOps()];
    const parts = s.parts;
    const sums = new PartSums(parts);
    const partOf = new Uint16Array(held.length);
    for (let i = 0; i < held.length; i++) {
      const hash = Buffer.from((held[i] as { hash: string }).hash, 'base64url');
      const p = partOfHash(hash, parts);
      sums.add(p, hash);
      partOf[i] = p;
      if (i % SLICE === SLICE - 1) await yieldToIo();
    }
    const table = sums.sums();
    const counts = Array.from(sums.counts);
    if (digestOfSum(addSums(table), held.length) !== digest) return 'raced';
    const wanted = new Set(asked.filter((p) => Number.isSafeInteger(p) && p >= 0 && p < parts));
    for (let p = 0; p < parts; p++) if (table[p] !== s.sums[p] || counts[p] !== s.counts[p]) wanted.add(p);
    const ids = new Set<string>();
    for (let i = 0; i < held.length; i++)
      if (wanted.has(partOf[i] ?? 0)) ids.add((held[i] as { id: string }).id);
    const texts = await keyring.opTextsOf(ids);
    const byPart = new Map<number, string[]>();
    const got = new PartSums(parts);
    for (const t of texts) {
      const hash = opHash(t);
      const p = partOfHash(hash, parts);
      got.add(p, hash);
      const list = byPart.get(p) ?? [];
      list.push(t);
      byPart.set(p, list);
    }
    for (const p of wanted) if (got.sum(p) !== table[p] || got.count(p) !== counts[p]) return 'raced';
    const iat = this.nextIat();
    for (const p of [...wanted].sort((a, b) => a - b)) {
      const message = signVehiclePart(
        this.deps.vehicleId,
        iat,
        p,
        parts,
        byPart.get(p) ?? [],
        this.deps.signer.key,
        this.deps.signer.kid,
      );
      // A part grew past the message size: P doubles, and every part changes once.
      if (Buffer.byteLength(message) > this.deps.maxBytes) return await this.everything(parts * 2);
      await this.send(`${this.deps.topics.parts}/${p}`, message);
      this.counters.partsPublished += 1;
      await yieldToIo();
    }
    await this.finish(iat, table, counts, false);
    return 'parts';
  }

  /** The manifest after its parts, then leftovers cleared (the set topic, higher parts), then saved. */
  private async finish(iat: number, sums: string[], counts: number[], clear: boolean): Promise<void> {
    const { topics, vehicleId, signer } = this.deps;
    const manifest = signVehicleManifest(vehicleId, iat, sums, counts, signer.key, signer.kid);
    await this.send(topics.manifest, manifest);
    if (clear) {
      await this.deps.publish(topics.set, '');
      await this.clearParts(sums.length, this.retained);
    }
    const setCount = counts.reduce((a, b) => a + b, 0);
    await this.save({
      kind: 'parts',
      digest: digestOfSum(addSums(sums), setCount),
      iat,
      parts: sums.length,
      sums,
      counts,
      manifest,
    });
  }

  private async remember(retained: number): Promise<void> {
    if (retained === this.retained) return;
    this.retained = retained;
    await this.write();
  }

  private async save(state: Published): Promise<void> {
    this.state = state;
    this.retained = state.kind === 'parts' ? state.parts : 0;
    await this.write();
    // The older format's leftovers are cleared now: its count is not needed again.
    await unlink(this.deps.legacyPartsFile).catch(() => {});
  }

  private async write(): Promise<void> {
    const file: StateFile = { retained: this.retained, published: this.state ?? null };
    // Written whole, then renamed: a crash leaves the old file or the new one.
    const tmp = `${this.deps.stateFile}.tmp`;
    try {
      await writeFile(tmp, `${JSON.stringify(file)}\n`, { mode: 0o600 });
      await rename(tmp, this.deps.stateFile);
    } catch (err) {
      this.deps.log.debug({ err: String(err) }, 'vehicle keyring set state not saved');
    }
  }
}

interface StateFile {
  readonly retained: number;
  readonly published: Published | null;
}

/** Op indices by part, in slices. */
async function groupByPart(hashes: readonly Uint8Array[], parts: number): Promise<number[][]> {
  const members: number[][] = Array.from({ length: parts }, () => []);
  for (let i = 0; i < hashes.length; i++) {
    members[partOfHash(hashes[i] as Uint8Array, parts)]?.push(i);
    if (i % SLICE === SLICE - 1) await yieldToIo();
  }
  return members;
}

async function readCount(path: string): Promise<number> {
  try {
    const n = Number((await readFile(path, 'utf8')).trim());
    return Number.isSafeInteger(n) && n >= 0 && n <= MAX_SET_PARTS ? n : 0;
  } catch {
    return 0;
  }
}

/** What was published and how many part topics may be retained; nothing when the file is missing or foreign. */
async function readState(path: string): Promise<{ published: Published | undefined; retained: number }> {
  let raw: Partial<StateFile> | undefined;
  try {
    raw = JSON.parse(await readFile(path, 'utf8')) as Partial<StateFile>;
  } catch {
    return { published: undefined, retained: 0 };
  }
  const retained =
    typeof raw?.retained === 'number' && Number.isSafeInteger(raw.retained)
      ? Math.min(Math.max(0, raw.retained), MAX_SET_PARTS)
      : 0;
  return { published: publishedOf(raw?.published), retained };
}

function publishedOf(raw: unknown): Published | undefined {
  if (typeof raw !== 'object' || raw === null) return undefined;
  const s = raw as Omit<Partial<PublishedParts>, 'kind'> & { kind?: unknown };
  if (typeof s.digest !== 'string' || typeof s.iat !== 'number' || !Number.isSafeInteger(s.iat))
    return undefined;
  if (s.kind === 'set') return { kind: 'set', digest: s.digest, iat: s.iat };
  if (
    s.kind !== 'parts' ||
    typeof s.parts !== 'number' ||
    !isPowerOfTwo(s.parts) ||
    s.parts > MAX_SET_PARTS ||
    !Array.isArray(s.sums) ||
    !Array.isArray(s.counts) ||
    s.sums.length !== s.parts ||
    s.counts.length !== s.parts ||
    !s.sums.every((x) => typeof x === 'string') ||
    !s.counts.every((x) => typeof x === 'number') ||
    typeof s.manifest !== 'string'
  )
    return undefined;
  return {
    kind: 'parts',
    digest: s.digest,
    iat: s.iat,
    parts: s.parts,
    sums: s.sums,
    counts: s.counts,
    manifest: s.manifest,
  };
}
