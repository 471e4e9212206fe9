import type { Role } from '../core/types.js';

export type Action = 'unlock' | 'lock' | 'keys.grant' | 'keys.revoke' | 'keys.list' | 'state.refresh';

/**
 * Role → allowed actions (docs/keyring.md). Guests are further bounded by their validity window, which
 * the decision checks for every role. A service key never adds keys.
 */
const ALLOWED: Readonly<Record<Role, ReadonlySet<Action>>> = {
  owner: new Set<Action>(['unlock', 'lock', 'keys.grant', 'keys.revoke', 'keys.list', 'state.refresh']),
  driver: new Set<Action>(['unlock', 'lock', 'state.refresh']),
  guest: new Set<Action>(['unlock', 'lock']),
  service: new Set<Action>(['unlock', 'lock', 'keys.revoke', 'keys.list', 'state.refresh']),
};

export function roleAllows(role: Role, action: Action): boolean {
  return ALLOWED[role].has(action);
}
