import { describe, expect, it } from 'vitest';
import { parseImportFile, splitCsvLine } from '../../../src/access/import-file.js';
import { AgentError } from '../../../src/core/errors.js';

const JWS_A = 'eyJhbGciOiJFUzI1NiJ9.eyJ2IjoxfQ.c2ln';
const JWS_B = 'eyJhbGciOiJFUzI1NiJ9.eyJ2IjoyfQ.c2ln';

function refusal(text: string): { code: string; message: string; where: unknown } {
  try {
    parseImportFile(text);
  } catch (err) {
    if (err instanceof AgentError) return { code: err.code, message: err.message, where: err.details.where };
    throw err;
  }
  throw new Error('parsed');
}

describe('keys import file', () => {
  it('reads signed operations in every form keys export and the cloud write', () => {
    for (const text of [
      `${JWS_A}\n${JWS_B}\n`,
      `# exported\n\n${JWS_A}\r\n${JWS_B}`,
      JSON.stringify([JWS_A, JWS_B]),
      JSON.stringify({ vehicleId: 'VA-X', ops: [JWS_A, JWS_B] }),
      JSON.stringify({ set: 'x', ops: [JWS_A, JWS_B] }),
    ]) {
      const file = parseImportFile(text);
      expect(file.kind).toBe('ops');
      expect(file.kind === 'ops' && file.ops.map((o) => o.jws)).toEqual([JWS_A, JWS_B]);
    }
  });

  it('reads UID cards from CSV: any column order and spelling, quotes, separators in the UID', () => {
    const file = parseImportFile(
      [
        '\uFEFFRole,UID,Name,Not-Before,not_after',
        'driver,04A1B2C3,"Smith, Ann",,',
        'guest,04:a1:b2:c3:d4:e5:f6,"Bob ""B"" Jones",2026-01-01,2026-02-01T00:00:00Z',
        '',
        '# a comment',
        'service,04 A1 B2 C3 D4 E5 F6 07 08 09,,,',
      ].join('\n'),
    );
    expect(file.kind).toBe('uid');
    if (file.kind !== 'uid') return;
    expect(file.rows.map((r) => [r.where, Buffer.from(r.uid).toString('hex'), r.role, r.name])).toEqual([
      ['line 2', '04a1b2c3', 'driver', 'Smith, Ann'],
      ['line 3', '04a1b2c3d4e5f6', 'guest', 'Bob "B" Jones'],
      ['line 6', '04a1b2c3d4e5f6070809', 'service', undefined],
    ]);
    expect(file.rows[1]?.notBefore).toBe(Date.parse('2026-01-01'));
    expect(file.rows[1]?.notAfter).toBe(Date.parse('2026-02-01T00:00:00Z'));
  });

  it('reads UID cards from JSON', () => {
    const cards = [
      { uid: '04a1b2c3', role: 'driver', name: 'Ann' },
      { uid: '04a1b2c4', role: 'guest', notAfter: '2027-01-01T00:00:00Z' },
    ];
    for (const text of [JSON.stringify(cards), JSON.stringify({ cards })]) {
      const file = parseImportFile(text);
      expect(file.kind === 'uid' && file.rows.map((r) => [r.where, r.role])).toEqual([
        ['item 1', 'driver'],
        ['item 2', 'guest'],
      ]);
    }
  });

  const H = 'uid,role,name,not_after\n';
  const cases: [string, string, string][] = [
    ['bad hex', `${H}04A1B2C3,driver,,\nzz12,driver,,\n`, 'line 3'],
    ['odd hex', `${H}04A1B2C,driver,,\n`, 'line 2'],
    ['5-byte uid', `${H}04A1B2C3D4,driver,,\n`, 'line 2'],
    ['empty uid', `${H},driver,,\n`, 'line 2'],
    ['unknown role', `${H}04A1B2C3,boss,,\n`, 'line 2'],
    ['owner card', `${H}04A1B2C3,owner,,\n`, 'line 2'],
    ['guest without end', `${H}04A1B2C3,driver,,\n04A1B2C4,guest,,\n`, 'line 3'],
    ['bad time', `${H}04A1B2C3,driver,,tomorrow\n`, 'line 2'],
    ['end before start', 'uid,role,not_before,not_after\n04A1B2C3,driver,2027-01-01,2026-01-01\n', 'line 2'],
    ['too few fields', `${H}04A1B2C3,driver\n`, 'line 2'],
    ['too many fields', `${H}04A1B2C3,driver,,,x\n`, 'line 2'],
    ['open quote', `${H}04A1B2C3,driver,"Ann,\n`, 'line 2'],
    ['duplicate', `${H}04A1B2C3,driver,,\n04:A1:B2:C3,driver,,\n`, 'line 3'],
    ['unknown column', 'uid,role,pin\n04A1B2C3,driver,1234\n', 'line 1'],
    ['no role column', 'uid,name\n04A1B2C3,Ann\n', 'line 1'],
    ['header only', H, 'file'],
    ['empty', '  \n', 'file'],
    ['bad JSON', '[{"uid": ', 'file'],
    ['JSON number uid', '[{"uid": 12345678, "role": "driver"}]', 'item 1'],
    ['JSON unknown field', '[{"uid": "04a1b2c3", "role": "driver", "pin": "1"}]', 'item 1'],
    ['JSON mixed list', JSON.stringify([JWS_A, 'not a jws']), 'item 2'],
    ['JSON other object', '{"keys": []}', 'file'],
    ['a line that is no JWS among JWS', `${JWS_A}\nhello\n`, 'line 2'],
  ];
  for (const [name, text, where] of cases) {
    it(`refuses ${name}, naming ${where}`, () => {
      const r = refusal(text);
      expect(r.code).toBe('import_invalid');
      expect(r.where).toBe(where);
      expect(r.message).toMatch(new RegExp(`^${where}: .*; nothing was imported$`));
    });
  }

  it('splits CSV records', () => {
    expect(splitCsvLine('a,"b,c",,"d""e"', 'line 1')).toEqual(['a', 'b,c', '', 'd"e']);
    expect(splitCsvLine('', 'line 1')).toEqual(['']);
    expect(() => splitCsvLine('"a"b', 'line 1')).toThrow(/text after a closing quote/);
  });
});
