import { expect } from 'vitest';

/**
 * A strict reader of the text exposition format 0.0.4, enough to prove what we render parses:
 * every sample belongs to the family declared just above it, names and labels are well formed.
 */
export function parseExposition(text: string): Map<string, { type: string; samples: string[] }> {
  const families = new Map<string, { type: string; samples: string[] }>();
  let current: string | undefined;
  expect(text.endsWith('\n')).toBe(true);
  for (const line of text.slice(0, -1).split('\n')) {
    const help = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (help) {
      current = help[1];
      continue;
    }
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (type?.[1] !== undefined && type[2] !== undefined) {
      expect(type[1]).toBe(current);
      expect(families.has(type[1])).toBe(false);
      families.set(type[1], { type: type[2], samples: [] });
      continue;
    }
    const sample =
      /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$/.exec(
        line,
      );
    expect(sample, `not a valid sample line: ${line}`).not.toBeNull();
    const name = sample?.[1] ?? '';
    expect(name).toBe(current);
    families.get(name)?.samples.push(line);
  }
  return families;
}
