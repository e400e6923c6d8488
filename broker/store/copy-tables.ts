/**
 * What `certunnel store migrate` copies, and how a row is made comparable
 * on both sides (copy.ts copies, copy-target.ts looks at the target first).
 *
 * The tables in foreign-key order: a row is copied after the rows it
 * references (devices.token_id → enrollment_tokens; port_blocks and
 * certificates → devices). knex's own tables (knex_migrations, its lock)
 * are not data: the target's migrations write its own. A migration that
 * adds a table must add it here; the copy refuses a schema with a table
 * this list does not name (copy.ts, checkTables), so nothing is left
 * behind silently.
 *
 * Canonical values: every column as the drivers hand it to the store, then
 * one form for both sides: NULL stays null, integers are decimal strings
 * (SQLite's are read CAST AS TEXT, since node's sqlite3 turns INTEGERs into
 * doubles, exact only to 2^53, and serials are 64-bit; PostgreSQL's int8
 * arrives as a string, int4 as a number), booleans are '1' or '0' (SQLite
 * stores 0/1, pg gives true/false), text is the string.
 */
import { createHash, type Hash } from 'node:crypto';

export const COPY_TABLES = [
  'enrollment_tokens',
  'devices',
  'port_blocks',
  'certificates',
  'serial_counter',
  'api_keys',
  'renew_nonces',
  'audit_events',
  'meta',
  'nodes',
  'node_join_tokens',
  'trust_rotations',
] as const;
export type CopyTable = (typeof COPY_TABLES)[number];

/** Tables of the schema that hold no fleet data. */
export const KNEX_TABLES: readonly string[] = ['knex_migrations', 'knex_migrations_lock'];

/** Rows the migrations insert themselves (001): a target holding only these is empty. */
export const SEEDED_ROWS: Partial<Record<CopyTable, readonly (readonly (string | null)[])[]>> = {
  serial_counter: [['1', '0']],
  meta: [['krl_version', '0']],
};

export type ColumnKind = 'int' | 'bool' | 'text';

export interface Column {
  readonly name: string;
  readonly kind: ColumnKind;
}

export interface TableShape {
  readonly table: CopyTable;
  /** In the target's column order. */
  readonly columns: readonly Column[];
  /** The single-column primary key: rows are read and hashed in its order. */
  readonly key: Column;
}

/** A PostgreSQL data_type as one of the three kinds the schema uses. */
export function kindOfPgType(dataType: string): ColumnKind {
  if (dataType === 'bigint' || dataType === 'integer' || dataType === 'smallint') return 'int';
  if (dataType === 'boolean') return 'bool';
  return 'text';
}

export type Canonical = string | null;

/** A value as read by either driver, in the one form both sides hash (see the header). */
export function canonical(value: unknown, kind: ColumnKind): Canonical {
  if (value === null || value === undefined) return null;
  if (kind === 'bool') {
    if (value === true || value === 1 || value === '1') return '1';
    if (value === false || value === 0 || value === '0') return '0';
  }
  if (typeof value === 'bigint' || typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (typeof value === 'string') return value;
  if (Buffer.isBuffer(value)) return `\\x${value.toString('hex')}`;
  return JSON.stringify(value);
}

/** A canonical value as a pg binding for a column of KIND ('1'/'0' as booleans; anything else as is, for PostgreSQL to accept or refuse). */
export function pgBinding(value: Canonical, kind: ColumnKind): string | boolean | null {
  if (value === null) return null;
  if (kind === 'bool' && (value === '1' || value === '0')) return value === '1';
  return value;
}

/** SHA-256 over the canonical rows of a table, in key order, one JSON array per line; and their count. */
export class TableDigest {
  rows = 0;
  readonly #hash: Hash = createHash('sha256');

  add(row: readonly Canonical[]): void {
    this.rows++;
    this.#hash.update(`${JSON.stringify(row)}\n`);
  }

  hex(): string {
    return this.#hash.copy().digest('hex');
  }
}
