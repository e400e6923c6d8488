/**
 * CLI output, one rule for every command: tables and sentences for people;
 * with --json, one JSON document on stdout for a result, and every failure
 * as {"error":{"code","message"}} on stderr (stderr, because the stdout of
 * `ssh` and `ssh-proxy` belongs to the SSH session), with the same exit
 * status as without --json. Notices on stderr are then JSON lines too
 * ({"notice": …}), so that every line a script reads parses.
 */
import { CommanderError } from 'commander';
import { CaError } from '../ca/index.js';

/** The help text of the --json option every command has. */
export const JSON_OPTION_HELP = 'print JSON for scripts (errors: {"error":{"code","message"}} on stderr)';

let jsonOutput = false;

/** Set once by main.ts from the command line: whether notices on stderr are JSON too. */
export function setJsonOutput(on: boolean): void {
  jsonOutput = on;
}

/** A notice or warning for the person at the terminal, on stderr: "certunnel: TEXT", or {"notice":TEXT} under --json. */
export function notice(text: string): void {
  process.stderr.write(jsonOutput ? `${JSON.stringify({ notice: text })}\n` : `certunnel: ${text}\n`);
}

/** --json among the arguments before `--` (after it they belong to ssh). */
export function wantsJson(args: readonly string[]): boolean {
  const end = args.indexOf('--');
  return (end === -1 ? args : args.slice(0, end)).includes('--json');
}

/** A result: VALUE as JSON with --json, else TEXT for people. */
export function printResult(json: boolean | undefined, value: unknown, text: string): void {
  if (json) printJson(value);
  else process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`);
}

export function printTable<T extends object>(rows: readonly T[], columns: ReadonlyArray<keyof T & string>): void {
  const cells = rows.map((row) => columns.map((c) => formatCell(row[c])));
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((r) => r[i]!.length)));
  const line = (values: readonly string[]): string => values.map((v, i) => v.padEnd(widths[i]!)).join('  ').trimEnd();
  process.stdout.write(`${line(columns.map((c) => c.toUpperCase()))}\n`);
  for (const r of cells) process.stdout.write(`${line(r)}\n`);
  if (rows.length === 0) process.stdout.write('(none)\n');
}

function formatCell(value: unknown): string {
  if (value === null || value === undefined) return '-';
  if (value instanceof Date) return value.toISOString();
  if (Array.isArray(value)) return value.join(',');
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

/** A failure the CLI reports as "certunnel: CODE: message" with exit status 1 (or the given one). */
export class CliError extends Error {
  override name = 'CliError';
  constructor(
    readonly code: string,
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** Commander's own failures (unknown option, missing argument) as a code. */
function commanderCode(err: CommanderError): string {
  return err.code === 'commander.unknownCommand' ? 'UNKNOWN_COMMAND' : 'BAD_ARGUMENT';
}

/**
 * Reports ERR on stderr ("certunnel: CODE: message", or the JSON error) and
 * returns the exit status. Only coded errors show their message: anything
 * else is INTERNAL with its message (never a stack, never a secret).
 */
export function reportError(err: unknown, json: boolean): number {
  let code: string;
  let message: string;
  let exitCode = 1;
  if (err instanceof CommanderError) {
    // Help and --version end the run through here too, successfully; commander already printed the rest.
    if (err.exitCode === 0 || !json) return err.exitCode;
    [code, message, exitCode] = [commanderCode(err), err.message.replace(/^error: /, ''), err.exitCode];
  } else {
    const coded = err as { code?: unknown; message?: unknown; exitCode?: unknown };
    const isCoded = err instanceof CliError || err instanceof CaError || (typeof coded.code === 'string' && /^[A-Z_]+$/.test(coded.code));
    code = isCoded ? String(coded.code) : 'INTERNAL';
    message = isCoded ? String(coded.message) : err instanceof Error ? err.message : String(err);
    if (isCoded && typeof coded.exitCode === 'number') exitCode = coded.exitCode;
  }
  process.stderr.write(json ? `${JSON.stringify({ error: { code, message } })}\n` : `certunnel: ${code}: ${message}\n`);
  return exitCode;
}
