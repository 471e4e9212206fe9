/**
 * The one way tests wait for something to happen: poll a condition (or a probe) until it holds,
 * with a generous deadline (these machines are often loaded; a deadline is a failure report, not
 * a timing assertion) and a message naming what never came, with the last value seen.
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
  read: () => Promise<T>,
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
