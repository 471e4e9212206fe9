import type { Health, HealthState } from '../core/types.js';

/** Holds a driver's health; `since` moves only when the state or the detail changes. */
export class HealthTracker {
  private current: Health;
  private readonly wallNow: () => number;

  constructor(initial: HealthState, wallNow: () => number = Date.now, detail?: string) {
    this.wallNow = wallNow;
    this.current = { state: initial, ...(detail !== undefined ? { detail } : {}), since: wallNow() };
  }

  get(): Health {
    return this.current;
  }

  set(state: HealthState, detail?: string): void {
    if (state === this.current.state && detail === this.current.detail) return;
    this.current = { state, ...(detail !== undefined ? { detail } : {}), since: this.wallNow() };
  }
}
