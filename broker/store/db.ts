/**
 * Helpers shared by the table modules: the Db they run on, conversions at
 * the store boundary, keyset cursors, and driver-error translation (a driver
 * error must never reach a caller as is: knex prefixes driver messages with
 * the SQL and its bindings, and SQLite's name tables and columns).
 */
import type { Knex } from 'knex';
import { BrokerError } from '../core/errors.js';
import type { PageRequest } from './types.js';

/** A compiled statement: SQL text with `?` placeholders and its bindings. */
export type Binding = string | number | boolean | null;

/** Anything knex can compile: a query builder or a raw. */
export interface Compilable {
  toSQL(): { toNative(): { sql: string; bindings: readonly unknown[] } };
}

/**
 * Where a table module's statements run: one connection, in or out of a
 * transaction. knex compiles the queries (`qb` never executes anything);
 * the store executes them itself on prepared statements, which is several
 * times cheaper per statement than knex's runner (see sqlite-driver.ts).
 */
export interface Db {
  /** A knex instance without a connection: a portable SQL compiler. */
  readonly qb: Knex;
  /** Rows of a query: a knex builder, or SQL text with `?` placeholders. */
  all<T>(query: Compilable | string, bindings?: readonly Binding[]): Promise<T[]>;
  /** The first row, or undefined. */
  first<T>(query: Compilable | string, bindings?: readonly Binding[]): Promise<T | undefined>;
  /** How many rows an INSERT, UPDATE or DELETE changed. */
  run(query: Compilable | string, bindings?: readonly Binding[]): Promise<number>;
  /** Runs fn atomically: in the current transaction, else in a new one. */
  atomically<T>(fn: (db: Db) => Promise<T>): Promise<T>;
  /**
   * In a transaction only (else undefined: insert the row yourself): queues
   * a row for `insert`. The group committer sends the rows every member of
   * the batch queued in one statement just before COMMIT, in order; a
   * member's rows go with its rollback. Only for append-only tables whose
   * rows cannot fail a constraint (validate first): a failing insert fails
   * the whole batch. Read such a table only after flushDeferred().
   */
  readonly defer?: (insert: DeferredInsert, row: readonly Binding[]) => void;
  /** Inserts the rows queued so far in this batch (before reading their table). */
  readonly flushDeferred?: () => Promise<void>;
  /**
   * Several writers only (PostgreSQL), in a transaction: waits for an
   * exclusive lock on NAME held until the transaction ends, so that the
   * next holder's statements see this one's committed writes. SQLite has
   * one writer at a time: undefined there.
   */
  readonly lock?: (name: string) => Promise<void>;
  /**
   * Several writers only, in a transaction: rows read to decide a write
   * (a device's status) are read FOR UPDATE, so that a concurrent writer of
   * the same row waits for this transaction.
   */
  readonly lockRows?: boolean;
}

/** A multi-row INSERT the group committer may postpone to just before COMMIT. */
export interface DeferredInsert {
  readonly table: string;
  readonly columns: readonly string[];
}
export type DeferredRow = readonly [DeferredInsert, readonly Binding[]];

const deferredSql = new Map<DeferredInsert, string>();

/**
 * Inserts rows, one statement per kind of insert: the rows travel as one
 * JSON array (json_each), so the statement text, hence the prepared
 * statement, is the same whatever the number of rows.
 */
export async function insertDeferred(run: (sql: string, bindings: readonly Binding[]) => Promise<unknown>, rows: readonly DeferredRow[]): Promise<void> {
  const byInsert = new Map<DeferredInsert, (readonly Binding[])[]>();
  for (const [insert, row] of rows) {
    const list = byInsert.get(insert);
    if (list) list.push(row);
    else byInsert.set(insert, [row]);
  }
  for (const [insert, list] of byInsert) {
    let sql = deferredSql.get(insert);
    if (sql === undefined) {
      const values = insert.columns.map((_, i) => `json_extract(value, '$[${i}]')`).join(', ');
      sql = `INSERT INTO ${insert.table} (${insert.columns.join(', ')}) SELECT ${values} FROM json_each(?) ORDER BY key`;
      deferredSql.set(insert, sql);
    }
    await run(sql, [JSON.stringify(list)]);
  }
}

/** Whether the Db's statements go to PostgreSQL (for the few statements that differ by dialect). */
export function isPostgres(db: Pick<Db, 'qb'>): boolean {
  return (db.qb.client as { config?: { client?: unknown } }).config?.client === 'pg';
}

/**
 * Rows of a raw statement. knex.raw returns the driver's own result: an
 * array of rows for SQLite, `{ rows }` for PostgreSQL. Used by the schema
 * step at open (connections.ts), which runs through knex.
 */
export function rawRows<T>(result: unknown): T[] {
  if (Array.isArray(result)) return result as T[];
  return ((result as { rows?: T[] } | null)?.rows ?? []) as T[];
}

// ---- conversions ----------------------------------------------------------
// Integers arrive as numbers from SQLite and as strings from PostgreSQL's
// int8, hence `number | string`.

type DbInt = number | string;

export function toMillis(date: Date): number {
  const ms = date.getTime();
  if (!Number.isFinite(ms)) throw new BrokerError('INTERNAL', 'store: invalid date');
  return ms;
}
export function toMillisOrNull(date: Date | null | undefined): number | null {
  return date === null || date === undefined ? null : toMillis(date);
}
export function toDate(value: DbInt): Date {
  return new Date(Number(value));
}
export function toDateOrNull(value: DbInt | null): Date | null {
  return value === null ? null : toDate(value);
}
export function toNumberOrNull(value: DbInt | null): number | null {
  return value === null ? null : Number(value);
}
export function toBool(value: number | boolean): boolean {
  return value === true || value === 1;
}

/**
 * uint64 values (serials, KRL version) are bound as decimal strings: node's
 * sqlite3 binds JS numbers as doubles (exact only to 2^53), while an
 * integer-looking string is stored as INTEGER by the column's affinity.
 * They are read back through CAST(... AS TEXT) for the same reason.
 */
export function bindUint64(value: bigint): string {
  if (value <= 0n || value > 0x7fffffffffffffffn) {
    throw new BrokerError('INTERNAL', 'store: 64-bit value out of range');
  }
  return value.toString();
}

export function parseJsonObject(text: string): Record<string, unknown> {
  const value: unknown = JSON.parse(text);
  return value !== null && typeof value === 'object' && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : {};
}

/** Escapes LIKE wildcards so that user text matches literally (ESCAPE '\'). */
export function likeLiteral(text: string): string {
  return `%${text.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
}

// ---- keyset pagination ----------------------------------------------------

const DEFAULT_LIMIT = 100;
const MAX_LIMIT = 1000;

export function pageLimit(req: PageRequest): number {
  const limit = req.limit ?? DEFAULT_LIMIT;
  if (!Number.isInteger(limit) || limit < 1) throw new BrokerError('BAD_REQUEST', 'limit must be a positive integer');
  return Math.min(limit, MAX_LIMIT);
}

/** Opaque cursor: the sort key of the last row returned. */
export function encodeCursor(key: readonly (number | string)[]): string {
  return Buffer.from(JSON.stringify(key)).toString('base64url');
}

export function decodeCursor(cursor: string, shape: readonly ('number' | 'string')[]): (number | string)[] {
  try {
    const key: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString());
    if (Array.isArray(key) && key.length === shape.length && key.every((k, i) => typeof k === shape[i])) {
      return key as (number | string)[];
    }
  } catch {
    // fall through: malformed
  }
  throw new BrokerError('BAD_REQUEST', 'invalid cursor');
}

// ---- driver errors --------------------------------------------------------

export interface ConstraintViolation {
  kind: 'unique' | 'foreign-key' | 'check' | 'not-null' | 'other';
  /** `table.column` entries for unique violations, when the driver says. */
  columns: string[];
}

function errorProps(err: unknown): { code?: unknown; message?: unknown; constraint?: unknown; table?: unknown } {
  return typeof err === 'object' && err !== null ? (err as Record<string, unknown>) : {};
}

/**
 * Classifies a constraint violation. SQLite: code SQLITE_CONSTRAINT and a
 * message like `UNIQUE constraint failed: devices.key_fingerprint`.
 * PostgreSQL (future): SQLSTATE 23505/23503/23514/23502 with the constraint
 * name, which knex builds as `<table>_<column>_unique`.
 */
export function constraintViolation(err: unknown): ConstraintViolation | null {
  const { code, message, constraint, table } = errorProps(err);
  if (code === 'SQLITE_CONSTRAINT' && typeof message === 'string') {
    const m = /(UNIQUE|FOREIGN KEY|CHECK|NOT NULL|PRIMARY KEY) constraint failed(?::\s*([\w.]+(?:,\s*[\w.]+)*))?/.exec(message);
    const kinds: Record<string, ConstraintViolation['kind']> = {
      UNIQUE: 'unique',
      'PRIMARY KEY': 'unique',
      'FOREIGN KEY': 'foreign-key',
      CHECK: 'check',
      'NOT NULL': 'not-null',
    };
    return {
      kind: (m && kinds[m[1] ?? '']) ?? 'other',
      columns: m?.[2] ? m[2].split(/,\s*/) : [],
    };
  }
  const pgKinds: Record<string, ConstraintViolation['kind']> = {
    '23505': 'unique',
    '23503': 'foreign-key',
    '23514': 'check',
    '23502': 'not-null',
  };
  if (typeof code === 'string' && code in pgKinds) {
    const columns: string[] = [];
    if (typeof constraint === 'string' && typeof table === 'string' && constraint.startsWith(`${table}_`)) {
      const column = constraint.slice(table.length + 1).replace(/_(unique|pkey)$/, '');
      columns.push(`${table}.${column}`);
    }
    return { kind: pgKinds[code] ?? 'other', columns };
  }
  return null;
}

export function isUniqueViolation(err: unknown, column?: string): boolean {
  const v = constraintViolation(err);
  return v?.kind === 'unique' && (column === undefined || v.columns.includes(column));
}

/**
 * Turns anything that is not already a BrokerError into INTERNAL, keeping
 * only the driver's error code and constraint kind (never SQL or bindings,
 * which may hold hashes) so that logging the cause is safe.
 */
export function toStoreError(err: unknown, operation: string): BrokerError {
  if (err instanceof BrokerError) return err;
  const { code } = errorProps(err);
  // Another process held the file's lock for longer than busy_timeout.
  if (code === 'SQLITE_BUSY') return new BrokerError('STORE_BUSY', `store: ${operation} timed out on the database lock`);
  const violation = constraintViolation(err);
  const detail = [typeof code === 'string' ? code : 'unknown', violation ? `${violation.kind} ${violation.columns.join(',')}` : '']
    .join(' ')
    .trim();
  return new BrokerError('INTERNAL', `store: ${operation} failed`, { cause: new Error(detail) });
}
