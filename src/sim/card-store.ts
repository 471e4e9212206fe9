import { join } from 'node:path';
import { AgentError } from '../core/errors.js';
import { toHex } from '../crypto/encoding.js';
import type { SimCardKind } from '../host/control-api.js';
import { readJsonFileIfExists, writeFileAtomic } from '../store/atomic.js';
import { MAX_COUNTER as MAX_FIDO_COUNTER, SimulatedFidoU2fKey } from './cards/fido-u2f.js';
import { SimulatedNtag424 } from './cards/ntag424.js';
import { type PersistableCard, restoreSimulatedCard, type SimulatedCardState } from './cards/state.js';
import { SimulatedUidTag, type UidTagModel } from './cards/uid-tag.js';

/**
 * The wallet of simulated NFC cards in sim mode: FIDO seeds and counters, NTAG 424 keys, UIDs,
 * persisted by label in <stateDir>/sim/cards.json (0600) so counters and personalisation survive
 * restarts. No serialport here: the demo seeding uses it without the emulator.
 */

export const SIM_DIR = 'sim';
export const SIM_CARDS_FILE = 'cards.json';
const CARDS_FORMAT = 'vehicle-agent/sim-cards/1';
const LABEL = /^[a-z0-9][a-z0-9._-]{0,31}$/;

export function simCardsPath(stateDir: string): string {
  return join(stateDir, SIM_DIR, SIM_CARDS_FILE);
}

export interface SimCardSummary {
  readonly label: string;
  readonly kind: SimulatedCardState['kind'];
  readonly uid: string;
  readonly counter?: number;
}

/** The simulated cards, by label, persisted as JSON states (0600). */
export class SimCardStore {
  readonly path: string;
  private readonly cards = new Map<string, PersistableCard>();
  /** The background save under way, and whether the cards changed again since it began. */
  private saving: Promise<void> | undefined;
  private dirty = false;

  private constructor(path: string) {
    this.path = path;
  }

  static async open(path: string): Promise<SimCardStore> {
    const store = new SimCardStore(path);
    const states = await readJsonFileIfExists<readonly unknown[]>(path, {
      parse: (value) => {
        const v = value as { format?: unknown; cards?: unknown } | null;
        if (typeof v !== 'object' || v === null || v.format !== CARDS_FORMAT || !Array.isArray(v.cards))
          throw new Error(`expected {"format":"${CARDS_FORMAT}","cards":[...]}`);
        return v.cards;
      },
    });
    for (const state of states ?? []) store.put(restoreSimulatedCard(aheadAfterRestart(state)));
    return store;
  }

  get size(): number {
    return this.cards.size;
  }

  get(label: string): PersistableCard | undefined {
    return this.cards.get(label);
  }

  /** Adds a card; bad_arguments when the label is taken or not a simple name. */
  add(card: PersistableCard): void {
    if (!LABEL.test(card.label))
      throw new AgentError('bad_arguments', 'a card label is 1-32 lowercase letters, digits, . _ -');
    if (this.cards.has(card.label))
      throw new AgentError('bad_arguments', `a card named ${card.label} exists`);
    this.put(card);
  }

  list(): SimCardSummary[] {
    return [...this.cards.values()].map((card) => {
      const state = card.toState();
      return {
        label: card.label,
        kind: state.kind,
        uid: toHex(card.uid),
        ...(state.kind === 'fido-u2f' ? { counter: state.counter } : {}),
      };
    });
  }

  async save(): Promise<void> {
    const cards = [...this.cards.values()].map((c) => c.toState());
    await writeFileAtomic(this.path, `${JSON.stringify({ format: CARDS_FORMAT, cards }, null, 1)}\n`);
  }

  /**
   * Saves without making the caller wait (a tap's answer must not wait for a disk that may be
   * frozen): one write at a time; cards changed during a write are saved once it ends.
   * A failure goes to `onError`; the next save tries again.
   */
  saveInBackground(onError: (err: unknown) => void): void {
    if (this.saving !== undefined) {
      this.dirty = true;
      return;
    }
    this.dirty = false;
    this.saving = this.save()
      .catch(onError)
      .finally(() => {
        this.saving = undefined;
        if (this.dirty) this.saveInBackground(onError);
      });
  }

  /**
   * Waits for background saves, at most `timeoutMs`; rejects with state_io when the disk has not
   * taken them by then (the write goes on).
   */
  async flush(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.saving !== undefined) {
      const left = deadline - Date.now();
      let timer: NodeJS.Timeout | undefined;
      const expired = await Promise.race([
        this.saving.then(() => false),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(true), Math.max(0, left));
        }),
      ]);
      clearTimeout(timer);
      if (expired) {
        throw new AgentError('state_io', `the simulated cards could not be saved within ${timeoutMs} ms`, {
          file: this.path,
          timeoutMs,
        });
      }
    }
  }

  private put(card: PersistableCard): void {
    this.cards.set(card.label, card);
  }
}

export type { SimCardKind };

/** A new simulated card of `kind` (random secrets and UID). */
export function newSimCard(
  kind: SimCardKind,
  label: string,
  model: UidTagModel = 'ntag213',
): PersistableCard {
  switch (kind) {
    case 'fido':
      return new SimulatedFidoU2fKey({ label });
    case 'ntag424':
      return new SimulatedNtag424({ label });
    case 'uid':
      return new SimulatedUidTag({ label, model });
  }
}

/**
 * A real FIDO key keeps its counter in its own flash, so it never goes back. The simulated one
 * is saved in the background after each tap (a tap must not wait for the disk), so a kill -9 or
 * a full disk can lose its last few increments while the agent has already stored them, and its
 * next taps would read as a clone. On load its counter jumps ahead by more than a kill can lose,
 * as a real key's never goes back (a card with the test knob counterFrozen stays as saved).
 */
export const FIDO_COUNTER_JUMP_ON_LOAD = 1024;

function aheadAfterRestart(state: unknown): unknown {
  if (typeof state !== 'object' || state === null) return state;
  const s = state as { kind?: unknown; counter?: unknown; counterFrozen?: unknown };
  if (s.kind !== 'fido-u2f' || typeof s.counter !== 'number' || s.counterFrozen === true) return state;
  return { ...s, counter: Math.min(s.counter + FIDO_COUNTER_JUMP_ON_LOAD, MAX_FIDO_COUNTER) };
}
