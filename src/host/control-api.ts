import type { Intent } from '../core/types.js';

/**
 * Request and answer shapes of control commands that more than one side speaks (the agent's
 * handlers, the CLI, the status page). Types only: no I/O, so every side may import it.
 */

/** The answer to `sim.challenge`: what a simulated key signs. */
export interface SimChallenge {
  readonly challengeId: string;
  readonly challenge: string;
  readonly vehicleId: string;
}

/** The arguments of `sim.answer`. */
export interface SimAnswer {
  readonly challengeId: string;
  readonly credentialId: string;
  readonly intent: Intent;
  readonly explicitIntent: boolean;
  /** base64url 64-byte r‖s over simKeyMessage(...). */
  readonly signature: string;
  /** Extra delay the simulated key claims before answering (to exercise the deadline). */
  readonly delayMs?: number;
}
