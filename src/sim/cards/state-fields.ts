import { AgentError } from '../../core/errors.js';
import { fromHex } from '../../crypto/encoding.js';

/**
 * Strict readers for the small JSON states the simulated cards persist: a corrupt or hand-edited
 * state file is a `state_corrupt` error naming the field, never a card with garbage keys.
 */

export type StateObject = Readonly<Record<string, unknown>>;

export function stateObject(value: unknown, kind: string): StateObject {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new AgentError('state_corrupt', `${kind} card state must be an object`);
  }
  const obj = value as StateObject;
  if (obj.kind !== kind)
    throw new AgentError('state_corrupt', `card state kind must be ${kind}`, { kind: obj.kind });
  return obj;
}

export function stateString(obj: StateObject, field: string, maxLength = 64): string {
  const value = obj[field];
  if (typeof value !== 'string' || value.length === 0 || value.length > maxLength) {
    throw new AgentError('state_corrupt', `card state field ${field} must be a non-empty string`, { field });
  }
  return value;
}

export function stateHex(obj: StateObject, field: string, lengths: readonly number[]): Uint8Array {
  const value = obj[field];
  let bytes: Uint8Array | undefined;
  try {
    bytes = typeof value === 'string' ? fromHex(value) : undefined;
  } catch {
    bytes = undefined;
  }
  if (!bytes || !lengths.includes(bytes.length)) {
    throw new AgentError(
      'state_corrupt',
      `card state field ${field} must be hex of ${lengths.join(' or ')} bytes`,
      {
        field,
      },
    );
  }
  return bytes;
}

export function stateInteger(obj: StateObject, field: string, min: number, max: number): number {
  const value = obj[field];
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new AgentError('state_corrupt', `card state field ${field} must be an integer ${min}..${max}`, {
      field,
    });
  }
  return value;
}

export function stateBoolean(obj: StateObject, field: string): boolean {
  const value = obj[field];
  if (typeof value !== 'boolean') {
    throw new AgentError('state_corrupt', `card state field ${field} must be a boolean`, { field });
  }
  return value;
}

export function stateArray(obj: StateObject, field: string, length: number): readonly unknown[] {
  const value = obj[field];
  if (!Array.isArray(value) || value.length !== length) {
    throw new AgentError('state_corrupt', `card state field ${field} must be an array of ${length}`, {
      field,
    });
  }
  return value;
}
