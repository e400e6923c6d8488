/**
 * Running a Markdown walkthrough as written: its fenced blocks are terminal
 * sessions, `$ ` lines are commands (a line ending in `\` continues on the
 * next), the lines after a command are its recorded output, and lines at the
 * top of a block before any command are later output of a command started
 * earlier with `&`.
 *
 * Recorded output is compared loosely, line by line: ids, keys, pins, times,
 * numbers and month names match by their shape, runs of spaces match any
 * run (columns widen with their content), and `…` matches anything (alone
 * on a line: any number of lines). Every other character must be there, so a
 * renamed message, field or option fails.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface CommandStep {
  readonly kind: 'command';
  /** The command with its continuation lines joined (`\` and the newline kept, as a shell reads them). */
  readonly command: string;
  /** The command ends in `&`: it keeps running; its recorded lines are the first ones it prints (some left out). */
  readonly background: boolean;
  readonly expected: readonly string[];
  /** 1-based line of the Markdown where the command starts. */
  readonly line: number;
}

export interface LaterOutputStep {
  readonly kind: 'later-output';
  /** Lines that one of the background commands prints from now on, in this order (others between them). */
  readonly expected: readonly string[];
  readonly line: number;
}

export type WalkStep = CommandStep | LaterOutputStep;

/** The steps of every fenced block, in order. */
export function parseWalkthrough(markdown: string): WalkStep[] {
  const lines = markdown.split('\n');
  const steps: WalkStep[] = [];
  let inBlock = false;
  let current: { command: string[]; expected: string[]; line: number } | null = null;
  let later: { expected: string[]; line: number } | null = null;
  const flush = (): void => {
    if (current) {
      const command = current.command.join('\n');
      const background = /\s&$/.test(command);
      steps.push({ kind: 'command', command: background ? command.replace(/\s*&$/, '') : command, background, expected: trimBlankTail(current.expected), line: current.line });
    }
    if (later && later.expected.length > 0) steps.push({ kind: 'later-output', expected: trimBlankTail(later.expected), line: later.line });
    current = null;
    later = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (/^```/.test(line)) {
      if (inBlock) flush();
      inBlock = !inBlock;
      continue;
    }
    if (!inBlock) continue;
    if (line.startsWith('$ ')) {
      flush();
      const command = [line.slice(2)];
      const start = i + 1;
      while (command[command.length - 1]!.endsWith('\\') && i + 1 < lines.length) command.push(lines[++i]!);
      current = { command, expected: [], line: start };
    } else if (current) {
      current.expected.push(line);
    } else {
      later ??= { expected: [], line: i + 1 };
      later.expected.push(line);
    }
  }
  return steps;
}

function trimBlankTail(lines: readonly string[]): string[] {
  const out = [...lines];
  while (out.length > 0 && out[out.length - 1]!.trim() === '') out.pop();
  return out;
}

/** Volatile pieces of recorded output and the pattern each stands for. */
const VOLATILE: ReadonlyArray<readonly [RegExp, string]> = [
  [/^…/, '.*'],
  [/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z/, '\\d{4}-\\d{2}-\\d{2}T[0-9:.]+Z'],
  ...['dev', 'tok', 'key'].map((kind) => [new RegExp(`^${kind}_[a-z2-7]{16}(?![a-z2-7])`), `${kind}_[a-z2-7]{16}`] as const),
  [/^ctk_key_[a-z2-7]*/, 'ctk_key_[a-z2-7]*'],
  [/^SHA256:[A-Za-z0-9+/]{43}/, 'SHA256:[A-Za-z0-9+/]{43}'],
  [/^sha256\/\/[A-Za-z0-9+/]{43}=/, 'sha256//[A-Za-z0-9+/]{43}='],
  // OpenSSH mode's host key files, named after the key and its certificate.
  [/^host_key-[0-9a-f]{16}-[0-9a-f]{16}/, 'host_key-[0-9a-f]{16}-[0-9a-f]{16}'],
  [/^(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)(?![a-z])/, '[A-Z][a-z]{2}'],
  [/^\d+[dhms](?:\d+[dhms])*(?![A-Za-z0-9])/, '(?:\\d+[dhms])+'],
  [/^\d+/, '\\d+'],
  [/^ +/, ' +'],
];

/** The pattern a recorded output line stands for (see the header). */
export function linePattern(recorded: string): RegExp {
  let source = '';
  const line = recorded.trimEnd();
  let rest = line;
  scan: while (rest.length > 0) {
    // Only where a word starts may an id, a month or a number start (not inside "v2" or "ed25519").
    const atWordStart = !/[A-Za-z0-9_]$/.test(line.slice(0, line.length - rest.length));
    for (const [piece, pattern] of VOLATILE) {
      if (!atWordStart && pattern !== '.*' && pattern !== ' +') continue;
      const m = piece.exec(rest);
      if (m) {
        source += pattern;
        rest = rest.slice(m[0].length);
        continue scan;
      }
    }
    source += rest[0]!.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    rest = rest.slice(1);
  }
  return new RegExp(`^${source}$`);
}

/**
 * Whether ACTUAL (lines) is what EXPECTED records: line for line, where an
 * expected line that is only `…` stands for any number of lines. Undefined
 * when it is; else the first expected line that nothing matched.
 */
export function matchOutput(expected: readonly string[], actual: readonly string[]): string | undefined {
  const act = trimBlankTail(actual.map((l) => l.trimEnd()));
  const patterns = expected.map((l) => (l.trim() === '…' ? null : linePattern(l)));
  const memo = new Map<string, boolean>();
  let deepest = 0;
  const go = (e: number, a: number): boolean => {
    const key = `${e},${a}`;
    const seen = memo.get(key);
    if (seen !== undefined) return seen;
    deepest = Math.max(deepest, e);
    let ok: boolean;
    if (e === patterns.length) ok = a === act.length;
    else if (patterns[e] === null) ok = go(e + 1, a) || (a < act.length && go(e, a + 1));
    else ok = a < act.length && patterns[e]!.test(act[a]!) && go(e + 1, a + 1);
    memo.set(key, ok);
    return ok;
  };
  if (go(0, 0)) return undefined;
  return deepest < expected.length ? expected[deepest] : '(the output has more lines than recorded)';
}

/** Where a reader has got to in one output stream of a background command. */
export interface StreamCursor {
  lines: readonly string[];
  read: number;
}

/**
 * Whether EXPECTED (lines; `…` lines ignored) occur in STREAMS in this
 * order, each line in one of the streams after what was read of it, other
 * lines between them allowed. A command's stdout and stderr are two streams
 * whose lines a terminal interleaves in no fixed order, so the order is
 * kept within each stream. When they all occur, the cursors move past them
 * and the answer is true; otherwise nothing moves.
 */
export function readInOrder(expected: readonly string[], streams: StreamCursor[]): boolean {
  const read = streams.map((s) => s.read);
  for (const pattern of expected.filter((l) => l.trim() !== '…').map(linePattern)) {
    let found = false;
    for (const [i, stream] of streams.entries()) {
      let a = read[i]!;
      while (a < stream.lines.length && !pattern.test(stream.lines[a]!.trimEnd())) a++;
      if (a < stream.lines.length) {
        read[i] = a + 1;
        found = true;
        break;
      }
    }
    if (!found) return false;
  }
  for (const [i, stream] of streams.entries()) stream.read = read[i]!;
  return true;
}

/** Replaces the ports the walkthrough names (whole numbers only) by the ones this run uses. */
export function substitutePorts(command: string, ports: ReadonlyMap<number, number>): string {
  return command.replace(/(?<![\w.])\d+(?!\d)/g, (n) => String(ports.get(Number(n)) ?? n));
}

/**
 * One bash reading commands from a pipe, as a person types them into one
 * terminal: `cd`, `export` and shell variables carry over, `&` makes a job
 * of the shell. Each command's stdout and stderr go to a file of its own
 * (OUTDIR/N.out), so output of background commands is never mixed in;
 * a background command's stderr goes to OUTDIR/N.err.
 */
export class WalkShell {
  private readonly bash: ChildProcessWithoutNullStreams;
  private said = '';
  private count = 0;
  private readonly exited: Promise<void>;

  constructor(cwd: string, env: NodeJS.ProcessEnv, private readonly outDir: string) {
    // Its own process group: stop() ends bash and every job it started.
    this.bash = spawn('bash', ['--noprofile', '--norc'], { cwd, env, detached: true });
    this.bash.stdout.on('data', (c: Buffer) => (this.said += c.toString()));
    this.bash.stderr.on('data', (c: Buffer) => (this.said += c.toString()));
    this.exited = new Promise((resolve) => this.bash.once('exit', () => resolve()));
  }

  /** Runs COMMAND to its end (or, with BACKGROUND, starts it); its exit status and output files. */
  async run(command: string, background: boolean, timeoutMs: number): Promise<{ code: number; outFile: string; errFile: string }> {
    const n = ++this.count;
    const outFile = join(this.outDir, `${n}.out`);
    const errFile = background ? join(this.outDir, `${n}.err`) : outFile;
    const marker = `__walk_done_${n}__`;
    const script = background
      ? `${command} >${outFile} 2>${errFile} </dev/null &\necho ${marker} 0\n`
      : `{\n${command}\n} >${outFile} 2>&1 </dev/null\necho ${marker} $?\n`;
    this.bash.stdin.write(script);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = new RegExp(`${marker} (\\d+)\\n`).exec(this.said);
      if (m) return { code: Number(m[1]), outFile, errFile };
      if (this.bash.exitCode !== null || this.bash.signalCode !== null) throw new Error(`bash exited: ${this.said.slice(-2000)}`);
      if (Date.now() > deadline) throw new Error(`still running after ${timeoutMs / 1000} s`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async output(outFile: string): Promise<string> {
    return readFile(outFile, 'utf8').catch(() => '');
  }

  /** What bash itself said (not the commands' output): job notices, syntax errors. */
  transcript(): string {
    return this.said;
  }

  /** Ends bash and every process of its group (TERM, then KILL after 3 s). */
  async stop(): Promise<void> {
    const pid = this.bash.pid;
    if (pid === undefined) return;
    const signal = (s: NodeJS.Signals): void => {
      try {
        process.kill(-pid, s);
      } catch {
        // the group is gone
      }
    };
    signal('SIGTERM');
    const timer = setTimeout(() => signal('SIGKILL'), 3000);
    await this.exited;
    // bash may go first; its jobs get the KILL when they linger.
    await new Promise((r) => setTimeout(r, 200));
    signal('SIGKILL');
    clearTimeout(timer);
  }
}
