import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FIDO_COUNTER_JUMP_ON_LOAD, SimCardStore } from '../../../src/sim/card-store.js';
import { SimulatedFidoU2fKey } from '../../../src/sim/cards/fido-u2f.js';

/**
 * The simulated card wallet saves in the background, so a kill -9 can lose a FIDO key's last
 * counter increments; a real key's counter never goes back, so on load the simulated one jumps
 * ahead (else the agent, which stored the lost increments, would read its next taps as a clone).
 */
let dir: string | undefined;
afterEach(() => {
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

async function saved(cards: readonly SimulatedFidoU2fKey[]): Promise<string> {
  dir = mkdtempSync(join(tmpdir(), 'va-cards-'));
  const path = join(dir, 'cards.json');
  const store = await SimCardStore.open(path);
  for (const card of cards) store.add(card);
  await store.save();
  return path;
}

describe('simulated FIDO counters across a restart', () => {
  it('jump ahead on load, past what a kill can lose, and never go back', async () => {
    const path = await saved([new SimulatedFidoU2fKey({ label: 'fido-a', counter: 41 })]);
    const reopened = await SimCardStore.open(path);
    const counter = reopened.list().find((c) => c.label === 'fido-a')?.counter;
    expect(counter).toBe(41 + FIDO_COUNTER_JUMP_ON_LOAD);
    await reopened.save();
    const again = await SimCardStore.open(path);
    expect(again.list().find((c) => c.label === 'fido-a')?.counter).toBe(41 + 2 * FIDO_COUNTER_JUMP_ON_LOAD);
  });

  it('leave a clone test card (counterFrozen) as saved, and stop at the 32-bit limit', async () => {
    const path = await saved([
      new SimulatedFidoU2fKey({ label: 'clone', counter: 7, counterFrozen: true }),
      new SimulatedFidoU2fKey({ label: 'worn', counter: 0xffffffff - 3 }),
    ]);
    const reopened = await SimCardStore.open(path);
    const byLabel = new Map(reopened.list().map((c) => [c.label, c.counter]));
    expect(byLabel.get('clone')).toBe(7);
    expect(byLabel.get('worn')).toBe(0xffffffff);
  });
});
