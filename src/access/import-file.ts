import { AgentError } from '../core/errors.js';
import { ROLES, type Role } from '../core/types.js';

/**
 * What `vehicle-agent keys import FILE` reads (docs/backup.md "Moving credentials"), pure:
 *
 * - signed keyring operations, as `keys export` writes them: one JWS per line, a JSON list of
 *   JWS, or `{"ops": [...]}` (a keyring set as the cloud publishes it too);
 * - UID cards from another access system: CSV with a header row (columns uid, role, name,
 *   not_before, not_after; uid and role required) or JSON (a list of objects with those fields,
 *   or `{"cards": [...]}`).
 *
 * Every row is checked before anything is signed or written; the first bad one is an
 * `import_invalid` error naming its line (CSV, JWS lines) or item (JSON) and the field.
 */

export interface UidRow {
  /** Where the row is, for messages: `line 4` or `item 2`. */
  readonly where: string;
  readonly uid: Uint8Array;
  readonly role: Role;
  readonly name?: string;
  readonly notBefore?: number;
  readonly notAfter?: number;
}

export type ImportFile =
  | { readonly kind: 'ops'; readonly ops: readonly { readonly where: string; readonly jws: string }[] }
  | { readonly kind: 'uid'; readonly rows: readonly UidRow[] };

/** UIDs are 4, 7 or 10 bytes (ISO/IEC 14443-3 single, double, triple size). */
const UID_SIZES = new Set([4, 7, 10]);
const JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
/** Roles a UID-only card may have: one that can be cloned is never an owner. */
const UID_ROLES: readonly Role[] = ROLES.filter((r) => r !== 'owner');
const COLUMNS = ['uid', 'role', 'name', 'notbefore', 'notafter'] as const;
type Column = (typeof COLUMNS)[number];

const bad = (where: string, message: string, field?: string): AgentError =>
  new AgentError('import_invalid', `${where}: ${message}; nothing was imported`, {
    where,
    ...(field !== undefined ? { field } : {}),
  });

function parseUid(text: string, where: string): Uint8Array {
  const hex = text.replace(/[\s:-]/g, '');
  if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex)) throw bad(where, `uid "${text.slice(0, 40)}" is not hex`, 'uid');
  const bytes = Uint8Array.from(Buffer.from(hex, 'hex'));
  if (!UID_SIZES.has(bytes.length))
    throw bad(where, `uid "${text.slice(0, 40)}" is ${bytes.length} bytes; a card UID has 4, 7 or 10`, 'uid');
  return bytes;
}

function parseTimeField(text: string, where: string, field: string): number {
  const ms = Date.parse(text);
  if (Number.isNaN(ms) || !/^\d{4}-\d{2}-\d{2}/.test(text))
    throw bad(
      where,
      `${field} "${text.slice(0, 40)}" is not an ISO 8601 date-time (2026-12-24T18:00:00Z)`,
      field,
    );
  return ms;
}

function rowFrom(fields: Partial<Record<Column, string>>, where: string): UidRow {
  const uidText = fields.uid?.trim() ?? '';
  if (uidText === '') throw bad(where, 'uid is empty', 'uid');
  const uid = parseUid(uidText, where);
  const roleText = fields.role?.trim() ?? '';
  if (!(UID_ROLES as readonly string[]).includes(roleText)) {
    throw bad(
      where,
      roleText === 'owner'
        ? 'role owner is not allowed for a UID-only card (it can be cloned)'
        : `role "${roleText.slice(0, 20)}" is not one of ${UID_ROLES.join(', ')}`,
      'role',
    );
  }
  const role = roleText as Role;
  const name = fields.name?.trim();
  if (name !== undefined && name.length > 100) throw bad(where, 'name is longer than 100 characters', 'name');
  const nb = fields.notbefore?.trim();
  const na = fields.notafter?.trim();
  const notBefore = nb ? parseTimeField(nb, where, 'not_before') : undefined;
  const notAfter = na ? parseTimeField(na, where, 'not_after') : undefined;
  if (role === 'guest' && notAfter === undefined)
    throw bad(where, 'a guest needs not_after (guests are bounded in time)', 'not_after');
  if (notBefore !== undefined && notAfter !== undefined && notAfter <= notBefore)
    throw bad(where, 'not_after is not after not_before', 'not_after');
  return {
    where,
    uid,
    role,
    ...(name ? { name } : {}),
    ...(notBefore !== undefined ? { notBefore } : {}),
    ...(notAfter !== undefined ? { notAfter } : {}),
  };
}

/** `not_before`, `notBefore`, `Not-Before` all name one column. */
function columnOf(header: string, where: string): Column {
  const key = header
    .trim()
    .toLowerCase()
    .replace(/[\s_-]/g, '');
  if (!(COLUMNS as readonly string[]).includes(key))
    throw bad(
      where,
      `unknown column "${header.slice(0, 40)}" (columns: uid, role, name, not_before, not_after)`,
    );
  return key as Column;
}

/** One CSV record: comma-separated, fields optionally in double quotes ("" inside is a quote). */
export function splitCsvLine(line: string, where: string): string[] {
  const fields: string[] = [];
  let i = 0;
  for (;;) {
    let field = '';
    if (line[i] === '"') {
      i++;
      for (;;) {
        if (i >= line.length) throw bad(where, 'a quoted field is not closed');
        const ch = line[i];
        if (ch === '"') {
          if (line[i + 1] === '"') {
            field += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        field += ch;
        i++;
      }
      if (i < line.length && line[i] !== ',') throw bad(where, 'text after a closing quote');
    } else {
      const end = line.indexOf(',', i);
      field = end < 0 ? line.slice(i) : line.slice(i, end);
      i = end < 0 ? line.length : end;
    }
    fields.push(field);
    if (i >= line.length) return fields;
    i++; // the comma
  }
}

function checkUnique(rows: readonly UidRow[]): void {
  const seen = new Map<string, string>();
  for (const row of rows) {
    const key = Buffer.from(row.uid).toString('hex');
    const first = seen.get(key);
    if (first !== undefined) throw bad(row.where, `uid ${key} is already on ${first}`, 'uid');
    seen.set(key, row.where);
  }
}

function fromJson(value: unknown): ImportFile {
  const list = Array.isArray(value)
    ? value
    : typeof value === 'object' && value !== null
      ? ((value as { ops?: unknown; cards?: unknown }).ops ?? (value as { cards?: unknown }).cards)
      : undefined;
  if (!Array.isArray(list))
    throw bad(
      'file',
      'JSON must be a list, {"ops": [JWS, ...]} or {"cards": [{"uid": ..., "role": ...}, ...]}',
    );
  if (list.length === 0) throw bad('file', 'the list is empty');
  if (list.every((item) => typeof item === 'string')) {
    return {
      kind: 'ops',
      ops: list.map((jws: string, i) => {
        if (!JWS.test(jws.trim())) throw bad(`item ${i + 1}`, 'not a signed operation (JWS)');
        return { where: `item ${i + 1}`, jws: jws.trim() };
      }),
    };
  }
  const rows = list.map((item: unknown, i) => {
    const where = `item ${i + 1}`;
    if (typeof item !== 'object' || item === null || Array.isArray(item))
      throw bad(where, 'not an object with uid and role');
    const fields: Partial<Record<Column, string>> = {};
    for (const [k, v] of Object.entries(item)) {
      const column = columnOf(k, where);
      if (typeof v !== 'string') throw bad(where, `${k} must be a string`, k);
      fields[column] = v;
    }
    return rowFrom(fields, where);
  });
  checkUnique(rows);
  return { kind: 'uid', rows };
}

export function parseImportFile(text: string): ImportFile {
  const trimmed = text.replace(/^\uFEFF/, '').trim();
  if (trimmed === '') throw bad('file', 'it is empty');
  if (trimmed.startsWith('{') || trimmed.startsWith('[')) {
    let value: unknown;
    try {
      value = JSON.parse(trimmed);
    } catch (err) {
      throw bad('file', `not valid JSON (${(err as Error).message})`);
    }
    return fromJson(value);
  }
  const lines = text
    .replace(/^\uFEFF/, '')
    .split('\n')
    .map((raw, i) => ({ where: `line ${i + 1}`, text: raw.replace(/\r$/, '') }))
    .filter((l) => l.text.trim() !== '' && !l.text.trim().startsWith('#'));
  const first = lines[0];
  if (first === undefined) throw bad('file', 'it holds no rows');
  if (JWS.test(first.text.trim())) {
    return {
      kind: 'ops',
      ops: lines.map((l) => {
        if (!JWS.test(l.text.trim())) throw bad(l.where, 'not a signed operation (JWS)');
        return { where: l.where, jws: l.text.trim() };
      }),
    };
  }
  const header = splitCsvLine(first.text, first.where).map((h) => columnOf(h, first.where));
  for (const required of ['uid', 'role'] as const)
    if (!header.includes(required))
      throw bad(
        first.where,
        `the header row has no ${required} column (columns: uid, role, name, not_before, not_after)`,
      );
  if (new Set(header).size !== header.length) throw bad(first.where, 'a column is named twice');
  if (lines.length === 1) throw bad('file', 'it holds a header and no rows');
  const rows = lines.slice(1).map((l) => {
    const values = splitCsvLine(l.text, l.where);
    if (values.length !== header.length)
      throw bad(l.where, `${values.length} fields where the header has ${header.length}`);
    const fields: Partial<Record<Column, string>> = {};
    header.forEach((column, i) => {
      fields[column] = values[i] ?? '';
    });
    return rowFrom(fields, l.where);
  });
  checkUnique(rows);
  return { kind: 'uid', rows };
}
