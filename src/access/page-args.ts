import { AgentError } from '../core/errors.js';

/** A page of the keyring in credential id order (Keyring.page): its size and the id it starts after. */
export interface PageArgs {
  readonly limit: number;
  readonly after?: string;
}

/**
 * Checks `limit` and `after` of a keys.list page (control socket and MQTT command alike; each
 * interface has its own bounds). Throws bad_arguments.
 */
export function parsePageArgs(limit: unknown, after: unknown, max: number, byDefault: number): PageArgs {
  if (
    limit !== undefined &&
    (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1 || limit > max)
  )
    throw new AgentError('bad_arguments', `limit must be a whole number from 1 to ${max}`);
  if (after !== undefined && (typeof after !== 'string' || after.length === 0 || after.length > 200))
    throw new AgentError('bad_arguments', 'after must be a credential id (the next of the page before)');
  return { limit: (limit as number | undefined) ?? byDefault, ...(after !== undefined ? { after } : {}) };
}
