import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

/**
 * The house rules of docs/architecture.md, checked over the real import graph of src/ (static
 * imports, re-exports and dynamic import(), type-only ones included: a type import still ties
 * one part to another's shape).
 */
const SRC = fileURLToPath(new URL('../../../src/', import.meta.url));

interface Edge {
  /** Importing file, relative to src/ (e.g. agent/agent.ts). */
  readonly from: string;
  /** Imported file relative to src/ (e.g. sim/demo.ts), or a package / node: builtin as written. */
  readonly to: string;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

function importGraph(): Edge[] {
  const edges: Edge[] = [];
  for (const file of sourceFiles(SRC)) {
    const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
    for (const { fileName } of info.importedFiles) {
      const to = fileName.startsWith('.')
        ? relative(SRC, resolve(dirname(file), fileName)).replace(/\.js$/, '.ts')
        : fileName;
      edges.push({ from: relative(SRC, file), to });
    }
  }
  return edges;
}

/** The part of src/ a file belongs to: its first folder, or the file itself at the top. */
const part = (path: string): string => path.split('/')[0] ?? path;
/** An edge to a file of src/ (imports of packages and node: builtins keep their name as written). */
const isLocal = (edge: Edge): boolean => edge.to.endsWith('.ts');

const PURE = ['access', 'crypto', 'core'];
const UNLOCK_PATH = ['agent', 'access', 'nfc', 'ble', 'relay'];
const IO_MODULES = [
  'node:fs',
  'node:fs/promises',
  'node:net',
  'node:dgram',
  'node:child_process',
  'node:http',
  'node:https',
  'node:tls',
  'serialport',
  'mqtt',
  'node-ble',
  'dbus-next',
  'pino',
];

/**
 * The BLE protocol side runs the same whichever way the phone connects (src/ble/channel.ts): it
 * must not reach the central's D-Bus code, so a peripheral transport can drive it (issue 14).
 */
const BLE_PROTOCOL_SIDE = (path: string): boolean =>
  path.startsWith('ble/protocol/') ||
  ['ble/channel.ts', 'ble/exchange.ts', 'ble/reader.ts', 'ble/enrollment.ts'].includes(path);
const BLE_CENTRAL = [
  'node-ble',
  'dbus-next',
  'ble/link.ts',
  'ble/discovery.ts',
  'ble/scanner.ts',
  'ble/gatt-connect.ts',
  'ble/bus-connection.ts',
  'ble/dbus-calls.ts',
  'ble/link-session.ts',
];

type Rule = { readonly name: string; readonly broken: (edge: Edge) => boolean };

const RULES: readonly Rule[] = [
  {
    name: 'only src/app imports src/sim',
    broken: (e) => isLocal(e) && part(e.to) === 'sim' && part(e.from) !== 'app' && part(e.from) !== 'sim',
  },
  {
    name: 'nothing but src/app imports src/app (src/cli may, as the other entry point)',
    broken: (e) => isLocal(e) && part(e.to) === 'app' && !['app', 'cli'].includes(part(e.from)),
  },
  {
    name: 'access, crypto and core import no I/O module',
    broken: (e) => PURE.includes(part(e.from)) && IO_MODULES.includes(e.to),
  },
  {
    name: 'access, crypto and core import only each other',
    broken: (e) => PURE.includes(part(e.from)) && isLocal(e) && !PURE.includes(part(e.to)),
  },
  {
    name: 'nothing on the unlock path imports src/cloud',
    broken: (e) => UNLOCK_PATH.includes(part(e.from)) && isLocal(e) && part(e.to) === 'cloud',
  },
  {
    name: "the BLE protocol side imports none of the central's D-Bus code",
    broken: (e) => BLE_PROTOCOL_SIDE(e.from) && BLE_CENTRAL.includes(e.to),
  },
];

function violations(edges: readonly Edge[], rule: Rule): string[] {
  return edges.filter(rule.broken).map((e) => `${e.from} -> ${e.to}`);
}

/** Cycles between parts, each as `a -> b -> ... -> a` (one per strongly connected group). */
function partCycles(edges: readonly Edge[]): string[] {
  const next = new Map<string, Set<string>>();
  for (const e of edges) {
    if (!isLocal(e)) continue;
    const [a, b] = [part(e.from), part(e.to)];
    if (a === b) continue;
    if (!next.has(a)) next.set(a, new Set());
    next.get(a)?.add(b);
  }
  const cycles: string[] = [];
  const seen = new Set<string>();
  const walk = (node: string, path: string[]): void => {
    const at = path.indexOf(node);
    if (at >= 0) {
      const cycle = [...path.slice(at), node];
      const key = [...cycle.slice(0, -1)].sort().join(',');
      if (!seen.has(key)) {
        seen.add(key);
        cycles.push(cycle.join(' -> '));
      }
      return;
    }
    for (const to of next.get(node) ?? []) walk(to, [...path, node]);
  };
  for (const start of next.keys()) walk(start, []);
  return cycles;
}

/**
 * Known cycles between parts, each with why it is there. Shrink this list; never grow it without
 * a reason that would convince a reviewer.
 */
const KNOWN_CYCLES: readonly string[] = [];

describe('import boundaries (docs/architecture.md)', () => {
  const edges = importGraph();

  it('reads the real graph: the unlock path and the root are in it', () => {
    expect(edges.length).toBeGreaterThan(500);
    expect(edges).toContainEqual({ from: 'app/start.ts', to: 'app/readers.ts' });
    expect(edges).toContainEqual({ from: 'agent/agent.ts', to: 'access/decision.ts' });
  });

  for (const rule of RULES) {
    it(rule.name, () => {
      expect(violations(edges, rule)).toEqual([]);
    });
  }

  it('no import cycle between parts', () => {
    expect(partCycles(edges).filter((c) => !KNOWN_CYCLES.includes(c))).toEqual([]);
  });

  it('each rule and the cycle check catch what they forbid', () => {
    const broken: Record<string, Edge> = {
      'only src/app imports src/sim': { from: 'nfc/reader.ts', to: 'sim/pn532-emulator.ts' },
      'nothing but src/app imports src/app (src/cli may, as the other entry point)': {
        from: 'status/server.ts',
        to: 'app/sim.ts',
      },
      'access, crypto and core import no I/O module': { from: 'crypto/keys.ts', to: 'node:fs' },
      'access, crypto and core import only each other': { from: 'access/keyring.ts', to: 'store/journal.ts' },
      'nothing on the unlock path imports src/cloud': { from: 'ble/reader.ts', to: 'cloud/command.ts' },
      "the BLE protocol side imports none of the central's D-Bus code": {
        from: 'ble/exchange.ts',
        to: 'ble/link-session.ts',
      },
    };
    for (const rule of RULES) {
      const edge = broken[rule.name];
      expect(edge, rule.name).toBeDefined();
      if (edge) expect(violations([edge], rule), rule.name).toEqual([`${edge.from} -> ${edge.to}`]);
    }
    expect(
      partCycles([
        { from: 'nfc/a.ts', to: 'store/b.ts' },
        { from: 'store/b.ts', to: 'nfc/c.ts' },
      ]),
    ).toEqual(['nfc -> store -> nfc']);
    expect(partCycles([{ from: 'app/a.ts', to: 'store/b.ts' }])).toEqual([]);
  });
});
