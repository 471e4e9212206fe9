import type { Logger } from '../core/logger.js';
import type { Health } from '../core/types.js';
import { isStarting, type PartReport, summarizeReadiness } from '../host/readiness.js';
import type { Supervision } from '../host/supervision.js';
import type { CleanupStack } from './cleanup-stack.js';

export interface LivePart {
  readonly part: string;
  health(): Pick<Health, 'state' | 'detail'>;
}

/** How often, and for how long, parts still starting at `ready` are looked at again. */
const FOLLOW_EVERY_MS = 100;
const FOLLOW_FOR_MS = 60_000;

/**
 * Says `ready` (log and sd_notify) with every part's state, warns when a part is not up, and
 * once the parts that were still starting have made their first attempt, says how that went:
 * the owner learns that the NFC reader is down without reading the driver's retries.
 */
export function announceReady(deps: {
  readonly parts: readonly LivePart[];
  readonly lockState: () => string;
  readonly supervision: Pick<Supervision, 'ready'>;
  readonly fields: Readonly<Record<string, unknown>>;
  readonly log: Logger;
  readonly cleanup: CleanupStack;
}): void {
  const { parts, log } = deps;
  const snapshot = (): PartReport[] => parts.map((p) => ({ part: p.part, health: p.health() }));
  const readiness = summarizeReadiness(snapshot());
  deps.supervision.ready(`${readiness.summary}; lock ${deps.lockState()}`);
  log.info({ module: 'main', ...deps.fields, parts: readiness.parts }, 'ready');
  if (readiness.notUp.length > 0) log.warn({ module: 'main', notUp: readiness.notUp }, readiness.summary);
  if (readiness.starting.length === 0) return;

  const startedAt = Date.now();
  const timer = setInterval(() => {
    const now = snapshot();
    const timedOut = Date.now() - startedAt >= FOLLOW_FOR_MS;
    if (!timedOut && now.some((r) => readiness.starting.includes(r.part) && isStarting(r.health))) {
      return;
    }
    clearInterval(timer);
    const after = summarizeReadiness(now);
    const text = after.summary.replace(/^ready/, 'parts started');
    if (after.notUp.length > 0 || after.starting.length > 0) {
      log.warn({ module: 'main', parts: after.parts, notUp: [...after.notUp, ...after.starting] }, text);
    } else log.info({ module: 'main', parts: after.parts }, text);
  }, FOLLOW_EVERY_MS);
  timer.unref();
  deps.cleanup.defer('readiness follow-up', () => clearInterval(timer));
}
