import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { jsonDataBlock, STATUS_PAGE_CSP, statusPageHtml } from '../../../src/status/page.js';

const BLOCK = /<script type="application\/json" id="initial-state">([^<]*)<\/script>/;

describe('the state in the page for its first paint', () => {
  it('is a data block the script parses back, and the page without state has none', () => {
    const state = { vehicleId: 'VA-TEST', lock: 'locked', readers: [{ id: 'nfc0', health: 'ok' }] };
    const match = BLOCK.exec(statusPageHtml(state));
    expect(JSON.parse(match?.[1] ?? 'null')).toEqual(state);
    expect(statusPageHtml()).not.toContain('initial-state"');
  });

  it.each([
    '</script><script>alert(1)</script>',
    '<!-- <script>',
    ']]></script>',
    'a & b > c',
    'line\u2028separator\u2029paragraph',
  ])('no string in the state closes the block or opens markup: %j', (text) => {
    const html = statusPageHtml({ name: text, nested: [{ detail: text }] });
    const match = BLOCK.exec(html);
    expect(JSON.parse(match?.[1] ?? 'null')).toEqual({ name: text, nested: [{ detail: text }] });
    // Exactly the two script elements the page always has: the data block and the page's script.
    expect(html.match(/<script/g)).toHaveLength(2);
  });

  it('any JSON value round-trips and the block holds no markup characters', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const text = jsonDataBlock(value);
        expect(text).not.toMatch(/[<>&\u2028\u2029]/);
        expect(JSON.parse(text)).toEqual(JSON.parse(JSON.stringify(value)));
      }),
      { seed: Number(process.env.TEST_SEED ?? 16) },
    );
  });

  it('the Content-Security-Policy still allows only the page script (the data block is never run)', () => {
    const scriptSrc = STATUS_PAGE_CSP.split('; ').find((d) => d.startsWith('script-src '));
    expect(scriptSrc?.split(' ')).toHaveLength(2);
    expect(STATUS_PAGE_CSP).not.toContain('unsafe-inline');
  });
});
