/**
 * Two rules of the house that ESLint's per-import rules cannot see
 * (docs/architecture.md), checked on every `npm run lint`:
 *
 * - the import graph has no cycles (static imports, type-only ones too: a
 *   cycle of types is still two files that cannot be read one at a time);
 * - a source file over MAX_LINES lines says at its top why it is long, in a
 *   line of its first comment that starts with "Long file:".
 *
 * Usage: node --import tsx scripts/check-layout.ts [--list]
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const ROOMS = ['api', 'ca', 'broker', 'agent', 'provisioning', 'cli', 'scripts', 'testkit', 'test'];
const MAX_LINES = 400;
const IMPORT = /(?:^|[\s;])(?:import|export)\s[^'"]*?from\s*['"](\.{1,2}\/[^'"]+)['"]|^\s*import\s*['"](\.{1,2}\/[^'"]+)['"]/gm;

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...sourceFiles(path));
    else if (name.endsWith('.ts')) out.push(path);
  }
  return out;
}

/** File → the project files it imports (relative specifiers, .js → .ts). */
export function importGraph(files: readonly string[]): Map<string, string[]> {
  const known = new Set(files);
  const graph = new Map<string, string[]>();
  for (const file of files) {
    const text = readFileSync(file, 'utf8');
    const targets: string[] = [];
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[1] ?? m[2]!;
      const target = normalize(join(dirname(file), spec.replace(/\.js$/, '.ts')));
      if (known.has(target)) targets.push(target);
    }
    graph.set(file, targets);
  }
  return graph;
}

/** The strongly connected components with more than one file, or a file importing itself (Tarjan). */
export function importCycles(graph: ReadonlyMap<string, readonly string[]>): string[][] {
  let index = 0;
  const indices = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  const visit = (v: string): void => {
    indices.set(v, index);
    low.set(v, index);
    index++;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!indices.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, indices.get(w)!));
      }
    }
    if (low.get(v) === indices.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1 || (graph.get(v) ?? []).includes(v)) cycles.push(component.sort());
    }
  };
  for (const v of graph.keys()) if (!indices.has(v)) visit(v);
  return cycles;
}

/** Files over MAX_LINES lines whose opening comment gives no "Long file:" reason. */
export function unexplainedLongFiles(files: readonly string[]): Array<{ file: string; lines: number }> {
  const out: Array<{ file: string; lines: number }> = [];
  for (const file of files) {
    const text = readFileSync(file, 'utf8');
    const lines = text.split('\n').length - (text.endsWith('\n') ? 1 : 0);
    if (lines <= MAX_LINES) continue;
    const header = /^(?:#![^\n]*\n)?\s*\/\*\*?([\s\S]*?)\*\//.exec(text)?.[1] ?? '';
    if (!/^\s*\*?\s*Long file:/m.test(header)) out.push({ file, lines });
  }
  return out;
}

const isMain = process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1];
if (isMain) {
  const files = ROOMS.flatMap((room) => sourceFiles(join(ROOT, room)));
  const cycles = importCycles(importGraph(files));
  const long = unexplainedLongFiles(files);
  const rel = (f: string): string => relative(ROOT, f);
  for (const cycle of cycles) console.error(`import cycle: ${cycle.map(rel).join(' ⇄ ')}`);
  for (const { file, lines } of long) console.error(`${rel(file)}: ${lines} lines and no "Long file:" reason in its opening comment (split it, or say why not)`);
  if (process.argv.includes('--list')) console.log(`${files.length} files, ${cycles.length} cycles, ${long.length} unexplained long files`);
  process.exitCode = cycles.length || long.length ? 1 : 0;
}
