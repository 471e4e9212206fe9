import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

/** docs/security.md names, for each attack, the test that makes it: those tests must exist. */
const DOC = readFileSync('docs/security.md', 'utf8');
const ROW = /^\|[^|]+\|[^|]+\| `(test\/[^`]+\.test\.ts)`: (.+?) \|$/gm;
const rows = [...DOC.matchAll(ROW)].map((m) => ({ file: m[1] ?? '', name: (m[2] ?? '').trim() }));

describe('docs/security.md', () => {
  it('names a test for every attack in its table', () => {
    const tableRows = DOC.split('\n').filter((l) => l.startsWith('| ') && !l.startsWith('| attack'));
    expect(rows.length).toBeGreaterThanOrEqual(25);
    expect(rows).toHaveLength(tableRows.length);
  });

  it.each(rows)('$file has the test "$name"', ({ file, name }) => {
    expect(existsSync(file), `${file} does not exist`).toBe(true);
    const source = readFileSync(file, 'utf8');
    // The name as written in the source: a test title, or a row title of a table test.
    expect(
      source.includes(`'${name}'`) || source.includes(`\`${name}\``) || source.includes(`"${name}"`),
    ).toBe(true);
  });
});
