import { describe, expect, it } from 'vitest';
import { byCodeUnits, sortInSlices } from '../../../src/access/sort-in-slices.js';
import { seededRandom } from '../../helpers/seeded-random.js';

describe('sortInSlices', () => {
  it('sorts as a plain sort does, for sizes around the run length', async () => {
    const random = seededRandom(19);
    for (const n of [0, 1, 2, 7, 8, 9, 63, 64, 65, 200, 1000]) {
      const items = Array.from({ length: n }, () => `phone:${random.int(1e6).toString(36)}é`);
      const expected = [...items].sort(byCodeUnits);
      expect(await sortInSlices([...items], 8)).toEqual(expected);
    }
  });
});
