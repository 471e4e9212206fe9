import { relative } from 'node:path';
import type { Keyring } from '../access/keyring.js';
import type { IntegrityFinding } from '../store/integrity.js';
import type { CheckResult, HealthCheck } from './health-monitor.js';

/**
 * What the agent's stores found wrong with their files (docs/storage.md "Corruption, detection
 * and repair"), in one place: the `state.status` control handler (counts; the status page shows
 * it as a subsystem), `state.findings` (everything, for `vehicle-agent state check`), a health
 * check, and the audit log.
 */

export type IntegrityState = 'ok' | 'repaired' | 'degraded';

/** For the status page (counts only: no credential ids leave the agent that way). */
export interface IntegritySummary {
  readonly state: IntegrityState;
  readonly findings: number;
  readonly denied: number;
  /** The files with findings, relative to the state directory. */
  readonly files: readonly string[];
  readonly hint?: string;
}

/** For `vehicle-agent state check` over the control socket: everything. */
export interface IntegrityStatus {
  /** ok: nothing found; repaired: damage fixed from a good copy; degraded: something is denied or lost. */
  readonly state: IntegrityState;
  readonly findings: readonly IntegrityFinding[];
  /** Credentials (and counter keys) denied until `vehicle-agent state repair`; '*' for all of a kind. */
  readonly denied: readonly string[];
  readonly hint?: string;
}

export function integrityState(findings: readonly IntegrityFinding[]): IntegrityState {
  if (findings.length === 0) return 'ok';
  return findings.every((f) => f.code === 'state_repaired') ? 'repaired' : 'degraded';
}

export class StateIntegrity {
  constructor(
    private readonly stateDir: string,
    private readonly sources: readonly (() => readonly IntegrityFinding[])[],
  ) {}

  /** Every finding, with paths relative to the state directory. */
  findings(): IntegrityFinding[] {
    return this.sources.flatMap((source) => source().map((f) => this.relative(f)));
  }

  relative(f: IntegrityFinding): IntegrityFinding {
    return { ...f, file: relative(this.stateDir, f.file) || f.file };
  }

  status(): IntegrityStatus {
    const findings = this.findings();
    const state = integrityState(findings);
    const denied = [...new Set(findings.flatMap((f) => f.denied ?? []))];
    return {
      state,
      findings,
      denied,
      ...(state === 'ok'
        ? {}
        : {
            hint: 'vehicle-agent state check shows every file; vehicle-agent state repair rebuilds what it can (agent stopped)',
          }),
    };
  }

  summary(): IntegritySummary {
    const s = this.status();
    return {
      state: s.state,
      findings: s.findings.length,
      denied: s.denied.length,
      files: [...new Set(s.findings.map((f) => f.file))],
      ...(s.hint === undefined ? {} : { hint: s.hint }),
    };
  }

  /**
   * Never unhealthy: a restart cannot repair a file, and systemd restarting the agent in a loop
   * would only take the working credentials down too. The detail says what is wrong.
   */
  healthCheck(): HealthCheck {
    return {
      name: 'integrity',
      run: (): CheckResult => {
        const s = this.status();
        if (s.state === 'ok') return { ok: true };
        const denied = s.denied.length > 0 ? `; denied: ${s.denied.length}` : '';
        return {
          ok: true,
          detail: `${s.state}: ${s.findings.length} finding(s)${denied} (vehicle-agent state check)`,
        };
      },
    };
  }
}

/**
 * Signature counters lost in every copy (journaled-map.ts suspects): the credentials they belong
 * to are denied as `credential_suspect` (the map also reads them as MAX_SAFE_INTEGER, so no
 * counter can pass). '*' means every counter-bearing (FIDO) credential.
 */
export function denyCounterSuspects(keyring: Keyring, suspects: ReadonlyMap<string, string>): void {
  if (suspects.size === 0) return;
  const entries: [string, string][] = [];
  for (const [key, why] of suspects) {
    if (key === '*') {
      for (const s of keyring.list()) {
        if (s.credential.kind === 'fido' || s.credential.kind === 'passkey')
          entries.push([s.credential.id, `its signature counter: ${why}`]);
      }
    } else {
      entries.push([key, `its signature counter: ${why}`]);
    }
  }
  keyring.markSuspects(entries);
}
