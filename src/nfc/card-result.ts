import { AgentError, isAgentError } from '../core/errors.js';

/** Outcome of a card flow: a value, or a coded failure. Flows return it and never throw. */
export type CardResult<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly error: AgentError };

export function cardOk<T>(value: T): CardResult<T> {
  return { ok: true, value };
}

export function cardFailure<T>(error: AgentError): CardResult<T> {
  return { ok: false, error };
}

/**
 * Runs a flow that throws AgentErrors and folds the outcome into a CardResult. Anything else
 * thrown is a bug in this code, reported as `internal` rather than escaping.
 */
export async function runCardFlow<T>(flow: () => Promise<T>): Promise<CardResult<T>> {
  try {
    return cardOk(await flow());
  } catch (err) {
    if (isAgentError(err)) return cardFailure(err);
    const message = err instanceof Error ? err.message : String(err);
    return cardFailure(new AgentError('internal', message, {}, { cause: err }));
  }
}
