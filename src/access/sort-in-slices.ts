/** Code-unit order, as `<` compares strings (Keyring.page's cursor compares the same way). */
export const byCodeUnits = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** Strings merged between two turns of the event loop. */
const MERGE_SLICE = 16_384;

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Sorts `items` (in place or not: use the result) a slice at a time, the event loop turning
 * between slices: one sort of 100 000 ids took 60-350 ms on this machine, a key at the reader
 * waiting all that time. Runs of `run` are sorted, then merged pairwise, each a few ms.
 */
export async function sortInSlices(items: string[], run = 2048): Promise<string[]> {
  const n = items.length;
  for (let lo = 0; lo < n; lo += run) {
    const part = items.slice(lo, lo + run).sort(byCodeUnits);
    for (let i = 0; i < part.length; i++) items[lo + i] = part[i] as string;
    if (lo + run < n) await nextTurn();
  }
  let from = items;
  let to: string[] = new Array<string>(n);
  for (let width = run; width < n; width *= 2) {
    let merged = 0;
    for (let lo = 0; lo < n; lo += 2 * width) {
      const mid = Math.min(lo + width, n);
      const hi = Math.min(lo + 2 * width, n);
      let a = lo;
      let b = mid;
      for (let k = lo; k < hi; k++) {
        const x = from[a] as string;
        const y = from[b] as string;
        if (b >= hi || (a < mid && x <= y)) {
          to[k] = x;
          a++;
        } else {
          to[k] = y;
          b++;
        }
      }
      merged += hi - lo;
      if (merged >= MERGE_SLICE) {
        merged = 0;
        await nextTurn();
      }
    }
    [from, to] = [to, from];
  }
  return from;
}
