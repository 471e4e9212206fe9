import type { Code } from '../core/codes.js';

/**
 * What a store found wrong with its files when it opened them, and what it did about it. Each
 * store keeps its findings (`findings`); the agent logs them, audits them and shows them in
 * `state.status` and `state.findings` (status page, `vehicle-agent state check`). See docs/storage.md "Corruption,
 * detection and repair".
 */
export interface IntegrityFinding {
  /** The damaged file (a path). */
  readonly file: string;
  /**
   * - `state_repaired`: one copy was damaged, the other good; the good one is used and the
   *   damaged one was rewritten from it (its bytes kept aside as `<file>.corrupt-<stamp>`).
   * - `credential_suspect`: what a record said is lost in every copy; what it names is denied
   *   until `vehicle-agent state repair`.
   * - `state_corrupt`: damage that the store works around without denying anything (a summary
   *   rebuilt from the operations, say), or that it could not attribute.
   * - `audit_chain_broken`: the audit log lost or damaged records (recorded in the chain).
   */
  readonly code: Code;
  /** Where and what: "line 3 (byte 412): checksum mismatch". */
  readonly problem: string;
  /** What the store did about it. */
  readonly action: string;
  /** What is denied because of it (credential ids, counter keys), or ['*'] for everything it holds. */
  readonly denied?: readonly string[];
}

export function describeFinding(f: IntegrityFinding): string {
  const denied = f.denied && f.denied.length > 0 ? ` (denied: ${f.denied.join(', ')})` : '';
  return `[${f.code}] ${f.file}: ${f.problem}; ${f.action}${denied}`;
}

/** A short label for a damaged line: "line 3 (byte 412): checksum mismatch". */
export function lineProblem(damaged: { line: number; offset: number; problem: string }): string {
  return `line ${damaged.line} (byte ${damaged.offset}): ${damaged.problem}`;
}
