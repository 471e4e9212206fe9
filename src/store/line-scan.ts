/**
 * Scanning of line-per-record files (journals, audit log) and the recovery rule they share.
 *
 * Recovery rule: everything after the last valid record is the tail of a write that never
 * completed (a record is acknowledged only after it and everything before it was fsynced, and
 * records are only ever appended), so the tail is cut off. Invalid records BEFORE the last valid
 * one cannot come from a crash: that is corruption or tampering, and each store decides what to
 * do with it (refuse, quarantine, or keep and report).
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

export function scanLines<T>(bytes: Buffer, decode: LineDecoder<T>): ScannedLine<T>[] {
  const lines: ScannedLine<T>[] = [];
  let offset = 0;
  let line = 1;
  while (offset < bytes.length) {
    const newline = bytes.indexOf(NEWLINE, offset);
    const complete = newline !== -1;
    const end = complete ? newline + 1 : bytes.length;
    const content = bytes.subarray(offset, complete ? newline : bytes.length);
    if (!complete) {
      lines.push({ line, offset, end, complete, problem: 'incomplete last line (torn write)' });
    } else {
      try {
        lines.push({ line, offset, end, complete, value: decode(content) });
      } catch (err) {
        lines.push({
          line,
          offset,
          end,
          complete,
          problem: err instanceof Error ? err.message : String(err),
        });
      }
    }
    offset = end;
    line += 1;
  }
  return lines;
}

export interface RecoveryPlan<T> {
  /** The valid records, in file order (including those after a middle corruption). */
  readonly valid: readonly ScannedLine<T>[];
  /** Invalid lines before the last valid record: corruption, not a crash. */
  readonly corrupt: readonly ScannedLine<T>[];
  /** Byte offset just past the last valid record; the file is cut here. */
  readonly validEnd: number;
  /** Bytes after validEnd. */
  readonly tailBytes: number;
  /** True when the tail holds at least one complete (newline-ended) line: worth keeping aside. */
  readonly tailHasCompleteLine: boolean;
}

export function planRecovery<T>(lines: readonly ScannedLine<T>[], fileSize: number): RecoveryPlan<T> {
  let lastValid = -1;
  for (let i = lines.length - 1; i >= 0; i -= 1) {
    if (lines[i]?.problem === undefined) {
      lastValid = i;
      break;
    }
  }
  const valid: ScannedLine<T>[] = [];
  const corrupt: ScannedLine<T>[] = [];
  for (let i = 0; i <= lastValid; i += 1) {
    const scanned = lines[i];
    if (scanned === undefined) continue;
    if (scanned.problem === undefined) valid.push(scanned);
    else corrupt.push(scanned);
  }
  const validEnd = lastValid === -1 ? 0 : (lines[lastValid]?.end ?? 0);
  let tailHasCompleteLine = false;
  for (let i = lastValid + 1; i < lines.length; i += 1) {
    if (lines[i]?.complete === true) tailHasCompleteLine = true;
  }
  return { valid, corrupt, validEnd, tailBytes: fileSize - validEnd, tailHasCompleteLine };
}
