/**
 * knex's SQLite client with a per-connection prepared-statement cache.
 *
 * Why: knex hands node-sqlite3 the SQL text of every query, and node-sqlite3
 * then prepares, runs and finalizes a fresh statement each time. The store
 * runs a small set of statement shapes over and over (knex compiles the same
 * shape to the same SQL with `?` placeholders), so reusing the prepared
 * statement saves SQLite's parse/plan on each call — a large share of the
 * per-statement cost (scripts/bench/store-bench.ts).
 *
 * SQLite-specific; a PostgreSQL client would not need this (pg has its own
 * named prepared statements). Knex exposes no public hook for this, so the
 * override replaces `_query` of knex's own sqlite3 dialect, keeping its
 * result protocol (rows for `all`, `this.lastID`/`this.changes` for `run`).
 */
import { createRequire } from 'node:module';
import type { Knex } from 'knex';
import type sqlite3 from 'sqlite3';

interface QueryObject {
  sql: string;
  bindings?: unknown[];
  method?: string;
  returning?: unknown;
  response?: unknown;
  context?: unknown;
}

type CachedConnection = sqlite3.Database & { __statements?: Map<string, Promise<sqlite3.Statement>> };

type SqliteClientClass = new (config: Knex.Config) => {
  _query(connection: CachedConnection, obj: QueryObject): Promise<QueryObject>;
  destroyRawConnection(connection: CachedConnection): Promise<void>;
};

// knex/lib is CommonJS without type declarations; resolved at run time from
// both the TS sources (tsx) and compiled JS.
const require = createRequire(import.meta.url);
const BaseClient = require('knex/lib/dialects/sqlite3/index.js') as SqliteClientClass;

/** Plenty for the store's fixed shapes; list queries with varying filters churn the rest. */
const MAX_STATEMENTS = 200;
/** Only plain DML/queries are cached: DDL and PRAGMAs run once and go the usual way. */
const CACHEABLE = /^\s*(select|insert|update|delete|with)\b/i;

function callMethodFor(obj: QueryObject): 'all' | 'run' {
  switch (obj.method) {
    case 'insert':
    case 'update':
      return obj.returning ? 'all' : 'run';
    case 'counter':
    case 'del':
      return 'run';
    default:
      return 'all';
  }
}

function finalize(statement: sqlite3.Statement): Promise<void> {
  return new Promise((resolve) => statement.finalize(() => resolve()));
}

/**
 * The connection's prepared statement for sql, most recently used last.
 * A new statement is awaited until prepared: node-sqlite3 never calls back
 * the runs queued on a statement whose preparation failed.
 */
function statementFor(connection: CachedConnection, sql: string): Promise<sqlite3.Statement> {
  const cache = (connection.__statements ??= new Map());
  let statement = cache.get(sql);
  if (statement) {
    cache.delete(sql); // Map order is insertion order: re-insert as most recent
  } else {
    statement = new Promise<sqlite3.Statement>((resolve, reject) => {
      const prepared = connection.prepare(sql, (err) => (err ? reject(err) : resolve(prepared)));
    });
    statement.catch(() => {
      if (cache.get(sql) === statement) cache.delete(sql);
    });
    if (cache.size >= MAX_STATEMENTS) {
      const [oldestSql, oldest] = cache.entries().next().value as [string, Promise<sqlite3.Statement>];
      cache.delete(oldestSql);
      oldest.then(finalize, () => {});
    }
  }
  cache.set(sql, statement);
  return statement;
}

export class CachingSqliteClient extends BaseClient {
  override async _query(connection: CachedConnection, obj: QueryObject): Promise<QueryObject> {
    if (!obj.sql || !CACHEABLE.test(obj.sql)) return super._query(connection, obj);
    const callMethod = callMethodFor(obj);
    const statement = await statementFor(connection, obj.sql);
    return new Promise((resolve, reject) => {
      const done = function (this: unknown, err: Error | null, response?: unknown) {
        if (err) return reject(err); // the statement stays usable: node-sqlite3 resets it before each run
        obj.response = response;
        obj.context = this; // the Statement: carries lastID and changes after run
        resolve(obj);
      };
      if (callMethod === 'run') statement.run(obj.bindings ?? [], done);
      else statement.all(obj.bindings ?? [], done);
    });
  }

  /** SQLite refuses to close a connection that has unfinalized statements. */
  override async destroyRawConnection(connection: CachedConnection): Promise<void> {
    const statements = [...(connection.__statements?.values() ?? [])];
    connection.__statements?.clear();
    await Promise.all(statements.map((s) => s.then(finalize, () => {})));
    return super.destroyRawConnection(connection);
  }
}
