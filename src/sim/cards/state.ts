import { AgentError } from '../../core/errors.js';
import { type FidoTiming, type FidoU2fCardState, SimulatedFidoU2fKey } from './fido-u2f.js';
import { type Ntag424CardOptions, type Ntag424CardState, SimulatedNtag424 } from './ntag424.js';
import type { SimulatedCard } from './types.js';
import { SimulatedUidTag, type UidTagState } from './uid-tag.js';

/** The JSON a simulated card persists in the simulator's own directory. */
export type SimulatedCardState = FidoU2fCardState | Ntag424CardState | UidTagState;

/** A simulated card that can be written back to its JSON state. */
export interface PersistableCard extends SimulatedCard {
  toState(): SimulatedCardState;
}

export interface RestoreOptions {
  readonly fidoTiming?: Partial<FidoTiming>;
  readonly ntag424?: Omit<Ntag424CardOptions, 'label' | 'uid' | 'keys'>;
}

/** Rebuilds a card from its state; `state_corrupt` for anything that is not a valid state. */
export function restoreSimulatedCard(state: unknown, options: RestoreOptions = {}): PersistableCard {
  const kind = typeof state === 'object' && state !== null ? (state as { kind?: unknown }).kind : undefined;
  switch (kind) {
    case 'fido-u2f':
      return SimulatedFidoU2fKey.fromState(state, options.fidoTiming);
    case 'ntag424':
      return SimulatedNtag424.fromState(state, options.ntag424);
    case 'uid-tag':
      return SimulatedUidTag.fromState(state);
    default:
      throw new AgentError('state_corrupt', 'unknown simulated card kind', { kind: String(kind) });
  }
}
