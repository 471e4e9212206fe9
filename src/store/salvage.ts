/**
 * Recovering a record that is damaged in BOTH of its copies. Two independent faults seldom hit
 * the same bytes, so where two damaged copies of one line (same length) differ in a few bytes,
 * one of the combinations of those bytes is the original: the one whose checksum verifies.
 */

/** Most differing bytes tried (2^n combinations). */
const MAX_DIFFERENCES = 12;

export function reconstructLine(
  a: Buffer,
  b: Buffer,
  verifies: (line: Buffer) => boolean,
): Buffer | undefined {
  if (a.length !== b.length) return undefined;
  const differing: number[] = [];
  for (let i = 0; i < a.length; i += 1) {
    if (a[i] !== b[i]) {
      differing.push(i);
      if (differing.length > MAX_DIFFERENCES) return undefined;
    }
  }
  const candidate = Buffer.from(a);
  for (let mask = 0; mask < 1 << differing.length; mask += 1) {
    differing.forEach((at, bit) => {
      candidate[at] = ((mask >> bit) & 1) === 1 ? (b[at] as number) : (a[at] as number);
    });
    if (verifies(candidate)) return candidate;
  }
  return undefined;
}

interface DamagedLine {
  readonly line: number;
  readonly raw: Buffer;
}

/**
 * Rebuilds the lines damaged in both copies of a file (aligned by line number: the copies hold
 * the same records in the same order) from their two damaged versions. Returns the records
 * rebuilt and the damaged lines that stay lost.
 */
export function rebuildFromBoth<T, L extends DamagedLine>(
  a: readonly L[],
  b: readonly L[],
  decode: (line: Buffer) => T,
): { rebuilt: T[]; lost: L[] } {
  const rebuilt: T[] = [];
  const lost: L[] = [];
  const byLine = new Map(b.map((l) => [l.line, l]));
  const used = new Set<L>();
  const verifies = (candidate: Buffer): boolean => {
    try {
      decode(candidate);
      return true;
    } catch {
      return false;
    }
  };
  for (const line of a) {
    const other = byLine.get(line.line);
    const fixed = other === undefined ? undefined : reconstructLine(line.raw, other.raw, verifies);
    if (fixed !== undefined && other !== undefined) {
      rebuilt.push(decode(fixed));
      used.add(other);
    } else {
      lost.push(line);
    }
  }
  for (const line of b) if (!used.has(line)) lost.push(line);
  return { rebuilt, lost };
}
