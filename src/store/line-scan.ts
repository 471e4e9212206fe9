/**
 * Scanning of line-per-record files (journals, audit log, keyring ops) and the recovery rule they
 * share.
 *
 * A record is complete once its '\n' is on disk; every record carries a checksum (or a hash) over
 * its content. So:
 * - Bytes after the last complete line (an incomplete last line: no '\n') are a TORN TAIL, what a
 *   write cut short by kill -9 or a power cut leaves (a region of zeros the filesystem had
 *   allocated but not written has no '\n' either). Such bytes never belonged to an acknowledged
 *   record (a record is acknowledged only after it and everything before it was fsynced), so
 *   they are cut off silently.
 * - A COMPLETE line that does not check out (bad checksum, not JSON, a NUL byte) is CORRUPTION,
 *   wherever it sits, the last line included: it was written whole and damaged afterwards (a
 *   flipped bit, a bad sector, an edit). Each store decides what to do with it (refuse, repair
 *   from its other copy, quarantine, keep as evidence); none drops it silently, because the last
 *   record of a keyring journal may be the revoke that matters.
 * A write of several pages torn by a power cut can leave a complete line with zeros inside (the
 * page holding its end was written, an earlier one was not): that reads as corruption, so the
 * store fails secure for it and `vehicle-agent state repair` rebuilds from what is left.
 */

export interface ScannedLine<T> {
  /** 1-based line number. */
  readonly line: number;
  /** Byte offset of the line's first byte. */
  readonly offset: number;
  /** Byte offset just past the line (past its '\n' when complete). */
  readonly end: number;
  /** False for a last line without its '\n' (a torn write). */
  readonly complete: boolean;
  readonly value?: T;
  /** Why the line is not a valid record; absent when valid. */
  readonly problem?: string;
}

/** Decodes one line (without its '\n'); throws to mark it invalid (the message is the problem). */
export type LineDecoder<T> = (line: Buffer) => T;

const NEWLINE = 0x0a;

/** Scans the line starting at `offset`; `bytes` must hold at least one byte from there. */
function scanOne<T>(bytes: Buffer, offset: number, line: number, decode: LineDecoder<T>): ScannedLine<T> {
  const newline = bytes.indexOf(NEWLINE, offset);
  const complete = newline !== -1;
  const end = complete ? newline + 1 : bytes.length;
  if (!complete) return { line, offset, end, complete, problem: 'incomplete last line (torn write)' };
  try {
    return { line, offset, end, complete, value: decode(bytes.subarray(offset, newline)) };
  } catch (err) {
    return { line, offset, end, complete, problem: err instanceof Error ? err.message : String(err) };
  }
}

export function scanLines<T>(bytes: Buffer, decode: LineDecoder<T>): ScannedLine<T>[] {
  const lines: ScannedLine<T>[] = [];
  for (let offset = 0; offset < bytes.length; ) {
    const scanned = scanOne(bytes, offset, lines.length + 1, decode);
    lines.push(scanned);
    offset = scanned.end;
  }
  return lines;
}

/** Lines scanned between two looks at the clock in scanLinesAsync. */
const LINES_PER_CHECK = 64;

/**
 * scanLines for a large file on the agent's event loop (the keyring's 100 000 ops, ~50 MB): the
 * same lines, scanned in slices of about `sliceMs` with a turn of the loop between them, so a
 * reader's decision or a relay timer waits one slice, not the whole file (about 450 ms at
 * 100 000 ops on a 2-core x86; longer on a Pi).
 */
export async function scanLinesAsync<T>(
  bytes: Buffer,
  decode: LineDecoder<T>,
  sliceMs = 8,
): Promise<ScannedLine<T>[]> {
  const lines: ScannedLine<T>[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    const sliceStart = performance.now();
    do {
      for (let n = 0; n < LINES_PER_CHECK && offset < bytes.length; n++) {
        const scanned = scanOne(bytes, offset, lines.length + 1, decode);
        lines.push(scanned);
        offset = scanned.end;
      }
    } while (offset < bytes.length && performance.now() - sliceStart < sliceMs);
    if (offset < bytes.length) await new Promise((resolve) => setImmediate(resolve));
  }
  return lines;
}

export interface RecoveryPlan<T> {
  /** The valid records, in file order. */
  readonly valid: readonly ScannedLine<T>[];
  /** Complete lines that are not valid records, anywhere in the file: corruption, not a crash. */
  readonly corrupt: readonly ScannedLine<T>[];
  /** Corrupt lines after the last valid record (a subset of `corrupt`). */
  readonly corruptTail: readonly ScannedLine<T>[];
  /** Byte offset just past the last valid record. */
  readonly validEnd: number;
  /** Byte offset just past the last complete line, valid or not; the torn tail starts here. */
  readonly completeEnd: number;
  /** Bytes of the torn tail (an incomplete last line), cut off silently. */
  readonly tornBytes: number;
}

export function planRecovery<T>(lines: readonly ScannedLine<T>[], fileSize: number): RecoveryPlan<T> {
  const valid: ScannedLine<T>[] = [];
  const corrupt: ScannedLine<T>[] = [];
  let validEnd = 0;
  let completeEnd = 0;
  let corruptAfterValid = 0;
  for (const scanned of lines) {
    if (!scanned.complete) continue;
    completeEnd = scanned.end;
    if (scanned.problem === undefined) {
      valid.push(scanned);
      validEnd = scanned.end;
      corruptAfterValid = 0;
    } else {
      corrupt.push(scanned);
      corruptAfterValid += 1;
    }
  }
  return {
    valid,
    corrupt,
    corruptTail: corrupt.slice(corrupt.length - corruptAfterValid),
    validEnd,
    completeEnd,
    tornBytes: fileSize - completeEnd,
  };
}
