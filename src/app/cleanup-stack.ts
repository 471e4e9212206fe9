import { toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';

type Step = { readonly name: string; readonly run: () => Promise<void> | void };

/**
 * What the composition root has started, undone in reverse order of start. A part registered
 * after another stops before it: the agent (registered after its readers) stops first, then the
 * readers, then the stores they wrote to. A step that fails is logged and the rest still run,
 * so one stuck part never leaves a relay energised or a store open behind it.
 */
export class CleanupStack {
  private readonly steps: Step[] = [];
  private readonly last: Step[] = [];

  /** Undone before everything registered so far. */
  defer(name: string, run: Step['run']): void {
    this.steps.unshift({ name, run });
  }

  /** Undone after everything, whenever registered (e.g. the notify helper that reports the stop). */
  deferLast(name: string, run: Step['run']): void {
    this.last.push({ name, run });
  }

  /** Runs every step once, in order; never rejects. Later calls find nothing left. */
  async unwind(log?: Logger): Promise<void> {
    const steps = [...this.steps.splice(0), ...this.last.splice(0)];
    for (const step of steps) {
      try {
        await step.run();
      } catch (err) {
        const e = toAgentError(err);
        log?.error({ module: 'main', step: step.name, code: e.code, err: e.message }, 'error while stopping');
      }
    }
  }

  /** Step names in the order unwind would run them (for tests and the debug log). */
  order(): string[] {
    return [...this.steps, ...this.last].map((s) => s.name);
  }
}
