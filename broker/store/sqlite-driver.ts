/**
 * Statement execution on a node-sqlite3 connection, with a per-connection
 * cache of prepared statements. SQLite-specific by nature; a PostgreSQL
 * store would execute the same compiled SQL with pg's `client.query`.
 *
 * Why not knex's runner: per statement it adds builder compilation, a
 * runner, pool bookkeeping, events and debug formatting, and node-sqlite3
 * then prepares, runs and finalizes a fresh statement every time. On the
 * 2-core reference machine that was ~170 µs per statement and ~530
 * enrollment transactions/s; executing cached prepared statements directly
 * on the connection knex's pool hands out gave ~925/s (and ~1150/s with
 * the allocator's partial index), with most of the remaining cost on
 * libuv's threadpool rather than the event loop. Measured with
 * scripts/bench/store-bench.ts. knex still compiles the dynamic queries,
 * owns the pool and runs the migrations.
 */
import { createRequire } from 'node:module';
import type { Knex } from 'knex';
import type sqlite3 from 'sqlite3';

/** A raw node-sqlite3 connection as knex's pool hands it out. */
export type SqliteConnection = sqlite3.Database & {
  __statements?: Map<string, Promise<sqlite3.Statement>>;
  /** knex's pool validator destroys a connection that carries this. */
  __knex__disposed?: unknown;
};

/** Plenty for the store's statement shapes; list queries with varying filters churn the rest. */
const MAX_STATEMENTS = 200;

function finalize(statement: sqlite3.Statement): Promise<void> {
  return new Promise((resolve) => statement.finalize(() => resolve()));
}

/**
 * The connection's prepared statement for sql, most recently used last.
 * A new statement is awaited until prepared: node-sqlite3 never calls back
 * the runs queued on a statement whose preparation failed.
 */
function statementFor(connection: SqliteConnection, sql: string): Promise<sqlite3.Statement> {
  const cache = (connection.__statements ??= new Map());
  let statement = cache.get(sql);
  if (statement) {
    cache.delete(sql); // Map order is insertion order: re-insert as most recent
  } else {
    const prepared = new Promise<sqlite3.Statement>((resolve, reject) => {
      const s = connection.prepare(sql, (err) => (err ? reject(err) : resolve(s)));
    });
    prepared.catch(() => {
      if (cache.get(sql) === prepared) cache.delete(sql);
    });
    statement = prepared;
    if (cache.size >= MAX_STATEMENTS) {
      const [oldestSql, oldest] = cache.entries().next().value as [string, Promise<sqlite3.Statement>];
      cache.delete(oldestSql);
      // Queued behind any run still pending on it (node-sqlite3 queues per statement).
      oldest.then(finalize, () => {});
    }
  }
  cache.set(sql, statement);
  return statement;
}

/** undefined (knex leaves it for columns missing from some rows of a multi-row insert) binds as NULL. */
function bindable(bindings: readonly unknown[]): unknown[] {
  return bindings.map((b) => (b === undefined ? null : b));
}

/** Rows of a statement (SELECT, or DML with RETURNING). */
export async function queryAll<T>(connection: SqliteConnection, sql: string, bindings: readonly unknown[]): Promise<T[]> {
  const statement = await statementFor(connection, sql);
  return new Promise((resolve, reject) => {
    // node-sqlite3 resets a statement before each run: a failed run leaves it reusable.
    statement.all(bindable(bindings), (err, rows) => (err ? reject(err) : resolve(rows as T[])));
  });
}

/** Rows changed by an INSERT, UPDATE or DELETE (also BEGIN, COMMIT, ...). */
export async function queryRun(connection: SqliteConnection, sql: string, bindings: readonly unknown[]): Promise<number> {
  const statement = await statementFor(connection, sql);
  return new Promise((resolve, reject) => {
    statement.run(bindable(bindings), function (this: sqlite3.RunResult, err: Error | null) {
      if (err) reject(err);
      else resolve(this.changes);
    });
  });
}

type SqliteClientClass = new (config: Knex.Config) => {
  destroyRawConnection(connection: SqliteConnection): Promise<void>;
};

// knex/lib is CommonJS without type declarations; resolved at run time from
// both the TS sources (tsx) and compiled JS.
const require = createRequire(import.meta.url);
const BaseClient = require('knex/lib/dialects/sqlite3/index.js') as SqliteClientClass;

/** knex's SQLite client, finalizing cached statements first: SQLite refuses to close a connection that has some. */
export class StatementCachingSqliteClient extends BaseClient {
  override async destroyRawConnection(connection: SqliteConnection): Promise<void> {
    const statements = [...(connection.__statements?.values() ?? [])];
    connection.__statements?.clear();
    await Promise.all(statements.map((s) => s.then(finalize, () => {})));
    return super.destroyRawConnection(connection);
  }
}
