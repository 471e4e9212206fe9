import type { EventEmitter } from 'node:events';
import { once } from 'node:events';

/**
 * The one way tests wait for something to happen: poll a condition (or a probe) until it holds,
 * or await an emitter's event, with a generous deadline (these machines are often loaded; a
 * deadline is a failure report, not a timing assertion) and a message naming what never came,
 * with the last value seen. The only fixed waits are `quietFor` (an absence is asserted) and
 * `letTimePass` (elapsed time is the input), and each says why.
 */
export interface WaitOptions {
  /** Default 10 s. */
  readonly timeoutMs?: number;
  /** Between polls; default 10 ms. */
  readonly intervalMs?: number;
  /** Appended to the timeout message: the state that explains the failure. */
  readonly detail?: () => unknown;
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function describeValue(value: unknown): string {
  if (value === undefined) return '';
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return `; last: ${(text ?? String(value)).slice(0, 800)}`;
}

/** Until `condition()` is true (it may be async). */
export async function waitFor(
  condition: () => boolean | Promise<boolean>,
  what: string,
  options: WaitOptions | number = {},
): Promise<void> {
  await waitForValue(async () => ((await condition()) ? true : undefined), what, options);
}

/** Until `probe()` gives something other than undefined, and returns it. */
export async function waitForValue<T>(
  probe: () => T | undefined | Promise<T | undefined>,
  what: string,
  options: WaitOptions | number = {},
): Promise<T> {
  const {
    timeoutMs = 10_000,
    intervalMs = 10,
    detail,
  } = typeof options === 'number' ? { timeoutMs: options } : options;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${describeValue(detail?.())}`);
    await pause(intervalMs);
  }
}

/** Until `read()` gives a value `ok` accepts, and returns it; the timeout names the last one read. */
export async function waitForRead<T>(
  read: () => T | Promise<T>,
  ok: (value: T) => boolean,
  what: string,
  options: Omit<WaitOptions, 'detail'> | number = {},
): Promise<T> {
  let last: T | undefined;
  const opts = typeof options === 'number' ? { timeoutMs: options } : options;
  return await waitForValue(
    async () => {
      last = await read();
      return ok(last) ? last : undefined;
    },
    what,
    { ...opts, detail: () => last },
  );
}

/** The arguments of the next `name` event of `emitter`; the timeout names `what`. */
export async function waitForEvent(
  emitter: EventEmitter,
  name: string,
  what: string,
  options: Pick<WaitOptions, 'timeoutMs'> | number = {},
): Promise<unknown[]> {
  const { timeoutMs = 10_000 } = typeof options === 'number' ? { timeoutMs: options } : options;
  try {
    return await once(emitter, name, { signal: AbortSignal.timeout(timeoutMs) });
  } catch (error) {
    if (error instanceof Error && error.name === 'AbortError')
      throw new Error(`timed out waiting for ${what}`);
    throw error;
  }
}

/**
 * Lets `ms` pass where the test asserts that something does NOT happen in that time: an absence
 * cannot be waited for. `absent` names what must not happen, for the reader.
 */
export async function quietFor(ms: number, absent: string): Promise<void> {
  void absent;
  await pause(ms);
}

/**
 * Lets `ms` of real time pass where elapsed time is itself the input under test (a budget that
 * refills, an age that makes a connection evictable, a command that expires). `why` says what
 * the time is for.
 */
export async function letTimePass(ms: number, why: string): Promise<void> {
  void why;
  await pause(ms);
}
