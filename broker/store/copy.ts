/**
 * Copies a broker's whole state from its SQLite file into a PostgreSQL
 * database whose schema the migrations have just made (issue #16,
 * `certunnel store migrate`; the data directory's side is
 * broker/compose/store-migrate.ts).
 *
 * One PostgreSQL transaction, so that a failure anywhere (a row PostgreSQL
 * refuses, a lost connection, a verification that does not match, a kill)
 * leaves the target as it was: empty.
 *
 * 1. Every table is locked (ACCESS EXCLUSIVE) and the target looked at
 *    again (copy-target.ts): nothing may have arrived since the first look.
 * 2. The tables' shapes are read from the target (columns, kinds, primary
 *    key) and must name exactly the SQLite file's columns: a column one
 *    side lacks would be lost or left NULL silently.
 * 3. The migrations' seed rows (serial_counter, meta) are replaced by the
 *    source's; then table by table in foreign-key order (copy-tables.ts),
 *    in chunks read by keyset (primary key order) from SQLite and written
 *    as multi-row INSERTs, ids kept (audit and rotation ids too); their sequences are
 *    then set past the largest id.
 * 4. Verification: each table read back from the target, in the same key
 *    order, its rows' count and SHA-256 over their canonical form compared
 *    with the source's (computed while reading it). Text keys are ordered
 *    COLLATE "C" on PostgreSQL: bytewise, as SQLite's BINARY.
 * 5. The migration's own audit event, then COMMIT.
 *
 * The SQLite file is opened read-only and never written.
 */
import pg from 'pg';
import sqlite3 from 'sqlite3';
import { BrokerError } from '../core/errors.js';
import { canonical, COPY_TABLES, kindOfPgType, pgBinding, SEEDED_ROWS, TableDigest, type Canonical, type Column, type CopyTable, type TableShape } from './copy-tables.js';
import { inspectTarget, refuseUnlessEmpty, type TargetState } from './copy-target.js';
import { toPgStoreError } from './postgres.js';

/** Rows per chunk read from SQLite and per INSERT (fewer for wide tables: PostgreSQL binds at most 65535 values). */
const CHUNK_ROWS = 500;
const MAX_BINDINGS = 60_000;
/** How long the copy waits for a lock held by someone else on the target. */
const LOCK_TIMEOUT_MS = 10_000;

export interface CopyOptions {
  readonly sqliteFile: string;
  readonly databaseUrl: string;
  /** The fleet's user CA fingerprint: a target holding another fleet is refused (DATABASE_IN_USE). */
  readonly fleetUserCa: string;
  /** Appended to the target's audit trail after the verification, in the same transaction. */
  readonly event: { readonly at: Date; readonly actor: string; readonly action: string; readonly details: (copied: readonly TableCopyReport[]) => Readonly<Record<string, unknown>> };
  readonly chunkRows?: number;
}

export interface TableCopyReport {
  readonly table: CopyTable;
  readonly rows: number;
  /** SHA-256 of the table's canonical rows in key order (copy-tables.ts); the same on both sides. */
  readonly sha256: string;
}

// ---- SQLite, read-only -----------------------------------------------------

interface SqliteReader {
  all(sql: string, bindings?: readonly unknown[]): Promise<Record<string, unknown>[]>;
  close(): Promise<void>;
}

/** SQLite URI for a read-only open: `?`, `#` and `%` escaped in the path. */
function readonlyUri(filename: string): string {
  return `file:${filename.replace(/[%?#]/g, (c) => `%${c.charCodeAt(0).toString(16)}`)}?mode=ro`;
}

function openSqlite(filename: string): Promise<SqliteReader> {
  return new Promise((resolve, reject) => {
    const db = new sqlite3.Database(readonlyUri(filename), sqlite3.OPEN_READONLY | sqlite3.OPEN_URI, (err) => {
      if (err) return reject(new BrokerError('CONFIG_INVALID', `cannot open the SQLite store read-only: ${err.message}`));
      resolve({
        all: (sql, bindings = []) => new Promise((res, rej) => db.all(sql, [...bindings], (e, rows) => (e ? rej(e) : res(rows as Record<string, unknown>[])))),
        close: () => new Promise((res) => db.close(() => res())),
      });
    });
  });
}

// ---- shapes ----------------------------------------------------------------

async function tableShapes(client: pg.ClientBase, source: SqliteReader): Promise<TableShape[]> {
  const shapes: TableShape[] = [];
  for (const table of COPY_TABLES) {
    const cols = (
      await client.query<{ name: string; type: string }>(
        `SELECT column_name AS name, data_type AS type FROM information_schema.columns
          WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position`,
        [table],
      )
    ).rows;
    const keys = (
      await client.query<{ name: string }>(
        `SELECT a.attname AS name FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
          WHERE i.indrelid = $1::regclass AND i.indisprimary`,
        [table],
      )
    ).rows;
    const columns: Column[] = cols.map((c) => ({ name: c.name, kind: kindOfPgType(c.type) }));
    const key = columns.find((c) => keys.length === 1 && c.name === keys[0]!.name);
    if (!key) throw new BrokerError('INTERNAL', `store migrate: table ${table} has no single-column primary key on the target`);
    const sourceCols = (await source.all(`PRAGMA table_info(${table})`)).map((r) => String(r.name));
    const missing = columns.filter((c) => !sourceCols.includes(c.name)).map((c) => c.name);
    const extra = sourceCols.filter((name) => !columns.some((c) => c.name === name));
    if (missing.length > 0 || extra.length > 0) {
      throw new BrokerError(
        'MIGRATION_COPY_FAILED',
        `table ${table}: the SQLite file's columns differ from the target's (only in SQLite: ${extra.join(', ') || 'none'}; only in PostgreSQL: ${missing.join(', ') || 'none'})`,
      );
    }
    shapes.push({ table, columns, key });
  }
  return shapes;
}

/** Every table of the target's schema besides knex's must be in COPY_TABLES. */
async function checkTables(client: pg.ClientBase): Promise<void> {
  const names = (await client.query<{ name: string }>("SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema()")).rows.map((r) => r.name);
  const unknown = names.filter((n) => !(COPY_TABLES as readonly string[]).includes(n) && !n.startsWith('knex_'));
  if (unknown.length > 0) throw new BrokerError('INTERNAL', `store migrate does not know the tables ${unknown.join(', ')} (a migration added them without adding them to copy-tables.ts)`);
}

// ---- reading in key order --------------------------------------------------

const quote = (name: string): string => `"${name.replace(/"/g, '""')}"`;

/** SQLite: integers and booleans CAST AS TEXT (exact for 64-bit values), text as is. */
function sqliteSelect(shape: TableShape, limit: number, after: boolean): string {
  const cols = shape.columns.map((c) => (c.kind === 'text' ? quote(c.name) : `CAST(${quote(c.name)} AS TEXT) AS ${quote(c.name)}`)).join(', ');
  // Table-qualified: in ORDER BY, SQLite would take the bare name for the TEXT alias above and order 10 before 9.
  const key = `${quote(shape.table)}.${quote(shape.key.name)}`;
  return `SELECT ${cols} FROM ${quote(shape.table)}${after ? ` WHERE ${key} > ?` : ''} ORDER BY ${key} LIMIT ${limit}`;
}

/** PostgreSQL: the columns as pg hands them to the store; text keys in byte order. */
function pgSelect(shape: TableShape, limit: number, after: boolean): string {
  const cols = shape.columns.map((c) => quote(c.name)).join(', ');
  const key = shape.key.kind === 'text' ? `${quote(shape.key.name)} COLLATE "C"` : quote(shape.key.name);
  return `SELECT ${cols} FROM ${quote(shape.table)}${after ? ` WHERE ${key} > $1` : ''} ORDER BY ${key} LIMIT ${limit}`;
}

/** Chunks of canonical rows in key order, by keyset (never OFFSET). */
async function* chunks(read: (after: Canonical | undefined) => Promise<Record<string, unknown>[]>, shape: TableShape, limit: number): AsyncGenerator<Canonical[][]> {
  let after: Canonical | undefined;
  for (;;) {
    const rows = (await read(after)).map((r) => shape.columns.map((c) => canonical(r[c.name], c.kind)));
    if (rows.length > 0) yield rows;
    if (rows.length < limit) return;
    after = rows.at(-1)![shape.columns.indexOf(shape.key)]!;
  }
}

function chunkSize(shape: TableShape, wanted: number): number {
  return Math.max(1, Math.min(wanted, Math.floor(MAX_BINDINGS / shape.columns.length)));
}

// ---- copy and verify -------------------------------------------------------

async function insertChunk(client: pg.ClientBase, shape: TableShape, rows: readonly Canonical[][]): Promise<void> {
  const values: unknown[] = [];
  const tuples = rows.map((row) => `(${row.map((v, i) => `$${values.push(pgBinding(v, shape.columns[i]!.kind))}`).join(', ')})`);
  await client.query(`INSERT INTO ${quote(shape.table)} (${shape.columns.map((c) => quote(c.name)).join(', ')}) VALUES ${tuples.join(', ')}`, values);
}

async function copyTable(client: pg.ClientBase, source: SqliteReader, shape: TableShape, chunkRows: number): Promise<TableDigest> {
  const limit = chunkSize(shape, chunkRows);
  const digest = new TableDigest();
  const read = (after: Canonical | undefined) => source.all(sqliteSelect(shape, limit, after !== undefined), after === undefined ? [] : [after]);
  for await (const rows of chunks(read, shape, limit)) {
    for (const row of rows) digest.add(row);
    try {
      await insertChunk(client, shape, rows);
    } catch (err) {
      throw copyFailed(shape.table, err);
    }
  }
  // The keyset walk must have met every row: counted apart, so that a walk that skips rows cannot verify itself.
  const total = Number((await source.all(`SELECT count(*) AS n FROM ${quote(shape.table)}`))[0]!.n);
  if (total !== digest.rows) {
    throw new BrokerError('MIGRATION_COPY_FAILED', `table ${shape.table}: read ${digest.rows} rows of ${total} in key order; nothing was committed`);
  }
  return digest;
}

async function digestTarget(client: pg.ClientBase, shape: TableShape, chunkRows: number): Promise<TableDigest> {
  const limit = chunkSize(shape, chunkRows);
  const digest = new TableDigest();
  const read = async (after: Canonical | undefined) => (await client.query(pgSelect(shape, limit, after !== undefined), after === undefined ? [] : [after])).rows;
  for await (const rows of chunks(read, shape, limit)) for (const row of rows) digest.add(row);
  return digest;
}

/** A row PostgreSQL refused: the table, SQLSTATE and PostgreSQL's message (it names a type or constraint, never the URL). */
function copyFailed(table: string, err: unknown): BrokerError {
  const e = err as { code?: unknown; message?: unknown };
  const mapped = toPgStoreError(err, 'store migrate');
  if (mapped.code === 'STORE_UNAVAILABLE') return mapped;
  return new BrokerError('MIGRATION_COPY_FAILED', `copying table ${table} failed (SQLSTATE ${String(e.code ?? '?')}: ${String(e.message ?? err)}); nothing was committed`);
}

/** Row by row in key order on both sides: where the first difference is (key and column), for the message. */
async function firstDifference(client: pg.ClientBase, source: SqliteReader, shape: TableShape, chunkRows: number): Promise<string> {
  const limit = chunkSize(shape, chunkRows);
  const sourceRows = chunks((after) => source.all(sqliteSelect(shape, limit, after !== undefined), after === undefined ? [] : [after]), shape, limit);
  const targetRows = chunks(async (after) => (await client.query(pgSelect(shape, limit, after !== undefined), after === undefined ? [] : [after])).rows, shape, limit);
  const keyIndex = shape.columns.indexOf(shape.key);
  let a: Canonical[][] = [];
  let b: Canonical[][] = [];
  for (;;) {
    if (a.length === 0) a = (await sourceRows.next()).value ?? [];
    if (b.length === 0) b = (await targetRows.next()).value ?? [];
    const [x, y] = [a.shift(), b.shift()];
    if (!x && !y) return 'no row differs on a second reading';
    if (!x || !y) return `${shape.key.name} ${String((x ?? y)![keyIndex])} is only in the ${x ? 'SQLite file' : 'target'}`;
    const column = shape.columns.findIndex((_, i) => x[i] !== y[i]);
    if (column !== -1) return `${shape.key.name} ${String(x[keyIndex])} differs in column ${shape.columns[column]!.name}`;
  }
}

async function copyAndVerify(client: pg.ClientBase, source: SqliteReader, o: CopyOptions): Promise<TableCopyReport[]> {
  const chunkRows = o.chunkRows ?? CHUNK_ROWS;
  await client.query(`SET LOCAL lock_timeout = ${LOCK_TIMEOUT_MS}`);
  await client.query(`LOCK TABLE ${COPY_TABLES.map(quote).join(', ')} IN ACCESS EXCLUSIVE MODE`);
  refuseUnlessEmpty(await inspectTarget(client), o.fleetUserCa);
  await checkTables(client);
  const shapes = await tableShapes(client, source);
  for (const table of Object.keys(SEEDED_ROWS)) await client.query(`DELETE FROM ${quote(table)}`);
  const sources = new Map<CopyTable, TableDigest>();
  for (const shape of shapes) sources.set(shape.table, await copyTable(client, source, shape, chunkRows));
  for (const table of ['audit_events', 'trust_rotations']) {
    await client.query(`SELECT setval(pg_get_serial_sequence('${table}', 'id'), COALESCE(max(id), 1), max(id) IS NOT NULL) FROM ${table}`);
  }
  const report: TableCopyReport[] = [];
  for (const shape of shapes) {
    const copied = await digestTarget(client, shape, chunkRows);
    const expected = sources.get(shape.table)!;
    if (copied.rows !== expected.rows || copied.hex() !== expected.hex()) {
      throw new BrokerError(
        'MIGRATION_VERIFY_FAILED',
        `table ${shape.table}: the copy does not match the SQLite file (rows ${copied.rows} vs ${expected.rows}, sha256 ${copied.hex().slice(0, 16)}… vs ${expected.hex().slice(0, 16)}…; ${await firstDifference(client, source, shape, chunkRows)}); nothing was committed`,
      );
    }
    report.push({ table: shape.table, rows: expected.rows, sha256: expected.hex() });
  }
  const e = o.event;
  await client.query('INSERT INTO audit_events (at, actor, action, target, remote_addr, outcome, details) VALUES ($1, $2, $3, NULL, NULL, $4, $5)', [
    e.at.getTime(), e.actor, e.action, 'ok', JSON.stringify(e.details(report)),
  ]);
  return report;
}

/**
 * Copies the SQLite file's rows into the (migrated, empty) PostgreSQL
 * database and verifies them, atomically; the per-table counts and
 * checksums (of the copied rows, before the migration's audit event).
 */
export async function copySqliteToPostgres(o: CopyOptions): Promise<TableCopyReport[]> {
  const source = await openSqlite(o.sqliteFile);
  const client = new pg.Client({ connectionString: o.databaseUrl, application_name: 'certunnel store migrate' });
  try {
    try {
      await client.connect();
    } catch (err) {
      throw toPgStoreError(err, 'store migrate');
    }
    // An error on the idle client (the server went away) is seen by the next query; unheard, it would crash the process.
    client.on('error', () => undefined);
    await client.query('BEGIN');
    try {
      const report = await copyAndVerify(client, source, o);
      await client.query('COMMIT');
      return report;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      if (err instanceof BrokerError) throw err;
      throw copyFailed('(setup)', err);
    }
  } finally {
    await client.end().catch(() => undefined);
    await source.close();
  }
}

/** What the database at URL holds (copy-target.ts), looked at on one connection outside any transaction. */
export async function inspectDatabase(url: string): Promise<TargetState> {
  const client = new pg.Client({ connectionString: url, application_name: 'certunnel store migrate' });
  try {
    await client.connect();
    client.on('error', () => undefined);
    return await inspectTarget(client);
  } catch (err) {
    throw toPgStoreError(err, 'store migrate');
  } finally {
    await client.end().catch(() => undefined);
  }
}

export { refuseUnlessEmpty, type TargetState };
