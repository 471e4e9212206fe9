import { CODES, type Code } from './codes.js';

/**
 * The one error type of the project. `code` is stable (see codes.ts); `message` is for humans;
 * `details` holds structured, non-secret context (a file, a field, what is allowed).
 */
export class AgentError extends Error {
  readonly code: Code;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: Code, message?: string, details: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(message ?? CODES[code], options);
    this.name = 'AgentError';
    this.code = code;
    this.details = details;
  }

  toJSON(): { code: Code; message: string; details: Readonly<Record<string, unknown>> } {
    return { code: this.code, message: this.message, details: this.details };
  }
}

export function isAgentError(err: unknown): err is AgentError {
  return err instanceof AgentError;
}

/** Wraps anything thrown into an AgentError, keeping AgentErrors as they are. */
export function toAgentError(err: unknown, fallback: Code = 'internal'): AgentError {
  if (err instanceof AgentError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new AgentError(fallback, message, {}, { cause: err });
}
